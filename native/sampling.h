// Token selection from one row of logits: greedy or seeded sampling with temperature, top-k,
// top-p and min-p, plus the log-softmax values the API reports.
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

struct Sampled {
  int32_t token;
  float logprob;  // raw log-softmax of the chosen token (before temperature)
};

// topIds/topValues receive the topN highest raw log-softmax entries (ties: lower id first).
Sampled sampleToken(const float* logits, int vocab, const SamplingParams& p, int topN, int32_t* topIds,
                    float* topValues);

// The uniform draw in [0, 1) for (seed, draws): a counter-based generator, so a sequence's
// tokens depend on its own seed and count only, never on the batch it runs in.
double uniformDraw(uint32_t seed, uint32_t draws);

}  // namespace troupe
