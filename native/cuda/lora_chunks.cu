// The prefill shrink's chunk plan and the pointer arrays of its batched GEMMs (lora_chunks.h).
#include <algorithm>

#include "cuda/device.h"
#include "cuda/lora_chunks.h"

namespace troupe {
namespace cuda {

namespace {

__global__ void chunkPointersKernel(const int32_t* chunks, int n, LoraSlices sl, const bf16_t* x, int ldx, float* mid,
                                    int tokenPitch, void** ptrs) {
  const int entries = n * sl.count, e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= entries) return;
  const int c = e / sl.count, j = e % sl.count;
  const int row = chunks[2 * c], slot = chunks[2 * c + 1];
  ptrs[e] = const_cast<bf16_t*>(sl.a[j] + slot * sl.aSlotStride[j]);
  ptrs[entries + e] = const_cast<bf16_t*>(x + static_cast<size_t>(row) * ldx);
  ptrs[2 * entries + e] = mid + static_cast<size_t>(row) * tokenPitch + j * sl.maxRank;
}

}  // namespace

std::vector<LoraChunkClass> planLoraChunks(const int32_t* seqStarts, const int32_t* slots, int seqs,
                                           const std::vector<int>& sizes, std::vector<int32_t>& table) {
  struct Run {
    int first, rows, slot;
  };
  std::vector<Run> runs;
  for (int i = 0; i < seqs; ++i) {
    const int s = seqStarts[i], e = seqStarts[i + 1];
    if (slots[i] < 0 || e == s) continue;
    if (!runs.empty() && runs.back().slot == slots[i] && runs.back().first + runs.back().rows == s)
      runs.back().rows += e - s;
    else
      runs.push_back({s, e - s, slots[i]});
  }
  if (runs.empty() || sizes.empty()) return {};
  for (const Run& r : runs)
    if (r.rows < sizes.back()) return {};
  std::vector<LoraChunkClass> classes;
  for (size_t k = 0; k < sizes.size(); ++k) {
    LoraChunkClass cls{static_cast<int>(table.size() / 2), 0, sizes[k]};
    for (const Run& r : runs) {
      // The largest size the run reaches: sizes[k] if the sizes before are all longer than it.
      if (r.rows < sizes[k] || (k > 0 && r.rows >= sizes[k - 1])) continue;
      for (int start = 0;; start += sizes[k]) {
        const int at = std::min(start, r.rows - sizes[k]);
        table.push_back(r.first + at);
        table.push_back(r.slot);
        ++cls.count;
        if (at == r.rows - sizes[k]) break;
      }
    }
    if (cls.count > 0) classes.push_back(cls);
  }
  return classes;
}

void loraChunkPointers(const int32_t* chunks, int n, const LoraSlices& sl, const bf16_t* x, int ldx, float* mid,
                       int tokenPitch, void** ptrs, cudaStream_t st) {
  const int entries = n * sl.count;
  if (entries == 0) return;
  chunkPointersKernel<<<(entries + 127) / 128, 128, 0, st>>>(chunks, n, sl, x, ldx, mid, tokenPitch, ptrs);
  check(cudaGetLastError(), "LoRA chunk pointers launch");
}

}  // namespace cuda
}  // namespace troupe
