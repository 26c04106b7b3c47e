// Sampling on the GPU, one block per sampled row, following native/sampling.cc: log-softmax
// statistics and the top-N on the raw logits, then the penalties (in place, from a row's list of
// seen tokens or a sequence's count row), then greedy argmax
// or an inverse-CDF draw in token-id order, or (kFiltered) a draw under top-k, top-p and min-p in
// the order of the weights (sample_filter.cuh). Rows of mode kHost are left to the host. The degenerate cases follow
// native/sampling.h: NaN logits count as -Inf (rewritten in place first), +Inf logits share the
// mass, temperature +Inf (invT 0) is uniform over the logits above -Inf, and a row with nothing
// above -Inf gives token 0. Temperatures below kGreedyTemperature never get here (kGreedy).
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "cuda/kernels.h"
#include "cuda/sample_filter.cuh"

namespace troupe {
namespace cuda {

namespace {

struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

constexpr int kThreads = 1024;

struct Best {
  float v;
  int i;
};

// Descending value, ascending id on ties, as ByValueDesc in sampling.cc.
__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
  return v > bv || (v == bv && i < bi) || (bi < 0 && !(v != v));
}

struct BestOp {
  __device__ __forceinline__ Best operator()(const Best& a, const Best& b) const {
    if (b.i < 0) return a;
    if (a.i < 0) return b;
    return better(b.v, b.i, a.v, a.i) ? b : a;
  }
};

// The top-N's candidates a row keeps in shared memory (a row of random logits has a few more than N).
constexpr int kCandidates = kThreads;
static_assert(kMaxTopN <= 2 * kThreads / 32, "the top-N's floor: the N-th of the warps' two largest logits");

// A logit and its id as one key whose descending order is the top-N's: value descending, then id
// ascending (-0 taken as +0, which compare equal).
__device__ __forceinline__ unsigned long long orderKey(float v, int i) {
  uint32_t u = __float_as_uint(v == 0.0f ? 0.0f : v);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return static_cast<unsigned long long>(u) << 32 | (0xffffffffu - static_cast<uint32_t>(i));
}
__device__ __forceinline__ float keyValue(unsigned long long k) {
  const uint32_t u = static_cast<uint32_t>(k >> 32);
  return __uint_as_float((u & 0x80000000u) ? (u & 0x7fffffffu) : ~u);
}
__device__ __forceinline__ int keyId(unsigned long long k) {
  return static_cast<int>(0xffffffffu - static_cast<uint32_t>(k));
}

// Log-softmax of a raw logit v (no NaN) given the row's max m and logSum: log(sum exp(x - m))
// for a finite m, log(count of +Inf logits) for m = +Inf.
__device__ __forceinline__ float logprobOf(float v, float m, float logSum) {
  if (m == INFINITY) return v == INFINITY ? -logSum : -INFINITY;
  if (m == -INFINITY) return -INFINITY;
  return (v - m) - logSum;
}

// Row r's values (SampleInputs).
__device__ __forceinline__ SampleRow rowOf(const SampleInputs& in, int r) {
  if (!in.step) return in.rows[r];
  const SampleStep st = in.step[r];
  SampleRow p = in.table[st.slot];
  p.u = st.u, p.mode = st.mode, p.penStart = st.penStart, p.penEnd = st.penEnd;
  return p;
}

// A logit after the penalties for count c (SampleInputs::counts), in the order native/sampling.cc
// takes them; the same arithmetic as the penStart..penEnd path below.
__device__ __forceinline__ float penalized(float l, int32_t c, const SampleRow& p) {
  if (c == 0) return l;
  const int gen = c >> 1;
  if (p.repetition != 1.0f) l = l > 0 ? l / p.repetition : l * p.repetition;
  l -= p.frequency * static_cast<float>(gen) + (gen > 0 ? p.presence : 0.0f);
  return l != l ? -INFINITY : l;
}

// Unnormalized probability of a penalized logit x (no NaN) given the row's max mp and 1 / T.
// exp((x - mp) * invT) would be NaN for the cases handled first (Inf - Inf, -Inf * 0).
__device__ __forceinline__ float weight(float x, float mp, float invT) {
  if (mp == -INFINITY) return 0.0f;
  if (mp == INFINITY) return x == INFINITY ? 1.0f : 0.0f;
  if (invT == 0.0f) return x > -INFINITY ? 1.0f : 0.0f;
  return __expf((x - mp) * invT);
}

// kTop: the row's top-N logprobs are asked for (topN > 0). Without them the kernel holds none of
// their code: with it compiled in, a row without a top-N took 37 us against 32.
template <bool kTop>
__global__ void __launch_bounds__(kThreads, 1)
    sampleKernel(float* logits, int vocab, SampleInputs params, const int32_t* penTokens, const int32_t* penCounts,
                 float* penOrig, int topN, int32_t* outTokens, float* outLogprobs, int32_t* topIds, float* topValues) {
  const int r = blockIdx.x;
  const SampleRow p = rowOf(params, r);
  if (p.mode == kHost) return;
  float* x = logits + static_cast<size_t>(r) * vocab;
  // A sequence's counts on the device, and where its counted logits keep their raw values.
  int32_t* counts = p.countRow >= 0 ? params.counts + static_cast<size_t>(p.countRow) * vocab : nullptr;
  float* orig = counts ? params.orig + static_cast<size_t>(r) * vocab : nullptr;
  using FloatReduce = cub::BlockReduce<float, kThreads>;
  using BestReduce = cub::BlockReduce<Best, kThreads>;
  using Scan = cub::BlockScan<double, kThreads>;
  __shared__ union {
    typename FloatReduce::TempStorage f;
    typename BestReduce::TempStorage b;
    typename Scan::TempStorage s;
  } tmp;
  __shared__ float sf;
  __shared__ Best sb;
  __shared__ int chosen;

  // One pass: NaN rewritten, the raw maximum, and the raw argmax, which is the greedy token of a
  // row without penalties. One block reads its row from L2 in every pass, about 20 us a pass for a
  // 128k vocabulary on an H200, so the passes are what a sampled row costs (a greedy row took 51 us
  // in four, 41 in these two).
  float m = -INFINITY, second = -INFINITY;  // this thread's two largest logits (the second for kTop)
  Best best{-INFINITY, -1};
#pragma unroll 4
  for (int i = threadIdx.x; i < vocab; i += kThreads) {
    float v = x[i];
    if (v != v) x[i] = v = -INFINITY;
    if constexpr (kTop) second = fmaxf(second, fminf(m, v));
    m = fmaxf(m, v);
    if (better(v, i, best.v, best.i)) best = Best{v, i};
  }
  const bool hasPenalty = p.penStart < p.penEnd || counts;
  if (p.mode == kGreedy && !hasPenalty) {
    best = BestReduce(tmp.b).Reduce(best, BestOp());
    if (threadIdx.x == 0) chosen = best.i < 0 ? 0 : best.i;
    __syncthreads();
  }

  // The top-N's candidates: every logit at or above a floor at or below the row's N-th largest,
  // taken in the pass below and placed once, where a pass over the row for each of the N took
  // about 20 us apiece. The floor is the N-th largest of the warps' two largest logits: those are
  // 64 distinct logits of the row (or -Inf, which every logit passes).
  __shared__ unsigned long long cand[kTop ? kCandidates : 1];
  __shared__ float warpTop[2 * kThreads / 32];
  __shared__ int candCount;
  __shared__ float floorValue;
  if constexpr (kTop) {
    float a = m, b = second;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const float oa = __shfl_xor_sync(0xffffffffu, a, off), ob = __shfl_xor_sync(0xffffffffu, b, off);
      b = fmaxf(fminf(a, oa), fmaxf(b, ob));
      a = fmaxf(a, oa);
    }
    const int w = threadIdx.x / 32;
    if (threadIdx.x % 32 == 0) warpTop[2 * w] = a, warpTop[2 * w + 1] = b;
    if (threadIdx.x == 0) candCount = 0;
    __syncthreads();
    if (threadIdx.x < 2 * kThreads / 32) {
      const float v = warpTop[threadIdx.x];
      int rank = 0;
      for (int j = 0; j < 2 * kThreads / 32; ++j) {
        const float o = warpTop[j];
        rank += o > v || (o == v && j < static_cast<int>(threadIdx.x));
      }
      if (rank == topN - 1) floorValue = v;
    }
    __syncthreads();
  }

