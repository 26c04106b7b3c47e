// Stand-alone check of the decode GEMM (native/cuda/decode_gemm.cu) against a host reference: one
// and two splits a tile, 1 to 32 tokens, K past the last whole stage, N past the last whole tile,
// accumulating or not, padded leading dimensions. Every case runs three rounds back to back with
// programmatic launch and must give the same bits each round. The LoRA cases add each token's
// slot's B (A x) as the engine's decode steps do, with A's rows and B's columns past each slot's
// rank poisoned with NaN and tokens without an adapter; others leave the deltas to the norm after
// the GEMM (rmsnorm_delta.h), checked with its normed rows, and o's GEMM begins gate/up's shrink
// for the norm to finish (decode_gemm_norm_shrink_check.h). With --bench it times Llama-8B's
// projections at 32 decode tokens, replayed from a CUDA graph, against cuBLAS's GEMM: behind a
// 2 us kernel, and the down projection behind siluMul as in a decode step; then o and down with
// the norm after them, the deltas in the GEMM or in the norm.
//   nvcc -std=c++17 -gencode arch=compute_90a,code=sm_90a -O3 -Inative -Itest/gpu -o /tmp/dgemm \
//        test/gpu/decode_gemm_check.cu native/cuda/decode_gemm.cu native/cuda/tensor_map.cc native/cuda/kernels.cu \
//        native/cuda/rmsnorm_delta.cu native/cuda/lora_fill.cu native/cuda/gemm.cc -lcublas -lcublasLt && \
//        /tmp/dgemm [--bench | --bench-norm-shrink]
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "check_util.h"
#include "decode_gemm_norm_shrink_check.h"
#include "cuda/decode_gemm.h"
#include "cuda/gemm.h"
#include "cuda/kernels.h"
#include "cuda/pdl.cuh"
#include "cuda/rmsnorm_delta.h"

using namespace kernel_check;
using namespace troupe::cuda;

namespace {

struct Case {
  int M, N, K, ld, splits;
  bool accumulate;
};

// Three launches back to back, each from Y0 (a.Y's values before): the first's output, or empty
// where a later one differs from it by a bit (said with `what`).
std::vector<float> launchRounds(DecodeGemm& gemm, const DecodeGemmArgs& a, int splits, const std::vector<float>& Y0,
                                cudaStream_t st, const char* what) {
  std::vector<float> first;
  for (int round = 0; round < 3; ++round) {
    CK(cudaMemcpyAsync(a.Y, Y0.data(), Y0.size() * 4, cudaMemcpyHostToDevice, st));
    gemm.run(a, splits, st, true);
    std::vector<float> Y(Y0.size());
    CK(cudaMemcpyAsync(Y.data(), a.Y, Y.size() * 4, cudaMemcpyDeviceToHost, st));
    CK(cudaStreamSynchronize(st));
    if (round == 0) {
      first = Y;
    } else if (std::memcmp(Y.data(), first.data(), Y.size() * 4) != 0) {
      std::printf("FAIL %s: round %d differs from the first\n", what, round);
      return {};
    }
  }
  return first;
}

int check(DecodeGemm& gemm, const Case& c, Rng& rng, cudaStream_t st) {
  std::vector<uint16_t> W(static_cast<size_t>(c.N) * c.ld), X(static_cast<size_t>(c.M) * c.ld);
  for (auto& v : W) v = toBf16(rng.sym());
  for (auto& v : X) v = toBf16(rng.sym());
  std::vector<float> Y0(static_cast<size_t>(c.M) * c.N);
  for (auto& v : Y0) v = c.accumulate ? 4 * rng.sym() : 0.0f;
  bf16_t* dW = reinterpret_cast<bf16_t*>(upload(W));
  bf16_t* dX = reinterpret_cast<bf16_t*>(upload(X));
  float* dY = upload(Y0);
  DecodeGemmArgs a;
  a.W = dW, a.ldw = c.ld, a.X = dX, a.ldx = c.ld, a.Y = dY, a.ldy = c.N, a.M = c.M, a.N = c.N, a.K = c.K;
  a.accumulate = c.accumulate;
  int bad = 0;
  if (!gemm.supports(a, c.splits)) {
    std::printf("FAIL M %d N %d K %d splits %d: not supported\n", c.M, c.N, c.K, c.splits);
    bad = 1;
  }
  const std::vector<float> Y = bad ? std::vector<float>{} : launchRounds(gemm, a, c.splits, Y0, st, "plain case");
  if (Y.empty()) bad = 1;
  double worst = 0;
  if (!bad) {
    for (int m = 0; m < c.M; ++m)
      for (int n = 0; n < c.N; ++n) {
        double sum = Y0[static_cast<size_t>(m) * c.N + n], mag = 0;
        for (int k = 0; k < c.K; ++k) {
          const double p = static_cast<double>(fromBf16(W[static_cast<size_t>(n) * c.ld + k])) *
                           fromBf16(X[static_cast<size_t>(m) * c.ld + k]);
          sum += p;
          mag += std::fabs(p);
        }
        // f32 sums over all of K on tensor cores: a bound that grows with the products' size.
        const double bound = mag / 16384 + 1e-5, err = std::fabs(Y[static_cast<size_t>(m) * c.N + n] - sum);
        if (!(err <= bound)) ++bad;
        worst = std::max(worst, err / bound);
      }
  }
  std::printf("%s M %2d N %5d K %5d ld %5d splits %d acc %d: worst %.3f of the bound\n", bad ? "FAIL" : "ok  ", c.M,
              c.N, c.K, c.ld, c.splits, c.accumulate, worst);
  cudaFree(dW);
  cudaFree(dX);
  cudaFree(dY);
  return bad ? 1 : 0;
}

// The late columns (DecodeGemmLateColumns) as o's GEMM meets them: a kernel that writes the rows
// slowly and lets the next start at once, then one that lets the GEMM start at once, counts its
// first blocks ready once the rows' kernel is done and writes the columns slowly after. The
// buffers hold NaN before each round, so a stage copied before its kernel wrote it shows.
__device__ void spinMicroseconds(int us) {
  const long long until = clock64() + static_cast<long long>(us) * 1500;
  while (clock64() < until) {
  }
}

__global__ void slowRows(const bf16_t* src, bf16_t* rows, int n) {
  pdlLaunchDependents();
  spinMicroseconds(20);
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) rows[i] = src[i];
}

