// Decode attention on tensor cores with the cache brought in by the tensor memory accelerator
// (sm_90a). The math is attention_mma.cu's: a block takes one (token, KV head, context split),
// four warps take 16 keys each of every 64-key tile (attention_mma_warp.cuh). What differs is
// how a tile reaches shared memory: there each thread issues 16-byte copies and looks up its keys'
// cache blocks, and the kernel's time followed the warps resident on an SM rather than the bytes
// in flight (bench/results/2026-12-01-h200-attention-pipeline-variants.json). Here a fifth warp issues the
// tensor copies of each cache block's K and V rows (a copy a 64-value part of the rows, 2 KB at 16
// keys), counted on an mbarrier, up to kStages tiles ahead of the warps that multiply, each of its
// lanes looking up and copying one cache block of a tile. On an H200
// it read 32 rows x 2048 keys at 3.7 TB/s against 3.3 (bench/results/2026-12-01-h200-attention-tma.json).
//
// Once a step has more (token, KV head, split) items than the GPU holds blocks at once, each block
// goes through several, its copying warp already issuing the next item's tiles while the
// multiplying warps finish one: a block's pipeline then fills once, not once an item. On an H200,
// 128 rows x 512 keys took 72.8 us against 83.5 with a block an item, 64 x 512 40.1 against 43.9
// (bench/results/2026-12-01-h200-attention-loop.json).
//
// A tile starts at a multiple of 64 keys, so its keys lie in whole cache blocks (block size a
// power of two of at least 8): a split takes whole tiles, and keys before the sliding window's
// start or past the split's end are masked. Shared memory holds a tile as the copies leave it,
// swizzled (attention_tma_plan.h), so the eight rows a fragment load reads fall in different
// banks.
#include <cuda.h>

#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <string>
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

// The warps' sums at a block's end (attention_mma_finish.cuh) in their own shared memory, so that
// a block that goes on to another (token, KV head, split) keeps the next tiles' stages in flight.
template <int D, int G>
constexpr int kSumBytes = kWarps * G * D * 4;
// Whether blocks that loop over items (kLoop) still fit kTmaBlocksPerSm to an SM with it.
template <int D, int G>
constexpr bool kLoopFits = kTmaBlocksPerSm * (kSmemBytes<D> + kSumBytes<D, G> + 1024) <= 227 * 1024;

