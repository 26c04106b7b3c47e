// Batch validation shared by every backend: a bad index from the scheduler must become an
// error naming the field, never an out-of-bounds write into the KV cache. The structure of the
// batch is the scheduler's and fails the step; one sequence's sampling values are its request's
// and fail that sequence only (samplingError).
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "backend.h"
#include "sampling.h"

namespace troupe {

namespace {

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument("step: " + msg); }

void expectLength(const char* field, size_t got, size_t want) {
  if (got != want) {
    fail("batch." + std::string(field) + " has " + std::to_string(got) + " elements, expected " + std::to_string(want));
  }
}

// %g, so 1e-45 does not print as 0.000000.
std::string show(float v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", static_cast<double>(v));
  return buf;
}

}  // namespace

void validateColumns(const SamplingColumns& c, size_t n, const std::string& where) {
  const auto expect = [&](const char* field, size_t got, size_t want) {
    if (got != want) {
      fail(where + "." + field + " has " + std::to_string(got) + " elements, expected " + std::to_string(want));
    }
  };
  expect("temperature", c.temperature.size, n);
  expect("topK", c.topK.size, n);
  expect("topP", c.topP.size, n);
  expect("minP", c.minP.size, n);
  expect("seeds", c.seeds.size, n);
  expect("frequencyPenalty", c.frequencyPenalty.size, n);
  expect("presencePenalty", c.presencePenalty.size, n);
  expect("repetitionPenalty", c.repetitionPenalty.size, n);
  expect("penaltyStarts", c.penaltyStarts.size, n + 1);
  expect("penaltyPromptLens", c.penaltyPromptLens.size, n);
  if (c.penaltyStarts[0] != 0) fail(where + ".penaltyStarts[0] must be 0");
  for (size_t i = 0; i < n; ++i) {
    if (c.penaltyStarts[i + 1] < c.penaltyStarts[i]) fail(where + ".penaltyStarts must not decrease");
  }
  expect("penaltyTokens", c.penaltyTokens.size, static_cast<size_t>(c.penaltyStarts[n]));
}

void validateBatch(const StepBatch& b, const ModelConfig& config, int kvBlocks, int blockSize,
                   const std::vector<bool>& slotLoaded) {
  const size_t n = b.numSeqs();
  if (n == 0) fail("batch has no sequences (contextLens is empty)");
  expectLength("seqStarts", b.seqStarts.size, n + 1);
  expectLength("loraSlots", b.loraSlots.size, n);
  expectLength("sample", b.sample.size, n);
  expectLength("draws", b.draws.size, n);
  validateColumns(b, n, "batch");
  if (b.maxBlocksPerSeq <= 0) fail("batch.maxBlocksPerSeq must be a positive integer");
  expectLength("blockTables", b.blockTables.size, n * static_cast<size_t>(b.maxBlocksPerSeq));
  if (b.seqStarts[0] != 0) fail("batch.seqStarts[0] must be 0");
  // Checked before any token is read: a later offset below an earlier one would index past the arrays.
  for (size_t i = 0; i < n; ++i) {
    if (b.seqStarts[i + 1] <= b.seqStarts[i]) {
      fail("batch.seqStarts must increase (sequence " + std::to_string(i) + " has no tokens)");
    }
  }
  const size_t total = static_cast<size_t>(b.seqStarts[n]);
  expectLength("tokens", b.tokens.size, total);
  expectLength("positions", b.positions.size, total);

  const int numSlots = static_cast<int>(slotLoaded.size());
  for (size_t i = 0; i < n; ++i) {
    const std::string seq = "sequence " + std::to_string(i);
    const int start = b.seqStarts[i];
    const int end = b.seqStarts[i + 1];
    const int count = end - start;
    const int ctx = b.contextLens[i];
    if (ctx < count) {
      fail(seq + ": contextLens " + std::to_string(ctx) + " is smaller than its " + std::to_string(count) +
           " new tokens");
    }
    for (int j = 0; j < count; ++j) {
      const int want = ctx - count + j;
      if (b.positions[start + j] != want) {
        fail(seq + ": token " + std::to_string(j) + " has position " + std::to_string(b.positions[start + j]) +
             " but contextLens " + std::to_string(ctx) + " puts it at " + std::to_string(want));
      }
      const int tok = b.tokens[start + j];
      if (tok < 0 || tok >= config.vocabSize) {
        fail(seq + ": token id " + std::to_string(tok) + " is outside the vocabulary [0, " +
             std::to_string(config.vocabSize) + ")");
      }
    }
    const long long needBlocks = (static_cast<long long>(ctx) + blockSize - 1) / blockSize;
    if (needBlocks > b.maxBlocksPerSeq) {
      fail(seq + ": contextLens " + std::to_string(ctx) + " needs " + std::to_string(needBlocks) + " blocks of " +
           std::to_string(blockSize) + " but maxBlocksPerSeq is " + std::to_string(b.maxBlocksPerSeq));
    }
    for (long long k = 0; k < needBlocks; ++k) {
      const int block = b.blockTables[i * b.maxBlocksPerSeq + k];
      if (block < 0 || block >= kvBlocks) {
        fail(seq + ": block table entry " + std::to_string(k) + " is block " + std::to_string(block) +
             ", outside the KV cache's [0, " + std::to_string(kvBlocks) + ")");
      }
    }
    const int slot = b.loraSlots[i];
    if (slot != -1) {
      if (slot < 0 || slot >= numSlots) {
        fail(seq + ": LoRA slot " + std::to_string(slot) + " is outside [0, " + std::to_string(numSlots) +
             ") (use -1 for the base model)");
      }
      if (!slotLoaded[slot]) fail(seq + ": LoRA slot " + std::to_string(slot) + " holds no adapter");
    }
  }
}

