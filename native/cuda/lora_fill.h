// Kernels that write a LoRA pool slot on the loader's stream: a factor's slice converted from the
// host dtype (f32, f16 or bf16, as the adapter file holds it) to the pool's bf16 layout, the
// slot's per-module ranks and scaling, and two slots' contents exchanged. Plain C++ types only, so host code can
// include this.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "cuda/kernels.h"

namespace troupe {
namespace cuda {

// dst[i * dstPitch + j] = bf16(src[i * srcPitch + col0 + j]) for i < rows, j < cols. src holds
// values of dtype (0 = F32, 1 = F16, 2 = BF16) at any alignment; bf16 is copied bit for bit,
// wider values round to nearest even. A value that is not finite in bf16 (NaN, Inf, or past bf16's
// range) is written as zero and sets *bad to 1.
void loraFactorToBf16(const void* src, int dtype, int64_t rows, int64_t cols, int64_t srcPitch, int64_t col0,
                      bf16_t* dst, int64_t dstPitch, int* bad, cudaStream_t s);

// bt[r * out + n] = b[n * ld + r] for r < R, n < out: a slot's B of one module, [out][R] at pitch ld,
// into [R][out], where each rank's values for a run of outputs lie together.
void loraTransposeB(const bf16_t* b, int64_t ld, int out, int R, bf16_t* bt, cudaStream_t s);

// Where a group's A rows of one adapter lie from its first slot's (lora_runs.h): output column c
// (slice c / maxRank's rank c % maxRank) is row lora_runs::runRow of slices slices of slotRank.
struct LoraRunRows {
  int slices, slotRank, maxRank;
};
// n[r * C + c] = sum over i < H of bt[r H + i] w[i] a[row(c) H + i] for r < R, c < C (zero where c's
// rank is R or more): what a delta of one adapter's B (transposed, the R ranks of its run, [R][H])
// adds, through a norm's weights w, to the shrink of its A rows (rmsnorm_delta.h's
// NormShrinkColumns).
void loraNormShrinkN(const bf16_t* bt, const float* w, const bf16_t* a, int H, int R, int C, LoraRunRows run, float* n,
                     cudaStream_t s);

constexpr int kLoraMetaModules = 7;  // kNumLoraModules
struct LoraSlotMeta {
  int32_t ranks[kLoraMetaModules];  // 0 where the adapter leaves the module out (or the slot is empty)
  float scaling;
};
// ranks[0, 7) and *scaling of one slot, written in stream order (no host staging to keep alive).
void setLoraSlotMeta(int32_t* ranks, float* scaling, const LoraSlotMeta& meta, cudaStream_t s);

// One piece of two slots' memory to exchange: `rows` rows of `width` bytes at a and at b, each
// `pitch` bytes after the last; `unit` (16, 4 or 2) divides the width, the pitch and both addresses.
struct SwapRegion {
  uint8_t* a;
  uint8_t* b;
  uint64_t pitch, width, rows;
  uint32_t unit;
};
// Exchanges the bytes of every region (count of them, the table in device memory) in one launch;
// a region's two places must not overlap.
void loraSwapRegions(const SwapRegion* regions, int count, cudaStream_t s);

}  // namespace cuda
}  // namespace troupe
