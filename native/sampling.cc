// Filtering follows SGLang's top_k_top_p_min_p_sampling_from_probs_torch: probabilities are
// sorted once and the three masks are all taken from the unfiltered sorted probabilities.
// sampling.h states the rules for degenerate logits and parameters.
#include "sampling.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "cpu/simd.h"

namespace troupe {

namespace {

// The vocabulary-wide reductions are most of a decode step's sampling time at a 128k vocabulary.
// Callers pass rows without NaN.
float maxOf(const float* x, int n) {
  simd::vf m = simd::splat(-INFINITY);
  int i = 0;
  for (; i + simd::kLanes <= n; i += simd::kLanes) m = simd::vmax(m, simd::load(x + i));
  float r = simd::hmax(m);
  for (; i < n; ++i) r = std::max(r, x[i]);
  return r;
}

// sum of exp((x[i] - shift) * scale); the terms go to out when it is not null.
double sumExp(const float* x, int n, float shift, float scale, float* out) {
  simd::vf acc = simd::zero();
  int i = 0;
  for (; i + simd::kLanes <= n; i += simd::kLanes) {
    const simd::vf e = simd::exp(simd::mul(simd::sub(simd::load(x + i), simd::splat(shift)), scale));
    if (out) simd::store(out + i, e);
    acc = simd::add(acc, e);
  }
  double sum = simd::hsum(acc);
  for (; i < n; ++i) {
    const float e = std::exp((x[i] - shift) * scale);
    if (out) out[i] = e;
    sum += e;
  }
  return sum;
}

// 0 * x is NaN exactly when x is +/-Inf or NaN, and a sum holding a NaN stays NaN: one vector
// pass, so the finite rows of a healthy model are used in place without a copy.
bool allFinite(const float* x, int n) {
  simd::vf acc = simd::zero();
  int i = 0;
  for (; i + simd::kLanes <= n; i += simd::kLanes) acc = simd::add(acc, simd::mul(simd::load(x + i), 0.0f));
  float r = simd::hsum(acc);
  for (; i < n; ++i) r += x[i] * 0.0f;
  return !std::isnan(r);
}

void nanToMinusInf(float& x) {
  if (std::isnan(x)) x = -INFINITY;
}

// Log-softmax of a row without NaN, in double. The formula x - max - log(sum exp(x - max)) is
// NaN where a row has +Inf logits (they share all the mass: -log(count) each, -Inf for the
// rest) or only -Inf ones (no token has mass: -Inf everywhere).
class LogSoftmax {
 public:
  LogSoftmax(const float* x, int n) : max_(maxOf(x, n)) {
    if (max_ == INFINITY) {
      logSum_ = std::log(static_cast<double>(std::count(x, x + n, INFINITY)));
    } else if (max_ > -INFINITY) {
      logSum_ = std::log(sumExp(x, n, max_, 1.0f, nullptr));
    }
  }

  float operator()(float v) const {
    if (max_ == INFINITY) return v == INFINITY ? static_cast<float>(-logSum_) : -INFINITY;
    if (max_ == -INFINITY) return -INFINITY;
    const double d = static_cast<double>(v) - max_ - logSum_;
    return d < -FLT_MAX ? -INFINITY : static_cast<float>(d);  // below float's range: no mass
  }

