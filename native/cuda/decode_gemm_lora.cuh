// LoRA inside the decode GEMM (decode_gemm.h): the reads a block starts with, before the
// programmatic-launch wait (decode_gemm.cu does the rest at its tiles' ends). tokSlot, tokRank and
// tokScale are the block's shared copies of each token's slot, rank and scaling.
#pragma once

#include "cuda/decode_gemm.h"
#include "cuda/decode_gemm_ops.cuh"

namespace troupe {
namespace cuda {
namespace decode_gemm {

#if TROUPE_DECODE_GEMM_BODY
// Token tid's slot (uploaded with the step), and the pool's rank and scaling for it.
__device__ __forceinline__ void loraReadToken(const DecodeGemmArgs& args, int tid, int* tokSlot, int* tokRank,
                                              float* tokScale) {
  const DecodeGemmLora& lora = args.lora;
  const int slot = tid < args.M ? lora.rowSlot[tid] : -1;
  tokSlot[tid] = slot;
  tokRank[tid] = slot >= 0 ? min(lora.ranks[slot * lora.rankPitch + lora.module], lora.maxRank) : 0;
  tokScale[tid] = slot >= 0 ? lora.scaling[slot] : 0.0f;
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
#endif

}  // namespace decode_gemm
}  // namespace cuda
}  // namespace troupe
