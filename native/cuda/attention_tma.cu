// Decode attention on tensor cores with the cache brought in by the tensor memory accelerator
// (sm_90a). The math is attention_mma.cu's: a block takes one (token, KV head, context split),
// four warps take 16 keys each of every 64-key tile (attention_mma_warp.cuh). What differs is
// how a tile reaches shared memory: there each thread issues 16-byte copies and looks up its keys'
// cache blocks, and the kernel's time followed the warps resident on an SM rather than the bytes
// in flight (bench/results/2026-12-01-h200-attention-pipeline-variants.json). Here a fifth warp issues the
// tensor copies of each cache block's K and V rows (a copy a 64-value part of the rows, 2 KB at 16
// keys), counted on an mbarrier, up to kStages tiles ahead of the warps that multiply. On an H200
// it read 32 rows x 2048 keys at 3.7 TB/s against 3.3 (bench/results/2026-12-01-h200-attention-tma.json).
//
// A tile starts at a multiple of 64 keys, so its keys lie in whole cache blocks (block size a
// power of two of at least 8): a split takes whole tiles, and keys before the sliding window's
// start or past the split's end are masked. Shared memory holds a tile as the copies leave it,
// swizzled (attention_tma_plan.h), so the eight rows a fragment load reads fall in different
// banks.
#include <cuda.h>

#include <algorithm>
#include <stdexcept>
#include <utility>

#include "cuda/attention_mma_finish.cuh"
#include "cuda/attention_mma_warp.cuh"
#include "cuda/attention_ops.cuh"
#include "cuda/attention_tma_plan.h"
#include "cuda/decode_gemm_ops.cuh"
#include "cuda/pdl.cuh"
#include "cuda/tensor_map.h"

