// The LoRA tail rows of a decode step. The pool keeps its first slots' q/k/v A rows as rows after
// the q/k/v weight's (GpuWeights::tail), so the one q/k/v GEMM over the normed rows of a step whose
// slots lie there writes, after each token's q, k and v, its x . A^T for each of the step's slots.
// RoPE, which reads those outputs next, adds each token's own slot's delta, bf16(scaling x . A^T) .
// B^T from a transposed copy of B, before it rotates. No shrink launch stands between the norm and
// the GEMM, and the GEMM reads no padding columns. (The same form for gate/up, its deltas added by
// SiLU-and-mul, measured level or slower in six forms, also with cuBLAS's tile tuned: the GEMM ends
// about 4.6 us a layer sooner, but the SiLU kernel, which cannot start before cuBLAS's last block
// ends, then spends 7-15 us reading B and adding the deltas against the plain kernel's 2.4.)
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/kernels.h"
#include "cuda/lora_kernels.h"

namespace troupe {
namespace cuda {

// The largest max rank the kernels take (their B values are held in registers).
constexpr int kLoraTailMaxRank = 16;

// Token t's row of the GEMM's output holds its outputs (f32) and from column tailColumn the shrink
// outputs of the step's slots: the adapter from slot k's module j rank r at tailColumn +
// lora_runs::slotMajorRow(k, j, r, count, U) (U the slot rank; (k count + j) maxRank + r without
// one). Module j of the `count` held ones covers the row's outputs [outOffset[j], outOffset[j] +
// out[j]); its rank for slot k is ranks[k rankPitch + module[j]], and bt[j] is its B as
// [slot][U][out[j]]. Values past a slot's rank (A's rows, B's, the outputs) may hold anything.
struct LoraTailDelta {
  int tailColumn = 0, count = 0, maxRank = 0;
  int slotRank = 0, slots = 0;  // slotRank 0: maxRank; slots: those the step's tail columns hold, from 0
  int outOffset[kMaxLoraSlices] = {}, out[kMaxLoraSlices] = {}, module[kMaxLoraSlices] = {};
  const bf16_t* bt[kMaxLoraSlices] = {};
  const int32_t* rowSlot = nullptr;  // each token's slot, -1 for the base model
  const int32_t* ranks = nullptr;
  int rankPitch = 0;
  const float* scaling = nullptr;
};

// head_dim a multiple of 8 (four features a thread), each module's outputs a multiple of head_dim,
// max rank 1 to kLoraTailMaxRank.
bool ropeKvLoraSupported(const AttnShape& a, int maxRank);

// ropeKv (kernels.h) over qkv rows `pitch` floats apart, each token's delta added first. pdl: may
// start while the GEMM before it runs (its B loads and rotation angles then overlap the GEMM).
void ropeKvLora(const float* qkv, int pitch, const float* invFreq, const TokenMap& map, const AttnShape& a, bf16_t* q,
                bf16_t* kCache, bf16_t* vCache, const LoraTailDelta& d, cudaStream_t s, bool pdl);

}  // namespace cuda
}  // namespace troupe
