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
// Precision: the shrink's operands are bf16 already (x is the GEMM input, A the pool's factor). The
// expand's A operand is mid, f32; rounding it to bf16 would add a 2^-9 relative error that the FMA
// kernels do not have, so it goes in as two bf16 terms (hi = bf16(v), lo = bf16(v - hi)) and two
// mmas: about 16 mantissa bits, as close to the f32 path as the parity bar needs to be unaffected,
// for mma work the expand (bound by reading B and y) has to spare. Fragments: lora_mma_ops.cuh.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/device.h"
#include "cuda/lora_mma.h"
#include "cuda/lora_mma_ops.cuh"
#include "cuda/lora_tile.cuh"

namespace troupe {
namespace cuda {

namespace {

using namespace mma_ops;

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
// The expand's mid rows padded so that its float4 loads of A fragments (row g, column 8q: word
// 68 g + 8q, 8 lanes per phase) spread over all banks.
constexpr int kMidPitch = kPassRanks + 4;
static_assert(kMidPitch % 32 == 4, "bank-conflict-free pitch");

// The 16 token rows of the block's tile (-1 past its end), in shared memory.
__device__ __forceinline__ void loadTokens(const LoraItems& items, const LoraTile& t, int* tok) {
  if (threadIdx.x < kTok) tok[threadIdx.x] = threadIdx.x < t.count ? items.perm[t.begin + threadIdx.x] : -1;
  __syncthreads();
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
  const int k0 = piece * pieceLen;
  shrinkTile<kVec>(tok, x, ldx, sl.a[s] + t.slot * sl.aSlotStride[s], sl.in, rank, sl.count,
                   sl.slotRank ? sl.slotRank : sl.maxRank, k0, min(sl.in, k0 + pieceLen),
                   mid + piece * midSlab + s * sl.maxRank, sl.count * sl.maxRank, red);
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

template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, cudaStream_t st, bool pdl, const char* what, Args... args) {
  launchPdl(kernel, grid, dim3(kThreads), st, pdl, what, args...);
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
