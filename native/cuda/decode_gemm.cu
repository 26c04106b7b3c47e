// The decode GEMM (decode_gemm.h). Each block owns one 64-row tile of the weights over one of the
// tile's K splits. A warp beyond the multiplying ones issues the tensor copies: a stage is four
// 64-K boxes of the weights (64 rows) and of the token rows (32 rows), 128-byte swizzled, counted
// on the stage's full barrier; the multiplying warps release it on its empty barrier. The first
// stages' weights are copied before the programmatic-launch wait; every copy of the token rows
// comes after it.
//
// Measured on an H200 at Llama-8B's projections (32 tokens, against cuBLAS in the same runs;
// bench/results/2026-11-30-h200-skinny-gemm-wgmma-trace.json for the first two, then
// 2026-12-01-h200-decode-gemm.json):
// - a block's round of one stage costs about 0.28 us however few bytes it carries, so a stage
//   carries four copies (with one copy a stage the same tiles took 30-50% longer);
// - two warpgroups taking alternate stages keep two stages' products in flight (5-8% faster than
//   one group taking all). Alternating needs an even number of stages: with an odd one a group's
//   parity wait on a stage can alias a phase two turns back;
// - plain loads issued while the weights stream wait behind them: read at the end, the Y that a
//   projection adds to cost the down projection 5 us a call, so it is read right after the wait.
//
// With LoRA the first lora.rows / 64 tiles are the A rows' (their copies from aMap, their sums to
// lora.mid); the other tiles' blocks copy their 64 rows of B into shared memory before the wait,
// and the block that writes a tile waits at the end until every shrink tile has counted itself
// done, then adds each token's delta. Without B the shrink tiles only write lora.mid, and nothing
// waits for them.
//
// Spread (lora.spread), the grid is the weights' blocks and a few spare ones. Weight block b first
// takes K stages of A tile b % aTiles (its part b / aTiles of the x stages), and each of its two
// groups writes its sums of that part, each token's own slot's, then counts the part done; then
// its own stages, whose K runs on past x into the padding columns, where B lies. The spare blocks
// wait for each A tile's parts, add them in part order and write the scaled shrink outputs as bf16
// columns (zero outside each token's own slot and rank), their warps dealt (tile, token) pairs; a
// block's copies of those columns wait for every spare block's. The parts come first in every
// block, so that in a GEMM as long as down's the columns are ready before the stages that read
// them (o's, about 10 us, waits for them). Over a group of modules (q/k/v) the A rows are every
// slot's modules in turn, a part's sums sit at each token's [module][rank], and a weight tile of
// split rows reads only its module's block of the columns (cBase).
//
// With the next projection's shrink begun here (args.normShrink), each weight block copies that
// projection's A rows over its tile's 64 features as it starts, and the block that writes the tile
// forms the parts after Y (decode_gemm_lora.cuh's normShrinkParts).
#include <cuda.h>

#include <algorithm>
#include <climits>
#include <stdexcept>
#include <string>

#include "cuda/decode_gemm.h"
#include "cuda/decode_gemm_lora.cuh"
#include "cuda/decode_gemm_ops.cuh"
#include "cuda/pdl.cuh"
#include "cuda/tensor_map.h"

