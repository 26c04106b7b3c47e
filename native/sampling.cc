// Filtering follows SGLang's top_k_top_p_min_p_sampling_from_probs_torch: probabilities are
// sorted once and the three masks are all taken from the unfiltered sorted probabilities.
#include "sampling.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/simd.h"

namespace troupe {

namespace {

// The vocabulary-wide reductions are most of a decode step's sampling time at a 128k vocabulary.
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

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

int argmax(const float* logits, int vocab) {
  int best = 0;
  for (int i = 1; i < vocab; ++i)
    if (logits[i] > logits[best]) best = i;
  return best;
}

// Descending by value, ascending id on ties: one total order, so results never depend on sort stability.
struct ByValueDesc {
  const float* v;
  bool operator()(int a, int b) const { return v[a] > v[b] || (v[a] == v[b] && a < b); }
};

}  // namespace

double uniformDraw(uint32_t seed, uint32_t draws) {
  const uint64_t key = (static_cast<uint64_t>(seed) << 32) | draws;
  const uint64_t bits = splitmix64(splitmix64(key) ^ 0x5eed5eed5eed5eedull);
  return static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0);
}

void applyPenalties(float* logits, int vocab, const Penalties& p) {
  if (!p.active() || p.count <= 0) return;
  // Sparse: a sequence has seen few distinct tokens next to a vocabulary of 128k.
  std::vector<int32_t> seen(p.tokens, p.tokens + p.count);
  std::vector<int32_t> generated(p.tokens + p.promptLen, p.tokens + p.count);
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

Sampled sampleToken(const float* rawLogits, int vocab, const SamplingParams& p, int topN, int32_t* topIds,
                    float* topValues, const Penalties* penalties) {
  const float maxRaw = maxOf(rawLogits, vocab);
  const double logZ = maxRaw + std::log(sumExp(rawLogits, vocab, maxRaw, 1.0f, nullptr));
  auto logprob = [&](int i) { return static_cast<float>(rawLogits[i] - logZ); };

  std::vector<float> penalized;
  const float* logits = rawLogits;
  if (penalties && penalties->active() && penalties->count > 0) {
    penalized.assign(rawLogits, rawLogits + vocab);
    applyPenalties(penalized.data(), vocab, *penalties);
    logits = penalized.data();
  }
  const float maxLogit = logits == rawLogits ? maxRaw : maxOf(logits, vocab);

  if (topN > 0) {
    std::vector<int> ids(vocab);
    for (int i = 0; i < vocab; ++i) ids[i] = i;
    std::partial_sort(ids.begin(), ids.begin() + topN, ids.end(), ByValueDesc{rawLogits});
    for (int i = 0; i < topN; ++i) {
      topIds[i] = ids[i];
      topValues[i] = logprob(ids[i]);
    }
  }

  int token;
  if (p.temperature <= 0 || p.topK == 1) {
    token = argmax(logits, vocab);
  } else {
    std::vector<float> probs(vocab);
    const double z = sumExp(logits, vocab, maxLogit, 1.0f / p.temperature, probs.data());
    const float invZ = static_cast<float>(1.0 / z);
    for (int i = 0; i < vocab; ++i) probs[i] *= invZ;
    const double u = uniformDraw(p.seed, p.draws);
    const bool filtered = p.topK > 0 || p.topP < 1 || p.minP > 0;
    if (!filtered) {
      const double target = u;
      double cum = 0;
      token = vocab - 1;
      for (int i = 0; i < vocab; ++i) {
        cum += probs[i];
        if (cum > target) {
          token = i;
          break;
        }
      }
    } else {
      // The kept tokens are a prefix of the descending order; find enough of that prefix.
      std::vector<int> cand;
      const ByValueDesc order{probs.data()};
      if (p.topK > 0 && p.topK < vocab) {
        cand.resize(vocab);
        for (int i = 0; i < vocab; ++i) cand[i] = i;
        std::partial_sort(cand.begin(), cand.begin() + p.topK, cand.end(), order);
        cand.resize(p.topK);
      } else {
        // Take every token above a threshold; if they already hold more than topP of the mass the
        // top-p prefix lies within them, else lower the threshold.
        float pmax = 0;
        for (float q : probs) pmax = std::max(pmax, q);
        float threshold = p.minP > 0 ? pmax * p.minP : pmax * 1e-3f;
        for (;;) {
          cand.clear();
          double mass = 0;
          for (int i = 0; i < vocab; ++i)
            if (probs[i] >= threshold) {
              cand.push_back(i);
              mass += probs[i];
            }
          if (p.minP > 0 || mass > p.topP || threshold == 0) break;
          threshold = threshold > 1e-30f ? threshold * 1e-3f : 0.0f;
        }
        std::sort(cand.begin(), cand.end(), order);
      }
      const float minKeep = probs[cand[0]] * p.minP;
      double before = 0, kept = 0;
      size_t n = 0;
      for (; n < cand.size(); ++n) {
        const float q = probs[cand[n]];
        if (n > 0 && (before > p.topP || q < minKeep)) break;
        before += q;
        kept += q;
      }
      const double target = u * kept;
      double cum = 0;
      token = cand[n - 1];
      for (size_t i = 0; i < n; ++i) {
        cum += probs[cand[i]];
        if (cum > target) {
          token = cand[i];
          break;
        }
      }
    }
  }
  return Sampled{token, logprob(token)};
}

}  // namespace troupe
