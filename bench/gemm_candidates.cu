// The projections' GEMMs (Llama-3.1-8B shapes; prefill at 2048 and 4096 tokens, or with --decode
// the decode steps the engine hands to cuBLAS, 33 to 128 tokens, and 32-token q/k/v over rank-16
// LoRA columns) as the engine calls cuBLAS (cublasGemmEx, CUBLAS_GEMM_DEFAULT, f32 accumulation; q/k/v and gate/up
// writing bf16, o and down adding into the f32 residual with beta 1) against every candidate cublasLt's heuristic
// offers for the same product (up to 32, 32 MB of workspace): whether choosing among them at
// start-up would make those steps faster. Decode shapes read their weights from one of several
// copies in turn, so that each call reads them from memory rather than L2, and print GB/s. Weights and inputs hold
// seeded random values in [-1/32, 1/32) (constant values let the clocks run higher than a model's data does).
//
//   nvcc -std=c++17 -arch=sm_90a -O2 -o /tmp/gemm_candidates bench/gemm_candidates.cu -lcublasLt -lcublas
//   /tmp/gemm_candidates [--decode | --tail]
// --tail: gate/up at 32 tokens over x alone, over the rank-16 LoRA padding columns, and with 8 slots'
// A rows of rank 16 or 64 after the weight's (the tail-rows layout).
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <vector>

#include "cuda_bench.cuh"

namespace {

struct Shape {
  const char* name;
  int M, N, K;          // Y[M][N] = X[M][K] W[N][K]^T (+ Y)
  bool residual;        // Y f32 and added to (o, down), else bf16
  bool f32Out = false;  // Y f32 without adding to it (a decode step's q/k/v, gate/up and head)
};

using bench::check;
using bench::fillRandom;

// Mean time of one call over 30, after 5 to warm up.
template <typename F>
float timeCalls(F&& call) {
  return bench::timeCalls(call, 30);
}

}  // namespace

