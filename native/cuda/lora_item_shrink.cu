// The LoRA item shrink of the fused layout (lora_fused.h), the decode form that reads each A row
// once per adapter item instead of once per token. The rows are made before it (rmsnorm or
// siluMul write them into xa; an attention output is copied here), so its blocks only read bf16
// rows: a block takes up to kTok tokens of one item (tokens of one slot, LoraItems) and kOut of
// the slot's shrink outputs, and every A piece it loads is dotted with all of its tokens' pieces.
// A step of 32 rows over 8 adapters reads its A factors once instead of four times. An earlier
// form remade normed rows inside every block (16 KB of f32 a token) and took 1.5-2x the row
// shrink's time; reading made rows costs one launch more and none of that.
//
// One launch has two kinds of blocks, neither waiting on the other: the first T blocks copy each
// token's row into xa (unless it is already there) and zero the token's padding columns other
// than its own slot's; the rest write the token's own slot's columns.
#include <cuda_bf16.h>

#include <algorithm>
#include <stdexcept>

#include "cuda/bf16_dot.cuh"
#include "cuda/bf16_pack.cuh"
#include "cuda/device.h"
#include "cuda/lora_augmented.cuh"
#include "cuda/lora_fused.h"
#include "cuda/lora_runs.h"
#include "cuda/pdl.cuh"

