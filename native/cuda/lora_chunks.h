// A prefill step's LoRA shrink by chunks. The step's adapter tokens lie in runs (contiguous rows of
// one slot; adjacent sequences of one adapter join), each cut into chunks of one of a few row
// counts, and one batched GEMM per row count takes every chunk's shrink outputs for its own slot
// only. The one GEMM over every slot's A rows that it replaces takes each token's product with all
// of them, at 8 slots 8x the products needed; timed at Llama-8B's shapes over 8 x 512 tokens, a
// layer's four shrinks took 260 us that way at rank 64 and 78 us by chunks of 512.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "cuda/lora_kernels.h"

namespace troupe {
namespace cuda {

// `count` chunks of `rows` rows each, from entry `first` of the step's chunk table (an entry: the
// chunk's first row, its slot).
struct LoraChunkClass {
  int first = 0, count = 0, rows = 0;
};

// Cuts the step's runs into chunks. A run takes the largest of `sizes` (descending) it reaches and
// is cut from its start every that many rows, its last chunk ending at the run's end: it may
// overlap the one before, whose outputs for those rows it computes again, alike. Appends to table,
// returns the classes in `sizes` order; returns none (and appends nothing) when a run is shorter
// than the smallest size, or the step has no adapter token.
std::vector<LoraChunkClass> planLoraChunks(const int32_t* seqStarts, const int32_t* slots, int seqs,
                                           const std::vector<int>& sizes, std::vector<int32_t>& table);

// The pointer arrays of one class's batched GEMM, entry e for chunk e / count and slice e % count
// (count = sl.count): A at the slice's A rows for the chunk's slot, B at the chunk's rows of x
// (ldx apart), C at mid + first row x tokenPitch + slice x maxRank. ptrs holds 3 x entries.
void loraChunkPointers(const int32_t* chunks, int n, const LoraSlices& sl, const bf16_t* x, int ldx, float* mid,
                       int tokenPitch, void** ptrs, cudaStream_t st);

}  // namespace cuda
}  // namespace troupe
