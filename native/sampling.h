// Token selection from one row of logits: greedy or seeded sampling with temperature, top-k,
// top-p and min-p after frequency, presence and repetition penalties, plus the log-softmax values
// the API reports.
//
// sampleToken is total: for any logits (NaN, +/-Inf, huge or denormal values) and any parameter
// values it returns a token in [0, vocab) and logprobs that are never NaN. The rules, following
// SGLang where it has one:
// - A NaN logit counts as -Inf: the model gave that token no usable score.
// - temperature below 1e-6 (SGLang's _SAMPLING_EPS), negative or NaN means greedy, as does top_k 1.
//   temperature +Inf is uniform over the tokens whose logit is above -Inf.
// - Logits at +Inf (in the model's output, or made by a penalty: a positive logit divided by a
//   repetition penalty of 1e-45 overflows) share all the mass equally; every other token gets none.
// - When no logit is above -Inf there is no distribution: the token is 0, at every temperature.
// - top_k <= 0 or >= vocab is off; top_p and min_p always keep the most likely token; top_p
//   outside (0, 1) and min_p outside (0, 1] act as their nearest meaningful value (NaN = off).
#pragma once

#include <cstdint>

namespace troupe {

// Temperatures below this are greedy (SGLang's _SAMPLING_EPS).
constexpr float kGreedyTemperature = 1e-6f;

struct SamplingParams {
  float temperature;  // < kGreedyTemperature = greedy
  int topK;           // <= 0 or >= vocab = off
  float topP;         // 1 = off
  float minP;         // 0 = off
  uint32_t seed;
  uint32_t draws;  // tokens this sequence sampled before: the random stream's position
};

// Penalties on the tokens a sequence has seen: tokens[0, promptLen) is its prompt, the rest what it
// generated. Applied as vLLM does, repetition first (HF: divide positive logits by it, multiply
// negative ones, for prompt and generated tokens), then frequency (minus f per occurrence in the
// generated tokens) and presence (minus p once for any generated token).
struct Penalties {
  float frequency = 0;   // 0 = off
  float presence = 0;    // 0 = off
  float repetition = 1;  // 1 = off
  const int32_t* tokens = nullptr;
  int count = 0;
  int promptLen = 0;
  // The same tokens counted, when the caller keeps them so (the engine's sequence table): each
  // distinct token once, with how often it was generated (0: the prompt only). uniqueCount < 0:
  // not given, count from `tokens`.
  const int32_t* unique = nullptr;
  const int32_t* generatedCounts = nullptr;
  int uniqueCount = -1;
  bool active() const { return frequency != 0 || presence != 0 || repetition != 1; }
  // The tokens a penalty may change: the counted distinct ones, or the whole list.
  const int32_t* seen() const { return uniqueCount >= 0 ? unique : tokens; }
  int seenCount() const { return uniqueCount >= 0 ? uniqueCount : count; }
};

// Adjusts logits in place by the penalties. Token ids outside [0, vocab) are ignored and promptLen
// is clamped to [0, count].
void applyPenalties(float* logits, int vocab, const Penalties& p);

struct Sampled {
  int32_t token;
  // Raw log-softmax of the chosen token (before penalties and temperature): finite, or -Inf
  // when the raw logits give it no mass. Never NaN.
  float logprob;
};

// topIds/topValues receive the min(topN, vocab) highest raw log-softmax entries (ties: lower id
// first; NaN logits rank as -Inf). With penalties the token is chosen from the penalized logits,
// while the reported logprobs stay those of the raw logits. Throws std::invalid_argument only
// for vocab < 1.
Sampled sampleToken(const float* logits, int vocab, const SamplingParams& p, int topN, int32_t* topIds,
                    float* topValues, const Penalties* penalties = nullptr);

// The uniform draw in [0, 1) for (seed, draws): a counter-based generator, so a sequence's
// tokens depend on its own seed and count only, never on the batch it runs in.
double uniformDraw(uint32_t seed, uint32_t draws);

}  // namespace troupe
