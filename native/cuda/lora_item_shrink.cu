// The LoRA item shrink of the fused layout (lora_fused.h), the decode form that reads each A row
// once per adapter item instead of once per token: a block takes up to kTok tokens of one item
// (tokens of one slot, LoraItems) and kOut of the slot's shrink outputs, and every A piece it
// loads is dotted with all of its tokens' row pieces. A step of 32 rows over 8 rank-64 adapters
// reads its q/k/v A factors (12.6 MB a layer) once instead of four times.
//
// One launch has two kinds of blocks, neither waiting on the other: the first T blocks make each
// token's row into xa (an RMSNorm, or a copy unless the row is already there) and zero the
// token's padding columns other than its own slot's; the rest make the same row pieces again from
// the same inputs, in registers, for their dot products, and write the token's own columns. Both
// kinds take a norm's scale from one warp's sum in the same order (warpSumSquares), so the row the
// GEMM reads and the row the shrink read are the same bf16 values.
#include <cuda_bf16.h>

#include <algorithm>
#include <stdexcept>

#include "cuda/bf16_dot.cuh"
#include "cuda/bf16_pack.cuh"
#include "cuda/device.h"
#include "cuda/lora_fused.h"

namespace troupe {
namespace cuda {

namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kTok = 8;      // tokens a block shrinks together: each A piece serves all of them
constexpr int kOut = 8;      // shrink outputs a block computes: each row piece serves all of them
constexpr int kModules = 7;  // ranks is [slot][7 modules]
constexpr int kSubTiles = kLoraTileTokens / kTok;

// Sum of squares of an f32 row of n (a multiple of 8) by one warp, in a fixed order: every block
// that needs a token's norm scale gets the same float.
__device__ __forceinline__ float warpSumSquares(const float* x, int n, int lane) {
  const float4* x4 = reinterpret_cast<const float4*>(x);
  float ss = 0;
#pragma unroll 4
  for (int c = lane; c < n / 4; c += 32) {
    const float4 v = x4[c];
    ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  return ss;
}

// Piece p (eight features) of a token's row, as rmsnorm writes it (the same expressions).
__device__ __forceinline__ uint4 normPiece(const float* x, const float* w, float scale, int p) {
  const float4 a = reinterpret_cast<const float4*>(x)[2 * p], b = reinterpret_cast<const float4*>(x)[2 * p + 1];
  const float4 ga = reinterpret_cast<const float4*>(w)[2 * p], gb = reinterpret_cast<const float4*>(w)[2 * p + 1];
  return make_uint4(
      pairB(ga.x * (a.x * scale), ga.y * (a.y * scale)), pairB(ga.z * (a.z * scale), ga.w * (a.w * scale)),
      pairB(gb.x * (b.x * scale), gb.y * (b.y * scale)), pairB(gb.z * (b.z * scale), gb.w * (b.w * scale)));
}

__device__ __forceinline__ float normScale(float ss, int n, float eps) { return 1.0f / sqrtf(ss / n + eps); }

template <RowSource S>
__global__ void __launch_bounds__(kThreads)
    itemShrinkKernel(RowInput in, LoraSlices sl, LoraItems items, int slots, int pad, const int32_t* rowSlot,
                     const int32_t* ranks, const float* scaling, int T, int cuts, bf16_t* xa, int ldxa) {
  const int n = sl.in, R = sl.maxRank, block = slots * R, pieces = n / 8;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (blockIdx.x < T) {
    // The token's row and its padding.
    const int t = blockIdx.x, slot = rowSlot[t];
    bf16_t* row = xa + static_cast<size_t>(t) * ldxa;
    if constexpr (S == RowSource::kNorm) {
      __shared__ float scale;
      const float* x = in.f32 + static_cast<size_t>(t) * n;
      if (warp == 0) {
        const float ss = warpSumSquares(x, n, lane);
        if (lane == 0) scale = normScale(ss, n, in.eps);
      }
      __syncthreads();
      for (int p = threadIdx.x; p < pieces; p += kThreads)
        reinterpret_cast<uint4*>(row)[p] = normPiece(x, in.normW, scale, p);
    } else {
      const bf16_t* src = in.bf16 + static_cast<size_t>(t) * in.ld;
      if (src != row)
        for (int p = threadIdx.x; p < pieces; p += kThreads)
          reinterpret_cast<uint4*>(row)[p] = __ldg(reinterpret_cast<const uint4*>(src) + p);
    }
    // Module block j, slot k, rank r at in + j S R + k R + r: the token's own slot's columns of
    // the modules here are the other blocks' (zero past its rank); the rest are zero.
    for (int c = threadIdx.x; c < pad; c += kThreads) {
      const int j = c / block, k = (c % block) / R;
      if (!(slot >= 0 && k == slot && j < sl.count)) row[n + c] = 0;
    }
    return;
  }
  // An item's kTok tokens (a sub-tile of its 16-token tile) and every cuts-th shrink output.
  int id = blockIdx.x - T;
  const int cut = id % cuts;
  id /= cuts;
  const int sub = id % (items.gridTiles * kSubTiles), item = id / (items.gridTiles * kSubTiles);
  if (item >= *items.numItems) return;
  const int begin = items.itemStart[item], first = sub * kTok;
  const int tok = min(kTok, items.itemStart[item + 1] - begin - first);
  if (tok <= 0) return;
  const int slot = items.itemSlot[item];
  const int outputs = sl.count * R, mine = (outputs - cut + cuts - 1) / cuts;  // <= kOut (see the launch)
  __shared__ int tokens[kTok];
  __shared__ float scales[kTok];
  if (threadIdx.x < tok) tokens[threadIdx.x] = items.perm[begin + first + threadIdx.x];
  __syncthreads();
  if constexpr (S == RowSource::kNorm) {
    for (int k = warp; k < tok; k += kWarps) {
      const float ss = warpSumSquares(in.f32 + static_cast<size_t>(tokens[k]) * n, n, lane);
      if (lane == 0) scales[k] = normScale(ss, n, in.eps);
    }
    __syncthreads();
  }
  const uint4* a[kOut];
#pragma unroll
  for (int o = 0; o < kOut; ++o) {
    const int i = cut + cuts * min(o, mine - 1), j = i / R, r = i % R;
    a[o] = reinterpret_cast<const uint4*>(sl.a[j] + slot * sl.aSlotStride[j] + static_cast<size_t>(r) * n);
  }
  float acc[kOut][kTok] = {};
  for (int p = threadIdx.x; p < pieces; p += kThreads) {
    uint4 av[kOut], xv[kTok];
#pragma unroll
    for (int o = 0; o < kOut; ++o) av[o] = o < mine ? __ldg(a[o] + p) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int k = 0; k < kTok; ++k) {
      if (k >= tok) {
        xv[k] = make_uint4(0, 0, 0, 0);
      } else if constexpr (S == RowSource::kNorm) {
        xv[k] = normPiece(in.f32 + static_cast<size_t>(tokens[k]) * n, in.normW, scales[k], p);
      } else {
        xv[k] = __ldg(reinterpret_cast<const uint4*>(in.bf16 + static_cast<size_t>(tokens[k]) * in.ld) + p);
      }
    }
#pragma unroll
    for (int o = 0; o < kOut; ++o)
#pragma unroll
      for (int k = 0; k < kTok; ++k) dot8(av[o], xv[k], acc[o][k]);
  }
  // Each (output, token) sum over the block: within each warp, then across the warps.
  __shared__ float part[kWarps][kOut * kTok];
#pragma unroll
  for (int o = 0; o < kOut; ++o)
#pragma unroll
    for (int k = 0; k < kTok; ++k) {
      float v = acc[o][k];
#pragma unroll
      for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(0xffffffffu, v, d);
      if (lane == 0) part[warp][o * kTok + k] = v;
    }
  __syncthreads();
  for (int e = threadIdx.x; e < kOut * kTok; e += kThreads) {
    const int o = e / kTok, k = e % kTok;
    if (o >= mine || k >= tok) continue;
    float v = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) v += part[w][e];
    const int i = cut + cuts * o, j = i / R, r = i % R;
    // A select, not a product: A rows past the slot's rank may hold anything.
    v = r < ranks[slot * kModules + sl.module[j]] ? v * scaling[slot] : 0.0f;
    xa[static_cast<size_t>(tokens[k]) * ldxa + n + j * block + slot * R + r] = toB(v);
  }
}

template <RowSource S>
void launch(const RowInput& row, const LoraSlices& sl, const LoraItems& items, int slots, int pad,
            const int32_t* rowSlot, const int32_t* ranks, const float* scaling, int T, int cuts, bf16_t* xa, int ldxa,
            cudaStream_t st) {
  const int blocks = T + items.gridItems * items.gridTiles * kSubTiles * cuts;
  itemShrinkKernel<S>
      <<<blocks, kThreads, 0, st>>>(row, sl, items, slots, pad, rowSlot, ranks, scaling, T, cuts, xa, ldxa);
}

}  // namespace

