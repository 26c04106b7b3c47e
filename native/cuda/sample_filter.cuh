// Top-k, top-p and min-p on the GPU, for sampling.cu's one block per row. As in
// native/sampling.cc, the kept tokens are a prefix of the row's order by weight (descending, ids
// ascending on ties) and the draw walks that prefix in the same order; here neither is sorted. A
// radix selection over the weights' bits (four passes of 8 bits, each a histogram of the tokens
// still in play) finds the weight at a position of the order, given by a count (top-k) or by a
// cumulative mass (top-p, the draw), and a scan over ids finds which of the tokens of equal weight
// it is. Masses are summed as integers (a weight in [0, 1] times 2^40), so the sums do not depend
// on the order threads add them in and a seed draws the same token every run.
#pragma once

#include <cstdint>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

namespace troupe {
namespace cuda {
namespace sample_filter {

constexpr int kBins = 256;
constexpr double kOne = 1099511627776.0;  // 2^40, a weight of 1 as an integer mass

using Mass = unsigned long long;

struct MaxOf {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// A weight w in [0, 1] as an integer mass; below 2^-40 it has none (the host skips only zeros: a
// token that light is drawn once in 10^12 draws there).
__device__ __forceinline__ Mass massOf(float w) { return static_cast<Mass>(static_cast<double>(w) * kOne); }

// A position in the order: every token whose weight's bits exceed `bits`, then the first `ties`
// of those whose bits equal it (by id). count and mass: of the tokens above.
struct Cut {
  uint32_t bits;
  int above;
  Mass massAbove;
  int ties;
};

template <int kThreads>
struct Shared {
  int count[kBins];
  Mass mass[kBins];
  Cut cut;
  int found;
  union {
    typename cub::BlockReduce<Mass, kThreads>::TempStorage mass;
    typename cub::BlockReduce<int, kThreads>::TempStorage count;
    typename cub::BlockReduce<float, kThreads>::TempStorage value;
    typename cub::BlockScan<int, kThreads>::TempStorage scan;
  } tmp;
};

// The position of the order where a target is reached: byMass, the first token whose mass with
// everything before it exceeds `target` (target below the row's total); else the target-th token
// (1 <= target <= tokens with bits above none). weight(i): token i's weight, in [0, 1].
template <int kThreads, class Weight>
__device__ Cut select(int vocab, Weight weight, bool byMass, Mass target, Shared<kThreads>& sh) {
  uint32_t prefix = 0;
  int above = 0;
  Mass massAbove = 0;
  int binCount = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < kBins; b += kThreads) {
      sh.count[b] = 0;
      sh.mass[b] = 0;
    }
    __syncthreads();
    // Every lane of a warp runs the same iterations (kThreads is a multiple of 32), so the lanes
    // that share a digit add their counts and masses together and one of them adds the sums to
    // the histogram: most tokens fall in a few bins, and an atomic per token on those bins
    // serialized the whole block.
    for (int base = 0; base < vocab; base += kThreads) {
      const int i = base + threadIdx.x;
      int d = -1;
      Mass m = 0;
      if (i < vocab) {
        const float w = weight(i);
        const uint32_t bits = __float_as_uint(w);
        // Still in play: the digits above this pass's equal the ones chosen so far.
        if (shift == 24 || (bits >> (shift + 8)) == (prefix >> (shift + 8))) {
          d = (bits >> shift) & (kBins - 1);
          m = massOf(w);
        }
      }
      const unsigned same = __match_any_sync(0xffffffffu, d);
      if (d < 0) continue;
      // A mass is below 2^41: its two 21-bit halves summed over 32 lanes fit in 32 bits.
      const unsigned lo = __reduce_add_sync(same, static_cast<unsigned>(m & 0x1fffff));
      const unsigned hi = __reduce_add_sync(same, static_cast<unsigned>(m >> 21));
      if ((threadIdx.x & 31) == __ffs(same) - 1) {
        atomicAdd(&sh.count[d], __popc(same));
        const Mass sum = (static_cast<Mass>(hi) << 21) + lo;
        if (sum) atomicAdd(&sh.mass[d], sum);
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      // Heavier weights first: the highest digit is the front of the order.
      int d = kBins - 1;
      for (; d > 0; --d) {
        const bool here = byMass ? massAbove + sh.mass[d] > target : above + sh.count[d] >= static_cast<int>(target);
        if (here) break;
        above += sh.count[d];
        massAbove += sh.mass[d];
      }
      sh.cut.bits = prefix | (static_cast<uint32_t>(d) << shift);
      sh.cut.above = above;
      sh.cut.massAbove = massAbove;
      sh.found = sh.count[d];
    }
    __syncthreads();
    prefix = sh.cut.bits;
    above = sh.cut.above;
    massAbove = sh.cut.massAbove;
    binCount = sh.found;
    __syncthreads();  // sh is rewritten by the next pass
  }
  Cut c{prefix, above, massAbove, 1};
  if (byMass) {
    const Mass each = massOf(__uint_as_float(prefix));
    const Mass need = target - massAbove;  // < binCount * each
    c.ties = each ? static_cast<int>(need / each) + 1 : 1;
  } else {
    c.ties = static_cast<int>(target) - above;
  }
  c.ties = max(1, min(c.ties, binCount));
  return c;
}

// The mass of the order's prefix that ends at c: the tokens above it and its ties.
__device__ __forceinline__ Mass prefixMass(const Cut& c) {
  return c.massAbove + static_cast<Mass>(c.ties) * massOf(__uint_as_float(c.bits));
}

// The id of the ties-th token (by id) whose weight has these bits. Each thread scans a
// contiguous run of ids, so a scan of the runs' counts orders them.
template <int kThreads, class Weight>
__device__ int tieId(int vocab, Weight weight, uint32_t bits, int ties, Shared<kThreads>& sh) {
  const int chunk = (vocab + kThreads - 1) / kThreads;
  const int lo = min(vocab, threadIdx.x * chunk), hi = min(vocab, lo + chunk);
  int mine = 0;
  for (int i = lo; i < hi; ++i) mine += __float_as_uint(weight(i)) == bits ? 1 : 0;
  int before = 0;
  if (threadIdx.x == 0) sh.found = -1;
  __syncthreads();
  cub::BlockScan<int, kThreads>(sh.tmp.scan).ExclusiveSum(mine, before);
  if (ties > before && ties <= before + mine) {
    int seen = before;
    for (int i = lo; i < hi; ++i)
      if (__float_as_uint(weight(i)) == bits && ++seen == ties) {
        sh.found = i;
        break;
      }
  }
  __syncthreads();
  const int id = sh.found;
  __syncthreads();
  return id < 0 ? 0 : id;
}

// The token drawn with uniform u under the row's filters (topK <= 0 or >= vocab: off; topP >= 1:
// off; minP <= 0: off), walking the kept prefix as native/sampling.cc's choose does: a token is
// kept if it is the first, or if the mass before it is at most topP of the row's and its weight at
// least minP times the first's. weight(i) in [0, 1]. Every thread gets the token.
template <int kThreads, class Weight>
__device__ int draw(int vocab, Weight weight, int topK, float topP, float minP, float u, Shared<kThreads>& sh) {
  Mass local = 0;
  float heaviest = 0.0f;
  for (int i = threadIdx.x; i < vocab; i += kThreads) {
    const float w = weight(i);
    local += massOf(w);
    heaviest = fmaxf(heaviest, w);
  }
  __shared__ Mass total;
  __shared__ float top;
  Mass sum = cub::BlockReduce<Mass, kThreads>(sh.tmp.mass).Sum(local);
  if (threadIdx.x == 0) total = sum;
  __syncthreads();
  const float m = cub::BlockReduce<float, kThreads>(sh.tmp.value).Reduce(heaviest, MaxOf());
  if (threadIdx.x == 0) top = m;
  __syncthreads();
  if (total == 0) return 0;  // no token has mass

  int kept = topK > 0 && topK < vocab ? topK : vocab;
  if (minP > 0) {
    const float floor = top * fminf(minP, 1.0f);
    int n = 0;
    for (int i = threadIdx.x; i < vocab; i += kThreads) n += weight(i) >= floor ? 1 : 0;
    __shared__ int heavy;
    const int all = cub::BlockReduce<int, kThreads>(sh.tmp.count).Sum(n);
    if (threadIdx.x == 0) heavy = all;
    __syncthreads();
    kept = min(kept, max(heavy, 1));
  }
  // The kept prefix's mass, then the draw inside it.
  Mass keptMass = total;
  bool massKnown = false;
  if (topP < 1) {
    const Mass limit = static_cast<Mass>(static_cast<double>(fmaxf(topP, 0.0f)) * static_cast<double>(total));
    const Cut c = select(vocab, weight, true, min(limit, total - 1), sh);
    // Where top-p is the binding filter its cut ends the kept prefix, so the prefix's mass is
    // known without another selection (four passes over the row).
    if (c.above + c.ties <= kept) {
      kept = c.above + c.ties;
      keptMass = prefixMass(c);
      massKnown = true;
    }
  }
  if (!massKnown && kept < vocab) {
    keptMass = prefixMass(select(vocab, weight, false, static_cast<Mass>(kept), sh));
  }
  if (keptMass == 0) keptMass = 1;
  const Mass target = min(static_cast<Mass>(static_cast<double>(u) * static_cast<double>(keptMass)), keptMass - 1);
  const Cut c = select(vocab, weight, true, target, sh);
  return tieId(vocab, weight, c.bits, c.ties, sh);
}

}  // namespace sample_filter
}  // namespace cuda
}  // namespace troupe
