// Decode attention over the paged cache on CUDA cores (attention_mma.cu has the tensor-core kernel
// that decodeAttention takes where it applies). A block takes one (token, KV head, context split) and
// walks the split's keys in tiles that it copies into shared memory with cp.async, two tiles in
// flight, so every warp keeps many cache bytes on their way instead of one key's (the copy is
// what bounds a decode step's attention). Its 16 groups of 8 lanes then take kPerGroup keys of
// the tile each; a lane holds headDim / 8 dimensions of every query head that shares the KV head
// (GQA reads each key once for the whole group), with an online softmax rescaled once per tile.
// Splits are combined by a second kernel; the number of splits depends only on the launch, so a
// captured graph stays valid as contexts grow.
#include <cuda_bf16.h>

#include <algorithm>

#include "cuda/attention_ops.cuh"
#include "cuda/kernels.h"
#include "cuda/pdl.cuh"

namespace troupe {
namespace cuda {

namespace {

using namespace attention_ops;
constexpr int kThreads = 128;
constexpr int kGroups = kThreads / 8;
// Tiles of 8 KB with two stages beat 4 KB with three or four, and forcing 3-4 blocks per SM
// through fewer registers, on the H200 (test/gpu/attention_check.cu --bench).
constexpr int kStages = 2;
constexpr int kTileBytes = 8 * 1024;  // of K, and as much of V, per stage

template <int W>
__device__ __forceinline__ void loadPiece(const bf16_t* p, float* out) {
  if constexpr (W == 8) {
    const uint4 w = *reinterpret_cast<const uint4*>(p);
    const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      out[2 * i] = __uint_as_float(words[i] << 16);
      out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
    }
  } else {
    const uint2 w = *reinterpret_cast<const uint2*>(p);
    out[0] = __uint_as_float(w.x << 16);
    out[1] = __uint_as_float(w.x & 0xffff0000u);
    out[2] = __uint_as_float(w.y << 16);
    out[3] = __uint_as_float(w.y & 0xffff0000u);
  }
}

// Which dimensions a lane holds: pieces of W (8, or 4 at head_dim 32) consecutive dimensions,
// piece p of lane l at p * 8 * W + l * W. The 8 lanes of a group read a piece of one key as 8 * W
// consecutive values: one 128-byte row of shared memory, free of bank conflicts.
template <int D>
struct LaneDims {
  static constexpr int DL = D / 8;
  static constexpr int W = DL >= 8 ? 8 : DL;
  static constexpr int NP = DL / W;
  static_assert(W == 8 || W == 4, "row slices are at least 4 values");
  __device__ static int dim(int p, int lane8) { return p * 8 * W + lane8 * W; }
  // The lane's dimensions of one row, as floats.
  __device__ static void load(const bf16_t* row, int lane8, float (&out)[DL]) {
#pragma unroll
    for (int p = 0; p < NP; ++p) loadPiece<W>(row + dim(p, lane8), out + p * W);
  }
};

template <int D, int G>
__global__ void __launch_bounds__(kThreads)
    decodeKernel(const bf16_t* q, const bf16_t* kCache, const bf16_t* vCache, const int32_t* idx, TokenMap map,
                 AttnShape a, int splits, float scale, float* partial, float* partialMl) {
  using L = LaneDims<D>;
  constexpr int DL = L::DL, W = L::W, NP = L::NP;
  constexpr int kTile = kTileBytes / (D * 2) > kGroups ? kTileBytes / (D * 2) : kGroups;  // keys per tile
  constexpr int kPerGroup = kTile / kGroups;
  static_assert(kPerGroup >= 1, "a tile is whole keys for every group");
  __shared__ __align__(16) bf16_t sk[kStages][kTile * D];
  __shared__ __align__(16) bf16_t sv[kStages][kTile * D];

  const int local = blockIdx.x, g = blockIdx.y, s = blockIdx.z;
  const int t = idx[local];
  const int lane8 = threadIdx.x & 7, sub = threadIdx.x >> 3;
  const int KVH = a.kvHeads, bs = a.blockSize;

  float qr[G][DL];
#pragma unroll
  for (int j = 0; j < G; ++j) {
    L::load(q + ((static_cast<size_t>(g) * map.tokens + t) * G + j) * D, lane8, qr[j]);
#pragma unroll
    for (int d = 0; d < DL; ++d) qr[j][d] *= scale;
  }
  // This split's share of the visible keys: the whole prefix, or its last a.window positions.
  const auto [begin, end, tiles, bt] = splitKeys<kTile>(map, a, t, s, splits);

  // The block's threads share each tile's copies of K and V (fetchKeys); keys past the split
  // are zeros, and the softmax skips them.
  auto fetch = [&](int tile, int stage) {
    fetchKeys<D, kTile, kThreads, D>(kCache, vCache, bt, KVH, g, bs, begin + tile * kTile, end, sk[stage], sv[stage]);
  };

  float m[G], l[G], acc[G][DL];
#pragma unroll
  for (int j = 0; j < G; ++j) {
    m[j] = -INFINITY;
    l[j] = 0;
#pragma unroll
    for (int d = 0; d < DL; ++d) acc[j][d] = 0;
  }
  prefetchTiles<kStages>(tiles, fetch);
  for (int tile = 0; tile < tiles; ++tile) {
    awaitTile<kStages>(tile, tiles, fetch);
    const bf16_t* K = sk[tile % kStages];
    const bf16_t* V = sv[tile % kStages];
    const int k0 = begin + tile * kTile;
    float dot[kPerGroup][G];
#pragma unroll
    for (int kk = 0; kk < kPerGroup; ++kk) {
      float kf[DL];
      L::load(K + (sub + kk * kGroups) * D, lane8, kf);
#pragma unroll
      for (int j = 0; j < G; ++j) {
        float d = 0;
#pragma unroll
        for (int e = 0; e < DL; ++e) d += qr[j][e] * kf[e];
        d += __shfl_xor_sync(0xffffffffu, d, 1);
        d += __shfl_xor_sync(0xffffffffu, d, 2);
        d += __shfl_xor_sync(0xffffffffu, d, 4);
        dot[kk][j] = k0 + sub + kk * kGroups < end ? d : -INFINITY;
      }
    }
    // One rescale per tile: the new running maximum over this group's keys of the tile.
    float pr[kPerGroup][G];
#pragma unroll
    for (int j = 0; j < G; ++j) {
      float mn = m[j];
#pragma unroll
      for (int kk = 0; kk < kPerGroup; ++kk) mn = fmaxf(mn, dot[kk][j]);
      const float c = mn == -INFINITY ? 1.0f : __expf(m[j] - mn);
      float add = 0;
#pragma unroll
      for (int kk = 0; kk < kPerGroup; ++kk) {
        pr[kk][j] = dot[kk][j] == -INFINITY ? 0.0f : __expf(dot[kk][j] - mn);
        add += pr[kk][j];
      }
      l[j] = l[j] * c + add;
      m[j] = mn;
#pragma unroll
      for (int d = 0; d < DL; ++d) acc[j][d] *= c;
    }
#pragma unroll
    for (int kk = 0; kk < kPerGroup; ++kk) {
      float vf[DL];
      L::load(V + (sub + kk * kGroups) * D, lane8, vf);
#pragma unroll
      for (int j = 0; j < G; ++j)
#pragma unroll
        for (int d = 0; d < DL; ++d) acc[j][d] += pr[kk][j] * vf[d];
    }
    __syncthreads();  // the next iteration's fetch overwrites this stage
  }

  // Combine the 16 lane groups in a fixed order, so results do not depend on timing.
  __shared__ float sm[kGroups][G];
  __shared__ float sacc[G][D];
  __shared__ float sl[kGroups][G];
  if (lane8 == 0) {
#pragma unroll
    for (int j = 0; j < G; ++j) sm[sub][j] = m[j];
  }
  for (int e = threadIdx.x; e < G * D; e += kThreads) sacc[e / D][e % D] = 0;
  __syncthreads();
#pragma unroll
  for (int j = 0; j < G; ++j) {
    float M = -INFINITY;
    for (int i = 0; i < kGroups; ++i) M = fmaxf(M, sm[i][j]);
    const float c = m[j] == -INFINITY ? 0.0f : __expf(m[j] - M);
    l[j] *= c;
#pragma unroll
    for (int d = 0; d < DL; ++d) acc[j][d] *= c;
  }
  if (lane8 == 0) {
#pragma unroll
    for (int j = 0; j < G; ++j) sl[sub][j] = l[j];
  }
  for (int i = 0; i < kGroups; ++i) {
    if (sub == i) {
#pragma unroll
      for (int j = 0; j < G; ++j)
#pragma unroll
        for (int p = 0; p < NP; ++p)
#pragma unroll
          for (int e = 0; e < W; ++e) sacc[j][L::dim(p, lane8) + e] += acc[j][p * W + e];
    }
    __syncthreads();
  }
  const int H = a.heads;
  for (int e = threadIdx.x; e < G * D; e += kThreads) {
    const int j = e / D, d = e % D;
    partial[((static_cast<size_t>(local) * H + g * G + j) * splits + s) * D + d] = sacc[j][d];
  }
  if (threadIdx.x < G) {
    const int j = threadIdx.x;
    float M = -INFINITY, L = 0;
    for (int i = 0; i < kGroups; ++i) {
      M = fmaxf(M, sm[i][j]);
      L += sl[i][j];
    }
    float* ml = partialMl + ((static_cast<size_t>(local) * H + g * G + j) * splits + s) * 2;
    ml[0] = M;
    ml[1] = L;
  }
}

__global__ void combineKernel(const float* partial, const float* partialMl, const int32_t* idx, int heads, int D,
                              int splits, bf16_t* out) {
  const int local = blockIdx.x, h = blockIdx.y, d = threadIdx.x;  // a thread per dimension
  pdlLaunchDependents();
  const int t = idx[local];
  const size_t base = static_cast<size_t>(local) * heads + h;
  const float* ml = partialMl + base * splits * 2;
  // The first kEarly splits' values are loaded with the maxima and sums, not after them: one wait
  // on memory instead of two. A split with no keys left its values unwritten; they are not used.
  constexpr int kEarly = 8;
  float early[kEarly];
#pragma unroll
  for (int s = 0; s < kEarly; ++s) early[s] = s < splits && d < D ? partial[(base * splits + s) * D + d] : 0.0f;
  float M = -INFINITY;
  for (int s = 0; s < splits; ++s)
    if (ml[2 * s + 1] > 0) M = fmaxf(M, ml[2 * s]);
  float L = 0;
  for (int s = 0; s < splits; ++s)
    if (ml[2 * s + 1] > 0) L += __expf(ml[2 * s] - M) * ml[2 * s + 1];
  if (d >= D) return;
  float o = 0;
#pragma unroll
  for (int s = 0; s < kEarly; ++s)
    if (s < splits && ml[2 * s + 1] > 0) o += __expf(ml[2 * s] - M) * early[s];
  for (int s = kEarly; s < splits; ++s)
    if (ml[2 * s + 1] > 0) o += __expf(ml[2 * s] - M) * partial[(base * splits + s) * D + d];
  out[(static_cast<size_t>(t) * heads + h) * D + d] = __bfloat16_as_ushort(__float2bfloat16_rn(o * (1.0f / L)));
}

template <int D, int G>
void launch(const bf16_t* q, const bf16_t* k, const bf16_t* v, const int32_t* idx, int count, const TokenMap& map,
            const AttnShape& a, int splits, float scale, float* partial, float* ml, cudaStream_t s) {
  decodeKernel<D, G>
      <<<dim3(count, a.kvHeads, splits), kThreads, 0, s>>>(q, k, v, idx, map, a, splits, scale, partial, ml);
}

using Launcher = void (*)(const bf16_t*, const bf16_t*, const bf16_t*, const int32_t*, int, const TokenMap&,
                          const AttnShape&, int, float, float*, float*, cudaStream_t);

// Groups of 5 to 8 query heads per KV head (Qwen2.5's 6 and 7 among them) hold G * headDim / 8
// query and accumulator values per lane, too many registers at head_dim 256.
template <int D>
Launcher pickG(int group) {
  constexpr bool wide = D <= 128;
  switch (group) {
    case 1:
      return launch<D, 1>;
    case 2:
      return launch<D, 2>;
    case 3:
      return launch<D, 3>;
    case 4:
      return launch<D, 4>;
    case 5:
      return wide ? launch<D, (wide ? 5 : 1)> : nullptr;
    case 6:
      return wide ? launch<D, (wide ? 6 : 1)> : nullptr;
    case 7:
      return wide ? launch<D, (wide ? 7 : 1)> : nullptr;
    case 8:
      return wide ? launch<D, (wide ? 8 : 1)> : nullptr;
    default:
      return nullptr;
  }
}

Launcher pick(int headDim, int group) {
  switch (headDim) {
    case 32:
      return pickG<32>(group);
    case 64:
      return pickG<64>(group);
    case 128:
      return pickG<128>(group);
    case 256:
      return pickG<256>(group);
    default:
      return nullptr;
  }
}

}  // namespace

bool decodeAttentionSupported(int headDim, int group) { return pick(headDim, group) != nullptr; }

namespace {

// The fewest splits of at least `keys` keys a context of `context` keys needs, rounded up to a
// power of two: each count a batch size meets is a CUDA graph of its own, captured when a context
// first needs it, so a growing context meets a handful, not one every few tiles.
int splitCap(int context, int keys) {
  const int need = (context + keys - 1) / keys;
  int cap = 1;
  while (cap < need) cap *= 2;
  return cap;
}

}  // namespace

int decodeAttentionSplits(int decodes, int kvHeads, int sms, DecodeKernel kernel, int longestContext) {
  const int work = decodes * kvHeads;
  if (kernel == DecodeKernel::kTma) {
    // The tensor-copy kernel is fastest with one wave of blocks. Over long contexts, as many
    // splits as leave every SM its kTmaBlocksPerSm blocks and no more: on an H200 8 rows x 8192
    // keys took 74.5 us with 4 splits (256 blocks) against 105 with 5, and 32 x 2048 72 with 1
    // against 81 with 3 (bench/results/2026-12-01-h200-attention-tma.json). Over short ones, a
    // block an SM, as each further split costs its pipeline's fill and finish more than its
    // bytes: 16 rows x 512 keys took 15.6 us with 1 split against 17.9 with 2, 8 rows 13.3 with 2
    // against 14.0 with 4 (bench/results/2026-12-01-h200-attention-copier-lanes.json).
    const int perSm = longestContext <= kTmaShortContext ? 1 : kTmaBlocksPerSm;
    const int splits = std::clamp(perSm * sms / work, 1, kMaxDecodeSplits);
    return std::min(splits, splitCap(longestContext, kMmaMinKeysPerSplit));
  }
  const bool mma = kernel == DecodeKernel::kMma;
  // Enough blocks to keep every SM streaming the cache (a split is at least a few key rows). The
  // tensor-core kernel, once the batch alone gives every SM a block, is fastest with about four
  // (three fit an SM at once): 32 rows x 2048 keys took 82.2 us a layer with 3 splits against 91.9
  // with 1 on an H200.
  const int perSm = mma && work >= sms ? 4 : 2;
  const int splits = std::clamp((perSm * sms + work - 1) / work, 1, kMaxDecodeSplits);
  if (!mma) return splits;
  // But the tensor-core kernel reads 64-key tiles, so a short split is mostly masked work and its
  // fixed cost, plus a combine: 1 row x 512 keys took 11.1 us with 4 splits against 16.7 with 32,
  // 8 rows 14.2 us with 4 against 15.7 with 5; and one split writes the output itself (32 rows x
  // 512 keys: 27.0 us with 1 split against 32.8 with 3).
  return std::min(splits, splitCap(longestContext, work >= sms ? kMmaKeysPerSplit : kMmaMinKeysPerSplit));
}

bool decodeAttention(const bf16_t* q, const bf16_t* kCache, const bf16_t* vCache, const int32_t* idx, int count,
                     const TokenMap& map, const AttnShape& a, int splits, float* partial, float* partialMl, bf16_t* out,
                     cudaStream_t s, DecodeMmaLauncher mma, const OLoraEpilogue& epi) {
  const float scale = 1.0f / sqrtf(static_cast<float>(a.headDim));
  if (mma) {
    const bool lora = epi.a != nullptr && splits == 1;
    mma(q, kCache, vCache, idx, count, map, a, splits, scale, partial, partialMl,
        splits == 1 ? (lora ? epi.xa : out) : nullptr, lora ? epi : OLoraEpilogue{}, s);
    if (splits == 1) return lora;
  } else {
    pick(a.headDim, a.heads / a.kvHeads)(q, kCache, vCache, idx, count, map, a, splits, scale, partial, partialMl, s);
  }
  combineKernel<<<dim3(count, a.heads), a.headDim, 0, s>>>(partial, partialMl, idx, a.heads, a.headDim, splits, out);
  return false;
}

}  // namespace cuda
}  // namespace troupe
