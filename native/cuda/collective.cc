#include "cuda/collective.h"

#include <cstdlib>
#include <cstring>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef TROUPE_HAVE_NCCL
#include <nccl.h>
#endif

#include "cuda/device.h"
#include "cuda/peer_comm.h"

namespace troupe {
namespace cuda {
namespace {

// One rank: nothing to exchange.
class LoneComm : public DeviceComm {
 public:
  const char* name() const override { return "none"; }
  bool capturable() const override { return true; }
  void allReduceSum(float*, size_t, cudaStream_t) override {}
  void allGather(const float* part, size_t n, float* out, cudaStream_t s) override {
    if (out != part) check(cudaMemcpyAsync(out, part, n * 4, cudaMemcpyDeviceToDevice, s), "all-gather copy");
  }
};

// Through pinned host memory and the host group's sum (in rank order, so every rank gets the
// same bits).
class HostComm : public DeviceComm {
 public:
  HostComm(std::shared_ptr<CommGroup> group, int rank) : group_(std::move(group)), rank_(rank) {}
  const char* name() const override { return "host"; }
  bool capturable() const override { return false; }

  void allReduceSum(float* data, size_t n, cudaStream_t s) override {
    stage_.ensure(n);
    check(cudaMemcpyAsync(stage_.get(), data, n * 4, cudaMemcpyDeviceToHost, s), "all-reduce download");
    check(cudaStreamSynchronize(s), "all-reduce download");
    group_->allReduceSum(rank_, stage_.get(), n);
    check(cudaMemcpyAsync(data, stage_.get(), n * 4, cudaMemcpyHostToDevice, s), "all-reduce upload");
  }

  void allGather(const float* part, size_t n, float* out, cudaStream_t s) override {
    stage_.ensure(n);
    gathered_.ensure(n * group_->size());
    check(cudaMemcpyAsync(stage_.get(), part, n * 4, cudaMemcpyDeviceToHost, s), "all-gather download");
    check(cudaStreamSynchronize(s), "all-gather download");
    group_->allGather(rank_, stage_.get(), n, gathered_.get());
    check(cudaMemcpyAsync(out, gathered_.get(), n * group_->size() * 4, cudaMemcpyHostToDevice, s),
          "all-gather upload");
  }

 private:
  std::shared_ptr<CommGroup> group_;
  int rank_;
  // Reused only after the upload that reads it: the next download is behind it in the stream.
  PinnedBuffer<float> stage_, gathered_;
};

#ifdef TROUPE_HAVE_NCCL
void checkNccl(ncclResult_t r, const char* what) {
  if (r != ncclSuccess) throw std::runtime_error(std::string("NCCL ") + what + ": " + ncclGetErrorString(r));
}

class NcclComm : public DeviceComm {
 public:
  NcclComm(const std::shared_ptr<CommGroup>& group, int rank) {
    ncclUniqueId id{};
    if (rank == 0) checkNccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    const std::vector<uint8_t> ids = group->allGatherBytes(rank, &id, sizeof id);
    std::copy(ids.begin(), ids.begin() + sizeof id, reinterpret_cast<uint8_t*>(&id));  // rank 0's
    checkNccl(ncclCommInitRank(&comm_, group->size(), id, rank), "ncclCommInitRank");
  }
  ~NcclComm() override {
    if (comm_) ncclCommDestroy(comm_);
  }
  const char* name() const override { return "nccl"; }
  bool capturable() const override { return true; }
  void allReduceSum(float* data, size_t n, cudaStream_t s) override {
    checkNccl(ncclAllReduce(data, data, n, ncclFloat32, ncclSum, comm_, s), "all-reduce");
  }
  void allGather(const float* part, size_t n, float* out, cudaStream_t s) override {
    checkNccl(ncclAllGather(part, out, n, ncclFloat32, comm_, s), "all-gather");
  }

 private:
  ncclComm_t comm_ = nullptr;
};
#endif

}  // namespace

bool ncclBuilt() {
#ifdef TROUPE_HAVE_NCCL
  return true;
#else
  return false;
#endif
}

std::vector<int> gatherDevices(CommGroup& group, int rank, int device) {
  const std::vector<uint8_t> bytes = group.allGatherBytes(rank, &device, sizeof device);
  std::vector<int> devices(group.size());
  std::memcpy(devices.data(), bytes.data(), bytes.size());
  return devices;
}

std::unique_ptr<DeviceComm> makeDeviceComm(const std::shared_ptr<CommGroup>& group, int rank,
                                           const std::vector<int>& devices, bool peerCollectives) {
  if (group->size() == 1) return std::make_unique<LoneComm>();
  // NCCL refuses two ranks on one GPU; every rank sees the same devices, so all choose alike.
  const bool distinct = std::set<int>(devices.begin(), devices.end()).size() == devices.size();
  if (ncclBuilt() && distinct) {
#ifdef TROUPE_HAVE_NCCL
    // NVLink SHARP multicast (NVLS) stays off: it reserves GPU memory for every communicator and
    // needs NVSwitch fabric support that not every multi-GPU host has.
    setenv("NCCL_NVLS_ENABLE", "0", 1);
    std::unique_ptr<DeviceComm> nccl = std::make_unique<NcclComm>(group, rank);
    return peerCollectives ? withPeerCollectives(std::move(nccl), *group, rank, devices) : std::move(nccl);
#endif
  }
  return std::make_unique<HostComm>(group, rank);
}

}  // namespace cuda
}  // namespace troupe