__global__ void slowColumns(const bf16_t* src, bf16_t* cols, int M, int count, int ldc, unsigned* ready, int T) {
  pdlLaunchDependents();
  pdlWait();
  if (static_cast<int>(blockIdx.x) < T) {
    if (threadIdx.x == 0) {
      __threadfence();
      atomicAdd(ready, 1u);
    }
    return;
  }
  spinMicroseconds(10);
  const int b = blockIdx.x - T, blocks = gridDim.x - T;
  for (int i = b * blockDim.x + threadIdx.x; i < M * count; i += blocks * blockDim.x)
    cols[static_cast<size_t>(i / count) * ldc + i % count] = src[i];
}

struct LateCase {
  int M, N, K0, count, splits;
};

int checkLate(DecodeGemm& gemm, const LateCase& c, Rng& rng, cudaStream_t st) {
  const int K = c.K0 + c.count, ldw = K + 8, ldc = c.count + 16;
  std::vector<uint16_t> W(static_cast<size_t>(c.N) * ldw), X(static_cast<size_t>(c.M) * c.K0),
      C(static_cast<size_t>(c.M) * c.count);
  for (auto& v : W) v = toBf16(rng.sym());
  for (auto& v : X) v = toBf16(rng.sym());
  for (auto& v : C) v = toBf16(rng.sym());
  std::vector<float> Y0(static_cast<size_t>(c.M) * c.N);
  for (auto& v : Y0) v = 4 * rng.sym();
  bf16_t* dW = reinterpret_cast<bf16_t*>(upload(W));
  bf16_t* dXs = reinterpret_cast<bf16_t*>(upload(X));
  bf16_t* dCs = reinterpret_cast<bf16_t*>(upload(C));
  const std::vector<uint16_t> nanRows(X.size(), kNaN16), nanCols(static_cast<size_t>(c.M) * ldc, kNaN16);
  bf16_t* dX = reinterpret_cast<bf16_t*>(upload(nanRows));
  bf16_t* dC = reinterpret_cast<bf16_t*>(upload(nanCols));
  float* dY = upload(Y0);
  unsigned* ready = upload(std::vector<unsigned>{0, 0});
  DecodeGemmArgs a;
  a.W = dW, a.ldw = ldw, a.X = dX, a.ldx = c.K0, a.Y = dY, a.ldy = c.N, a.M = c.M, a.N = c.N, a.K = K;
  a.accumulate = true;
  a.late.X = dC, a.late.ld = ldc, a.late.count = c.count, a.late.ready = ready, a.late.target = c.M;
  int bad = 0;
  if (!gemm.supports(a, c.splits)) {
    std::printf("FAIL late columns M %d N %d K0 %d count %d: not supported\n", c.M, c.N, c.K0, c.count);
    bad = 1;
  }
  std::vector<float> first;
  for (int round = 0; round < 3 && !bad; ++round) {
    CK(cudaMemcpyAsync(dY, Y0.data(), Y0.size() * 4, cudaMemcpyHostToDevice, st));
    CK(cudaMemcpyAsync(dX, nanRows.data(), nanRows.size() * 2, cudaMemcpyHostToDevice, st));
    CK(cudaMemcpyAsync(dC, nanCols.data(), nanCols.size() * 2, cudaMemcpyHostToDevice, st));
    slowRows<<<8, 256, 0, st>>>(dXs, dX, static_cast<int>(X.size()));
    launchPdl(slowColumns, dim3(c.M + 6), dim3(128), st, true, "slowColumns", dCs, dC, c.M, c.count, ldc, ready, c.M);
    gemm.run(a, c.splits, st, true);
    std::vector<float> Y(Y0.size());
    std::vector<unsigned> counts(2);
    CK(cudaMemcpyAsync(Y.data(), dY, Y.size() * 4, cudaMemcpyDeviceToHost, st));
    CK(cudaMemcpyAsync(counts.data(), ready, 8, cudaMemcpyDeviceToHost, st));
    CK(cudaStreamSynchronize(st));
    if (counts[0] != 0 || counts[1] != 0) {
      std::printf("FAIL late columns: the counts were left at %u, %u\n", counts[0], counts[1]);
      bad = 1;
    }
    if (round == 0) {
      first = Y;
    } else if (std::memcmp(Y.data(), first.data(), Y.size() * 4) != 0) {
      std::printf("FAIL late columns: round %d differs from the first\n", round);
      bad = 1;
    }
  }
  double worst = 0;
  if (!bad) {
    for (int m = 0; m < c.M; ++m)
      for (int n = 0; n < c.N; ++n) {
        double sum = Y0[static_cast<size_t>(m) * c.N + n], mag = 0;
        for (int k = 0; k < K; ++k) {
          const float x = k < c.K0 ? fromBf16(X[static_cast<size_t>(m) * c.K0 + k])
                                   : fromBf16(C[static_cast<size_t>(m) * c.count + k - c.K0]);
          const double p = static_cast<double>(fromBf16(W[static_cast<size_t>(n) * ldw + k])) * x;
          sum += p;
          mag += std::fabs(p);
        }
        const double bound = mag / 16384 + 1e-5, err = std::fabs(first[static_cast<size_t>(m) * c.N + n] - sum);
        if (!(err <= bound)) ++bad;
        worst = std::max(worst, err / bound);
      }
  }
  std::printf("%s late columns M %2d N %5d K0 %5d count %4d splits %d: worst %.3f of the bound\n", bad ? "FAIL" : "ok  ",
              c.M, c.N, c.K0, c.count, c.splits, worst);
  for (void* p : {static_cast<void*>(dW), static_cast<void*>(dXs), static_cast<void*>(dCs), static_cast<void*>(dX),
                  static_cast<void*>(dC), static_cast<void*>(dY), static_cast<void*>(ready)})
    cudaFree(p);
  return bad ? 1 : 0;
}

// modules > 1 (spread only): a group such as q/k/v, module j's output rows from moduleRow(j), its
// A rows slot-major; split: each row's padding holds only its own module's block. oneSlot: every
// token of slot 0 (one adapter for the whole batch).
struct LoraCase {
  int M, N, K, slots, maxRank, splits, modules = 1;
  bool split = false, accumulate = true, oneSlot = false;
  int moduleRow(int j) const { return j == 0 ? 0 : (N * (modules + j) / (2 * modules) + 32) / 64 * 64; }
  int moduleOf(int n) const {
    int j = 0;
    while (j + 1 < modules && n >= moduleRow(j + 1)) ++j;
    return j;
  }
};

// How the GEMM takes the deltas: each weight tile adds them from B in shared memory; the norm after
// it adds them (rmsnormDelta, from B transposed); or B is multiplied in the padding columns, the
// shrink outputs written by spare blocks from the weight blocks' parts (spread).
enum class LoraForm { kDelta, kInNorm, kSpread };

