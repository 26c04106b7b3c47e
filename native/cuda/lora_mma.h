// Tensor-core versions of loraShrink and loraExpand (warp-level mma.sync m16n8k16, bf16 operands,
// f32 accumulation; compute capability 8.0 or newer). Same arguments, same work items and the same
// mid layout as the CUDA-core pair (f32 partial sums, one slab per input piece, summed by the
// expand in a fixed order), but fewer, longer pieces: loraMmaSplit says how many, and both
// kernels of a pair must see the same items and slices to agree on it.
#pragma once

#include "cuda/lora_kernels.h"

namespace troupe {
namespace cuda {

struct LoraMmaSplit {
  int pieces;  // at most loraKPieces(in), so mid's slabs hold them
  int len;     // features per piece (a multiple of 32; the last piece may be shorter)
};
// Enough pieces that the step's tiles times slices times pieces come to about a thousand blocks
// (decode: a few tiles, so many pieces; prefill: many tiles, so few pieces and less for the
// expand to sum), each at least 512 features long.
LoraMmaSplit loraMmaSplit(const LoraItems& items, const LoraSlices& sl);

// How many tiles one expand block takes: `tiles` consecutive 16-token tiles of each of `items`
// consecutive work items (at most 8 in all). The block keeps its B fragments from tile to tile while
// the slot stays the same, so in a prefill (many tiles: csgmv's runs of one slot's chunks, sgmv's
// long items) B is read once per run instead of once per tile, and the grid is that many times
// smaller. loraExpandGroup picks the most that still leave about two thousand blocks (a decode
// step's few tiles keep one per block); it depends only on the grid and the slices, so a captured
// graph keeps its choice, and on no value read on the device.
struct LoraExpandGroup {
  int items;
  int tiles;
};
LoraExpandGroup loraExpandGroup(const LoraItems& items, const LoraSlices& sl);

// With pdl, the launches allow programmatic dependent launch (compute capability 9.0): the shrink
// starts while the kernel before it drains, and the expand loads its B factors while the shrink
// finishes. Every block of either kernel waits for its predecessor grid before it exits, so the
// stream's order holds for whatever follows.
void loraShrinkMma(const LoraItems& items, const LoraSlices& sl, const int32_t* ranks, const bf16_t* x, int ldx,
                   float* mid, size_t midSlab, cudaStream_t st, bool pdl = false);
void loraExpandMma(const LoraItems& items, const LoraSlices& sl, const int32_t* ranks, const float* scaling,
                   const float* mid, size_t midSlab, float* y, int ldy, cudaStream_t st, bool pdl = false,
                   const LoraExpandGroup* group = nullptr);  // null: loraExpandGroup's

}  // namespace cuda
}  // namespace troupe
