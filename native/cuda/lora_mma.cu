// Tensor-core LoRA shrink and expand. A shrink block takes one 16-token tile of one item (the mma's
// M), one slice and one input piece; an expand block one slice's 128 output columns for up to 8
// tiles (LoraExpandGroup: in a prefill, a run of consecutive tiles and items; in a decode step, one
// tile), and four warps share the work. Shrink: the block's input piece, split again over its warps
// in 32-feature chunks; each warp forms all of the slot's rank columns (N, in n-tiles of 8, only as
// many as the slot's rank needs) for its chunks, and the warps' sums meet in shared memory in a
// fixed order. Expand: 32 output columns per warp; each tile's mid rows (summed over the pieces in
// a fixed order) are the A operand, the slot's B rows the B operand, K the rank. The B fragments
// stay in registers while consecutive tiles use the same slot, so a prefill reads each slot's B
// once per block rather than once per tile, and a block's launch, its item look-ups and its wait
// for the grid before are paid once for its tiles. Each output value is still formed by one thread
// from the same mma sequence as with one tile per block: grouping changes no result bit.
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
// Precision: the shrink's operands are bf16 already (x is the GEMM input, A the pool's factor). The
// expand's A operand is mid, f32; rounding it to bf16 would add a 2^-9 relative error that the FMA
// kernels do not have, so it goes in as two bf16 terms (hi = bf16(v), lo = bf16(v - hi)) and two
// mmas: about 16 mantissa bits, as close to the f32 path as the parity bar needs to be unaffected,
// for mma work the expand (bound by reading B and y) has to spare.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/device.h"
#include "cuda/lora_mma.h"
#include "cuda/lora_tile.cuh"

