// Tiled CUDA-core kernels for the LoRA shrink and expand. A block takes one (item, slice) and
// walks the item's tokens 16 at a time; A or B tiles are staged in shared memory, so a chunk of
// tokens of one adapter reads each factor once (why csgmv groups a slot's decode tokens).
#include <cuda_bf16.h>

#include "cuda/lora_kernels.h"

namespace troupe {
namespace cuda {

namespace {

constexpr int kTok = 16;     // tokens per tile
constexpr int kRankTile = 64;
constexpr int kKTile = 64;
constexpr int kOutTile = 128;
constexpr int kThreads = 256;

__device__ __forceinline__ float bf(bf16_t v) { return __uint_as_float(static_cast<uint32_t>(v) << 16); }

__global__ void __launch_bounds__(kThreads) shrinkKernel(LoraItems items, LoraSlices sl, const int32_t* ranks,
                                                         const bf16_t* x, int ldx, float* mid) {
  const int item = blockIdx.x, s = blockIdx.y;
  if (item >= *items.numItems) return;
  const int slot = items.itemSlot[item];
  const int rank = ranks[slot * 7 + sl.module[s]];
  if (rank == 0) return;
  const int begin = items.itemStart[item], end = items.itemStart[item + 1];
  const bf16_t* A = sl.a[s] + slot * sl.aSlotStride[s];
  const int in = sl.in, midPitch = sl.count * sl.maxRank;
  __shared__ float xs[kTok][kKTile + 1];
  __shared__ float as[kRankTile][kKTile + 1];
  __shared__ int tok[kTok];
  const int tid = threadIdx.x, ti = tid / 16, rj = tid % 16;
  for (int t0 = begin; t0 < end; t0 += kTok) {
    const int nt = min(kTok, end - t0);
    __syncthreads();
    if (tid < kTok) tok[tid] = tid < nt ? items.perm[t0 + tid] : -1;
    for (int r0 = 0; r0 < rank; r0 += kRankTile) {
      float acc[4] = {0, 0, 0, 0};
      for (int k0 = 0; k0 < in; k0 += kKTile) {
        __syncthreads();
        for (int e = tid; e < kTok * kKTile; e += kThreads) {
          const int i = e / kKTile, k = e % kKTile;
          xs[i][k] = (tok[i] >= 0 && k0 + k < in) ? bf(x[static_cast<size_t>(tok[i]) * ldx + k0 + k]) : 0.0f;
        }
        for (int e = tid; e < kRankTile * kKTile; e += kThreads) {
          const int r = e / kKTile, k = e % kKTile;
          as[r][k] = (r0 + r < rank && k0 + k < in) ? bf(A[static_cast<size_t>(r0 + r) * in + k0 + k]) : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < kKTile; ++k) {
          const float xv = xs[ti][k];
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[j] = fmaf(xv, as[rj + 16 * j][k], acc[j]);
        }
      }
      if (ti < nt) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int r = r0 + rj + 16 * j;
          if (r < rank) mid[static_cast<size_t>(tok[ti]) * midPitch + s * sl.maxRank + r] = acc[j];
        }
      }
    }
  }
}

__global__ void __launch_bounds__(kThreads) expandKernel(LoraItems items, LoraSlices sl, const int32_t* ranks,
                                                         const float* scaling, const float* mid, float* y, int ldy) {
  const int item = blockIdx.x, o0 = blockIdx.y * kOutTile, s = blockIdx.z;
  if (item >= *items.numItems || o0 >= sl.out[s]) return;
  const int slot = items.itemSlot[item];
  const int rank = ranks[slot * 7 + sl.module[s]];
  if (rank == 0) return;
  const float scale = scaling[slot];
  const int begin = items.itemStart[item], end = items.itemStart[item + 1];
  const bf16_t* B = sl.b[s] + slot * sl.bSlotStride[s];
  const int out = sl.out[s], midPitch = sl.count * sl.maxRank;
  __shared__ float ms[kTok][kRankTile + 1];
  __shared__ float bs[kOutTile][kRankTile + 1];
  __shared__ int tok[kTok];
  const int tid = threadIdx.x, ti = tid / 16, oj = tid % 16;
  for (int t0 = begin; t0 < end; t0 += kTok) {
    const int nt = min(kTok, end - t0);
    __syncthreads();
    if (tid < kTok) tok[tid] = tid < nt ? items.perm[t0 + tid] : -1;
    float acc[kOutTile / 16];
#pragma unroll
    for (int j = 0; j < kOutTile / 16; ++j) acc[j] = 0;
    for (int r0 = 0; r0 < rank; r0 += kRankTile) {
      __syncthreads();
      for (int e = tid; e < kTok * kRankTile; e += kThreads) {
        const int i = e / kRankTile, r = e % kRankTile;
        ms[i][r] = (tok[i] >= 0 && r0 + r < rank) ? mid[static_cast<size_t>(tok[i]) * midPitch + s * sl.maxRank + r0 + r]
                                                  : 0.0f;
      }
      for (int e = tid; e < kOutTile * kRankTile; e += kThreads) {
        const int o = e / kRankTile, r = e % kRankTile;
        bs[o][r] = (o0 + o < out && r0 + r < rank) ? bf(B[static_cast<size_t>(o0 + o) * sl.maxRank + r0 + r]) : 0.0f;
      }
      __syncthreads();
      const int rn = min(kRankTile, rank - r0);
      for (int r = 0; r < rn; ++r) {
        const float mv = ms[ti][r];
#pragma unroll
        for (int j = 0; j < kOutTile / 16; ++j) acc[j] = fmaf(mv, bs[oj + 16 * j][r], acc[j]);
      }
    }
    if (ti < nt) {
#pragma unroll
      for (int j = 0; j < kOutTile / 16; ++j) {
        const int o = o0 + oj + 16 * j;
        if (o < out) y[static_cast<size_t>(tok[ti]) * ldy + sl.outOffset[s] + o] += scale * acc[j];
      }
    }
  }
}

}  // namespace

void loraShrink(const LoraItems& items, const LoraSlices& sl, const int32_t* ranks, const bf16_t* x, int ldx,
                float* mid, cudaStream_t st) {
  if (items.gridItems == 0 || sl.count == 0) return;
  shrinkKernel<<<dim3(items.gridItems, sl.count), kThreads, 0, st>>>(items, sl, ranks, x, ldx, mid);
}

void loraExpand(const LoraItems& items, const LoraSlices& sl, const int32_t* ranks, const float* scaling,
                const float* mid, float* y, int ldy, cudaStream_t st) {
  if (items.gridItems == 0 || sl.count == 0) return;
  int maxOut = 0;
  for (int s = 0; s < sl.count; ++s) maxOut = sl.out[s] > maxOut ? sl.out[s] : maxOut;
  expandKernel<<<dim3(items.gridItems, (maxOut + kOutTile - 1) / kOutTile, sl.count), kThreads, 0, st>>>(
      items, sl, ranks, scaling, mid, y, ldy);
}

}  // namespace cuda
}  // namespace troupe
