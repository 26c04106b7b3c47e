// A decode projection's GEMM of the engine's own (compute capability 9.0, sm_90a code), for the
// projections that add into the residual (o and down) at up to 32 tokens. cuBLAS's GEMM there
// starts reading its weights only once the kernel before has finished; this one is launched with
// programmatic dependent launch and copies its first weight stages while that kernel drains, and
// it splits each 64-row tile's K over two blocks so that every multiprocessor streams. Measured on
// an H200 at Llama-8B's shapes (bench/results/2026-12-01-h200-decode-gemm.json): down 35.1 us
// behind siluMul against 36.4 for cuBLAS, o 13.9 behind a 2 us kernel against 14.7; cuBLAS stays
// for q/k/v (whole tiles here: 18.3 against 17.3); gate/up, with more tiles than multiprocessors,
// has a GEMM of its own (gate_up_gemm.h).
//
// The form: 64 weight rows a tile and every token (up to 32) a tile; the tensor memory accelerator
// copies four 64-wide K boxes of the weights and of the token rows a stage (48 KB, 128-byte
// swizzle), four stages; two warpgroups take alternate stages with wgmma (64 x 32 x 16) and add
// their sums at the tile's end. A tile's splits meet in a workspace, and the last block of the
// tile to finish adds them in block order (the same result every time).
//
// With LoRA (DecodeGemmLora) the GEMM also takes a decode step's adapter deltas, with no shrink
// launch before it: the blocks of its first tiles multiply every slot's A rows of the module by
// the same token rows (the shrink, for every slot, as extra output rows that go to a workspace),
// and the block that finishes each weight tile adds, for each token, its own slot's scaled
// B x (A x) to the tile's sums before it writes them (a slot's A rows must lie in one tile:
// maxRank divides 64, or 64 divides it). B's tile comes into shared memory before
// the programmatic-launch wait; what that block waits for at the end is the shrink tiles, which
// stream as much as every other block and start first. Where the shrink tiles would not fit beside
// the weights' (rank 64 at 8 slots), the weight blocks take A's K stages in their own pipelines
// instead (DecodeGemmLora::spread).
#pragma once

#include <cuda_runtime_api.h>

#include "cuda/device.h"
#include "cuda/kernels.h"

