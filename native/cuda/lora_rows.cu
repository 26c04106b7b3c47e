// The LoRA row shrink of the fused layout (lora_fused.h): a decode step's projection input rows,
// made and extended with their adapter's scaled shrink outputs in one launch. Grid: tokens x cuts;
// each block remakes its token's row in shared memory (the norm's reduction included: a few tens
// of KB from L2), copies its cut of the row and zeroes its cut of the padding, then its warps take
// every cuts-th of the token's shrink outputs, a warp each: A's row (bf16; asked into L2 when
// the block starts, so it arrives while the row is made) dotted with the row in f32. Dropping the separate shrink and augment kernels and
// the second GEMM over the padding is the point: a decode step's LoRA cost was their launches.
#include <cuda_bf16.h>

#include <algorithm>
#include <cub/block/block_reduce.cuh>

#include "cuda/bf16_dot.cuh"
#include "cuda/device.h"
#include "cuda/lora_fused.h"

namespace troupe {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kModules = 7;                 // ranks is [slot][7 modules]
constexpr int kInFlight = 8;                // A pieces a lane loads before it uses them
constexpr size_t kDefaultSmem = 48 * 1024;  // shared memory a kernel gets without opting in
constexpr size_t kMaxRowSmem = 112 * 1024;  // rows of up to 57,344 features

__device__ __forceinline__ bf16_t toB(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }

template <RowSource S>
__global__ void __launch_bounds__(kThreads)
    rowShrinkKernel(RowInput in, LoraSlices sl, int slots, int pad, const int32_t* rowSlot, const int32_t* ranks,
                    const float* scaling, bf16_t* xa, int ldxa) {
  extern __shared__ __align__(16) unsigned char smem[];
  bf16_t* xs = reinterpret_cast<bf16_t*>(smem);
  const int t = blockIdx.x, cut = blockIdx.y, cuts = gridDim.y, n = sl.in;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int slot = rowSlot[t], R = sl.maxRank, block = slots * R;
  // The A rows this block's warps dot with start on their way to L2 now, and arrive while the
  // row is made: otherwise each warp would wait on memory once the row is ready.
  if (slot >= 0) {
    for (int i = cut + cuts * warp; i < sl.count * R; i += cuts * kWarps) {
      const int j = i / R, r = i % R;
      if (r >= ranks[slot * kModules + sl.module[j]]) continue;
      const char* a = reinterpret_cast<const char*>(sl.a[j] + slot * sl.aSlotStride[j] + static_cast<size_t>(r) * n);
      for (int off = lane * 128; off < n * 2; off += 32 * 128) asm volatile("prefetch.global.L2 [%0];" ::"l"(a + off));
    }
  }
  // The row, rounded to bf16 as rmsnorm / siluMul write it (the same expressions).
  if constexpr (S == RowSource::kNorm) {
    const float* x = in.f32 + static_cast<size_t>(t) * n;
    float ss = 0;
    for (int i = threadIdx.x; i < n; i += kThreads) ss += x[i] * x[i];
    using Reduce = cub::BlockReduce<float, kThreads>;
    __shared__ typename Reduce::TempStorage tmp;
    __shared__ float scale;
    const float total = Reduce(tmp).Sum(ss);
    if (threadIdx.x == 0) scale = 1.0f / sqrtf(total / n + in.eps);
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += kThreads) xs[i] = toB(in.normW[i] * (x[i] * scale));
  } else if constexpr (S == RowSource::kSiluMul) {
    const float* g = in.f32 + static_cast<size_t>(t) * 2 * n;
    for (int i = threadIdx.x; i < n; i += kThreads) {
      const float x = g[i];
      xs[i] = toB(x / (1.0f + __expf(-x)) * g[n + i]);
    }
  } else {
    const uint4* src = reinterpret_cast<const uint4*>(in.bf16 + static_cast<size_t>(t) * in.ld);
    for (int c = threadIdx.x; c < n / 8; c += kThreads) reinterpret_cast<uint4*>(xs)[c] = __ldg(src + c);
  }
  __syncthreads();
  bf16_t* row = xa + static_cast<size_t>(t) * ldxa;
  const int pieces = n / 8, perCut = (pieces + cuts - 1) / cuts;
  for (int c = cut * perCut + threadIdx.x; c < min(pieces, (cut + 1) * perCut); c += kThreads)
    reinterpret_cast<uint4*>(row)[c] = reinterpret_cast<const uint4*>(xs)[c];
  // Padding columns: module block j, slot k, rank r at in + j S R + k R + r. The token's own
  // slot's columns of the modules here are the warps' below (zero past its rank); the rest zero.
  const int padCut = (pad + cuts - 1) / cuts;
  for (int c = cut * padCut + threadIdx.x; c < min(pad, (cut + 1) * padCut); c += kThreads) {
    const int j = c / block, k = (c % block) / R;
    if (!(slot >= 0 && k == slot && j < sl.count)) row[n + c] = 0;
  }
  if (slot < 0) return;
  const float scale = scaling[slot];
  for (int i = cut + cuts * warp; i < sl.count * R; i += cuts * kWarps) {
    const int j = i / R, r = i % R;
    float v = 0;
    if (r < ranks[slot * kModules + sl.module[j]]) {
      const uint4* a = reinterpret_cast<const uint4*>(sl.a[j] + slot * sl.aSlotStride[j] + static_cast<size_t>(r) * n);
      // Eight 16-byte pieces a lane in flight at once.
      for (int c0 = lane; c0 < pieces; c0 += 32 * kInFlight) {
        uint4 av[kInFlight];
#pragma unroll
        for (int u = 0; u < kInFlight; ++u)
          av[u] = c0 + 32 * u < pieces ? __ldg(a + c0 + 32 * u) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int u = 0; u < kInFlight; ++u)
          if (c0 + 32 * u < pieces) dot8(av[u], reinterpret_cast<const uint4*>(xs)[c0 + 32 * u], v);
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      v *= scale;
    }
    if (lane == 0) row[n + j * block + slot * R + r] = toB(v);
  }
}