// A block takes items blockIdx.x, + gridDim.x, ... of the launch's count x KV heads x splits
// (token fastest). kLoop: the grid is at most every SM's kTmaBlocksPerSm blocks and each block
// goes through several items, its copying warp issuing the next item's tiles while the
// multiplying warps finish one, so a block's pipeline fills once, not once an item; its warps
// then finish an item alone (named barrier) with their sums in their own shared memory, without
// the o projection's LoRA epilogue. Otherwise a block takes one item, as its whole block
// finishes it.
template <int D, int G, bool kLoop>
__global__ void __launch_bounds__(kThreads, kTmaBlocksPerSm)
    decodeTmaKernel(const bf16_t* q, const __grid_constant__ CUtensorMap kMap, const __grid_constant__ CUtensorMap vMap,
                    const int32_t* idx, int count, TokenMap map, AttnShape a, int splits, float scale, float* partial,
                    float* partialMl, bf16_t* out, OLoraEpilogue epi) {
#if TROUPE_DECODE_GEMM_BODY
  static_assert(D == 64 || D == 128, "head_dim 64 or 128");
  static_assert(!kLoop || kLoopFits<D, G>, "looping blocks fit an SM");
  pdlLaunchDependents();  // a LoRA item shrink of the o projection may start (pdl.cuh)
  extern __shared__ __align__(1024) unsigned char smemRaw[];
  unsigned char* smem = smemRaw + (1024 - smemAddr(smemRaw) % 1024) % 1024;
  __shared__ uint64_t full[kStages], empty[kStages];
  auto tileK = [&](int stage) { return smem + stage * 2 * kTileBytes<D>; };
  auto tileV = [&](int stage) { return tileK(stage) + kTileBytes<D>; };

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int KVH = a.kvHeads, bs = a.blockSize;
  const int rows = min(bs, kKeys), rowsLog2 = __ffs(rows) - 1;  // of one copy
  const int items = count * KVH * splits;

  // An item's token, KV head, split and whole tiles, and the keys in them that it attends to:
  // [lo, end).
  struct Item {
    int local, t, g, s, begin, tiles, lo, end;
    const int32_t* bt;
  };
  auto itemAt = [&](int i) {
    Item it;
    it.local = i % count;
    it.g = (i / count) % KVH;
    it.s = i / (count * KVH);
    it.t = idx[it.local];
    const int ctx = map.positions[it.t] + 1;
    const attention_tma::Split split = attention_tma::splitOf(ctx, a.window, it.s, splits);
    it.begin = split.begin;
    it.tiles = split.tiles;
    it.lo = split.lo;
    it.end = split.end;
    it.bt = map.blockTables + static_cast<size_t>(map.tokenSeq[it.t]) * map.pitch;
    return it;
  };

  initStageBarriers(full, empty, kStages, kWarps);

  // Tile i of an item into stage n % kStages, by the copying warp: lane p < kKeys / 8 looks up copy
  // p's cache block and issues its tensor copies, so a tile's block-table loads and copies go out
  // together rather than one after another from one thread (which made the copying warp, not the
  // memory, set the pace of a block with more tiles than stages). The block ids are read before
  // the stage is waited for.
  auto issue = [&](const Item& it, int i, int n) {
    const int stage = n % kStages, k0 = it.begin + i * kKeys, copyBytes = rows * D * 2;
    const int cacheRow = lane < kKeys / 8 ? copyRow(it.bt, k0, lane, rows, bs, KVH, it.g, it.lo, it.end) : -1;
    const int copies = __popc(__ballot_sync(~0u, cacheRow >= 0));
    if (n >= kStages) barrierWait(&empty[stage], ((n / kStages) - 1) & 1);
    if (lane == 0) barrierExpect(&full[stage], 2 * copies * copyBytes);
    __syncwarp();  // the bytes are expected before any copy can land
    if (cacheRow < 0) return;
    unsigned char* dk = tileK(stage) + lane * copyBytes;
    unsigned char* dv = tileV(stage) + lane * copyBytes;
#pragma unroll
    for (int h = 0; h < D / 64; ++h) {
      tensorCopy(dk + h * rows * 128, &kMap, h * 64, cacheRow, &full[stage]);
      tensorCopy(dv + h * rows * 128, &vMap, h * 64, cacheRow, &full[stage]);
    }
  };

  if (warp == kWarps) {
    // Launched early (programmatic dependent launch, pdl.cuh), the block copies its first item's
    // tiles wholly before the token's own key while RoPE, the kernel before, still writes that
    // key and q: every other key of the context was written by an earlier step.
    int n = 0;  // the block's tiles so far, over its items: stage n % kStages
    bool waited = false;
    for (int i = blockIdx.x; i < items; i += gridDim.x) {
      const Item it = itemAt(i);
      for (int tile = 0; tile < it.tiles; ++tile, ++n) {
        if (!waited && !(n == tile && tile < kStages && it.begin + (tile + 1) * kKeys < map.positions[it.t] + 1)) {
          pdlWait();
          waited = true;
        }
        issue(it, tile, n);
      }
    }
    if (!waited) pdlWait();
    __syncwarp();  // the block's barriers below want the whole warp
    if constexpr (kLoop) return;
  }
  float m = -INFINITY, l = 0;
  float o[D / 8][4] = {};
  Item it{};
  int n = 0;
  if (warp < kWarps) pdlWait();  // for q, and before anything is written
  for (int i = blockIdx.x; i < items; i += gridDim.x) {
    it = itemAt(i);
    if (warp == kWarps) break;  // the copying warp of a one-item block, for the finish below
    m = -INFINITY;
    l = 0;
#pragma unroll
    for (int c = 0; c < D / 8; ++c) o[c][0] = o[c][1] = o[c][2] = o[c][3] = 0;
    uint32_t qa[D / 32][4];
    loadQueryFragments<D, G>(q + (static_cast<size_t>(it.g) * map.tokens + it.t) * G * D, qa);
    for (int tile = 0; tile < it.tiles; ++tile, ++n) {
      const int stage = n % kStages;
      barrierWait(&full[stage], (n / kStages) & 1);
      unsigned char* K = tileK(stage);
      unsigned char* V = tileV(stage);
      const int kw = it.begin + tile * kKeys + warp * 16;
      if (kw < it.lo || kw + 16 > it.end) {
        // This warp's rows outside [lo, end) were not copied, or hold another split's keys: zero
        // their V (whole 128-byte lines, so the swizzle does not matter), as P is zero there.
        for (int e = lane; e < 16 * (D / 8); e += 32) {
          const int r = e / (D / 8), c = e % (D / 8);
          if (kw + r < it.lo || kw + r >= it.end)
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
      attendWarpKeys<D>(qa, at(K), at(V), kw, it.lo, it.end, scale, m, l, o);
      __syncwarp();  // the stage goes back to the copying warp
      if (lane == 0) barrierArrive(&empty[stage]);
    }
    if constexpr (kLoop)
      finishDecodeBlock<D, G, kWarps, kWarps * 32, true>(m, l, o, smem + kStages * 2 * kTileBytes<D>, it.local, it.t,
                                                         it.g, it.s, splits, a.heads, KVH, partial, partialMl, out,
                                                         OLoraEpilogue{});
  }
  // One item a block: every copy has landed (each was waited for), so the stages are free for the
  // warps' sums.
  if constexpr (!kLoop)
    finishDecodeBlock<D, G, kWarps, kThreads, false>(m, l, o, smem, it.local, it.t, it.g, it.s, splits, a.heads, KVH,
                                                     partial, partialMl, out, epi);
#endif
}

// Each device's multiprocessors, for a looping launch's grid (0: not prepared there, no loop).
constexpr int kMaxDevices = 64;
int gSms[kMaxDevices] = {};
bool gLoop = true;  // TROUPE_CUDA_ATTENTION_LOOP=0: a block an item at any batch

int deviceSms() {
  int device = 0;
  return cudaGetDevice(&device) == cudaSuccess && device >= 0 && device < kMaxDevices ? gSms[device] : 0;
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
    const int items = count * a.kvHeads * splits, resident = kTmaBlocksPerSm * deviceSms();
    if constexpr (kLoopFits<D, G>)
      if (gLoop && resident > 0 && items > resident && epi.a == nullptr) {
        launchPdlShared(decodeTmaKernel<D, G, true>, dim3(resident), dim3(kThreads), kSmemBytes<D> + kSumBytes<D, G>, s,
                        kPdl, "decode attention launch", q, kMap, vMap, idx, count, map, a, splits, scale, partial, ml,
                        out, epi);
        return;
      }
    launchPdlShared(decodeTmaKernel<D, G, false>, dim3(items), dim3(kThreads), kSmemBytes<D>, s, kPdl,
                    "decode attention launch", q, kMap, vMap, idx, count, map, a, splits, scale, partial, ml, out, epi);
  }
  static bool prepare() {
    bool ok = cudaFuncSetAttribute(decodeTmaKernel<D, G, false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   kSmemBytes<D>) == cudaSuccess;
    if constexpr (kLoopFits<D, G>)
      ok = ok && cudaFuncSetAttribute(decodeTmaKernel<D, G, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      kSmemBytes<D> + kSumBytes<D, G>) == cudaSuccess;
    return ok;
  }
};

template <int D, bool kPdl, int... G>
DecodeMmaLauncher prepareTmaGroup(int group, std::integer_sequence<int, G...>) {
  const DecodeMmaLauncher launches[] = {&DecodeTma<D, G + 1, kPdl>::launch...};
  bool (*const prepares[])() = {&DecodeTma<D, G + 1, kPdl>::prepare...};
  if (!prepares[group - 1]()) {
    cudaGetLastError();
    return nullptr;
  }
  return launches[group - 1];
}

}  // namespace

DecodeMmaLauncher prepareDecodeAttentionTma(int headDim, int group, int blockSize, bool early) {
  if (group < 1 || group > 8 || !attention_tma::wholeBlockTiles(blockSize) || !sm90aKernelsRun(&gAttentionTmaBuilt))
    return nullptr;
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  if (device < kMaxDevices) gSms[device] = sms;
  if (const char* env = std::getenv("TROUPE_CUDA_ATTENTION_LOOP")) gLoop = std::string(env) != "0";
  const auto groups = std::make_integer_sequence<int, 8>{};
  if (headDim == 64)
    return early ? prepareTmaGroup<64, true>(group, groups) : prepareTmaGroup<64, false>(group, groups);
  if (headDim == 128)
    return early ? prepareTmaGroup<128, true>(group, groups) : prepareTmaGroup<128, false>(group, groups);
  return nullptr;
}

}  // namespace cuda
}  // namespace troupe
