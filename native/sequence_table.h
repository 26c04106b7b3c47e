// What the engine keeps of each running sequence between steps, by sequence slot: its sampling
// values, its block table, and (when it samples with a penalty) the counts of its prompt and
// generated tokens. The scheduler gives each running sequence a slot and fills it in the first
// step after the sequence takes it; later steps name only the slot and the blocks the sequence
// gained since. The engine counts each token it samples for a penalized slot itself, so neither
// the values, nor a table of every block, nor a growing history cross from JavaScript every
// step, and no step walks a history.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "backend.h"

namespace troupe {

class SequenceTable {
 public:
  // The most slots a table holds (a slot number is checked against it before anything grows);
  // MAX_SEQUENCE_SLOTS in src/scheduler/sequence-slots.ts bounds --max-running-requests by it.
  static constexpr int kMaxSlots = 1 << 16;

  // Stores the batch's update in its slots and its rows' new blocks, then points the batch's
  // sampling columns and block table at the values of the slots its rows name (valid until the
  // next resolve). Throws std::invalid_argument naming the problem (a malformed update or block
  // list, a slot out of range or never filled); the table is left as it was then.
  void resolve(StepBatch& batch);
  // Counts each sampled token of a row whose slot samples with a penalty in that slot.
  void record(const StepBatch& batch, const StepOutput& out);

 private:
  struct Entry {
    bool filled = false;
    bool penalized = false;
    float temperature = 1, topP = 1, minP = 0, frequencyPenalty = 0, presencePenalty = 0, repetitionPenalty = 1;
    int32_t topK = -1;
    uint32_t seed = 0;
    std::vector<int32_t> blocks;  // its KV cache blocks, in order
    // A penalized slot's prompt and generated tokens counted as they arrive: distinct tokens in
    // the order first seen, how often each was generated, and where each sits in `unique`.
    std::vector<int32_t> unique, generated;
    int32_t minId = 0, maxId = 0;  // of unique
    std::unordered_map<int32_t, int32_t> at;
    void count(int32_t token, bool isGenerated);
  };
  // resolve's parts: the batch's structure (before anything changes), one update entry, the
  // rows' new blocks (and the padded table), and the step's columns.
  void check(const StepBatch& b) const;
  void store(const SeqUpdate& u, size_t k);
  void appendBlocks(StepBatch& b);
  void viewColumns(StepBatch& b);

  std::vector<Entry> slots_;
  // The columns of the step being run, which the batch's spans view.
  std::vector<float> temperature_, topP_, minP_, frequencyPenalty_, presencePenalty_, repetitionPenalty_;
  std::vector<int32_t> topK_, penaltyStarts_, penaltyPromptLens_, blockTables_;
  std::vector<CountedTokens> penaltyCounts_;
  std::vector<uint32_t> seeds_;
};

}  // namespace troupe