  // logZ of the raw logits.
  m = FloatReduce(tmp.f).Reduce(m, MaxOp());
  if (threadIdx.x == 0) sf = m;
  __syncthreads();
  const float maxRaw = sf;
  float sum = 0;
#pragma unroll 4
  for (int i = threadIdx.x; i < vocab; i += kThreads) {
    const float v = x[i];
    sum += maxRaw == INFINITY ? (v == INFINITY ? 1.0f : 0.0f) : maxRaw == -INFINITY ? 0.0f : __expf(v - maxRaw);
    if constexpr (kTop) {
      if (v >= floorValue) {
        const int at = atomicAdd(&candCount, 1);
        if (at < kCandidates) cand[at] = orderKey(v, i);
      }
    }
  }
  __syncthreads();
  sum = FloatReduce(tmp.f).Sum(sum);
  if (threadIdx.x == 0) sf = logf(sum);
  __syncthreads();
  const float logSum = sf;

  if constexpr (kTop) {
    if (candCount <= kCandidates) {
      // A candidate's place is the count of those before it (keys are distinct: they hold the id).
      const int count = candCount;
      if (static_cast<int>(threadIdx.x) < count) {
        const unsigned long long key = cand[threadIdx.x];
        int rank = 0;
        for (int j = 0; j < count; ++j) rank += cand[j] > key;
        if (rank < topN) {
          topIds[static_cast<size_t>(r) * topN + rank] = keyId(key);
          topValues[static_cast<size_t>(r) * topN + rank] = logprobOf(keyValue(key), maxRaw, logSum);
        }
      }
      __syncthreads();
    }
    // More candidates than fit (a row of many equal logits): each pass takes the best entry after
    // the previous one in the total order.
    float pv = INFINITY;
    int pi = -1;
    for (int n = 0; n < (candCount > kCandidates ? topN : 0); ++n) {
      Best b{-INFINITY, -1};
      for (int i = threadIdx.x; i < vocab; i += kThreads) {
        const float v = x[i];
        const bool after = v < pv || (v == pv && i > pi);
        if (after && better(v, i, b.v, b.i)) b = Best{v, i};
      }
      __syncthreads();
      b = BestReduce(tmp.b).Reduce(b, BestOp());
      if (threadIdx.x == 0) sb = b;
      __syncthreads();
      pv = sb.v;
      pi = sb.i;
      if (threadIdx.x == 0) {
        topIds[static_cast<size_t>(r) * topN + n] = pi;
        topValues[static_cast<size_t>(r) * topN + n] = logprobOf(pv, maxRaw, logSum);
      }
    }
  }

