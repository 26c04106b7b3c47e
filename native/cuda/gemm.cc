#include "cuda/gemm.h"

#include <cublasLt.h>
#include <cublas_v2.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace troupe {
namespace cuda {

namespace {

// A fixed workspace keeps cuBLAS from allocating during graph capture.
constexpr size_t kWorkspaceBytes = 32u << 20;

void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) {
    throw std::runtime_error(std::string("cuBLAS ") + what + " failed: " + cublasGetStatusString(s));
  }
}

cudaDataType_t dataType(ElemType t) { return t == ElemType::F32 ? CUDA_R_32F : CUDA_R_16BF; }

cublasHandle_t h(void* p) { return static_cast<cublasHandle_t>(p); }
cublasLtHandle_t lt(void* p) { return static_cast<cublasLtHandle_t>(p); }

// The largest power of two up to 256 that divides p's address.
int alignmentOf(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  int align = 256;
  while (align > 1 && a % align != 0) align /= 2;
  return align;
}

// Timed calls a candidate gets after one to warm up: up to kTuneRounds, fewer for long products
// (about kTuneMicroseconds of calls each, so that the LM head's tuning takes a few milliseconds, not
// forty); and how much faster than the default it must be to be taken (the noise on a 17 us
// product is a few tenths of a microsecond).
constexpr int kTuneRounds = 16, kTuneMinRounds = 4, kTuneCandidates = 8;
constexpr float kTuneMicroseconds = 1000;
constexpr float kTuneMargin = 0.98f;

}  // namespace

