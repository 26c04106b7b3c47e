// Device pieces the attention kernels share: cp.async copies of key tiles from the paged cache
// into shared memory, ldmatrix, bf16 packing, and the tensor-core kernels' tile shape.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <utility>

#include "cuda/kernels.h"

namespace troupe {
namespace cuda {
namespace attention_ops {

// 16 bytes from global to shared memory, asynchronously; zeros when !ok (nothing is read).
__device__ __forceinline__ void copy16(bf16_t* dst, const bf16_t* src, bool ok) {
#if __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(src), "r"(ok ? 16 : 0) : "memory");
#else
  *reinterpret_cast<uint4*>(dst) = ok ? *reinterpret_cast<const uint4*>(src) : make_uint4(0, 0, 0, 0);
#endif
}
__device__ __forceinline__ void copyCommit() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void copyWait() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}

// Keys [k0, k0 + kKeys) of one KV head of a sequence (block table bt) into rows of kPitch values
// at sk and sv; rows past `end` are zeros. The block's threads share the copies.
template <int D, int kKeys, int kThreadCount, int kPitch>
__device__ __forceinline__ void fetchKeys(const bf16_t* kCache, const bf16_t* vCache, const int32_t* bt, int kvHeads,
                                          int kvHead, int blockSize, int k0, int end, bf16_t* sk, bf16_t* sv) {
  constexpr int kChunks = kKeys * (D / 8);  // 16-byte pieces of K
  static_assert(kChunks % kThreadCount == 0, "every thread copies as many pieces");
#pragma unroll
  for (int i = 0; i < kChunks / kThreadCount; ++i) {
    const int c = threadIdx.x + i * kThreadCount;
    const int key = c / (D / 8), part = c % (D / 8);
    const int k = k0 + key;
    const bool ok = k < end;
    const size_t off =
        ok ? ((static_cast<size_t>(bt[k / blockSize]) * kvHeads + kvHead) * blockSize + k % blockSize) * D + part * 8
           : 0;
    copy16(sk + key * kPitch + part * 8, kCache + off, ok);
    copy16(sv + key * kPitch + part * 8, vCache + off, ok);
  }
}

// A decode token's share of its visible keys: split s of `splits` over [lo, ctx), where ctx is
// its position + 1 and lo the start of its sliding window (0 without one), in tiles of kKeys; and
// its sequence's block table. A split past the keys has no tiles.
struct SplitKeys {
  int begin, end, tiles;
  const int32_t* bt;
};
template <int kKeys>
__device__ __forceinline__ SplitKeys splitKeys(const TokenMap& map, const AttnShape& a, int t, int s, int splits) {
  const int ctx = map.positions[t] + 1;
  const int lo = a.window > 0 ? max(0, ctx - a.window) : 0;
  const int len = (ctx - lo + splits - 1) / splits;
  const int begin = lo + s * len;
  const int end = min(ctx, begin + len);
  return {begin, end, begin < end ? (end - begin + kKeys - 1) / kKeys : 0,
          map.blockTables + static_cast<size_t>(map.tokenSeq[t]) * map.pitch};
}

// The tile pipeline: before the loop, the first kStages - 1 tiles go on their way
// (fetch(tile, stage) issues one tile's copies); at the top of iteration `tile`, the tile
// kStages - 1 ahead goes on its way and this one is waited for and made visible to the block.
// Every call commits one group (empty past the last tile), so waiting for all but the newest
// kStages - 1 groups waits for this tile. The loop body ends with __syncthreads(): the next
// iteration's fetch overwrites the stage it read.
template <int kStages, typename Fetch>
__device__ __forceinline__ void prefetchTiles(int tiles, Fetch&& fetch) {
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < tiles) fetch(i, i);
    copyCommit();
  }
}
template <int kStages, typename Fetch>
__device__ __forceinline__ void awaitTile(int tile, int tiles, Fetch&& fetch) {
  const int ahead = tile + kStages - 1;
  if (ahead < tiles) fetch(ahead, ahead % kStages);
  copyCommit();
  copyWait<kStages - 1>();
  __syncthreads();
}

// Four 8x8 bf16 matrices: lane l gives the address of row l % 8 of matrix l / 8, and receives
// of each matrix (kTransposed: of its transpose) row l / 4, columns 2 (l % 4) and + 1 (an mma
// operand fragment).
template <bool kTransposed = false>
__device__ __forceinline__ void ldmatrix(const bf16_t* p, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
#if __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
  if constexpr (kTransposed)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(s));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(s));
#else
  __trap();
#endif
}

__device__ __forceinline__ uint32_t packBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// The tensor-core kernels: four warps, tiles of 64 keys, two in flight, in shared rows of
// head_dim + 8 values (ldmatrix's eight row addresses then fall in different banks).
constexpr int kMmaWarps = 4;
constexpr int kMmaThreads = kMmaWarps * 32;
constexpr int kMmaKeys = 64;
constexpr int kMmaStages = 2;
template <int D>
constexpr int kMmaPitch = D + 8;
template <int D>
constexpr size_t kMmaSmemBytes = static_cast<size_t>(kMmaStages) * 2 * kMmaKeys * kMmaPitch<D> * sizeof(bf16_t);

// Whether the current device runs the tensor-core kernels (mma.sync bf16 and cp.async: 8.0 and up).
inline bool mmaCapableDevice() {
  int device = 0, major = 0;
  return cudaGetDevice(&device) == cudaSuccess &&
         cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess && major >= 8;
}

template <typename Launcher, template <int, int> class Kernel, int D, int... G>
Launcher prepareMmaGroup(int group, std::integer_sequence<int, G...>) {
  const Launcher launches[] = {&Kernel<D, G + 1>::launch...};
  const void* functions[] = {Kernel<D, G + 1>::function()...};
  if (cudaFuncSetAttribute(functions[group - 1], cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(Kernel<D, 1>::kSmemBytes)) != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  return launches[group - 1];
}

// A tensor-core kernel's launcher for head_dim 64 or 128 and a query group of 1 to 8 on the
// current device, its shared-memory limit raised (outside any graph capture); nullptr where it
// does not apply. Kernel<D, G> gives `static void launch(...)` of type Launcher,
// `static const void* function()`, the kernel, and kSmemBytes, the dynamic shared memory it takes.
template <typename Launcher, template <int, int> class Kernel>
Launcher prepareMmaKernel(int headDim, int group) {
  if (!mmaCapableDevice() || group < 1 || group > 8) return nullptr;
  const auto groups = std::make_integer_sequence<int, 8>{};
  if (headDim == 64) return prepareMmaGroup<Launcher, Kernel, 64>(group, groups);
  if (headDim == 128) return prepareMmaGroup<Launcher, Kernel, 128>(group, groups);
  return nullptr;
}

}  // namespace attention_ops
}  // namespace cuda
}  // namespace troupe