  // Penalties from a count row: one pass over the counts, 16 bytes a load and several loads in
  // flight (the row comes from memory, not L2: read a count a load in each later pass, as that
  // pass's logits are, a greedy step of 32 such rows took 0.2 ms longer than from token lists).
  if (counts) {
    const auto take = [&](int i, int32_t c) {
      if (c == 0) return;
      orig[i] = x[i];
      x[i] = penalized(x[i], c, p);
    };
    if ((vocab & 3) == 0) {
      const int4* c4 = reinterpret_cast<const int4*>(counts);
#pragma unroll 8
      for (int q = threadIdx.x; q < vocab / 4; q += kThreads) {
        const int4 c = c4[q];
        if ((c.x | c.y | c.z | c.w) == 0) continue;
        take(4 * q, c.x), take(4 * q + 1, c.y), take(4 * q + 2, c.z), take(4 * q + 3, c.w);
      }
    } else {
#pragma unroll 8
      for (int i = threadIdx.x; i < vocab; i += kThreads) take(i, counts[i]);
    }
  }
  // Penalties: each unique seen token once (the host deduplicated them).
  for (int e = p.penStart + threadIdx.x; e < p.penEnd; e += kThreads) {
    const int tok = penTokens[e];
    const int gen = penCounts[e];
    float l = x[tok];
    penOrig[e] = l;
    if (p.repetition != 1.0f) l = l > 0 ? l / p.repetition : l * p.repetition;
    l -= p.frequency * static_cast<float>(gen) + (gen > 0 ? p.presence : 0.0f);
    x[tok] = l != l ? -INFINITY : l;
  }
  __syncthreads();

