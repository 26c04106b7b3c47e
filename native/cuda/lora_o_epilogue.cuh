// The o projection's LoRA shrink taken by the decode attention as it finishes (OLoraEpilogue in
// kernels.h): each block dots the features it just wrote with its token's slot's A rows, and the
// last of a token's blocks to finish adds the blocks' partial sums in a fixed order and writes the
// token's LoRA columns of the fused layout (lora_fused.h). The item shrink launch the o projection
// would otherwise take before its GEMM goes, and the attention writes its rows into xa itself.
#pragma once

#include <cuda_bf16.h>

#include "cuda/bf16_dot.cuh"
#include "cuda/kernels.h"

namespace troupe {
namespace cuda {

// mine: the values this thread wrote, features threadIdx.x + i kThreads of the block's kFeatures
// (from part kFeatures in the token's row); scratch: kFeatures floats of shared memory that no
// thread reads any more.
template <int kFeatures, int kThreads, int kMine>
__device__ void oLoraEpilogue(const OLoraEpilogue& e, int t, int part, int parts, const float (&mine)[kMine],
                              float* scratch) {
  static_assert(kFeatures % 8 == 0 && kMine * kThreads >= kFeatures, "the block's features, 8 at a time");
  __syncthreads();
#pragma unroll
  for (int i = 0; i < kMine; ++i)
    if (threadIdx.x + i * kThreads < kFeatures) scratch[threadIdx.x + i * kThreads] = mine[i];
  __syncthreads();
  const int slot = e.rowSlot[t], U = e.slotRank ? e.slotRank : e.maxRank;
  // The rows of A from the token's slot on that its adapter may have (o holds one slice, so they
  // follow one another): the max rank's, or fewer where the pool ends first.
  const int R = e.slotRank && slot >= 0 ? min(e.maxRank, (e.slots - slot) * U) : e.maxRank;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (slot >= 0) {
    // A warp to each row of A, its lanes on the row's 8-feature pieces; kBatch rows' loads are in
    // flight at once, where a row at a time waited out the load's latency R / kWarps times over
    // the attention's last moments (rank 64 took 0.2 ms more a step than the item shrink).
    constexpr int kPieces = kFeatures / 8, kPer = (kPieces + 31) / 32, kWarps = kThreads / 32, kBatch = 4;
    float x[kPer][8];
#pragma unroll
    for (int q = 0; q < kPer; ++q)
#pragma unroll
      for (int k = 0; k < 8; ++k) x[q][k] = lane + q * 32 < kPieces ? scratch[(lane + q * 32) * 8 + k] : 0.0f;
    const bf16_t* a = e.a + slot * e.aSlotStride + static_cast<size_t>(part) * kFeatures;
    for (int r0 = warp; r0 < R; r0 += kWarps * kBatch) {
      uint4 v[kBatch][kPer];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int r = r0 + b * kWarps;
        const uint4* row = reinterpret_cast<const uint4*>(a + static_cast<size_t>(r) * e.in);
#pragma unroll
        for (int q = 0; q < kPer; ++q)
          v[b][q] = r < R && lane + q * 32 < kPieces ? __ldg(row + lane + q * 32) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        float s = 0;
#pragma unroll
        for (int q = 0; q < kPer; ++q) {
          const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v[b][q]);
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            const float2 f = __bfloat1622float2(h[k]);
            s += f.x * x[q][2 * k] + f.y * x[q][2 * k + 1];
          }
        }
#pragma unroll
        for (int d = 16; d > 0; d >>= 1) s += __shfl_xor_sync(0xffffffffu, s, d);
        const int r = r0 + b * kWarps;
        if (lane == 0 && r < R) e.partial[(static_cast<size_t>(t) * parts + part) * e.maxRank + r] = s;
      }
    }
  }
  // The classic last-block pattern: every block's partial sums are visible device-wide before its
  // ticket is taken, and the block that takes the last ticket reads them all.
  __threadfence();
  __syncthreads();
  __shared__ int last;
  if (threadIdx.x == 0) last = atomicAdd(e.tickets + t, 1) == parts - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  const int rank = slot >= 0 ? e.ranks[slot * e.rankPitch + e.module] : 0;
  const float scale = slot >= 0 ? e.scaling[slot] : 0.0f;
  bf16_t* cols = e.xa + static_cast<size_t>(t) * e.ld + e.in;
  for (int c = threadIdx.x; c < e.pad; c += kThreads) {
    // The token's own adapter's columns hold its sums (zero past its rank); every other is zero.
    const int r = c - slot * U;
    float v = 0.0f;
    if (slot >= 0 && r >= 0 && r < rank) {
      for (int p = 0; p < parts; ++p) v += __ldcg(e.partial + (static_cast<size_t>(t) * parts + p) * e.maxRank + r);
      v *= scale;
    }
    cols[c] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
  }
  // Every block of the token has taken its ticket: the count starts again at zero for the next launch.
  if (threadIdx.x == 0) e.tickets[t] = 0;
}

}  // namespace cuda
}  // namespace troupe
