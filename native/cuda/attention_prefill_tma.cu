// Causal attention of a step's prefill chunks on Hopper (sm_90a): the work of attention_prefill.cu
// (a block takes 128 query rows of one KV head and walks the keys they see in tiles of 64), with
// its products on warpgroup mmas (wgmma) and its tiles brought by tensor copies. The mma.sync
// kernel's warps each take 16 rows and read every K and V fragment from shared memory through
// their registers, two loads an mma; on an H200 it ran a 2048-token prompt of Llama-3.1-8B's shape
// at about 207 TFLOPS, this one at 312 (test/gpu/attention_check.cu --bench).
//
// Two warpgroups take 64 rows each. In a warp of a third, a lane for each cache block a tile
// covers issues one tensor copy a 64-value part of its K rows and of its V rows
// (attention_tma_plan.h's copyRow), counted on an mbarrier, up to kStages tiles ahead; the lanes
// look up a tile's blocks before they wait for the stage. A tile lands as [part][key][64 values],
// 128-byte lines swizzled by the copies, which is the layout wgmma reads: K as the K-major B of
// S = Q K^T (Q, copied to shared memory once, its A), V as the MN-major B of O += P V (P's A
// fragments made in registers from S by the softmax, prefill_rows::softmaxTile). Each warpgroup
// waits for its own products; the other's softmax fills the tensor cores' gaps. Forms that issued
// tile i + 1's S before tile i's P V, alone or with the warpgroups taking turns at issuing (named
// barriers, as FlashAttention-3 does), ran within 2% of this one, faster at 8192 tokens and slower
// at 8 x 512 (bench/results/2026-12-01-h200-prefill-copy-lanes.json).
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

constexpr int kGroups = 2;                   // warpgroups that multiply, 64 rows each
constexpr int kConsumerWarps = kGroups * 4;  // empty barriers count one arrival a warp
// and a warpgroup whose first thread issues the copies: a warpgroup so that it can hand its
// registers to the multiplying ones (setmaxnreg), which hold S, P and O of 64-key tiles.
constexpr int kThreads = (kGroups + 1) * 128;
constexpr int kCopierRegs = 40, kConsumerRegs = 232;
static_assert(128 * kCopierRegs + kGroups * 128 * kConsumerRegs <= 65536, "the register file");
static_assert(kGroups * 64 == kPrefillTileRows, "a block takes one tile's rows");
// A stage is one tile of the copy plan (attention_tma_plan.h). Tiles of 128 keys (two of its
// tiles a stage, three stages) took 145 us at 1 x 2048 tokens against 131.
constexpr int kTileKeys = attention_tma::kKeys;
constexpr int kStages = 4;
template <int D>
constexpr int kTileBytes = kTileKeys * D * 2;  // of K or of V
template <int D>
constexpr int kQueryBytes = kGroups * 64 * D * 2;
template <int D>
constexpr int kBlockSmem = kQueryBytes<D> + kStages * 2 * kTileBytes<D> + 1024;  // and room to align to 1 KB
static_assert(kBlockSmem<128> + 1024 <= 227 * 1024, "a block's stages fit an SM's shared memory");

__device__ int gPrefillTmaBuilt = TROUPE_DECODE_GEMM_BODY;

