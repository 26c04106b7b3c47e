#include <stdexcept>
#include <string>

#include "cuda/peer_allreduce.h"

namespace troupe {
namespace cuda {
namespace {

// A peer that never arrives (its thread died mid-step) would keep the GPU spinning forever; past
// this wait the kernel traps, the step fails with a CUDA error and the engine reports the rank
// dead instead of hanging. Far above any legitimate wait: ranks launch the same step together.
constexpr uint64_t kTimeoutNs = 60ull * 1000 * 1000 * 1000;

__device__ __forceinline__ void storeRelease(uint32_t* p, uint32_t v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ uint32_t loadAcquire(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ uint64_t nowNs() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// Block b of every rank meets here for call `flag`: thread r tells rank r that this rank's
// block b has staged its elements, then waits for rank r to say the same. The block's writes
// before the first __syncthreads are ordered before the release by the fence's cumulativity,
// and the reads after the second see every peer's staged elements.
__device__ void meet(const PeerSet& set, int b, uint32_t flag) {
  __syncthreads();
  if (threadIdx.x < set.ranks) {
    const int peer = threadIdx.x;
    __threadfence_system();
    storeRelease(&set.signals[peer]->start[b][set.rank], flag);
    const uint32_t* arrived = &set.signals[set.rank]->start[b][peer];
    uint64_t since = 0;
    // Flags only grow (modulo 2^32), and a fast peer may already have announced the next call.
    for (uint32_t spins = 1; static_cast<int32_t>(loadAcquire(arrived) - flag) < 0; ++spins) {
      if (spins % 4096 == 0) {
        const uint64_t t = nowNs();
        if (since == 0) {
          since = t;
        } else if (t - since > kTimeoutNs) {
          __trap();
        }
      }
    }
  }
  __syncthreads();
}

__device__ __forceinline__ float4 add(float4 a, float4 b) {
  return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}

// n float4s. Block b always owns float4 i with (i / kPeerThreads) % kPeerBlocks == b, whatever n
// is, and uses staging half (epoch & 1). So block b of a rank rewrites a half only two calls after
// it last wrote it, and by then it has met every peer's block b in the call between, which each
// peer enters only after it has finished reading that half: one barrier per call is enough.
template <bool kGather>
__global__ void __launch_bounds__(kPeerThreads) peerKernel(PeerSet set, const float4* in, float4* out, size_t n) {
  const int b = blockIdx.x;
  PeerSignals* self = set.signals[set.rank];
  const uint32_t epoch = self->epoch[b];
  const size_t half = (epoch & 1) ? set.capacity : 0;
  float4* mine = reinterpret_cast<float4*>(set.staging[set.rank] + half);
  const size_t stride = static_cast<size_t>(kPeerBlocks) * kPeerThreads;
  const size_t first = static_cast<size_t>(b) * kPeerThreads + threadIdx.x;
  for (size_t i = first; i < n; i += stride) mine[i] = in[i];
  meet(set, b, epoch + 1);
  for (size_t i = first; i < n; i += stride) {
    // Through L2, not L1: a peer's half was read two calls ago at the same address.
    if (kGather) {
      for (int r = 0; r < set.ranks; ++r) {
        out[r * n + i] = __ldcv(reinterpret_cast<const float4*>(set.staging[r] + half) + i);
      }
    } else {
      // Rank order, so every rank adds the same numbers the same way.
      float4 acc = __ldcv(reinterpret_cast<const float4*>(set.staging[0] + half) + i);
      for (int r = 1; r < set.ranks; ++r) {
        acc = add(acc, __ldcv(reinterpret_cast<const float4*>(set.staging[r] + half) + i));
      }
      out[i] = acc;
    }
  }
  // Every thread read epoch before meet()'s barriers, so no one sees this call's update.
  if (threadIdx.x == 0) self->epoch[b] = epoch + 1;
}

void checkShape(const PeerSet& set, const void* a, const void* b, size_t n) {
  // The caller (PeerComm) routes anything else to its other collective.
  if (!peerCanCarry(set, a, b, n)) {
    throw std::logic_error("peer collective: a message of " + std::to_string(n) +
                           " floats that is not 16-byte aligned or exceeds the staging buffer");
  }
}

void launched(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + " launch failed: " + cudaGetErrorString(e));
}

}  // namespace

void peerAllReduceSum(const PeerSet& set, float* data, size_t n, cudaStream_t s) {
  checkShape(set, data, data, n);
  peerKernel<false><<<kPeerBlocks, kPeerThreads, 0, s>>>(set, reinterpret_cast<const float4*>(data),
                                                         reinterpret_cast<float4*>(data), n / 4);
  launched("peer all-reduce");
}

void peerAllGather(const PeerSet& set, const float* part, size_t n, float* out, cudaStream_t s) {
  checkShape(set, part, out, n);
  peerKernel<true><<<kPeerBlocks, kPeerThreads, 0, s>>>(set, reinterpret_cast<const float4*>(part),
                                                        reinterpret_cast<float4*>(out), n / 4);
  launched("peer all-gather");
}

}  // namespace cuda
}  // namespace troupe
