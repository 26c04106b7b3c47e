// The residual's RMSNorm that first adds the LoRA deltas of the projection before it. In a decode
// step the o and down projections' decode GEMM leaves each token's scaled shrink outputs in mid
// (decode_gemm.h, without B), and this kernel adds B s into the residual row, writes the row back
// and makes the next projection's normed rows from it: the GEMM's weight tiles then no longer wait
// for its shrink tiles. Blocks of one token meet in a thread-block cluster (compute capability 9.0).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/kernels.h"
#include "cuda/lora_fused.h"

namespace troupe {
namespace cuda {

// The next projection's LoRA columns, finished from the parts the GEMM before left
// (decode_gemm.h's DecodeGemmNormShrink): token t's output c (slice c / R's rank c % R, the adapter
// from slot k) is scaling[k] (1 / rms) (sum over tiles of partial[tile][t][c] + sum over r < the
// delta's rank of mid[t][r] n[k U + r][c]), where n = B^T diag(w) A^T is what the delta adds to the
// parts (GpuLoraPool::normShrinkN, its rows running on from slot to slot), written as the item
// shrink writes its columns into xa: zero outside the token's own adapter's columns and rank. The
// normed rows go to every one of the token's rows in xa.
struct NormShrinkColumns {
  const float* partial = nullptr;  // [tile][32 tokens][32]
  int tiles = 0, outputs = 0, slices = 0, slots = 0;
  int rankModule = 0;        // the first slice's module in ranks (the others follow it)
  const float* n = nullptr;  // [slot][slotRank][outputs]
  const float* scaling = nullptr;
  AugmentedRows xa;  // y is xa.data, ldy xa.ld
};

// Token t (slot rowSlot[t], -1 for none) adds sum over r < min(ranks[slot rankPitch + module],
// maxRank) of bt[(slot U + r) H + n] mid[t maxRank + r] to h[t H + n] for every n < H (U the
// pool's slot rank); B and mid past a slot's rank may hold anything.
struct ResidualDelta {
  const bf16_t* bt = nullptr;  // [slot][slotRank][H] (GpuLoraPool::bTransposed) for btSlots slots
  const int32_t* rowSlot = nullptr;
  const int32_t* ranks = nullptr;
  int rankPitch = 0, module = 0, maxRank = 0;
  int slotRank = 0, btSlots = 0;  // 0: maxRank, and any slot (B is read no further than the rank)
  const float* mid = nullptr;
  NormShrinkColumns columns;  // where columns.partial is set
};

// H a multiple of 4 up to 8,192 (a cluster of up to 8 blocks a token), maxRank 8, 16 or 32.
bool rmsnormDeltaSupported(int H, int maxRank);

// The delta into h (T rows of H), then y[t ldy + n] = bf16(w[n] (h[t][n] / rms(h[t]))) as rmsnorm
// writes it. pdl: may start while the kernel before drains (reads h and mid only after it).
void rmsnormDelta(float* h, const float* w, bf16_t* y, int T, int H, float eps, int ldy, const ResidualDelta& d,
                  cudaStream_t s, bool pdl);

}  // namespace cuda
}  // namespace troupe
