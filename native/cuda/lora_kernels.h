// Segmented LoRA kernels (shrink: x A^T, expand: y += scaling * (x_a B^T)) over work items:
// runs of tokens that share one adapter slot. Tokens of the base model are in no item and cost
// nothing; each slot's own rank for each module bounds the work.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/kernels.h"

namespace troupe {
namespace cuda {

constexpr int kMaxLoraSlices = 3;

// Where a step's adapter tokens are: item i covers perm[itemStart[i], itemStart[i + 1]) and uses
// slot itemSlot[i]; *numItems items exist (read on the device, so a captured graph replays
// with the current step's items).
struct LoraItems {
  const int32_t* perm;
  const int32_t* itemStart;
  const int32_t* itemSlot;
  const int32_t* numItems;
  int gridItems;  // blocks launched along the items (at least *numItems)
  int gridTiles;  // blocks launched along each item's 16-token tiles (enough for the longest item)
};

// The shrink splits the input features into pieces of kLoraKSplit, each block writing its partial
// dot products; the expand adds the pieces in a fixed order (deterministic, no atomics). The
// tensor-core pair (lora_mma.h) shares this layout with fewer, longer pieces.
constexpr int kLoraKSplit = 256;
inline int loraKPieces(int in) { return (in + kLoraKSplit - 1) / kLoraKSplit; }
constexpr int kLoraTileTokens = 16;

// Up to three projections that share one input (q/k/v, or gate/up), run as one launch.
struct LoraSlices {
  int count = 0;
  int in = 0;                       // input features (shared)
  int maxRank = 0;                  // the widest adapter: the pitch of mid slices
  int slotRank = 0;                 // a slot's A rows and B columns (lora_runs.h); maxRank unless cut
  const bf16_t* a[kMaxLoraSlices];  // per slice: slot k's [slotRank][in] at a + k aSlotStride
  const bf16_t* b[kMaxLoraSlices];  // per slice: slot k's [out][rank] at b + k bSlotStride, rows bLd apart
  size_t aSlotStride[kMaxLoraSlices];
  size_t bSlotStride[kMaxLoraSlices];
  int bLd[kMaxLoraSlices];  // B's row pitch (the pool keeps B in the padding columns of the base weight)
  int out[kMaxLoraSlices];
  int outOffset[kMaxLoraSlices];  // first column of the slice in y
  int module[kMaxLoraSlices];     // index into ranks (slot * 7 + module)
};

// mid[piece][t][s * maxRank + r] = x[t][piece's features] . A_s[slot][r][same] for r < rank(slot, s);
// mid holds loraKPieces(in) slabs of midSlab floats (tokens x count * maxRank).
void loraShrink(const LoraItems& items, const LoraSlices& sl, const int32_t* ranks, const bf16_t* x, int ldx,
                float* mid, size_t midSlab, cudaStream_t st);
// y[t][outOffset_s + o] += scaling[slot] * sum_r (sum over pieces of mid)[t][s * maxRank + r] B_s[slot][o][r].
void loraExpand(const LoraItems& items, const LoraSlices& sl, const int32_t* ranks, const float* scaling,
                const float* mid, size_t midSlab, float* y, int ldy, cudaStream_t st);

}  // namespace cuda
}  // namespace troupe
