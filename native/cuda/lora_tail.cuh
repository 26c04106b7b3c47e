// Device pieces of the tail layout (lora_tail.h) that ropeKv (kernels.cu) and lora_tail.cu share.
#pragma once

#include <cuda_bf16.h>

#include "cuda/lora_tail.h"

namespace troupe {
namespace cuda {
namespace tail_ops {

constexpr int kModules = 7;  // ranks is [slot][7 modules]

// ms[j maxRank + r] = scaling x token t's shrink output r of module j for its slot, zero past the
// slot's rank for the module (A rows there may hold anything) and for base tokens. Every thread of
// the block calls it; the caller synchronizes before reading ms.
__device__ __forceinline__ void loadMids(const LoraTail& tl, int t, int slot, float* ms) {
  const int R = tl.maxRank;
  for (int e = threadIdx.x; e < tl.count * R; e += blockDim.x) {
    const int j = e / R, r = e % R;
    float v = 0.0f;
    if (slot >= 0 && r < tl.ranks[slot * kModules + tl.module[j]])
      v = tl.mid[static_cast<size_t>(t) * tl.ldMid + (j * tl.slots + slot) * R + r] * tl.scaling[slot];
    ms[e] = v;
  }
}

// Sum over r < rank of m[r] B[c][slot maxRank + r] for module j's output row c, in 8-value pieces
// (m is zero from rank on, and B finite there: the weight's padding starts zeroed and fills only
// write checked values).
__device__ __forceinline__ float delta(const LoraTail& tl, int j, int slot, int c, const float* m, int rank) {
  const uint4* b = reinterpret_cast<const uint4*>(tl.b[j] + static_cast<size_t>(c) * tl.bLd + slot * tl.maxRank);
  float acc = 0.0f;
  for (int p = 0; p < (rank + 7) / 8; ++p) {
    const uint4 v = __ldg(b + p);
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
    const float* mp = m + 8 * p;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      acc = fmaf(mp[2 * i], __uint_as_float(w[i] << 16), acc);
      acc = fmaf(mp[2 * i + 1], __uint_as_float(w[i] & 0xffff0000u), acc);
    }
  }
  return acc;
}

// The delta of column c of the group's output for a token of `slot` (ms from loadMids).
__device__ __forceinline__ float deltaAt(const LoraTail& tl, int slot, int c, const float* ms) {
#pragma unroll
  for (int j = 0; j < kMaxLoraSlices; ++j) {
    if (j >= tl.count) break;
    const int cc = c - tl.outOffset[j];
    if (cc >= 0 && cc < tl.out[j])
      return delta(tl, j, slot, cc, ms + j * tl.maxRank, tl.ranks[slot * kModules + tl.module[j]]);
  }
  return 0.0f;
}

}  // namespace tail_ops
}  // namespace cuda
}  // namespace troupe
