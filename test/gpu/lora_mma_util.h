// What the standalone LoRA kernel check and benchmark share (lora_mma_check.cu, lora_mma_bench.cu),
// beside check_util.h: work items built as the backend builds them, and one call that runs a
// kernel pair of either family.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "check_util.h"
#include "cuda/lora_kernels.h"
#include "cuda/lora_mma.h"

namespace lora_check {

using namespace kernel_check;

using troupe::cuda::bf16_t;
using troupe::cuda::LoraItems;
using troupe::cuda::LoraSlices;
namespace tc = troupe::cuda;

enum class Kernel { kFma, kMma, kMmaPdl };
inline const char* kernelName(Kernel k) { return k == Kernel::kFma ? "fma" : k == Kernel::kMma ? "mma" : "mma-pdl"; }

// One projection group's shrink and expand, as the backend's applyLora runs them; `group` sets the
// mma expand's tiles per block instead of loraExpandGroup's choice.
inline void runPair(Kernel k, const LoraItems& it, const LoraSlices& sl, const int32_t* ranks, const float* scaling,
                    const bf16_t* x, int ldx, float* mid, size_t slab, float* y, int ldy, cudaStream_t st,
                    const tc::LoraExpandGroup* group = nullptr) {
  if (k == Kernel::kFma) {
    tc::loraShrink(it, sl, ranks, x, ldx, mid, slab, st);
    tc::loraExpand(it, sl, ranks, scaling, mid, slab, y, ldy, st);
  } else {
    tc::loraShrinkMma(it, sl, ranks, x, ldx, mid, slab, st, k == Kernel::kMmaPdl);
    tc::loraExpandMma(it, sl, ranks, scaling, mid, slab, y, ldy, st, k == Kernel::kMmaPdl, group);
  }
}

// Work items as the backend builds them (csgmv: each slot's tokens in order of first use, cut into
// chunks; sgmv: one item per sequence). Sequences are consecutive runs of lens[i] tokens.
struct Items {
  std::vector<int32_t> perm, start{0}, slot;
  int tiles() const {
    int t = 0;
    for (size_t i = 0; i + 1 < start.size(); ++i) t = std::max(t, (start[i + 1] - start[i] + 15) / 16);
    return t;
  }
};
inline Items buildItems(const std::vector<int>& lens, const std::vector<int>& slots, int nSlots, bool sgmv, int chunk) {
  Items r;
  std::vector<std::vector<int>> bySlot(nSlots);
  std::vector<int> used;
  int t0 = 0;
  for (size_t i = 0; i < lens.size(); t0 += lens[i], ++i) {
    if (slots[i] < 0) continue;
    if (bySlot[slots[i]].empty()) used.push_back(slots[i]);
    for (int t = t0; t < t0 + lens[i]; ++t) bySlot[slots[i]].push_back(t);
    if (sgmv) {
      for (int t = t0; t < t0 + lens[i]; ++t) r.perm.push_back(t);
      r.start.push_back(static_cast<int32_t>(r.perm.size()));
      r.slot.push_back(slots[i]);
    }
  }
  if (!sgmv) {
    for (int s : used) {
      for (size_t k = 0; k < bySlot[s].size(); k += chunk) {
        const size_t e = std::min(bySlot[s].size(), k + chunk);
        r.perm.insert(r.perm.end(), bySlot[s].begin() + k, bySlot[s].begin() + e);
        r.start.push_back(static_cast<int32_t>(r.perm.size()));
        r.slot.push_back(s);
      }
    }
  }
  return r;
}

// The items on the device in the backend's layout ([perm | itemStart | itemSlot | count], T tokens)
// and LoraItems over them, launching gridItems x gridTiles blocks. The memory goes to `owned`.
inline LoraItems uploadItems(const Items& it, int T, int gridItems, int gridTiles, std::vector<void*>& owned) {
  std::vector<int32_t> meta(3 * static_cast<size_t>(T) + 2, 0);
  std::copy(it.perm.begin(), it.perm.end(), meta.begin());
  std::copy(it.start.begin(), it.start.end(), meta.begin() + T);
  std::copy(it.slot.begin(), it.slot.end(), meta.begin() + 2 * T + 1);
  meta[3 * T + 1] = static_cast<int32_t>(it.slot.size());
  int32_t* d = upload(meta);
  owned.push_back(d);
  return LoraItems{d, d + T, d + 2 * T + 1, d + 3 * T + 1, gridItems, gridTiles};
}

}  // namespace lora_check

// Times the kernel pairs (lora_mma_bench.cu).
int loraBench();