namespace troupe {
namespace cuda {

namespace {

constexpr int kTok = kLoraTileTokens;  // the mma's M
static_assert(kTok == 16, "a tile is one m16 row block");
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kChunk = 32;      // K one quad of lanes spans with one 16-byte load per lane and row
constexpr int kPassRanks = 64;  // rank columns per pass: registers stay bounded at any rank
constexpr int kModules = 7;     // ranks is [slot][7 modules]
constexpr int kMinPiece = 512;
constexpr int kTargetBlocks = 1024;
constexpr int kWarpCols = 32;  // expand: four n-tiles per warp
constexpr int kBlockCols = kWarps * kWarpCols;
// Expand: a block takes up to kGroupTiles tiles (one token row per thread to look up), as many as
// still leave kMinGroupedBlocks blocks (three rounds of resident blocks on an H200's 132 SMs):
// a prefill's grid then shrinks by up to 8x and each block reads its B once per run of one slot's
// tiles, while a decode step (a few tiles) keeps one tile per block and all its parallelism.
constexpr int kGroupTiles = kThreads / kTok;
constexpr int kMinGroupedBlocks = 2048;
// Registers for five resident expand blocks per SM (96 each, without spills): B fragments held
// across tiles and the prefetched y take more than the one-tile kernel's 72.
constexpr int kExpandBlocksPerSm = 5;
static_assert(kMinPiece >= kLoraKSplit, "mma pieces must not outnumber mid's slabs");
// Shared rows padded so that a warp's accesses spread over all banks: the shrink's float2 stores
// of C fragments (rows g, columns 2q: word 72 g + 2q, 16 lanes per phase) and the expand's float4
// loads of A fragments (row g, column 8q: word 68 g + 8q, 8 lanes per phase).
constexpr int kRedPitch = kPassRanks + 8;
constexpr int kMidPitch = kPassRanks + 4;
static_assert(kRedPitch % 32 == 8 && kMidPitch % 32 == 4, "bank-conflict-free pitches");

// Programmatic dependent launch (sm_90): wait for the previous grid's completion and memory;
// allow the next grid to start launching. Both are no-ops in a grid launched without it.
__device__ __forceinline__ void pdlWait() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdlLaunchDependents() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

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

// The 16 token rows of the block's tile (-1 past its end), in shared memory.
__device__ __forceinline__ void loadTokens(const LoraItems& items, const LoraTile& t, int* tok) {
  if (threadIdx.x < kTok) tok[threadIdx.x] = threadIdx.x < t.count ? items.perm[t.begin + threadIdx.x] : -1;
  __syncthreads();
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

template <bool kVec>
__global__ void __launch_bounds__(kThreads)
    shrinkMmaKernel(LoraItems items, LoraSlices sl, const int32_t* ranks, const bf16_t* x, int ldx, float* mid,
                    size_t midSlab, int pieceLen) {
  // Under programmatic launch this grid may start while the base projection before it drains; x
  // (and mid, which the last expand read) are settled only once the grid before has completed.
  pdlWait();
  pdlLaunchDependents();
  const int s = blockIdx.z % sl.count, piece = blockIdx.z / sl.count;
  LoraTile t;
  if (!loraTileOf(items, blockIdx.x, blockIdx.y, t)) return;
  const int rank = ranks[t.slot * kModules + sl.module[s]];
  if (rank == 0) return;
  __shared__ int tok[kTok];
  __shared__ __align__(16) float red[kWarps][kTok][kRedPitch];
  loadTokens(items, t, tok);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, q = lane % 4;
  const bf16_t* xa = tok[g] >= 0 ? x + static_cast<size_t>(tok[g]) * ldx : nullptr;
  const bf16_t* xb = tok[g + 8] >= 0 ? x + static_cast<size_t>(tok[g + 8]) * ldx : nullptr;
  const int in = sl.in, k0 = piece * pieceLen, kEnd = min(in, k0 + pieceLen);
  const bf16_t* A = sl.a[s] + t.slot * sl.aSlotStride[s];
  const int midPitch = sl.count * sl.maxRank;
  float* out = mid + piece * midSlab + s * sl.maxRank;
  for (int r0 = 0; r0 < rank; r0 += kPassRanks) {
    const int rn = min(kPassRanks, rank - r0);
    const bf16_t* Ar = A + static_cast<size_t>(r0) * in;
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
  }
}

// v as hi + lo, each a bf16: two values per register as the A fragments take them.
__device__ __forceinline__ void split(float a, float b, uint32_t& hi, uint32_t& lo) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  const float2 hf = __bfloat1622float2(h);
  const __nv_bfloat162 l = __floats2bfloat162_rn(a - hf.x, b - hf.y);
  hi = *reinterpret_cast<const uint32_t*>(&h);
  lo = *reinterpret_cast<const uint32_t*>(&l);
}

// One warp's B fragments for the expand pass at r0: its 32 output rows (n-tiles j), ranks
// r0 .. r0 + 64 in two chunks c, the second only when more than 32 ranks are left (rv). B: the
// warp's first output row at r0; oValid: its rows before the slice's end.
template <bool kVec>
__device__ __forceinline__ void loadB(const bf16_t* B, int ldb, int oValid, int rv, int g, int q, uint4 (&b)[2][4]) {
  const uint4 zero = make_uint4(0, 0, 0, 0);
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    if (c == 1 && rv <= kChunk) break;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int o = 8 * j + g, r = kChunk * c + 8 * q;
      b[c][j] = o < oValid ? load8<kVec>(B + static_cast<size_t>(o) * ldb + r, rv - r) : zero;
    }
  }
}

// One expand pass over ranks r0 .. r0 + 64 of one tile: acc[j] (the warp's n-tile j) += mid . B^T.
// b: loadB's fragments for this pass; rv: ranks left from r0; midAt: mid at the slice's column r0;
// tok: the tile's 16 token rows (-1 past its end).
__device__ __forceinline__ void expandPass(const uint4 (&b)[2][4], int rv, const float* midAt, size_t midSlab,
                                           int midPitch, int pieces, const int* tok, float (*ms)[kMidPitch], int g,
                                           int q, float (&acc)[4][4]) {
  const int shift = rv > kChunk ? 6 : 5, cols = 1 << shift;  // the chunks the pass multiplies
  for (int e = threadIdx.x; e < kTok << shift; e += kThreads) {
    const int i = e >> shift, r = e & (cols - 1);
    float v = 0.0f;
    if (tok[i] >= 0 && r < rv) {
      const float* m = midAt + static_cast<size_t>(tok[i]) * midPitch + r;
#pragma unroll 4
      for (int p = 0; p < pieces; ++p) v += __ldcg(m + p * midSlab);
    }
    ms[i][r] = v;  // zero past the rank: B's zeros there must not meet stale values
  }
  __syncthreads();
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    if (c == 1 && rv <= kChunk) break;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = kChunk * c + 8 * q + 4 * h;
      const float4 u = *reinterpret_cast<const float4*>(&ms[g][r]);
      const float4 w = *reinterpret_cast<const float4*>(&ms[g + 8][r]);
      uint32_t hi[4], lo[4];
      split(u.x, u.y, hi[0], lo[0]);
      split(w.x, w.y, hi[1], lo[1]);
      split(u.z, u.w, hi[2], lo[2]);
      split(w.z, w.w, hi[3], lo[3]);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint32_t b0 = h ? b[c][j].z : b[c][j].x, b1 = h ? b[c][j].w : b[c][j].y;
        mma(acc[j], hi[0], hi[1], hi[2], hi[3], b0, b1);
        mma(acc[j], lo[0], lo[1], lo[2], lo[3], b0, b1);
      }
    }
  }
  __syncthreads();  // ms is rewritten by the next pass
}

