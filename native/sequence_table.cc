#include "sequence_table.h"

#include <algorithm>
#include <cstddef>
#include <stdexcept>
#include <string>

namespace troupe {

namespace {

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument("step: " + msg); }

template <class T>
Span<T> view(const std::vector<T>& v) {
  return Span<T>{v.data(), v.size()};
}

}  // namespace

void SequenceTable::Entry::count(int32_t token, bool isGenerated) {
  auto [it, added] = at.emplace(token, static_cast<int32_t>(unique.size()));
  if (added) {
    minId = unique.empty() ? token : std::min(minId, token);
    maxId = unique.empty() ? token : std::max(maxId, token);
    unique.push_back(token);
    generated.push_back(0);
  }
  if (isGenerated) ++generated[static_cast<size_t>(it->second)];
}

void SequenceTable::resolve(StepBatch& b) {
  check(b);
  const SeqUpdate& u = b.seqUpdate;
  for (size_t k = 0; k < u.slots.size; ++k) store(u, k);
  appendBlocks(b);
  viewColumns(b);
}

void SequenceTable::check(const StepBatch& b) const {
  const SeqUpdate& u = b.seqUpdate;
  const size_t count = u.slots.size;
  if (count > 0) validateColumns(u, count, "batch.seqUpdate");
  for (size_t k = 0; k < count; ++k) {
    const int32_t s = u.slots[k];
    if (s < 0 || s >= kMaxSlots) {
      fail("batch.seqUpdate.slots[" + std::to_string(k) + "] is " + std::to_string(s) + ", outside [0, " +
           std::to_string(kMaxSlots) + ")");
    }
  }
  const size_t n = b.contextLens.size;
  if (b.seqSlots.size != n) {
    fail("batch.seqSlots has " + std::to_string(b.seqSlots.size) + " elements, expected " + std::to_string(n));
  }
  if (b.blockAppendStarts.size != n + 1) {
    fail("batch.blockAppendStarts has " + std::to_string(b.blockAppendStarts.size) + " elements, expected " +
         std::to_string(n + 1));
  }
  if (b.blockAppendStarts[0] != 0) fail("batch.blockAppendStarts[0] must be 0");
  for (size_t i = 0; i < n; ++i) {
    if (b.blockAppendStarts[i + 1] < b.blockAppendStarts[i]) fail("batch.blockAppendStarts must not decrease");
  }
  if (b.blockAppends.size != static_cast<size_t>(b.blockAppendStarts[n])) {
    fail("batch.blockAppends has " + std::to_string(b.blockAppends.size) + " elements, expected " +
         std::to_string(b.blockAppendStarts[n]));
  }
  // A sequence's prompt is a prefix of the tokens it sends (the samplers only see their counts).
  for (size_t k = 0; k < count; ++k) {
    const int32_t promptLen = u.penaltyPromptLens[k], length = u.penaltyStarts[k + 1] - u.penaltyStarts[k];
    if (promptLen < 0 || promptLen > length) {
      fail("batch.seqUpdate.penaltyPromptLens[" + std::to_string(k) + "] is " + std::to_string(promptLen) +
           ", outside [0, " + std::to_string(length) + "], the length of its penalty tokens");
    }
  }
  // Every row's slot must be filled once the update is stored.
  for (size_t i = 0; i < n; ++i) {
    const int32_t s = b.seqSlots[i];
    bool filled = s >= 0 && s < kMaxSlots && static_cast<size_t>(s) < slots_.size() && slots_[s].filled;
    for (size_t k = 0; k < count && !filled; ++k) filled = u.slots[k] == s;
    if (!filled) {
      fail("batch.seqSlots[" + std::to_string(i) + "] is " + std::to_string(s) + ", a slot that holds no sequence");
    }
  }
}

