// Device pieces the tensor-core LoRA kernels share (lora_mma.cu's pair, lora_fused.cu's decode
// shrink): the mma.sync wrapper, guarded 16-byte loads, and a 16-token tile's shrink.
//
// Fragments (PTX ISA, "Warp Level Matrix Multiply-Accumulate Instructions", mma.m16n8k16 with .bf16
// A/B and .f32 C/D: "Matrix Fragments for mma.m16n8k16 with floating point type"). Lane = 4 g + q
// (g: groupID 0-7, q: threadID_in_group 0-3); a .b32 register holds two bf16 values:
//   A 16x16 (row): a0 = A[g][2q, 2q+1]    a1 = A[g+8][2q, 2q+1]
//                  a2 = A[g][2q+8, 2q+9]  a3 = A[g+8][2q+8, 2q+9]
//   B 16x8  (col): b0 = B[2q, 2q+1][g]    b1 = B[2q+8, 2q+9][g]
//   C 16x8  (f32): c0, c1 = C[g][2q, 2q+1]   c2, c3 = C[g+8][2q, 2q+1]
// K is summed over, so any one-to-one assignment of real K indices to the mma's 16 k-slots gives
// the same product as long as A and B use the same one. We use the one that lets a lane feed two
// mmas from one 16-byte load per row: over a 32-wide chunk at k, lane q holds K = k + 8q .. k + 8q + 7
// of its rows as four registers w0-w3 (w_i = K k + 8q + 2i and 2i + 1, the lower in the low half,
// for both operands alike); the first mma takes w0 as a0/a1/b0 and w1 as a2/a3/b1, the second w2
// and w3. The four quads of lanes cover the chunk once. Only C's layout is taken at its word: its
// columns are real N indices (ranks in the shrink, output features in the expand).
//
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "cuda/lora_kernels.h"
#include "cuda/lora_runs.h"
#include "cuda/pdl.cuh"

