// A prefill's gate/up and q/k/v LoRA deltas added after a GEMM over x alone, in place of the fused
// layout's padding columns (native/cuda/lora_fused.h), measured on its own and not taken into the
// engine (docs/lora-history.md; bench/results/2026-12-02-h200-lora-expand-after-gemm.json). At 8
// slots the padding columns make the GEMM do 8x the LoRA products the tokens need; here each token's
// delta is a product over its own adapter's rank only, on tensor cores, added by a kernel that
// reads the rows anyway: for gate/up, SiLU-and-mul in siluMul's place (loraSiluExpand), for q/k/v a
// pass over its rows before RoPE (loraExpandInPlace). A block walks four tiles of 64 tokens over
// 256 features of a slice (gate and up: 128 of each), staging the tokens' scaled shrink outputs
// as bf16 (what the augment writes into the padding columns), then each distinct slot's B rows
// (kept while the next tile's slot is the same), multiplying with every other slot's tokens masked
// to zero; the deltas, rounded to bf16 as PEFT rounds lora_B's output, go through shared memory to
// an epilogue of 16-byte loads and stores. A token without an adapter gets siluMul's exact value.
// A second SiLU form (piped::siluExpand) pipelines the same work through one block a
// multiprocessor, copying each item's rows and shrink outputs in (cp.async) while the item before
// is multiplied and written.
//
// The program checks both kernels against a host reference (ranks below the pool's, 0 included;
// runs of slots and base tokens; token counts that leave a tile part-filled; shrink outputs in two
// pieces or over every slot; a module missing; NaN in factor memory past each rank and in outputs
// the kernel must not read; siluMul's bits for base tokens; for the pipelined form, runs of items
// past one block's) and with --bench times them at Llama-8B shapes, 4,096 tokens over 8 slots,
// beside siluMul. Build knobs of the first form, for the measurements: -DTROUPE_EXPAND_MIN_BLOCKS
// (blocks a multiprocessor, 2) and -DTROUPE_EXPAND_PART=1 (deltas only) or =2 (epilogue only).
//   nvcc -std=c++17 -arch=sm_90a -O3 -Inative -Itest/gpu -o /tmp/expand bench/lora_expand_after_gemm.cu \
//        native/cuda/kernels.cu && /tmp/expand [--bench]
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "check_util.h"
#include "cuda/bf16_pack.cuh"
#include "cuda/device.h"
#include "cuda/kernels.h"
#include "cuda/lora_fused.h"
#include "cuda/lora_mma_ops.cuh"
#include "cuda/silu.cuh"