namespace troupe {
namespace cuda {

namespace {

using namespace decode_gemm;  // NOLINT(build/namespaces): the kernel's own layout and instructions

__device__ int gDecodeGemmBuilt = TROUPE_DECODE_GEMM_BODY;

// DecodeGemmPrefetch by one warp: lane u reads token u's slot, and the block's token asks for its
// share of its slot's bytes where no token before it has that slot.
__device__ void prefetchNext(const DecodeGemmPrefetch& pf, int M, int lane) {
  const int t = static_cast<int>(blockIdx.x) % M, parts = static_cast<int>(gridDim.x) / M;
  const int part = static_cast<int>(blockIdx.x) / M;
  if (part >= parts) return;
  const int mine = lane < M ? pf.rowSlot[lane] : -1, slot = __shfl_sync(0xffffffffu, mine, t);
  const unsigned before = __ballot_sync(0xffffffffu, lane < t && mine == slot);
  if (slot < 0 || before != 0 || lane != 0) return;
  const size_t chunk = (pf.bytes / parts + 15) / 16 * 16, lo = part * chunk;
  if (lo >= pf.bytes) return;
  const unsigned size = static_cast<unsigned>(min(chunk, pf.bytes - lo));
  for (int j = 0; j < pf.slices; ++j) {
    const bf16_t* at = pf.a[j] + static_cast<size_t>(slot) * pf.slotStride[j];
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(reinterpret_cast<const uint8_t*>(at) + lo),
                 "r"(size)
                 : "memory");
  }
}

__global__ void __launch_bounds__(kThreads, 1)
    decodeGemmKernel(DecodeGemmArgs args, const __grid_constant__ CUtensorMap wMap,
                     const __grid_constant__ CUtensorMap xMap, const __grid_constant__ CUtensorMap aMap,
                     const __grid_constant__ CUtensorMap cMap, const __grid_constant__ CUtensorMap nsMap, int kTiles,
                     int splits, SpreadGrid sg, float* partials, unsigned* counters) {
#if TROUPE_DECODE_GEMM_BODY
  // The stages start 1 KB aligned, where the 128-byte swizzle's pattern starts again. The
  // declaration's alignment pads the static shared memory to whole kilobytes, so the dynamic part
  // starts aligned and no kilobyte is held back to align it, which lets a norm block sit beside a
  // block holding gate/up's A rows (DecodeGemmNormShrink). A launch where it did not stops here.
  extern __shared__ __align__(1024) uint8_t smemRaw[];
  if (smemAddr(smemRaw) % 1024 != 0) __trap();
  if (args.releaseAtStart) pdlLaunchDependents();
  bf16_t* smem = reinterpret_cast<bf16_t*>(smemRaw);
  __shared__ uint64_t full[kStages], empty[kStages], nsBar;
  __shared__ bool last;
  __shared__ int tokSlot[kTokens], tokRank[kTokens * kDecodeGemmMaxModules];
  __shared__ float tokScale[kTokens];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, q = lane & 3;
  const DecodeGemmLora& lora = args.lora;
  const bool hasLora = lora.A != nullptr, spread = hasLora && lora.spread;  // spread: B from the padding
  const bool hasDelta = hasLora && lora.B != nullptr && !spread;
  const int aTiles = hasLora ? (lora.rows + kTileRows - 1) / kTileRows : 0;
  const int tile = blockIdx.x / splits, part = blockIdx.x % splits;
  const int shrinkTiles = spread ? 0 : aTiles;
  const bool shrinkTile = tile < shrinkTiles;  // rows of A, into lora.mid
  const int kt0 = part * kTiles / splits, count = (part + 1) * kTiles / splits - kt0;
  // Spread: this block's A tile and part (na stages from ka0 of the x stages, before its own).
  const int kParts = spread ? sg.weightBlocks / aTiles : 0;
  const bool aPart = spread && static_cast<int>(blockIdx.x) < kParts * aTiles;
  const int aTile = aPart ? static_cast<int>(blockIdx.x) % aTiles : 0;
  const int kPart = aPart ? static_cast<int>(blockIdx.x) / aTiles : 0;
  const int ka0 = aPart ? kPart * sg.xStages / kParts : 0;
  const int na = aPart ? (kPart + 1) * sg.xStages / kParts - ka0 : 0, total = na + count;
  const int row0 = (shrinkTile ? tile : tile - shrinkTiles) * kTileRows;
  // A weight tile's parts of the next projection's shrink (DecodeGemmNormShrink), from its A rows
  // copied at the start after the stages.
  const bool normShrink = hasLora && args.normShrink.A != nullptr && !shrinkTile;
  // The late columns' first K stage (DecodeGemmLateColumns), past every stage without them.
  const DecodeGemmLateColumns& late = args.late;
  const bool lateColumns = late.count > 0;
  const int lateStage = lateColumns ? (args.K - late.count) / kStageK : INT_MAX;
  // The weight tile's padding stages read its module's block of the columns where rows are split.
  int cBase = 0;
  if (spread && lora.splitRows) {
    int j = 0;
    while (j + 1 < lora.modules && row0 >= lora.moduleRow[j + 1]) ++j;
    cBase = j * (lora.rows / lora.modules);
  }
  const CUtensorMap* rowsMap = shrinkTile ? &aMap : &wMap;
  // After the stages: B's tile and the pair sums, or the next projection's A rows (normShrink),
  // copied at the start into a place of their own, the pair sums then in a spent stage.
  uint8_t* extra = reinterpret_cast<uint8_t*>(smem + kStages * kStageElems);
  bf16_t* bTile = reinterpret_cast<bf16_t*>(extra);
  const int bPitch = lora.rows + kBPad;
  uint8_t* spent = reinterpret_cast<uint8_t*>(smem + ((total + 1) % kStages) * kStageElems);
  float* pairSums = reinterpret_cast<float*>(normShrink ? spent : extra + (hasDelta ? kTileRows * bPitch * 2 : 0));
  if (tid == kConsumers) {
    asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(rowsMap)) : "memory");
    asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&xMap)) : "memory");
    if (spread) asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&aMap)) : "memory");
    if (normShrink) asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&nsMap)) : "memory");
  }
  if (spread && static_cast<int>(blockIdx.x) >= sg.weightBlocks) {
    // A spare block: the shrink outputs of its A tiles.
    if (tid < kTokens) loraReadToken(args, tid, tokSlot, tokRank, tokScale);
    __syncthreads();
    pdlWait();
    spreadColumns(args, sg, static_cast<int>(blockIdx.x) - sg.weightBlocks, aTiles, kParts, tokSlot, tokRank, tokScale,
                  counters);
    return;
  }
  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) {
      barrierInit(&full[s], 1);
      barrierInit(&empty[s], kConsumerWarps / 2);  // the four warps of the group that owns the stage
    }
    barrierInit(&nsBar, 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  auto stageW = [&](int i) { return smem + (i % kStages) * kStageElems; };
  auto stageX = [&](int i) { return stageW(i) + kTileRows * kStageK; };

  if (warp == kConsumerWarps) {  // the copying warp
    {
      // Stage i's K stage: the A part's first (spread), then the block's own.
      auto kOf = [&](int i) { return i < na ? ka0 + i : kt0 + i - na; };
      auto issueW = [&](int i) {
        barrierExpect(&full[i % kStages], (kTileRows + kTokens) * kStageK * 2);
        for (int c = 0; c < kCopies; ++c)
          tensorCopy(stageW(i) + c * kTileRows * kBox, i < na ? &aMap : rowsMap, kOf(i) * kStageK + c * kBox,
                     i < na ? aTile * kTileRows : row0, &full[i % kStages]);
      };
      bool columnsReady = false, lateWaited = false;
      auto issueX = [&](int i) {
        const int k = kOf(i);
        if (k >= lateStage) {
          // The late columns, once the kernel that writes them has completed.
          if (!lateWaited) {
            pdlWait();
            lateWaited = true;
          }
          for (int c = 0; c < kCopies; ++c)
            tensorCopy(stageX(i) + c * kTokens * kBox, &cMap, (k - lateStage) * kStageK + c * kBox, 0,
                       &full[i % kStages]);
          return;
        }
        if (spread && i >= na && k >= sg.xStages) {
          // The padding columns' stages read the shrink outputs, once every A tile's are written.
          if (!columnsReady) {
            while (loadAcquire(counters + kColumnsReady) < static_cast<unsigned>(sg.reducers)) __nanosleep(128);
            asm volatile("fence.proxy.async.global;" ::: "memory");
            columnsReady = true;
          }
          for (int c = 0; c < kCopies; ++c)
            tensorCopy(stageX(i) + c * kTokens * kBox, &cMap, cBase + (k - sg.xStages) * kStageK + c * kBox, 0,
                       &full[i % kStages]);
          return;
        }
        for (int c = 0; c < kCopies; ++c)
          tensorCopy(stageX(i) + c * kTokens * kBox, &xMap, k * kStageK + c * kBox, 0, &full[i % kStages]);
      };
      if (lane == 0) {
        // The next projection's A rows (the pool's, written before the grid began).
        if (normShrink) {
          barrierExpect(&nsBar, args.normShrink.rows * kBox * 2);
          tensorCopy(extra, &nsMap, row0, 0, &nsBar);
        }
        for (int i = 0; i < kStages && i < total; ++i) issueW(i);
        if (lateColumns) {
          // The rows are written once the kernel before has counted them ready; the last block to
          // pass sets the counts back.
          while (loadAcquire(late.ready) < static_cast<unsigned>(late.target)) __nanosleep(64);
          asm volatile("fence.proxy.async.global;" ::: "memory");
          if (atomicAdd(late.ready + 1, 1u) == gridDim.x - 1) {
            late.ready[0] = 0;
            late.ready[1] = 0;
          }
        } else {
          pdlWait();
        }
      }
      // The multiplying warps read Y once the rows' kernel is known to be done (their barrier 4).
      __syncwarp();
      if (lateColumns) asm volatile("bar.arrive 4, %0;" ::"n"(kThreads) : "memory");
      if (lane == 0) {
        for (int i = 0; i < total; ++i) {
          if (i >= kStages) {
            barrierWait(&empty[i % kStages], ((i / kStages) - 1) & 1);
            issueW(i);
          }
          issueX(i);
        }
        // Every block copies them (the one that writes the tile is known only at the end); none may
        // end before its copy has landed.
        if (normShrink) barrierWait(&nsBar, 0);
      }
    }
    // The next projection's A factors once this block's last stage is on its way.
    __syncwarp();
    if (args.prefetch.slices > 0) prefetchNext(args.prefetch, args.M, lane);
    return;
  }
  // The tokens' slots, for the blocks that read them: a weight tile whose deltas the norm after
  // adds never does, and its first warp would wait on the dependent loads before its first stage.
  if (hasLora && (shrinkTile || hasDelta || normShrink || spread) && tid < kTokens)
    loraReadToken(args, tid, tokSlot, tokRank, tokScale);
  if (hasDelta && !shrinkTile && tid < 128) loraCopyB(lora, args.N, row0, bTile, bPitch, tid);
  if (spread) consumersSync();  // both groups read the tokens' slots after their A part
  float nw[2] = {};             // the norm's weights of the rows the first group writes (normShrink)
  if (normShrink && tid < 128)
    for (int e = 0; e < 2; ++e) {
      const int row = row0 + (warp & 3) * 16 + (lane >> 2) + 8 * e;
      if (row < args.N) nw[e] = args.normShrink.normW[row];
    }
  if (lateColumns) {
    asm volatile("bar.sync 4, %0;" ::"n"(kThreads) : "memory");
  } else {
    pdlWait();
  }

  // Group warp / 4 takes the stages i with i % 2 == warp / 4, all 64 rows, its own sums.
  const int group = warp >> 2;
  // acc[j][h] and yBefore[j][h]: row 16 warp + g (+ 8 for h >= 2) of the tile, token 8 j + 2 q +
  // (h & 1); the first group stores.
  auto rowOf = [&](int h) { return row0 + (warp & 3) * 16 + g + (h >= 2 ? 8 : 0); };
  auto tokenOf = [&](int j, int h) { return 8 * j + 2 * q + (h & 1); };
  float yBefore[4][4] = {};
  if (args.accumulate && group == 0 && !shrinkTile)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int h = 0; h < 4; ++h)
        if (rowOf(h) < args.N && tokenOf(j, h) < args.M)
          yBefore[j][h] = __ldcg(args.Y + static_cast<size_t>(tokenOf(j, h)) * args.ldy + rowOf(h));
  // One stage's products into sums: the A part's stages, then the block's own, each in a loop of
  // its own (a branch between two sums around wgmma serializes it).
  auto stage = [&](int i, float(&sums)[4][4]) {
    multiplyStage(stageW(i), stageX(i), &full[i % kStages], &empty[i % kStages], (i / kStages) & 1, sums);
  };
  float acc[4][4] = {};
  int i = group;
  if (aPart) {
    float accA[4][4] = {};
    for (; i < na; i += 2) stage(i, accA);
    // This group's sums of the part: each token's own slot's rows of the tile, at its module's
    // ranks (a token's rows of each module lie in one tile, or two at max rank 128).
    float* mine = sg.parts + static_cast<size_t>(kPart * 2 + group) * kTokens * kSpreadPartPitch;
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int h = 0; h < 4; ++h) {
        const int t = tokenOf(j, h), row = aTile * kTileRows + rowOf(h) - row0;
        const LoraRowPlace p = loraRowPlace(lora, row);
        const int q = t < args.M ? loraOwnRank(lora, p, tokSlot[t]) : -1;
        if (row < lora.rows && q >= 0 && q < lora.maxRank)
          __stcg(mine + t * kSpreadPartPitch + p.module * lora.maxRank + q, accA[j][h]);
      }
    __threadfence();
    groupSync(group);
    if (tid % 128 == 0) atomicAdd(counters + kPartsDone + aTile, 1u);
  }
  for (; i < total; i += 2) stage(i, acc);
  if (args.releaseEarly) pdlLaunchDependents();
  // The second group's sums into the first's, through shared memory (a spent stage's, once the
  // first group is done with its stages).
  if (normShrink) consumersSync();
  if (group == 1)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int h = 0; h < 4; ++h) pairSums[((warp - 4) * 16 + j * 4 + h) * 32 + lane] = acc[j][h];
  consumersSync();
  if (spread && tid == 0 && kt0 + count > sg.xStages) {
    // This block has read the shrink outputs; the last to have set the counters back.
    if (atomicAdd(counters + kColumnsRead, 1u) == static_cast<unsigned>(sg.readers - 1)) {
      for (int t = 0; t < aTiles; ++t) counters[kPartsDone + t] = 0;
      counters[kColumnsReady] = 0;
      counters[kColumnsRead] = 0;
    }
  }
  if (group == 1) {
    pdlLaunchDependents();
    return;
  }
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int h = 0; h < 4; ++h) acc[j][h] += pairSums[(warp * 16 + j * 4 + h) * 32 + lane];

  if (splits > 1) {
    // Each part through the workspace; the last block of the tile to finish adds the others' to
    // its own in block order (the same sum whichever finishes last).
    float4* mine = reinterpret_cast<float4*>(partials + static_cast<size_t>(blockIdx.x) * kPartFloats);
#pragma unroll
    for (int j = 0; j < 4; ++j) __stcg(mine + j * 128 + tid, make_float4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]));
    __threadfence();
    firstGroupSync();
    if (tid == 0) {
      last = atomicAdd(counters + tile, 1u) == static_cast<unsigned>(splits - 1);
      if (last) counters[tile] = 0;  // ready for the next launch, which starts after this one's blocks end
    }
    firstGroupSync();
    if (!last) {
      if (hasDelta) cpAsyncWaitAll();
      pdlLaunchDependents();
      return;
    }
    __threadfence();
    float sum[4][4] = {};
    for (int b = tile * splits; b < (tile + 1) * splits; ++b) {
      const float4* theirs = reinterpret_cast<const float4*>(partials + static_cast<size_t>(b) * kPartFloats);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float4 v = b == static_cast<int>(blockIdx.x) ? make_float4(acc[j][0], acc[j][1], acc[j][2], acc[j][3])
                                                           : __ldcg(theirs + j * 128 + tid);
        sum[j][0] += v.x, sum[j][1] += v.y, sum[j][2] += v.z, sum[j][3] += v.w;
      }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int h = 0; h < 4; ++h) acc[j][h] = sum[j][h];
  }
  if (shrinkTile) {
    // Of the tile's A rows, each token's own adapter's up to its rank, scaled; then this tile
    // counts itself done. (A slot's rows lie in one tile: the slot rank divides 64 or 64 divides it.)
    // Shrink tiles hold one module, so the adapter from slot s has its rank q at row s U + q
    // (lora_runs.h): one product a token, not loraRowPlace's divisions for every value, which made
    // o's and down's GEMMs 2.8-3.1 us slower at rank 16 on an H200.
    const int U = loraSlotRank(lora);
    int first[4][2];
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int t = tokenOf(j, e);
        first[j][e] = t < args.M && tokSlot[t] >= 0 ? tokSlot[t] * U : INT_MAX;
      }
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int h = 0; h < 4; ++h) {
        const int t = tokenOf(j, h), r = rowOf(h) - first[j][h & 1];
        if (r >= 0 && r < tokRank[t * kDecodeGemmMaxModules])
          __stcg(lora.mid + t * lora.maxRank + r, tokScale[t] * acc[j][h]);
      }
    if (hasDelta) {
      __threadfence();
      firstGroupSync();
      if (tid == 0) atomicAdd(counters + kShrinkDone, 1u);
    }
    pdlLaunchDependents();
    return;
  }
  if (hasDelta) {
    // Each token's scaled shrink outputs into the spent stages; then the deltas.
    if (tid == 0)
      while (loadAcquire(counters + kShrinkDone) < static_cast<unsigned>(shrinkTiles)) __nanosleep(32);
    firstGroupSync();
    __threadfence();
    // [kTokens][maxRank + 4]: the four tokens a warp reads at once fall in different banks.
    float* midS = reinterpret_cast<float*>(smem);
    const int midPitch = lora.maxRank + 4, midCount = args.M * lora.maxRank;
    // Four 16-byte loads in flight a thread before any store (a store could alias them). Past a
    // token's rank the values are stale; the products below skip them.
    for (int i0 = tid * 4; i0 < midCount; i0 += 4 * 128 * 4) {
      float4 v[4];
#pragma unroll
      for (int u = 0; u < 4; ++u)
        if (i0 + u * 512 < midCount) v[u] = __ldcg(reinterpret_cast<const float4*>(lora.mid + i0 + u * 512));
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int i = i0 + u * 512;
        if (i < midCount) *reinterpret_cast<float4*>(midS + i / lora.maxRank * midPitch + i % lora.maxRank) = v[u];
      }
    }
    cpAsyncWaitAll();
    firstGroupSync();
    if (tid == 0) {
      // The last weight tile to read the shrink sets both counters back for the next launch.
      const unsigned tiles = static_cast<unsigned>(gridDim.x / splits - shrinkTiles);
      if (atomicAdd(counters + kShrinkRead, 1u) == tiles - 1) {
        counters[kShrinkDone] = 0;
        counters[kShrinkRead] = 0;
      }
    }
    // Token 8 j + 2 q + e's delta on the thread's two rows (h = e and e + 2), eight ranks a round
    // from 16-byte loads, every token's loads of a round at once. B past a slot's rank may hold
    // anything, so those products are skipped (tokens without an adapter have rank 0).
    // A token's columns run on from its slot's (lora_runs.h); the rounds stop at the thread's
    // largest rank. A token of a smaller rank then reads B past its run (other adapters' columns,
    // the tile's next row, past the tile's last row at most the max rank's width into the pair
    // sums that follow it in shared memory), products the rank check below leaves out.
    int rank[4][2], bOff[4][2], most = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int t = tokenOf(j, e);
        rank[j][e] = tokRank[t * kDecodeGemmMaxModules];
        most = max(most, rank[j][e]);
        bOff[j][e] = (rowOf(e) - row0) * bPitch + max(tokSlot[t], 0) * loraSlotRank(lora);
      }
    float delta[4][4] = {};
    for (int c = 0; c < most; c += 8) {
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float* m = midS + tokenOf(j, e) * midPitch + c;
          const float4 ma = *reinterpret_cast<const float4*>(m), mb = *reinterpret_cast<const float4*>(m + 4);
          const float mv[8] = {ma.x, ma.y, ma.z, ma.w, mb.x, mb.y, mb.z, mb.w};
          const uint4 u0 = *reinterpret_cast<const uint4*>(bTile + bOff[j][e] + c);
          const uint4 u1 = *reinterpret_cast<const uint4*>(bTile + bOff[j][e] + 8 * bPitch + c);
          const uint32_t w0[4] = {u0.x, u0.y, u0.z, u0.w}, w1[4] = {u1.x, u1.y, u1.z, u1.w};
#pragma unroll
          for (int k = 0; k < 8; ++k) {
            const float x0 = __uint_as_float(k % 2 ? w0[k / 2] & 0xffff0000u : w0[k / 2] << 16);
            const float x1 = __uint_as_float(k % 2 ? w1[k / 2] & 0xffff0000u : w1[k / 2] << 16);
            if (c + k < rank[j][e]) {
              delta[j][e] = fmaf(x0, mv[k], delta[j][e]);
              delta[j][e + 2] = fmaf(x1, mv[k], delta[j][e + 2]);
            }
          }
        }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int h = 0; h < 4; ++h) acc[j][h] += delta[j][h];
  }
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int h = 0; h < 4; ++h)
      if (rowOf(h) < args.N && tokenOf(j, h) < args.M)
        args.Y[static_cast<size_t>(tokenOf(j, h)) * args.ldy + rowOf(h)] = yBefore[j][h] + acc[j][h];
  if (normShrink) {
    float out[4][4];
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int h = 0; h < 4; ++h) out[j][h] = yBefore[j][h] + acc[j][h];
    normShrinkParts(args, tile - shrinkTiles, row0, out, nw, spent + kPairSumsBytes, extra, &nsBar, 0, tokSlot);
  }
  pdlLaunchDependents();
