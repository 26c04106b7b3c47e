// Decode attention on tensor cores, for head_dim 64 and 128 with up to 8 query heads per KV head.
// A block takes one (token, KV head, context split), as the CUDA-core kernel does, and walks the
// split's keys in tiles of 64 that cp.async copies into shared memory, two tiles in flight. Each of
// its four warps takes 16 keys of a tile (attention_mma_warp.cuh: S = Q K^T and P V on mma.sync,
// the online softmax on S's fragments). The warps' partial softmaxes meet in shared memory in a
// fixed order, and the splits are combined by attention.cu's kernel: the same partial layout as
// the CUDA-core kernel. Per key the CUDA-core kernel issues some 75 instructions a warp; this one
// about a tenth of that.
#include <cuda_bf16.h>

#include "cuda/attention_mma_finish.cuh"
#include "cuda/attention_mma_warp.cuh"
#include "cuda/attention_ops.cuh"
#include "cuda/kernels.h"
#include "cuda/lora_mma_ops.cuh"
#include "cuda/pdl.cuh"

namespace troupe {
namespace cuda {

namespace {

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
  const int warp = threadIdx.x >> 5;
  const int KVH = a.kvHeads, bs = a.blockSize;

  uint32_t qa[D / 32][4];
  loadQueryFragments<D, G>(q + (static_cast<size_t>(g) * map.tokens + t) * G * D, qa);
  const auto [begin, end, tiles, bt] = splitKeys<kKeys>(map, a, t, s, splits);

  auto fetch = [&](int tile, int stage) {
    fetchKeys<D, kKeys, kThreads, P>(kCache, vCache, bt, KVH, g, bs, begin + tile * kKeys, end, sk + stage * kKeys * P,
                                     sv + stage * kKeys * P);
  };

  // Row gi's running maximum, this lane's share of its sum, and O's fragments (attention_mma_warp.cuh).
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
    // Keys past the split are masked (the split starts at begin).
    attendWarpKeys<D>(
        qa, [&](int r, int c) { return K + r * P + c * 8; }, [&](int r, int c) { return V + r * P + c * 8; },
        begin + tile * kKeys + warp * 16, begin, end, scale, m, l, o);
    __syncthreads();  // the next iteration's fetch overwrites this stage
  }
  copyWait<0>();
  // Shared memory is free again: every copy has landed and every warp is past its last tile.
  finishDecodeBlock<D, G, kWarps, kThreads>(m, l, o, smem, local, t, g, s, splits, H, KVH, partial, partialMl, out,
                                            epi);
}

template <int D, int G>
struct DecodeMma {
  static constexpr size_t kSmemBytes = kMmaSmemBytes<D>;
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
