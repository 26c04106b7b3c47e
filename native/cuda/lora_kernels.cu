// Tiled CUDA-core kernels for the LoRA shrink and expand. A block takes one 16-token tile of one
// item (tokens of one adapter), one slice, and one piece of the work: kLoraKSplit features of the
// input for the shrink, 128 features of the output for the expand. Factor tiles are staged in
// shared memory, so a tile of tokens of one adapter reads each factor once (why csgmv gathers a
// slot's decode tokens across sequences), and only the slot's own rank is computed.
#include <cuda_bf16.h>

#include "cuda/lora_kernels.h"
#include "cuda/lora_tile.cuh"

namespace troupe {
namespace cuda {

namespace {

constexpr int kTok = kLoraTileTokens;
constexpr int kRankTile = 64;
constexpr int kOutTile = 128;
constexpr int kThreads = 256;

__device__ __forceinline__ float bf(bf16_t v) { return __uint_as_float(static_cast<uint32_t>(v) << 16); }

// Copies `rows` rows of n bf16 values (row r from src(r)) to dst[r][0, n): 16 bytes at a time
// when the rows allow it, spread over the whole block.
constexpr int kPitch = kLoraKSplit + 8;

template <class Src>
__device__ __forceinline__ void stage(Src src, bf16_t (*dst)[kPitch], int rows, int n, int tid, bool vec) {
  if (vec) {
    const int per = n / 8;
    for (int e = tid; e < rows * per; e += kThreads) {
      reinterpret_cast<uint4*>(dst[e / per])[e % per] = reinterpret_cast<const uint4*>(src(e / per))[e % per];
    }
  } else {
    for (int e = tid; e < rows * n; e += kThreads) dst[e / n][e % n] = src(e / n)[e % n];
  }
}

// One round trip per block: the tile's x rows and the slot's A rows over one input piece go to
// shared memory together, then each thread forms up to four (token, rank) dot products.
__global__ void __launch_bounds__(kThreads) shrinkKernel(LoraItems items, LoraSlices sl, const int32_t* ranks,
                                                         const bf16_t* x, int ldx, float* mid, size_t midSlab) {
  const int s = blockIdx.z % sl.count, piece = blockIdx.z / sl.count;
  LoraTile t;
  if (!loraTileOf(items, blockIdx.x, blockIdx.y, t)) return;
  const int rank = ranks[t.slot * 7 + sl.module[s]];
  if (rank == 0) return;
  const bf16_t* A = sl.a[s] + t.slot * sl.aSlotStride[s];
  const int in = sl.in, midPitch = sl.count * sl.maxRank;
  const int k0 = piece * kLoraKSplit, kn = min(kLoraKSplit, in - k0);
  const bool vec = (in % 8 == 0) && (ldx % 8 == 0);
  // Rows padded by 16 bytes: the 16 ranks a warp reads at one k then fall in different banks.
  __shared__ __align__(16) bf16_t xs[kTok][kPitch];
  __shared__ __align__(16) bf16_t as[kRankTile][kPitch];
  __shared__ int tok[kTok];
  const int tid = threadIdx.x, ti = tid / 16, rj = tid % 16;
  if (tid < kTok) tok[tid] = tid < t.count ? items.perm[t.begin + tid] : -1;
  __syncthreads();
  stage([&](int i) { return x + static_cast<size_t>(tok[i]) * ldx + k0; }, xs, t.count, kn, tid, vec);
  for (int r0 = 0; r0 < rank; r0 += kRankTile) {
    const int rn = min(kRankTile, rank - r0);
    if (r0 > 0) __syncthreads();
    stage([&](int r) { return A + static_cast<size_t>(r0 + r) * in + k0; }, as, rn, kn, tid, vec);
    __syncthreads();
    if (ti >= t.count) continue;
    float* out = mid + piece * midSlab + static_cast<size_t>(tok[ti]) * midPitch + s * sl.maxRank + r0;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int r = rj + 16 * j;
      if (r >= rn) break;
      float a = 0;
      const __nv_bfloat162* xr = reinterpret_cast<const __nv_bfloat162*>(xs[ti]);
      const __nv_bfloat162* ar = reinterpret_cast<const __nv_bfloat162*>(as[r]);
#pragma unroll 8
      for (int k = 0; k < kn / 2; ++k) {
        const float2 xv = __bfloat1622float2(xr[k]), av = __bfloat1622float2(ar[k]);
        a = fmaf(xv.x, av.x, a);
        a = fmaf(xv.y, av.y, a);
      }
      if (kn % 2) a = fmaf(bf(xs[ti][kn - 1]), bf(as[r][kn - 1]), a);
      out[r] = a;
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    expandKernel(LoraItems items, LoraSlices sl, const int32_t* ranks, const float* scaling, const float* mid,
                 size_t midSlab, int pieces, float* y, int ldy) {
  const int s = blockIdx.z % sl.count, o0 = (blockIdx.z / sl.count) * kOutTile;
  if (o0 >= sl.out[s]) return;
  LoraTile t;
  if (!loraTileOf(items, blockIdx.x, blockIdx.y, t)) return;
  const int rank = ranks[t.slot * 7 + sl.module[s]];
  if (rank == 0) return;
  const float scale = scaling[t.slot];
  const bf16_t* B = sl.b[s] + t.slot * sl.bSlotStride[s];
  const int out = sl.out[s], midPitch = sl.count * sl.maxRank;
  __shared__ float ms[kTok][kRankTile + 1];
  __shared__ float bs[kOutTile][kRankTile + 1];
  __shared__ int tok[kTok];
  const int tid = threadIdx.x, ti = tid / 16, oj = tid % 16;
  if (tid < kTok) tok[tid] = tid < t.count ? items.perm[t.begin + tid] : -1;
  float acc[kOutTile / 16];
#pragma unroll
  for (int j = 0; j < kOutTile / 16; ++j) acc[j] = 0;
  for (int r0 = 0; r0 < rank; r0 += kRankTile) {
    const int rn = min(kRankTile, rank - r0);
    __syncthreads();
    for (int e = tid; e < kTok * rn; e += kThreads) {
      const int i = e / rn, r = e % rn;
      float v = 0;
      if (tok[i] >= 0) {
        const float* m = mid + static_cast<size_t>(tok[i]) * midPitch + s * sl.maxRank + r0 + r;
        for (int p = 0; p < pieces; ++p) v += m[p * midSlab];
      }
      ms[i][r] = v;
    }
    for (int e = tid; e < kOutTile * rn; e += kThreads) {
      const int o = e / rn, r = e % rn;
      bs[o][r] = o0 + o < out ? bf(B[static_cast<size_t>(o0 + o) * sl.bLd[s] + r0 + r]) : 0.0f;
    }
    __syncthreads();
    for (int r = 0; r < rn; ++r) {
      const float mv = ms[ti][r];
#pragma unroll
      for (int j = 0; j < kOutTile / 16; ++j) acc[j] = fmaf(mv, bs[oj + 16 * j][r], acc[j]);
    }
  }
  if (ti < t.count) {
    float* yr = y + static_cast<size_t>(tok[ti]) * ldy + sl.outOffset[s];
#pragma unroll
    for (int j = 0; j < kOutTile / 16; ++j) {
      const int o = o0 + oj + 16 * j;
      if (o < out) yr[o] += scale * acc[j];
    }
  }
}

}  // namespace

void loraShrink(const LoraItems& items, const LoraSlices& sl, const int32_t* ranks, const bf16_t* x, int ldx,
                float* mid, size_t midSlab, cudaStream_t st) {
  if (items.gridItems == 0 || sl.count == 0) return;
  const dim3 grid(items.gridItems, items.gridTiles, sl.count * loraKPieces(sl.in));
  shrinkKernel<<<grid, kThreads, 0, st>>>(items, sl, ranks, x, ldx, mid, midSlab);
}

void loraExpand(const LoraItems& items, const LoraSlices& sl, const int32_t* ranks, const float* scaling,
                const float* mid, size_t midSlab, float* y, int ldy, cudaStream_t st) {
  if (items.gridItems == 0 || sl.count == 0) return;
  int maxOut = 0;
  for (int s = 0; s < sl.count; ++s) maxOut = sl.out[s] > maxOut ? sl.out[s] : maxOut;
  const dim3 grid(items.gridItems, items.gridTiles, sl.count * ((maxOut + kOutTile - 1) / kOutTile));
  expandKernel<<<grid, kThreads, 0, st>>>(items, sl, ranks, scaling, mid, midSlab, loraKPieces(sl.in), y, ldy);
}

}  // namespace cuda
}  // namespace troupe
