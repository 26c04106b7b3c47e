// The LoRA delta of a projection of the fused layout (lora_fused.h) on its own, from the LoRA
// columns a shrink wrote into the augmented rows and the B factors in the weight's padding: for a
// decode step whose down projection runs its base GEMM over the input columns alone, while the
// shrink and this kernel run beside it, and the next RMSNorm adds the delta to the residual.
#include <cuda_bf16.h>

#include <stdexcept>

#include "cuda/bf16_dot.cuh"
#include "cuda/device.h"
#include "cuda/lora_augmented.cuh"
#include "cuda/lora_fused.h"

namespace troupe {
namespace cuda {

namespace {

constexpr int kThreads = 256;

// Block (t, feature tile): each thread one output feature n, delta[t][n] = the token's slot's R
// columns of xa dotted with the same columns of W's row n. The token's columns are the same for
// every thread (a broadcast load); each thread's row piece is R contiguous values.
__global__ void columnsDeltaKernel(AugmentedRows xa, int in, int R, const int32_t* rowSlot, const bf16_t* W, int ldw,
                                   int N, float* delta) {
  const int t = blockIdx.y, n = blockIdx.x * kThreads + threadIdx.x;
  if (n >= N) return;
  const int slot = rowSlot[t];
  float sum = 0;
  if (slot >= 0) {
    const uint4* cols = reinterpret_cast<const uint4*>(loraColumns(xa, in, t, 0, 0, slot, R));
    const uint4* w = reinterpret_cast<const uint4*>(W + static_cast<size_t>(n) * ldw + in + slot * R);
    for (int p = 0; p < R / 8; ++p) dot8(__ldg(w + p), __ldg(cols + p), sum);
  }
  delta[static_cast<size_t>(t) * N + n] = sum;
}

}  // namespace

bool columnsDeltaSupported(int in, int R, int ld, int ldw) {
  return in % 8 == 0 && R % 8 == 0 && ld % 8 == 0 && ldw % 8 == 0;
}

void loraColumnsDelta(const AugmentedRows& xa, int in, int R, const int32_t* rowSlot, const bf16_t* W, int ldw, int N,
                      int T, float* delta, cudaStream_t st) {
  if (T == 0) return;
  if (xa.slicePitch != 0 || !columnsDeltaSupported(in, R, xa.ld, ldw))
    throw std::invalid_argument("LoRA columns delta: one shared row a token, 8-aligned columns");
  columnsDeltaKernel<<<dim3((N + kThreads - 1) / kThreads, T), kThreads, 0, st>>>(xa, in, R, rowSlot, W, ldw, N, delta);
  check(cudaGetLastError(), "LoRA columns delta launch");
}

}  // namespace cuda
}  // namespace troupe
