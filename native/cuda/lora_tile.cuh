// Device helpers both LoRA kernel families share: which 16-token tile of which work item a block
// takes (see LoraItems in lora_kernels.h).
#pragma once

#include "cuda/lora_kernels.h"

namespace troupe {
namespace cuda {

struct LoraTile {
  int slot, begin, count;
};

// The block's tile: tokens perm[begin, begin + count) of `item`, count <= kLoraTileTokens; false
// when the block has no work (past the step's items, or past the end of a shorter item).
__device__ __forceinline__ bool loraTileOf(const LoraItems& items, int item, int tile, LoraTile& t) {
  if (item >= *items.numItems) return false;
  const int begin = items.itemStart[item] + tile * kLoraTileTokens, end = items.itemStart[item + 1];
  if (begin >= end) return false;
  t = LoraTile{items.itemSlot[item], begin, min(kLoraTileTokens, end - begin)};
  return true;
}

}  // namespace cuda
}  // namespace troupe
