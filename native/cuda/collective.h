// The collectives of one CUDA rank of a tensor-parallel group, on device buffers in stream
// order. Ranks on distinct GPUs use NCCL (when the addon was built with it); ranks sharing a
// GPU, or a build without NCCL, pass activations through host memory (CommGroup), which is
// correct but synchronous, so those steps run outside CUDA graphs.
#pragma once

#include <cuda_runtime_api.h>

#include <memory>

#include "comm.h"

namespace troupe {
namespace cuda {

class DeviceComm {
 public:
  virtual ~DeviceComm() = default;
  virtual const char* name() const = 0;  // EngineInfo::collective
  // Whether the collectives may be captured into a CUDA graph.
  virtual bool capturable() const = 0;
  // data[i] = the sum over ranks of data[i], in place.
  virtual void allReduceSum(float* data, size_t n, cudaStream_t s) = 0;
  // out[r * n + i] = rank r's part[i].
  virtual void allGather(const float* part, size_t n, float* out, cudaStream_t s) = 0;
};

// The collectives for `rank` of `group` running on GPU `device` (the current device). Every
// rank must call it at the same time: it agrees on the transport with the others.
std::unique_ptr<DeviceComm> makeDeviceComm(const std::shared_ptr<CommGroup>& group, int rank, int device);

// Whether this build can use NCCL.
bool ncclBuilt();

}  // namespace cuda
}  // namespace troupe
