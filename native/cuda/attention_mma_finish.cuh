// The end of a tensor-core decode attention block (attention_mma.cu, attention_tma.cu): its warps'
// partial softmaxes combined in a fixed order (results do not depend on timing), then the split's
// output written: the final row when the block holds the whole context (and the o projection's
// LoRA columns with it, lora_o_epilogue.cuh), else the split's sums, maximum and total for the
// combine kernel (attention.cu).
#pragma once

#include <cuda_bf16.h>

#include "cuda/kernels.h"
#include "cuda/lora_o_epilogue.cuh"

namespace troupe {
namespace cuda {
namespace attention_ops {

// The first kThreadCount threads of the block call it (kNamed: those alone meet at named barrier 1,
// as a copying warp goes on; else the whole block meets at its barriers); the first kWarps warps
// bring their row gi's running maximum m, sum l (this lane's share) and O fragments o
// (attention_mma.cu's layout), and any warps after them (a copying warp) only take part in the
// barriers and writes. smem: at least kWarps G D floats that no copy still fills.
template <int D, int G, int kWarps, int kThreadCount, bool kNamed = false>
__device__ __forceinline__ void finishDecodeBlock(float m, float l, const float (&o)[D / 8][4], unsigned char* smem,
                                                  int local, int t, int g, int s, int splits, int H, int KVH,
                                                  float* partial, float* partialMl, bf16_t* out,
                                                  const OLoraEpilogue& epi) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gi = lane >> 2, qi = lane & 3;
  const bool consumer = warp < kWarps;
  auto sync = [] {
    if constexpr (kNamed)
      asm volatile("bar.sync 1, %0;" ::"n"(kThreadCount) : "memory");
    else
      __syncthreads();
  };
  float* so = reinterpret_cast<float*>(smem);  // [kWarps][G][D]
  __shared__ float sm[kWarps][G], sl[kWarps][G];
  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);
  if (consumer && gi < G && qi == 0) {
    sm[warp][gi] = m;
    sl[warp][gi] = l;
  }
  sync();
  if (consumer && gi < G) {
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm[w][gi]);
    const float c = m == -INFINITY ? 0.0f : __expf(m - M);
    float* row = so + (warp * G + gi) * D;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      row[n * 8 + 2 * qi] = o[n][0] * c;
      row[n * 8 + 2 * qi + 1] = o[n][1] * c;
    }
  }
  __shared__ float sL[G];
  if (threadIdx.x < G) {
    const int j = threadIdx.x;
    float M = -INFINITY, L = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm[w][j]);
#pragma unroll
    for (int w = 0; w < kWarps; ++w) L += sm[w][j] == -INFINITY ? 0.0f : sl[w][j] * __expf(sm[w][j] - M);
    sL[j] = L;
    if (!out) {
      float* ml = partialMl + ((static_cast<size_t>(local) * H + g * G + j) * splits + s) * 2;
      ml[0] = M;
      ml[1] = L;
    }
  }
  sync();
  // Token t's row: [head][headDim], or its augmented row when the o shrink is taken here.
  const size_t outRow = static_cast<size_t>(t) * (epi.a ? epi.ld : H * D);
  constexpr int kMine = (G * D + kThreadCount - 1) / kThreadCount;
  float mine[kMine];
#pragma unroll
  for (int i = 0; i < kMine; ++i) {
    const int e = threadIdx.x + i * kThreadCount;
    if (e >= G * D) break;
    const int j = e / D, d = e % D;
    float sum = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += so[(w * G + j) * D + d];
    if (out) {
      // One split: the whole context is here, so the output is final (no combine kernel).
      const __nv_bfloat16 v = __float2bfloat16_rn(sum / sL[j]);
      out[outRow + (g * G + j) * D + d] = __bfloat16_as_ushort(v);
      mine[i] = __bfloat162float(v);
    } else {
      partial[((static_cast<size_t>(local) * H + g * G + j) * splits + s) * D + d] = sum;
    }
  }
  // The features here are [g G D, (g + 1) G D) of the row; so is free once every thread has its sums.
  if constexpr (!kNamed)
    if (epi.a) oLoraEpilogue<G * D, kThreadCount>(epi, t, g, KVH, mine, so);
}

}  // namespace attention_ops
}  // namespace cuda
}  // namespace troupe
