// The decode GEMM's layout and the Hopper instructions it is made of (decode_gemm.cu and its LoRA
// part, decode_gemm_lora.cuh): mbarriers, tensor copies, cp.async and wgmma. Device code exists
// only where TROUPE_DECODE_GEMM_BODY is 1 (sm_90a).
#pragma once

#include <cuda.h>

#include <cstdint>

#include "cuda/decode_gemm.h"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TROUPE_DECODE_GEMM_BODY 1
#else
#define TROUPE_DECODE_GEMM_BODY 0
#endif

namespace troupe {
namespace cuda {
namespace decode_gemm {

constexpr int kConsumers = 256;            // two warpgroups that multiply
constexpr int kThreads = kConsumers + 32;  // and a warp that copies
constexpr int kTileRows = 64;
constexpr int kBox = 64;  // K of one copy: a 128-byte swizzled row
constexpr int kCopies = 4;
constexpr int kStageK = kBox * kCopies;
constexpr int kStages = 4;
static_assert(kStages % 2 == 0, "the two groups alternate stages");
constexpr int kTokens = kDecodeGemmMaxRows;
constexpr int kStageElems = (kTileRows + kTokens) * kStageK;
constexpr int kSmemBytes = kStages * kStageElems * 2;
constexpr int kMaxTiles = 1 << 14;
constexpr int kPartFloats = kTileRows * kTokens;  // one block's part of a split tile
// B's tile in shared memory after the stages: rows padded by 16 bytes so that the 8 rows a warp
// reads at once fall in different banks.
constexpr int kBPad = 8;
constexpr int kLoraSmemBytes = kTileRows * (kDecodeGemmLoraMaxRows + kBPad) * 2;
// The second group's sums handed to the first at the end, after B's tile; where a block forms the
// next projection's shrink parts (DecodeGemmNormShrink) its A rows take that place from the start,
// and the sums a spent stage.
constexpr int kPairSumsBytes = 4 * 16 * 32 * 4;
constexpr int kNormShrinkSmemBytes = kNormShrinkMaxRows * kBox * 2;
constexpr int kShrinkDone = kMaxTiles, kShrinkRead = kMaxTiles + 1;  // counters past the tiles'
// Spread: the spare blocks that have written their columns, the blocks that have read them, and
// each A tile's group parts done. A group part's sums, each token's own slot's at [token][module maxRank + rank].
constexpr int kSpreadPartPitch = kDecodeGemmSpreadMaxRank * kDecodeGemmMaxModules;
constexpr int kColumnsReady = kMaxTiles + 2, kColumnsRead = kMaxTiles + 3, kPartsDone = kMaxTiles + 4;
constexpr int kCounters = kPartsDone + kDecodeGemmSpreadMaxRows / kTileRows;

// The spread grid (DecodeGemmLora::spread): its weight blocks, then `reducers` spare ones; the K
// stages over x (the rest are the padding columns'); the blocks that read the columns; each group's
// A part sums and the columns.
struct SpreadGrid {
  int weightBlocks = 0, reducers = 0, xStages = 0, readers = 0;
  float* parts = nullptr;
  bf16_t* columns = nullptr;
};

// The splits of a tile that read the padding columns (whose K stages reach past xStages).
__host__ __device__ inline int spreadReaders(int kTiles, int splits, int xStages) {
  int n = 0;
  for (int p = 0; p < splits; ++p) n += (p + 1) * kTiles / splits > xStages ? 1 : 0;
  return n;
}

__host__ __device__ inline int loraSlotRank(const DecodeGemmLora& l) { return l.slotRank ? l.slotRank : l.maxRank; }

// Where A's row `row` of a LoRA group goes: its slot, module and place in the slot, and its shrink
// output's column (the padding's order: module, slot, rank).
struct LoraRowPlace {
  int slot, module, rank, column;
};
__host__ __device__ inline LoraRowPlace loraRowPlace(const DecodeGemmLora& l, int row) {
  const int U = loraSlotRank(l), r = row % U, slotModule = row / U;
  const int slot = slotModule / l.modules, module = slotModule % l.modules;
  return {slot, module, r, module * (l.rows / l.modules) + slot * U + r};
}

// Which rank of the adapter whose run starts at slot `first` the row holds (lora_runs.h), or -1
// where the row's slot lies before the run; past the run the rank exceeds every rank the adapter
// has, which the callers' rank checks then refuse.
__host__ __device__ inline int loraOwnRank(const DecodeGemmLora& l, const LoraRowPlace& p, int first) {
  return first >= 0 && p.slot >= first ? (p.slot - first) * loraSlotRank(l) + p.rank : -1;
}

#if TROUPE_DECODE_GEMM_BODY
constexpr int kConsumerWarps = kConsumers / 32;

__device__ __forceinline__ unsigned smemAddr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void barrierInit(uint64_t* bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smemAddr(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void barrierExpect(uint64_t* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smemAddr(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void barrierArrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smemAddr(bar)) : "memory");
}
__device__ __forceinline__ void barrierWait(uint64_t* bar, unsigned parity) {
  unsigned done = 0;
  do {
    asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                 : "=r"(done)
                 : "r"(smemAddr(bar)), "r"(parity)
                 : "memory");
  } while (!done);
}
// Thread 0 readies each of `stages` stages' barriers: full counts one arrival (the copying
// thread's, with the bytes its copies bring), empty one a consumer; then the block meets.
__device__ __forceinline__ void initStageBarriers(uint64_t* full, uint64_t* empty, int stages, unsigned consumers) {
  if (threadIdx.x == 0) {
    for (int i = 0; i < stages; ++i) {
      barrierInit(&full[i], 1);
      barrierInit(&empty[i], consumers);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
}
// The multiplying warps only (named barrier 1), and the first group only (2), or either (2, 3).
__device__ __forceinline__ void consumersSync() { asm volatile("bar.sync 1, %0;" ::"n"(kConsumers) : "memory"); }
__device__ __forceinline__ void firstGroupSync() { asm volatile("bar.sync 2, 128;" ::: "memory"); }
__device__ __forceinline__ void groupSync(int group) {
  if (group == 0) {
    firstGroupSync();
  } else {
    asm volatile("bar.sync 3, 128;" ::: "memory");
  }
}

__device__ __forceinline__ void cpAsync16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smemAddr(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void cpAsyncWaitAll() {
  asm volatile("cp.async.commit_group;\ncp.async.wait_all;" ::: "memory");
}
__device__ __forceinline__ unsigned loadAcquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// The box of map at (k, row) into shared dst (1 KB aligned), counted on bar when it lands. Boxes
// reaching past the tensor's ends land zeros there, counted all the same.
__device__ __forceinline__ void tensorCopy(void* dst, const CUtensorMap* map, int k, int row, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::
          "r"(smemAddr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(k), "r"(row), "r"(smemAddr(bar))
      : "memory");
}

// A shared-memory matrix descriptor for wgmma: K-major rows of 128 bytes with the 128-byte
// swizzle, 8-row groups 1024 bytes apart.
__device__ __forceinline__ uint64_t wgDesc(const void* p) {
  const uint64_t addr = smemAddr(p);
  return ((addr & 0x3FFFF) >> 4) | (1ull << 16) | (64ull << 32) | (1ull << 62);
}
// d (64 rows x 32 tokens, f32) += A (64 x 16, K-major) * B (32 x 16, K-major).
__device__ __forceinline__ void wgmma32(float (&d)[4][4], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]),
        "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]),
        "+f"(d[3][2]), "+f"(d[3][3])
      : "l"(a), "l"(b));
}

// d (64 rows x 64 tokens, f32) += A (64 x 16, K-major) * B (64 x 16, K-major).
__device__ __forceinline__ void wgmma64(float (&d)[8][4], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, "
      "%23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]),
        "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]),
        "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]),
        "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]),
        "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
      : "l"(a), "l"(b));
}
__device__ __forceinline__ void wgmma(float (&d)[4][4], uint64_t a, uint64_t b) { wgmma32(d, a, b); }
__device__ __forceinline__ void wgmma(float (&d)[8][4], uint64_t a, uint64_t b) { wgmma64(d, a, b); }

// One stage's products into sums by a warpgroup: wait for the stage's copies (full, of this
// parity), multiply its `boxes` boxes of weight rows w by its token rows x (8 x columns of sums
// rows a box), and free the stage (empty counts a warp).
template <int boxes, int columns>
__device__ __forceinline__ void multiplyBoxes(const bf16_t* w, const bf16_t* x, uint64_t* full, uint64_t* empty,
                                              unsigned parity, float (&sums)[columns][4]) {
  barrierWait(full, parity);
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
  for (int kk = 0; kk < boxes * (kBox / 16); ++kk) {
    const int c = kk / (kBox / 16), k16 = kk % (kBox / 16);
    wgmma(sums, wgDesc(w + c * kTileRows * kBox + k16 * 16), wgDesc(x + c * 8 * columns * kBox + k16 * 16));
  }
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
  asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
  __syncwarp();
  if ((threadIdx.x & 31) == 0) barrierArrive(empty);
}
// A stage of four boxes of 32 token rows.
__device__ __forceinline__ void multiplyStage(const bf16_t* w, const bf16_t* x, uint64_t* full, uint64_t* empty,
                                              unsigned parity, float (&sums)[4][4]) {
  multiplyBoxes<kCopies>(w, x, full, empty, parity, sums);
}
#endif

}  // namespace decode_gemm
}  // namespace cuda
}  // namespace troupe
