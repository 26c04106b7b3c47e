// Causal attention of a prefill chunk on tensor cores, flash style: the scores never leave the
// SM. A block takes 128 query rows of one KV head (rows are (token, query head of the group) pairs,
// q's layout keeps them adjacent) and walks the keys its rows can see in tiles of 64, copied from
// the paged cache by cp.async, two tiles ahead; each of its eight warps takes 16 rows. Per tile a
// warp forms S = Q K^T (16 x 64) with mmas over head_dim, masks keys past each row's position (and
// before its sliding window), runs the online softmax on S's fragments, and adds P V (P in bf16).
//
// What keeps the tensor cores busy: eight warps share each tile's copy (half the L2 traffic a flop
// of four); Q stays in registers; K and V come from shared memory by ldmatrix, rows 16 bytes past
// a multiple of 128 apart, so without bank conflicts; the softmax runs in the log2 domain with the
// scale folded into one fma per score; only tiles that cross a row's position or window start are
// masked (a template flag: the others carry no compares); a warp skips tiles none of its rows can
// see (past the diagonal); O is rescaled only when some row's maximum moved; and one __syncthreads
// a tile orders the copies and the reads. The upper four warps add a tile's P V one iteration
// late, after the barrier, while the lower four form S: each scheduler then has one warp on mmas
// while the other is in its softmax, where otherwise the barrier would keep all warps in the same
// phase. A stage is kept one iteration longer for it (four stages, two tiles ahead).
//
// Fragments are mma.m16n8k16's documented layouts (lora_mma_ops.cuh): Q's A fragments and K's B
// fragments with head_dim in its natural order (ldmatrix without transpose gives K's), S's C
// fragments turned into P's A fragments in registers, V's B fragments by ldmatrix.trans.
#include <cuda_bf16.h>

#include <algorithm>
#include <stdexcept>
#include <utility>
#include <vector>

#include "cuda/attention_ops.cuh"
#include "cuda/attention_prefill_rows.cuh"
#include "cuda/kernels.h"
#include "cuda/lora_mma_ops.cuh"