void SequenceTable::store(const SeqUpdate& u, size_t k) {
  const size_t s = static_cast<size_t>(u.slots[k]);
  if (s >= slots_.size()) slots_.resize(s + 1);
  Entry& e = slots_[s];
  e.filled = true;
  e.temperature = u.temperature[k];
  e.topK = u.topK[k];
  e.topP = u.topP[k];
  e.minP = u.minP[k];
  e.frequencyPenalty = u.frequencyPenalty[k];
  e.presencePenalty = u.presencePenalty[k];
  e.repetitionPenalty = u.repetitionPenalty[k];
  e.seed = u.seeds[k];
  // As a row's own columns: a sequence sends its tokens when a penalty looks at them.
  e.penalized = e.frequencyPenalty != 0 || e.presencePenalty != 0 || e.repetitionPenalty != 1;
  e.unique.clear();
  e.generated.clear();
  e.at.clear();
  if (e.penalized) {
    const int32_t* tokens = u.penaltyTokens.data + u.penaltyStarts[k];
    const int32_t length = u.penaltyStarts[k + 1] - u.penaltyStarts[k];
    for (int32_t j = 0; j < length; ++j) e.count(tokens[j], j >= u.penaltyPromptLens[k]);
  }
  e.blocks.clear();  // the rows send every block of a sequence new to its slot
}

void SequenceTable::appendBlocks(StepBatch& b) {
  const size_t n = b.contextLens.size;
  size_t maxBlocks = 1;
  for (size_t i = 0; i < n; ++i) {
    std::vector<int32_t>& blocks = slots_[static_cast<size_t>(b.seqSlots[i])].blocks;
    blocks.insert(blocks.end(), b.blockAppends.data + b.blockAppendStarts[i],
                  b.blockAppends.data + b.blockAppendStarts[i + 1]);
    maxBlocks = std::max(maxBlocks, blocks.size());
  }
  // Rows of -1-padded block lists, as the per-row form sends them; validateBatch then checks
  // every id against the cache.
  blockTables_.assign(n * maxBlocks, -1);
  for (size_t i = 0; i < n; ++i) {
    const std::vector<int32_t>& blocks = slots_[static_cast<size_t>(b.seqSlots[i])].blocks;
    std::copy(blocks.begin(), blocks.end(), blockTables_.begin() + static_cast<std::ptrdiff_t>(i * maxBlocks));
  }
  b.blockTables = view(blockTables_);
  b.maxBlocksPerSeq = static_cast<int>(maxBlocks);
}

void SequenceTable::viewColumns(StepBatch& b) {
  const size_t n = b.contextLens.size;
  temperature_.resize(n);
  topK_.resize(n);
  topP_.resize(n);
  minP_.resize(n);
  frequencyPenalty_.resize(n);
  presencePenalty_.resize(n);
  repetitionPenalty_.resize(n);
  seeds_.resize(n);
  // The samplers read the counts: the rows send no tokens (empty ranges, prompt length 0).
  penaltyPromptLens_.assign(n, 0);
  penaltyStarts_.assign(n + 1, 0);
  penaltyCounts_.assign(n, CountedTokens{});
  for (size_t i = 0; i < n; ++i) {
    const Entry& e = slots_[static_cast<size_t>(b.seqSlots[i])];
    temperature_[i] = e.temperature;
    topK_[i] = e.topK;
    topP_[i] = e.topP;
    minP_[i] = e.minP;
    frequencyPenalty_[i] = e.frequencyPenalty;
    presencePenalty_[i] = e.presencePenalty;
    repetitionPenalty_[i] = e.repetitionPenalty;
    seeds_[i] = e.seed;
    // Views, valid until record() counts the step's tokens after it.
    if (e.penalized)
      penaltyCounts_[i] =
          CountedTokens{e.unique.data(), e.generated.data(), static_cast<int32_t>(e.unique.size()), e.minId, e.maxId};
  }
  b.temperature = view(temperature_);
  b.topK = view(topK_);
  b.topP = view(topP_);
  b.minP = view(minP_);
  b.frequencyPenalty = view(frequencyPenalty_);
  b.presencePenalty = view(presencePenalty_);
  b.repetitionPenalty = view(repetitionPenalty_);
  b.seeds = view(seeds_);
  b.penaltyPromptLens = view(penaltyPromptLens_);
  b.penaltyStarts = view(penaltyStarts_);
  b.penaltyTokens = Span<int32_t>{};
  b.penaltyCounts = view(penaltyCounts_);
}

void SequenceTable::record(const StepBatch& b, const StepOutput& out) {
  if (!b.resident) return;
  for (size_t i = 0; i < b.seqSlots.size && i < out.tokens.size(); ++i) {
    Entry& e = slots_[static_cast<size_t>(b.seqSlots[i])];
    if (e.penalized && out.tokens[i] >= 0) e.count(out.tokens[i], true);
  }
}

}  // namespace troupe
