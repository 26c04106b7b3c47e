// Token selection from one row of logits: greedy or seeded sampling with temperature, top-k,
// top-p and min-p after frequency, presence and repetition penalties, plus the log-softmax values
// the API reports.
#pragma once

#include <cstdint>

namespace troupe {

struct SamplingParams {
  float temperature;  // 0 = greedy
  int topK;           // <= 0 = off
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
  bool active() const { return frequency != 0 || presence != 0 || repetition != 1; }
};

// Adjusts logits in place by the penalties.
void applyPenalties(float* logits, int vocab, const Penalties& p);

struct Sampled {
  int32_t token;
  float logprob;  // raw log-softmax of the chosen token (before temperature)
};

// topIds/topValues receive the topN highest raw log-softmax entries (ties: lower id first). With
// penalties the token is chosen from the penalized logits, while the reported logprobs stay those
// of the raw logits.
Sampled sampleToken(const float* logits, int vocab, const SamplingParams& p, int topN, int32_t* topIds,
                    float* topValues, const Penalties* penalties = nullptr);

// The uniform draw in [0, 1) for (seed, draws): a counter-based generator, so a sequence's
// tokens depend on its own seed and count only, never on the batch it runs in.
double uniformDraw(uint32_t seed, uint32_t draws);

}  // namespace troupe