namespace troupe {
namespace cuda {

namespace {

using namespace attention_ops;
using mma_ops::mma;

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = kWarps * 16;  // query rows a block takes
static_assert(kRows == kPrefillTileRows, "a tile is one block's rows");
using prefill_rows::kKeys;
// Shared-memory stages: tiles being read (this iteration's and, for the late warps, the previous
// one) and tiles on their way.
constexpr int kLag = 1;
constexpr int kStages = 4;
constexpr int kAhead = kStages - 1 - kLag;  // tiles copied ahead of the one being scored
static_assert(kAhead >= 1, "at least one tile on its way");
// Rows of head_dim + 8 values: 16 bytes past a multiple of 128, so ldmatrix's eight row addresses
// fall in different banks.
template <int D>
constexpr int kPitch = D + 8;
template <int D>
constexpr size_t kBlockSmem = static_cast<size_t>(kStages) * 2 * kKeys * kPitch<D> * sizeof(bf16_t);

// Keys [k0, k0 + kKeys) of one KV head of a sequence (block table bt) into rows of kPitch values
// at sk and sv; rows past `end` are zeros (a masked key's V must still be finite: P's zero times
// it). A thread copies the same 16 bytes of every kThreads / (D / 8)-th key. kPow2: the cache's
// block size is 1 << shift, so no integer division per key.
template <int D, bool kPow2>
__device__ __forceinline__ void fetchTile(const bf16_t* kCache, const bf16_t* vCache, const int32_t* bt, int kvHeads,
                                          int kvHead, int blockSize, int shift, int k0, int end, bf16_t* sk,
                                          bf16_t* sv) {
  constexpr int kParts = D / 8;  // 16-byte pieces of a key
  static_assert(kThreads % kParts == 0 && kKeys % (kThreads / kParts) == 0, "every thread copies as many pieces");
  constexpr int kStep = kThreads / kParts;
  const int part = threadIdx.x % kParts, first = threadIdx.x / kParts;
#pragma unroll
  for (int i = 0; i < kKeys / kStep; ++i) {
    const int key = first + i * kStep;
    const int k = k0 + key;
    const bool ok = k < end;
    size_t off = 0;
    if (ok) {
      const int blk = kPow2 ? k >> shift : k / blockSize;
      const int row = k - blk * blockSize;
      off = ((static_cast<size_t>(bt[blk]) * kvHeads + kvHead) * blockSize + row) * D + part * 8;
    }
    copy16(sk + key * kPitch<D> + part * 8, kCache + off, ok);
    copy16(sv + key * kPitch<D> + part * 8, vCache + off, ok);
  }
}

// One warp's pass over one key tile (K, V in shared memory, first key k0) for its 16 rows: this
// lane's rows gi and gi + 8 see keys [lo[r], pos[r]]; S = Q K^T, then the online softmax
// (prefill_rows::softmaxTile). kMask: some key of the tile is outside some row's range.
template <int D, bool kMask>
__device__ __forceinline__ void scoreTile(const bf16_t* K, const uint32_t (&qa)[D / 16][4], int k0, const int (&pos)[2],
                                          const int (&lo)[2], float sl2, float (&m)[2], float (&l)[2],
                                          float (&o)[D / 64][8][4], uint32_t (&pa)[kKeys / 16][4]) {
  constexpr int P = kPitch<D>;
  constexpr int NT = kKeys / 8;  // n-tiles of S
  const int lane = threadIdx.x & 31, mi = lane >> 3, ri = lane & 7;

  // S = Q K^T. One ldmatrix gives an n-tile's B fragments for two 16-dimension steps: its matrix
  // i holds keys 8 n .. 8 n + 7, dimensions 32 j + 8 i .. + 7.
  float s[NT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0;
#pragma unroll
  for (int j = 0; j < D / 32; ++j) {
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      uint32_t b0, b1, b2, b3;
      ldmatrix(K + (n * 8 + ri) * P + j * 32 + mi * 8, b0, b1, b2, b3);
      mma(s[n], qa[2 * j][0], qa[2 * j][1], qa[2 * j][2], qa[2 * j][3], b0, b1);
      mma(s[n], qa[2 * j + 1][0], qa[2 * j + 1][1], qa[2 * j + 1][2], qa[2 * j + 1][3], b2, b3);
    }
  }

  prefill_rows::softmaxTile<D, kKeys, kMask>(s, k0, pos, lo, sl2, m, l, o, pa);
}

// O += P V for one key tile (V in shared memory, P from scoreTile).
template <int D>
__device__ __forceinline__ void accumulateTile(const bf16_t* V, const uint32_t (&pa)[kKeys / 16][4],
                                               float (&o)[D / 64][8][4]) {
  constexpr int P = kPitch<D>;
  const int lane = threadIdx.x & 31, mi = lane >> 3, ri = lane & 7;
#pragma unroll
  for (int ks = 0; ks < kKeys / 16; ++ks) {
#pragma unroll
    for (int d0 = 0; d0 < D; d0 += 16) {
      uint32_t b0, b1, b2, b3;
      ldmatrix<true>(V + (ks * 16 + (mi & 1) * 8 + ri) * P + d0 + (mi >> 1) * 8, b0, b1, b2, b3);
      mma(o[d0 / 64][d0 % 64 / 8], pa[ks][0], pa[ks][1], pa[ks][2], pa[ks][3], b0, b1);
      mma(o[d0 / 64][d0 % 64 / 8 + 1], pa[ks][0], pa[ks][1], pa[ks][2], pa[ks][3], b2, b3);
    }
  }
}

template <int D, int G>
__global__ void __launch_bounds__(kThreads, 1)
    prefillMmaKernel(const bf16_t* q, const bf16_t* kCache, const bf16_t* vCache, TokenMap map, AttnShape a,
                     const PrefillTile* work, float scale, bf16_t* out) {
  constexpr int P = kPitch<D>;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16_t* sk = reinterpret_cast<bf16_t*>(smem);  // [stages][keys][P]
  bf16_t* sv = sk + kStages * kKeys * P;

  // Blocks are (tile, KV head) pairs, tile-major: the hardware starts blocks in index order, so
  // every head's longest tiles go first and the short ones fill the tail.
  const int g = blockIdx.x % a.kvHeads;
  const int warp = threadIdx.x >> 5;
  // This block's tile of the step's prefill chunks (prefillAttentionTiles' order: longest first).
  const PrefillTile mine = work[blockIdx.x / a.kvHeads];
  const int t0 = mine.t0, rows = mine.count * G, blockRow = mine.row;
  const int firstPos = map.positions[t0];
  const int32_t* bt = map.blockTables + static_cast<size_t>(map.tokenSeq[t0]) * map.pitch;
  const int window = a.window;
  auto windowStart = [window](int p) { return prefill_rows::windowStart(window, p); };

  const int warpRow = blockRow + warp * 16;
  int pos[2], lo[2];
  uint32_t qa[D / 16][4];
  prefill_rows::rowRanges<G>(warpRow, firstPos, window, pos, lo);
  // Q's A fragments (qa[c][0..3]: dimensions 16 c + 2 qi and + 8, rows gi and gi + 8). Rows past
  // the chunk have zero Q; their results are never stored, and an mma's rows do not mix.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = warpRow + ((threadIdx.x & 31) >> 2) + 8 * r, qi = threadIdx.x & 3;
    const bool live = row < rows;
    const uint32_t* qr =
        reinterpret_cast<const uint32_t*>(q + ((static_cast<size_t>(g) * map.tokens + t0) * G + (live ? row : 0)) * D);
#pragma unroll
    for (int c = 0; c < D / 16; ++c) {
      qa[c][r] = live ? qr[c * 8 + qi] : 0u;
      qa[c][2 + r] = live ? qr[c * 8 + 4 + qi] : 0u;
    }
  }
  // The block's keys: from the first row's window start to the last row's position.
  const int lastRow = min(rows, blockRow + kRows) - 1;
  const int begin = windowStart(firstPos + blockRow / G);
  const int end = firstPos + lastRow / G + 1;
  const int tiles = (end - begin + kKeys - 1) / kKeys;
  // The warp's live rows: positions [warpPosFirst, warpPosLast]; window starts from warpLoFirst to
  // warpLoLast. A tile wholly outside them is skipped; one wholly inside needs no mask.
  const bool warpLive = warpRow < rows;
  const int warpPosFirst = firstPos + warpRow / G;
  const int warpPosLast = firstPos + (min(rows, warpRow + 16) - 1) / G;
  const int warpLoFirst = windowStart(warpPosFirst), warpLoLast = windowStart(warpPosLast);

