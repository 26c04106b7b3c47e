// One-shot all-reduce and all-gather over peer-to-peer memory, for the small messages of
// tensor-parallel decode steps. At batch 1 a layer's two all-reduces carry 16 KiB each, where
// NCCL's per-call latency (its protocol setup and a ring of hops) is most of the cost; here each
// rank copies its part into a staging buffer of its own, the ranks meet at a flag barrier, and
// every rank reads all the staging buffers directly over NVLink and adds them in rank order, so
// all ranks hold the same bits. One kernel per collective, with no host involvement: it can be
// captured into a CUDA graph. Ranks are threads of one process, so device pointers are shared
// as they are (unified addressing), with peer access enabled between every pair of GPUs.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace troupe {
namespace cuda {

constexpr int kPeerMaxRanks = 8;
// The grid is fixed: each block owns the same elements on every call, which is what lets a
// block's barrier stand for all of its elements (see peer_allreduce.cu).
constexpr int kPeerBlocks = 36;
constexpr int kPeerThreads = 512;

// Flags in one rank's device memory: start[b][r] is written by rank r when its block b has
// staged call k (value k + 1). epoch[b] is how many calls this rank's block b has finished.
struct PeerSignals {
  uint32_t start[kPeerBlocks][kPeerMaxRanks];
  uint32_t epoch[kPeerBlocks];
};

// What every rank's kernel needs: all ranks' staging buffers (2 x capacity floats each, two
// halves used in turn) and flags, by rank.
struct PeerSet {
  float* staging[kPeerMaxRanks];
  PeerSignals* signals[kPeerMaxRanks];
  size_t capacity;  // floats per half
  int rank;
  int ranks;
};

// Whether the peer kernels can carry a message of n floats between these buffers: it fits a
// staging half and both ends are 16-byte aligned with n a multiple of 4 (float4 accesses).
inline bool peerCanCarry(const PeerSet& set, const void* a, const void* b, size_t n) {
  return n <= set.capacity && n % 4 == 0 && reinterpret_cast<uintptr_t>(a) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(b) % 16 == 0;
}

// data[i] = the sum over ranks of each rank's data[i], in place; n <= capacity. Every rank
// launches it with the same n, in the same order relative to its other peer collectives.
void peerAllReduceSum(const PeerSet& set, float* data, size_t n, cudaStream_t s);
// out[r * n + i] = rank r's part[i]; n <= capacity.
void peerAllGather(const PeerSet& set, const float* part, size_t n, float* out, cudaStream_t s);

}  // namespace cuda
}  // namespace troupe