namespace troupe {
namespace cuda {

constexpr int kDecodeGemmMaxRows = 32;

// The LoRA part: A holds `rows` = slots x maxRank rows of K (lda apart; slot k's rank r at row
// k maxRank + r); output row n's B for slot k, rank r is at B + n ldb + k maxRank + r. Token m
// (slot rowSlot[m], -1 for none) adds scaling[slot] sum over r < ranks[slot rankPitch + module] of
// B(n, slot, r) (A x_m)[slot maxRank + r]. mid: the shrink's workspace, M x maxRank floats (each
// token's own slot's outputs, scaled), 16-byte aligned. Without B the GEMM only leaves the shrink
// in mid (entries past a token's rank untouched) and adds no delta: the kernel after it does
// (rmsnorm_delta.h), so no weight tile waits for the shrink tiles.
//
// spread: no shrink tiles (rank 64 at 8 slots is 8 of them, 16 more blocks than fit beside o's and
// down's 128 on 132 multiprocessors). Each weight block first takes a few K stages of one A tile in
// its own pipeline; the grid's spare blocks add those parts (in a fixed order) into each token's
// scaled shrink outputs, as bf16 columns (zero outside its own slot and rank) that every weight
// tile multiplies by B where the fused layout keeps it, in the weights' padding columns (B = W + K,
// ldb = ldw, zero past each slot's rank: every column is multiplied), as the last stages of its K.
// mid is not used. For a group of modules (q/k/v) as well: A's rows slot-major, slot k's module j
// at rows (k modules + j) maxRank, module j's rank at ranks[slot rankPitch + module + j], its
// output rows from moduleRow[j] (multiples of 64); the padding holds module j's B at columns
// j slots maxRank + k maxRank + r of its rows, or with splitRows at k maxRank + r (each row only
// its own module's block). Needs K a multiple of 256, maxRank up to 128, rows up to
// kDecodeGemmSpreadMaxRows and a spare block.
constexpr int kDecodeGemmLoraMaxRows = 128;
constexpr int kDecodeGemmSpreadMaxRows = 2048, kDecodeGemmSpreadMaxRank = 128, kDecodeGemmMaxModules = 3;
// With a pool cut into slots of slotRank (lora_runs.h), "slot k" above is an adapter's run of
// slots from k: its rank q at row (k + q / U) modules U + j U + q % U (U the slot rank) and at B's
// column k U + q.
struct DecodeGemmLora {
  const bf16_t* A = nullptr;
  int lda = 0, rows = 0, maxRank = 0;
  int slotRank = 0;  // 0: maxRank
  const bf16_t* B = nullptr;
  int ldb = 0;
  const int32_t* rowSlot = nullptr;
  const int32_t* ranks = nullptr;
  int rankPitch = 0, module = 0;
  const float* scaling = nullptr;
  float* mid = nullptr;
  bool spread = false;
  int modules = 1;
  int moduleRow[kDecodeGemmMaxModules] = {};
  bool splitRows = false;
};

// The next projection's LoRA shrink begun here (o's GEMM, for gate/up after the norm): that
// projection's input is the normed residual, w (h / rms(h)), so its shrink is (1 / rms) sum over n
// of h[n] w[n] A[c][n], and this GEMM writes h. The block that writes each weight tile dots its
// 64 outputs h w with each token's own slot's A rows over the same 64 features and leaves the
// sums in partial; the norm (rmsnorm_delta.h's NormShrinkColumns) adds them over the tiles, with
// what the delta it adds contributes, and applies 1 / rms. A holds slots x outputs rows of N
// features (slot k's output c at row k outputs + c), a weight tile's 64 features of every row
// copied into shared memory of their own as the block starts: rows up to kNormShrinkMaxRows. Needs
// lora.A without lora.B (the delta left to the norm), not spread. On an H200 at Llama-8B's shapes
// (8 rank-16 slots, 32 tokens) the parts cost o's GEMM 1.3-1.4 us in a decode step, and the norm
// ends 3.4 us after the GEMM (4.0 before its blocks fitted beside the GEMM's) against 2.0 without
// the columns: level with gate/up's item shrink (bench/results/2026-12-04-h200-lora-gate-up-in-o.json,
// bench/results/2026-12-04-h200-lora-norm-shrink-small.json).
constexpr int kNormShrinkMaxOutputs = 32, kNormShrinkMaxRows = 256;
struct DecodeGemmNormShrink {
  const bf16_t* A = nullptr;
  int rows = 0, outputs = 0;
  int slices = 1, slotRank = 0;  // A's rows slot-major over slots of slotRank (0: outputs / slices)
  const float* normW = nullptr;  // the norm's weights, N of them
  float* partial = nullptr;      // [weight tile][kDecodeGemmMaxRows tokens][kNormShrinkMaxOutputs]
};

// The next projection's LoRA A factors, asked of L2 (a bulk prefetch) by each block's copying warp
// once it has issued its last stage, so that gate/up's item shrink after the norm reads them from
// L2 rather than memory: slice j of slot k at a[j] + k slotStride[j], bytes of it. Each slot's
// first token (by rowSlot, M of them) has the grid's blocks of that token (block b takes token
// b % M) split its slot's bytes between them, so a slot is asked for once. The GEMM's blocks end
// over its last 10-12 us, so the requests go out while fewer of its blocks still stream; the item
// shrink's own prefetch before its wait comes later, its blocks resident only once the GEMM's leave.
struct DecodeGemmPrefetch {
  const bf16_t* a[2] = {};
  size_t slotStride[2] = {};
  size_t bytes = 0;  // a multiple of 16, as each slice's start
  int slices = 0;
  const int32_t* rowSlot = nullptr;
};

// The last `count` of the K columns from the kernel launched just before this GEMM (o's item
// shrink, which lets it launch as that kernel's blocks start): X holds the first K - count columns
// (the attention's rows, written before that kernel), and X + K - count the rest, ld apart. The
// blocks copy their first weight stages at once and the rows' stages once `ready` counts `target`
// (that kernel's first blocks count themselves there once the kernel before them has completed, so
// the rows are written), and wait for that kernel itself only before the columns' stages: the
// weights stream under the attention as in a step without adapters, and the shrink's work runs
// beside the GEMM's. K - count a multiple of 256; the last block to pass sets ready[0] and ready[1]
// back to 0 for the next launch. Not with lora or normShrink.
struct DecodeGemmLateColumns {
  const bf16_t* X = nullptr;
  int ld = 0, count = 0;
  unsigned* ready = nullptr;  // [2]: the count, and the blocks that have read it
  int target = 0;
};

// Y[m][n] = sum over k < K of X[m][k] W[n][k] (+ Y[m][n] when accumulating) for m < M, n < N: row
// m of Y at Y + m ldy (f32), of X at X + m ldx and row n of W at W + n ldw (bf16); plus the LoRA
// deltas when lora.A is set.
struct DecodeGemmArgs {
  const bf16_t* W = nullptr;
  int ldw = 0;
  const bf16_t* X = nullptr;
  int ldx = 0;
  float* Y = nullptr;
  int ldy = 0;
  int M = 0, N = 0, K = 0;
  bool accumulate = false;
  DecodeGemmLora lora;
  DecodeGemmNormShrink normShrink;
  DecodeGemmPrefetch prefetch;
  DecodeGemmLateColumns late;
  // Lets the kernel after it start launching once each block's products are summed, before the
  // splits meet and Y is written: a kernel launched early (an RMSNorm, pdl.cuh) then waits for
  // the writes on the multiprocessors rather than being launched after them.
  bool releaseEarly = false;
  // Lets it start launching as each block starts: the norm after it then reads its B rows (and the
  // kernels it releases theirs) while the GEMM streams its weights, off the step's path, and waits
  // on the multiprocessors beside the GEMM's blocks for its writes.
  bool releaseAtStart = false;
};

class DecodeGemm {
 public:
  explicit DecodeGemm(int sms);
  // Whether this build has the kernel for the current device.
  static bool available();
  // Whether the kernel can issue pf (supports checks it with the rest of the arguments).
  static bool prefetchSupported(const DecodeGemmPrefetch& pf);
  // 1 <= M <= 32; K and the leading dimensions multiples of 8; W and X 16-byte aligned; at least
  // `splits` stages of K; and every block (tiles x splits, one a multiprocessor) resident at once.
  // With LoRA also: lora.rows a multiple of 8 up to kDecodeGemmLoraMaxRows (their tiles count with
  // the weights'), A and B 16-byte aligned; spread: as DecodeGemmLora says.
  bool supports(const DecodeGemmArgs& a, int splits) const;
  // pdl: may start while the kernel before drains; X and Y are read only after it completes.
  void run(const DecodeGemmArgs& a, int splits, cudaStream_t st, bool pdl);

 private:
  int sms_;
  DeviceBuffer<float> partials_;  // the splits' sums, [block][64 rows x 32 tokens]
  // Spread: each weight block's two groups' A parts, [2 x blocks][32 tokens][128 ranks] (each
  // token's own slot's), and the shrink outputs as bf16 columns, [32 tokens][rows] in the padding's
  // order.
  DeviceBuffer<float> aParts_;
  DeviceBuffer<bf16_t> columns_;
  // Splits done per row tile (the last one sets it back to 0); past the tiles, the LoRA shrink
  // tiles done and the weight tiles that have read them (the last of those zeroes both).
  DeviceBuffer<unsigned> counters_;
};

}  // namespace cuda
}  // namespace troupe
