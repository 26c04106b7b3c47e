// The base model's weights, read from the checkpoint files named by the TensorRefs.
#pragma once

#include <string>
#include <vector>

#include "backend.h"
#include "cpu/gemm.h"

namespace troupe {

struct LayerWeights {
  std::vector<float> inputNorm, postNorm;
  Matrix q, k, v, o, gate, up, down;
  std::vector<float> qBias, kBias, vBias;  // empty without config.qkvBias
  std::vector<float> qNorm, kNorm;         // headDim each; empty without config.qkNorm
};

struct ModelWeights {
  Matrix embed;
  Matrix lmHead;  // empty when the embeddings are tied
  std::vector<float> finalNorm;
  std::vector<LayerWeights> layers;
  bool tied = false;

  const Matrix& head() const { return tied ? embed : lmHead; }
};

// Loads every tensor of a checkpoint (a tensor-parallel rank's part: config has its
// heads and features, the embedding and lm_head have vocabRows rows); throws
// std::invalid_argument naming a missing or mis-shaped tensor, std::runtime_error naming the
// file when a read fails.
ModelWeights loadWeights(const ModelConfig& config, const std::vector<TensorRef>& tensors, int vocabRows);

}  // namespace troupe
