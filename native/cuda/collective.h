// The collectives of one CUDA rank of a tensor-parallel group, on device buffers in stream
// order. Ranks on distinct GPUs use NCCL (when the addon was built with it); ranks sharing a
// GPU, or a build without NCCL, pass activations through host memory (CommGroup), which is
// correct but synchronous, so those steps run outside CUDA graphs. Small messages between GPUs
// may take the peer-to-peer kernels instead (peer_comm.h).
#pragma once

#include <cuda_runtime_api.h>

#include <memory>
#include <vector>

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

// Every rank's GPU, by rank (a collective: all ranks call it together).
std::vector<int> gatherDevices(CommGroup& group, int rank, int device);

// The collectives for `rank` of `group`, whose ranks run on `devices` (the current device is
// this rank's). With peerCollectives, ranks on distinct GPUs with peer access send small
// messages through the one-shot peer kernels and the rest through NCCL. Every rank must call it
// at the same time, with the same peerCollectives.
std::unique_ptr<DeviceComm> makeDeviceComm(const std::shared_ptr<CommGroup>& group, int rank,
                                           const std::vector<int>& devices, bool peerCollectives);

// Whether this build can use NCCL.
bool ncclBuilt();

}  // namespace cuda
}  // namespace troupe
