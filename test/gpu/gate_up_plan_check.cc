// The gate/up GEMM's plan (native/cuda/gate_up_plan.h) on the host: over shapes with and without
// LoRA A units, split rows or one block of columns, 1 to 4 K parts and the balanced plan, 1 to 4 A
// parts and grids smaller and larger than the units (where GateUpGemm::supports takes them), it
// checks that every unit goes to one block, that each weight tile's parts take each of its K stages
// once (with split rows each padding column once a half: unpaired the other half zero, or paired
// both halves in a stage half as wide), that each A tile's parts take each stage below xK once,
// that every A unit comes before every weight unit (a copying warp waits for every A tile's columns
// at its first stage that reads them) and in each kind every part that is not its tile's last
// before every last part (a last part waits for the others), that some block reads the columns (the
// last reader resets the count), that the parts and counters fall in what reserve() sets aside, and
// that the balanced plan's longest block is no longer than one part's. Needs no GPU:
//   g++ -std=c++17 -O2 -Inative -o /tmp/gate_up_plan_check test/gpu/gate_up_plan_check.cc
//   /tmp/gate_up_plan_check
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "cuda/gate_up_plan.h"

using namespace troupe::cuda::gate_up;

namespace {

constexpr int kHalfRows = 32, kStageK = 256, kTileRows = 64, kMaxSplits = 4;

struct Shape {
  int inter, xK, columns;  // columns: the LoRA columns past xK a row holds (with split rows, each half's)
  bool halves;
  int aRows;  // 0: no LoRA A units
};

// Checks one plan on a grid of `blocks` (as many as the units where fewer).
int checkPlan(const Shape& sh, const Plan& p, int splits, int blocks, const char* what) {
  const int K = sh.xK + sh.columns;
  auto fail = [&](const std::string& why) {
    std::printf("FAIL %s: %s\n", what, why.c_str());
    return 1;
  };
  const int grid = blocks < p.units() ? blocks : p.units();
  // (tile, 128-column chunk of K, half + 1) of the weight units, (A tile, stage) of the A units.
  constexpr int kChunk = kStageK / 2;
  const int chunks = (K + kStageK - 1) / kStageK * 2;
  std::vector<int> weightTaken(static_cast<size_t>(p.tiles) * chunks * 3, 0);
  std::vector<int> aTaken(static_cast<size_t>(p.aTiles) * p.xStages, 0);
  std::set<size_t> parts;
  std::vector<int> seen(p.units(), 0);
  bool someReader = false;
  // Unit order: A units, then weight units; in each, every part that is not its tile's last before
  // every last part (a last part waits for the others, which then never wait behind one).
  int lastA = -1, lastWeight = -1;
  bool finalSeen[2] = {false, false};
  for (int u = 0; u < p.units(); ++u) {
    const Unit x = p.unit(u);
    const int cls = x.isA ? 0 : 1;
    if (x.isA && lastWeight >= 0) return fail("an A unit after a weight unit");
    (x.isA ? lastA : lastWeight) = u;
    if (x.parts > 1) {
      const bool final = x.part == x.parts - 1;
      if (!final && finalSeen[cls]) return fail("unit " + std::to_string(u) + ", not a last part, after a last part");
      finalSeen[cls] = finalSeen[cls] || final;
    }
  }
  for (int b = 0; b < grid; ++b) {
    for (int u = b; u < p.units(); u += grid) {
      ++seen[u];
      const Unit x = p.unit(u);
      if (x.count < 1) return fail("unit " + std::to_string(u) + " takes no stage");
      if (x.parts > 1) {
        if (!parts.insert(p.partIndex(x)).second) return fail("two parts share a workspace place");
        const size_t limit = x.isA ? reservedParts(p.tiles, kMaxSplits, blocks) : p.aPartBase;
        if (p.partIndex(x) >= limit) return fail("a part past the reserved workspace");
      }
      if (p.counter(x) >= p.readyCounter() || p.readyCounter() + 1 >= reservedCounters(p.tiles))
        return fail("a counter past the reserved ones");
      if (x.isA) {
        if (x.tile >= p.aTiles || x.part >= x.parts || x.kt0 + x.count > p.xStages) return fail("an A unit past xK");
        for (int s = x.kt0; s < x.kt0 + x.count; ++s) ++aTaken[static_cast<size_t>(x.tile) * p.xStages + s];
        continue;
      }
      if (x.tile >= p.tiles || x.kt0 + x.count > p.kTiles) return fail("a weight unit past its tile's stages");
      for (int s = x.kt0; s < x.kt0 + x.count; ++s) {
        // A paired padding stage is half a stage wide and takes both halves.
        const int k = p.stageColumn(s), half = p.stageHalf(s), width = p.pairedStage(s) ? kChunk : kStageK;
        if (k < 0 || k >= K || k % kChunk != 0) return fail("a stage past K, or off a chunk");
        if ((half >= 0 || p.pairedStage(s)) && (!sh.halves || k < sh.xK)) return fail("a half stage below xK");
        if (p.pairedStage(s) != (p.paired && sh.halves && k >= sh.xK)) return fail("a paired stage out of place");
        if (p.readsColumns(s) != (sh.aRows > 0 && k + width > sh.xK))
          return fail("stage " + std::to_string(s) +
                      " waits for the columns where it should not, or reads them unwaited");
        someReader = someReader || p.readsColumns(s);
        for (int c = k / kChunk; c < (k + width) / kChunk; ++c)
          for (int h = -1; h <= 1; ++h)
            if (p.pairedStage(s) ? h >= 0 : h == half)
              ++weightTaken[(static_cast<size_t>(x.tile) * chunks + c) * 3 + (h + 1)];
      }
    }
  }
  for (int u = 0; u < p.units(); ++u)
    if (seen[u] != 1) return fail("unit " + std::to_string(u) + " taken " + std::to_string(seen[u]) + " times");
  for (int t = 0; t < p.tiles; ++t)
    for (int c = 0; c < chunks; ++c) {
      if (c * kChunk >= K) continue;  // zeros past K, taken or not
      const bool pad = sh.halves && c * kChunk >= sh.xK;
      for (int h = -1; h <= 1; ++h) {
        const int want = pad ? (h >= 0 ? 1 : 0) : (h < 0 ? 1 : 0);
        const int got = weightTaken[(static_cast<size_t>(t) * chunks + c) * 3 + (h + 1)];
        if (got != want)
          return fail("tile " + std::to_string(t) + " columns from " + std::to_string(c * kChunk) + " half " +
                      std::to_string(h) + " taken " + std::to_string(got) + " times");
      }
    }
  for (size_t i = 0; i < aTaken.size(); ++i)
    if (aTaken[i] != 1) return fail("A stage " + std::to_string(i) + " taken " + std::to_string(aTaken[i]) + " times");
  if (sh.aRows > 0 && !someReader) return fail("no block reads the columns");
  if (sh.aRows > 0 && p.aTiles > kMaxATiles) return fail("more A tiles than reserved");
  (void)splits;
  return 0;
}

// splits 1-4: every tile in that many parts; 0: the balanced plan, which must be no longer than
// one part's.
int checkOne(const Shape& sh, bool paired, int splits, int loraParts, int blocks) {
  const int K = sh.xK + sh.columns, tiles = sh.inter / kHalfRows;
  const size_t base = reservedWeightParts(tiles, kMaxSplits, blocks);
  Plan p = makePlan(sh.inter, K, sh.xK, sh.halves, paired, splits > 0 ? splits : 1, sh.aRows, loraParts, kHalfRows,
                    kStageK, kTileRows, base);
  if (p.kTiles < splits) return -1;  // refused by GateUpGemm::supports
  char what[200];
  std::snprintf(what, sizeof what, "inter %d xK %d columns %d %s A rows %d splits %d A parts %d blocks %d", sh.inter,
                sh.xK, sh.columns, sh.halves ? (paired ? "split rows paired" : "split rows") : "one block", sh.aRows,
                splits, loraParts, blocks);
  if (splits == 0) {
    const Plan one = p;
    p = balancedPlan(p, blocks, 0.5, 1.0);
    if (longestBlock(p, blocks, 0.5, 1.0) > longestBlock(one, blocks, 0.5, 1.0)) {
      std::printf("FAIL %s: the balanced plan is longer than one part's\n", what);
      return 1;
    }
  }
  return checkPlan(sh, p, splits, blocks, what);
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
    for (bool paired : {true, false})
      for (int splits = 0; splits <= kMaxSplits; ++splits)
        for (int loraParts = 1; loraParts <= kMaxAParts; ++loraParts)
          for (int blocks : {1, 7, 132, 4000}) {
            if (paired && !sh.halves) continue;  // the same plan
            const int r = checkOne(sh, paired, splits, loraParts, blocks);
            if (r < 0) continue;
            ++cases;
            failed += r;
          }
  // What the balanced plan makes of Llama-8B's gate/up on 132 blocks, without and with rank-16
  // adapters' LoRA (split rows, 16 A units).
  for (const Shape& sh : {shapes[0], shapes[1]}) {
    const int K = sh.xK + sh.columns;
    const Plan one = makePlan(sh.inter, K, sh.xK, sh.halves, true, 1, sh.aRows, 4, kHalfRows, kStageK, kTileRows, 0);
    const Plan b = balancedPlan(one, 132, 0.5, 1.0);
    std::printf("inter %d K %d A rows %d: %d whole tiles, %d in %d parts; longest block %.1f stages against %.1f\n",
                sh.inter, K, sh.aRows, b.whole, b.tiles - b.whole, b.tailParts, longestBlock(b, 132, 0.5, 1.0),
                longestBlock(one, 132, 0.5, 1.0));
  }
  std::printf("%d cases, %d failed\n", cases, failed);
  return failed > 0 ? 1 : 0;
}
