// The fused LoRA layout. Each of a layer's four base weights (q/k/v, o, gate/up, down; [rows][in])
// has `pad` more columns per row, and the LoRA pool keeps its B factors there: held module j of
// the weight's group (in q, k, v / o / gate, up / down order) owns the columns in + j S R .. in +
// (j + 1) S R, of which slot k takes the R = maxRank from in + j S R + k R, in the module's own
// rows. A step's LoRA input goes to the same columns of an augmented activation row: the token's
// scaled shrink outputs under its slot's columns, zero under every other slot's. One GEMM over
// in + pad columns then adds the base projection and every token's adapter delta together, with
// no expand kernel and no second pass over the f32 output; or, for a decode step, a GEMM over the
// pad columns alone adds the deltas after the base GEMM, so the shrink can run beside that one.
//
// With split rows (gate/up, and q/k/v, when all of the group's modules are held: loraSplitRows)
// each module's weight rows carry only their own block, in + k R for slot k (pad S R), and each
// token has one augmented row per module, the x columns copied into each: module j's rows are
// slicePitch elements after module 0's. The group's GEMM is then a batch over the modules (gate
// and up: strided; q, k and v, whose row counts differ: pieces of k's rows, splitPieceRows), and
// no module's rows read another's zero blocks (at 8 slots of rank 64 those are 29 MB of gate/up's
// weight a layer and 13 MB of q/k/v's).
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "backend.h"
#include "cuda/kernels.h"
#include "cuda/lora_kernels.h"