  const int bs = a.blockSize;
  const bool pow2 = (bs & (bs - 1)) == 0;
  const int shift = __ffs(bs) - 1;
  auto fetch = [&](int tile, int stage) {
    const int k0 = begin + tile * kKeys;
    bf16_t* dk = sk + stage * kKeys * P;
    bf16_t* dv = sv + stage * kKeys * P;
    if (pow2) {
      fetchTile<D, true>(kCache, vCache, bt, a.kvHeads, g, bs, shift, k0, end, dk, dv);
    } else {
      fetchTile<D, false>(kCache, vCache, bt, a.kvHeads, g, bs, shift, k0, end, dk, dv);
    }
  };

  const float sl2 = scale * 1.4426950408889634f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0, 0};
  float o[D / 64][8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n / 8][n % 8][0] = o[n / 8][n % 8][1] = o[n / 8][n % 8][2] = o[n / 8][n % 8][3] = 0;

  // Tile i's copies are commit group i (groups past the last tile are empty). At the top of
  // iteration `tile`, kAhead + tile groups are committed, so leaving the newest kAhead - 1 pending
  // waits for this tile's; the barrier then makes them visible to every warp and tells that every
  // warp is done with tile - 1 - kLag, whose stage the fetch reuses (tile + kAhead is that stage
  // again since kAhead = kStages - 1 - kLag).
  const bool late = warp >= kWarps / 2;  // one warp of each scheduler (warp % 4)
#pragma unroll
  for (int i = 0; i < kAhead; ++i) {
    if (i < tiles) fetch(i, i);
    copyCommit();
  }
  bool pending = false;  // a late warp's P of the previous tile, not yet multiplied by its V
  uint32_t pa[kKeys / 16][4];
  const bf16_t* pendingV = sv;
  for (int tile = 0; tile < tiles; ++tile) {
    copyWait<kAhead - 1>();
    __syncthreads();
    const int ahead = tile + kAhead;
    if (ahead < tiles) fetch(ahead, ahead % kStages);
    copyCommit();
    if (pending) {
      accumulateTile<D>(pendingV, pa, o);
      pending = false;
    }

    const int k0 = begin + tile * kKeys, k1 = k0 + kKeys - 1;
    if (!warpLive || k0 > warpPosLast || k1 < warpLoFirst) continue;
    const int stage = tile % kStages;
    const bf16_t* K = sk + stage * kKeys * P;
    const bf16_t* V = sv + stage * kKeys * P;
    // Keys past `end` are past every row's position, so such a tile takes the masked path too.
    if (k1 > warpPosFirst || k0 < warpLoLast) {
      scoreTile<D, true>(K, qa, k0, pos, lo, sl2, m, l, o, pa);
    } else {
      scoreTile<D, false>(K, qa, k0, pos, lo, sl2, m, l, o, pa);
    }
    if (late) {
      pending = true;
      pendingV = V;
    } else {
      accumulateTile<D>(V, pa, o);
    }
  }
  if (pending) accumulateTile<D>(pendingV, pa, o);
  copyWait<0>();