#endif
}

}  // namespace

bool DecodeGemm::available() {
  static const bool built = sm90aStagedKernelRuns(&gDecodeGemmBuilt, reinterpret_cast<const void*>(&decodeGemmKernel));
  return built;
}

DecodeGemm::DecodeGemm(int sms) : sms_(std::max(sms, 1)) {
  partials_.ensure(static_cast<size_t>(sms_) * kPartFloats);
  aParts_.ensure(static_cast<size_t>(2 * sms_) * kTokens * kSpreadPartPitch);
  columns_.ensure(static_cast<size_t>(kTokens) * kDecodeGemmSpreadMaxRows);
  counters_.ensure(kCounters);
  check(cudaMemset(counters_.get(), 0, kCounters * sizeof(unsigned)), "cudaMemset");
  check(cudaFuncSetAttribute(decodeGemmKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             kSmemBytes + std::max(kLoraSmemBytes + kPairSumsBytes, kNormShrinkSmemBytes)),
        "cudaFuncSetAttribute");
  check(cudaFuncSetAttribute(decodeGemmKernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100),
        "cudaFuncSetAttribute");
}

namespace {

int aTiles(const DecodeGemmLora& l) { return (l.rows + kTileRows - 1) / kTileRows; }

// Whether the weight tiles read B from their padding columns (spread), and how many columns each
// row reads there.
bool padded(const DecodeGemmLora& l) { return l.A && l.spread; }
int padColumns(const DecodeGemmLora& l) { return l.splitRows ? l.rows / l.modules : l.rows; }

// The weights' tiles and, first, the LoRA shrink's (none when spread).
int gridTiles(const DecodeGemmArgs& a) {
  const int tiles = (a.N + kTileRows - 1) / kTileRows;
  return a.lora.A && !padded(a.lora) ? tiles + aTiles(a.lora) : tiles;
}

// A weight tile's K stages: over x, and spread also over the padding columns.
int xStagesOf(const DecodeGemmArgs& a) { return (a.K + kStageK - 1) / kStageK; }
int kTilesOf(const DecodeGemmArgs& a) {
  return xStagesOf(a) + (padded(a.lora) ? (padColumns(a.lora) + kStageK - 1) / kStageK : 0);
}

// A group's modules: slot-major A rows of equal ranks, and output rows from moduleRow[j], each a
// whole number of tiles, so that a weight tile lies in one module.
bool modulesSupported(const DecodeGemmArgs& a) {
  const DecodeGemmLora& l = a.lora;
  if (l.modules < 1 || l.modules > kDecodeGemmMaxModules || l.rows % (l.modules * loraSlotRank(l)) != 0) return false;
  if (l.modules > 1 && !l.spread) return false;
  for (int j = 0; j < l.modules; ++j)
    if (l.moduleRow[j] % kTileRows != 0 || l.moduleRow[j] >= a.N ||
        (j == 0 ? l.moduleRow[j] != 0 : l.moduleRow[j] <= l.moduleRow[j - 1]))
      return false;
  return !l.splitRows || l.spread;
}

bool loraSupported(const DecodeGemmArgs& a, int weightBlocks, int sms) {
  const DecodeGemmLora& l = a.lora;
  // Spread: B in the weights' padding columns, K stages that end where x does, a spare block, and
  // an A tile for each weight block at most.
  const bool form = l.spread
                        ? l.B == a.W + a.K && l.ldb == a.ldw && a.ldw >= a.K + padColumns(l) && a.K % kStageK == 0 &&
                              l.rows <= kDecodeGemmSpreadMaxRows && l.maxRank <= kDecodeGemmSpreadMaxRank &&
                              weightBlocks < sms && aTiles(l) <= weightBlocks
                        : l.rows <= kDecodeGemmLoraMaxRows && aligned16(l.mid) && l.mid;
  const DecodeGemmNormShrink& ns = a.normShrink;
  // The next projection's rows: whole slots of its slices, 8 rows (one mma's) in one slot.
  const int nsSlot = ns.slices > 0 ? ns.slices * (ns.slotRank ? ns.slotRank : ns.outputs / ns.slices) : 0;
  const bool normShrink =
      !ns.A ||
      (!l.B && !l.spread && ns.outputs >= 4 && ns.outputs % 4 == 0 && ns.outputs <= kNormShrinkMaxOutputs &&
       ns.slices > 0 && ns.outputs % ns.slices == 0 && nsSlot % 8 == 0 && ns.rows >= nsSlot && ns.rows % nsSlot == 0 &&
       ns.rows <= kNormShrinkMaxRows && aligned16(ns.A) && a.N % 8 == 0 && ns.normW && ns.partial);
  const int U = loraSlotRank(l);
  return form && normShrink && modulesSupported(a) && l.rows >= 8 && l.rows % 8 == 0 && l.maxRank >= 8 &&
         l.maxRank % 8 == 0 && U >= 8 && U % 8 == 0 && l.maxRank % U == 0 &&
         (kTileRows % U == 0 || U % kTileRows == 0) && l.rows % U == 0 && l.lda % 8 == 0 && (!l.B || l.ldb % 8 == 0) &&
         aligned16(l.A) && aligned16(l.B) && l.rowSlot && l.ranks && l.scaling;
}

// The late columns: after whole K stages of X, in 16-byte pieces, on a GEMM without LoRA.
bool lateSupported(const DecodeGemmArgs& a) {
  const DecodeGemmLateColumns& l = a.late;
  if (l.count == 0) return true;
  return l.count > 0 && l.count < a.K && (a.K - l.count) % kStageK == 0 && l.count % 8 == 0 && l.ld % 8 == 0 &&
         l.ld >= l.count && aligned16(l.X) && l.ready && l.target >= 1 && !a.lora.A && !a.normShrink.A;
}

}  // namespace