namespace troupe {
namespace cuda {

namespace {

using namespace attention_ops;

constexpr int kWarps = 4;                    // that multiply, 16 keys each
constexpr int kThreads = (kWarps + 1) * 32;  // and the copying warp
using attention_tma::copyRow;
using attention_tma::kKeys;
using attention_tma::pieceOffset;
static_assert(kKeys == 16 * kWarps, "a tile is the warps' 16 keys each");
// Three tiles in flight, two blocks an SM (kTmaBlocksPerSm; 96 KB of stages each at head_dim 128,
// within the 227 KB an SM's blocks may take): 32 rows x 2048 keys took 72 us against 76 with two
// stages and three blocks, and the first thread issuing the copies between barriers (no copying
// warp) 77 us with two stages or three.
constexpr int kStages = 3;
template <int D>
constexpr int kTileBytes = kKeys * D * 2;
template <int D>
constexpr int kSmemBytes = kStages * 2 * kTileBytes<D> + 1024;  // and room to align to 1 KB
// (each block's static barriers and the warps' sums come on top: 1 KB)
static_assert(kTmaBlocksPerSm * (kSmemBytes<128> + 1024) <= 227 * 1024, "an SM's blocks fit its shared memory");

__device__ int gAttentionTmaBuilt = TROUPE_DECODE_GEMM_BODY;

#if TROUPE_DECODE_GEMM_BODY
using decode_gemm::barrierArrive;
using decode_gemm::barrierExpect;
using decode_gemm::barrierWait;
using decode_gemm::initStageBarriers;
using decode_gemm::smemAddr;
using decode_gemm::tensorCopy;

#endif

template <int D, int G>
__global__ void __launch_bounds__(kThreads, kTmaBlocksPerSm)
    decodeTmaKernel(const bf16_t* q, const __grid_constant__ CUtensorMap kMap, const __grid_constant__ CUtensorMap vMap,
                    const int32_t* idx, TokenMap map, AttnShape a, int splits, float scale, float* partial,
                    float* partialMl, bf16_t* out, OLoraEpilogue epi) {
#if TROUPE_DECODE_GEMM_BODY
  static_assert(D == 64 || D == 128, "head_dim 64 or 128");
  pdlLaunchDependents();  // a LoRA item shrink of the o projection may start (pdl.cuh)
  extern __shared__ __align__(1024) unsigned char smemRaw[];
  unsigned char* smem = smemRaw + (1024 - smemAddr(smemRaw) % 1024) % 1024;
  __shared__ uint64_t full[kStages], empty[kStages];
  auto tileK = [&](int stage) { return smem + stage * 2 * kTileBytes<D>; };
  auto tileV = [&](int stage) { return tileK(stage) + kTileBytes<D>; };

  const int local = blockIdx.x, g = blockIdx.y, s = blockIdx.z;
  const int t = idx[local];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int KVH = a.kvHeads, bs = a.blockSize;
  const int rows = min(bs, kKeys), rowsLog2 = __ffs(rows) - 1;  // of one copy

  // The split's whole tiles, and the keys in them that it attends to: [lo, end).
  const int ctx = map.positions[t] + 1;
  const attention_tma::Split split = attention_tma::splitOf(ctx, a.window, s, splits);
  const int begin = split.begin, tiles = split.tiles, lo = split.lo, end = split.end;
  const int32_t* bt = map.blockTables + static_cast<size_t>(map.tokenSeq[t]) * map.pitch;

  initStageBarriers(full, empty, kStages, kWarps);

  float m = -INFINITY, l = 0;
  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0;

  // Tile i's copies into stage i % kStages, by one thread: the blocks of its keys in [lo, end).
  auto issue = [&](int i) {
    const int stage = i % kStages, k0 = begin + i * kKeys, copyBytes = rows * D * 2;
    int cacheRow[kKeys / 8], count = 0;
#pragma unroll
    for (int p = 0; p < kKeys / 8; ++p) {
      cacheRow[p] = copyRow(bt, k0, p, rows, bs, KVH, g, lo, end);
      count += cacheRow[p] >= 0;
    }
    barrierExpect(&full[stage], 2 * count * copyBytes);
#pragma unroll
    for (int p = 0; p < kKeys / 8; ++p) {
      if (cacheRow[p] < 0) continue;
      unsigned char* dk = tileK(stage) + p * copyBytes;
      unsigned char* dv = tileV(stage) + p * copyBytes;
#pragma unroll
      for (int h = 0; h < D / 64; ++h) {
        tensorCopy(dk + h * rows * 128, &kMap, h * 64, cacheRow[p], &full[stage]);
        tensorCopy(dv + h * rows * 128, &vMap, h * 64, cacheRow[p], &full[stage]);
      }
    }
  };

  if (warp == kWarps) {
    if (lane == 0) {
      // Launched early (programmatic dependent launch, pdl.cuh), the block copies the tiles wholly
      // before the token's own key while RoPE, the kernel before, still writes that key and q:
      // every other key of the context was written by an earlier step.
      int i = 0;
      for (; i < tiles && i < kStages && begin + (i + 1) * kKeys < ctx; ++i) issue(i);
      pdlWait();
      for (; i < tiles; ++i) {
        if (i >= kStages) barrierWait(&empty[i % kStages], ((i / kStages) - 1) & 1);
        issue(i);
      }
    }
    __syncwarp();  // the block's barriers below want the whole warp
  } else {
    pdlWait();  // for q, and before anything is written
    uint32_t qa[D / 32][4];
    loadQueryFragments<D, G>(q + (static_cast<size_t>(g) * map.tokens + t) * G * D, qa);
    for (int tile = 0; tile < tiles; ++tile) {
      const int stage = tile % kStages;
      barrierWait(&full[stage], (tile / kStages) & 1);
      unsigned char* K = tileK(stage);
      unsigned char* V = tileV(stage);
      const int kw = begin + tile * kKeys + warp * 16;
      if (kw < lo || kw + 16 > end) {
        // This warp's rows outside [lo, end) were not copied, or hold another split's keys: zero
        // their V (whole 128-byte lines, so the swizzle does not matter), as P is zero there.
        for (int i = lane; i < 16 * (D / 8); i += 32) {
          const int r = i / (D / 8), c = i % (D / 8);
          if (kw + r < lo || kw + r >= end)
            *reinterpret_cast<uint4*>(V + pieceOffset<D>(warp * 16 + r, c, rowsLog2)) = make_uint4(0, 0, 0, 0);
        }
        // Written through the generic proxy; the stage's next copies come through the async one.
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        __syncwarp();
      }
      auto at = [&](unsigned char* tileBase) {
        return [=](int r, int c) {
          return reinterpret_cast<const bf16_t*>(tileBase + pieceOffset<D>(warp * 16 + r, c, rowsLog2));
        };
      };
      attendWarpKeys<D>(qa, at(K), at(V), kw, lo, end, scale, m, l, o);
      __syncwarp();  // the stage goes back to the copying warp
      if (lane == 0) barrierArrive(&empty[stage]);
    }
  }
  // Every copy has landed (each was waited for): the stages are free for the warps' sums.
  finishDecodeBlock<D, G, kWarps, kThreads>(m, l, o, smem, local, t, g, s, splits, a.heads, KVH, partial, partialMl,
                                            out, epi);
#endif
}

// kPdl: launched to start while the kernel before it (RoPE) runs.
template <int D, int G, bool kPdl>
struct DecodeTma {
  static void launch(const bf16_t* q, const bf16_t* k, const bf16_t* v, const int32_t* idx, int count,
                     const TokenMap& map, const AttnShape& a, int splits, float scale, float* partial, float* ml,
                     bf16_t* out, const OLoraEpilogue& epi, cudaStream_t s) {
    const int rows = std::min(a.blockSize, kKeys);
    CUtensorMap kMap, vMap;
    if (!bf16CacheTensorMap(k, D, rows, &kMap) || !bf16CacheTensorMap(v, D, rows, &vMap))
      throw std::runtime_error("cuTensorMapEncodeTiled refused the KV cache's view");
    launchPdlShared(decodeTmaKernel<D, G>, dim3(count, a.kvHeads, splits), dim3(kThreads), kSmemBytes<D>, s, kPdl,
                    "decode attention launch", q, kMap, vMap, idx, map, a, splits, scale, partial, ml, out, epi);
  }
  static const void* function() { return reinterpret_cast<const void*>(decodeTmaKernel<D, G>); }
};

template <int D, bool kPdl, int... G>
DecodeMmaLauncher prepareTmaGroup(int group, std::integer_sequence<int, G...>) {
  const DecodeMmaLauncher launches[] = {&DecodeTma<D, G + 1, kPdl>::launch...};
  const void* functions[] = {DecodeTma<D, G + 1, kPdl>::function()...};
  if (cudaFuncSetAttribute(functions[group - 1], cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes<D>) !=
      cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  return launches[group - 1];
}

}  // namespace

DecodeMmaLauncher prepareDecodeAttentionTma(int headDim, int group, int blockSize, bool early) {
  if (group < 1 || group > 8 || !attention_tma::wholeBlockTiles(blockSize) || !sm90aKernelsRun(&gAttentionTmaBuilt))
    return nullptr;
  const auto groups = std::make_integer_sequence<int, 8>{};
  if (headDim == 64)
    return early ? prepareTmaGroup<64, true>(group, groups) : prepareTmaGroup<64, false>(group, groups);
  if (headDim == 128)
    return early ? prepareTmaGroup<128, true>(group, groups) : prepareTmaGroup<128, false>(group, groups);
  return nullptr;
}

}  // namespace cuda
}  // namespace troupe