  prefill_rows::storeRows<D, G>(l, o, warpRow, rows, t0, g, a.heads, out);
}

template <int D, int G>
struct PrefillMma {
  static constexpr size_t kSmemBytes = kBlockSmem<D>;
  static void launch(const bf16_t* q, const bf16_t* k, const bf16_t* v, const TokenMap& map, const AttnShape& a,
                     const PrefillTile* tiles, int numTiles, float scale, bf16_t* out, cudaStream_t s) {
    if (numTiles == 0) return;
    prefill_rows::checkScale(scale);
    prefillMmaKernel<D, G><<<numTiles * a.kvHeads, kThreads, kSmemBytes, s>>>(q, k, v, map, a, tiles, scale, out);
  }
  static const void* function() { return reinterpret_cast<const void*>(prefillMmaKernel<D, G>); }
};

}  // namespace

std::vector<PrefillTile> prefillAttentionTiles(const std::vector<PrefillChunk>& chunks, int group) {
  std::vector<PrefillTile> tiles;
  std::vector<int> lastPos;  // the position of each tile's last row, its sort key
  for (const PrefillChunk& c : chunks) {
    const int rows = c.count * group;
    for (int row = 0; row < rows; row += kRows) {
      tiles.push_back(PrefillTile{c.t0, c.count, row});
      lastPos.push_back(c.firstPos + (std::min(row + kRows, rows) - 1) / group);
    }
  }
  std::vector<int> order(tiles.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return lastPos[x] > lastPos[y]; });
  std::vector<PrefillTile> sorted;
  sorted.reserve(tiles.size());
  for (int i : order) sorted.push_back(tiles[i]);
  return sorted;
}

PrefillMmaLauncher preparePrefillAttentionMma(int headDim, int group) {
  return attention_ops::prepareMmaKernel<PrefillMmaLauncher, PrefillMma>(headDim, group);
}

}  // namespace cuda
}  // namespace troupe