// cp.async.bulk.prefetch's terms: 16-byte starts and sizes.
bool DecodeGemm::prefetchSupported(const DecodeGemmPrefetch& pf) {
  if (pf.slices == 0) return true;
  if (pf.slices < 0 || pf.slices > 2 || !pf.rowSlot || pf.bytes % 16 != 0) return false;
  for (int j = 0; j < pf.slices; ++j)
    if (!aligned16(pf.a[j]) || pf.slotStride[j] * sizeof(bf16_t) % 16 != 0) return false;
  return true;
}

bool DecodeGemm::supports(const DecodeGemmArgs& a, int splits) const {
  const int tiles = gridTiles(a), kTiles = kTilesOf(a);
  // One block a multiprocessor (its shared memory), every block of the grid resident at once.
  return available() && a.M >= 1 && a.M <= kDecodeGemmMaxRows && a.N >= 1 && a.K >= 8 && a.K % 8 == 0 &&
         a.ldw % 8 == 0 && a.ldx % 8 == 0 && aligned16(a.W) && aligned16(a.X) && splits >= 1 && kTiles >= splits &&
         tiles <= kMaxTiles && static_cast<long long>(tiles) * splits <= sms_ &&
         (!a.lora.A || loraSupported(a, tiles * splits, sms_)) && (!a.normShrink.A || a.lora.A) &&
         prefetchSupported(a.prefetch) && lateSupported(a);
}