// The LoRA form against a host reference: W and B in one matrix of K + pad columns, as the fused
// layout keeps them; token m's slot m % (slots + 1) - 1 (-1: none; or 0, oneSlot), slot k's module j's rank
// maxRank - (k + j) % 2 * maxRank / 2. kInNorm also checks the norm's rows; its GEMM leaves the
// shrink in mid (NaN before it).
int checkLora(DecodeGemm& gemm, const LoraCase& c, LoraForm form, Rng& rng, cudaStream_t st) {
  const bool inNorm = form == LoraForm::kInNorm, padded = form == LoraForm::kSpread;
  const int blockCols = c.slots * c.maxRank, rows = c.modules * blockCols;
  const int pad = c.split ? blockCols : rows, ld = c.K + pad, module0 = c.modules == 1 ? 6 : 0;
  auto rankOf = [&](int s, int j) { return s >= 0 ? c.maxRank - (s + j) % 2 * c.maxRank / 2 : 0; };
  // Row n's B for slot s, rank r (of its own module's block).
  auto bAt = [&](const std::vector<uint16_t>& W, int n, int s, int r) {
    return W[static_cast<size_t>(n) * ld + c.K + (c.split ? 0 : c.moduleOf(n) * blockCols) + s * c.maxRank + r];
  };
  std::vector<uint16_t> W(static_cast<size_t>(c.N) * ld), X(static_cast<size_t>(c.M) * c.K),
      A(static_cast<size_t>(rows) * c.K);
  std::vector<int32_t> slot(c.M), ranks(c.slots * 7, 0);
  std::vector<float> scaling(c.slots), Y0(static_cast<size_t>(c.M) * c.N);
  for (int k = 0; k < c.slots; ++k) {
    for (int j = 0; j < c.modules; ++j) ranks[k * 7 + module0 + j] = rankOf(k, j);
    scaling[k] = 0.5f + k;
  }
  for (int m = 0; m < c.M; ++m) slot[m] = c.oneSlot ? 0 : m % (c.slots + 1) - 1;
  for (int n = 0; n < c.N; ++n)
    for (int k = 0; k < ld; ++k) {
      const int col = k - c.K, block = c.split ? c.moduleOf(n) : col / blockCols;
      const int s = col % blockCols / c.maxRank, r = col % c.maxRank;
      // Padded, the GEMM multiplies every padding column, as the fused layout's does: B is zero past
      // each rank there and in other modules' blocks (the pool keeps it so), NaN elsewhere.
      const bool none = k >= c.K && (block != c.moduleOf(n) || r >= rankOf(s, block));
      W[static_cast<size_t>(n) * ld + k] = none ? (padded ? 0 : kNaN16) : toBf16(rng.sym());
    }
  for (int row = 0; row < rows; ++row)
    for (int k = 0; k < c.K; ++k)
      A[static_cast<size_t>(row) * c.K + k] =
          row % c.maxRank >= rankOf(row / c.maxRank / c.modules, row / c.maxRank % c.modules) ? kNaN16
                                                                                             : toBf16(rng.sym() / 8);
  for (auto& v : X) v = toBf16(rng.sym());
  for (auto& v : Y0) v = c.accumulate ? 4 * rng.sym() : 0.0f;
  bf16_t* dW = reinterpret_cast<bf16_t*>(upload(W));
  bf16_t* dX = reinterpret_cast<bf16_t*>(upload(X));
  bf16_t* dA = reinterpret_cast<bf16_t*>(upload(A));
  int32_t* dSlot = upload(slot);
  int32_t* dRanks = upload(ranks);
  float* dScaling = upload(scaling);
  float* dY = upload(Y0);
  DecodeGemmArgs a;
  a.W = dW, a.ldw = ld, a.X = dX, a.ldx = c.K, a.Y = dY, a.ldy = c.N, a.M = c.M, a.N = c.N, a.K = c.K;
  a.accumulate = c.accumulate;
  DecodeGemmLora& l = a.lora;
  l.A = dA, l.lda = c.K, l.rows = rows, l.maxRank = c.maxRank, l.B = inNorm ? nullptr : dW + c.K, l.ldb = ld;
  l.rowSlot = dSlot, l.spread = padded;
  l.modules = c.modules, l.splitRows = c.split;
  for (int j = 0; j < c.modules; ++j) l.moduleRow[j] = c.moduleRow(j);
  float* dMid = upload(std::vector<float>(static_cast<size_t>(c.M) * rows, inNorm ? std::nanf("") : 0.0f));
  l.ranks = dRanks, l.rankPitch = 7, l.module = module0, l.scaling = dScaling, l.mid = dMid;
  // The norm after it: B as [slot][maxRank][N] (NaN past each rank, as in W), the norm's weights.
  std::vector<uint16_t> Bt(static_cast<size_t>(rows) * c.N);
  for (int i = 0; i < rows; ++i)
    for (int n = 0; n < c.N; ++n) Bt[static_cast<size_t>(i) * c.N + n] = W[static_cast<size_t>(n) * ld + c.K + i];
  std::vector<float> normW(c.N);
  for (auto& v : normW) v = 1.0f + 0.5f * rng.sym();
  bf16_t* dBt = reinterpret_cast<bf16_t*>(upload(Bt));
  float* dNormW = upload(normW);
  bf16_t* dNormed = nullptr;
  CK(cudaMalloc(&dNormed, static_cast<size_t>(c.M) * c.N * 2));
  ResidualDelta d;
  d.bt = dBt, d.rowSlot = dSlot, d.ranks = dRanks, d.rankPitch = 7, d.module = 6, d.maxRank = c.maxRank, d.mid = dMid;
  std::vector<uint16_t> normed(static_cast<size_t>(c.M) * c.N);
  int bad = 0;
  if (!gemm.supports(a, c.splits)) {
    std::printf("FAIL lora M %d N %d K %d rows %d splits %d form %d: not supported\n", c.M, c.N, c.K, rows, c.splits,
                static_cast<int>(form));
    bad = 1;
  }
  std::vector<float> Y;
  if (!bad && inNorm) {
    // Three rounds of the GEMM and the norm, each from Y0: the same bits each time.
    std::vector<uint16_t> firstNormed;
    for (int round = 0; round < 3 && !bad; ++round) {
      CK(cudaMemcpyAsync(dY, Y0.data(), Y0.size() * 4, cudaMemcpyHostToDevice, st));
      gemm.run(a, c.splits, st, true);
      rmsnormDelta(dY, dNormW, dNormed, c.M, c.N, 1e-5f, c.N, d, st, true);
      std::vector<float> y(Y0.size());
      CK(cudaMemcpyAsync(y.data(), dY, y.size() * 4, cudaMemcpyDeviceToHost, st));
      CK(cudaMemcpyAsync(normed.data(), dNormed, normed.size() * 2, cudaMemcpyDeviceToHost, st));
      CK(cudaStreamSynchronize(st));
      if (round == 0) {
        Y = y;
        firstNormed = normed;
      } else if (std::memcmp(y.data(), Y.data(), y.size() * 4) != 0 ||
                 std::memcmp(normed.data(), firstNormed.data(), normed.size() * 2) != 0) {
        std::printf("FAIL delta in the norm: round %d differs from the first\n", round);
        bad = 1;
      }
    }
  } else if (!bad) {
    Y = launchRounds(gemm, a, c.splits, Y0, st, "LoRA case");
  }
  if (Y.empty()) bad = 1;
  double worst = 0, worstNormed = 0;
  if (!bad) {
    for (int m = 0; m < c.M; ++m) {
      const int s = slot[m];
      // The token's shrink outputs, [module][rank].
      std::vector<double> mid(rows), midMag(rows);
      for (int j = 0; j < c.modules; ++j)
        for (int r = 0; r < rankOf(s, j); ++r)
          for (int k = 0; k < c.K; ++k) {
            const size_t row = static_cast<size_t>((s * c.modules + j) * c.maxRank + r);
            const double p = static_cast<double>(fromBf16(A[row * c.K + k])) * fromBf16(X[static_cast<size_t>(m) * c.K + k]);
            mid[j * c.maxRank + r] += p;
            midMag[j * c.maxRank + r] += std::fabs(p);
          }
      std::vector<double> ref(c.N), bounds(c.N);
      double squares = 0;
      for (int n = 0; n < c.N; ++n) {
        double sum = Y0[static_cast<size_t>(m) * c.N + n], mag = 0;
        for (int k = 0; k < c.K; ++k) {
          const double p = static_cast<double>(fromBf16(W[static_cast<size_t>(n) * ld + k])) *
                           fromBf16(X[static_cast<size_t>(m) * c.K + k]);
          sum += p;
          mag += std::fabs(p);
        }
        const int j = c.moduleOf(n);
        for (int r = 0; r < rankOf(s, j); ++r) {
          const double b = fromBf16(bAt(W, n, s, r)) * scaling[s], v = mid[j * c.maxRank + r];
          sum += b * v;
          // Padded, the shrink outputs are bf16 columns: their rounding, 2^-9 of each, in the bound.
          mag += std::fabs(b) * (midMag[j * c.maxRank + r] + (padded ? std::fabs(v) * 16384 / 256 : 0));
        }
        const double bound = mag / 16384 + 1e-5, err = std::fabs(Y[static_cast<size_t>(m) * c.N + n] - sum);
        if (!(err <= bound)) ++bad;
        worst = std::max(worst, err / bound);
        ref[n] = sum;
        bounds[n] = bound;
        squares += sum * sum;
      }
      if (!inNorm) continue;
      // The normed row: bf16's rounding, and what the residual's own error moves it by.
      const double inv = 1.0 / std::sqrt(squares / c.N + 1e-5);
      for (int n = 0; n < c.N; ++n) {
        const double want = normW[n] * ref[n] * inv, got = fromBf16(normed[static_cast<size_t>(m) * c.N + n]);
        const double bound = std::fabs(want) / 128 + std::fabs(normW[n]) * 4 * bounds[n] * inv + 1e-6;
        const double err = std::fabs(got - want);
        if (!(err <= bound)) ++bad;
        worstNormed = std::max(worstNormed, err / bound);
      }
    }
  }
  const char* forms[] = {"", ", deltas in the norm", ", shrink spread"};
  std::printf("%s lora M %2d N %5d K %5d slots %d max rank %2d splits %d modules %d%s acc %d%s: worst %.3f of the bound%s\n",
              bad ? "FAIL" : "ok  ", c.M, c.N, c.K, c.slots, c.maxRank, c.splits, c.modules, c.split ? " split" : "",
              c.accumulate, forms[static_cast<int>(form)], worst,
              inNorm ? (", normed rows " + std::to_string(worstNormed)).c_str() : "");
  for (void* p : {static_cast<void*>(dW), static_cast<void*>(dX), static_cast<void*>(dA), static_cast<void*>(dSlot),
                  static_cast<void*>(dRanks), static_cast<void*>(dScaling), static_cast<void*>(dY),
                  static_cast<void*>(dMid), static_cast<void*>(dBt), static_cast<void*>(dNormW),
                  static_cast<void*>(dNormed)})
    cudaFree(p);
  return bad ? 1 : 0;
}