namespace troupe {
namespace cuda {
namespace mma_ops {

constexpr int kTok = kLoraTileTokens;  // the mma's M
static_assert(kTok == 16, "a tile is one m16 row block");
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kChunk = 32;      // K one quad of lanes spans with one 16-byte load per lane and row
constexpr int kPassRanks = 64;  // rank columns per pass: registers stay bounded at any rank
constexpr int kModules = 7;     // ranks is [slot][7 modules]
// Shared rows padded so that a warp's float2 stores of C fragments (rows g, columns 2q: word
// 72 g + 2q, 16 lanes per phase) spread over all banks.
constexpr int kRedPitch = kPassRanks + 8;
static_assert(kRedPitch % 32 == 8, "bank-conflict-free pitch");

// d += a b for one m16n8k16 tile (fragments as documented above).
__device__ __forceinline__ void mma(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                    uint32_t b1) {
#if __CUDA_ARCH__ >= 800
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
  __trap();
#endif
}

// Eight consecutive bf16 values at p, of which the first `valid` are read and the rest are zero
// (factor memory past a slot's rank may hold anything, NaN included). kVec: p is 16-byte aligned
// and its 16 bytes readable whenever valid > 0; those loads skip L1, where nothing is reused.
template <bool kVec>
__device__ __forceinline__ uint4 load8(const bf16_t* p, int valid) {
  if (valid <= 0) return make_uint4(0, 0, 0, 0);
  uint32_t w[4];
  if (kVec) {
    const uint4 v = __ldcg(reinterpret_cast<const uint4*>(p));
    w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = 2 * i + 1 < valid ? w[i] : 2 * i < valid ? (w[i] & 0xffffu) : 0u;
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t lo = 2 * i < valid ? p[2 * i] : 0u;
      const uint32_t hi = 2 * i + 1 < valid ? p[2 * i + 1] : 0u;
      w[i] = lo | (hi << 16);
    }
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// One warp's part of a shrink pass: red[m][n] = sum over the warp's chunks of x[m][k] A[n][k],
// for NT n-tiles (n < 8 NT; rows of A at or past rn read as zero). xa, xb: rows g and g + 8 of the
// tile (null past its end); A: the pass's first rank row.
template <int NT, bool kVec>
__device__ __forceinline__ void shrinkPass(const bf16_t* xa, const bf16_t* xb, const bf16_t* A, int in, int rn, int k0,
                                           int kEnd, int warp, int g, int q, float (*red)[kRedPitch]) {
  float acc[NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
  const uint4 zero = make_uint4(0, 0, 0, 0);
#pragma unroll 2
  for (int c = k0 + warp * kChunk; c < kEnd; c += kWarps * kChunk) {
    const int k = c + 8 * q, valid = kEnd - k;
    const uint4 u = xa ? load8<kVec>(xa + k, valid) : zero;
    const uint4 v = xb ? load8<kVec>(xb + k, valid) : zero;
    uint4 b[NT];
#pragma unroll
    for (int j = 0; j < NT; ++j)
      b[j] = 8 * j + g < rn ? load8<kVec>(A + static_cast<size_t>(8 * j + g) * in + k, valid) : zero;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      mma(acc[j], u.x, v.x, u.y, v.y, b[j].x, b[j].y);
      mma(acc[j], u.z, v.z, u.w, v.w, b[j].z, b[j].w);
    }
  }
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    *reinterpret_cast<float2*>(&red[g][8 * j + 2 * q]) = make_float2(acc[j][0], acc[j][1]);
    *reinterpret_cast<float2*>(&red[g + 8][8 * j + 2 * q]) = make_float2(acc[j][2], acc[j][3]);
  }
}

// One tile's shrink over features [k0, kEnd): out[tok[i] * midPitch + r] = x[tok[i]][k0, kEnd) .
// A[r][k0, kEnd) for the 16 token rows tok (-1: none) and r < rank; A's rows `in` apart, rank r's
// at lora_runs::sliceRow(r, slices, slotRank) (a pool cut into slots of slotRank: the adapter's
// rows run on from slot to slot, its group's slices between them), so a pass stays in one slot.
// The warps split the features in chunks and their sums meet in red in a fixed order.
template <bool kVec>
__device__ __forceinline__ void shrinkTile(const int* tok, const bf16_t* x, int ldx, const bf16_t* A, int in, int rank,
                                           int slices, int slotRank, int k0, int kEnd, float* out, int midPitch,
                                           float (*red)[kTok][kRedPitch]) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, q = lane % 4;
  const bf16_t* xa = tok[g] >= 0 ? x + static_cast<size_t>(tok[g]) * ldx : nullptr;
  const bf16_t* xb = tok[g + 8] >= 0 ? x + static_cast<size_t>(tok[g + 8]) * ldx : nullptr;
  for (int r0 = 0; r0 < rank;) {
    const int rn = min(min(kPassRanks, rank - r0), slotRank - r0 % slotRank);
    const bf16_t* Ar = A + lora_runs::sliceRow(r0, slices, slotRank) * in;
    float(*wr)[kRedPitch] = red[warp];
    switch ((rn + 7) / 8) {
      case 1:
        shrinkPass<1, kVec>(xa, xb, Ar, in, rn, k0, kEnd, warp, g, q, wr);
        break;
      case 2:
        shrinkPass<2, kVec>(xa, xb, Ar, in, rn, k0, kEnd, warp, g, q, wr);
        break;
      case 3:
        shrinkPass<3, kVec>(xa, xb, Ar, in, rn, k0, kEnd, warp, g, q, wr);
        break;
      case 4:
        shrinkPass<4, kVec>(xa, xb, Ar, in, rn, k0, kEnd, warp, g, q, wr);
        break;
      case 5:
        shrinkPass<5, kVec>(xa, xb, Ar, in, rn, k0, kEnd, warp, g, q, wr);
        break;
      case 6:
        shrinkPass<6, kVec>(xa, xb, Ar, in, rn, k0, kEnd, warp, g, q, wr);
        break;
      case 7:
        shrinkPass<7, kVec>(xa, xb, Ar, in, rn, k0, kEnd, warp, g, q, wr);
        break;
      default:
        shrinkPass<8, kVec>(xa, xb, Ar, in, rn, k0, kEnd, warp, g, q, wr);
        break;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < kTok * rn; e += kThreads) {
      const int i = e / rn, r = e % rn;
      if (tok[i] < 0) continue;
      out[static_cast<size_t>(tok[i]) * midPitch + r0 + r] =
          ((red[0][i][r] + red[1][i][r]) + red[2][i][r]) + red[3][i][r];
    }
    __syncthreads();  // red is rewritten by the next pass
    r0 += rn;
  }
}

}  // namespace mma_ops
}  // namespace cuda
}  // namespace troupe
