// gate/up and SiLU-and-mul of a decode step in one kernel (compute capability 9.0): for m < M (up
// to 32 tokens) and n < inter, act[m][n] = silu(g) u, where g = sum over k < K of X[m][k] W[n][k] and
// u = sum over k of X[m][k] W[inter + n][k] (gate's rows, then up's, ldw apart; X's rows ldx apart,
// act's ldAct; bf16 in and out, f32 sums). Unlike the decode GEMM (decode_gemm.h), whose blocks are
// all resident at once, one a weight tile, this grid's blocks go through several (tile, K part)
// units each, so that gate/up's 448 tiles of Llama-8B need no more blocks than the GPU holds.
#pragma once

#include <cuda_runtime_api.h>

#include <map>
#include <tuple>

#include "cuda/decode_gemm.h"
#include "cuda/device.h"
#include "cuda/gate_up_plan.h"
#include "cuda/kernels.h"

namespace troupe {
namespace cuda {

// Split rows (lora_fused.h): where X2 is set, up's rows read their features past xK from X2 (rows
// ldx apart) instead of X: gate's and up's LoRA columns are then each their own token row's, the
// first xK features being the same in both. Paired (the default), each padding stage covers half
// as many columns for both halves at once, its token rows X's then X2's (a product 64 token rows
// wide, of which gate's rows keep the first 32 columns and up's the last); unpaired, those stages
// run twice, each with the other half's weight rows zero (copied from past the tensor's end).
//
// LoRA (lora.A set): the GEMM also makes the LoRA columns that its last K stages read, X's (and
// X2's) features from xK on, which it writes itself, so that no shrink kernel runs before it. Its
// first units multiply every slot's A rows (lora.rows of them, as DecodeGemmLora lays them, over
// xK features) by the token rows, each A tile's K over loraParts units so that they end long
// before any weight tile reaches its columns; the tile's last part writes each token's own slot's
// outputs, scaled, below its rank, and zeros elsewhere (decode_gemm.h's column order: one block of
// every module's, or with split rows module j's in row X or X2). The copying warps wait for every A
// tile before the columns' stages. K - xK must be the columns a row holds.
struct GateUpGemmArgs {
  const bf16_t* W = nullptr;
  int ldw = 0;
  const bf16_t* X = nullptr;
  const bf16_t* X2 = nullptr;
  int ldx = 0;
  bf16_t* act = nullptr;
  int ldAct = 0;
  int M = 0, inter = 0, K = 0, xK = 0;
  DecodeGemmLora lora;  // A, lda, rows, maxRank, slotRank, rowSlot, ranks, rankPitch, module, scaling, modules
  int loraParts = 4;
  bool paired = true;  // split rows' padding stages: both halves at once (above)
};

class GateUpGemm {
 public:
  explicit GateUpGemm(int sms);
  // Whether this build has the kernel for the current device.
  static bool available();
  // splits: every tile's K in that many parts (1 to 4), or 0 for the plan whose longest block is
  // shortest (gate_up_plan.h's balancedPlan: whole tiles, and the tiles that do not fill a round
  // of the grid split over every block). 1 <= M <= 32; inter a multiple of 32; K a multiple of 8
  // with at least `splits` stages of 256 (the last may be part zeros); with X2, xK a multiple of
  // 256 below K; leading dimensions multiples of 8; W, X, X2 and act 16-byte aligned.
  bool supports(const GateUpGemmArgs& a, int splits) const;
  // The workspace of calls up to inter features, allocated now: a call that needs more allocates
  // it itself, which a stream being captured into a graph does not allow.
  void reserve(int inter);
  // pdl: may start while the kernel before drains (its first weight stages then stream); X is read
  // only after that kernel completes.
  void run(const GateUpGemmArgs& a, int splits, cudaStream_t st, bool pdl);

 private:
  gate_up::Plan planOf(const GateUpGemmArgs& a, int splits) const;
  int sms_;
  DeviceBuffer<float> partials_;     // split tiles' parts, then the A tiles' (gate_up_plan.h)
  DeviceBuffer<unsigned> counters_;  // each tile's parts done, then the LoRA columns' counts
  // Balanced plans by (tiles, kTiles, xStages, padStages, aTiles, aParts, paired).
  mutable std::map<std::tuple<int, int, int, int, int, int, bool>, gate_up::Plan> balanced_;
};

}  // namespace cuda
}  // namespace troupe
