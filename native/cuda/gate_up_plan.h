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

// The most A tiles (64 rows each) and K parts an A tile takes: the workspace and counters are
// reserved for them.
constexpr int kMaxATiles = 32, kMaxAParts = 4;

// A unit's place: a weight tile's, or with LoRA an A tile's (isA), over K stages [kt0, kt0 + count)
// of part `part` of `parts`.
struct Unit {
  bool isA;
  int tile, part, parts, kt0, count;
};

// The grid's work: aTiles x aParts A units first (A tile u % aTiles, part u / aTiles, over the
// xStages stages below xK alone), then the weight tiles' (tile u % tiles, part u / tiles, over
// kTiles stages). Block b takes units b, b + blocks, ... in order, so a block's A units come before
// its weight units. halves (split rows): a weight unit's stages past xStages are gate's padStages
// then up's, each over the same K stages from xStages.
struct Plan {
  int tiles, kTiles, xStages, padStages, splits, aTiles, aParts;
  bool halves;
  TROUPE_GU_PLAN int aUnits() const { return aTiles * aParts; }
  TROUPE_GU_PLAN int units() const { return aUnits() + tiles * splits; }
  TROUPE_GU_PLAN Unit unit(int u) const {
    Unit x;
    x.isA = u < aUnits();
    const int n = x.isA ? aTiles : tiles, stages = x.isA ? xStages : kTiles;
    if (!x.isA) u -= aUnits();
    x.tile = u % n, x.part = u / n, x.parts = x.isA ? aParts : splits;
    x.kt0 = x.part * stages / x.parts;
    x.count = (x.part + 1) * stages / x.parts - x.kt0;
    return x;
  }
  // A weight unit's stage s: the K stage it reads, and the half whose rows it multiplies (-1: both;
  // with split rows 0 for gate's padding stages, 1 for up's, the other half's rows then zero).
  TROUPE_GU_PLAN int stageK(int s) const { return !halves || s < xStages ? s : xStages + (s - xStages) % padStages; }
  TROUPE_GU_PLAN int stageHalf(int s) const { return !halves || s < xStages ? -1 : (s - xStages) / padStages; }
  // Whether a weight unit's stage reads the LoRA columns that the A units write.
  TROUPE_GU_PLAN bool readsColumns(int s) const { return aTiles > 0 && s >= xStages; }
  // Each part's place in the workspace (the weight tiles' parts, then kMaxAParts for each A tile),
  // and its tile's counter (the weight tiles', kMaxATiles for the A tiles, then the columns' two).
  TROUPE_GU_PLAN size_t partIndex(const Unit& x) const {
    return x.isA ? static_cast<size_t>(tiles) * splits + static_cast<size_t>(x.tile) * kMaxAParts + x.part
                 : static_cast<size_t>(x.tile) * splits + x.part;
  }
  TROUPE_GU_PLAN int counter(const Unit& x) const { return x.isA ? tiles + x.tile : x.tile; }
  TROUPE_GU_PLAN int readyCounter() const { return tiles + kMaxATiles; }
};

// What a call of `tiles` weight tiles in `splits` parts needs reserved: parts and counters.
inline size_t reservedParts(int tiles, int splits) {
  return static_cast<size_t>(tiles) * splits + static_cast<size_t>(kMaxATiles) * kMaxAParts;
}
inline int reservedCounters(int tiles) { return tiles + kMaxATiles + 2; }

// The plan of a call: K's stages of 256 (stageK wide), the LoRA A rows' tiles.
inline Plan makePlan(int inter, int K, int xK, bool halves, int splits, int aRows, int loraParts, int halfRows,
                     int stageK, int tileRows) {
  Plan p{};
  p.tiles = inter / halfRows, p.splits = splits, p.halves = halves;
  const int all = (K + stageK - 1) / stageK;
  p.xStages = halves || aRows > 0 ? xK / stageK : all;
  p.padStages = halves ? (K - xK + stageK - 1) / stageK : 0;
  p.kTiles = halves ? p.xStages + 2 * p.padStages : all;
  p.aTiles = aRows > 0 ? (aRows + tileRows - 1) / tileRows : 0;
  p.aParts = aRows > 0 ? (loraParts < p.xStages ? loraParts : p.xStages) : 0;
  return p;
}

}  // namespace gate_up
}  // namespace cuda
}  // namespace troupe
