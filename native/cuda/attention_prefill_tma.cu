// Causal attention of a step's prefill chunks on Hopper (sm_90a): the work of attention_prefill.cu
// (a block takes 128 query rows of one KV head and walks the keys they see in tiles of 64), with
// its products on warpgroup mmas (wgmma) and its tiles brought by tensor copies. On an H200 the
// mma.sync kernel took 196 us a layer for a 2048-token prompt of Llama-3.1-8B's shape, about
// 200 TFLOPS: each warp's 16 rows read every K and V fragment from shared memory through its
// registers, two loads an mma.
//
// Two warpgroups take 64 rows each; a ninth warp issues, for each cache block a tile covers, one
// tensor copy a 64-value part of its K rows and of its V rows (attention_tma_plan.h's copyRow),
// counted on an mbarrier, up to kStages tiles ahead. A tile lands as [part][key][64 values],
// 128-byte lines swizzled by the copies, which is the layout wgmma reads: K as the K-major B of
// S = Q K^T (Q, copied to shared memory once, its A), V as the MN-major B of O += P V (P's A fragments
// made in registers from S by the softmax, prefill_rows::softmaxTile). A warpgroup's S products
// are waited for at once; its P V products run on while it waits for the next tile and issues
// that tile's S, and the other warpgroup's softmax fills the tensor cores' gaps.
//
// Tiles start at multiples of 64 keys (whole cache blocks: a block size that is a power of two of
// at least 8); keys before the block's first visible key or past its last row's position are
// masked in S, and their V rows zeroed in shared memory (P is zero there, but a stale or never
// written row could hold a NaN).
#include <cuda.h>

#include <stdexcept>
#include <utility>

#include "cuda/attention_ops.cuh"
#include "cuda/attention_prefill_rows.cuh"
#include "cuda/attention_tma_plan.h"
#include "cuda/decode_gemm_ops.cuh"
#include "cuda/kernels.h"
#include "cuda/tensor_map.h"

