// The base model's weights on the GPU: matrices in bf16 (q/k/v and gate/up fused into one
// matrix each, so a layer runs four GEMMs), norm weights and biases in f32.
#pragma once

#include <vector>

#include "backend.h"
#include "cuda/kernels.h"
#include "cuda/lora_fused.h"

namespace troupe {
namespace cuda {

// The four matrices' rows are GpuWeights::ld apart: their `in` values, then the LoRA pool's
// padding columns (lora_fused.h).
struct GpuLayer {
  float* inputNorm = nullptr;
  float* postNorm = nullptr;
  bf16_t* qkv = nullptr;     // [qDim + 2 kvDim][hidden]
  bf16_t* o = nullptr;       // [hidden][qDim]
  bf16_t* gateUp = nullptr;  // [2 inter][hidden]
  bf16_t* down = nullptr;    // [hidden][inter]
  bf16_t* matrix(WeightGroup g) const {
    return g == kQkvWeight ? qkv : g == kOWeight ? o : g == kGateUpWeight ? gateUp : down;
  }
  float* qkvBias = nullptr;  // [qDim + 2 kvDim] with config.qkvBias
  float* qNorm = nullptr;    // [headDim] each, with config.qkNorm
  float* kNorm = nullptr;
};

class GpuWeights {
 public:
  // A tensor-parallel rank's part: config has its heads and features; the embedding and lm_head
  // have vocabRows rows of the checkpoint, zero-padded to vocabPart. pad: the LoRA pool's columns
  // per weight group (null: none), zero-filled here; splitRows: the groups whose modules' rows
  // each hold only their own block of them (lora_fused.h; null: none); tail: rows per weight group
  // after the base rows, zero-filled, where the pool keeps A factors (lora_tail.h; null: none).
  GpuWeights(const ModelConfig& config, const std::vector<TensorRef>& tensors, cudaStream_t stream, int vocabRows,
             int vocabPart, const int* pad, const bool* splitRows = nullptr, const int* tail = nullptr);
  ~GpuWeights();
  GpuWeights(const GpuWeights&) = delete;
  GpuWeights& operator=(const GpuWeights&) = delete;

  bf16_t* embed = nullptr;  // [vocabPart][hidden]
  bf16_t* head = nullptr;   // == embed when tied
  float* finalNorm = nullptr;
  std::vector<GpuLayer> layers;
  int pad[kNumWeightGroups] = {};
  int ld[kNumWeightGroups] = {};  // row pitch: in + pad
  bool splitRows[kNumWeightGroups] = {};
  int tail[kNumWeightGroups] = {};  // rows after a group's base rows, ld apart as theirs
  size_t bytes = 0;

 private:
  std::vector<void*> allocations_;
  size_t loraBytes_ = 0;  // the pool's columns and tail rows, for the out-of-memory message
  void* alloc(size_t bytes);
};

}  // namespace cuda
}  // namespace troupe
