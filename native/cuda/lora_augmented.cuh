// Where the kernels that write a projection's augmented rows (lora_fused.h's AugmentedRows, one row
// a token or, with split rows, one a held module) find a token's rows and its LoRA columns.
#pragma once

#include <cstddef>

#include "cuda/lora_fused.h"

namespace troupe {
namespace cuda {

// A token's augmented rows: one, or one per slice with split rows.
__device__ __forceinline__ int augmentedRowCount(const AugmentedRows& xa, int slices) {
  return xa.slicePitch ? slices : 1;
}

__device__ __forceinline__ bf16_t* augmentedRow(const AugmentedRows& xa, int t, int row) {
  return xa.data + row * xa.slicePitch + static_cast<size_t>(t) * xa.ld;
}

// The first of slot `slot`'s columns for slice j in token t's rows (`block`: S U columns a slice,
// U the pool's slot rank); an adapter's ranks run on from there (lora_runs.h).
__device__ __forceinline__ bf16_t* loraColumns(const AugmentedRows& xa, int in, int t, int j, int block, int slot,
                                               int U) {
  return xa.slicePitch ? augmentedRow(xa, t, j) + in + slot * U
                       : augmentedRow(xa, t, 0) + in + static_cast<size_t>(j) * block + slot * U;
}

// How many of an adapter's ranks from slot `slot` a token's rows have columns for: the max rank's,
// or fewer where the pool's slots end first (a small adapter in the last slots); its columns past
// its rank take zeros.
__device__ __forceinline__ int loraRunColumns(int slot, int slots, int U, int R) { return min(R, (slots - slot) * U); }

// The slice whose block padding column c of the token's row `row` is in; `slices` for none (the
// rounding tail).
__device__ __forceinline__ int paddingSlice(const AugmentedRows& xa, int row, int c, int block, int slices) {
  const int j = c / block;
  return xa.slicePitch == 0 ? min(j, slices) : j == 0 ? row : slices;
}

}  // namespace cuda
}  // namespace troupe