namespace troupe {
namespace cuda {

namespace {

constexpr int kGroups = 2;                    // warpgroups that multiply, 64 rows each
constexpr int kConsumerWarps = kGroups * 4;   // empty barriers count one arrival a warp
constexpr int kThreads = kGroups * 128 + 32;  // and the copying warp
static_assert(kGroups * 64 == kPrefillTileRows, "a block takes one tile's rows");
using prefill_rows::kKeys;
static_assert(kKeys == attention_tma::kKeys, "the copy plan's tiles");
constexpr int kStages = 4;
template <int D>
constexpr int kTileBytes = kKeys * D * 2;  // of K or of V
template <int D>
constexpr int kQueryBytes = kGroups * 64 * D * 2;
template <int D>
constexpr int kSmemBytes = kQueryBytes<D> + kStages * 2 * kTileBytes<D> + 1024;  // and room to align to 1 KB

__device__ int gPrefillTmaBuilt = TROUPE_DECODE_GEMM_BODY;

#if TROUPE_DECODE_GEMM_BODY
using decode_gemm::barrierArrive;
using decode_gemm::barrierExpect;
using decode_gemm::barrierInit;
using decode_gemm::barrierWait;
using decode_gemm::smemAddr;
using decode_gemm::tensorCopy;
using decode_gemm::wgDesc;

// V as wgmma's MN-major B with the 128-byte swizzle: lines of 64 values, 8-key groups 1024 bytes
// apart. An n64 product reads one line's width, so the offset to the next 64 values is never used
// (it is given as 1024 too).
__device__ __forceinline__ uint64_t vDesc(const void* p) {
  const uint64_t addr = smemAddr(p);
  return ((addr & 0x3FFFF) >> 4) | (64ull << 16) | (64ull << 32) | (1ull << 62);
}

#define TROUPE_D4(j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
// d (64 rows x 64 columns, f32, this thread's part) += A (64 x 16: a, this warp's 16 rows as
// mma.m16n8k16 A fragments) * B (16 x 64, MN-major at descriptor b).
__device__ __forceinline__ void wgmma64(float (&d)[8][4], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, "
      "%23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : TROUPE_D4(0), TROUPE_D4(1), TROUPE_D4(2), TROUPE_D4(3), TROUPE_D4(4), TROUPE_D4(5), TROUPE_D4(6), TROUPE_D4(7)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}
// d (64 x 64, f32) += A (64 x 16, K-major at descriptor a) * B (16 x 64, K-major at descriptor b).
__device__ __forceinline__ void wgmma64(float (&d)[8][4], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, "
      "%23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : TROUPE_D4(0), TROUPE_D4(1), TROUPE_D4(2), TROUPE_D4(3), TROUPE_D4(4), TROUPE_D4(5), TROUPE_D4(6), TROUPE_D4(7)
      : "l"(a), "l"(b));
}
#undef TROUPE_D4

__device__ __forceinline__ void wgmmaFence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmmaCommit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmmaWait() { asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory"); }
// Keeps the compiler from moving accumulators that an issued wgmma may still write.
template <int N>
__device__ __forceinline__ void pin(float (&d)[N][4]) {
#pragma unroll
  for (int j = 0; j < N; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[j][e])::"memory");
}
template <int P>
__device__ __forceinline__ void pin(float (&d)[P][8][4]) {
#pragma unroll
  for (int h = 0; h < P; ++h) pin(d[h]);
}
#endif

template <int D, int G>
__global__ void __launch_bounds__(kThreads, 1)
    prefillTmaKernel(const bf16_t* q, const __grid_constant__ CUtensorMap kMap,
                     const __grid_constant__ CUtensorMap vMap, TokenMap map, AttnShape a, const PrefillTile* work,
                     float scale, bf16_t* out) {
#if TROUPE_DECODE_GEMM_BODY
  static_assert(D == 64 || D == 128, "head_dim 64 or 128");
  constexpr int kParts = D / 64;
  extern __shared__ __align__(1024) unsigned char smemRaw[];
  unsigned char* smem = smemRaw + (1024 - smemAddr(smemRaw) % 1024) % 1024;
  __shared__ uint64_t full[kStages], empty[kStages];
  unsigned char* sq = smem;  // Q: [group][part][64 rows][64 values], swizzled as a copy would
  auto tileK = [&](int stage) { return smem + kQueryBytes<D> + stage * 2 * kTileBytes<D>; };
  auto tileV = [&](int stage) { return tileK(stage) + kTileBytes<D>; };

  // Blocks are (tile, KV head) pairs, tile-major, the longest tiles first (prefillAttentionTiles).
  const int g = blockIdx.x % a.kvHeads;
  const PrefillTile mine = work[blockIdx.x / a.kvHeads];
  const int t0 = mine.t0, rows = mine.count * G, blockRow = mine.row;
  const int firstPos = map.positions[t0];
  const int32_t* bt = map.blockTables + static_cast<size_t>(map.tokenSeq[t0]) * map.pitch;
  const int window = a.window;
  // The block's keys [lo, end): from its first row's window start to its last row's position, in
  // tiles from the multiple of kKeys at or before lo.
  const int lastRow = min(rows, blockRow + kPrefillTileRows) - 1;
  const int lo = prefill_rows::windowStart(window, firstPos + blockRow / G);
  const int end = firstPos + lastRow / G + 1;
  const int begin = lo & ~(kKeys - 1);
  const int tiles = (end - begin + kKeys - 1) / kKeys;

  if (threadIdx.x == 0) {
    for (int i = 0; i < kStages; ++i) {
      barrierInit(&full[i], 1);
      barrierInit(&empty[i], kConsumerWarps);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (warp == kConsumerWarps) {
    if (lane == 0) {
      const int bs = a.blockSize, rowsPerCopy = min(bs, kKeys), partBytes = rowsPerCopy * 128;
      for (int i = 0; i < tiles; ++i) {
        const int stage = i % kStages, k0 = begin + i * kKeys;
        if (i >= kStages) barrierWait(&empty[stage], ((i / kStages) - 1) & 1);
        int cacheRow[kKeys / 8], count = 0;
#pragma unroll
        for (int p = 0; p < kKeys / 8; ++p) {
          cacheRow[p] = attention_tma::copyRow(bt, k0, p, rowsPerCopy, bs, a.kvHeads, g, lo, end);
          count += cacheRow[p] >= 0;
        }
        barrierExpect(&full[stage], 2 * kParts * count * partBytes);
#pragma unroll
        for (int p = 0; p < kKeys / 8; ++p) {
          if (cacheRow[p] < 0) continue;
#pragma unroll
          for (int h = 0; h < kParts; ++h) {
            const int at = h * kKeys * 128 + p * partBytes;
            tensorCopy(tileK(stage) + at, &kMap, h * 64, cacheRow[p], &full[stage]);
            tensorCopy(tileV(stage) + at, &vMap, h * 64, cacheRow[p], &full[stage]);
          }
        }
      }
    }
    return;
  }

  const int group = warp / 4, gThread = threadIdx.x % 128;
  const int groupRow = blockRow + group * 64, warpRow = groupRow + (warp % 4) * 16;
  int pos[2], rowLo[2];
  prefill_rows::rowRanges<G>(warpRow, firstPos, window, pos, rowLo);
  // The group's 64 rows of Q into shared memory as wgmma's K-major A, 16 bytes a thread at a time;
  // rows past the chunk are zeros (their results are never stored, and a product's rows do not mix).
  unsigned char* gq = sq + group * 64 * D * 2;
  for (int i = gThread; i < 64 * (D / 8); i += 128) {
    const int r = i / (D / 8), c = i % (D / 8), row = groupRow + r;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (row < rows)
      v = *reinterpret_cast<const uint4*>(q + ((static_cast<size_t>(g) * map.tokens + t0) * G + row) * D + c * 8);
    *reinterpret_cast<uint4*>(gq + (c / 8) * 64 * 128 + r * 128 + (((c % 8) ^ (r % 8)) << 4)) = v;
  }
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  asm volatile("bar.sync %0, 128;" ::"r"(1 + group) : "memory");
  // The group's live rows: positions [posFirst, posLast], window starts from loFirst to loLast. A
  // tile wholly outside them is skipped; one wholly inside needs no mask.
  const bool live = groupRow < rows;
  const int posFirst = firstPos + groupRow / G;
  const int posLast = firstPos + (min(rows, groupRow + 64) - 1) / G;
  const int loFirst = prefill_rows::windowStart(window, posFirst);
  const int loLast = prefill_rows::windowStart(window, posLast);

  const float sl2 = scale * 1.4426950408889634f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0, 0};
  float o[kParts][8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n / 8][n % 8][0] = o[n / 8][n % 8][1] = o[n / 8][n % 8][2] = o[n / 8][n % 8][3] = 0;

  // The stage whose P V products may still be running: handed back to the copying warp once they
  // have been waited for.
  int pending = -1;
  auto release = [&](int stage) {
    __syncwarp();
    if (lane == 0) barrierArrive(&empty[stage]);
  };
  for (int tile = 0; tile < tiles; ++tile) {
    const int stage = tile % kStages, k0 = begin + tile * kKeys, k1 = k0 + kKeys - 1;
    barrierWait(&full[stage], (tile / kStages) & 1);
    if (!live || k0 > posLast || k1 < loFirst) {
      if (pending >= 0) {
        wgmmaWait();
        pin(o);
        release(pending);
        pending = -1;
      }
      release(stage);
      continue;
    }
    unsigned char* K = tileK(stage);
    unsigned char* V = tileV(stage);
    if (k0 < lo || k1 >= end) {
      // V rows outside [lo, end) were not copied, or hold keys this block does not attend to: zero
      // them (whole 128-byte lines, so the swizzle does not matter). Both groups write the same
      // zeros; each waits for its own writes before its products read them.
      for (int i = gThread; i < kParts * kKeys * 8; i += 128) {
        const int line = i / 8, key = line % kKeys;
        if (k0 + key < lo || k0 + key >= end) reinterpret_cast<uint4*>(V)[i] = make_uint4(0, 0, 0, 0);
      }
      // Written through the generic proxy, read by wgmma and overwritten by copies through the async one.
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      asm volatile("bar.sync %0, 128;" ::"r"(1 + group) : "memory");
    }

    float s[kKeys / 8][4];
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0;
    wgmmaFence();
#pragma unroll
    for (int c = 0; c < D / 16; ++c)
      wgmma64(s, wgDesc(gq + (c / 4) * 64 * 128 + (c % 4) * 32), wgDesc(K + (c / 4) * kKeys * 128 + (c % 4) * 32));
    wgmmaCommit();
    wgmmaWait();  // and the previous tile's P V
    pin(s);
    pin(o);
    if (pending >= 0) release(pending);

    uint32_t pa[kKeys / 16][4];
    if (k1 > posFirst || k0 < loLast) {
      prefill_rows::softmaxTile<D, true>(s, k0, pos, rowLo, sl2, m, l, o, pa);
    } else {
      prefill_rows::softmaxTile<D, false>(s, k0, pos, rowLo, sl2, m, l, o, pa);
    }
    wgmmaFence();
#pragma unroll
    for (int ks = 0; ks < kKeys / 16; ++ks)
#pragma unroll
      for (int h = 0; h < kParts; ++h) wgmma64(o[h], pa[ks], vDesc(V + h * kKeys * 128 + ks * 16 * 128));
    wgmmaCommit();
    pending = stage;
  }
  wgmmaWait();
  pin(o);
  if (pending >= 0) release(pending);
  prefill_rows::storeRows<D, G>(l, o, warpRow, rows, t0, g, a.heads, out);
#endif
}

template <int D, int G>
void launchPrefillTma(const bf16_t* q, const bf16_t* k, const bf16_t* v, const TokenMap& map, const AttnShape& a,
                      const PrefillTile* tiles, int numTiles, float scale, bf16_t* out, cudaStream_t s) {
  if (numTiles == 0) return;
  // The running maxima are of raw scores (the scale is folded into the exponent), which orders
  // them as the scaled ones only for a positive scale.
  if (!(scale > 0)) throw std::invalid_argument("prefill attention: the softmax scale must be positive");
  CUtensorMap kMap, vMap;
  const int rows = a.blockSize < kKeys ? a.blockSize : kKeys;
  if (!bf16CacheTensorMap(k, D, rows, &kMap) || !bf16CacheTensorMap(v, D, rows, &vMap))
    throw std::runtime_error("cuTensorMapEncodeTiled refused the KV cache's view");
  prefillTmaKernel<D, G>
      <<<numTiles * a.kvHeads, kThreads, kSmemBytes<D>, s>>>(q, kMap, vMap, map, a, tiles, scale, out);
}

template <int D, int... G>
PrefillMmaLauncher prepareTmaGroup(int group, std::integer_sequence<int, G...>) {
  const PrefillMmaLauncher launches[] = {&launchPrefillTma<D, G + 1>...};
  const void* functions[] = {reinterpret_cast<const void*>(prefillTmaKernel<D, G + 1>)...};
  if (cudaFuncSetAttribute(functions[group - 1], cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes<D>) !=
      cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  return launches[group - 1];
}

}  // namespace

PrefillMmaLauncher preparePrefillAttentionTma(int headDim, int group, int blockSize) {
  int device = 0, major = 0, built = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess || major != 9 ||
      cudaMemcpyFromSymbol(&built, gPrefillTmaBuilt, sizeof(int)) != cudaSuccess || built != 1 ||
      !tensorMapsAvailable()) {
    cudaGetLastError();  // no sm_90a code in this build for this device
    return nullptr;
  }
  // A tile's 64 keys must fill whole cache blocks, or lie in one.
  if (group < 1 || group > 8 || blockSize < 8 || (blockSize & (blockSize - 1)) != 0) return nullptr;
  const auto groups = std::make_integer_sequence<int, 8>{};
  if (headDim == 64) return prepareTmaGroup<64>(group, groups);
  if (headDim == 128) return prepareTmaGroup<128>(group, groups);
  return nullptr;
}

}  // namespace cuda
}  // namespace troupe
