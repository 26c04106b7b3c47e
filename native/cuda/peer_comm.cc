#include "cuda/peer_comm.h"

#include <cstdint>
#include <cstring>
#include <string>

#include "cuda/device.h"
#include "cuda/peer_allreduce.h"

namespace troupe {
namespace cuda {
namespace {

// The largest message the peer kernels carry: a decode step's hidden states up to batch 128 at
// hidden size 4096 (2 MiB). Past that NCCL's ring moves the bytes faster than one-shot reads of
// every peer's whole buffer; below it NCCL's fixed latency dominates.
constexpr size_t kPeerMaxFloats = size_t{512} * 1024;

class PeerComm : public DeviceComm {
 public:
  PeerComm(std::unique_ptr<DeviceComm> inner, CommGroup& group, int rank, const std::vector<int>& devices)
      : inner_(std::move(inner)), name_(std::string("p2p+") + inner_->name()) {
    int self = 0;
    check(cudaGetDevice(&self), "cudaGetDevice");
    for (int d : devices) {
      if (d == self) continue;
      const cudaError_t e = cudaDeviceEnablePeerAccess(d, 0);
      // Another engine of this process (or NCCL) may have enabled it already.
      if (e == cudaErrorPeerAccessAlreadyEnabled) {
        cudaGetLastError();
      } else {
        check(e, "cudaDeviceEnablePeerAccess");
      }
    }
    staging_.ensure(2 * kPeerMaxFloats);
    signals_.ensure(1);
    check(cudaMemset(signals_.get(), 0, sizeof(PeerSignals)), "peer signals");
    check(cudaDeviceSynchronize(), "peer signals");  // zeroed before any peer can write a flag
    const void* mine[2] = {staging_.get(), signals_.get()};
    const std::vector<uint8_t> all = group.allGatherBytes(rank, mine, sizeof mine);
    set_.capacity = kPeerMaxFloats;
    set_.rank = rank;
    set_.ranks = group.size();
    for (int r = 0; r < group.size(); ++r) {
      void* theirs[2];
      std::memcpy(theirs, all.data() + r * sizeof theirs, sizeof theirs);
      set_.staging[r] = static_cast<float*>(theirs[0]);
      set_.signals[r] = static_cast<PeerSignals*>(theirs[1]);
    }
  }

  const char* name() const override { return name_.c_str(); }
  bool capturable() const override { return inner_->capturable(); }

  // Every rank asks with the same n and equally aligned buffers, so all take the same path.
  void allReduceSum(float* data, size_t n, cudaStream_t s) override {
    if (peerCanCarry(set_, data, data, n)) {
      peerAllReduceSum(set_, data, n, s);
    } else {
      inner_->allReduceSum(data, n, s);
    }
  }
  void allGather(const float* part, size_t n, float* out, cudaStream_t s) override {
    if (peerCanCarry(set_, part, out, n)) {
      peerAllGather(set_, part, n, out, s);
    } else {
      inner_->allGather(part, n, out, s);
    }
  }

 private:
  std::unique_ptr<DeviceComm> inner_;
  std::string name_;
  PeerSet set_{};
  // Freed with the engine: steps end with every rank's stream synchronized, so by then no peer
  // kernel reads them.
  DeviceBuffer<float> staging_;
  DeviceBuffer<PeerSignals> signals_;
};

}  // namespace

std::unique_ptr<DeviceComm> withPeerCollectives(std::unique_ptr<DeviceComm> inner, CommGroup& group, int rank,
                                                const std::vector<int>& devices) {
  int self = 0;
  check(cudaGetDevice(&self), "cudaGetDevice");
  uint8_t ok = devices.size() <= static_cast<size_t>(kPeerMaxRanks);
  for (int d : devices) {
    int can = 1;
    if (d != self) check(cudaDeviceCanAccessPeer(&can, self, d), "cudaDeviceCanAccessPeer");
    ok &= can != 0;
  }
  // Access may be one-way on odd topologies: use the peer kernels only if every rank can reach
  // every other.
  const std::vector<uint8_t> all = group.allGatherBytes(rank, &ok, 1);
  for (uint8_t a : all)
    if (!a) return inner;
  return std::make_unique<PeerComm>(std::move(inner), group, rank, devices);
}

}  // namespace cuda
}  // namespace troupe
