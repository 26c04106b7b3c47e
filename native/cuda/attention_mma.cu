// Decode attention on tensor cores, for head_dim 64 and 128 with up to 8 query heads per KV head.
// A block takes one (token, KV head, context split), as the CUDA-core kernel does, and walks the
// split's keys in tiles of 64 that cp.async copies into shared memory, two tiles in flight. Each of
// its four warps takes 16 keys of a tile: S = Q K^T for the group's query heads (rows of the mma's 16;
// the rest zero) is two n-tiles of mmas over head_dim, the online softmax runs on S's
// fragments, and P (bf16, as FlashAttention rounds it) multiplies V with the accumulator
// fragments reused as the A operand, V's fragments loaded transposed by ldmatrix. The warps' partial
// softmaxes meet in shared memory in a fixed order, and the splits are combined by attention.cu's
// kernel: the same partial layout as the CUDA-core kernel. Per key the CUDA-core kernel issues some
// 75 instructions a warp; this one about a tenth of that, so the cache copy bounds it.
//
// Fragments follow lora_mma_ops.cuh (mma.m16n8k16, lane = 4 g + q). For Q K^T, K (head_dim) is
// summed over, so lane q loads 8 consecutive dimensions of its rows with one 16-byte load and
// feeds two mmas from it, as the LoRA shrink does; P V uses the documented layouts, since P comes
// straight from S's C fragments.
#include <cuda_bf16.h>

#include "cuda/attention_mma_finish.cuh"
#include "cuda/attention_ops.cuh"
#include "cuda/kernels.h"
#include "cuda/lora_mma_ops.cuh"
#include "cuda/pdl.cuh"

