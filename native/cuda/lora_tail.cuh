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

__device__ __forceinline__ float bf16f(uint32_t bits) { return __uint_as_float(bits << 16); }

// Ranks whose B loads a thread issues together before it uses them: a rank-64 delta would
// otherwise wait on 64 loads one after another.
constexpr int kRanksInFlight = 8;

// Sum over r < rank of m[r] B[c][r] for the slot's module j, output c (m: the token's scaled
// shrink outputs for the module, zero from the slot's rank on).
__device__ __forceinline__ float delta(const LoraTail& tl, int j, int slot, int c, const float* m, int rank) {
  const int out = tl.out[j];
  const bf16_t* b = tl.bt[j] + static_cast<size_t>(slot) * tl.maxRank * out + c;
  float acc = 0.0f;
  for (int r0 = 0; r0 < rank; r0 += kRanksInFlight) {
    uint32_t v[kRanksInFlight];
#pragma unroll
    for (int i = 0; i < kRanksInFlight; ++i) v[i] = r0 + i < rank ? __ldg(b + static_cast<size_t>(r0 + i) * out) : 0u;
#pragma unroll
    for (int i = 0; i < kRanksInFlight; ++i)
      if (r0 + i < rank) acc = fmaf(m[r0 + i], bf16f(v[i]), acc);
  }
  return acc;
}

// The same for outputs c .. c + 3 of module j (c and out[j] multiples of 4): 8-byte loads, d += .
__device__ __forceinline__ void delta4(const LoraTail& tl, int j, int slot, int c, const float* m, int rank,
                                       float (&d)[4]) {
  const int out = tl.out[j];
  const uint2* b = reinterpret_cast<const uint2*>(tl.bt[j] + static_cast<size_t>(slot) * tl.maxRank * out + c);
  for (int r0 = 0; r0 < rank; r0 += kRanksInFlight) {
    uint2 v[kRanksInFlight];
#pragma unroll
    for (int i = 0; i < kRanksInFlight; ++i)
      v[i] = r0 + i < rank ? __ldg(b + static_cast<size_t>(r0 + i) * (out / 4)) : make_uint2(0, 0);
#pragma unroll
    for (int i = 0; i < kRanksInFlight; ++i) {
      if (r0 + i >= rank) break;
      const float w = m[r0 + i];
      d[0] = fmaf(w, bf16f(v[i].x & 0xffffu), d[0]);
      d[1] = fmaf(w, bf16f(v[i].x >> 16), d[1]);
      d[2] = fmaf(w, bf16f(v[i].y & 0xffffu), d[2]);
      d[3] = fmaf(w, bf16f(v[i].y >> 16), d[3]);
    }
  }
}

// Which of the group's modules holds output column c, and c's column within it (-1: none held).
__device__ __forceinline__ int sliceOf(const LoraTail& tl, int c, int& cc) {
#pragma unroll
  for (int j = 0; j < kMaxLoraSlices; ++j) {
    if (j >= tl.count) break;
    cc = c - tl.outOffset[j];
    if (cc >= 0 && cc < tl.out[j]) return j;
  }
  return -1;
}

// The delta of column c of the group's output for a token of `slot` (ms from loadMids).
__device__ __forceinline__ float deltaAt(const LoraTail& tl, int slot, int c, const float* ms) {
  int cc = 0;
  const int j = sliceOf(tl, c, cc);
  return j < 0 ? 0.0f : delta(tl, j, slot, cc, ms + j * tl.maxRank, tl.ranks[slot * kModules + tl.module[j]]);
}

}  // namespace tail_ops
}  // namespace cuda
}  // namespace troupe
