// What the two prefill attention kernels (attention_prefill.cu on mma.sync, attention_prefill_tma.cu
// on wgmma) do alike with a warp's 16 query rows: their positions and visible keys, Q's fragments,
// the online softmax of a tile's scores, and the last division and store. S, P, Q and O are held in
// mma.m16n8k16's fragment layouts, which wgmma's m64 shapes give each warp of a warpgroup for its
// 16 rows as well: lane (gi = lane / 4, qi = lane % 4) holds rows gi and gi + 8, columns 2 qi and
// 2 qi + 1 of every 8. O is o[d / 64][d % 64 / 8] for the 8 dimensions from d: one n64 product's
// accumulators a 64-dimension part.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <stdexcept>

#include "cuda/attention_ops.cuh"
#include "cuda/kernels.h"

namespace troupe {
namespace cuda {
namespace prefill_rows {

constexpr int kKeys = 64;  // keys a tile of the mma.sync kernel

// The running maxima are of raw scores (the scale is folded into the exponent), which orders them
// as the scaled ones only for a positive scale.
inline void checkScale(float scale) {
  if (!(scale > 0)) throw std::invalid_argument("prefill attention: the softmax scale must be positive");
}

// 2^x in one MUFU instruction; -inf gives 0.
__device__ __forceinline__ float exp2Fast(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ int windowStart(int window, int pos) { return window > 0 ? max(0, pos - window + 1) : 0; }

// This lane's two rows (warpRow + gi and + 8, rows being (token, query head of the group) pairs of
// a chunk whose first token is at firstPos): their positions and first visible keys.
template <int G>
__device__ __forceinline__ void rowRanges(int warpRow, int firstPos, int window, int (&pos)[2], int (&lo)[2]) {
  const int gi = (threadIdx.x & 31) >> 2;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    pos[r] = firstPos + (warpRow + gi + 8 * r) / G;
    lo[r] = windowStart(window, pos[r]);
  }
}

// The online softmax of one tile's raw scores s (s[n][2 r + e]: row gi + 8 r, key k0 + 8 n + 2 qi
// + e) for rows that see keys [lo[r], pos[r]]: running maxima m are of the raw scores (the scale is
// positive, so the order is the same) and sl2 is the scale times log2(e), so that
// exp(scale (s - m)) = 2^(s sl2 - m sl2). Rescales O where a row's maximum moved, adds to the row
// sums l, and leaves P in bf16 as A fragments of 16 keys (pa[ks]: S's n-tiles 2 ks and 2 ks + 1).
// kMask: some key of the tile (of K keys) is outside some row's range.
template <int D, int K, bool kMask>
__device__ __forceinline__ void softmaxTile(float (&s)[K / 8][4], int k0, const int (&pos)[2], const int (&lo)[2],
                                            float sl2, float (&m)[2], float (&l)[2], float (&o)[D / 64][8][4],
                                            uint32_t (&pa)[K / 16][4]) {
  constexpr int NT = K / 8;
  const int qi = threadIdx.x & 3;
  float rescale[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (kMask) {
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int k = k0 + n * 8 + 2 * qi + e;
          if (k > pos[r] || k < lo[r]) s[n][2 * r + e] = -INFINITY;
        }
    }
    float mx = -INFINITY;
#pragma unroll
    for (int n = 0; n < NT; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float mn = fmaxf(m[r], mx);
    // Unchanged (-inf included: nothing seen yet) leaves O as it is; from -inf, O and l are zero.
    rescale[r] = mn == m[r] ? 1.0f : exp2Fast((m[r] - mn) * sl2);
    m[r] = mn;
    // A row that has seen nothing yet has only -inf scores here: any finite offset gives zeros.
    const float ms = mn == -INFINITY ? 0.0f : mn * sl2;
    float add = 0;
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float p = exp2Fast(fmaf(s[n][2 * r + e], sl2, -ms));
        s[n][2 * r + e] = p;
        add += p;
      }
    l[r] = l[r] * rescale[r] + add;
  }
  // Past the first tiles a row's maximum rarely moves; the warp skips the rescale when none did.
  if (__any_sync(0xffffffffu, rescale[0] != 1.0f || rescale[1] != 1.0f)) {
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      o[n / 8][n % 8][0] *= rescale[0];
      o[n / 8][n % 8][1] *= rescale[0];
      o[n / 8][n % 8][2] *= rescale[1];
      o[n / 8][n % 8][3] *= rescale[1];
    }
  }
#pragma unroll
  for (int ks = 0; ks < NT / 2; ++ks) {
    pa[ks][0] = attention_ops::packBf16(s[2 * ks][0], s[2 * ks][1]);
    pa[ks][1] = attention_ops::packBf16(s[2 * ks][2], s[2 * ks][3]);
    pa[ks][2] = attention_ops::packBf16(s[2 * ks + 1][0], s[2 * ks + 1][1]);
    pa[ks][3] = attention_ops::packBf16(s[2 * ks + 1][2], s[2 * ks + 1][3]);
  }
}

// O / l of this lane's live rows into out ([token][head][head_dim], bf16). Every live row sees at
// least its own key, in a tile its warp does not skip, so l > 0.
template <int D, int G>
__device__ __forceinline__ void storeRows(float (&l)[2], const float (&o)[D / 64][8][4], int warpRow, int rows, int t0,
                                          int g, int heads, bf16_t* out) {
  const int lane = threadIdx.x & 31, gi = lane >> 2, qi = lane & 3;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    const int row = warpRow + gi + 8 * r;
    if (row >= rows) continue;
    const float inv = 1.0f / l[r];
    bf16_t* dst = out + (static_cast<size_t>(t0 + row / G) * heads + g * G + row % G) * D + 2 * qi;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      *reinterpret_cast<uint32_t*>(dst + n * 8) =
          attention_ops::packBf16(o[n / 8][n % 8][2 * r] * inv, o[n / 8][n % 8][2 * r + 1] * inv);
    }
  }
}

}  // namespace prefill_rows
}  // namespace cuda
}  // namespace troupe