#if TROUPE_DECODE_GEMM_BODY
using decode_gemm::barrierArrive;
using decode_gemm::barrierExpect;
using decode_gemm::barrierWait;
using decode_gemm::initStageBarriers;
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
__device__ __forceinline__ void wgmmaSS(float (&d)[8][4], uint64_t a, uint64_t b) {
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
  constexpr int kParts = D / 64, S = kStages, kLine = 128;
  extern __shared__ __align__(1024) unsigned char smemRaw[];
  unsigned char* smem = smemRaw + (1024 - smemAddr(smemRaw) % 1024) % 1024;
  __shared__ uint64_t full[S], empty[S];
  unsigned char* sq = smem;  // Q: [group][part][64 rows][64 values], swizzled as a copy would
  // A stage's K then V, each [part][kTileKeys keys][64 values].
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
  // tiles from the multiple of 64 at or before lo.
  const int lastRow = min(rows, blockRow + kPrefillTileRows) - 1;
  const int lo = prefill_rows::windowStart(window, firstPos + blockRow / G);
  const int end = firstPos + lastRow / G + 1;
  const int begin = lo & ~(kTileKeys - 1);
  const int tiles = (end - begin + kTileKeys - 1) / kTileKeys;

  initStageBarriers(full, empty, S, kConsumerWarps);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (warp >= kConsumerWarps) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(kCopierRegs));
    // A lane a cache block of the tile (at most kTileKeys / 8 of them) looks up its block and issues
    // its copies, so that a tile's block-table reads and copies are not one thread's sequence: one
    // thread issuing all 16 copies of a tile of 16-key blocks took 131 us at 1 x 2048 tokens, the
    // lanes 110 (blocks of 64 keys, four copies a tile, 107).
    if (warp == kConsumerWarps) {
      const int bs = a.blockSize, rowsPerCopy = min(bs, kTileKeys), partBytes = rowsPerCopy * kLine;
      for (int i = 0; i < tiles; ++i) {
        const int stage = i % S, k0 = begin + i * kTileKeys;
        // Looked up before waiting for the stage, so that the block table's reads overlap the wait.
        const int cacheRow =
            lane < kTileKeys / 8 ? attention_tma::copyRow(bt, k0, lane, rowsPerCopy, bs, a.kvHeads, g, lo, end) : -1;
        const int count = __popc(__ballot_sync(0xffffffffu, cacheRow >= 0));
        if (i >= S) barrierWait(&empty[stage], ((i / S) - 1) & 1);
        // The expected bytes are set before any lane's copy can complete on the barrier.
        if (lane == 0) barrierExpect(&full[stage], 2 * kParts * count * partBytes);
        __syncwarp();
        if (cacheRow >= 0) {
          const int key = lane * rowsPerCopy;
#pragma unroll
          for (int h = 0; h < kParts; ++h) {
            const int at = (h * kTileKeys + key) * kLine;
            tensorCopy(tileK(stage) + at, &kMap, h * 64, cacheRow, &full[stage]);
            tensorCopy(tileV(stage) + at, &vMap, h * 64, cacheRow, &full[stage]);
          }
        }
      }
    }
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(kConsumerRegs));
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
    *reinterpret_cast<uint4*>(gq + (c / 8) * 64 * kLine + r * kLine + (((c % 8) ^ (r % 8)) << 4)) = v;
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

  auto release = [&](int stage) {
    __syncwarp();
    if (lane == 0) barrierArrive(&empty[stage]);
  };
  for (int tile = 0; tile < tiles; ++tile) {
    const int stage = tile % S, k0 = begin + tile * kTileKeys, k1 = k0 + kTileKeys - 1;
    barrierWait(&full[stage], (tile / S) & 1);
    if (!live || k0 > posLast || k1 < loFirst) {
      release(stage);
      continue;
    }
    unsigned char* K = tileK(stage);
    unsigned char* V = tileV(stage);
    if (k0 < lo || k1 >= end) {
      // V rows outside [lo, end) were not copied, or hold keys this block does not attend to: zero
      // them (whole 128-byte lines, so the swizzle does not matter). Both groups write the same
      // zeros; each waits for its own writes before its products read them.
      for (int i = gThread; i < kParts * kTileKeys * 8; i += 128) {
        const int key = (i / 8) % kTileKeys;
        if (k0 + key < lo || k0 + key >= end) reinterpret_cast<uint4*>(V)[i] = make_uint4(0, 0, 0, 0);
      }
      // Written through the generic proxy, read by wgmma and overwritten by copies through the
      // async one.
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      asm volatile("bar.sync %0, 128;" ::"r"(1 + group) : "memory");
    }

    float s[kTileKeys / 8][4];
#pragma unroll
    for (int n = 0; n < kTileKeys / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0;
    wgmmaFence();
#pragma unroll
    for (int c = 0; c < D / 16; ++c)
      wgmmaSS(s, wgDesc(gq + (c / 4) * 64 * kLine + (c % 4) * 32),
              wgDesc(K + (c / 4) * kTileKeys * kLine + (c % 4) * 32));
    wgmmaCommit();
    wgmmaWait();
    pin(s);

    uint32_t pa[kTileKeys / 16][4];
    if (k1 > posFirst || k0 < loLast) {
      prefill_rows::softmaxTile<D, kTileKeys, true>(s, k0, pos, rowLo, sl2, m, l, o, pa);
    } else {
      prefill_rows::softmaxTile<D, kTileKeys, false>(s, k0, pos, rowLo, sl2, m, l, o, pa);
    }
    wgmmaFence();
#pragma unroll
    for (int ks = 0; ks < kTileKeys / 16; ++ks)
#pragma unroll
      for (int h = 0; h < kParts; ++h) wgmma64(o[h], pa[ks], vDesc(V + (h * kTileKeys + ks * 16) * kLine));
    wgmmaCommit();
    // P's registers are read by the products until they complete: wait before the next tile's S.
    wgmmaWait();
    pin(o);
    release(stage);
  }
  prefill_rows::storeRows<D, G>(l, o, warpRow, rows, t0, g, a.heads, out);
#endif
}

template <int D, int G>
struct PrefillTma {
  static constexpr size_t kSmemBytes = kBlockSmem<D>;
  static void launch(const bf16_t* q, const bf16_t* k, const bf16_t* v, const TokenMap& map, const AttnShape& a,
                     const PrefillTile* tiles, int numTiles, float scale, bf16_t* out, cudaStream_t s) {
    if (numTiles == 0) return;
    prefill_rows::checkScale(scale);
    CUtensorMap kMap, vMap;
    const int rows = a.blockSize < kTileKeys ? a.blockSize : kTileKeys;
    if (!bf16CacheTensorMap(k, D, rows, &kMap) || !bf16CacheTensorMap(v, D, rows, &vMap))
      throw std::runtime_error("cuTensorMapEncodeTiled refused the KV cache's view");
    prefillTmaKernel<D, G><<<numTiles * a.kvHeads, kThreads, kSmemBytes, s>>>(q, kMap, vMap, map, a, tiles, scale, out);
  }
  static const void* function() { return reinterpret_cast<const void*>(prefillTmaKernel<D, G>); }
};

}  // namespace

PrefillMmaLauncher preparePrefillAttentionTma(int headDim, int group, int blockSize) {
  if (!attention_tma::wholeBlockTiles(blockSize) || !sm90aKernelsRun(&gPrefillTmaBuilt)) return nullptr;
  return attention_ops::prepareMmaKernel<PrefillMmaLauncher, PrefillTma>(headDim, group);
}

}  // namespace cuda
}  // namespace troupe
