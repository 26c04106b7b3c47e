// The decode GEMM's streamed form (decode_gemm_streamed.h): the pipeline of decode_gemm.cu (a
// copying warp, four stages of four 64-K boxes, two warpgroups taking alternate stages), run over
// a block's units of several tiles one after another. At each tile's end the second group's sums
// go to the first through shared memory (two buffers, both groups meeting once a tile), and the
// first writes the tile, or its part of a cut tile to the workspace.
#include <cuda.h>

#include "cuda/decode_gemm_lora.cuh"
#include "cuda/decode_gemm_streamed.h"
#include "cuda/pdl.cuh"

namespace troupe {
namespace cuda {

namespace {

using namespace decode_gemm;  // NOLINT(build/namespaces): the kernel's own layout and instructions

__global__ void __launch_bounds__(kThreads, 1)
    decodeGemmStreamedKernel(DecodeGemmArgs args, const __grid_constant__ CUtensorMap wMap,
                             const __grid_constant__ CUtensorMap xMap, const __grid_constant__ CUtensorMap aMap,
                             const __grid_constant__ CUtensorMap cMap, StreamGrid sg, float* partials,
                             unsigned* counters) {
#if TROUPE_DECODE_GEMM_BODY
  extern __shared__ __align__(1024) uint8_t smemRaw[];
  bf16_t* smem = reinterpret_cast<bf16_t*>(smemRaw + ((1024 - smemAddr(smemRaw) % 1024) % 1024));
  __shared__ uint64_t full[kStages], empty[kStages];
  __shared__ float pairSums[2][4][16][32];
  __shared__ bool last;
  __shared__ int tokSlot[kTokens], tokRank[kTokens * kDecodeGemmMaxModules];
  __shared__ float tokScale[kTokens];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, q = lane & 3;
  const int b = blockIdx.x;
  const DecodeGemmLora& lora = args.lora;
  const bool hasLora = lora.A != nullptr;
  // This block's A part (stages ka0.. of A tile aTile's x stages) and its run of weight units.
  const int na = hasLora ? aStagesOf(sg, b) : 0;
  const int aTile = na > 0 ? b / sg.aParts : 0, aPart = na > 0 ? b % sg.aParts : 0;
  const int ka0 = aPart * sg.xStages / sg.aParts;
  const int u0 = weightStart(sg, b), u1 = weightStart(sg, b + 1);
  // A first tile cut by the block before goes last (its padding stage then comes at the end).
  const int t0 = u0 / sg.kTiles;
  const int firstLen = u0 % sg.kTiles != 0 && u1 > (t0 + 1) * sg.kTiles ? (t0 + 1) * sg.kTiles - u0 : 0;
  const int restLen = u1 - u0 - firstLen, total = na + u1 - u0;
  // Local stage i's unit (past the A part).
  auto unitOf = [&](int i) {
    const int j = i - na;
    return j < restLen ? u0 + firstLen + j : u0 + j - restLen;
  };
  // The padding stages of a tile read its module's block of the columns where rows are split.
  auto columnBase = [&](int tile) {
    if (!lora.splitRows) return 0;
    int j = 0;
    while (j + 1 < lora.modules && tile * kTileRows >= lora.moduleRow[j + 1]) ++j;
    return j * (lora.rows / lora.modules);
  };
  if (tid == kConsumers) {
    asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&wMap)) : "memory");
    asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&xMap)) : "memory");
    if (na > 0) asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&aMap)) : "memory");
  }
  initStageBarriers(full, empty, kStages, kConsumerWarps / 2);
  auto stageW = [&](int i) { return smem + (i % kStages) * kStageElems; };
  auto stageX = [&](int i) { return stageW(i) + kTileRows * kStageK; };

  if (warp == kConsumerWarps) {  // the copying warp
    if (lane == 0) {
      auto issueW = [&](int i) {
        barrierExpect(&full[i % kStages], (kTileRows + kTokens) * kStageK * 2);
        const int u = i < na ? 0 : unitOf(i);
        const int k = i < na ? ka0 + i : u % sg.kTiles, row = i < na ? aTile * kTileRows : u / sg.kTiles * kTileRows;
        for (int c = 0; c < kCopies; ++c)
          tensorCopy(stageW(i) + c * kTileRows * kBox, i < na ? &aMap : &wMap, k * kStageK + c * kBox, row,
                     &full[i % kStages]);
      };
      bool columnsReady = false;
      auto issueX = [&](int i) {
        const int u = i < na ? 0 : unitOf(i);
        const int k = i < na ? ka0 + i : u % sg.kTiles;
        if (i >= na && k >= sg.xStages) {
          // The padding columns' stages read the shrink outputs, once every A tile's are written.
          if (!columnsReady) {
            while (loadAcquire(counters + kColumnsReady) < static_cast<unsigned>(sg.aTiles)) __nanosleep(128);
            asm volatile("fence.proxy.async.global;" ::: "memory");
            columnsReady = true;
          }
          const int c0 = columnBase(u / sg.kTiles) + (k - sg.xStages) * kStageK;
          for (int c = 0; c < kCopies; ++c)
            tensorCopy(stageX(i) + c * kTokens * kBox, &cMap, c0 + c * kBox, 0, &full[i % kStages]);
          return;
        }
        for (int c = 0; c < kCopies; ++c)
          tensorCopy(stageX(i) + c * kTokens * kBox, &xMap, k * kStageK + c * kBox, 0, &full[i % kStages]);
      };
      for (int i = 0; i < kStages && i < total; ++i) issueW(i);
      pdlWait();
      for (int i = 0; i < total; ++i) {
        if (i >= kStages) {
          barrierWait(&empty[i % kStages], ((i / kStages) - 1) & 1);
          issueW(i);
        }
        issueX(i);
      }
    }
    return;
  }
  if (na > 0 && tid < kTokens) loraReadToken(args, tid, tokSlot, tokRank, tokScale);
  if (na > 0) consumersSync();
  pdlWait();

  const int group = warp >> 2;
  // acc[j][h]: row 16 (warp & 3) + g (+ 8 for h >= 2) of the tile, token 8 j + 2 q + (h & 1).
  auto rowIn = [&](int h) { return (warp & 3) * 16 + g + (h >= 2 ? 8 : 0); };
  auto tokenOf = [&](int j, int h) { return 8 * j + 2 * q + (h & 1); };
  auto stage = [&](int i, float(&sums)[4][4]) {
    barrierWait(&full[i % kStages], (i / kStages) & 1);
    const bf16_t* w = stageW(i);
    const bf16_t* x = stageX(i);
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
    for (int kk = 0; kk < kStageK / 16; ++kk) {
      const int c = kk / (kBox / 16), k16 = kk % (kBox / 16);
      wgmma32(sums, wgDesc(w + c * kTileRows * kBox + k16 * 16), wgDesc(x + c * kTokens * kBox + k16 * 16));
    }
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
    __syncwarp();
    if (lane == 0) barrierArrive(&empty[i % kStages]);
  };
  // This group's first stage at or after local stage i.
  auto firstOwn = [&](int i) { return i + ((i & 1) != group ? 1 : 0); };

  if (na > 0) {
    float accA[4][4] = {};
    for (int i = group; i < na; i += 2) stage(i, accA);
    // This group's sums of the part: each token's own slot's rows of the tile.
    float* mine = sg.parts + static_cast<size_t>(b * 2 + group) * kTokens * kSpreadPartPitch;
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int h = 0; h < 4; ++h) {
        const int t = tokenOf(j, h), row = aTile * kTileRows + rowIn(h);
        const LoraRowPlace p = loraRowPlace(lora, row);
        if (t < args.M && row < lora.rows && p.slot == tokSlot[t])
          __stcg(mine + t * kSpreadPartPitch + p.module * lora.maxRank + p.rank, accA[j][h]);
      }
    __threadfence();
    groupSync(group);
    if (tid % 128 == 0) atomicAdd(counters + kPartsDone + aTile, 1u);
    if (aPart == sg.aParts - 1) {
      // The tile's last part's block adds every part, in part order, into the columns.
      if (tid == 0)
        while (loadAcquire(counters + kPartsDone + aTile) < static_cast<unsigned>(2 * sg.aParts)) __nanosleep(32);
      consumersSync();
      const SpreadGrid cols{0, 0, 0, 0, nullptr, sg.columns};
      for (int e = tid; e < args.M * kTileRows; e += kConsumers) {
        const int m = e / kTileRows, row = aTile * kTileRows + e % kTileRows;
        if (row >= lora.rows) continue;
        const LoraRowPlace p = loraRowPlace(lora, row);
        float v = 0;
        if (p.slot == tokSlot[m] && p.rank < tokRank[m * kDecodeGemmMaxModules + p.module]) {
          float x[2 * 8];
          const int n = 2 * sg.aParts;
          for (int k0 = 0; k0 < n; k0 += 16) {
#pragma unroll
            for (int u = 0; u < 16; ++u)
              x[u] =
                  k0 + u < n
                      ? __ldcg(sg.parts +
                               (static_cast<size_t>(aTile * sg.aParts * 2 + k0 + u) * kTokens + m) * kSpreadPartPitch +
                               p.module * lora.maxRank + p.rank)
                      : 0.0f;
#pragma unroll
            for (int u = 0; u < 16; ++u) v += x[u];
          }
        }
        loraWriteColumn(args, cols, m, row, v, tokSlot, tokRank, tokScale);
      }
      // The columns are read by tensor copies (the async proxy) in other blocks.
      asm volatile("fence.proxy.async.global;" ::: "memory");
      __threadfence();
      consumersSync();
      if (tid == 0) atomicAdd(counters + kColumnsReady, 1u);
    }
  }

  // One tile's stages [s0, s1) (local), its units [v0, v1): the sums, the groups met, and the tile
  // (or this block's part of it) written by the first group.
  int segment = 0;
  bool readPadding = false;
  auto runTile = [&](int s0, int v0, int v1) {
    const int s1 = s0 + v1 - v0, tile = v0 / sg.kTiles, buf = segment++ & 1;
    readPadding |= v1 - tile * sg.kTiles > sg.xStages;
    float acc[4][4] = {};
    for (int i = firstOwn(s0); i < s1; i += 2) stage(i, acc);
    if (group == 1)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int h = 0; h < 4; ++h) pairSums[buf][warp - 4][j * 4 + h][lane] = acc[j][h];
    consumersSync();
    if (group == 1) return;
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int h = 0; h < 4; ++h) acc[j][h] += pairSums[buf][warp][j * 4 + h][lane];
    const int row0 = tile * kTileRows;
    if (v0 != row0 / kTileRows * sg.kTiles || v1 != v0 + sg.kTiles) {
      // A cut tile: each block's part through the workspace (a block's first tile in its first
      // slot, any other in its second); the last to finish adds them in block order.
      auto slotOf = [&](int blk) { return 2 * blk + (weightStart(sg, blk) / sg.kTiles == tile ? 0 : 1); };
      float4* mine = reinterpret_cast<float4*>(partials + static_cast<size_t>(slotOf(b)) * kPartFloats);
#pragma unroll
      for (int j = 0; j < 4; ++j) __stcg(mine + j * 128 + tid, make_float4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]));
      __threadfence();
      const int first = blockOfUnit(sg, tile * sg.kTiles), lastBlock = blockOfUnit(sg, (tile + 1) * sg.kTiles - 1);
      firstGroupSync();
      if (tid == 0) {
        int parts = 0;
        for (int blk = first; blk <= lastBlock; ++blk) parts += weightStart(sg, blk + 1) > weightStart(sg, blk) ? 1 : 0;
        last = atomicAdd(counters + tile, 1u) == static_cast<unsigned>(parts - 1);
        if (last) counters[tile] = 0;  // ready for the next launch, which starts after this one's blocks end
      }
      firstGroupSync();
      if (!last) return;
      __threadfence();
      float sum[4][4] = {};
      for (int blk = first; blk <= lastBlock; ++blk) {
        if (weightStart(sg, blk + 1) == weightStart(sg, blk)) continue;
        const float4* theirs =
            reinterpret_cast<const float4*>(partials + static_cast<size_t>(slotOf(blk)) * kPartFloats);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float4 v =
              blk == b ? make_float4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]) : __ldcg(theirs + j * 128 + tid);
          sum[j][0] += v.x, sum[j][1] += v.y, sum[j][2] += v.z, sum[j][3] += v.w;
        }
      }
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int h = 0; h < 4; ++h) acc[j][h] = sum[j][h];
    }
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int h = 0; h < 4; ++h)
        if (row0 + rowIn(h) < args.N && tokenOf(j, h) < args.M)
          args.Y[static_cast<size_t>(tokenOf(j, h)) * args.ldy + row0 + rowIn(h)] = acc[j][h];
  };
  // The run past the first tile's cut part, tile by tile; then that part.
  int s = na;
  for (int v = u0 + firstLen; v < u1;) {
    const int end = min(u1, (v / sg.kTiles + 1) * sg.kTiles);
    runTile(s, v, end);
    s += end - v, v = end;
  }
  if (firstLen > 0) runTile(s, u0, u0 + firstLen);
  if (group == 0 && hasLora) {
    // This block has read the shrink outputs; the last to have set the counters back.
    firstGroupSync();
    if (tid == 0 && readPadding && atomicAdd(counters + kColumnsRead, 1u) == static_cast<unsigned>(sg.readers - 1)) {
      for (int t = 0; t < sg.aTiles; ++t) counters[kPartsDone + t] = 0;
      counters[kColumnsReady] = 0;
      counters[kColumnsRead] = 0;
    }
  }
  pdlLaunchDependents();
#endif
}

}  // namespace

void prepareDecodeGemmStreamed() {
  check(cudaFuncSetAttribute(decodeGemmStreamedKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes),
        "cudaFuncSetAttribute");
  check(cudaFuncSetAttribute(decodeGemmStreamedKernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100),
        "cudaFuncSetAttribute");
}

void launchDecodeGemmStreamed(const DecodeGemmArgs& a, const StreamGrid& g, const CUtensorMap& wMap,
                              const CUtensorMap& xMap, const CUtensorMap& aMap, const CUtensorMap& cMap,
                              float* partials, unsigned* counters, cudaStream_t st, bool pdl) {
  launchPdlShared(decodeGemmStreamedKernel, dim3(g.blocks), dim3(kThreads), kSmemBytes, st, pdl,
                  "decode GEMM (streamed) launch", a, wMap, xMap, aMap, cMap, g, partials, counters);
}

}  // namespace cuda
}  // namespace troupe