// The expand's 128-column blocks of one slice; a block's z walks the slices' own blocks in turn, so
// narrow slices (k and v beside q) launch none that would only exit.
__host__ __device__ __forceinline__ int colBlocks(int out) { return (out + kBlockCols - 1) / kBlockCols; }

template <bool kVec>
__global__ void __launch_bounds__(kThreads, kExpandBlocksPerSm)
    expandMmaKernel(LoraItems items, LoraSlices sl, const int32_t* ranks, const float* scaling, const float* mid,
                    size_t midSlab, int pieces, float* y, int ldy, LoraExpandGroup group) {
  int s = 0, cb = blockIdx.z;
  while (s + 1 < sl.count && cb >= colBlocks(sl.out[s])) cb -= colBlocks(sl.out[s++]);
  const int i0 = blockIdx.x * group.items, tile0 = blockIdx.y * group.tiles, nItems = *items.numItems;
  const int tiles = group.items * group.tiles;
  // Blocks without work wait too: the grid then completes only after the one before it.
  if (i0 >= nItems) return pdlWait();
  // The block's tiles, k = (item i0 + k / group.tiles, tile tile0 + k % group.tiles): one token row
  // per thread, -1 past the step's items or an item's end (a tile without tokens has -1 in row 0).
  __shared__ int tok[kGroupTiles][kTok];
  __shared__ __align__(16) float ms[kTok][kMidPitch];
  {
    const int k = threadIdx.x / kTok, row = threadIdx.x % kTok, item = i0 + k / group.tiles;
    int v = -1;
    if (k < tiles && item < nItems) {
      const int p = items.itemStart[item] + (tile0 + k % group.tiles) * kTok + row;
      if (p < items.itemStart[item + 1]) v = items.perm[p];
    }
    tok[k][row] = v;
  }
  __syncthreads();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, q = lane % 4;
  const int out = sl.out[s], maxRank = sl.maxRank, midPitch = sl.count * maxRank, module = sl.module[s];
  const int ldb = sl.bLd[s];
  const int oWarp = cb * kBlockCols + warp * kWarpCols, oValid = out - oWarp;
  const size_t oRow = static_cast<size_t>(oValid > 0 ? oWarp : 0) * ldb;
  float* ys = y + sl.outOffset[s];
  const float* midS = mid + s * maxRank;
  // B fragments stay in registers from tile to tile while the slot (and, past 64 ranks, the pass)
  // stays the same: a run of one adapter's tiles reads its B once.
  uint4 b[2][4];
#pragma unroll
  for (int c = 0; c < 2; ++c)
#pragma unroll
    for (int j = 0; j < 4; ++j) b[c][j] = make_uint4(0, 0, 0, 0);
  int bSlot = -1, bR0 = -1;
  bool waited = false;
  for (int k = 0; k < tiles; ++k) {
    const int* tk = tok[k];
    if (tk[0] < 0) continue;
    const int slot = items.itemSlot[i0 + k / group.tiles], rank = ranks[slot * kModules + module];
    if (rank == 0) continue;
    const bf16_t* B = sl.b[s] + slot * sl.bSlotStride[s] + oRow;
    if (slot != bSlot || bR0 != 0) {
      loadB<kVec>(B, ldb, oValid, rank, g, q, b);
      bSlot = slot, bR0 = 0;
    }
    // Everything above is the pool's or the step's items; mid and y come from the grids before,
    // which under programmatic launch may still be finishing: wait, then read them through L2.
    if (!waited) {
      pdlWait();
      waited = true;
    }
    // The tile's y, in flight while its mid is gathered and multiplied.
    float yv[4][2][2];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int o = oWarp + 8 * j + 2 * q;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int t = tk[g + 8 * h];
        const float* yr = ys + static_cast<size_t>(t < 0 ? 0 : t) * ldy;
        yv[j][h][0] = t >= 0 && o < out ? __ldcg(yr + o) : 0.0f;
        yv[j][h][1] = t >= 0 && o + 1 < out ? __ldcg(yr + o + 1) : 0.0f;
      }
    }
    float acc[4][4];
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
    for (int r0 = 0; r0 < rank; r0 += kPassRanks) {
      if (r0 != bR0) {
        loadB<kVec>(B + r0, ldb, oValid, rank - r0, g, q, b);
        bR0 = r0;
      }
      expandPass(b, rank - r0, midS + r0, midSlab, midPitch, pieces, tk, ms, g, q, acc);
    }
    const float scale = scaling[slot];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int o = oWarp + 8 * j + 2 * q;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int t = tk[g + 8 * h];
        if (t < 0) continue;
        float* yr = ys + static_cast<size_t>(t) * ldy;
        if (o < out) yr[o] = yv[j][h][0] + scale * acc[j][2 * h];
        if (o + 1 < out) yr[o + 1] = yv[j][h][1] + scale * acc[j][2 * h + 1];
      }
    }
  }
  if (!waited) pdlWait();
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, cudaStream_t st, bool pdl, const char* what, Args... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(kThreads);
  cfg.stream = st;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  check(cudaLaunchKernelEx(&cfg, kernel, args...), what);
}

}  // namespace