 private:
  float max_;
  double logSum_ = 0;
};

// Unnormalized probabilities w of a row without NaN at temperature t >= kGreedyTemperature (so
// 1 / t <= 1e6, and 0 only for t = +Inf); returns their sum, 0 only when every logit is -Inf.
double weights(const float* x, int n, float t, float* w) {
  const float m = maxOf(x, n);
  if (m == -INFINITY) return 0;
  if (m == INFINITY || t == INFINITY) {
    // exp((x - m) / t) would be NaN here (Inf - Inf, -Inf * 0). +Inf logits take all the mass
    // equally; at infinite temperature every logit above -Inf weighs the same.
    double sum = 0;
    for (int i = 0; i < n; ++i) {
      w[i] = (m == INFINITY ? x[i] == INFINITY : x[i] > -INFINITY) ? 1.0f : 0.0f;
      sum += w[i];
    }
    return sum;
  }
  return sumExp(x, n, m, 1.0f / t, w);
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Lowest id on ties; a row without NaN, so all -Inf gives 0.
int argmax(const float* logits, int vocab) {
  int best = 0;
  for (int i = 1; i < vocab; ++i)
    if (logits[i] > logits[best]) best = i;
  return best;
}

// Descending by value, ascending id on ties: one total order (the values hold no NaN), so
// results never depend on sort stability.
struct ByValueDesc {
  const float* v;
  bool operator()(int a, int b) const { return v[a] > v[b] || (v[a] == v[b] && a < b); }
};

// The first of ids[0, n) where the running sum of probs passes target. Rounding can leave the
// target past the end: then the last one with mass, never a token that has none.
template <class Ids>
int inverseCdf(const float* probs, const Ids& ids, size_t n, double target) {
  double cum = 0;
  int last = ids[0];
  for (size_t k = 0; k < n; ++k) {
    const float q = probs[ids[k]];
    if (q <= 0) continue;
    last = ids[k];
    cum += q;
    if (cum > target) return ids[k];
  }
  return last;
}

struct Iota {
  int operator[](size_t k) const { return static_cast<int>(k); }
};

// The token to emit from a penalized row without NaN.
int choose(const float* logits, int vocab, const SamplingParams& p) {
  const int topK = p.topK > 0 && p.topK < vocab ? p.topK : 0;
  if (!(p.temperature >= kGreedyTemperature) || topK == 1) return argmax(logits, vocab);
  std::vector<float> probs(vocab);
  const double z = weights(logits, vocab, p.temperature, probs.data());
  if (!(z > 0)) return 0;  // every logit is -Inf: no distribution to draw from
  const float invZ = static_cast<float>(1.0 / z);
  for (int i = 0; i < vocab; ++i) probs[i] *= invZ;
  const double u = uniformDraw(p.seed, p.draws);
  // NaN filters are off; values beyond a filter's range act as its nearest meaningful one.
  const float topP = p.topP < 1 ? p.topP : 1.0f;
  const float minP = p.minP > 0 ? std::min(p.minP, 1.0f) : 0.0f;
  if (topK == 0 && topP >= 1 && minP == 0) return inverseCdf(probs.data(), Iota{}, vocab, u);

  // The kept tokens are a prefix of the descending order; find enough of that prefix.
  std::vector<int> cand;
  const ByValueDesc order{probs.data()};
  if (topK > 0) {
    cand.resize(vocab);
    for (int i = 0; i < vocab; ++i) cand[i] = i;
    std::partial_sort(cand.begin(), cand.begin() + topK, cand.end(), order);
    cand.resize(topK);
  } else {
    // Take every token above a threshold; if they already hold more than topP of the mass the
    // top-p prefix lies within them, else lower the threshold. The most likely token is always
    // taken (threshold <= pmax, as minP <= 1), so cand is never empty.
    float pmax = 0;
    for (float q : probs) pmax = std::max(pmax, q);
    float threshold = minP > 0 ? pmax * minP : pmax * 1e-3f;
    for (;;) {
      cand.clear();
      double mass = 0;
      for (int i = 0; i < vocab; ++i)
        if (probs[i] >= threshold) {
          cand.push_back(i);
          mass += probs[i];
        }
      if (minP > 0 || mass > topP || threshold == 0) break;
      threshold = threshold > 1e-30f ? threshold * 1e-3f : 0.0f;
    }
    std::sort(cand.begin(), cand.end(), order);
  }
  const float minKeep = probs[cand[0]] * minP;
  double before = 0;
  size_t n = 0;
  for (; n < cand.size(); ++n) {
    const float q = probs[cand[n]];
    if (n > 0 && (before > topP || q < minKeep)) break;
    before += q;
  }
  return inverseCdf(probs.data(), cand, n, u * before);
}

}  // namespace

double uniformDraw(uint32_t seed, uint32_t draws) {
  const uint64_t key = (static_cast<uint64_t>(seed) << 32) | draws;
  const uint64_t bits = splitmix64(splitmix64(key) ^ 0x5eed5eed5eed5eedull);
  return static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0);
}

void applyPenalties(float* logits, int vocab, const Penalties& p) {
  if (!p.active()) return;
  if (p.uniqueCount >= 0) {
    for (int k = 0; k < p.uniqueCount; ++k) {
      const int32_t t = p.unique[k];
      if (t < 0 || t >= vocab) continue;
      float& l = logits[t];
      if (p.repetition != 1) l = l > 0 ? l / p.repetition : l * p.repetition;
      const int32_t n = p.generatedCounts[k];
      if (n > 0) l -= p.frequency * static_cast<float>(n) + p.presence;
    }
    return;
  }
  if (p.count <= 0) return;
  const int promptLen = std::clamp(p.promptLen, 0, p.count);
  // Sparse: a sequence has seen few distinct tokens next to a vocabulary of 128k.
  std::vector<int32_t> seen(p.tokens, p.tokens + p.count);
  std::vector<int32_t> generated(p.tokens + promptLen, p.tokens + p.count);
  std::sort(seen.begin(), seen.end());
  seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
  std::sort(generated.begin(), generated.end());
  if (p.repetition != 1) {
    for (const int32_t t : seen) {
      if (t < 0 || t >= vocab) continue;
      float& l = logits[t];
      l = l > 0 ? l / p.repetition : l * p.repetition;
    }
  }
  if (p.frequency != 0 || p.presence != 0) {
    for (size_t i = 0; i < generated.size();) {
      size_t j = i;
      while (j < generated.size() && generated[j] == generated[i]) ++j;
      const int32_t t = generated[i];
      if (t >= 0 && t < vocab) logits[t] -= p.frequency * static_cast<float>(j - i) + p.presence;
      i = j;
    }
  }
}

Sampled sampleToken(const float* logits, int vocab, const SamplingParams& p, int topN, int32_t* topIds,
                    float* topValues, const Penalties* penalties) {
  if (vocab < 1) throw std::invalid_argument("sampleToken: the vocabulary is empty");
  // NaN counts as -Inf; only rows that hold a non-finite value pay for the copy.
  std::vector<float> cleaned;
  const float* raw = logits;
  if (!allFinite(logits, vocab)) {
    cleaned.assign(logits, logits + vocab);
    for (float& x : cleaned) nanToMinusInf(x);
    raw = cleaned.data();
  }
  const LogSoftmax logprob(raw, vocab);

  topN = std::clamp(topN, 0, vocab);
  if (topN > 0) {
    std::vector<int> ids(vocab);
    for (int i = 0; i < vocab; ++i) ids[i] = i;
    std::partial_sort(ids.begin(), ids.begin() + topN, ids.end(), ByValueDesc{raw});
    for (int i = 0; i < topN; ++i) {
      topIds[i] = ids[i];
      topValues[i] = logprob(raw[ids[i]]);
    }
  }

  std::vector<float> penalized;
  const float* x = raw;
  if (penalties && penalties->active() && penalties->seenCount() > 0) {
    penalized.assign(raw, raw + vocab);
    applyPenalties(penalized.data(), vocab, *penalties);
    // Only the penalized entries changed; a NaN penalty value makes them NaN.
    const int32_t* seen = penalties->seen();
    for (int k = 0; k < penalties->seenCount(); ++k) {
      const int32_t t = seen[k];
      if (t >= 0 && t < vocab) nanToMinusInf(penalized[t]);
    }
    x = penalized.data();
  }
  const int token = choose(x, vocab, p);
  return Sampled{token, logprob(raw[token])};
}

}  // namespace troupe