  if (p.mode == kGreedy) {
    if (hasPenalty) {  // otherwise chosen is the raw argmax, above
      Best b{-INFINITY, -1};
      for (int i = threadIdx.x; i < vocab; i += kThreads) {
        const float v = x[i];
        if (better(v, i, b.v, b.i)) b = Best{v, i};
      }
      b = BestReduce(tmp.b).Reduce(b, BestOp());
      if (threadIdx.x == 0) chosen = b.i < 0 ? 0 : b.i;
    }
  } else {
    float mp = -INFINITY;
    for (int i = threadIdx.x; i < vocab; i += kThreads) mp = fmaxf(mp, x[i]);
    mp = FloatReduce(tmp.f).Reduce(mp, MaxOp());
    if (threadIdx.x == 0) sf = mp;
    __syncthreads();
    mp = sf;
    const float invT = p.temperature == INFINITY ? 0.0f : 1.0f / p.temperature;
    if (p.mode == kFiltered) {
      __shared__ sample_filter::Shared<kThreads> fsh;
      const int tok = sample_filter::draw(
          vocab, [&](int i) { return weight(x[i], mp, invT); }, p.topK, p.topP, p.minP, p.u, fsh);
      if (threadIdx.x == 0) chosen = tok;
    } else {
      // Each thread owns a contiguous chunk, so a scan of chunk sums walks the ids in order.
      const int chunk = (vocab + kThreads - 1) / kThreads;
      const int lo = min(vocab, threadIdx.x * chunk), hi = min(vocab, lo + chunk);
      double local = 0;
      for (int i = lo; i < hi; ++i) local += weight(x[i], mp, invT);
      double before, total;
      __syncthreads();
      Scan(tmp.s).ExclusiveSum(local, before, total);
      const double target = static_cast<double>(p.u) * total;
      if (threadIdx.x == 0) chosen = -1;
      __syncthreads();
      if (local > 0 && target >= before && target < before + local) {
        double cum = before;
        int tok = -1, last = lo;
        for (int i = lo; i < hi; ++i) {
          const float w = weight(x[i], mp, invT);
          if (w > 0) last = i;
          cum += w;
          if (cum > target) {
            tok = i;
            break;
          }
        }
        chosen = tok >= 0 ? tok : last;  // rounding: the chunk's last token with mass
      }
      __syncthreads();
      // Read by every thread before any writes it, so the barrier below is reached by all or none.
      const bool missed = chosen < 0;
      __syncthreads();
      if (missed) {  // rounding put the target past the end: the last token with mass
        if (local > 0) {
          int last = hi - 1;
          while (last > lo && !(weight(x[last], mp, invT) > 0)) --last;
          atomicMax(&chosen, last);
        }
        __syncthreads();
        if (threadIdx.x == 0 && chosen < 0) chosen = 0;  // no token has mass
      }
    }
  }
  __syncthreads();
  const int tok = chosen;
  // The logprob is that of the raw logit; the penalties may have changed the stored one.
  __shared__ float raw;
  if (threadIdx.x == 0) raw = counts && counts[tok] != 0 ? orig[tok] : x[tok];
  __syncthreads();
  for (int e = p.penStart + threadIdx.x; e < p.penEnd; e += kThreads)
    if (penTokens[e] == tok) raw = penOrig[e];
  __syncthreads();
  if (threadIdx.x == 0) {
    outTokens[r] = tok;
    outLogprobs[r] = logprobOf(raw, maxRaw, logSum);
    // Counted for the next step.
    if (counts) counts[tok] = (counts[tok] | 1) + 2;
  }
}

// Greedy rows without penalties or a top-N (sampleGreedyRows): each row's logits split over
// greedyParts(rows, vocab) blocks, each taking its part's argmax and the softmax's (max, sum) in one pass
// with the sum rescaled as the max moves; a warp a row then combines the parts.
constexpr int kGreedyThreads = 256;

// A part's statistics: the max m, the sum of exp(x - m) (for m = +Inf the count of +Inf logits),
// and the argmax (value descending, id ascending).
struct SoftmaxPart {
  float m, s;
  Best best;
};

// Adds logit v (no NaN) to (m, s). Equal values add exactly 1, so that m = +Inf counts +Inf logits
// without Inf - Inf.
__device__ __forceinline__ void addLogit(float& m, float& s, float v) {
  if (v > m) {
    s = (m == -INFINITY ? 0.0f : s * __expf(m - v)) + 1.0f;
    m = v;
  } else if (v == m) {
    s += 1.0f;
  } else if (v > -INFINITY) {
    s += __expf(v - m);
  }
}

__device__ __forceinline__ SoftmaxPart combineParts(const SoftmaxPart& a, const SoftmaxPart& b) {
  const float m = fmaxf(a.m, b.m);
  float s = 0.0f;
  if (m > -INFINITY) {
    s = (a.m == m ? a.s : a.s * __expf(a.m - m)) + (b.m == m ? b.s : b.s * __expf(b.m - m));
  }
  return SoftmaxPart{m, s, BestOp()(a.best, b.best)};
}

struct CombinePartsOp {
  __device__ __forceinline__ SoftmaxPart operator()(const SoftmaxPart& a, const SoftmaxPart& b) const {
    return combineParts(a, b);
  }
};

__global__ void __launch_bounds__(kGreedyThreads)
    greedyPartKernel(float* logits, int vocab, SampleInputs params, SoftmaxPart* parts) {
  const int r = blockIdx.y, part = blockIdx.x, count = gridDim.x;
  if (rowOf(params, r).mode == kHost) return;
  float* x = logits + static_cast<size_t>(r) * vocab;
  // Parts of whole 16-byte groups, so that each starts aligned where the row is.
  const int per = ((vocab + count - 1) / count + 3) & ~3;
  const int lo = min(vocab, part * per), hi = min(vocab, lo + per);
  float m = -INFINITY, s = 0.0f;
  Best best{-INFINITY, -1};
#pragma unroll 4
  for (int i = lo + threadIdx.x; i < hi; i += kGreedyThreads) {
    float v = x[i];
    if (v != v) x[i] = v = -INFINITY;  // as sampleKernel: NaN counts as -Inf, in place
    addLogit(m, s, v);
    if (better(v, i, best.v, best.i)) best = Best{v, i};
  }
  using Reduce = cub::BlockReduce<SoftmaxPart, kGreedyThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const SoftmaxPart total = Reduce(tmp).Reduce(SoftmaxPart{m, s, best}, CombinePartsOp());
  if (threadIdx.x == 0) parts[static_cast<size_t>(r) * count + part] = total;
}

__global__ void greedyCombineKernel(const float* logits, int vocab, SampleInputs params, const SoftmaxPart* parts,
                                    int count, int32_t* outTokens, float* outLogprobs) {
  const int r = blockIdx.x, lane = threadIdx.x;
  if (rowOf(params, r).mode == kHost) return;
  SoftmaxPart p{-INFINITY, 0.0f, Best{-INFINITY, -1}};
  for (int j = lane; j < count; j += 32) p = combineParts(p, parts[static_cast<size_t>(r) * count + j]);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    SoftmaxPart o;
    o.m = __shfl_xor_sync(0xffffffffu, p.m, off);
    o.s = __shfl_xor_sync(0xffffffffu, p.s, off);
    o.best.v = __shfl_xor_sync(0xffffffffu, p.best.v, off);
    o.best.i = __shfl_xor_sync(0xffffffffu, p.best.i, off);
    p = combineParts(p, o);
  }
  if (lane == 0) {
    const int tok = p.best.i < 0 ? 0 : p.best.i;
    outTokens[r] = tok;
    outLogprobs[r] = logprobOf(logits[static_cast<size_t>(r) * vocab + tok], p.m, logf(p.s));
  }
}