LoraMmaSplit loraMmaSplit(const LoraItems& items, const LoraSlices& sl) {
  const long long tiles =
      static_cast<long long>(std::max(items.gridItems, 1)) * std::max(items.gridTiles, 1) * std::max(sl.count, 1);
  const int most = std::max(1, (sl.in + kMinPiece - 1) / kMinPiece);
  const int pieces = static_cast<int>(std::min<long long>(most, (kTargetBlocks + tiles - 1) / tiles));
  const int len = ((sl.in + pieces - 1) / pieces + kChunk - 1) / kChunk * kChunk;
  return LoraMmaSplit{(sl.in + len - 1) / len, len};
}

void loraShrinkMma(const LoraItems& items, const LoraSlices& sl, const int32_t* ranks, const bf16_t* x, int ldx,
                   float* mid, size_t midSlab, cudaStream_t st, bool pdl) {
  if (items.gridItems == 0 || sl.count == 0) return;
  const LoraMmaSplit sp = loraMmaSplit(items, sl);
  bool vec = sl.in % 8 == 0 && ldx % 8 == 0 && aligned16(x);
  for (int s = 0; s < sl.count; ++s) vec = vec && aligned16(sl.a[s]);
  const dim3 grid(items.gridItems, items.gridTiles, sl.count * sp.pieces);
  launch(vec ? shrinkMmaKernel<true> : shrinkMmaKernel<false>, grid, st, pdl, "LoRA shrink (mma) launch", items, sl,
         ranks, x, ldx, mid, midSlab, sp.len);
}

LoraExpandGroup loraExpandGroup(const LoraItems& items, const LoraSlices& sl) {
  long long z = 0;
  for (int s = 0; s < sl.count; ++s) z += colBlocks(sl.out[s]);
  const int gi = std::max(items.gridItems, 1), gt = std::max(items.gridTiles, 1);
  LoraExpandGroup best{1, 1};
  for (int per = 2; per <= kGroupTiles; per *= 2) {
    const int tiles = std::min(gt, per), its = per / tiles;
    const long long blocks = static_cast<long long>((gi + its - 1) / its) * ((gt + tiles - 1) / tiles) * z;
    if (blocks < kMinGroupedBlocks) break;
    best = LoraExpandGroup{its, tiles};
  }
  return best;
}

void loraExpandMma(const LoraItems& items, const LoraSlices& sl, const int32_t* ranks, const float* scaling,
                   const float* mid, size_t midSlab, float* y, int ldy, cudaStream_t st, bool pdl,
                   const LoraExpandGroup* group) {
  if (items.gridItems == 0 || sl.count == 0) return;
  int z = 0;
  bool vec = true;
  for (int s = 0; s < sl.count; ++s) {
    z += colBlocks(sl.out[s]);
    vec = vec && sl.bLd[s] % 8 == 0 && sl.bSlotStride[s] % 8 == 0 && aligned16(sl.b[s]);
  }
  const LoraExpandGroup gr = group ? *group : loraExpandGroup(items, sl);
  if (gr.items < 1 || gr.tiles < 1 || gr.items * gr.tiles > kGroupTiles)
    throw std::invalid_argument("LoRA expand: a block takes 1 to " + std::to_string(kGroupTiles) + " tiles, not " +
                                std::to_string(gr.items) + " items x " + std::to_string(gr.tiles) + " tiles");
  const dim3 grid((items.gridItems + gr.items - 1) / gr.items, (std::max(items.gridTiles, 1) + gr.tiles - 1) / gr.tiles,
                  z);
  launch(vec ? expandMmaKernel<true> : expandMmaKernel<false>, grid, st, pdl, "LoRA expand (mma) launch", items, sl,
         ranks, scaling, mid, midSlab, loraMmaSplit(items, sl).pieces, y, ldy, gr);
}

}  // namespace cuda
}  // namespace troupe