template <RowSource S>
void launch(const RowInput& row, const LoraSlices& sl, int slots, int pad, const int32_t* rowSlot, const int32_t* ranks,
            const float* scaling, int T, int cuts, bf16_t* xa, int ldxa, cudaStream_t st) {
  rowShrinkKernel<S><<<dim3(T, cuts), kThreads, static_cast<size_t>(sl.in) * 2, st>>>(row, sl, slots, pad, rowSlot,
                                                                                      ranks, scaling, xa, ldxa);
}

}  // namespace

bool rowShrinkSupported(int in, int ldxa) {
  return in % 8 == 0 && ldxa % 8 == 0 && static_cast<size_t>(in) * 2 <= kMaxRowSmem;
}

void prepareRowShrink(int maxIn) {
  const int bytes = static_cast<int>(std::min(static_cast<size_t>(maxIn) * 2, kMaxRowSmem));
  if (static_cast<size_t>(bytes) <= kDefaultSmem) return;
  check(cudaFuncSetAttribute(rowShrinkKernel<RowSource::kNorm>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
        "row shrink shared memory");
  check(cudaFuncSetAttribute(rowShrinkKernel<RowSource::kSiluMul>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
        "row shrink shared memory");
  check(cudaFuncSetAttribute(rowShrinkKernel<RowSource::kCopy>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
        "row shrink shared memory");
}

void loraRowShrink(const RowInput& row, const LoraSlices& sl, int slots, int pad, const int32_t* rowSlot,
                   const int32_t* ranks, const float* scaling, int T, bf16_t* xa, int ldxa, int sms, cudaStream_t st) {
  if (T == 0) return;
  // Two blocks an SM over the step, at least one shrink output a warp.
  const int outputs = sl.count * sl.maxRank;
  const int cuts = std::clamp((2 * sms + T - 1) / T, 1, std::max(1, outputs / kWarps));
  switch (row.source) {
    case RowSource::kNorm:
      launch<RowSource::kNorm>(row, sl, slots, pad, rowSlot, ranks, scaling, T, cuts, xa, ldxa, st);
      break;
    case RowSource::kSiluMul:
      launch<RowSource::kSiluMul>(row, sl, slots, pad, rowSlot, ranks, scaling, T, cuts, xa, ldxa, st);
      break;
    case RowSource::kCopy:
      launch<RowSource::kCopy>(row, sl, slots, pad, rowSlot, ranks, scaling, T, cuts, xa, ldxa, st);
      break;
  }
  check(cudaGetLastError(), "LoRA row shrink launch");
}

}  // namespace cuda
}  // namespace troupe