// Blocks a row: enough for about two blocks an SM of an H100 or H200 at small batches, and parts
// of at least 4096 logits.
int greedyParts(int rows, int vocab) { return max(1, min(min(32, 256 / max(rows, 1)), vocab / 4096)); }

__global__ void scatterRowsKernel(SampleRow* table, const int32_t* slots, const SampleRow* rows, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) table[slots[i]] = rows[i];
}

__global__ void setCountsKernel(int32_t* counts, int vocab, const int3* entries, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int3 e = entries[i];
  int32_t& c = counts[static_cast<size_t>(e.x) * vocab + e.y];
  c = e.z >= 0 ? e.z : (c | 1) + 2;
}

}  // namespace

void sampleRows(float* logits, int rows, int vocab, const SampleInputs& params, const int32_t* penTokens,
                const int32_t* penCounts, float* penOrig, int topN, int32_t* outTokens, float* outLogprobs,
                int32_t* topIds, float* topValues, cudaStream_t s) {
  if (topN > 0)
    sampleKernel<true><<<rows, kThreads, 0, s>>>(logits, vocab, params, penTokens, penCounts, penOrig, topN, outTokens,
                                                 outLogprobs, topIds, topValues);
  else
    sampleKernel<false><<<rows, kThreads, 0, s>>>(logits, vocab, params, penTokens, penCounts, penOrig, 0, outTokens,
                                                  outLogprobs, topIds, topValues);
}