namespace troupe {
namespace cuda {

struct LoraExpandArgs {
  bf16_t* y = nullptr;  // the projection's bf16 rows (gate then up for SiLU), ldy apart
  int ldy = 0;
  bf16_t* act = nullptr;  // SiLU only: its output rows, ldAct apart
  int ldAct = 0;
  int T = 0;
  LoraSlices sl;  // the projection's held modules; B at sl.b
  const int32_t* rowSlot = nullptr;
  const int32_t* ranks = nullptr;  // [slot][7]
  const float* scaling = nullptr;
  LoraMid mid;  // the shrink's outputs, as loraAugment reads them
  bool midVec = false;  // set by the launch: mid's rows may be read four floats at a time
};

// Shared memory one block needs (0 where the slices or pitches do not suit the kernel: rows and
// slice offsets not multiples of 8, B rows not 16-byte aligned). act is not looked at here.
size_t loraExpandSmem(const LoraExpandArgs& a, bool silu);
// Whether the kernel takes these arguments on this device (its shared memory within the
// device's opt-in limit).
bool loraExpandFits(const LoraExpandArgs& a, bool silu);

// y[t][outOffset_j + n] += bf16(scaling[k] mid(t, j, k)) . B_j[k][n] for token t's slot k, every
// held slice j; rows of tokens without a slot are left as they are.
void loraExpandInPlace(const LoraExpandArgs& a, cudaStream_t st);
// act[t][n] = silu(gate'[n]) up'[n], n < inter, where gate' and up' are the rows' gate and up
// values (y[t][n], y[t][inter + n]) with the token's deltas added as loraExpandInPlace adds them.
void loraSiluExpand(const LoraExpandArgs& a, int inter, cudaStream_t st);


namespace {

using mma_ops::load8;
using mma_ops::mma;

constexpr int kTokens = 64;  // a tile: four m16 tiles of tokens
constexpr int kTiles = 4;    // tiles a block walks, one after another, keeping its B staged
// A warp takes one m16 tile of tokens and 64 features (eight n8 tiles) of one slice: a block's 16
// warps cover a tile's 64 tokens over four such planes, 128 features of gate and of up for SiLU,
// 256 of one slice in place. (The shrink outputs are staged eight threads a token.)
constexpr int kPlanes = 4;
constexpr int kThreads = kPlanes * 128;
constexpr int kPlaneFeatures = 64;
constexpr int kModules = 7;  // ranks is [slot][7 modules]

// Ranks staged per row: the pool's max rank rounded up to the mma's 32-rank chunk (zeros past it).
__host__ __device__ inline int stagedRanks(int maxRank) { return (maxRank + 31) / 32 * 32; }
// The staged rows' pitch in bf16: an odd multiple of 64 bytes, so that a quarter-warp's 16-byte
// loads (rows g and g + 1, four chunks each) fall on distinct banks.
__host__ __device__ inline int stagedPitch(int maxRank) {
  const int r = stagedRanks(maxRank);
  return (r / 8) % 8 == 4 ? r : r + 32;
}
// Features a block takes of each of its S slices.
__host__ __device__ constexpr int blockFeatures(int S) { return kPlanes / S * kPlaneFeatures; }
// The deltas' bf16 rows: F + 8 values, so that a warp's 4-byte stores (rows g, columns 2q) fall on
// distinct banks and a row stays 16-byte aligned.
__host__ __device__ constexpr int deltaPitch(int S) { return blockFeatures(S) + 8; }
// B is staged two threads a row.
static_assert(kPlanes * kPlaneFeatures * 2 == kThreads, "a block's B rows are half its threads");

__device__ __forceinline__ float lowHalf(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float highHalf(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }
__device__ __forceinline__ void prefetchL2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// The distinct slots among 64 tokens' slots (-1: none) in the order they first appear, into list and
// *count; called by one whole warp.
__device__ __forceinline__ void listSlots(const int* slot, int lane, int* list, int* count) {
  const int k0 = slot[lane], k1 = slot[lane + 32];
  bool d0 = k0 < 0, d1 = k1 < 0;
  int n = 0;
  for (;;) {
    const unsigned m0 = __ballot_sync(0xffffffffu, !d0), m1 = __ballot_sync(0xffffffffu, !d1);
    if (m0 == 0 && m1 == 0) break;
    const int k = m0 ? __shfl_sync(0xffffffffu, k0, __ffs(m0) - 1) : __shfl_sync(0xffffffffu, k1, __ffs(m1) - 1);
    if (lane == 0) list[n] = k;
    ++n;
    d0 = d0 || k0 == k;
    d1 = d1 || k1 == k;
  }
  if (lane == 0) *count = n;
}

#ifndef TROUPE_EXPAND_MIN_BLOCKS
#define TROUPE_EXPAND_MIN_BLOCKS 2
#endif

// S slices a block: 1 in place, 2 (gate and up) for SiLU-and-mul.
template <int S>
__global__ void __launch_bounds__(kThreads, TROUPE_EXPAND_MIN_BLOCKS) expandRowsKernel(LoraExpandArgs a, int inter) {
  constexpr int F = blockFeatures(S), DP = deltaPitch(S), kBlockTokens = kTiles * kTokens;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int sSlot[kBlockTokens], sRank[S][kBlockTokens];
  __shared__ float sScale[kBlockTokens];
  __shared__ int slotList[kTokens];
  __shared__ int nSlots;
  const LoraSlices& sl = a.sl;
  // The block's slices (indices into sl; -1 where the module is not held), its first feature in
  // them and their length. In place, blockIdx.x walks the held slices' own feature blocks in turn
  // (the grid's fast dimension, so that the blocks resident at once read whole rows).
  int js[S], n0 = 0, out = inter, col0 = 0;
  if (S == 2) {
    js[0] = js[S - 1] = -1;
    for (int j = 0; j < sl.count; ++j) {
      if (sl.module[j] == kGate) js[0] = j;
      if (sl.module[j] == kUp) js[S - 1] = j;
    }
    n0 = blockIdx.x * F;
  } else {
    int cb = blockIdx.x, j = 0;
    while (j + 1 < sl.count && cb >= (sl.out[j] + F - 1) / F) cb -= (sl.out[j++] + F - 1) / F;
    js[0] = j;
    n0 = cb * F;
    out = sl.out[j];
    col0 = sl.outOffset[j];
  }
  const int tb = blockIdx.y * kBlockTokens, tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  // The rows a tile's epilogue reads, on their way into L2 a tile ahead: 64 tokens x four
  // 64-feature planes, two 128-byte lines each.
  auto prefetchRows = [&](int t0) {
    const int i = tid / (2 * kPlanes), p = tid / 2 % kPlanes, half = tid % 2;
    const int s = p / (F / kPlaneFeatures), n = n0 + (p % (F / kPlaneFeatures)) * kPlaneFeatures + half * 32;
    if (t0 + i < a.T && n < out)
      prefetchL2(a.y + static_cast<size_t>(t0 + i) * a.ldy + (S == 2 ? s * inter : col0) + n);
  };
  prefetchRows(tb);
  if (tid < kBlockTokens) {
    const int t = tb + tid, k = t < a.T ? a.rowSlot[t] : -1;
    sSlot[tid] = k;
    sScale[tid] = k >= 0 ? a.scaling[k] : 0.0f;
#pragma unroll
    for (int s = 0; s < S; ++s) sRank[s][tid] = k >= 0 && js[s] >= 0 ? a.ranks[k * kModules + sl.module[js[s]]] : 0;
  }

  const int R = stagedRanks(sl.maxRank), P = stagedPitch(sl.maxRank);
  bf16_t* ms = reinterpret_cast<bf16_t*>(smem);  // [S][kTokens][P]: a tile's scaled shrink outputs
  bf16_t* bs = ms + S * kTokens * P;             // [S][F][P]: one slot's B rows
  bf16_t* ds = bs + S * F * P;                   // [S][kTokens][DP]: a tile's deltas
  const int g = lane / 4, q = lane % 4, mt = warp % 4, plane = warp / 4;
  const int ps = plane / (F / kPlaneFeatures), f0 = (plane % (F / kPlaneFeatures)) * kPlaneFeatures;
  const int i0 = mt * 16 + g, i1 = i0 + 8;
  int bSlot = -1;  // the slot whose B rows bs holds
  for (int tile = 0; tile < kTiles; ++tile) {
    const int t0 = tb + tile * kTokens, base = tile * kTokens;
    if (t0 >= a.T) break;
    __syncthreads();  // the token table is written; the last tile's epilogue is done with ds
    if (warp == 0) {
      listSlots(sSlot + base, lane, slotList, &nSlots);
    }
    if (tile + 1 < kTiles) prefetchRows(t0 + kTokens);
    __syncthreads();
#ifdef TROUPE_EXPAND_PART
    // Timing the parts: 1 the deltas alone (no epilogue), 2 the epilogue alone (no deltas).
    const int slots = TROUPE_EXPAND_PART == 2 ? 0 : nSlots;
#else
    const int slots = nSlots;
#endif
    if (S == 1 && slots == 0) continue;  // no row of the tile changes

    if (slots > 0) {
      // Each token's own slot's outputs, scaled and rounded as the augment rounds them for the
      // padding columns; zero past the slot's rank (whatever mid holds there) and for base
      // tokens. Eight threads a token, four ranks each a round.
      {
        const int i = tid / 8, k = sSlot[base + i];
        const float scale = sScale[base + i];
#pragma unroll
        for (int s = 0; s < S; ++s) {
          const int rank = sRank[s][base + i], j = s == 0 ? js[0] : js[S - 1];
          const float* m = a.mid.data + static_cast<size_t>(t0 + i) * a.mid.tokenPitch + j * a.mid.slicePitch +
                           (k >= 0 ? k : 0) * a.mid.slotPitch;
          for (int r = 4 * (tid % 8); r < R; r += 32) {
            float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (r < rank) {
              for (int p = 0; p < a.mid.pieces; ++p) {
                const float* mp = m + p * a.mid.slab + r;
                if (a.midVec && r + 4 <= rank) {
                  const float4 w = __ldcg(reinterpret_cast<const float4*>(mp));
                  v.x += w.x, v.y += w.y, v.z += w.z, v.w += w.w;
                } else {
                  v.x += __ldcg(mp);
                  v.y += r + 1 < rank ? __ldcg(mp + 1) : 0.0f;
                  v.z += r + 2 < rank ? __ldcg(mp + 2) : 0.0f;
                  v.w += r + 3 < rank ? __ldcg(mp + 3) : 0.0f;
                }
              }
            }
            *reinterpret_cast<uint2*>(ms + (s * kTokens + i) * P + r) =
                make_uint2(pairB(scale * v.x, scale * v.y), pairB(scale * v.z, scale * v.w));
          }
        }
      }
      float acc[8][4];
#pragma unroll
      for (int n = 0; n < 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
      for (int si = 0; si < slots; ++si) {
        const int k = slotList[si];
        if (si > 0) __syncthreads();  // every warp is done with the last slot's B
        if (k != bSlot) {
          // Two threads a B row (S x F rows: half the block), alternate 8-rank chunks each.
          const int row = tid / 2, bs_ = row / F, n = row % F, j = bs_ == 0 ? js[0] : js[S - 1];
          const int rank = j >= 0 && n0 + n < out ? a.ranks[k * kModules + sl.module[j]] : 0;
          const bf16_t* B = sl.b[j >= 0 ? j : 0] + k * sl.bSlotStride[j >= 0 ? j : 0] +
                            static_cast<size_t>(n0 + n) * sl.bLd[j >= 0 ? j : 0];
          for (int c = 8 * (tid % 2); c < R; c += 16) {
            // B past the slot's rank may hold anything, NaN included: load8 reads zeros there.
            *reinterpret_cast<uint4*>(bs + (bs_ * F + n) * P + c) = load8<true>(B + c, rank - c);
          }
          bSlot = k;
        }
        __syncthreads();  // ms (the first time) and this slot's B are staged
        // Tokens of other slots take zero rows of A: their products with this B add nothing.
        const bool m0 = sSlot[base + i0] == k, m1 = sSlot[base + i1] == k;
        if (!__any_sync(0xffffffffu, m0 || m1)) continue;
        const uint4 zero = make_uint4(0, 0, 0, 0);
        const bf16_t* a0 = ms + (ps * kTokens + i0) * P + 8 * q;
        const bf16_t* a1 = ms + (ps * kTokens + i1) * P + 8 * q;
        const bf16_t* b0 = bs + (ps * F + f0 + g) * P + 8 * q;
        for (int c = 0; c < R; c += 32) {
          const uint4 u = m0 ? *reinterpret_cast<const uint4*>(a0 + c) : zero;
          const uint4 v = m1 ? *reinterpret_cast<const uint4*>(a1 + c) : zero;
#pragma unroll
          for (int n = 0; n < 8; ++n) {
            const uint4 b = *reinterpret_cast<const uint4*>(b0 + n * 8 * P + c);
            mma(acc[n], u.x, v.x, u.y, v.y, b.x, b.y);
            mma(acc[n], u.z, v.z, u.w, v.w, b.z, b.w);
          }
        }
      }
      // The deltas in bf16, as PEFT's bf16 forward rounds lora_B's output before adding it.
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        const int col = f0 + 8 * n + 2 * q;
        *reinterpret_cast<uint32_t*>(ds + (ps * kTokens + i0) * DP + col) = pairB(acc[n][0], acc[n][1]);
        *reinterpret_cast<uint32_t*>(ds + (ps * kTokens + i1) * DP + col) = pairB(acc[n][2], acc[n][3]);
      }
      __syncthreads();  // ds is written; every warp is done with ms
    }

#if defined(TROUPE_EXPAND_PART) && TROUPE_EXPAND_PART == 1
    continue;
#endif
    // Eight features a thread: 16-byte loads of the rows and 16-byte stores, as siluMul's.
    for (int e = tid; e < kTokens * (F / 8); e += kThreads) {
      const int i = e / (F / 8), n = 8 * (e % (F / 8)), t = t0 + i;
      if (t >= a.T || n0 + n >= out) continue;
      const bool adds = sSlot[base + i] >= 0;
      if (S == 1 && !adds) continue;
      float d[S][8];
#pragma unroll
      for (int s = 0; s < S; ++s) {
        const uint4 w = adds ? *reinterpret_cast<const uint4*>(ds + (s * kTokens + i) * DP + n) : make_uint4(0, 0, 0, 0);
        const uint32_t ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int h = 0; h < 4; ++h) d[s][2 * h] = lowHalf(ws[h]), d[s][2 * h + 1] = highHalf(ws[h]);
      }
      if (S == 1) {
        uint4* yr = reinterpret_cast<uint4*>(a.y + static_cast<size_t>(t) * a.ldy + col0 + n0 + n);
        const uint4 w = *yr;
        const uint32_t ws[4] = {w.x, w.y, w.z, w.w};
        float v[8];
#pragma unroll
        for (int h = 0; h < 4; ++h) {
          v[2 * h] = lowHalf(ws[h]) + d[0][2 * h];
          v[2 * h + 1] = highHalf(ws[h]) + d[0][2 * h + 1];
        }
        *yr = pack8(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
      } else {
        const bf16_t* gr = a.y + static_cast<size_t>(t) * a.ldy + n0 + n;
        const uint4 gw = *reinterpret_cast<const uint4*>(gr), uw = *reinterpret_cast<const uint4*>(gr + inter);
        const uint32_t gs[4] = {gw.x, gw.y, gw.z, gw.w}, us[4] = {uw.x, uw.y, uw.z, uw.w};
        float v[8];
#pragma unroll
        for (int h = 0; h < 4; ++h) {
          float x0 = lowHalf(gs[h]), x1 = highHalf(gs[h]), m0 = lowHalf(us[h]), m1 = highHalf(us[h]);
          // A base token's row takes siluMul's exact expression; an adapter token's the fast division
          // (two ulps of f32, under a bf16 step), which keeps this kernel off the issue limit.
          if (adds) {
            x0 += d[0][2 * h], x1 += d[0][2 * h + 1];
            m0 += d[S - 1][2 * h], m1 += d[S - 1][2 * h + 1];
            v[2 * h] = __fdividef(x0, 1.0f + __expf(-x0)) * m0;
            v[2 * h + 1] = __fdividef(x1, 1.0f + __expf(-x1)) * m1;
          } else {
            v[2 * h] = silu(x0) * m0;
            v[2 * h + 1] = silu(x1) * m1;
          }
        }
        *reinterpret_cast<uint4*>(a.act + static_cast<size_t>(t) * a.ldAct + n0 + n) =
            pack8(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
      }
    }
  }
}

int featureBlocks(const LoraExpandArgs& a, bool silu, int inter) {
  const int F = blockFeatures(silu ? 2 : 1);
  if (silu) return (inter + F - 1) / F;
  int blocks = 0;
  for (int j = 0; j < a.sl.count; ++j) blocks += (a.sl.out[j] + F - 1) / F;
  return blocks;
}

template <int S>
void launch(const LoraExpandArgs& a, int inter, cudaStream_t st, const char* what) {
  if (a.T == 0 || (S == 1 && a.sl.count == 0)) return;
  if (!loraExpandFits(a, S == 2)) throw std::invalid_argument(std::string(what) + ": arguments the kernel does not take");
  const size_t smem = loraExpandSmem(a, S == 2);
  LoraExpandArgs args = a;
  const LoraMid& m = a.mid;
  args.midVec = m.tokenPitch % 4 == 0 && m.slicePitch % 4 == 0 && m.slotPitch % 4 == 0 && m.slab % 4 == 0 &&
                aligned16(m.data);
  // Past 48 KB a kernel's dynamic shared memory needs its own opt-in (a host call that graph
  // capture allows).
  check(cudaFuncSetAttribute(expandRowsKernel<S>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
        what);
  const dim3 grid(featureBlocks(a, S == 2, inter), (a.T + kTiles * kTokens - 1) / (kTiles * kTokens));
  expandRowsKernel<S><<<grid, kThreads, smem, st>>>(args, inter);
  check(cudaGetLastError(), what);
}

}  // namespace

size_t loraExpandSmem(const LoraExpandArgs& a, bool silu) {
  const LoraSlices& sl = a.sl;
  if (sl.count == 0 || sl.maxRank <= 0 || a.ldy % 8 != 0 || !aligned16(a.y)) return 0;
  for (int j = 0; j < sl.count; ++j) {
    if (sl.bLd[j] % 8 != 0 || sl.bSlotStride[j] % 8 != 0 || !aligned16(sl.b[j])) return 0;
    if (sl.out[j] % 8 != 0 || sl.outOffset[j] % 8 != 0) return 0;
    if (silu && sl.module[j] != kGate && sl.module[j] != kUp) return 0;
  }
  const int S = silu ? 2 : 1;
  const size_t staged = static_cast<size_t>(S) * (kTokens + blockFeatures(S)) * stagedPitch(sl.maxRank);
  return (staged + static_cast<size_t>(S) * kTokens * deltaPitch(S)) * sizeof(bf16_t);
}

bool loraExpandFits(const LoraExpandArgs& a, bool silu) {
  const size_t smem = loraExpandSmem(a, silu);
  if (smem == 0) return false;
  int device = 0, limit = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "shared memory limit");
  // The kernel's own static shared memory (the token slots) comes out of the same limit.
  return smem + (4 * kTiles + 1) * kTokens * sizeof(int) + 64 <= static_cast<size_t>(limit);
}

void loraExpandInPlace(const LoraExpandArgs& a, cudaStream_t st) { launch<1>(a, 0, st, "LoRA expand (in place)"); }

void loraSiluExpand(const LoraExpandArgs& a, int inter, cudaStream_t st) {
  if (inter % 8 != 0 || a.ldAct % 8 != 0 || !aligned16(a.act))
    throw std::invalid_argument("LoRA SiLU expand: intermediate size or act rows not in 16-byte steps");
  launch<2>(a, inter, st, "LoRA SiLU expand");
}


// The SiLU form again as a pipeline: one block a multiprocessor walks a run of (128 features, 64
// tokens) items, each item's rows and shrink outputs copied into shared memory (cp.async) while the
// item before is multiplied and written, B staged only when the slot or the features change. The
// deltas go into the rows' tile in shared memory and leave by 16-byte stores. Takes shrink outputs
// of one piece, each token's own slot only (the shrink by chunks), maxRank a multiple of 4.
namespace piped {

constexpr int kTok = 64, kF = 128, kThreads = 512;
constexpr int kYPitch = 2 * kF + 8;  // bf16: 132 words, so rows g of a warp's 4-byte reads differ in bank
__host__ __device__ inline int rank32(int maxRank) { return (maxRank + 31) / 32 * 32; }
// f32 rows of a slice's shrink outputs: rows g and g + 1's 16-byte reads at 32-byte steps on
// distinct banks (a pitch of 4 mod 8 words).
__host__ __device__ inline int midPitch(int maxRank) { return rank32(maxRank) + 4; }

__device__ __forceinline__ void copyBytes(void* dst, const void* src, int bytes) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src), "r"(bytes) : "memory");
}
__device__ __forceinline__ void commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void waitCopies() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// Four f32 shrink outputs at r .. r + 3 (those at or past `rank` read as zero), scaled, as bf16 pairs.
__device__ __forceinline__ uint2 scaled4(const float* m, int r, int rank, float scale) {
  const float4 v = *reinterpret_cast<const float4*>(m + r);
  return make_uint2(pairB(r < rank ? scale * v.x : 0.0f, r + 1 < rank ? scale * v.y : 0.0f),
                    pairB(r + 2 < rank ? scale * v.z : 0.0f, r + 3 < rank ? scale * v.w : 0.0f));
}

size_t smemBytes(int maxRank) {
  const size_t stage = static_cast<size_t>(kTok) * kYPitch * 2 + 2 * static_cast<size_t>(kTok) * midPitch(maxRank) * 4;
  return 2 * stage + 2 * static_cast<size_t>(kF) * stagedPitch(maxRank) * 2;
}

__global__ void __launch_bounds__(kThreads, 1) siluKernel(LoraExpandArgs a, int inter, int items, int tokenTiles) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int mSlot[2][kTok], mRank[2][2][kTok];
  __shared__ float mScale[2][kTok];
  __shared__ int slotList[kTok];
  __shared__ int nSlots;
  const LoraSlices& sl = a.sl;
  const int R = sl.maxRank, R32 = rank32(R), MP = midPitch(R), BP = stagedPitch(R);
  bf16_t* Y0 = reinterpret_cast<bf16_t*>(smem);
  float* M0 = reinterpret_cast<float*>(Y0 + 2 * kTok * kYPitch);
  bf16_t* Bs = reinterpret_cast<bf16_t*>(M0 + 4 * kTok * MP);
  int js[2] = {-1, -1};
  for (int j = 0; j < sl.count; ++j) {
    if (sl.module[j] == kGate) js[0] = j;
    if (sl.module[j] == kUp) js[1] = j;
  }
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, q = lane % 4;
  const int i0 = (warp % 4) * 16 + g, i1 = i0 + 8, f0 = (warp / 4) * 32;
  const int w0 = static_cast<int>(static_cast<long long>(blockIdx.x) * items / gridDim.x);
  const int w1 = static_cast<int>(static_cast<long long>(blockIdx.x + 1) * items / gridDim.x);

