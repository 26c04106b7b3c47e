// Where an adapter's ranks lie in a LoRA pool cut into slots of a lower rank than the max rank
// (lora_pool.h): an adapter of rank r takes a run of loraSlotSpan(r, U) slots from its first slot
// k (U the slot rank), and its rank q lies in slot k + q / U at position q % U. Plain functions of
// the numbers, for the kernels and for a host program that checks them (test/gpu/lora_runs_check.cc).
// With U equal to the max rank every run is one slot and each function gives the one-slot layout.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define TROUPE_LORA_RUN __host__ __device__ __forceinline__
#else
#define TROUPE_LORA_RUN inline
#endif

namespace troupe {
namespace cuda {
namespace lora_runs {

// The slots an adapter of `rank` takes: the least power of two of them that holds its rank
// (lora.h's loraSlotSpan, which the pool's fills use).
TROUPE_LORA_RUN int span(int rank, int slotRank) {
  int n = 1;
  while (n * slotRank < rank) n *= 2;
  return n;
}

// A group's rows in slot-major order, [slot][slice][U] (its A rows in the pool, the tail rows that
// copy them, and a GEMM's outputs over either): the row of slice j's rank q of the adapter whose
// run starts at slot k.
TROUPE_LORA_RUN int64_t slotMajorRow(int k, int j, int q, int slices, int slotRank) {
  return (static_cast<int64_t>(k + q / slotRank) * slices + j) * slotRank + q % slotRank;
}

// The same row counted from the adapter's first slot's first row.
TROUPE_LORA_RUN int64_t runRow(int j, int q, int slices, int slotRank) {
  return slotMajorRow(0, j, q, slices, slotRank);
}

// The same row counted from slice j's first row in the adapter's first slot (where the pool's
// per-slice pointers point): rank q's, whatever the slice.
TROUPE_LORA_RUN int64_t sliceRow(int q, int slices, int slotRank) { return runRow(0, q, slices, slotRank); }

// Which rank of the adapter whose run starts at slot k (and takes `span` slots) a slot-major row
// holds, or -1 where the row lies outside its run; *slice gets the row's slice either way.
TROUPE_LORA_RUN int rankOfRow(int64_t row, int k, int span, int slices, int slotRank, int* slice) {
  const int64_t perSlot = static_cast<int64_t>(slices) * slotRank;
  const int64_t s = row / perSlot;
  const int within = static_cast<int>(row % perSlot);
  *slice = within / slotRank;
  if (s < k || s >= k + span) return -1;
  return static_cast<int>(s - k) * slotRank + within % slotRank;
}

// A module's padding columns (and its transposed B's rows, and anything else laid [slot][U]) run
// on from slot to slot: the adapter's rank q at k U + q. Which rank a column c of the module's
// block is for the adapter at k with `width` ranks in its run (span U), or -1 outside it.
TROUPE_LORA_RUN int rankOfColumn(int c, int k, int width, int slotRank) {
  const int q = c - k * slotRank;
  return q >= 0 && q < width ? q : -1;
}

}  // namespace lora_runs
}  // namespace cuda
}  // namespace troupe
