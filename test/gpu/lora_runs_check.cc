// The LoRA pool's run layout (native/cuda/lora_runs.h) on the host: pools of 1 to 64 slots of rank
// 8 or 16 with a max rank up to 128, adapters of random ranks placed as the scheduler places them
// (a power of two of slots from a multiple of that power), 1 to 3 slices a group. Checks that every
// rank of every slice of every adapter has a row of its own in its run's rows and a column of its
// own in its run's columns, that the inverse look-ups give it back and give -1 to every other
// adapter, and that with the slot rank equal to the max rank the rows and columns are the one-slot
// layout's. Needs no GPU:
//   g++ -std=c++17 -O2 -Inative -o /tmp/lora_runs_check test/gpu/lora_runs_check.cc
//   /tmp/lora_runs_check
#include <cstdio>
#include <random>
#include <vector>

#include "cuda/lora_runs.h"

using namespace troupe::cuda::lora_runs;

namespace {

struct Adapter {
  int slot, rank, span;
};

int failures = 0;

void fail(const char* what, int slots, int slotRank, int slices, const Adapter& a, int j, int q, long got) {
  if (++failures <= 10)
    std::printf("FAIL %s: %d slots of rank %d, %d slices, adapter at %d (rank %d, span %d), slice %d rank %d: %ld\n", what,
                slots, slotRank, slices, a.slot, a.rank, a.span, j, q, got);
}

// Adapters placed in the lowest free aligned run, until one does not fit.
std::vector<Adapter> place(int slots, int slotRank, int maxRank, std::mt19937& rng) {
  std::vector<int> owner(slots, -1);
  std::vector<Adapter> out;
  for (;;) {
    const int rank = 1 + static_cast<int>(rng() % maxRank);
    const int n = span(rank, slotRank);
    int at = -1;
    for (int s = 0; s + n <= slots && at < 0; s += n) {
      bool free = true;
      for (int i = s; i < s + n; ++i) free = free && owner[i] < 0;
      if (free) at = s;
    }
    if (at < 0) return out;
    for (int i = at; i < at + n; ++i) owner[i] = static_cast<int>(out.size());
    out.push_back({at, rank, n});
  }
}

void check(int slots, int slotRank, int maxRank, int slices, std::mt19937& rng) {
  const std::vector<Adapter> pool = place(slots, slotRank, maxRank, rng);
  std::vector<int> rowOwner(static_cast<size_t>(slots) * slices * slotRank, -1);
  std::vector<int> colOwner(static_cast<size_t>(slots) * slotRank, -1);
  for (size_t i = 0; i < pool.size(); ++i) {
    const Adapter& a = pool[i];
    const int width = a.span * slotRank;
    if (a.slot % a.span != 0 || width < a.rank || (a.span > 1 && width / 2 >= a.rank)) fail("span", slots, slotRank, slices, a, 0, 0, a.span);
    for (int j = 0; j < slices; ++j)
      for (int q = 0; q < width; ++q) {
        const int64_t row = slotMajorRow(a.slot, j, q, slices, slotRank);
        if (row != a.slot * static_cast<int64_t>(slices) * slotRank + runRow(j, q, slices, slotRank))
          fail("runRow", slots, slotRank, slices, a, j, q, row);
        if (row != (static_cast<int64_t>(a.slot) * slices + j) * slotRank + sliceRow(q, slices, slotRank))
          fail("sliceRow", slots, slotRank, slices, a, j, q, row);
        if (row < static_cast<int64_t>(a.slot) * slices * slotRank || row >= static_cast<int64_t>(a.slot + a.span) * slices * slotRank) {
          fail("row outside the run", slots, slotRank, slices, a, j, q, row);
          continue;
        }
        if (rowOwner[row] >= 0) fail("row taken twice", slots, slotRank, slices, a, j, q, row);
        rowOwner[row] = static_cast<int>(i);
        int slice = -1;
        const int back = rankOfRow(row, a.slot, a.span, slices, slotRank, &slice);
        if (back != q || slice != j) fail("rankOfRow", slots, slotRank, slices, a, j, q, back);
        if (slotRank == maxRank && row != (static_cast<int64_t>(a.slot) * slices + j) * maxRank + q)
          fail("one-slot row", slots, slotRank, slices, a, j, q, row);
      }
    for (int q = 0; q < width; ++q) {
      const int c = a.slot * slotRank + q;
      if (colOwner[c] >= 0) fail("column taken twice", slots, slotRank, slices, a, 0, q, c);
      colOwner[c] = static_cast<int>(i);
      if (rankOfColumn(c, a.slot, width, slotRank) != q) fail("rankOfColumn", slots, slotRank, slices, a, 0, q, c);
    }
  }
  // Every row and column says -1 to every adapter but its owner.
  for (size_t i = 0; i < pool.size(); ++i) {
    const Adapter& a = pool[i];
    for (int64_t row = 0; row < static_cast<int64_t>(rowOwner.size()); ++row) {
      int slice = -1;
      const int q = rankOfRow(row, a.slot, a.span, slices, slotRank, &slice);
      if ((q >= 0) != (rowOwner[row] == static_cast<int>(i))) fail("foreign row", slots, slotRank, slices, a, slice, q, row);
    }
    for (int c = 0; c < static_cast<int>(colOwner.size()); ++c) {
      const int q = rankOfColumn(c, a.slot, a.span * slotRank, slotRank);
      if ((q >= 0) != (colOwner[c] == static_cast<int>(i))) fail("foreign column", slots, slotRank, slices, a, 0, q, c);
      if (slotRank == maxRank && q != (c / maxRank == a.slot ? c % maxRank : -1)) fail("one-slot column", slots, slotRank, slices, a, 0, q, c);
    }
  }
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  int cases = 0;
  for (int slotRank : {8, 16})
    for (int maxRank : {8, 16, 32, 64, 128})
      for (int slots : {1, 2, 3, 8, 17, 64})
        for (int slices = 1; slices <= 3; ++slices)
          for (int trial = 0; trial < 4; ++trial) {
            if (maxRank < slotRank) continue;
            // A pool of `slots` places of the max rank, cut into slots of slotRank.
            check(slots * (maxRank / slotRank), slotRank, maxRank, slices, rng);
            ++cases;
          }
  std::printf("%d cases, %d failed\n", cases, failures);
  return failures == 0 ? 0 : 1;
}