  // Item w's rows (gate and up) and shrink outputs into stage st.
  auto issue = [&](int w, int st) {
    const int t0 = w % tokenTiles * kTok, n0 = w / tokenTiles * kF;
    bf16_t* Y = Y0 + st * kTok * kYPitch;
    float* M = M0 + st * 2 * kTok * MP;
    for (int c = tid; c < kTok * 2 * (kF / 8); c += kThreads) {
      const int i = c / (2 * kF / 8), s = c / (kF / 8) % 2, ch = c % (kF / 8), t = t0 + i, n = n0 + 8 * ch;
      const bool ok = t < a.T && n < inter;
      copyBytes(Y + i * kYPitch + s * kF + 8 * ch, ok ? a.y + static_cast<size_t>(t) * a.ldy + s * inter + n : a.y,
                ok ? 16 : 0);
    }
    const int R4 = R / 4;
    for (int c = tid; c < kTok * 2 * R4; c += kThreads) {
      const int i = c / (2 * R4), s = c / R4 % 2, ch = c % R4, t = t0 + i, j = js[s];
      const bool ok = t < a.T && j >= 0;
      const float* src = ok ? a.mid.data + static_cast<size_t>(t) * a.mid.tokenPitch + j * a.mid.slicePitch + 4 * ch
                            : a.mid.data;
      copyBytes(M + (s * kTok + i) * MP + 4 * ch, src, ok ? 16 : 0);
    }
    commit();
  };
  // Item w's token table into buffer b (threads 0-63), from the token's slot.
  auto meta = [&](int b, int k) {
    mSlot[b][tid] = k;
    mScale[b][tid] = k >= 0 ? a.scaling[k] : 0.0f;
#pragma unroll
    for (int s = 0; s < 2; ++s) mRank[b][s][tid] = k >= 0 && js[s] >= 0 ? a.ranks[k * 7 + sl.module[js[s]]] : 0;
  };
  auto slotOf = [&](int w) {
    const int t = w % tokenTiles * kTok + tid;
    return t < a.T ? a.rowSlot[t] : -1;
  };
  if (w0 >= w1) return;
  issue(w0, 0);
  if (tid < kTok) meta(0, slotOf(w0));
  __syncthreads();
  int bSlot = -1, bFb = -1;
  for (int w = w0; w < w1; ++w) {
    const int st = (w - w0) & 1, t0 = w % tokenTiles * kTok, fb = w / tokenTiles, n0 = fb * kF;
    int nextSlot = -1;
    if (w + 1 < w1) {
      issue(w + 1, st ^ 1);
      if (tid < kTok) nextSlot = slotOf(w + 1);
    }
    if (warp == 0) {
      listSlots(mSlot[st], lane, slotList, &nSlots);
    }
    if (w + 1 < w1) {
      waitCopies<1>();
    } else {
      waitCopies<0>();
    }
    __syncthreads();  // this item's tiles and slot list are in
    bf16_t* Y = Y0 + st * kTok * kYPitch;
    const float* M = M0 + st * 2 * kTok * MP;
    float acc[2][4][4];
#pragma unroll
    for (int s = 0; s < 2; ++s)
#pragma unroll
      for (int n = 0; n < 4; ++n) acc[s][n][0] = acc[s][n][1] = acc[s][n][2] = acc[s][n][3] = 0.0f;
    const int slots = nSlots;
    for (int si = 0; si < slots; ++si) {
      const int k = slotList[si];
      if (k != bSlot || fb != bFb) {
        if (si > 0) __syncthreads();  // every warp is done with the last slot's B
        for (int c = tid; c < 2 * kF * (R32 / 8); c += kThreads) {
          const int s = c / (kF * (R32 / 8)), n = c / (R32 / 8) % kF, ch = c % (R32 / 8), j = js[s];
          const int rank = j >= 0 && n0 + n < inter ? a.ranks[k * 7 + sl.module[j]] : 0;
          // Past the slot's rank B may hold anything, NaN included: those bytes are filled with zeros.
          const int bytes = min(16, max(0, 2 * (rank - 8 * ch)));
          const bf16_t* src = bytes > 0 ? sl.b[j] + k * sl.bSlotStride[j] + static_cast<size_t>(n0 + n) * sl.bLd[j] + 8 * ch
                                        : a.y;
          copyBytes(Bs + (s * kF + n) * BP + 8 * ch, src, bytes);
        }
        commit();
        waitCopies<0>();
        __syncthreads();
        bSlot = k, bFb = fb;
      }
      // Tokens of other slots take zero rows of A: their products with this B add nothing.
      const bool m0 = mSlot[st][i0] == k, m1 = mSlot[st][i1] == k;
      if (!__any_sync(0xffffffffu, m0 || m1)) continue;
#pragma unroll
      for (int s = 0; s < 2; ++s) {
        const int rk0 = m0 ? mRank[st][s][i0] : 0, rk1 = m1 ? mRank[st][s][i1] : 0;
        const float sc0 = mScale[st][i0], sc1 = mScale[st][i1];
        const float* a0 = M + (s * kTok + i0) * MP;
        const float* a1 = M + (s * kTok + i1) * MP;
        for (int c = 0; c < R32; c += 32) {
          const int r = c + 8 * q;
          const uint2 u01 = scaled4(a0, r, rk0, sc0), u23 = scaled4(a0, r + 4, rk0, sc0);
          const uint2 v01 = scaled4(a1, r, rk1, sc1), v23 = scaled4(a1, r + 4, rk1, sc1);
#pragma unroll
          for (int n = 0; n < 4; ++n) {
            const uint4 b = *reinterpret_cast<const uint4*>(Bs + (s * kF + f0 + 8 * n + g) * BP + r);
            mma(acc[s][n], u01.x, v01.x, u01.y, v01.y, b.x, b.y);
            mma(acc[s][n], u23.x, v23.x, u23.y, v23.y, b.z, b.w);
          }
        }
      }
    }
    // SiLU x up with each token's deltas (rounded to bf16, as PEFT rounds lora_B's output), written
    // over the gate values in the tile: every value is read and written by one lane.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int i = h ? i1 : i0;
      const bool adds = mSlot[st][i] >= 0;
#pragma unroll
      for (int n = 0; n < 4; ++n) {
        uint32_t* gp = reinterpret_cast<uint32_t*>(Y + i * kYPitch + f0 + 8 * n + 2 * q);
        const uint32_t gw = *gp, uw = *reinterpret_cast<const uint32_t*>(Y + i * kYPitch + kF + f0 + 8 * n + 2 * q);
        float x0 = lowHalf(gw), x1 = highHalf(gw), u0 = lowHalf(uw), u1 = highHalf(uw);
        float o0, o1;
        if (adds) {
          const uint32_t dg = pairB(acc[0][n][2 * h], acc[0][n][2 * h + 1]);
          const uint32_t du = pairB(acc[1][n][2 * h], acc[1][n][2 * h + 1]);
          x0 += lowHalf(dg), x1 += highHalf(dg), u0 += lowHalf(du), u1 += highHalf(du);
          o0 = __fdividef(x0, 1.0f + __expf(-x0)) * u0;
          o1 = __fdividef(x1, 1.0f + __expf(-x1)) * u1;
        } else {
          o0 = silu(x0) * u0;
          o1 = silu(x1) * u1;
        }
        *gp = pairB(o0, o1);
      }
    }
    if (w + 1 < w1 && tid < kTok) meta(st ^ 1, nextSlot);
    __syncthreads();  // the tile's SiLU rows are written
    for (int c = tid; c < kTok * (kF / 8); c += kThreads) {
      const int i = c / (kF / 8), ch = c % (kF / 8), t = t0 + i, n = n0 + 8 * ch;
      if (t < a.T && n < inter)
        *reinterpret_cast<uint4*>(a.act + static_cast<size_t>(t) * a.ldAct + n) =
            *reinterpret_cast<const uint4*>(Y + i * kYPitch + 8 * ch);
    }
    __syncthreads();  // the stage is free for the item after next
  }
}

