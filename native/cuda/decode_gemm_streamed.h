// The decode GEMM's streamed form (decode_gemm_streamed.cu), for projections with more 64-row
// tiles than multiprocessors (gate/up: 448 at Llama-8B's shape). A grid of one block a
// multiprocessor, each taking an equal run of the (tile, K stage) units in tile order, so that
// every multiprocessor streams to the end: a tile cut between two blocks meets in a workspace,
// added in block order by the last of them. A block takes its first, cut tile last, so that the
// padding stage of that tile (where LoRA's columns are read) comes at the end of its run.
//
// With LoRA (spread only, DecodeGemmLora::spread): the first blocks each take a part of one A
// tile's K stages before their run; the last part's block adds the tile's parts (in part order)
// into the bf16 columns, and the weight tiles read them at their padding stages, which come after
// a block's first whole tile.
#pragma once

#include "cuda/decode_gemm.h"
#include "cuda/decode_gemm_ops.cuh"

namespace troupe {
namespace cuda {
namespace decode_gemm {

// What a block of the streamed grid adds to the A parts' stages when it adds a tile's parts, in
// units of a stage (about what the wait and the adding take).
constexpr int kReduceUnits = 2;

// The streamed grid: `blocks` blocks over `tiles` weight tiles of kTiles stages each (the first
// xStages over x); the first aTiles x aParts blocks take part b % aParts of A tile b / aParts.
struct StreamGrid {
  int blocks = 0, tiles = 0, kTiles = 0, xStages = 0, aTiles = 0, aParts = 1, readers = 0;
  long long work = 0;  // every block's units: the weights' and the A parts' with their adding
  float* parts = nullptr;
  bf16_t* columns = nullptr;
};

__host__ __device__ inline int partStages(const StreamGrid& g, int part) {
  return (part + 1) * g.xStages / g.aParts - part * g.xStages / g.aParts;
}
// Block b's A part stages (0 past the A blocks).
__host__ __device__ inline int aStagesOf(const StreamGrid& g, int b) {
  return b < g.aTiles * g.aParts ? partStages(g, b % g.aParts) : 0;
}
// The work of the A blocks before block b, the adding included.
__host__ __device__ inline long long aWorkBefore(const StreamGrid& g, int b) {
  const int n = b < g.aTiles * g.aParts ? b : g.aTiles * g.aParts;
  return static_cast<long long>(n / g.aParts) * (g.xStages + kReduceUnits) + (n % g.aParts) * g.xStages / g.aParts;
}
// Block b's first weight unit (tile-major: unit u is stage u % kTiles of tile u / kTiles); block
// `blocks` gives the end.
__host__ __device__ inline int weightStart(const StreamGrid& g, int b) {
  return static_cast<int>(static_cast<long long>(b) * g.work / g.blocks - aWorkBefore(g, b));
}
// The block whose run holds unit u.
__host__ __device__ inline int blockOfUnit(const StreamGrid& g, int u) {
  int lo = 0, hi = g.blocks - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (weightStart(g, mid) <= u) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

}  // namespace decode_gemm

// Launches the streamed kernel (DecodeGemm::run with splits kDecodeGemmStreamed).
void launchDecodeGemmStreamed(const DecodeGemmArgs& a, const decode_gemm::StreamGrid& g, const CUtensorMap& wMap,
                              const CUtensorMap& xMap, const CUtensorMap& aMap, const CUtensorMap& cMap,
                              float* partials, unsigned* counters, cudaStream_t st, bool pdl);
// Sets the streamed kernel's shared-memory attributes.
void prepareDecodeGemmStreamed();

}  // namespace cuda
}  // namespace troupe