void DecodeGemm::run(const DecodeGemmArgs& a, int splits, cudaStream_t st, bool pdl) {
  if (!supports(a, splits)) throw std::invalid_argument("decode GEMM: unsupported shape");
  const bool spread = padded(a.lora);
  const int kTiles = kTilesOf(a);
  // Spread, the weights' rows run on through the padding columns, and the grid has spare blocks
  // on every multiprocessor past the weights' (spreadColumns deals them the columns' work).
  const CUtensorMap wMap = bf16TensorMap(a.W, spread ? a.K + padColumns(a.lora) : a.K, a.N, a.ldw, kBox, kTileRows);
  const CUtensorMap xMap = bf16TensorMap(a.X, a.K - a.late.count, a.M, a.ldx, kBox, kTokens);
  const CUtensorMap aMap = a.lora.A ? bf16TensorMap(a.lora.A, a.K, a.lora.rows, a.lora.lda, kBox, kTileRows) : wMap;
  SpreadGrid sg;
  const int blocks = gridTiles(a) * splits;
  sg.xStages = xStagesOf(a);
  if (spread) {
    sg.weightBlocks = blocks, sg.reducers = sms_ - blocks;
    sg.columns = columns_.get(), sg.parts = aParts_.get();
    sg.readers = spreadReaders(kTiles, splits, sg.xStages) * ((a.N + kTileRows - 1) / kTileRows);
  }
  const CUtensorMap cMap = spread         ? bf16TensorMap(sg.columns, a.lora.rows, a.M, a.lora.rows, kBox, kTokens)
                           : a.late.count ? bf16TensorMap(a.late.X, a.late.count, a.M, a.late.ld, kBox, kTokens)
                                          : xMap;
  const DecodeGemmNormShrink& ns = a.normShrink;
  const CUtensorMap nsMap = ns.A ? bf16TensorMap(ns.A, a.N, ns.rows, a.N, kBox, ns.rows) : xMap;
  // B's tile after the stages where the block adds the deltas itself.
  const int bTile = a.lora.A && a.lora.B && !spread ? kTileRows * (a.lora.rows + kBPad) * 2 : 0;
  const int smem = kSmemBytes + (ns.A ? std::max(ns.rows * kBox * 2, kPairSumsBytes) : bTile + kPairSumsBytes);
  launchPdlShared(decodeGemmKernel, dim3(blocks + sg.reducers), dim3(kThreads), smem, st, pdl, "decode GEMM launch", a,
                  wMap, xMap, aMap, cMap, nsMap, kTiles, splits, sg, partials_.get(), counters_.get());
}

}  // namespace cuda
}  // namespace troupe
