// One warp's share of a tensor-core decode attention tile (attention_mma.cu, attention_tma.cu):
// Q's fragments, then for each tile the warp's 16 keys: S = Q K^T for the group's query heads
// (rows of the mma's 16; the rest zero) as two n-tiles of mmas over head_dim, the online softmax
// on S's fragments, and P (bf16, as FlashAttention rounds it) times V with the accumulator
// fragments reused as the A operand, V's fragments loaded transposed by ldmatrix.
//
// Fragments follow lora_mma_ops.cuh (mma.m16n8k16, lane = 4 g + q). For Q K^T, K (head_dim) is
// summed over, so lane q loads 8 consecutive dimensions of its rows with one 16-byte load and
// feeds two mmas from it, as the LoRA shrink does; P V uses the documented layouts, since P comes
// straight from S's C fragments.
#pragma once

#include <cuda_bf16.h>

#include "cuda/attention_ops.cuh"
#include "cuda/kernels.h"
#include "cuda/lora_mma_ops.cuh"

namespace troupe {
namespace cuda {
namespace attention_ops {

// Q's A fragments for every 32-dimension chunk: rows gi (a query head of the group, or zero past
// it) and gi + 8 (always past it). qr: the group's first query head of the token.
template <int D, int G>
__device__ __forceinline__ void loadQueryFragments(const bf16_t* qr, uint32_t (&qa)[D / 32][4]) {
  const int lane = threadIdx.x & 31, gi = lane >> 2, qi = lane & 3;
  const bool row = gi < G;
#pragma unroll
  for (int c = 0; c < D / 32; ++c) {
    const uint4 w = row ? *reinterpret_cast<const uint4*>(qr + static_cast<size_t>(gi) * D + c * 32 + 8 * qi)
                        : make_uint4(0, 0, 0, 0);
    qa[c][0] = w.x;
    qa[c][1] = w.y;
    qa[c][2] = w.z;
    qa[c][3] = w.w;
  }
}

// The warp's keys kw to kw + 15, those outside [lo, end) masked, into row gi's running maximum
// m, this lane's share of its sum l, and O's fragments o (o[n][0..1]: dimensions 8 n + 2 qi and
// + 1; o[n][2..3] belong to row gi + 8, past every group, and stay zero). kAt(r, c) and vAt(r, c):
// where in shared memory the values 8 c to 8 c + 7 of the warp's key r lie (16 bytes).
template <int D, typename KAt, typename VAt>
__device__ __forceinline__ void attendWarpKeys(const uint32_t (&qa)[D / 32][4], KAt kAt, VAt vAt, int kw, int lo,
                                               int end, float scale, float& m, float& l, float (&o)[D / 8][4]) {
  using mma_ops::mma;
  const int lane = threadIdx.x & 31, gi = lane >> 2, qi = lane & 3;
  float sc[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
#pragma unroll
  for (int c = 0; c < D / 32; ++c) {
#pragma unroll
    for (int n = 0; n < 2; ++n) {
      const uint4 w = *reinterpret_cast<const uint4*>(kAt(n * 8 + gi, 4 * c + qi));
      mma(sc[n], qa[c][0], 0u, qa[c][1], 0u, w.x, w.y);
      mma(sc[n], qa[c][2], 0u, qa[c][3], 0u, w.z, w.w);
    }
  }
  // Online softmax over the warp's 16 keys for row gi (rows gi + 8 are past every group).
  float p[2][2];
  float mx = -INFINITY;
#pragma unroll
  for (int n = 0; n < 2; ++n)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int k = kw + n * 8 + 2 * qi + e;
      p[n][e] = k >= lo && k < end ? sc[n][e] * scale : -INFINITY;
      mx = fmaxf(mx, p[n][e]);
    }
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
  const float mn = fmaxf(m, mx);
  const float c = mn == -INFINITY ? 1.0f : __expf(m - mn);
  float add = 0;
#pragma unroll
  for (int n = 0; n < 2; ++n)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      p[n][e] = p[n][e] == -INFINITY ? 0.0f : __expf(p[n][e] - mn);
      add += p[n][e];
    }
  l = l * c + add;
  m = mn;
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    o[n][0] *= c;
    o[n][1] *= c;
  }
  // P as the A operand: keys 0-7 of the warp are S's n-tile 0, keys 8-15 n-tile 1.
  const uint32_t pa0 = packBf16(p[0][0], p[0][1]), pa2 = packBf16(p[1][0], p[1][1]);
  const int mi = lane >> 3, ri = lane & 7;
#pragma unroll
  for (int d0 = 0; d0 < D; d0 += 16) {
    uint32_t b0, b1, b2, b3;
    ldmatrix<true>(vAt((mi & 1) * 8 + ri, d0 / 8 + (mi >> 1)), b0, b1, b2, b3);
    mma(o[d0 / 8], pa0, 0u, pa2, 0u, b0, b1);
    mma(o[d0 / 8 + 1], pa0, 0u, pa2, 0u, b2, b3);
  }
}

}  // namespace attention_ops
}  // namespace cuda
}  // namespace troupe