// Whether it takes these arguments here.
bool fits(const LoraExpandArgs& a, int inter) {
  const LoraSlices& sl = a.sl;
  const LoraMid& m = a.mid;
  if (sl.count == 0 || sl.maxRank <= 0 || sl.maxRank % 4 != 0 || inter % 8 != 0 || a.ldy % 8 != 0 || a.ldAct % 8 != 0)
    return false;
  if (!aligned16(a.y) || !aligned16(a.act) || !aligned16(m.data) || m.pieces != 1 || m.slotPitch != 0) return false;
  if (m.tokenPitch % 4 != 0 || m.slicePitch % 4 != 0) return false;
  for (int j = 0; j < sl.count; ++j)
    if (sl.bLd[j] % 8 != 0 || sl.bSlotStride[j] % 8 != 0 || !aligned16(sl.b[j]) ||
        (sl.module[j] != kGate && sl.module[j] != kUp))
      return false;
  int device = 0, limit = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "shared memory limit");
  return smemBytes(sl.maxRank) + 2048 <= static_cast<size_t>(limit);
}

void siluExpand(const LoraExpandArgs& a, int inter, cudaStream_t st) {
  if (a.T == 0) return;
  if (!fits(a, inter)) throw std::invalid_argument("LoRA SiLU expand (pipelined): arguments it does not take");
  int device = 0, sms = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "multiprocessors");
  const int tokenTiles = (a.T + kTok - 1) / kTok, items = tokenTiles * ((inter + kF - 1) / kF);
  const size_t smem = smemBytes(a.sl.maxRank);
  check(cudaFuncSetAttribute(siluKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
        "LoRA SiLU expand (pipelined)");
  // One block a multiprocessor, each a contiguous run of items (feature block by feature block).
  // Runs that keep the blocks at the same token tiles, so that together they read whole rows
  // (feature blocks x blocks a feature block), were slower: 112 blocks for 14,336 features.
  siluKernel<<<std::min(items, sms), kThreads, smem, st>>>(a, inter, items, tokenTiles);
  check(cudaGetLastError(), "LoRA SiLU expand (pipelined)");
}

}  // namespace piped

}  // namespace cuda
}  // namespace troupe

