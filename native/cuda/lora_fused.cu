// The augmented activation rows of the fused LoRA layout (lora_fused.h): one block per token.
// The pieces of each shrink output are summed in the order the expand kernels sum them.
#include <cuda_bf16.h>

#include "cuda/device.h"
#include "cuda/lora_augmented.cuh"
#include "cuda/lora_fused.h"

namespace troupe {
namespace cuda {

namespace {

constexpr int kAugmentThreads = 256;
constexpr int kModules = 7;  // ranks is [slot][7 modules]

__global__ void __launch_bounds__(kAugmentThreads)
    augmentKernel(LoraSlices sl, int slots, const int32_t* rowSlot, const int32_t* ranks, const float* scaling,
                  LoraMid mid, const bf16_t* x, int ldx, bool vecCopy, AugmentedRows xa) {
  const int t = blockIdx.x, in = sl.in;
  const int slot = rowSlot[t], R = sl.maxRank, block = slots * R;
  const float scale = slot >= 0 ? scaling[slot] : 0.0f;
  const float* m = mid.data + static_cast<size_t>(t) * mid.tokenPitch + (slot >= 0 ? slot : 0) * mid.slotPitch;
  for (int rowIdx = 0; rowIdx < augmentedRowCount(xa, sl.count); ++rowIdx) {
    bf16_t* row = augmentedRow(xa, t, rowIdx);
    const bf16_t* src = x ? x + static_cast<size_t>(t) * ldx : nullptr;
    // x may be the first row itself, made in place (CudaBackend::projection).
    if (src && src != row) {
      if (vecCopy) {
        for (int c = threadIdx.x; c < in / 8; c += kAugmentThreads)
          reinterpret_cast<uint4*>(row)[c] = __ldg(reinterpret_cast<const uint4*>(src) + c);
      } else {
        for (int c = threadIdx.x; c < in; c += kAugmentThreads) row[c] = src[c];
      }
    }
    for (int c = threadIdx.x; c < xa.pad; c += kAugmentThreads) {
      const int j = paddingSlice(xa, rowIdx, c, block, sl.count), k = (c % block) / R, r = c % R;
      float v = 0.0f;
      // A select, not a product: values past the slot's rank (and other slots') may be anything.
      if (j < sl.count && k == slot && r < ranks[slot * kModules + sl.module[j]]) {
        const float* p = m + j * mid.slicePitch + r;
        for (int i = 0; i < mid.pieces; ++i) v += __ldcg(p + i * mid.slab);
        v *= scale;
      }
      row[in + c] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
    }
  }
}

}  // namespace

void loraAugment(const LoraSlices& sl, int slots, const int32_t* rowSlot, const int32_t* ranks, const float* scaling,
                 const LoraMid& mid, const bf16_t* x, int ldx, int T, const AugmentedRows& xa, cudaStream_t st) {
  if (T == 0) return;
  const bool vec =
      sl.in % 8 == 0 && ldx % 8 == 0 && xa.ld % 8 == 0 && xa.slicePitch % 8 == 0 && aligned16(x) && aligned16(xa.data);
  augmentKernel<<<T, kAugmentThreads, 0, st>>>(sl, slots, rowSlot, ranks, scaling, mid, x, ldx, vec, xa);
  check(cudaGetLastError(), "LoRA augment launch");
}

}  // namespace cuda
}  // namespace troupe
