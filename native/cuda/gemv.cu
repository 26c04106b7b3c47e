// Matrix-vector products for decode steps of a few tokens: Y[m][n] (+)= X[m] . W[n] over K, for
// M <= kGemvLimitRows (kGemvMaxRows in a decode step: past it the per-weight arithmetic outweighs
// the saved bandwidth and cuBLAS wins). A step of one to a few sequences is bound by reading the
// weights once, and cuBLAS's GEMM kernels at this shape stream them at well under the device's
// bandwidth. Here a warp owns two output rows: its lanes read them in contiguous 16-byte pieces
// (streaming loads, since each weight is used once per step), two rounds of pieces in flight per
// lane, and dot them with every token's x (small, cached in L1).
//
// Launched early (pdl.cuh), a GEMV loads the first pieces of its rows while the kernel before it
// (an RMSNorm, the attention's combine, SiLU-and-mul) still runs: the weights are the model's, only
// X and Y come from that kernel. At a few tokens those kernels leave the memory idle, and each
// GEMV would otherwise begin its stream only once they end.
#include <cuda_bf16.h>

#include "cuda/bf16_dot.cuh"
#include "cuda/device.h"
#include "cuda/kernels.h"
#include "cuda/pdl.cuh"

namespace troupe {
namespace cuda {

namespace {

constexpr int kWarps = 8;

// A warp owns kRows weight rows: each token piece it loads from L1 then serves both. Each round's
// weight pieces are loaded before the previous round's products, so a lane keeps two rounds in
// flight. Against one row a warp loading after its products, on an H200 at Llama-8B's shapes
// (us a projection behind a 2 us kernel): 1 token q/k/v 14.4 against 16.8, down 30.8 against 31.8;
// 3 tokens down 31.6 against 40.6 (cuBLAS 34.0); and a decode step of 1, 2, 3 tokens 4.10, 4.51,
// 4.46 ms against 4.32-4.36, 4.64-4.73, 5.06-5.16 (bench/results/2026-12-02-h200-gemv-forms.json).
constexpr int kRows = 2;
// Pieces a lane loads per row each round: 4, except 2 at two tokens, where 4 took 125 us over
// Llama-8B's four projections alone against 121 with 2 (cuBLAS 123), and a decode step 4.50-4.72
// ms against 4.42-4.51 (cuBLAS 4.81-4.82); at one and three tokens 2 took 116 and 131 us against
// 113 and 123. Four rows a warp, or 4 or 16 warps a block, did no better
// (bench/results/2026-12-02-h200-gemv-shapes.json).
__host__ __device__ constexpr int unrollFor(int M) { return M == 2 ? 2 : 4; }

template <int M>
__global__ void __launch_bounds__(kWarps * 32)
    gemvKernel(const bf16_t* __restrict__ W, int ldw, const bf16_t* __restrict__ X, int ldx, float* __restrict__ Y,
               int N, int K, bool accumulate) {
  constexpr int kUnroll = unrollFor(M);
  const int lane = threadIdx.x & 31;
  const int n = (blockIdx.x * kWarps + (threadIdx.x >> 5)) * kRows;
  // Every block has a row in its first warp, so each block waits before it exits (pdl.cuh).
  if (n >= N) return;
  const int chunks = K / 8;  // 16-byte pieces per row
  // A warp's rows past N repeat row N - 1 (their sums are not written).
  const uint4* w[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
    w[r] = reinterpret_cast<const uint4*>(W + static_cast<size_t>(min(n + r, N - 1)) * ldw);
  // The loop's first round is loaded before the wait. Starting the next few KB of each row toward
  // L2 as well made steps slower (batch 1: 5.47-5.57 ms against 5.01-5.03 on an H200): the
  // kernel before, and the GEMV's own loads, then wait behind those lines.
  uint4 wv[kRows][kUnroll];
  int c = lane;
  if (c + 32 * (kUnroll - 1) < chunks) {
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) wv[r][u] = __ldcs(w[r] + c + 32 * u);
  }
  pdlWait();
  // The grid's last blocks are placed by now: a GEMV launched early after this one (gate's,
  // then up's) is placed as these blocks leave, and starts its stream under their tail.
  pdlLaunchDependents();
  const uint4* x = reinterpret_cast<const uint4*>(X);
  const int xPitch = ldx / 8;  // 16-byte pieces between token rows
  float acc[kRows][M];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int m = 0; m < M; ++m) acc[r][m] = 0;
  for (; c + 32 * (kUnroll - 1) < chunks; c += 32 * kUnroll) {
    uint4 next[kRows][kUnroll];
    const int cn = c + 32 * kUnroll;
    if (cn + 32 * (kUnroll - 1) < chunks) {
#pragma unroll
      for (int r = 0; r < kRows; ++r)
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) next[r][u] = __ldcs(w[r] + cn + 32 * u);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const uint4 xv = __ldg(x + static_cast<size_t>(m) * xPitch + c + 32 * u);
#pragma unroll
        for (int r = 0; r < kRows; ++r) dot8(wv[r][u], xv, acc[r][m]);
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) wv[r][u] = next[r][u];
  }
  for (; c < chunks; c += 32) {
    uint4 wt[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) wt[r] = __ldcs(w[r] + c);
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const uint4 xv = __ldg(x + static_cast<size_t>(m) * xPitch + c);
#pragma unroll
      for (int r = 0; r < kRows; ++r) dot8(wt[r], xv, acc[r][m]);
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float v = acc[r][m];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane == 0 && n + r < N) {
        float* y = Y + static_cast<size_t>(m) * N + n + r;
        *y = accumulate ? *y + v : v;
      }
    }
  }
}

template <int M>
void launch(const bf16_t* W, int ldw, const bf16_t* X, int ldx, float* Y, int N, int K, bool accumulate, cudaStream_t s,
            bool early) {
  constexpr int kBlockRows = kWarps * kRows;
  launchPdl(gemvKernel<M>, dim3((N + kBlockRows - 1) / kBlockRows), dim3(kWarps * 32), s, early, "GEMV launch", W, ldw,
            X, ldx, Y, N, K, accumulate);
}

}  // namespace

bool gemvSupported(int M, int K, const bf16_t* W, int ldw, const bf16_t* X, int ldx) {
  return M >= 1 && M <= kGemvLimitRows && K % 8 == 0 && ldw % 8 == 0 && ldx % 8 == 0 && aligned16(W) && aligned16(X);
}

void gemv(const bf16_t* W, int ldw, const bf16_t* X, int ldx, float* Y, int M, int N, int K, bool accumulate,
          cudaStream_t s, bool early) {
  switch (M) {
    case 1:
      return launch<1>(W, ldw, X, ldx, Y, N, K, accumulate, s, early);
    case 2:
      return launch<2>(W, ldw, X, ldx, Y, N, K, accumulate, s, early);
    case 3:
      return launch<3>(W, ldw, X, ldx, Y, N, K, accumulate, s, early);
    default:
      return launch<4>(W, ldw, X, ldx, Y, N, K, accumulate, s, early);
  }
}

}  // namespace cuda
}  // namespace troupe