size_t greedyPartialsBytes(int rows, int vocab) {
  return static_cast<size_t>(rows) * greedyParts(rows, vocab) * sizeof(SoftmaxPart);
}

void sampleGreedyRows(float* logits, int rows, int vocab, const SampleInputs& params, void* partials,
                      int32_t* outTokens, float* outLogprobs, cudaStream_t s) {
  if (rows == 0) return;
  const int count = greedyParts(rows, vocab);
  SoftmaxPart* parts = static_cast<SoftmaxPart*>(partials);
  greedyPartKernel<<<dim3(count, rows), kGreedyThreads, 0, s>>>(logits, vocab, params, parts);
  greedyCombineKernel<<<rows, 32, 0, s>>>(logits, vocab, params, parts, count, outTokens, outLogprobs);
}

void scatterSampleRows(SampleRow* table, const int32_t* slots, const SampleRow* rows, int n, cudaStream_t s) {
  if (n > 0) scatterRowsKernel<<<(n + 127) / 128, 128, 0, s>>>(table, slots, rows, n);
}

void setTokenCounts(int32_t* counts, int vocab, const int3* entries, int n, cudaStream_t s) {
  if (n > 0) setCountsKernel<<<(n + 255) / 256, 256, 0, s>>>(counts, vocab, entries, n);
}

}  // namespace cuda
}  // namespace troupe