int checks() {
  if (!DecodeGemm::available()) {
    std::printf("FAIL: no decode GEMM for this device in this build\n");
    return 1;
  }
  int sms = 0;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  DecodeGemm gemm(sms);
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  const Case cases[] = {
      {32, 512, 1024, 1024, 1, false},   {7, 200, 1000, 1008, 2, true},   {1, 64, 256, 256, 1, false},
      {32, 4096, 14336, 14464, 2, true}, {32, 4096, 4096, 4224, 2, true}, {17, 1000, 2048, 2048, 2, true},
      {32, 6144, 4096, 4096, 1, false},  {3, 2048, 8192, 8200, 2, true},  {32, 130, 264, 264, 2, false},
  };
  Rng rng{5};
  int failed = 0;
  for (const Case& c : cases) failed += check(gemm, c, rng, st);
  // The engine's down projection at 8 slots of rank 16 fills an H200's 132 multiprocessors.
  const LoraCase loraCases[] = {
      {32, 4096, 14336, 8, 16, 2}, {32, 4096, 4096, 8, 16, 2}, {7, 1000, 2048, 4, 16, 2},
      {1, 200, 1024, 2, 8, 1},     {19, 130, 264, 3, 8, 2},    {32, 512, 2048, 2, 64, 1},
  };
  for (const LoraCase& c : loraCases) failed += checkLora(gemm, c, LoraForm::kDelta, rng, st);
  // The deltas left to the norm after the GEMM (rmsnormDelta): N a multiple of 4 up to 8,192 (a
  // cluster of 1 to 8 blocks a token), max rank 8, 16 or 32.
  const LoraCase inNormCases[] = {
      {32, 4096, 14336, 8, 16, 2}, {32, 4096, 4096, 8, 16, 2}, {7, 1000, 2048, 4, 16, 2},
      {1, 200, 1024, 2, 8, 1},     {5, 3000, 1024, 4, 32, 2},  {32, 8192, 2048, 4, 32, 1},
  };
  for (const LoraCase& c : inNormCases) failed += checkLora(gemm, c, LoraForm::kInNorm, rng, st);
  // The shrink spread over the weight blocks' pipelines: 8 rank-64 slots at o's and down's shapes
  // (more A tiles than spare blocks), more K parts than x stages (parts with none), a block left
  // over past the parts, padding columns that end inside a stage, one split, max rank 128, and
  // every token of one slot (its columns' work dealt over the spare blocks).
  const LoraCase spreadCases[] = {
      {32, 4096, 14336, 8, 64, 2},  {32, 4096, 4096, 8, 64, 2},
      {7, 1000, 2048, 4, 16, 2},    {5, 3000, 1024, 4, 32, 2},
      {19, 130, 512, 3, 8, 2},      {9, 700, 2048, 3, 64, 2},
      {32, 8192, 2048, 4, 64, 1},   {8, 512, 1024, 2, 128, 2},
      {32, 4096, 14336, 8, 64, 2, 1, false, true, true},
  };
  for (const LoraCase& c : spreadCases) failed += checkLora(gemm, c, LoraForm::kSpread, rng, st);
  // The spread form over a group of modules: q/k/v's shape at both ranks, A tiles that hold two
  // modules, split K, max rank 128 (a module's rows over two tiles), accumulating or not.
  const LoraCase spreadModuleCases[] = {
      {32, 6144, 4096, 8, 64, 1, 3, true, false}, {32, 6144, 4096, 8, 16, 1, 3, false, false},
      {7, 1536, 1024, 3, 8, 2, 3, true, false},   {19, 768, 512, 2, 32, 2, 3, false, true},
      {1, 1024, 256, 2, 128, 1, 3, true, false},  {2, 640, 768, 5, 8, 1, 3, true, true},
      {32, 6144, 4096, 8, 64, 1, 3, true, false, true},
  };
  for (const LoraCase& c : spreadModuleCases) failed += checkLora(gemm, c, LoraForm::kSpread, rng, st);
  failed += norm_shrink_check::normShrinkChecks(gemm, rng, st);
  // o's shape over 8 rank-64 slots, fewer tokens than a tile, columns that end inside a stage.
  const LateCase lateCases[] = {{32, 4096, 4096, 512, 2}, {7, 1000, 2048, 136, 2}, {32, 512, 256, 64, 1}};
  for (const LateCase& c : lateCases) failed += checkLate(gemm, c, rng, st);
  std::printf("%d failed\n", failed);
  return failed == 0 ? 0 : 1;
}