namespace troupe {
namespace cuda {

enum WeightGroup { kQkvWeight = 0, kOWeight, kGateUpWeight, kDownWeight, kNumWeightGroups };

inline WeightGroup weightGroupOf(int module) {
  return module <= kV ? kQkvWeight : module == kO ? kOWeight : module <= kUp ? kGateUpWeight : kDownWeight;
}

// A group's base weight: rows (its fused outputs) and in (its input features), for a rank's config.
inline void weightGroupShape(const ModelConfig& c, WeightGroup g, int64_t& rows, int64_t& in) {
  const int64_t h = c.hiddenSize, inter = c.intermediateSize, q = static_cast<int64_t>(c.numHeads) * c.headDim,
                kv = static_cast<int64_t>(c.numKvHeads) * c.headDim;
  const int64_t r[kNumWeightGroups] = {q + 2 * kv, h, 2 * inter, h}, i[kNumWeightGroups] = {h, q, h, inter};
  rows = r[g];
  in = i[g];
}

// Which of its group's held modules `module` is (its column block in the padding, or with split
// rows its augmented row).
inline int loraColumnBlock(int module, uint32_t mask) {
  int j = 0;
  for (int m = 0; m < module; ++m) j += weightGroupOf(m) == weightGroupOf(module) && ((mask >> m) & 1u) ? 1 : 0;
  return j;
}

// Which groups take split rows: none, gate/up only, q/k/v too where their shared row's zero
// blocks are large (kAuto, the default), or q/k/v always.
enum class SplitRows { kNone, kGateUp, kAuto, kAll };
// q/k/v's pieces cost a batched GEMM of six products where a shared row costs one; measured on an
// H200 (Llama-3.1-8B shapes, batch 32 over 8 adapters, bench/results/2026-11-30-h200-lora-qkv-split-rows.json),
// that paid at 8 slots of rank 64 (decode +19.3-19.8% against +20.7-20.8%) and not at rank 16
// (+9.3% against +8.9-9.0%), so split rows take q/k/v from this many slots x max rank.
constexpr int kQkvSplitMinColumns = 256;

// Whether the group's held modules take split rows: gate/up with both held, q/k/v with all three
// (per mode). q's rows are a whole number of k's (heads are a multiple of KV heads), so the q/k/v
// GEMM runs as equal pieces of k's rows in one batched launch; a q GEMM beside a batched k/v one
// had measured slower than one GEMM over the shared padding.
inline bool loraSplitRows(WeightGroup g, uint32_t mask, int slots, int maxRank, SplitRows mode) {
  auto held = [&](int m) { return ((mask >> m) & 1u) != 0; };
  if (mode == SplitRows::kNone) return false;
  if (g == kGateUpWeight) return held(kGate) && held(kUp);
  const bool qkv = mode == SplitRows::kAll ||
                   (mode == SplitRows::kAuto && static_cast<long long>(slots) * maxRank >= kQkvSplitMinColumns);
  return qkv && g == kQkvWeight && held(kQ) && held(kK) && held(kV);
}

// Split rows' GEMM pieces: the rows each piece takes (the greatest common divisor of the slices'
// rows: k's for q/k/v), so that one batched launch of equal products covers every slice.
inline int splitPieceRows(const LoraSlices& sl) {
  int n = 0;
  for (int j = 0; j < sl.count; ++j) {
    int a = sl.out[j], b = n;
    while (b) {
      const int r = a % b;
      a = b;
      b = r;
    }
    n = a;
  }
  return n;
}

// How many such pieces the slices make.
inline int splitPieces(const LoraSlices& sl) {
  const int n = splitPieceRows(sl);
  int pieces = 0;
  for (int j = 0; j < sl.count; ++j) pieces += sl.out[j] / n;
  return pieces;
}

// The modules of group g that the pool holds (mask: bits by LoraModule).
inline int heldInGroup(WeightGroup g, uint32_t mask) {
  int held = 0;
  for (int m = 0; m < kNumLoraModules; ++m) held += weightGroupOf(m) == g && ((mask >> m) & 1u) ? 1 : 0;
  return held;
}

// Padding columns of a group's weight: its held modules' blocks (one with split rows), rounded up
// to 8 so that rows stay 16-byte aligned; zero without a pool.
inline int loraPadColumns(WeightGroup g, int slots, int maxRank, uint32_t mask, bool split) {
  int held = heldInGroup(g, mask);
  if (split) held = std::min(held, 1);
  const long long cols = static_cast<long long>(held) * slots * maxRank;
  return static_cast<int>((cols + 7) / 8 * 8);
}

// Where a step's shrink outputs are for loraAugment: value (t, slice j, the rank q of the adapter
// from slot k) is the sum over `pieces` slabs `slab` floats apart of data[t tokenPitch + j
// slicePitch + k slotPitch + (q / slotRank) spanPitch + q % slotRank] (slotRank 0: + q). The
// segmented shrinks write each token's own adapter only (slotPitch 0, slicePitch maxRank); a GEMM
// over every slot's A rows writes them all (a prefill's shrink in backend_lora.cc), an adapter's
// ranks past a slot's in the next slot's (spanPitch = slotPitch, lora_runs.h).
struct LoraMid {
  const float* data = nullptr;
  size_t slab = 0;
  int pieces = 1;
  int tokenPitch = 0, slicePitch = 0, slotPitch = 0;
  int slotRank = 0, spanPitch = 0;
};

// A projection's augmented activation rows: token t's row at data + t ld, of in + pad columns; with
// split rows (slicePitch > 0) held module j's row at data + j slicePitch + t ld.
struct AugmentedRows {
  bf16_t* data = nullptr;
  int ld = 0;
  int pad = 0;
  size_t slicePitch = 0;
};

// xa[t][in + j S R + k R + r] (with split rows, row j's in + k R + r) = bf16(scaling[k] *
// mid(t, j, k, r)) where k is token t's slot and r < its rank for slice j's module; zero in every
// other of the pad columns (other slots, ranks past the slot's, base tokens with rowSlot -1, the
// rounding tail). With x, also each of the token's rows' [0, in) = x[t][0, in) (x's rows ldx apart;
// x may be the first rows themselves, which are then left as they are).
void loraAugment(const LoraSlices& sl, int slots, const int32_t* rowSlot, const int32_t* ranks, const float* scaling,
                 const LoraMid& mid, const bf16_t* x, int ldx, int T, const AugmentedRows& xa, cudaStream_t st);

// Whether a group's A factors lie as one matrix, [slot][slice][slotRank][in] (the pool lays them
// so), which that GEMM reads: every slot's rows, and a slot's slices one after another.
inline bool loraAContiguous(const LoraSlices& sl) {
  const size_t block = static_cast<size_t>(sl.slotRank ? sl.slotRank : sl.maxRank) * sl.in;
  for (int j = 0; j < sl.count; ++j)
    if (sl.aSlotStride[j] != sl.count * block || sl.a[j] != sl.a[0] + j * block) return false;
  return sl.count > 0;
}

// Where a projection's input row comes from: RMSNorm of the residual (f32 rows of `in`, weight
// normW), SiLU(gate) x up (rows of 2 in, gate then up: f32, or bf16 in `bf16` where the gate/up
// GEMM wrote bf16), or a bf16 row as it is (rows ld apart).
enum class RowSource { kNorm, kSiluMul, kCopy };
struct RowInput {
  RowSource source = RowSource::kCopy;
  const float* f32 = nullptr;
  const float* normW = nullptr;
  float eps = 0;
  const bf16_t* bf16 = nullptr;
  int ld = 0;
};

// What loraAugment writes, for a decode step, without a shrink kernel before it: each token's row
// is made here exactly as rmsnorm or a copy makes it (bf16), written to its rows' [0, in), and dotted
// with its slot's A rows for the scaled columns; a token's row is cut over several blocks by
// shrink outputs, each block remaking the row (it is read from L2). One launch in place of the
// norm, the shrink and the augment, on the critical path of a GEMM over in + pad columns. A copy
// from xa itself (rows siluMul wrote there) is left where it is. kSiluMul rows are refused.
// rowShrinkSupported: in a multiple of 8 and the row fitting shared memory.
bool rowShrinkSupported(int in, int ldxa);
// Lets the kernel take rows of up to maxIn features (shared memory past 48 KB); call before any
// graph capture.
void prepareRowShrink(int maxIn);
void loraRowShrink(const RowInput& row, const LoraSlices& sl, int slots, const int32_t* rowSlot, const int32_t* ranks,
                   const float* scaling, int T, const AugmentedRows& xa, int sms, cudaStream_t st);

// The same columns and rows as loraRowShrink from rows already made (kCopy; rmsnorm or siluMul
// write them into xa first), with the dot products taken per adapter item (LoraItems: tokens of
// one slot) rather than per token, so each A row is read once per item: a block dots every A
// piece it loads with up to 8 tokens' row pieces. A copy from xa itself is left where it is.
// itemShrinkSupported: in, ldxa and the rows' ld multiples of 8. pdl: launched so that it may start
// while the kernel that made the rows (which lets it: rmsnorm, siluMul, decode attention) drains
// (compute capability 9.0); its look-ups and A reads then overlap that kernel.
// shape: outputs a warp takes and warps that share each output's features (1, 2, 4 or 8; 16 for
// rows over 8,192 features), zero for the measured choice by the group's size. releaseAtStart:
// a grid launched early after this one (pdl.cuh) may start as soon as every block of this one has
// begun, rather than once their sums are taken; it must still wait for this grid before reading.
// rowsReady: each of the first T blocks adds 1 there once the kernel before this one has completed
// (decode_gemm.h's DecodeGemmLateColumns reads it).
struct ItemShrinkShape {
  int outPerWarp = 0, warpsPerOutput = 0;
};
bool itemShrinkSupported(int in, int ldxa, int ld);
void loraItemShrink(const RowInput& row, const LoraSlices& sl, const LoraItems& items, int slots,
                    const int32_t* rowSlot, const int32_t* ranks, const float* scaling, int T, const AugmentedRows& xa,
                    cudaStream_t st, bool pdl = false, ItemShrinkShape shape = {}, bool releaseAtStart = false,
                    unsigned* rowsReady = nullptr);

}  // namespace cuda
}  // namespace troupe