std::string samplingError(const StepBatch& b, size_t i, int vocabSize) {
  // +Inf is a valid temperature (uniform sampling); NaN and negative ones are not.
  const float t = b.temperature[i];
  if (!(t >= 0)) return "temperature must be a number >= 0, got " + show(t);
  const float p = b.topP[i];
  if (!(p > 0 && p <= 1)) return "topP must be in (0, 1], got " + show(p);
  const float mp = b.minP[i];
  if (!(mp >= 0 && mp <= 1)) return "minP must be in [0, 1], got " + show(mp);
  const float fp = b.frequencyPenalty[i], pp = b.presencePenalty[i], rp = b.repetitionPenalty[i];
  if (!(fp >= -2 && fp <= 2)) return "frequencyPenalty must be in [-2, 2], got " + show(fp);
  if (!(pp >= -2 && pp <= 2)) return "presencePenalty must be in [-2, 2], got " + show(pp);
  if (!(rp > 0 && rp <= 2)) return "repetitionPenalty must be in (0, 2], got " + show(rp);
  const int hs = b.penaltyStarts[i], he = b.penaltyStarts[i + 1];
  const int promptLen = b.penaltyPromptLens[i];
  if (promptLen < 0 || promptLen > he - hs) {
    return "penaltyPromptLens " + std::to_string(promptLen) + " is outside [0, " + std::to_string(he - hs) +
           "], the length of its penalty tokens";
  }
  const auto outside = [&](int32_t tok) {
    return "penalty token id " + std::to_string(tok) + " is outside the vocabulary [0, " + std::to_string(vocabSize) +
           ")";
  };
  // The resident form's distinct tokens by their extremes; the per-row form's tokens one by one.
  if (b.penaltyCounts.size == b.numSeqs()) {
    const CountedTokens& c = b.penaltyCounts[i];
    if (c.count > 0 && c.minId < 0) return outside(c.minId);
    if (c.count > 0 && c.maxId >= vocabSize) return outside(c.maxId);
    return {};
  }
  for (int j = hs; j < he; ++j)
    if (b.penaltyTokens[j] < 0 || b.penaltyTokens[j] >= vocabSize) return outside(b.penaltyTokens[j]);
  return {};
}

Penalties penaltiesOf(const StepBatch& b, size_t i) {
  const int hs = b.penaltyStarts[i];
  Penalties p{b.frequencyPenalty[i],     b.presencePenalty[i],        b.repetitionPenalty[i],
              b.penaltyTokens.data + hs, b.penaltyStarts[i + 1] - hs, b.penaltyPromptLens[i]};
  if (b.penaltyCounts.size == b.numSeqs()) {
    const CountedTokens& c = b.penaltyCounts[i];
    p.unique = c.unique;
    p.generatedCounts = c.generated;
    p.uniqueCount = c.count;
  }
  return p;
}

void sampleSequence(const StepBatch& b, size_t i, const float* logits, int vocabSize, int topN, StepOutput& out) {
  const SamplingParams sp{b.temperature[i], b.topK[i], b.topP[i], b.minP[i], b.seeds[i], b.draws[i]};
  // One sequence's failure is its own, and nothing may leave a parallel region of the callers.
  try {
    const Penalties pen = penaltiesOf(b, i);
    const Sampled s = sampleToken(logits, vocabSize, sp, topN, out.topIds.data() + i * topN,
                                  out.topLogprobValues.data() + i * topN, &pen);
    out.tokens[i] = s.token;
    out.logprobs[i] = s.logprob;
  } catch (const std::exception& e) {
    out.errors[i] = std::string("sampling failed: ") + e.what();
  } catch (...) {
    out.errors[i] = "sampling failed";
  }
}

}  // namespace troupe
