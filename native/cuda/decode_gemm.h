// A decode projection's GEMM of the engine's own (compute capability 9.0, sm_90a code), for the
// projections that add into the residual (o and down) at up to 32 tokens. cuBLAS's GEMM there
// starts reading its weights only once the kernel before has finished; this one is launched with
// programmatic dependent launch and copies its first weight stages while that kernel drains, and
// it splits each 64-row tile's K over two blocks so that every multiprocessor streams. Measured on
// an H200 at Llama-8B's shapes (bench/results/2026-12-01-h200-decode-gemm.json): down 35.1 us
// behind siluMul against 36.4 for cuBLAS, o 13.9 behind a 2 us kernel against 14.7; cuBLAS stays
// for q/k/v (whole tiles here: 18.3 against 17.3) and gate/up (more tiles than multiprocessors).
//
// The form: 64 weight rows a tile and every token (up to 32) a tile; the tensor memory accelerator
// copies four 64-wide K boxes of the weights and of the token rows a stage (48 KB, 128-byte
// swizzle), four stages; two warpgroups take alternate stages with wgmma (64 x 32 x 16) and add
// their sums at the tile's end. A tile's splits meet in a workspace, and the last block of the
// tile to finish adds them in block order (the same result every time).
#pragma once

#include <cuda_runtime_api.h>

#include "cuda/device.h"
#include "cuda/kernels.h"

namespace troupe {
namespace cuda {

constexpr int kDecodeGemmMaxRows = 32;

// Y[m][n] = sum over k < K of X[m][k] W[n][k] (+ Y[m][n] when accumulating) for m < M, n < N: row
// m of Y at Y + m ldy (f32), of X at X + m ldx and row n of W at W + n ldw (bf16).
struct DecodeGemmArgs {
  const bf16_t* W = nullptr;
  int ldw = 0;
  const bf16_t* X = nullptr;
  int ldx = 0;
  float* Y = nullptr;
  int ldy = 0;
  int M = 0, N = 0, K = 0;
  bool accumulate = false;
};

class DecodeGemm {
 public:
  explicit DecodeGemm(int sms);
  // Whether this build has the kernel for the current device.
  static bool available();
  // 1 <= M <= 32; K and the leading dimensions multiples of 8; W and X 16-byte aligned; at least
  // `splits` stages of K; and every block (tiles x splits, one a multiprocessor) resident at once.
  bool supports(const DecodeGemmArgs& a, int splits) const;
  // pdl: may start while the kernel before drains; X and Y are read only after it completes.
  void run(const DecodeGemmArgs& a, int splits, cudaStream_t st, bool pdl);

 private:
  int sms_;
  DeviceBuffer<float> partials_;     // the splits' sums, [block][64 rows x 32 tokens]
  DeviceBuffer<unsigned> counters_;  // splits done per row tile; the last one sets it back to 0
};

}  // namespace cuda
}  // namespace troupe