using namespace kernel_check;
using namespace troupe;
using namespace troupe::cuda;

namespace {

constexpr int kModules = 7;

struct Case {
  bool silu;
  int T, slots, maxRank;
  bool every;        // mid holds every slot's columns (the shrink GEMM over every slot's A rows)
  bool missing;      // in place: k not held; SiLU: up not held
  int out0 = 256, out1 = 64;  // in place: q's and k/v's features; SiLU: out0 is the intermediate size
  bool piped = false;         // SiLU by the pipelined kernel (shrink outputs in one piece)
};

struct Built {
  std::vector<int> module, out, offset;  // per held slice
  int cols = 0;                          // y's columns
};

Built slicesOf(const Case& c) {
  Built b;
  if (c.silu) {
    b.cols = 2 * c.out0;
    b.module = c.missing ? std::vector<int>{kGate} : std::vector<int>{kGate, kUp};
    for (size_t j = 0; j < b.module.size(); ++j) {
      b.out.push_back(c.out0);
      b.offset.push_back(static_cast<int>(j) * c.out0);
    }
    return b;
  }
  b.cols = c.out0 + 2 * c.out1;
  const int all[3] = {kQ, kK, kV}, outs[3] = {c.out0, c.out1, c.out1}, offs[3] = {0, c.out0, c.out0 + c.out1};
  for (int m = 0; m < 3; ++m) {
    if (c.missing && m == 1) continue;
    b.module.push_back(all[m]);
    b.out.push_back(outs[m]);
    b.offset.push_back(offs[m]);
  }
  return b;
}

int run(const Case& c, uint64_t seed, bool bench) {
  Rng rng{seed};
  const Built bt = slicesOf(c);
  const int S = static_cast<int>(bt.module.size()), R = c.maxRank, T = c.T;
  // Slots in runs (as a prefill's sequences lie), with base-model runs between.
  std::vector<int32_t> rowSlot(T);
  for (int t = 0; t < T;) {
    const int len = bench ? T / c.slots : 1 + static_cast<int>(rng.uni() * 90);
    const int slot = bench ? t / (T / c.slots) : static_cast<int>(rng.uni() * (c.slots + 1)) - 1;
    for (int i = 0; i < len && t < T; ++i) rowSlot[t++] = slot;
  }
  std::vector<int32_t> ranks(c.slots * kModules);
  std::vector<float> scaling(c.slots);
  for (int k = 0; k < c.slots; ++k) {
    scaling[k] = 0.25f + static_cast<float>(rng.uni());
    for (int m = 0; m < kModules; ++m) {
      const double u = rng.uni();
      ranks[k * kModules + m] = bench ? R : u < 0.1 ? 0 : u < 0.4 ? R : 1 + static_cast<int>(rng.uni() * R);
    }
  }
  // B as the pool keeps it: slice j's weight rows, ld = in + slots R (the padding columns), slot k's
  // block at column k R; NaN past each slot's rank.
  const int in = 40, ldb = in + c.slots * R;
  std::vector<std::vector<uint16_t>> B(S);
  for (int j = 0; j < S; ++j) {
    B[j].assign(static_cast<size_t>(bt.out[j]) * ldb, 0);
    for (int o = 0; o < bt.out[j]; ++o)
      for (int k = 0; k < c.slots; ++k)
        for (int r = 0; r < R; ++r)
          B[j][static_cast<size_t>(o) * ldb + in + k * R + r] =
              r < ranks[k * kModules + bt.module[j]] ? toBf16(0.2f * rng.sym()) : kNaN16;
  }
  // The shrink outputs: own layout in two pieces (slab apart), or every slot's columns in one.
  LoraMid mid;
  mid.pieces = c.every || c.piped || bench ? 1 : 2;
  mid.slotPitch = c.every ? R : 0;
  mid.slicePitch = c.every ? c.slots * R : R;
  mid.tokenPitch = S * mid.slicePitch;
  mid.slab = static_cast<size_t>(T) * mid.tokenPitch;
  std::vector<float> midH(mid.slab * mid.pieces, NAN);
  std::vector<float> scaled(static_cast<size_t>(T) * S * R, 0.0f);  // bf16(scale * sum), as the kernel stages it
  for (int t = 0; t < T; ++t) {
    const int k = rowSlot[t];
    if (k < 0) continue;
    for (int j = 0; j < S; ++j)
      for (int r = 0; r < ranks[k * kModules + bt.module[j]]; ++r) {
        const size_t at = static_cast<size_t>(t) * mid.tokenPitch + j * mid.slicePitch + k * mid.slotPitch + r;
        float sum = 0;
        for (int p = 0; p < mid.pieces; ++p) sum += (midH[at + p * mid.slab] = rng.sym());
        scaled[(static_cast<size_t>(t) * S + j) * R + r] = fromBf16(toBf16(scaling[k] * sum));
      }
  }
  std::vector<uint16_t> y(static_cast<size_t>(T) * bt.cols);
  for (auto& v : y) v = toBf16(2 * rng.sym());
  const int ldAct = c.out0 + 16;
  std::vector<uint16_t> act(static_cast<size_t>(T) * ldAct, 0x1234);

  uint16_t* dY = upload(y);
  uint16_t* dAct = upload(act);
  float* dMid = upload(midH);
  int32_t* dSlot = upload(rowSlot);
  int32_t* dRanks = upload(ranks);
  float* dScale = upload(scaling);
  std::vector<uint16_t*> dB(S);
  LoraExpandArgs a;
  for (int j = 0; j < S; ++j) {
    dB[j] = upload(B[j]);
    a.sl.b[j] = dB[j] + in;
    a.sl.bSlotStride[j] = R;
    a.sl.bLd[j] = ldb;
    a.sl.out[j] = bt.out[j];
    a.sl.outOffset[j] = bt.offset[j];
    a.sl.module[j] = bt.module[j];
  }
  a.sl.count = S;
  a.sl.maxRank = R;
  a.sl.in = in;
  a.y = dY;
  a.ldy = bt.cols;
  a.act = dAct;
  a.ldAct = ldAct;
  a.T = T;
  a.rowSlot = dSlot;
  a.ranks = dRanks;
  a.scaling = dScale;
  mid.data = dMid;
  a.mid = mid;
  int bad = 0;
  if (c.piped ? !piped::fits(a, c.out0) : !loraExpandFits(a, c.silu)) {
    std::printf("FAIL: the kernel refuses the case\n");
    return 1;
  }
  auto expand = [&]() {
    if (c.piped) {
      piped::siluExpand(a, c.out0, nullptr);
    } else if (c.silu) {
      loraSiluExpand(a, c.out0, nullptr);
    } else {
      loraExpandInPlace(a, nullptr);
    }
  };
  if (bench) {
    const double us = timeCalls(3, 20, [&](int) { expand(); });
    const double plain = c.silu ? timeCalls(3, 20, [&](int) { siluMul(dY, dAct, T, c.out0, nullptr, ldAct); }) : 0.0;
    std::printf("  %-8s T %d rank %2d: %8.1f us%s", c.piped ? "piped" : c.silu ? "silu" : "in place", T, R, us,
                c.silu ? "" : "\n");
    if (c.silu) std::printf("  (siluMul %.1f us)\n", plain);
  } else {
    expand();
    CK(cudaDeviceSynchronize());
    std::vector<uint16_t> gotY(y.size()), gotAct(act.size());
    CK(cudaMemcpy(gotY.data(), dY, y.size() * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(gotAct.data(), dAct, act.size() * 2, cudaMemcpyDeviceToHost));
    // Each token's delta for slice j at feature o, in double from the staged bf16 values.
    auto delta = [&](int t, int j, int o) {
      const int k = rowSlot[t];
      if (k < 0 || j < 0) return 0.0;
      double d = 0;
      for (int r = 0; r < ranks[k * kModules + bt.module[j]]; ++r)
        d += static_cast<double>(scaled[(static_cast<size_t>(t) * S + j) * R + r]) *
             fromBf16(B[j][static_cast<size_t>(o) * ldb + in + k * R + r]);
      return d;
    };
    // The result's own bf16 rounding, plus the deltas' (rounded to bf16 before they are added, as
    // PEFT rounds lora_B's output): `slack` is how far the result moves with the deltas.
    auto close = [](double got, double want, double slack) {
      return std::fabs(got - want) <= 0.01 * std::fabs(want) + 2e-3 + slack / 128;
    };
    if (c.silu) {
      // Base tokens: siluMul's rows, bit for bit.
      uint16_t* dPlain = upload(act);
      siluMul(dY, dPlain, T, c.out0, nullptr, ldAct);
      std::vector<uint16_t> plain(act.size());
      CK(cudaMemcpy(plain.data(), dPlain, act.size() * 2, cudaMemcpyDeviceToHost));
      cudaFree(dPlain);
      const int up = c.missing ? -1 : 1;
      for (int t = 0; t < T; ++t)
        for (int o = 0; o < ldAct; ++o) {
          const size_t at = static_cast<size_t>(t) * ldAct + o;
          if (o >= c.out0) {
            if (gotAct[at] != 0x1234 && bad++ < 5) std::printf("    t %d col %d: padding written\n", t, o);
            continue;
          }
          if (rowSlot[t] < 0) {
            if (gotAct[at] != plain[at] && bad++ < 5) std::printf("    t %d col %d: base row differs from siluMul\n", t, o);
            continue;
          }
          const double dg = delta(t, 0, o), du = delta(t, up, o);
          const double g = fromBf16(y[static_cast<size_t>(t) * bt.cols + o]) + dg;
          const double u = fromBf16(y[static_cast<size_t>(t) * bt.cols + c.out0 + o]) + du;
          const double sg = g / (1.0 + std::exp(-g)), want = sg * u, got = fromBf16(gotAct[at]);
          // silu's slope is at most 1.1.
          if (!close(got, want, 1.1 * std::fabs(dg * u) + std::fabs(du * sg)) && bad++ < 5) std::printf("    t %d col %d: %g, want %g\n", t, o, got, want);
        }
    } else {
      for (int t = 0; t < T; ++t)
        for (int col = 0; col < bt.cols; ++col) {
          int j = -1;
          for (int s = 0; s < S; ++s)
            if (col >= bt.offset[s] && col < bt.offset[s] + bt.out[s]) j = s;
          const size_t at = static_cast<size_t>(t) * bt.cols + col;
          if (j < 0 || rowSlot[t] < 0) {
            if (gotY[at] != y[at] && bad++ < 5) std::printf("    t %d col %d: changed, should not\n", t, col);
            continue;
          }
          const double d = delta(t, j, col - bt.offset[j]), want = fromBf16(y[at]) + d, got = fromBf16(gotY[at]);
          if (!close(got, want, std::fabs(d)) && bad++ < 5) std::printf("    t %d col %d: %g, want %g\n", t, col, got, want);
        }
    }
    std::printf("  %-8s T %4d slots %d rank %2d %-5s %-7s: %s\n", c.piped ? "piped" : c.silu ? "silu" : "in place", T,
                c.slots, R,
                c.every ? "every" : "own", c.missing ? "missing" : "all", bad ? "FAIL" : "ok");
  }
  for (void* p : std::vector<void*>{dY, dAct, dMid, dSlot, dRanks, dScale}) cudaFree(p);
  for (uint16_t* p : dB) cudaFree(p);
  return bad ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  const bool bench = argc > 1 && std::strcmp(argv[1], "--bench") == 0;
  int failed = 0;
  if (bench) {
    for (int R : {16, 64}) {
      failed += run(Case{true, 4096, 8, R, false, false, 14336, 0}, 7, true);
      failed += run(Case{true, 4096, 8, R, false, false, 14336, 0, true}, 7, true);
      failed += run(Case{false, 4096, 8, R, false, false, 4096, 1024}, 7, true);
    }
    return failed ? 1 : 0;
  }
  uint64_t seed = 1;
  for (bool silu : {false, true})
    for (int R : {8, 16, 64, 96})
      for (int rep = 0; rep < 2; ++rep)
        for (bool every : {false, true})
          for (bool missing : {false, true}) {
            const int T = 1 + static_cast<int>((seed * 37) % 300);
            // An intermediate size that leaves SiLU's last block of 128 features part-filled, and
            // q/k/v-like slices narrower than an in-place block's 256.
            Case c{silu, T, 1 + static_cast<int>(seed % 5), R, every, missing, silu ? 200 : 264, 72};
            failed += run(c, seed++, false);
          }
  // The pipelined SiLU kernel: shrink outputs in one piece, each token's own slot; token counts
  // past one block's run of items, so that blocks start mid-run and change features.
  for (int R : {8, 16, 64, 96})
    for (int rep = 0; rep < 4; ++rep)
      for (bool missing : {false, true}) {
        const int T = 1 + static_cast<int>((seed * 97) % 3000);
        Case c{true, T, 1 + static_cast<int>(seed % 5), R, false, missing, rep % 2 ? 200 : 1000, 0, true};
        failed += run(c, seed++, false);
      }
  std::printf(failed ? "%d cases FAILED\n" : "all cases ok\n", failed);
  return failed ? 1 : 0;
}
