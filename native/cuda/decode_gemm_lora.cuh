// LoRA inside the decode GEMM (decode_gemm.h): the reads a block starts with, before the
// programmatic-launch wait (decode_gemm.cu does the rest at its tiles' ends). tokSlot, tokRank and
// tokScale are the block's shared copies of each token's slot, rank and scaling.
#pragma once

#include "cuda/bf16_pack.cuh"
#include "cuda/decode_gemm.h"
#include "cuda/decode_gemm_ops.cuh"
#include "cuda/lora_mma_ops.cuh"

namespace troupe {
namespace cuda {
namespace decode_gemm {

#if TROUPE_DECODE_GEMM_BODY
// Token tid's slot (uploaded with the step), and the pool's scaling and each module's rank for it
// (tokRank: kDecodeGemmMaxModules a token).
__device__ __forceinline__ void loraReadToken(const DecodeGemmArgs& args, int tid, int* tokSlot, int* tokRank,
                                              float* tokScale) {
  const DecodeGemmLora& lora = args.lora;
  const int slot = tid < args.M ? lora.rowSlot[tid] : -1;
  tokSlot[tid] = slot;
  for (int j = 0; j < lora.modules; ++j)
    tokRank[tid * kDecodeGemmMaxModules + j] =
        slot >= 0 ? min(lora.ranks[slot * lora.rankPitch + lora.module + j], lora.maxRank) : 0;
  tokScale[tid] = slot >= 0 ? lora.scaling[slot] : 0.0f;
}

// The shrink output of A's row `row` for token t as its bf16 column: the sum scaled where the row
// is the token's own slot's below its module's rank, else 0 (rows past a rank in A may hold
// anything, and the padding multiplies every column).
__device__ __forceinline__ void loraWriteColumn(const DecodeGemmArgs& args, const SpreadGrid& sg, int t, int row,
                                                float sum, const int* tokSlot, const int* tokRank,
                                                const float* tokScale) {
  const LoraRowPlace p = loraRowPlace(args.lora, row);
  const int q = loraOwnRank(args.lora, p, tokSlot[t]);
  const bool own = q >= 0 && q < tokRank[t * kDecodeGemmMaxModules + p.module];
  sg.columns[static_cast<size_t>(t) * args.lora.rows + p.column] = toB(own ? sum * tokScale[t] : 0.0f);
}

// B's rows of a weight tile into shared memory, 16 bytes a copy by the first group's threads (the
// LoRA pool, written before the grid began, so this may run before the programmatic-launch wait).
__device__ __forceinline__ void loraCopyB(const DecodeGemmLora& lora, int N, int row0, bf16_t* bTile, int bPitch,
                                          int tid) {
  const int pieces = lora.rows / 8;
  for (int c = tid; c < kTileRows * pieces; c += 128) {
    const int r = c / pieces, k = c % pieces;
    if (row0 + r < N) cpAsync16(bTile + r * bPitch + k * 8, lora.B + static_cast<size_t>(row0 + r) * lora.ldb + k * 8);
  }
}

// The spare blocks of a spread grid: each token's shrink output for each of an A tile's rows, the
// tile's group parts added in order, into the columns (loraWriteColumn); then each block counts
// itself done. The (tile, token) pairs are dealt over every spare block's warps, tile-major, so
// that the tokens of one slot (a step where most rows use one adapter) spread over the blocks: with
// a block to each tile, one adapter's 32 tokens were one block's work, and its columns came late
// enough to hold the weight tiles at their padding stages. A warp waits only for its own pairs'
// tiles; pairs whose token is not the tile's slot's write zeros. Off the weights' path: the parts
// come first in every block, and the columns are read at the end of their K.
__device__ __forceinline__ void spreadColumns(const DecodeGemmArgs& args, const SpreadGrid& sg, int r, int aTiles,
                                              int kParts, const int* tokSlot, const int* tokRank, const float* tokScale,
                                              unsigned* counters) {
  const DecodeGemmLora& lora = args.lora;
  const int groupParts = 2 * kParts;
  constexpr int kWarps = kThreads / 32;
  const int lane = threadIdx.x & 31, allWarps = sg.reducers * kWarps;
  for (int i = r * kWarps + (threadIdx.x >> 5); i < aTiles * args.M; i += allWarps) {
    const int t = i / args.M, m = i % args.M;
    // A lane two of the tile's rows, 16 parts' loads of both at once (one part at a time took a
    // round trip each, which o's short GEMM then waited for).
    int row[2], at[2];
    bool own[2];
    for (int e = 0; e < 2; ++e) {
      row[e] = t * kTileRows + lane + 32 * e;
      const LoraRowPlace p = loraRowPlace(lora, row[e]);
      const int q = loraOwnRank(lora, p, tokSlot[m]);
      own[e] = row[e] < lora.rows && q >= 0 && q < tokRank[m * kDecodeGemmMaxModules + p.module];
      at[e] = p.module * lora.maxRank + (own[e] ? q : 0);
    }
    float v[2] = {0, 0};
    if (__any_sync(0xffffffffu, own[0] || own[1])) {
      if (lane == 0)
        while (loadAcquire(counters + kPartsDone + t) < static_cast<unsigned>(groupParts)) __nanosleep(32);
      __syncwarp();
      for (int k0 = 0; k0 < groupParts; k0 += 16) {
        float x[2][16];
#pragma unroll
        for (int u = 0; u < 16; ++u)
#pragma unroll
          for (int e = 0; e < 2; ++e)
            x[e][u] = own[e] && k0 + u < groupParts
                          ? __ldcg(sg.parts + (static_cast<size_t>(k0 + u) * kTokens + m) * kSpreadPartPitch + at[e])
                          : 0.0f;
#pragma unroll
        for (int u = 0; u < 16; ++u) v[0] += x[0][u], v[1] += x[1][u];
      }
    }
    for (int e = 0; e < 2; ++e)
      if (row[e] < lora.rows) loraWriteColumn(args, sg, m, row[e], v[e], tokSlot, tokRank, tokScale);
  }
  // The columns are read by tensor copies (the async proxy) in other blocks.
  asm volatile("fence.proxy.async.global;" ::: "memory");
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) atomicAdd(counters + kColumnsReady, 1u);
}

// The next projection's shrink parts of a weight tile (DecodeGemmNormShrink), by the first group
// of the block that writes it, on tensor cores. out[j][h]: the tile's outputs as that group holds
// them (row 16 (warp % 4) + g (+ 8 for h >= 2), token 8 j + 2 q + (h & 1)); nw[e]: the norm's
// weights of rows h = 2 e. h w goes to yw as bf16 (a spent stage: a token's 64 features in 128
// bytes, their 16-byte pieces swizzled by the token's low three bits, as the tensor copy lays A's
// rows in aS). Then each warp takes every fourth 8-row tile of A: every token's products with its
// rows (mma m16n8k16 over two 16-token tiles), of which a token keeps its own slot's. K slots are
// assigned as lora_mma_ops.cuh does (a lane's 16-byte piece of a row feeds two mmas), so both
// operands are plain 16-byte loads, each warp's spread over the banks by the swizzle.
__device__ __forceinline__ void normShrinkParts(const DecodeGemmArgs& args, int weightTile, int row0,
                                                const float (&out)[4][4], const float (&nw)[2], uint8_t* yw,
                                                const uint8_t* aS, uint64_t* aBar, unsigned parity,
                                                const int* tokSlot) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, q = lane & 3;
  auto offset = [](int row, int piece) { return row * 128 + ((piece ^ (row & 7)) * 16); };
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int h = 0; h < 4; ++h) {
      const int r = (warp & 3) * 16 + g + (h >= 2 ? 8 : 0), t = 8 * j + 2 * q + (h & 1);
      const float v = row0 + r < args.N && t < args.M ? out[j][h] * nw[h >> 1] : 0.0f;
      *reinterpret_cast<uint16_t*>(yw + offset(t, r / 8) + (r % 8) * 2) = toB(v);
    }
  firstGroupSync();
  barrierWait(aBar, parity);
  const DecodeGemmNormShrink& ns = args.normShrink;
  // Token rows g and g + 8 of both 16-token tiles: pieces q and 4 + q (the two 32-wide chunks).
  uint4 x[2][2][2];  // [tile][row g, g + 8][chunk]
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int e = 0; e < 2; ++e)
#pragma unroll
      for (int c = 0; c < 2; ++c)
        x[m][e][c] = *reinterpret_cast<const uint4*>(yw + offset(16 * m + 8 * e + g, 4 * c + q));
  for (int n0 = warp * 8; n0 < ns.rows; n0 += 32) {
    uint4 b[2];
#pragma unroll
    for (int c = 0; c < 2; ++c) b[c] = *reinterpret_cast<const uint4*>(aS + offset(n0 + g, 4 * c + q));
    // Rows n0 + 2 q and + 1: slot s's slice j at place p (lora_runs.h); a token keeps them as its
    // outputs j R + (s - its slot) U + p, R the max rank, where that rank is its adapter's.
    const int U = ns.slotRank ? ns.slotRank : ns.outputs / ns.slices, R = ns.outputs / ns.slices;
    const int s = n0 / (ns.slices * U), within = n0 % (ns.slices * U), j = within / U, p = within % U + 2 * q;
#pragma unroll
    for (int m = 0; m < 2; ++m) {
      float d[4] = {};
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        mma_ops::mma(d, x[m][0][c].x, x[m][1][c].x, x[m][0][c].y, x[m][1][c].y, b[c].x, b[c].y);
        mma_ops::mma(d, x[m][0][c].z, x[m][1][c].z, x[m][0][c].w, x[m][1][c].w, b[c].z, b[c].w);
      }
      // Rows g and g + 8 of the tile are tokens; columns 2 q and + 1 outputs of one slot.
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int t = 16 * m + 8 * e + g, rank = (s - tokSlot[t]) * U + p;
        if (t < args.M && tokSlot[t] >= 0 && s >= tokSlot[t] && rank < R)
          __stcg(
              reinterpret_cast<float2*>(
                  ns.partial + (static_cast<size_t>(weightTile) * kTokens + t) * kNormShrinkMaxOutputs + j * R + rank),
              make_float2(d[2 * e], d[2 * e + 1]));
      }
    }
  }
}
#endif

}  // namespace decode_gemm
}  // namespace cuda
}  // namespace troupe
