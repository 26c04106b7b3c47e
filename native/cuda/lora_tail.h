// The tail layout of a decode step's LoRA deltas. The pool keeps a group's A factors for every slot
// in rows after the base weight's own (GpuWeights::tail, [module][slot][rank]), so the
// projection's one GEMM over the input also forms every slot's shrink outputs, past its own
// columns: no shrink kernel runs, and the GEMM reads none of B's padding columns. The kernel that
// reads the projection next adds each token's deltas (scaling x mid . B, its own slot's mid and
// B, B still in the padding columns of the weight): RoPE for q/k/v, SiLU-and-mul for gate/up, and
// the following RMSNorm for o and down, whose GEMM writes its own buffer instead of adding into
// the residual.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/kernels.h"
#include "cuda/lora_kernels.h"

namespace troupe {
namespace cuda {

constexpr int kMaxTailRank = 256;  // ranks the consumers' shared memory holds per module

// One group's deltas for a step: token t's shrink outputs at mid + t ldMid, module j's for slot k
// at (j slots + k) maxRank; module j's B transposed, slot k's rank r for its outputs c at
// bt[j] + (k maxRank + r) out[j] + c (the pool's copy, LoraSlices::bt), so a warp's threads read
// consecutive outputs together. count 0: no deltas.
struct LoraTail {
  int count = 0;
  int maxRank = 0, slots = 0;
  const float* mid = nullptr;
  int ldMid = 0;
  const bf16_t* bt[kMaxLoraSlices] = {};
  int outOffset[kMaxLoraSlices] = {};  // module j's first output column in the group's output
  int out[kMaxLoraSlices] = {};
  int module[kMaxLoraSlices] = {};
  const int32_t* rowSlot = nullptr;  // per token: its slot, -1 for the base model
  const int32_t* ranks = nullptr;    // [slot * 7 + module]
  const float* scaling = nullptr;    // [slot]
};

// The tail of `sl` (a pool's slices with B transposed) over a GEMM output whose shrink columns
// start at mid.
LoraTail loraTail(const LoraSlices& sl, int slots, const float* mid, int ldMid, const int32_t* rowSlot,
                  const int32_t* ranks, const float* scaling);

// Whether the consumers take a group's deltas: ranks up to kMaxTailRank, and outputs and hidden
// size in fours (the SiLU and add-norm kernels take four outputs a thread); siluMulTailFits: an
// item of maxItem tokens' shrink outputs fit the SiLU kernel's shared memory.
bool loraTailSupported(int maxRank, int hidden, int intermediate);
bool siluMulTailFits(int maxItem, int count, int maxRank);

// ropeKv over qkv rows ld apart, each token's q/k/v deltas added first.
void ropeKvTail(const float* qkv, int ld, const LoraTail& tail, const float* invFreq, const TokenMap& map,
                const AttnShape& a, bf16_t* q, bf16_t* kCache, bf16_t* vCache, cudaStream_t s);

// siluMul over gate/up rows ld apart with each token's gate and up deltas added first. Blocks take
// one adapter item's tokens (LoraItems, items of at most maxItem tokens), so each B row is read
// once per item; base tokens (rowSlot -1) come in blocks of their own.
void siluMulTail(const float* gu, int ld, const LoraTail& tail, const LoraItems& items, int maxItem, bf16_t* act, int T,
                 int inter, cudaStream_t s, int ldAct);

// hidden[t] += ext[t][0, h) + the token's deltas (ext's rows ldExt apart); then, with y, y[t] =
// bf16(w * hidden[t] / rms) (rows ldy apart) as rmsnorm makes them. A row takes a cluster of
// four blocks (compute capability 9.0): h a multiple of 16.
void addNormTail(float* hidden, const float* ext, int ldExt, const LoraTail& tail, const float* w, bf16_t* y, int ldy,
                 int T, int h, float eps, cudaStream_t s);

}  // namespace cuda
}  // namespace troupe