namespace troupe {
namespace cuda {

namespace {

constexpr int kTok = 8;      // tokens a block shrinks together: each A piece serves all of them
constexpr int kModules = 7;  // ranks is [slot][7 modules]
constexpr int kSubTiles = kLoraTileTokens / kTok;

// One round per call, kN sums to kN / 2 over lanes kD apart: the lane whose bit kD is set keeps the
// upper half of its sums and adds its partner's of that half, the other the lower half. After the
// rounds from kD = 16 down, lane l holds sum (l's bits from bit 4 down, as many as there were
// rounds), added over the lanes those rounds paired. Unrolled by the template so v stays in
// registers (a loop over the rounds put it in local memory).
template <int kN, int kD, int kSize>
__device__ __forceinline__ void halveSums(float (&v)[kSize], int lane) {
  if constexpr (kN > 1) {
    constexpr int kHalf = kN / 2;
    const bool upper = (lane & kD) != 0;
#pragma unroll
    for (int i = 0; i < kHalf; ++i) {
      const float send = upper ? v[i] : v[i + kHalf];
      const float keep = upper ? v[i + kHalf] : v[i];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, send, kD);
    }
    halveSums<kHalf, kD / 2>(v, lane);
  }
}

// The block's warps are kGroups output groups of kKSplit warps each: a group takes kOutW outputs
// and its warps share their features, a warp every kKSplit-th piece. The warps of a group add
// their sums in shared memory; a group of one warp (kKSplit 1) writes its sums itself.
template <int kThreads, int kOutW, int kKSplit>
__global__ void __launch_bounds__(kThreads)
    itemShrinkKernel(const bf16_t* src, int ld, LoraSlices sl, LoraItems items, int slots, const int32_t* rowSlot,
                     const int32_t* ranks, const float* scaling, int T, int chunks, AugmentedRows xa,
                     bool releaseAtStart, unsigned* rowsReady) {
  if (releaseAtStart) pdlLaunchDependents();
  constexpr int kWarps = kThreads / 32, kGroups = kWarps / kKSplit, kOut = kOutW * kGroups;
  static_assert(kWarps % kKSplit == 0, "whole groups of warps");
  // The rows this kernel reads are made by the kernel just before it; under programmatic launch it
  // lets this one start (pdl.cuh), so the look-ups and the A factors below are on their way while
  // that kernel finishes.
  const int n = sl.in, R = sl.maxRank, U = sl.slotRank ? sl.slotRank : R, block = slots * U, pieces = n / 8;
  if (blockIdx.x < T) {
    // The token's rows and their padding.
    pdlWait();
    // The kernel before has completed: a GEMM launched after this one may read the rows it wrote
    // (decode_gemm.h's DecodeGemmLateColumns).
    if (rowsReady && threadIdx.x == 0) {
      __threadfence();
      atomicAdd(rowsReady, 1u);
    }
    const int t = blockIdx.x, slot = rowSlot[t];
    const uint4* from = reinterpret_cast<const uint4*>(src + static_cast<size_t>(t) * ld);
    for (int rowIdx = 0; rowIdx < augmentedRowCount(xa, sl.count); ++rowIdx) {
      bf16_t* row = augmentedRow(xa, t, rowIdx);
      if (src + static_cast<size_t>(t) * ld != row)
        for (int p = threadIdx.x; p < pieces; p += kThreads) reinterpret_cast<uint4*>(row)[p] = __ldg(from + p);
      // Module block j, the rank q of the adapter from slot k at in + j S U + k U + q (split rows:
      // row j's in + k U + q): the token's own run of columns of the modules here are the other
      // blocks' (zero past its rank); the rest are zero.
      const int run = slot >= 0 ? loraRunColumns(slot, slots, U, R) : 0;
      for (int c = threadIdx.x; c < xa.pad; c += kThreads) {
        const int j = paddingSlice(xa, rowIdx, c, block, sl.count);
        if (!(j < sl.count && lora_runs::rankOfColumn(c % block, slot, run, U) >= 0)) row[n + c] = 0;
      }
    }
    return;
  }
  // An item's kTok tokens (a sub-tile of its 16-token tile) and kOut consecutive shrink outputs.
  // The step's items, the pool's factors, ranks and scalings were all written before the step's
  // first kernel: they are read before the wait, in one round of independent loads where possible.
  // Sub-tiles vary slowest, so the blocks that have tokens come first: a decode step's items
  // mostly hold fewer than kTok tokens, and a graph's grid is sized for the most items and tokens
  // a step of its size can have, so many of the later blocks have nothing to do. Those exit at
  // once, without waiting on the kernel before (the first T blocks always wait, so the grid still
  // completes after it). Measured on an H200 at Llama-8B's decode shapes against waiting blocks
  // in item order: a layer's four shrinks 27.0 -> 26.0 us at rank 64, the same at rank 16.
  int id = blockIdx.x - T;
  const int chunk = id % chunks;
  id /= chunks;
  const int gridItems = max(items.gridItems, 1);
  const int item = id % gridItems, sub = id / gridItems;
  const int numItems = *items.numItems;
  if (item >= numItems) return;
  const int start = items.itemStart[item], end = items.itemStart[item + 1];
  const int slot = items.itemSlot[item];
  const int begin = start + sub * kTok;
  const int tok = min(kTok, end - begin);
  if (tok <= 0) return;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, group = warp / kKSplit, part = warp % kKSplit;
  // This warp's group's outputs (none past the step's: its loads then repeat the last one's).
  // Output i is slice i / R's rank i % R; ranks past the run's columns are left out.
  const int first = chunk * kOut + group * kOutW, mine = min(kOutW, sl.count * R - first);
  const int run = loraRunColumns(slot, slots, U, R);
  const uint4* a[kOutW];
#pragma unroll
  for (int o = 0; o < kOutW; ++o) {
    const int i = max(first + min(o, mine - 1), 0), j = i / R, r = min(i % R, run - 1);
    a[o] = reinterpret_cast<const uint4*>(sl.a[j] + slot * sl.aSlotStride[j] + lora_runs::sliceRow(r, sl.count, U) * n);
  }
  // Row offsets in pieces; tokens past tok repeat the last (their products are not taken).
  int x[kTok];
#pragma unroll
  for (int k = 0; k < kTok; ++k) x[k] = items.perm[begin + min(k, tok - 1)] * (ld / 8);
  // Sums: kOutW outputs x kTok tokens a group, each left (after the exchanges below) with the
  // lanes of one warp; the writer of sum s of group g is thread g kSums + s when the group's warps
  // add in shared memory, else lane s kShare of the group's one warp.
  constexpr int kSums = kOutW * kTok;
  static_assert(kSums >= 2 && kSums <= 32 && (kSums & (kSums - 1)) == 0, "the exchanges halve a power of two of sums");
  constexpr int kShare = 32 / kSums;  // lanes that end with each sum
  int wGroup, wSum;
  if constexpr (kKSplit == 1) {
    wGroup = lane % kShare == 0 ? warp : kGroups;
    wSum = lane / kShare;
  } else {
    wGroup = threadIdx.x / kSums;
    wSum = threadIdx.x % kSums;
  }
  const int wo = wSum / kTok, wk = wSum % kTok, wFirst = chunk * kOut + wGroup * kOutW;
  const bool writes = wGroup < kGroups && wo < min(kOutW, sl.count * R - wFirst) && wk < tok && (wFirst + wo) % R < run;
  int wRank = 0;
  float wScale = 0.0f;
  if (writes) {
    const int i = wFirst + wo;
    wRank = ranks[slot * kModules + sl.module[i / R]];
    wScale = scaling[slot];
  }
  const int step = kKSplit * 32, p0 = part * 32 + lane;
#pragma unroll
  for (int o = 0; o < kOutW; ++o)
    if (o < mine)
      for (int p = p0; p < pieces; p += step) prefetchL2(a[o] + p);
  pdlWait();
  const uint4* rows = reinterpret_cast<const uint4*>(src);
  float acc[kOutW][kTok] = {};
  if (mine > 0) {
    for (int p = p0; p < pieces; p += step) {
      // Every group reads the same row pieces: through L1 when several groups share a block.
      uint4 av[kOutW], xv[kTok];
#pragma unroll
      for (int o = 0; o < kOutW; ++o) av[o] = __ldg(a[o] + p);
#pragma unroll
      for (int k = 0; k < kTok; ++k)
        xv[k] = k >= tok ? make_uint4(0, 0, 0, 0) : kGroups > 1 ? __ldg(rows + x[k] + p) : __ldcg(rows + x[k] + p);
#pragma unroll
      for (int k = 0; k < kTok; ++k) {
        if (k >= tok) break;
#pragma unroll
        for (int o = 0; o < kOutW; ++o) dot8(av[o], xv[k], acc[o][k]);
      }
    }
  }
  // Each (output, token) sum over the warp by halving exchanges (halveSums: 31 shuffles for 32
  // sums, where reducing each sum alone took 160; measured on an H200 at Llama-8B's decode shapes,
  // 0.2-0.9 us less a launch at rank 16, 0.8-1.6 us at rank 64), then over the group's warps.
  float v[kSums];
#pragma unroll
  for (int o = 0; o < kOutW; ++o)
#pragma unroll
    for (int k = 0; k < kTok; ++k) v[o * kTok + k] = acc[o][k];
  // With fewer than 32 sums the lanes that differ only in the low bits the rounds did not reach
  // end with the same index; plain exchanges add them together.
  halveSums<kSums, 16>(v, lane);
#pragma unroll
  for (int d = 1; d < kShare; d <<= 1) v[0] += __shfl_xor_sync(0xffffffffu, v[0], d);
  float sum = v[0];
  if constexpr (kKSplit > 1) {
    __shared__ float partSums[kWarps][kSums];
    if (lane % kShare == 0) partSums[warp][lane / kShare] = v[0];
    __syncthreads();
    // Only a writer's group indexes partSums.
    if (writes) {
      sum = 0;
#pragma unroll
      for (int w = 0; w < kKSplit; ++w) sum += partSums[wGroup * kKSplit + w][wSum];
    }
  }
  // Only stores are left: a GEMV launched early after this kernel (gemv.cu) may be placed now.
  pdlLaunchDependents();
  if (!writes) return;
  const int i = wFirst + wo, j = i / R, r = i % R;
  // A select, not a product: A rows past the slot's rank may hold anything.
  sum = r < wRank ? sum * wScale : 0.0f;
  const int t = items.perm[begin + wk];
  loraColumns(xa, n, t, j, block, slot, U)[r] = toB(sum);
}

template <int kThreads, int kOutW, int kKSplit>
void launch(const RowInput& row, const LoraSlices& sl, const LoraItems& items, int slots, const int32_t* rowSlot,
            const int32_t* ranks, const float* scaling, int T, const AugmentedRows& xa, cudaStream_t st, bool pdl,
            bool releaseAtStart, unsigned* rowsReady) {
  constexpr int kOut = kOutW * (kThreads / 32 / kKSplit);
  const int chunks = (sl.count * sl.maxRank + kOut - 1) / kOut;
  const int blocks = T + std::max(items.gridItems, 1) * std::max(items.gridTiles, 1) * kSubTiles * chunks;
  launchPdl(itemShrinkKernel<kThreads, kOutW, kKSplit>, dim3(blocks), dim3(kThreads), st, pdl,
            "LoRA item shrink launch", row.bf16, row.ld, sl, items, slots, rowSlot, ranks, scaling, T, chunks, xa,
            releaseAtStart, rowsReady);
}

using Launch = void (*)(const RowInput&, const LoraSlices&, const LoraItems&, int, const int32_t*, const int32_t*,
                        const float*, int, const AugmentedRows&, cudaStream_t, bool, bool, unsigned*);

template <int kThreads, int kOutW>
Launch pickSplit(int kSplit) {
  switch (kSplit) {
    case 1:
      return launch<kThreads, kOutW, 1>;
    case 2:
      return launch<kThreads, kOutW, 2>;
    case 4:
      return launch<kThreads, kOutW, 4>;
    case 8:
      return launch<kThreads, kOutW, 8>;
    case 16:
      if constexpr (kThreads >= 512) return launch<kThreads, kOutW, 16>;
      return nullptr;
    default:
      return nullptr;
  }
}

template <int kThreads>
Launch pickOut(int outW, int kSplit) {
  switch (outW) {
    case 1:
      return pickSplit<kThreads, 1>(kSplit);
    case 2:
      return pickSplit<kThreads, 2>(kSplit);
    case 4:
      return pickSplit<kThreads, 4>(kSplit);
    default:
      return nullptr;
  }
}

}  // namespace

bool itemShrinkSupported(int in, int ldxa, int ld) { return in % 8 == 0 && ldxa % 8 == 0 && ld % 8 == 0; }

void loraItemShrink(const RowInput& row, const LoraSlices& sl, const LoraItems& items, int slots,
                    const int32_t* rowSlot, const int32_t* ranks, const float* scaling, int T, const AugmentedRows& xa,
                    cudaStream_t st, bool pdl, ItemShrinkShape shape, bool releaseAtStart, unsigned* rowsReady) {
  if (T == 0) return;
  if (row.source != RowSource::kCopy)
    throw std::invalid_argument("LoRA item shrink: make the rows first (rmsnorm or siluMul into xa), then pass them");
  // Measured on an H200 over Llama-8B's groups at 32 tokens (test/gpu/lora_rows_check.cu --bench,
  // bench/results/2026-11-30-h200-lora-item-shrink-shapes.json): 256 threads for rows of up to
  // 8,192 features (two blocks an SM), 512 for longer ones (a 14,336-feature down row then waits
  // on memory four times a thread, not seven). Every warp of a block on every output of it, and
  // few outputs a block while a step has few of them, so that more blocks share the A reads: one a
  // warp up to 16 outputs (rank-16 o 2.7 us against 3.2 with two), two up to 32, four above; past
  // 32 on short rows two groups of four warps (rank-64 q/k/v 7.0 us against 7.6; in a decode step
  // of 32 rows over 8 rank-64 adapters on an H100, o's and gate/up's that way took the step to
  // +18.3% over the base step against +19.0% with one group, 0.1 ms less;
  // bench/results/2026-12-05-h100-lora-item-shapes.json). A warp to each output (its own
  // features) was slower at every group: 8-55 us.
  const bool longRows = sl.in > 8192;
  const int outputs = sl.count * sl.maxRank, warps = (longRows ? 512 : 256) / 32;
  if (shape.outPerWarp == 0)
    shape = outputs <= 16   ? ItemShrinkShape{1, warps}
            : outputs <= 32 ? ItemShrinkShape{2, warps}
            : !longRows     ? ItemShrinkShape{4, warps / 2}
                            : ItemShrinkShape{4, warps};
  const Launch go = longRows ? pickOut<512>(shape.outPerWarp, shape.warpsPerOutput)
                             : pickOut<256>(shape.outPerWarp, shape.warpsPerOutput);
  if (!go) throw std::invalid_argument("LoRA item shrink: no kernel of that shape");
  go(row, sl, items, slots, rowSlot, ranks, scaling, T, xa, st, pdl, releaseAtStart, rowsReady);
}

}  // namespace cuda
}  // namespace troupe