// o's and down's GEMM with 8 slots of rank 16 or 64 and the residual's norm after it, as a decode
// step runs them: without LoRA; at rank 16 the deltas in the GEMM, or the GEMM's shrink tiles
// leaving them to rmsnormDelta; at both ranks the shrink spread over the weight blocks and the
// deltas from the padding columns. At rank 16 also its parts (the GEMM alone, each GEMM with the
// plain norm, rmsnormDelta after the plain GEMM), o behind a kernel that holds the shared memory
// as the attention before it does, so that the GEMM's blocks find room only as that kernel's leave,
// the shrink tiles reading A from memory as a decode step does (and o's GEMM asking L2 for gate/up's
// A rows as it does; the norm released as the GEMM starts), rmsnormDelta over rows that have no
// adapter, and the parts again over values that are not zeros, which read slower
// (bench/results/2026-12-04-h200-lora-norm-mids.json).
void benchDeltaInNorm(cudaStream_t st, int sms) {
  const int T = 32, slots = 8, copies = 4, iters = 64, H = 4096, maxR = 64;
  float *gu = nullptr, *Y = nullptr, *mid = nullptr;
  CK(cudaMalloc(&gu, static_cast<size_t>(T) * 2 * 14336 * 4));
  CK(cudaMemset(gu, 0, static_cast<size_t>(T) * 2 * 14336 * 4));
  CK(cudaMalloc(&Y, static_cast<size_t>(T) * H * 4));
  CK(cudaMemset(Y, 0, static_cast<size_t>(T) * H * 4));
  const size_t midFloats = static_cast<size_t>(T) * maxR * slots;
  CK(cudaMalloc(&mid, midFloats * 4));
  CK(cudaMemset(mid, 0, midFloats * 4));
  float* w = upload(std::vector<float>(H, 1.0f));
  bf16_t* xn = nullptr;
  CK(cudaMalloc(&xn, static_cast<size_t>(T) * H * 2));
  std::vector<int32_t> slot(T);
  for (int t = 0; t < T; ++t) slot[t] = t % slots;
  int32_t* dSlot = upload(slot);
  // Every token of slot 0: one adapter for the whole batch.
  int32_t* dOneSlot = upload(std::vector<int32_t>(T, 0));
  // No token with an adapter: rmsnormDelta reads no B and adds no delta, what its cluster costs alone.
  int32_t* dNoSlot = upload(std::vector<int32_t>(T, -1));
  int32_t* rowSlot = dSlot;
  // gate/up's rank-16 A rows of every slot (two slices), for o's prefetch.
  bf16_t* gateUpA = nullptr;
  CK(cudaMalloc(&gateUpA, static_cast<size_t>(2) * slots * 16 * H * 2));
  CK(cudaMemset(gateUpA, 0, static_cast<size_t>(2) * slots * 16 * H * 2));
  DecodeGemm gemm(sms);
  CK(cudaFuncSetAttribute(smemHoldKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kHoldBytes));
  for (const int R : {16, 64}) {
    int32_t* dRank = upload(std::vector<int32_t>(slots * 7, R));
    float* dScale = upload(std::vector<float>(slots, 1.0f));
    for (const int K : {4096, 14336}) {
      const bool silu = K != H;
      const int ldw = K + slots * R;
      const size_t wElems = static_cast<size_t>(H) * ldw, btElems = static_cast<size_t>(slots) * R * H;
      bf16_t *W = nullptr, *X = nullptr, *A = nullptr, *Bt = nullptr;
      CK(cudaMalloc(&W, wElems * copies * 2));
      CK(cudaMemset(W, 0, wElems * copies * 2));
      CK(cudaMalloc(&X, static_cast<size_t>(T) * K * 2));
      CK(cudaMemset(X, 0, static_cast<size_t>(T) * K * 2));
      // A in copies as well, read in turn where coldA is set: a decode step reads A from memory,
      // not from L2 as one copy read by every replay is.
      const size_t aElems = static_cast<size_t>(slots) * R * K;
      CK(cudaMalloc(&A, aElems * copies * 2));
      CK(cudaMemset(A, 0, aElems * copies * 2));
      bool coldA = false, prefetch = false, atStart = false;
      CK(cudaMalloc(&Bt, btElems * copies * 2));
      CK(cudaMemset(Bt, 0, btElems * copies * 2));
      auto before = [&](cudaStream_t s2) {
        if (silu) {
          siluMul(gu, X, T, K, s2, K);
        } else {
          shortKernel<<<sms, 128, 0, s2>>>();
        }
      };
      enum class Form { kBase, kInGemm, kTiles, kSpread };
      auto args = [&](int i, Form f) {
        DecodeGemmArgs a;
        a.W = W + (i % copies) * wElems, a.ldw = ldw, a.X = X, a.ldx = K, a.Y = Y, a.ldy = H, a.M = T, a.N = H, a.K = K;
        a.accumulate = true;
        if (f == Form::kBase) return a;
        DecodeGemmLora& l = a.lora;
        l.A = A + (coldA ? (i % copies) * aElems : 0), l.lda = K, l.rows = slots * R, l.maxRank = R, l.B = f == Form::kTiles ? nullptr : a.W + K, l.ldb = ldw;
        l.rowSlot = rowSlot, l.ranks = dRank, l.rankPitch = 7, l.module = 6, l.scaling = dScale, l.mid = mid;
        l.spread = f == Form::kSpread;
        if (prefetch) {
          // gate/up's A rows asked of L2 at the end, as a decode step's o GEMM does (rank 16, two slices).
          DecodeGemmPrefetch& pf = a.prefetch;
          pf.a[0] = gateUpA, pf.a[1] = gateUpA + static_cast<size_t>(slots) * 16 * H;
          pf.slotStride[0] = pf.slotStride[1] = static_cast<size_t>(16) * H;
          pf.bytes = static_cast<size_t>(16) * H * 2, pf.slices = 2, pf.rowSlot = rowSlot;
        }
        return a;
      };
      // The GEMM in form f, then rmsnorm, or rmsnormDelta after the shrink tiles, launched as a
      // decode step launches them: the norm early, released once the GEMM's products are summed.
      // norm: the norm's form (kDefault: rmsnormDelta after the shrink tiles, else rmsnorm).
      enum class Norm { kDefault, kNone, kPlain, kDelta };
      // hold: behind smemHoldKernel (as o's GEMM is behind the attention) instead of before().
      auto holding = [&](cudaStream_t s2) { smemHoldKernel<<<2 * sms, 128, kHoldBytes, s2>>>(30000); };
      auto time = [&](Form f, Norm norm = Norm::kDefault, bool hold = false) {
        if (!gemm.supports(args(0, f), 2)) return -1.0;
        auto call = [&](int i, cudaStream_t s2) {
          DecodeGemmArgs a = args(i, f);
          a.releaseEarly = true, a.releaseAtStart = atStart;
          gemm.run(a, 2, s2, true);
          if (norm == Norm::kNone) return;
          if (norm == Norm::kPlain || (norm == Norm::kDefault && f != Form::kTiles))
            return rmsnorm(Y, nullptr, w, xn, T, H, 1e-5f, s2, 0, true);
          ResidualDelta d;
          d.bt = Bt + (i % copies) * btElems, d.rowSlot = rowSlot, d.ranks = dRank, d.rankPitch = 7, d.module = 6;
          d.maxRank = R, d.mid = mid;
          rmsnormDelta(Y, w, xn, T, H, 1e-5f, H, d, s2, true);
        };
        return hold ? graphCallUs(st, iters, holding, call) : graphCallUs(st, iters, before, call);
      };
      std::printf(
          "%-4s and the norm after it, 8 rank-%d slots: no LoRA %6.2f; deltas in the GEMM %6.2f; shrink tiles, "
          "deltas in the norm %6.2f; shrink spread, deltas from the padding %6.2f\n",
          silu ? "down" : "o", R, time(Form::kBase), time(Form::kInGemm), time(Form::kTiles), time(Form::kSpread));
      if (R == 16)
        std::printf(
            "%-4s 8 rank-16 slots, the parts: GEMM alone %6.2f, with shrink tiles %6.2f; the GEMM and rmsnorm %6.2f, "
            "with shrink tiles %6.2f; the GEMM and rmsnormDelta %6.2f\n",
            silu ? "down" : "o", time(Form::kBase, Norm::kNone), time(Form::kTiles, Norm::kNone),
            time(Form::kBase, Norm::kPlain), time(Form::kTiles, Norm::kPlain), time(Form::kBase, Norm::kDelta));
      if (R == 16 && !silu)
        std::printf(
            "o    8 rank-16 slots behind a kernel holding shared memory (%6.2f alone): GEMM and rmsnorm %6.2f, with "
            "shrink tiles %6.2f; GEMM and rmsnormDelta %6.2f, with shrink tiles %6.2f\n",
            graphCallUs(st, iters, holding, [](int, cudaStream_t) {}), time(Form::kBase, Norm::kPlain, true),
            time(Form::kTiles, Norm::kPlain, true), time(Form::kBase, Norm::kDelta, true),
            time(Form::kTiles, Norm::kDefault, true));
      if (R == 16) {
        coldA = true;
        std::printf("%-4s 8 rank-16 slots, A read from memory: GEMM with shrink tiles %6.2f, and rmsnormDelta %6.2f",
                    silu ? "down" : "o", time(Form::kTiles, Norm::kNone), time(Form::kTiles));
        if (!silu) std::printf(", behind a kernel holding shared memory %6.2f", time(Form::kTiles, Norm::kDefault, true));
        std::printf("\n");
        if (!silu) {
          prefetch = true;
          std::printf("o    8 rank-16 slots, A from memory and gate/up's A asked of L2: GEMM with shrink tiles %6.2f, "
                      "and rmsnormDelta %6.2f\n",
                      time(Form::kTiles, Norm::kNone), time(Form::kTiles));
          prefetch = false;
        }
        // The norm released as the GEMM's blocks start (releaseAtStart) against once their products
        // are summed (in brackets): its B rows read beside the weights.
        const double plain = time(Form::kBase, Norm::kPlain), delta = time(Form::kTiles);
        const double held = silu ? 0 : time(Form::kTiles, Norm::kDefault, true);
        atStart = true;
        const double plainAtStart = time(Form::kBase, Norm::kPlain), deltaAtStart = time(Form::kTiles);
        const double heldAtStart = silu ? 0 : time(Form::kTiles, Norm::kDefault, true);
        atStart = false;
        std::printf("%-4s 8 rank-16 slots, A from memory, the norm released at the GEMM's start: the GEMM and rmsnorm "
                    "%6.2f (%6.2f), with shrink tiles and rmsnormDelta %6.2f (%6.2f)",
                    silu ? "down" : "o", plainAtStart, plain, deltaAtStart, delta);
        if (!silu) std::printf(", behind a kernel holding shared memory %6.2f (%6.2f)", heldAtStart, held);
        std::printf("\n");
        coldA = false;
        rowSlot = dNoSlot;
        std::printf("%-4s the GEMM and rmsnormDelta over rows without adapters %6.2f (rmsnorm %6.2f)\n",
                    silu ? "down" : "o", time(Form::kBase, Norm::kDelta), time(Form::kBase, Norm::kPlain));
      }
      rowSlot = dOneSlot;
      std::printf("%-4s and the norm after it, 8 rank-%d slots, every token slot 0's: shrink spread %6.2f\n",
                  silu ? "down" : "o", R, time(Form::kSpread));
      rowSlot = dSlot;
      if (R == 16) {
        // The same with values that are not zeros (the residual keeps what the replays added).
        fillNoise(W, wElems * copies, 1, 0.02f), fillNoise(X, static_cast<size_t>(T) * K, 2, 1.0f);
        fillNoise(A, aElems * copies, 3, 0.02f), fillNoise(Bt, btElems * copies, 4, 0.02f);
        fillNoise(gu, static_cast<size_t>(T) * 2 * 14336, 5, 1.0f);
        coldA = true;
        std::printf("%-4s 8 rank-16 slots, values not zeros, A from memory: GEMM alone %6.2f, with shrink tiles %6.2f; "
                    "the GEMM and rmsnorm %6.2f, with shrink tiles and rmsnormDelta %6.2f",
                    silu ? "down" : "o", time(Form::kBase, Norm::kNone), time(Form::kTiles, Norm::kNone),
                    time(Form::kBase, Norm::kPlain), time(Form::kTiles));
        if (!silu) {
          prefetch = true;
          std::printf("; with gate/up's prefetch %6.2f", time(Form::kTiles));
          prefetch = false;
        }
        std::printf("\n");
        coldA = false;
        CK(cudaMemset(gu, 0, static_cast<size_t>(T) * 2 * 14336 * 4));
      }
      for (void* p : {static_cast<void*>(W), static_cast<void*>(X), static_cast<void*>(A), static_cast<void*>(Bt)})
        cudaFree(p);
    }
    cudaFree(dRank);
    cudaFree(dScale);
  }
  for (void* p : {static_cast<void*>(gu), static_cast<void*>(Y), static_cast<void*>(mid), static_cast<void*>(w),
                  static_cast<void*>(xn), static_cast<void*>(dSlot), static_cast<void*>(dOneSlot),
                  static_cast<void*>(dNoSlot), static_cast<void*>(gateUpA)})
    cudaFree(p);
}

