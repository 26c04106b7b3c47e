// Which work each block of the gate/up GEMM (gate_up_gemm.cu) takes and where its sums meet, as
// plain functions of the call's numbers, so that a host program can check that every stage of
// every tile is taken once, that each block's LoRA A units come before any stage that waits for
// their columns, and that the workspace and counters hold what the units use.
#pragma once

#include <cstddef>

#ifdef __CUDACC__
#define TROUPE_GU_PLAN __host__ __device__ __forceinline__
#else
#define TROUPE_GU_PLAN inline
#endif

namespace troupe {
namespace cuda {
namespace gate_up {

// The most A tiles (64 rows each) and K parts an A tile takes, the most parts a weight tile is
// split into, and the most split tiles' parts a balanced plan has per block of the grid: the
// workspace and counters are reserved for them.
constexpr int kMaxATiles = 32, kMaxAParts = 4, kMaxTailParts = 8, kTailPartsPerBlock = 4;

// A unit's place: a weight tile's, or with LoRA an A tile's (isA), over K stages [kt0, kt0 + count)
// of part `part` of `parts`.
struct Unit {
  bool isA;
  int tile, part, parts, kt0, count;
};

// The grid's work, in unit order: aTiles x aParts A units (A tile u % aTiles, part u / aTiles, over
// the xStages stages below xK alone); then weight tiles [0, whole), a unit each over kTiles
// stages; then tiles [whole, tiles) in tailParts parts each (tile whole + v % (tiles - whole), part
// v / (tiles - whole)). Block b takes units b, b + blocks, ... in order, so a block's A units come
// before its weight units, and every unit that is not its tile's last part comes before every last
// part (a last part waits for the others). halves (split rows): a weight unit's stages past
// xStages are its padStages padding stages: gate's then up's over the same columns, each with the
// other half's rows zero; or, paired, each stage half as wide in K and both halves at once, each
// half's rows over its own token rows (a product twice as wide in tokens), so that every padding
// stage carries only columns that count.
struct Plan {
  int tiles, kTiles, xStages, padStages, aTiles, aParts, whole, tailParts;
  bool halves, paired;
  int stageK;        // K columns of a stage (a paired padding stage's: half as many)
  size_t aPartBase;  // the A units' parts in the workspace, after the weight tiles' reserved ones
  TROUPE_GU_PLAN int aUnits() const { return aTiles * aParts; }
  TROUPE_GU_PLAN int units() const { return aUnits() + whole + (tiles - whole) * tailParts; }
  TROUPE_GU_PLAN Unit unit(int u) const {
    Unit x;
    x.isA = u < aUnits();
    int n, stages;
    if (x.isA) {
      n = aTiles, stages = xStages, x.parts = aParts, x.tile = u % n, x.part = u / n;
    } else if (u - aUnits() < whole) {
      n = 1, stages = kTiles, x.parts = 1, x.tile = u - aUnits(), x.part = 0;
    } else {
      const int v = u - aUnits() - whole;
      n = tiles - whole, stages = kTiles, x.parts = tailParts, x.tile = whole + v % n, x.part = v / n;
    }
    x.kt0 = x.part * stages / x.parts;
    x.count = (x.part + 1) * stages / x.parts - x.kt0;
    return x;
  }
  // A weight unit's stage s: whether it is a paired padding stage, the first K column it reads, and
  // the half whose rows it multiplies (-1: both, over one set of token rows; with split rows and
  // unpaired, 0 for gate's padding stages, 1 for up's, the other half's rows then zero).
  TROUPE_GU_PLAN bool pairedStage(int s) const { return paired && halves && s >= xStages; }
  TROUPE_GU_PLAN int stageColumn(int s) const {
    if (!halves || s < xStages) return s * stageK;
    const int j = s - xStages;
    return xStages * stageK + (paired ? j * (stageK / 2) : (j % padStages) * stageK);
  }
  TROUPE_GU_PLAN int stageHalf(int s) const {
    return !halves || s < xStages || paired ? -1 : (s - xStages) / padStages;
  }
  // Whether a weight unit's stage reads the LoRA columns that the A units write.
  TROUPE_GU_PLAN bool readsColumns(int s) const { return aTiles > 0 && s >= xStages; }
  // Each part's place in the workspace (the split weight tiles' parts, then kMaxAParts for each A
  // tile), and its tile's counter (the weight tiles', kMaxATiles for the A tiles, then the columns'
  // two).
  TROUPE_GU_PLAN size_t partIndex(const Unit& x) const {
    return x.isA ? aPartBase + static_cast<size_t>(x.tile) * kMaxAParts + x.part
                 : static_cast<size_t>(x.tile - whole) * tailParts + x.part;
  }
  TROUPE_GU_PLAN int counter(const Unit& x) const { return x.isA ? tiles + x.tile : x.tile; }
  TROUPE_GU_PLAN int readyCounter() const { return tiles + kMaxATiles; }
};

// What calls of `tiles` weight tiles need reserved, with uniform parts up to `splits` or a
// balanced plan on a grid of `blocks`: the weight tiles' parts, then the A tiles'.
inline size_t reservedWeightParts(int tiles, int splits, int blocks) {
  const size_t uniform = static_cast<size_t>(tiles) * splits,
               balanced = static_cast<size_t>(blocks) * kTailPartsPerBlock;
  return uniform > balanced ? uniform : balanced;
}
inline size_t reservedParts(int tiles, int splits, int blocks) {
  return reservedWeightParts(tiles, splits, blocks) + static_cast<size_t>(kMaxATiles) * kMaxAParts;
}
inline int reservedCounters(int tiles) { return tiles + kMaxATiles + 2; }

// The plan of a call whose K stages are stageK wide and whose LoRA A rows (aRows, 0 for none) lie
// in tiles of tileRows: every weight tile in `splits` parts; paired: split rows' padding stages
// take both halves at once (Plan).
inline Plan makePlan(int inter, int K, int xK, bool halves, bool paired, int splits, int aRows, int loraParts,
                     int halfRows, int stageK, int tileRows, size_t aPartBase) {
  Plan p{};
  p.tiles = inter / halfRows, p.halves = halves, p.paired = halves && paired, p.stageK = stageK;
  p.aPartBase = aPartBase;
  p.whole = splits == 1 ? p.tiles : 0, p.tailParts = splits;
  const int all = (K + stageK - 1) / stageK;
  p.xStages = halves || aRows > 0 ? xK / stageK : all;
  const int padK = p.paired ? stageK / 2 : stageK;
  p.padStages = halves ? (K - xK + padK - 1) / padK : 0;
  p.kTiles = halves ? p.xStages + (p.paired ? 1 : 2) * p.padStages : all;
  p.aTiles = aRows > 0 ? (aRows + tileRows - 1) / tileRows : 0;
  p.aParts = aRows > 0 ? (loraParts < p.xStages ? loraParts : p.xStages) : 0;
  return p;
}

// The longest block's work on a grid of `blocks` (as many as the units where fewer): each unit's
// stages, plus `epilogue` stages' worth a unit and `fixup` more for a split tile's part.
inline double longestBlock(const Plan& p, int blocks, double epilogue, double fixup) {
  const int units = p.units(), grid = blocks < units ? blocks : units;
  double longest = 0;
  for (int b = 0; b < grid; ++b) {
    double load = 0;
    for (int u = b; u < units; u += grid) {
      const Unit x = p.unit(u);
      load += x.count + epilogue + (x.parts > 1 ? fixup : 0);
    }
    longest = load > longest ? load : longest;
  }
  return longest;
}

// The plan whose longest block is shortest among: every weight tile a unit, and the last R tiles
// (R up to two grids' worth) in 2 to kMaxTailParts parts, at most kTailPartsPerBlock of those parts
// a block. The tiles that quantize badly onto the grid (448 of Llama-8B's over 132 blocks: three
// rounds and 52 tiles) are then spread over every block.
inline Plan balancedPlan(Plan p, int blocks, double epilogue, double fixup) {
  p.whole = p.tiles, p.tailParts = 1;
  Plan best = p;
  double bestLoad = longestBlock(p, blocks, epilogue, fixup);
  const int most = p.tiles < 2 * blocks ? p.tiles : 2 * blocks;
  for (int r = 1; r <= most; ++r)
    for (int parts = 2; parts <= kMaxTailParts && parts <= p.kTiles; ++parts) {
      if (static_cast<long long>(r) * parts > static_cast<long long>(blocks) * kTailPartsPerBlock) break;
      Plan c = p;
      c.whole = p.tiles - r, c.tailParts = parts;
      const double load = longestBlock(c, blocks, epilogue, fixup);
      if (load < bestLoad) best = c, bestLoad = load;
    }
  return best;
}

}  // namespace gate_up
}  // namespace cuda
}  // namespace troupe