int main(int argc, char** argv) {
  const bool decode = argc > 1 && std::strcmp(argv[1], "--decode") == 0;
  const bool tail = argc > 1 && std::strcmp(argv[1], "--tail") == 0;
  const bool engine = argc > 1 && std::strcmp(argv[1], "--engine") == 0;
  const Shape prefill[] = {{"qkv", 2048, 6144, 4096, false},      {"o", 2048, 4096, 4096, true},
                           {"gate_up", 2048, 28672, 4096, false}, {"down", 2048, 4096, 14336, true},
                           {"qkv", 4096, 6144, 4096, false},      {"o", 4096, 4096, 4096, true},
                           {"gate_up", 4096, 28672, 4096, false}, {"down", 4096, 4096, 14336, true}};
  std::vector<Shape> shapes(std::begin(prefill), std::end(prefill));
  if (decode) {
    shapes = {{"qkv+lora", 32, 6144, 4224, false}, {"gate_up+lora", 32, 28672, 4224, false}};
    for (int m : {48, 64, 96, 128}) {
      for (const Shape& s : {Shape{"qkv", m, 6144, 4096, false}, Shape{"o", m, 4096, 4096, true},
                             Shape{"gate_up", m, 28672, 4096, false}, Shape{"down", m, 4096, 14336, true}})
        shapes.push_back(s);
    }
  }
  if (tail) {
    // gate/up at 32 tokens: over x alone, over x and 8 slots' rank-16 padding columns, and over x
    // with 8 slots' A rows of rank 16 and 64 after the weight's (the tail-rows layout).
    shapes = {{"gate_up", 32, 28672, 4096, false},
              {"gate_up+pad16", 32, 28672, 4224, false},
              {"gate_up+tail16", 32, 28928, 4096, false},
              {"gate_up+tail64", 32, 29696, 4096, false}};
  }
  if (engine) {
    // The GEMMs a decode step of 32 hands cuBLAS as the engine calls them (f32 out): q/k/v over x
    // and with 8 slots' rank-16 A rows after the weight's, gate/up over x and over the rank-16 and
    // rank-64 (split rows) padding columns, and the LM head for 32 and 1 sampled rows.
    shapes = {{"qkv", 32, 6144, 4096, false, true},        {"qkv+tail16", 32, 6528, 4096, false, true},
              {"gate_up", 32, 28672, 4096, false, true},   {"gate_up+pad16", 32, 28672, 4224, false, true},
              {"gate_up+pad64", 32, 28672, 4608, false, true}, {"head", 32, 128256, 4096, false, true},
              {"head", 1, 128256, 4096, false, true}};
  }
  // Decode: enough copies of the weights that one call's are out of L2 by its next turn.
  const int copies = decode || tail || engine ? 8 : 1;
  const size_t wElems = engine ? 128256ull * 4096 : 29696ull * 4224, xElems = 4096ull * 14336,
               yElems = 4096ull * 28672;
  size_t wsBytes = 32u << 20;
  __nv_bfloat16 *W, *X;
  void *Y, *ws;
  check(cudaMalloc(&W, wElems * 2 * copies), "cudaMalloc");
  check(cudaMalloc(&X, xElems * 2), "cudaMalloc");
  check(cudaMalloc(&Y, yElems * 4), "cudaMalloc");
  check(cudaMalloc(&ws, wsBytes), "cudaMalloc");
  fillRandom<<<1024, 256>>>(W, wElems * copies, 1);
  fillRandom<<<1024, 256>>>(X, xElems, 2);
  cudaMemset(Y, 0, yElems * 4);
  cublasHandle_t h;
  check(cublasCreate(&h), "cublasCreate");
  check(cublasSetWorkspace(h, ws, wsBytes), "cublasSetWorkspace");
  cublasLtHandle_t lt;
  check(cublasLtCreate(&lt), "cublasLtCreate");
  const float alpha = 1;
  for (const Shape& s : shapes) {
    const double flop = 2.0 * s.M * s.N * s.K;
    const float beta = s.residual ? 1.0f : 0.0f;
    const cudaDataType_t yType = s.residual || s.f32Out ? CUDA_R_32F : CUDA_R_16BF;
    int turn = 0;
    const auto weights = [&] { return W + (turn++ % copies) * wElems; };
    const float base = timeCalls([&] {
      cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, s.N, s.M, s.K, &alpha, weights(), CUDA_R_16BF, s.K, X, CUDA_R_16BF, s.K,
                   &beta, Y, yType, s.N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    });
    cublasLtMatmulDesc_t op;
    check(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
    const cublasOperation_t tA = CUBLAS_OP_T, tB = CUBLAS_OP_N;
    check(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &tA, sizeof tA), "TRANSA");
    check(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tB, sizeof tB), "TRANSB");
    cublasLtMatrixLayout_t la, lb, lc;
    check(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, s.K, s.N, s.K), "layout W");
    check(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, s.K, s.M, s.K), "layout X");
    check(cublasLtMatrixLayoutCreate(&lc, yType, s.N, s.M, s.N), "layout Y");
    cublasLtMatmulPreference_t pref;
    check(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
    check(
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsBytes, sizeof wsBytes),
        "workspace");
    cublasLtMatmulHeuristicResult_t found[32];
    int n = 0;
    check(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 32, found, &n), "heuristic");
    float best = 1e9f;
    int bestAt = -1;
    float first = 0;
    for (int i = 0; i < n; ++i) {
      const float t = timeCalls([&] {
        cublasLtMatmul(lt, op, &alpha, weights(), la, X, lb, &beta, Y, lc, Y, lc, &found[i].algo, ws, wsBytes, 0);
      });
      if (t < best) best = t, bestAt = i;
      if (i == 0) first = t;
      if (std::getenv("GEMM_CANDIDATE_CONFIGS")) {
        // The candidate's kernel as cublasLt names it (cublasLt.h's enums: tile, stages, split-K,
        // cluster shape).
        int tile = 0, stages = 0, splitK = 0, cluster = 0;
        size_t got = 0;
        cublasLtMatmulAlgoConfigGetAttribute(&found[i].algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, &got);
        cublasLtMatmulAlgoConfigGetAttribute(&found[i].algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages,
                                             &got);
        cublasLtMatmulAlgoConfigGetAttribute(&found[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitK, sizeof splitK,
                                             &got);
        cublasLtMatmulAlgoConfigGetAttribute(&found[i].algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster,
                                             sizeof cluster, &got);
        std::printf("  candidate %2d: %7.1f us, tile id %d, stages id %d, split-K %d, cluster shape id %d\n", i,
                    t * 1e3, tile, stages, splitK, cluster);
      }
    }
    const double bytes = 2.0 * s.N * s.K;  // the weights'; a decode step's inputs and outputs are small
    std::printf(
        "%-12s M %4d N %5d K %5d %s: cublasGemmEx %7.1f us (%3.0f TFLOPS, %4.0f GB/s), best of %2d cublasLt "
        "candidates %7.1f us (%3.0f TFLOPS, %4.0f GB/s; heuristic's #%d, its first %.1f us), %.3fx\n",
        s.name, s.M, s.N, s.K, s.residual ? "(f32 += )" : s.f32Out ? "(f32 out) " : "(bf16 out)", base * 1e3, flop / base / 1e9,
        bytes / base / 1e6, n, best * 1e3, flop / best / 1e9, bytes / best / 1e6, bestAt, first * 1e3, base / best);
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatmulDescDestroy(op);
  }
  return 0;
}
