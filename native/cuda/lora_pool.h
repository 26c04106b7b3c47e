// The LoRA pool on the GPU: per layer and targeted module, A [slots][maxRank][in] and
// B [slots][out][maxRank] in bf16, plus each slot's rank per module and scaling. A slot is filled
// by async copies on the loader's own stream and guarded by an event, so steps that do not use
// the slot keep running while it loads.
#pragma once

#include <cuda_runtime_api.h>

#include <vector>

#include "backend.h"
#include "cuda/device.h"
#include "cuda/lora_kernels.h"

namespace troupe {
namespace cuda {

class GpuLoraPool {
 public:
  GpuLoraPool(const ModelConfig& c, int slots, int maxRank, uint32_t moduleMask);
  ~GpuLoraPool();
  GpuLoraPool(const GpuLoraPool&) = delete;
  GpuLoraPool& operator=(const GpuLoraPool&) = delete;

  void load(int slot, const AdapterWeights& adapter);
  void clear(int slot);
  // Makes `stream` wait for the copies into `slot`.
  void waitFor(int slot, cudaStream_t stream) const;

  int slots() const { return slots_; }
  int maxRank() const { return maxRank_; }
  bool holds(LoraModule m) const { return (mask_ >> m) & 1u; }
  // The slices of one fused projection at `layer` (modules not held are left out).
  LoraSlices slices(int layer, std::initializer_list<LoraModule> modules, const int* outOffsets) const;
  const int32_t* ranks() const { return ranks_.get(); }
  const float* scaling() const { return scaling_.get(); }
  size_t bytes() const { return bytes_; }

 private:
  int layers_, slots_, maxRank_;
  uint32_t mask_;
  int in_[kNumLoraModules], out_[kNumLoraModules];
  std::vector<bf16_t*> a_, b_;  // [layer * 7 + module]
  DeviceBuffer<int32_t> ranks_;   // [slot * 7 + module]
  DeviceBuffer<float> scaling_;   // [slot]
  std::vector<int32_t> hostRanks_;
  std::vector<float> hostScaling_;
  cudaStream_t stream_ = nullptr;
  std::vector<cudaEvent_t> ready_;
  PinnedBuffer<uint16_t> staging_;
  PinnedBuffer<int32_t> metaStaging_;
  cudaEvent_t stagingFree_ = nullptr;
  size_t bytes_ = 0;
  std::vector<void*> allocations_;
};

}  // namespace cuda
}  // namespace troupe