// q/k/v (Llama-8B, 32 tokens over 8 slots) behind a 2 us kernel: cuBLAS over x alone and over x
// and the padding columns (the engine's GEMM after an item shrink: rank 16's shared row, rank 64's
// split rows as the same bytes), against ours with the shrink spread over the weight blocks.
void benchQkvSpread(cudaStream_t st, Gemm& cublas, int sms) {
  const int T = 32, slots = 8, copies = 4, iters = 64, N = 6144, K = 4096;
  float* Y = nullptr;
  CK(cudaMalloc(&Y, static_cast<size_t>(T) * N * 4));
  std::vector<int32_t> slot(T);
  for (int t = 0; t < T; ++t) slot[t] = t % slots;
  int32_t* dSlot = upload(slot);
  int32_t* dOneSlot = upload(std::vector<int32_t>(T, 0));  // one adapter for the whole batch
  float* dScale = upload(std::vector<float>(slots, 1.0f));
  DecodeGemm gemm(sms);
  auto before = [&](cudaStream_t s2) { shortKernel<<<sms, 128, 0, s2>>>(); };
  for (const int R : {16, 64}) {
    const bool split = R == 64;
    const int rows = 3 * slots * R, pad = split ? slots * R : rows, ldw = K + pad;
    const size_t wElems = static_cast<size_t>(N) * ldw;
    int32_t* dRank = upload(std::vector<int32_t>(slots * 7, R));
    bf16_t *W = nullptr, *X = nullptr, *A = nullptr;
    CK(cudaMalloc(&W, wElems * copies * 2));
    CK(cudaMemset(W, 0, wElems * copies * 2));
    CK(cudaMalloc(&X, static_cast<size_t>(T) * ldw * 2));
    CK(cudaMemset(X, 0, static_cast<size_t>(T) * ldw * 2));
    CK(cudaMalloc(&A, static_cast<size_t>(rows) * K * 2));
    CK(cudaMemset(A, 0, static_cast<size_t>(rows) * K * 2));
    auto cb = [&](int k) {
      return graphCallUs(st, iters, before, [&](int i, cudaStream_t) {
        cublas.linear(T, N, k, W + (i % copies) * wElems, ldw, X, ldw, Y, ElemType::F32, 1, 0);
      });
    };
    DecodeGemmArgs a;
    a.W = W, a.ldw = ldw, a.X = X, a.ldx = ldw, a.Y = Y, a.ldy = N, a.M = T, a.N = N, a.K = K;
    DecodeGemmLora& l = a.lora;
    l.A = A, l.lda = K, l.rows = rows, l.maxRank = R, l.B = W + K, l.ldb = ldw, l.rowSlot = dSlot, l.ranks = dRank;
    l.rankPitch = 7, l.module = 0, l.scaling = dScale, l.spread = true, l.modules = 3, l.splitRows = split;
    l.moduleRow[1] = 4096, l.moduleRow[2] = 5120;
    auto ours = [&] {
      return !gemm.supports(a, 1) ? -1.0 : graphCallUs(st, iters, before, [&](int i, cudaStream_t s2) {
        DecodeGemmArgs b = a;
        b.W = W + (i % copies) * wElems, b.lora.B = b.W + K;
        gemm.run(b, 1, s2, true);
      });
    };
    std::printf("q/k/v, 8 rank-%d slots: cuBLAS over x %6.2f, over x and the padding %6.2f; ours, shrink spread %6.2f\n",
                R, cb(K), cb(K + pad), ours());
    a.lora.rowSlot = dOneSlot;
    std::printf("q/k/v, 8 rank-%d slots, every token slot 0's: ours, shrink spread %6.2f\n", R, ours());
    a.lora.rowSlot = dSlot;
    for (void* p : {static_cast<void*>(W), static_cast<void*>(X), static_cast<void*>(A), static_cast<void*>(dRank)})
      cudaFree(p);
  }
  for (void* p : {static_cast<void*>(Y), static_cast<void*>(dSlot), static_cast<void*>(dOneSlot), static_cast<void*>(dScale)})
    cudaFree(p);
}

