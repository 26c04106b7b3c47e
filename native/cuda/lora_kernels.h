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
};

// Up to three projections that share one input (q/k/v, or gate/up), run as one launch.
struct LoraSlices {
  int count = 0;
  int in = 0;                 // input features (shared)
  int maxRank = 0;            // row pitch of A, column pitch of B and of mid slices
  const bf16_t* a[kMaxLoraSlices];  // per slice: [slots][maxRank][in] at layer
  const bf16_t* b[kMaxLoraSlices];  // per slice: [slots][out][maxRank] at layer
  size_t aSlotStride[kMaxLoraSlices];
  size_t bSlotStride[kMaxLoraSlices];
  int out[kMaxLoraSlices];
  int outOffset[kMaxLoraSlices];   // first column of the slice in y
  int module[kMaxLoraSlices];      // index into ranks (slot * 7 + module)
};

// mid[t][s * maxRank + r] = x[t] . A_s[slot][r] for r < rank(slot, s).
void loraShrink(const LoraItems& items, const LoraSlices& sl, const int32_t* ranks, const bf16_t* x, int ldx,
                float* mid, cudaStream_t st);
// y[t][outOffset_s + o] += scaling[slot] * sum_r mid[t][s * maxRank + r] B_s[slot][o][r].
void loraExpand(const LoraItems& items, const LoraSlices& sl, const int32_t* ranks, const float* scaling,
                const float* mid, float* y, int ldy, cudaStream_t st);

}  // namespace cuda
}  // namespace troupe
