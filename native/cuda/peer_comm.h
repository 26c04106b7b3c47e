// Tensor-parallel collectives that send small messages through the one-shot peer-to-peer kernels
// (peer_allreduce.h) and everything else through another DeviceComm (NCCL).
#pragma once

#include <memory>
#include <vector>

#include "comm.h"
#include "cuda/collective.h"

namespace troupe {
namespace cuda {

// `inner` itself when some pair of `devices` lacks peer access (then every rank decides alike),
// else a DeviceComm that uses the peer kernels for messages up to a few MiB. A collective: every
// rank calls it at the same time; the current device is this rank's.
std::unique_ptr<DeviceComm> withPeerCollectives(std::unique_ptr<DeviceComm> inner, CommGroup& group, int rank,
                                                const std::vector<int>& devices);

}  // namespace cuda
}  // namespace troupe