int bench() {
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s, %d SMs; 32 tokens; us a call replayed from a CUDA graph, 4 copies of the weights\n", prop.name,
              prop.multiProcessorCount);
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  Gemm cublas(st);
  DecodeGemm gemm(prop.multiProcessorCount);
  struct Shape {
    const char* name;
    int N, K, splits;
    bool accumulate, silu;  // silu: behind siluMul making the rows, as the down projection is
    int loraRows = 0;       // 8 slots of rank 16 taken inside the GEMM, the tokens over them
  };
  const Shape shapes[] = {{"q/k/v", 6144, 4096, 1, false, false},
                          {"q/k/v + r16 pad", 6144, 4480, 1, false, false},
                          {"q/k/v, LoRA in", 6144, 4096, 1, false, false, 128},
                          {"o", 4096, 4096, 2, true, false},
                          {"o + r16 pad", 4096, 4224, 2, true, false},
                          {"o, N 4160", 4160, 4096, 2, true, false},
                          {"o, N 4224", 4224, 4096, 2, true, false},
                          {"down, N 4224", 4224, 14336, 2, true, true},
                          {"o + r64 pad", 4096, 4608, 2, true, false},
                          {"down", 4096, 14336, 2, true, false},
                          {"down", 4096, 14336, 2, true, true},
                          {"down + r64 pad", 4096, 14848, 2, true, true},
                          {"o, LoRA in", 4096, 4096, 2, true, false, 128},
                          {"down + r16 pad", 4096, 14464, 2, true, true},
                          {"down, LoRA in", 4096, 14336, 2, true, true, 128}};
  const int T = 32, copies = 4, iters = 64;
  float *gu = nullptr, *Y = nullptr;
  CK(cudaMalloc(&gu, static_cast<size_t>(T) * 2 * 14848 * 4));
  CK(cudaMemset(gu, 0, static_cast<size_t>(T) * 2 * 14848 * 4));
  CK(cudaMalloc(&Y, static_cast<size_t>(T) * 6144 * 4));
  CK(cudaMemset(Y, 0, static_cast<size_t>(T) * 6144 * 4));
  for (const Shape& s : shapes) {
    bf16_t *W = nullptr, *X = nullptr, *A = nullptr;
    const int ldw = s.K + s.loraRows;
    const size_t wElems = static_cast<size_t>(s.N) * ldw;
    CK(cudaMalloc(&W, wElems * copies * 2));
    CK(cudaMemset(W, 0, wElems * copies * 2));
    CK(cudaMalloc(&X, static_cast<size_t>(T) * s.K * 2));
    CK(cudaMemset(X, 0, static_cast<size_t>(T) * s.K * 2));
    auto before = [&](cudaStream_t s2) {
      if (s.silu) {
        siluMul(gu, X, T, s.K, s2, s.K);
      } else {
        shortKernel<<<prop.multiProcessorCount, 128, 0, s2>>>();
      }
    };
    auto timed = [&](auto&& call) { return graphCallUs(st, iters, before, call); };
    const double alone = timed([](int, cudaStream_t) {});
    const double cb = timed([&](int i, cudaStream_t s2) {
      (void)s2;
      cublas.linear(T, s.N, s.K, W + (i % copies) * wElems, ldw, X, s.K, Y, ElemType::F32, 1, s.accumulate ? 1 : 0);
    });
    DecodeGemmArgs a;
    a.ldw = ldw, a.X = X, a.ldx = s.K, a.Y = Y, a.ldy = s.N, a.M = T, a.N = s.N, a.K = s.K;
    a.accumulate = s.accumulate;
    int32_t *slots = nullptr, *ranks = nullptr;
    float *scaling = nullptr, *mid = nullptr;
    if (s.loraRows > 0) {
      std::vector<int32_t> slot(T), rank(8 * 7, 16);
      for (int t = 0; t < T; ++t) slot[t] = t % 8;
      slots = upload(slot);
      ranks = upload(rank);
      scaling = upload(std::vector<float>(8, 1.0f));
      mid = upload(std::vector<float>(static_cast<size_t>(T) * s.loraRows));
      CK(cudaMalloc(&A, static_cast<size_t>(s.loraRows) * s.K * 2));
      CK(cudaMemset(A, 0, static_cast<size_t>(s.loraRows) * s.K * 2));
      DecodeGemmLora& l = a.lora;
      l.A = A, l.lda = s.K, l.rows = s.loraRows, l.maxRank = 16, l.ldb = ldw, l.rowSlot = slots, l.ranks = ranks;
      l.rankPitch = 7, l.module = 6, l.scaling = scaling, l.mid = mid;
    }
    auto ours = [&](bool pdl) {
      return timed([&](int i, cudaStream_t s2) {
        DecodeGemmArgs b = a;
        b.W = W + (i % copies) * wElems;
        if (b.lora.A) b.lora.B = b.W + s.K;
        gemm.run(b, s.splits, s2, pdl);
      });
    };
    a.W = W;
    if (a.lora.A) a.lora.B = W + s.K;
    const bool ok = gemm.supports(a, s.splits);
    std::printf("%-15s behind %-12s (%5.2f): cuBLAS %6.2f, ours %6.2f (launched after it %6.2f)\n", s.name,
                s.silu ? "siluMul" : "a 2 us kernel", alone, cb, ok ? ours(true) : -1.0, ok ? ours(false) : -1.0);
    for (void* p : {static_cast<void*>(W), static_cast<void*>(X), static_cast<void*>(A), static_cast<void*>(slots),
                    static_cast<void*>(ranks), static_cast<void*>(scaling), static_cast<void*>(mid)})
      cudaFree(p);
  }
  cudaFree(gu);
  cudaFree(Y);
  benchDeltaInNorm(st, prop.multiProcessorCount);
  benchQkvSpread(st, cublas, prop.multiProcessorCount);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--bench-norm-shrink") == 0) {
    int sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    norm_shrink_check::benchNormShrink(st, sms);
    return 0;
  }
  return checksOrBench(argc, argv, checks, bench);
}
