// The CPU backend: the Llama forward over a mixed batch of prefill chunks and decodes, with
// per-token LoRA from the pool and sampling of each sequence's last position.
#pragma once

#include <memory>

#include "backend.h"
#include "cpu/ops.h"
#include "lora.h"
#include "weights.h"

namespace troupe {

class CpuBackend : public Backend {
 public:
  CpuBackend(const ModelConfig& config, const std::vector<TensorRef>& tensors, const EngineOptions& options);

  EngineInfo info() const override;
  void step(const StepBatch& batch, StepOutput& out) override;
  void loadLoraSlot(int slot, const AdapterWeights& adapter) override { lora_.load(slot, adapter); }
  void clearLoraSlot(int slot) override { lora_.clear(slot); }

 private:
  void layer(int index, float* hidden, int tokens, const std::vector<TokenPlace>& places,
             const std::vector<std::vector<float>>& cos, const std::vector<std::vector<float>>& sin,
             const std::vector<SlotGroup>& groups);
  void sample(const StepBatch& batch, const float* hidden, StepOutput& out);

  ModelConfig config_;
  EngineOptions options_;
  int threads_;
  ModelWeights weights_;
  Rope rope_;
  KvCache cache_;
  LoraPool lora_;
};

}  // namespace troupe