struct Gemm::Choice {
  bool lt = false;
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulAlgo_t algo = {};
  ~Choice() {
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

Gemm::Gemm(cudaStream_t stream) : stream_(stream) {
  cublasHandle_t handle;
  check(cublasCreate(&handle), "cublasCreate");
  handle_ = handle;
  check(cublasSetStream(handle, stream), "cublasSetStream");
  if (cudaMalloc(&workspace_, kWorkspaceBytes) != cudaSuccess)
    throw std::runtime_error("cuBLAS workspace: out of GPU memory");
  check(cublasSetWorkspace(handle, workspace_, kWorkspaceBytes), "cublasSetWorkspace");
  check(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
  cublasLtHandle_t ltHandle;
  check(cublasLtCreate(&ltHandle), "cublasLtCreate");
  lt_ = ltHandle;
}

Gemm::~Gemm() {
  choices_.clear();
  if (lt_) cublasLtDestroy(lt(lt_));
  if (handle_) cublasDestroy(h(handle_));
  if (workspace_) cudaFree(workspace_);
}

void Gemm::linear(int M, int N, int K, const void* W, int ldw, const void* X, int ldx, void* Y, ElemType y, float alpha,
                  float beta) {
  if (alpha != 1.0f || (beta != 0.0f && beta != 1.0f)) {
    check(cublasGemmEx(h(handle_), CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &alpha, W, CUDA_R_16BF, ldw, X, CUDA_R_16BF, ldx,
                       &beta, Y, dataType(y), N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
          "cublasGemmEx");
    return;
  }
  Product p;
  p.m = N, p.n = M, p.k = K, p.lda = ldw, p.ldb = ldx, p.ldc = N, p.c = y, p.adds = beta != 0.0f;
  p.A = W, p.B = X, p.C = Y;
  run(p);
}

int Gemm::runDefault(const Product& p, void* C) const {
  const float alpha = 1, beta = p.adds ? 1.0f : 0.0f;
  const cublasOperation_t tA = p.transA ? CUBLAS_OP_T : CUBLAS_OP_N, tB = p.transB ? CUBLAS_OP_T : CUBLAS_OP_N;
  if (p.batch == 1)
    return cublasGemmEx(h(handle_), tA, tB, p.m, p.n, p.k, &alpha, p.A, CUDA_R_16BF, p.lda, p.B, CUDA_R_16BF, p.ldb,
                        &beta, C, dataType(p.c), p.ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  return cublasGemmStridedBatchedEx(h(handle_), tA, tB, p.m, p.n, p.k, &alpha, p.A, CUDA_R_16BF, p.lda, p.strideA, p.B,
                                    CUDA_R_16BF, p.ldb, p.strideB, &beta, C, dataType(p.c), p.ldc, p.strideC, p.batch,
                                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

void Gemm::run(const Product& q) {
  Product p = q;
  p.align = std::min({alignmentOf(p.A), alignmentOf(p.B), alignmentOf(p.C)});
  if (p.n <= kTunedMaxRows) {
    const auto it = choices_.find(p.shape());
    if (it != choices_.end() && it->second->lt) {
      const Choice& c = *it->second;
      const float alpha = 1, beta = p.adds ? 1.0f : 0.0f;
      check(cublasLtMatmul(lt(lt_), c.op, &alpha, p.A, c.la, p.B, c.lb, &beta, p.C, c.lc, p.C, c.lc, &c.algo,
                           workspace_, kWorkspaceBytes, stream_),
            "cublasLtMatmul");
      return;
    }
    if (it == choices_.end() && noting_) noted_.push_back(p);
  }
  check(static_cast<cublasStatus_t>(runDefault(p, p.C)), p.batch == 1 ? "cublasGemmEx" : "cublasGemmStridedBatchedEx");
}

bool Gemm::tune(const std::vector<Product>& noted) {
  // Whether any of the products' shapes runs a kernel other than the default (also where an
  // earlier tune() chose it: a graph captured before then still runs the default).
  auto chosen = [&] {
    return std::any_of(noted.begin(), noted.end(), [&](const Product& p) {
      const auto it = choices_.find(p.shape());
      return it != choices_.end() && it->second->lt;
    });
  };
  // Each shape is timed over the weights (A) of every product noted with it (a step's layers), in
  // turn, so that each call reads its weights from memory as in a step; C goes to scratch.
  std::map<Shape, std::vector<Product>> byShape;
  size_t cBytes = 0;
  for (const Product& p : noted) {
    if (choices_.count(p.shape())) continue;
    std::vector<Product>& calls = byShape[p.shape()];
    if (std::none_of(calls.begin(), calls.end(), [&](const Product& c) { return c.A == p.A; })) calls.push_back(p);
    cBytes = std::max(cBytes, static_cast<size_t>((static_cast<long long>(p.batch) - 1) * p.strideC +
                                                  static_cast<long long>(p.ldc) * p.n) *
                                  4);
  }
  if (byShape.empty()) return chosen();
  void* cScratch = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  if (cudaMalloc(&cScratch, cBytes) != cudaSuccess || cudaEventCreate(&start) != cudaSuccess ||
      cudaEventCreate(&stop) != cudaSuccess) {
    // No room to time: these shapes keep the default.
    cudaGetLastError();
    if (cScratch) cudaFree(cScratch);
    if (start) cudaEventDestroy(start);
    for (const auto& entry : byShape) choices_[entry.first] = std::make_shared<Choice>();
    return chosen();
  }
  cudaMemsetAsync(cScratch, 0, cBytes, stream_);
  for (const auto& entry : byShape) {
    const std::vector<Product>& calls = entry.second;
    const Product& p = calls.front();
    const float alpha = 1, beta = p.adds ? 1.0f : 0.0f;
    int turn = 0;
    // Mean microseconds of one call over `rounds` back to back (as a step's launches run, so that
    // one call's launch hides behind the one before), or -1 where the kernel refused.
    int rounds = kTuneRounds;
    auto timed = [&](auto&& call) -> float {
      if (!call(calls[turn++ % calls.size()])) return -1;
      cudaEventRecord(start, stream_);
      for (int r = 0; r < rounds; ++r)
        if (!call(calls[turn++ % calls.size()])) return -1;
      cudaEventRecord(stop, stream_);
      float ms = 0;
      if (cudaEventSynchronize(stop) != cudaSuccess || cudaEventElapsedTime(&ms, start, stop) != cudaSuccess) return -1;
      return ms * 1000 / rounds;
    };
    const float byDefault = timed([&](const Product& q) { return runDefault(q, cScratch) == CUBLAS_STATUS_SUCCESS; });
    if (byDefault > 0)
      rounds = std::clamp(static_cast<int>(kTuneMicroseconds / byDefault), kTuneMinRounds, kTuneRounds);
    auto c = std::make_shared<Choice>();
    const cublasOperation_t tA = p.transA ? CUBLAS_OP_T : CUBLAS_OP_N, tB = p.transB ? CUBLAS_OP_T : CUBLAS_OP_N;
    const uint32_t alignBytes = static_cast<uint32_t>(p.align);
    const size_t wsBytes = kWorkspaceBytes;
    // A layout of rows x cols (column-major, ld apart), strided over the batch.
    auto layout = [&](cublasLtMatrixLayout_t* l, cudaDataType_t type, int rows, int cols, int ld, long long stride) {
      if (cublasLtMatrixLayoutCreate(l, type, rows, cols, ld) != CUBLAS_STATUS_SUCCESS) return false;
      if (p.batch == 1) return true;
      const int32_t batch = p.batch;
      const int64_t offset = stride;
      return cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof batch) ==
                 CUBLAS_STATUS_SUCCESS &&
             cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &offset,
                                              sizeof offset) == CUBLAS_STATUS_SUCCESS;
    };
    cublasLtMatmulPreference_t pref = nullptr;
    cublasLtMatmulHeuristicResult_t found[kTuneCandidates] = {};
    int count = 0;
    const bool described =
        byDefault > 0 && cublasLtMatmulDescCreate(&c->op, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS &&
        cublasLtMatmulDescSetAttribute(c->op, CUBLASLT_MATMUL_DESC_TRANSA, &tA, sizeof tA) == CUBLAS_STATUS_SUCCESS &&
        cublasLtMatmulDescSetAttribute(c->op, CUBLASLT_MATMUL_DESC_TRANSB, &tB, sizeof tB) == CUBLAS_STATUS_SUCCESS &&
        layout(&c->la, CUDA_R_16BF, p.transA ? p.k : p.m, p.transA ? p.m : p.k, p.lda, p.strideA) &&
        layout(&c->lb, CUDA_R_16BF, p.transB ? p.n : p.k, p.transB ? p.k : p.n, p.ldb, p.strideB) &&
        layout(&c->lc, dataType(p.c), p.m, p.n, p.ldc, p.strideC) &&
        cublasLtMatmulPreferenceCreate(&pref) == CUBLAS_STATUS_SUCCESS &&
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsBytes,
                                             sizeof wsBytes) == CUBLAS_STATUS_SUCCESS;
    if (described) {
      for (const auto a : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                           CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
        cublasLtMatmulPreferenceSetAttribute(pref, a, &alignBytes, sizeof alignBytes);
      if (cublasLtMatmulAlgoGetHeuristic(lt(lt_), c->op, c->la, c->lb, c->lc, c->lc, pref, kTuneCandidates, found,
                                         &count) != CUBLAS_STATUS_SUCCESS)
        count = 0;
    }
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    float best = byDefault;
    int bestAt = -1;
    for (int i = 0; i < count; ++i) {
      if (found[i].state != CUBLAS_STATUS_SUCCESS) continue;
      const float t = timed([&](const Product& q) {
        return cublasLtMatmul(lt(lt_), c->op, &alpha, q.A, c->la, q.B, c->lb, &beta, cScratch, c->lc, cScratch, c->lc,
                              &found[i].algo, workspace_, kWorkspaceBytes, stream_) == CUBLAS_STATUS_SUCCESS;
      });
      if (t > 0 && t < best) best = t, bestAt = i;
    }
    if (bestAt >= 0 && best < byDefault * kTuneMargin) {
      c->lt = true;
      c->algo = found[bestAt].algo;
    }
    if (std::getenv("TROUPE_CUDA_GEMM_TUNE_LOG"))
      std::fprintf(stderr,
                   "gemm tune: m %d n %d k %d lda %d ldb %d batch %d over %zu weights: default %.2f us, %s %.2f us\n",
                   p.m, p.n, p.k, p.lda, p.ldb, p.batch, calls.size(), byDefault,
                   c->lt ? "cublasLt candidate" : "kept; best candidate", bestAt >= 0 ? best : -1.0f);
    choices_[entry.first] = c;
  }
  cudaStreamSynchronize(stream_);
  cudaGetLastError();  // a candidate that refused leaves its error here; the step after must not see it
  cudaFree(cScratch);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return chosen();
}

void Gemm::batched(bool transA, bool transB, int m, int n, int k, float alpha, const void* A, int lda,
                   long long strideA, const void* B, int ldb, long long strideB, float beta, void* C, ElemType c,
                   int ldc, long long strideC, int batch) {
  if (alpha != 1.0f || (beta != 0.0f && beta != 1.0f)) {
    check(cublasGemmStridedBatchedEx(h(handle_), transA ? CUBLAS_OP_T : CUBLAS_OP_N, transB ? CUBLAS_OP_T : CUBLAS_OP_N,
                                     m, n, k, &alpha, A, CUDA_R_16BF, lda, strideA, B, CUDA_R_16BF, ldb, strideB, &beta,
                                     C, dataType(c), ldc, strideC, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
          "cublasGemmStridedBatchedEx");
    return;
  }
  Product p;
  p.transA = transA, p.transB = transB, p.m = m, p.n = n, p.k = k, p.lda = lda, p.ldb = ldb, p.ldc = ldc;
  p.batch = batch, p.strideA = strideA, p.strideB = strideB, p.strideC = strideC, p.c = c, p.adds = beta != 0.0f;
  p.A = A, p.B = B, p.C = C;
  run(p);
}

void Gemm::pointerBatched(bool transA, bool transB, int m, int n, int k, float alpha, const void* const* A, int lda,
                          const void* const* B, int ldb, float beta, void* const* C, ElemType c, int ldc, int batch) {
  check(cublasGemmBatchedEx(h(handle_), transA ? CUBLAS_OP_T : CUBLAS_OP_N, transB ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k,
                            &alpha, A, CUDA_R_16BF, lda, B, CUDA_R_16BF, ldb, &beta, C, dataType(c), ldc, batch,
                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "cublasGemmBatchedEx");
}

}  // namespace cuda
}  // namespace troupe