bool itemShrinkSupported(int in, int ldxa) { return in % 8 == 0 && ldxa % 8 == 0; }

void loraItemShrink(const RowInput& row, const LoraSlices& sl, const LoraItems& items, int slots, int pad,
                    const int32_t* rowSlot, const int32_t* ranks, const float* scaling, int T, bf16_t* xa, int ldxa,
                    int sms, cudaStream_t st) {
  if (T == 0) return;
  // Every block's outputs fit its kOut accumulators, and a step of few items still has about a
  // block an SM (a rank-16 q/k/v group over 8 items would otherwise run 48 blocks).
  const int outputs = sl.count * sl.maxRank;
  const int groups = std::max(1, items.gridItems * items.gridTiles);
  const int cuts =
      std::clamp(std::max((outputs + kOut - 1) / kOut, (sms + groups - 1) / groups), 1, std::max(1, outputs));
  switch (row.source) {
    case RowSource::kNorm:
      launch<RowSource::kNorm>(row, sl, items, slots, pad, rowSlot, ranks, scaling, T, cuts, xa, ldxa, st);
      break;
    case RowSource::kCopy:
      launch<RowSource::kCopy>(row, sl, items, slots, pad, rowSlot, ranks, scaling, T, cuts, xa, ldxa, st);
      break;
    case RowSource::kSiluMul:
      throw std::invalid_argument("LoRA item shrink: SiLU rows are made by siluMul (into xa) first, then copied");
  }
  check(cudaGetLastError(), "LoRA item shrink launch");
}

}  // namespace cuda
}  // namespace troupe
