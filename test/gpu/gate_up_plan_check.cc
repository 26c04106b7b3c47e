// The gate/up GEMM's plan (native/cuda/gate_up_plan.h) on the host: over shapes with and without
// LoRA A units, split rows or one block of columns, 1 to 4 K parts, 1 to 4 A parts and grids
// smaller and larger than the units (where GateUpGemm::supports takes them), it checks that every unit goes to one
// block, that each weight tile's parts take each of its K stages once (with split rows each padding stage once a half,
// the other half zero), that each A tile's parts take each stage below xK once, that a block takes all its A units
// before any weight unit (its copying warp waits for every A tile's columns at its first stage that reads them, so an A
// unit after that stage could never start), that some block reads the columns (the last reader resets the count), and
// that the parts and counters fall in what reserve() sets aside. Needs no GPU:
//   g++ -std=c++17 -O2 -Inative -o /tmp/gate_up_plan_check test/gpu/gate_up_plan_check.cc
//   /tmp/gate_up_plan_check
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "cuda/gate_up_plan.h"

using namespace troupe::cuda::gate_up;

namespace {

constexpr int kHalfRows = 32, kStageK = 256, kTileRows = 64;

struct Shape {
  int inter, xK, columns;  // columns: the LoRA columns past xK a row holds (with split rows, each half's)
  bool halves;
  int aRows;  // 0: no LoRA A units
};

int checkOne(const Shape& sh, int splits, int loraParts, int blocks) {
  const int K = sh.xK + sh.columns;
  const Plan p = makePlan(sh.inter, K, sh.xK, sh.halves, splits, sh.aRows, loraParts, kHalfRows, kStageK, kTileRows);
  if (p.kTiles < splits) return -1;  // refused by GateUpGemm::supports
  char what[200];
  std::snprintf(what, sizeof what, "inter %d xK %d columns %d %s A rows %d splits %d A parts %d blocks %d", sh.inter,
                sh.xK, sh.columns, sh.halves ? "split rows" : "one block", sh.aRows, splits, loraParts, blocks);
  auto fail = [&](const std::string& why) {
    std::printf("FAIL %s: %s\n", what, why.c_str());
    return 1;
  };
  const int grid = blocks < p.units() ? blocks : p.units();
  // (tile, K stage, half + 1) of the weight units, (A tile, stage) of the A units.
  std::vector<int> weightTaken(static_cast<size_t>(p.tiles) * ((K + kStageK - 1) / kStageK) * 3, 0);
  std::vector<int> aTaken(static_cast<size_t>(p.aTiles) * p.xStages, 0);
  std::set<size_t> parts;
  std::vector<int> seen(p.units(), 0);
  const int kAll = (K + kStageK - 1) / kStageK;
  bool someReader = false;
  for (int b = 0; b < grid; ++b) {
    bool weightsBegun = false;
    for (int u = b; u < p.units(); u += grid) {
      ++seen[u];
      const Unit x = p.unit(u);
      if (x.count < 1) return fail("unit " + std::to_string(u) + " takes no stage");
      if (x.parts > 1 && !parts.insert(p.partIndex(x)).second) return fail("two parts share a workspace place");
      if (p.partIndex(x) >= reservedParts(p.tiles, splits)) return fail("a part past the reserved workspace");
      if (p.counter(x) >= p.readyCounter() || p.readyCounter() + 1 >= reservedCounters(p.tiles))
        return fail("a counter past the reserved ones");
      if (x.isA) {
        if (weightsBegun) return fail("block " + std::to_string(b) + " takes an A unit after a weight unit");
        if (x.tile >= p.aTiles || x.part >= x.parts || x.kt0 + x.count > p.xStages) return fail("an A unit past xK");
        for (int s = x.kt0; s < x.kt0 + x.count; ++s) ++aTaken[static_cast<size_t>(x.tile) * p.xStages + s];
        continue;
      }
      weightsBegun = true;
      if (x.tile >= p.tiles || x.kt0 + x.count > p.kTiles) return fail("a weight unit past its tile's stages");
      for (int s = x.kt0; s < x.kt0 + x.count; ++s) {
        const int k = p.stageK(s), half = p.stageHalf(s);
        if (k < 0 || k >= kAll) return fail("a stage past K");
        if (half >= 0 && (!sh.halves || k * kStageK < sh.xK)) return fail("a half stage below xK");
        if (p.readsColumns(s) != (sh.aRows > 0 && (k + 1) * kStageK > sh.xK))
          return fail("stage " + std::to_string(s) +
                      " waits for the columns where it should not, or reads them unwaited");
        someReader = someReader || p.readsColumns(s);
        ++weightTaken[(static_cast<size_t>(x.tile) * kAll + k) * 3 + (half + 1)];
      }
    }
  }
  for (int u = 0; u < p.units(); ++u)
    if (seen[u] != 1) return fail("unit " + std::to_string(u) + " taken " + std::to_string(seen[u]) + " times");
  for (int t = 0; t < p.tiles; ++t)
    for (int k = 0; k < kAll; ++k) {
      const bool pad = sh.halves && k * kStageK >= sh.xK;
      for (int h = -1; h <= 1; ++h) {
        const int want = pad ? (h >= 0 ? 1 : 0) : (h < 0 ? 1 : 0);
        const int got = weightTaken[(static_cast<size_t>(t) * kAll + k) * 3 + (h + 1)];
        if (got != want)
          return fail("tile " + std::to_string(t) + " stage " + std::to_string(k) + " half " + std::to_string(h) +
                      " taken " + std::to_string(got) + " times");
      }
    }
  for (size_t i = 0; i < aTaken.size(); ++i)
    if (aTaken[i] != 1) return fail("A stage " + std::to_string(i) + " taken " + std::to_string(aTaken[i]) + " times");
  if (sh.aRows > 0 && !someReader) return fail("no block reads the columns");
  if (sh.aRows > 0 && p.aTiles > kMaxATiles) return fail("more A tiles than reserved");
  return 0;
}

}  // namespace

int main() {
  // Llama-8B's gate/up at rank 16 and 64 over 8 slots (split rows and one block), no LoRA, a small
  // shape with more blocks than units, K past a whole stage.
  const Shape shapes[] = {
      {14336, 4096, 0, false, 0},     {14336, 4096, 128, true, 256},  {14336, 4096, 512, true, 1024},
      {14336, 4096, 256, false, 256}, {1024, 1024, 128, true, 256},   {512, 1024, 0, false, 0},
      {256, 512, 64, false, 64},      {2048, 1024, 1024, true, 2048}, {1024, 1024, 64, false, 0}};
  int cases = 0, failed = 0;
  for (const Shape& sh : shapes)
    for (int splits = 1; splits <= 4; ++splits)
      for (int loraParts = 1; loraParts <= kMaxAParts; ++loraParts)
        for (int blocks : {1, 7, 132, 4000}) {
          const int r = checkOne(sh, splits, loraParts, blocks);
          if (r < 0) continue;
          ++cases;
          failed += r;
        }
  std::printf("%d cases, %d failed\n", cases, failed);
  return failed > 0 ? 1 : 0;
}