namespace troupe {
namespace cuda {

namespace {

using mma_ops::mma;

using namespace attention_ops;
constexpr int kWarps = kMmaWarps;
constexpr int kThreads = kMmaThreads;
constexpr int kKeys = kMmaKeys;
constexpr int kStages = kMmaStages;

template <int D, int G>
__global__ void __launch_bounds__(kThreads)
    decodeMmaKernel(const bf16_t* q, const bf16_t* kCache, const bf16_t* vCache, const int32_t* idx, TokenMap map,
                    AttnShape a, int splits, float scale, float* partial, float* partialMl, bf16_t* out,
                    OLoraEpilogue epi) {
  static_assert(D % 32 == 0 && G >= 1 && G <= 8, "head_dim in 32s, at most 8 rows of the mma used");
  pdlLaunchDependents();  // a LoRA item shrink of the o projection may start (pdl.cuh)
  constexpr int P = kMmaPitch<D>;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16_t* sk = reinterpret_cast<bf16_t*>(smem);  // [kStages][kKeys][P]
  bf16_t* sv = sk + kStages * kKeys * P;

  const int local = blockIdx.x, g = blockIdx.y, s = blockIdx.z;
  const int t = idx[local];
  const int H = a.heads;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gi = lane >> 2, qi = lane & 3;
  const int KVH = a.kvHeads, bs = a.blockSize;

  // Q's A fragments for every 32-dimension chunk: rows gi (a query head of the group, or zero past
  // it) and gi + 8 (always past it).
  uint32_t qa[D / 32][4];
  {
    const bool row = gi < G;
    const bf16_t* qr = q + ((static_cast<size_t>(g) * map.tokens + t) * G + (row ? gi : 0)) * D;
#pragma unroll
    for (int c = 0; c < D / 32; ++c) {
      const uint4 w = row ? *reinterpret_cast<const uint4*>(qr + c * 32 + 8 * qi) : make_uint4(0, 0, 0, 0);
      qa[c][0] = w.x;
      qa[c][1] = w.y;
      qa[c][2] = w.z;
      qa[c][3] = w.w;
    }
  }
  const auto [begin, end, tiles, bt] = splitKeys<kKeys>(map, a, t, s, splits);

  auto fetch = [&](int tile, int stage) {
    fetchKeys<D, kKeys, kThreads, P>(kCache, vCache, bt, KVH, g, bs, begin + tile * kKeys, end, sk + stage * kKeys * P,
                                     sv + stage * kKeys * P);
  };

  // Row gi: running maximum, this lane's share of the sum, and O's fragments (o[n][0..1]: dimensions
  // 8 n + 2 qi and + 1; o[n][2..3] belong to row gi + 8, past every group, and stay zero).
  float m = -INFINITY, l = 0;
  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0;

  prefetchTiles<kStages>(tiles, fetch);
  for (int tile = 0; tile < tiles; ++tile) {
    awaitTile<kStages>(tile, tiles, fetch);
    const int stage = tile % kStages;
    const bf16_t* K = sk + (stage * kKeys + warp * 16) * P;
    const bf16_t* V = sv + (stage * kKeys + warp * 16) * P;

    float sc[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
#pragma unroll
    for (int c = 0; c < D / 32; ++c) {
#pragma unroll
      for (int n = 0; n < 2; ++n) {
        const uint4 w = *reinterpret_cast<const uint4*>(K + (n * 8 + gi) * P + c * 32 + 8 * qi);
        mma(sc[n], qa[c][0], 0u, qa[c][1], 0u, w.x, w.y);
        mma(sc[n], qa[c][2], 0u, qa[c][3], 0u, w.z, w.w);
      }
    }
    // Online softmax over the warp's 16 keys for row gi (rows gi + 8 are past every group); keys
    // past the split are -inf.
    const int kw = begin + tile * kKeys + warp * 16;
    float p[2][2];
    float mx = -INFINITY;
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        p[n][e] = kw + n * 8 + 2 * qi + e < end ? sc[n][e] * scale : -INFINITY;
        mx = fmaxf(mx, p[n][e]);
      }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float mn = fmaxf(m, mx);
    const float c = mn == -INFINITY ? 1.0f : __expf(m - mn);
    float add = 0;
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        p[n][e] = p[n][e] == -INFINITY ? 0.0f : __expf(p[n][e] - mn);
        add += p[n][e];
      }
    l = l * c + add;
    m = mn;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      o[n][0] *= c;
      o[n][1] *= c;
    }
    // P as the A operand: keys 0-7 of the warp are S's n-tile 0, keys 8-15 n-tile 1.
    const uint32_t pa0 = packBf16(p[0][0], p[0][1]), pa2 = packBf16(p[1][0], p[1][1]);
    const int mi = lane >> 3, ri = lane & 7;
#pragma unroll
    for (int d0 = 0; d0 < D; d0 += 16) {
      uint32_t b0, b1, b2, b3;
      ldmatrix<true>(V + ((mi & 1) * 8 + ri) * P + d0 + (mi >> 1) * 8, b0, b1, b2, b3);
      mma(o[d0 / 8], pa0, 0u, pa2, 0u, b0, b1);
      mma(o[d0 / 8 + 1], pa0, 0u, pa2, 0u, b2, b3);
    }
    __syncthreads();  // the next iteration's fetch overwrites this stage
  }
  copyWait<0>();
  // Shared memory is free again: every copy has landed and every warp is past its last tile.
  finishDecodeBlock<D, G, kWarps, kThreads>(m, l, o, smem, local, t, g, s, splits, H, KVH, partial, partialMl, out,
                                            epi);
}

template <int D, int G>
struct DecodeMma {
  static void launch(const bf16_t* q, const bf16_t* k, const bf16_t* v, const int32_t* idx, int count,
                     const TokenMap& map, const AttnShape& a, int splits, float scale, float* partial, float* ml,
                     bf16_t* out, const OLoraEpilogue& epi, cudaStream_t s) {
    decodeMmaKernel<D, G><<<dim3(count, a.kvHeads, splits), kThreads, kMmaSmemBytes<D>, s>>>(
        q, k, v, idx, map, a, splits, scale, partial, ml, out, epi);
  }
  static const void* function() { return reinterpret_cast<const void*>(decodeMmaKernel<D, G>); }
};

}  // namespace

DecodeMmaLauncher prepareDecodeAttentionMma(int headDim, int group) {
  return prepareMmaKernel<DecodeMmaLauncher, DecodeMma>(headDim, group);
}

}  // namespace cuda
}  // namespace troupe
