// The CPU backend: the decoder forward (Llama's, with the family flags of ModelConfig) over a
// mixed batch of prefill chunks and decodes, with per-token LoRA from the pool and sampling of
// each sequence's last position. As one rank of a
// tensor-parallel group it holds its heads, MLP features and vocabulary rows, and sums or
// gathers with the other ranks through CommGroup (rank 0 samples).
#pragma once

#include <memory>

#include "backend.h"
#include "comm.h"
#include "cpu/ops.h"
#include "lora.h"
#include "weights.h"

namespace troupe {

class CpuBackend : public Backend {
 public:
  CpuBackend(const ModelConfig& config, const std::vector<TensorRef>& tensors, const EngineOptions& options);

  ~CpuBackend() override;
  EngineInfo info() const override;
  void step(const StepBatch& batch, StepOutput& out) override;
  void loadLoraSlot(int slot, const AdapterWeights& adapter) override { lora_.load(slot, adapter); }
  void clearLoraSlot(int slot) override { lora_.clear(slot); }
  void swapLoraSlots(int a, int b) override { lora_.swap(a, b); }
  SlotTable* loraSlotTable() override { return &lora_.table(); }

 private:
  void layer(int index, float* hidden, int tokens, const std::vector<TokenPlace>& places,
             const std::vector<std::vector<float>>& cos, const std::vector<std::vector<float>>& sin,
             const std::vector<SlotGroup>& groups);
  void forward(const StepBatch& batch, StepOutput& out);
  void embed(const StepBatch& batch, float* hidden);
  void sample(const StepBatch& batch, const float* hidden, StepOutput& out);
  // The whole vocabulary's logits of `rows` rows from this rank's part (rows x vocabCount).
  std::vector<float> gatherLogits(std::vector<float> local, int rows);

  TensorParallel tp_;
  std::shared_ptr<CommGroup> comm_;
  ModelConfig config_;  // this rank's part (the vocabulary stays whole)
  EngineOptions options_;
  int threads_;
  ModelWeights weights_;
  Rope rope_;
  KvCache cache_;
  LoraPool lora_;
};

}  // namespace troupe
