// Causal attention of a prefill chunk on tensor cores, flash style: the scores never leave the
// SM. A block takes 64 query rows of one KV head (rows are (token, query head of the group) pairs,
// q's layout keeps them adjacent) and walks the keys its rows can see in tiles of 64, copied from
// the paged cache by cp.async, two tiles in flight; each of its four warps takes 16 rows. Per tile a
// warp forms S = Q K^T (16 x 64) with mmas over head_dim, masks keys past each row's position (and
// before its sliding window), runs the online softmax on S's fragments, and adds P V (P in bf16, V
// transposed by ldmatrix). Fragments and the head_dim permutation as in attention_mma.cu, except
// that Q's rows gi + 8 are real rows here.
#include <cuda_bf16.h>

#include <algorithm>
#include <vector>

#include "cuda/attention_ops.cuh"
#include "cuda/kernels.h"
#include "cuda/lora_mma_ops.cuh"

namespace troupe {
namespace cuda {

namespace {

using namespace attention_ops;
using mma_ops::mma;

constexpr int kRows = kMmaWarps * 16;  // query rows a block takes
static_assert(kRows == kPrefillTileRows, "a tile is one block's rows");

template <int D, int G>
__global__ void __launch_bounds__(kMmaThreads)
    prefillMmaKernel(const bf16_t* q, const bf16_t* kCache, const bf16_t* vCache, TokenMap map, AttnShape a,
                     const PrefillTile* work, float scale, bf16_t* out) {
  constexpr int P = kMmaPitch<D>;
  constexpr int NT = kMmaKeys / 8;  // n-tiles of S per key tile
  extern __shared__ __align__(16) unsigned char smem[];
  bf16_t* sk = reinterpret_cast<bf16_t*>(smem);  // [stages][keys][P]
  bf16_t* sv = sk + kMmaStages * kMmaKeys * P;

  const int g = blockIdx.y;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gi = lane >> 2, qi = lane & 3;
  // This block's tile of the step's prefill chunks (prefillAttentionTiles' order: longest first).
  const PrefillTile mine = work[blockIdx.x];
  const int t0 = mine.t0, rows = mine.count * G, blockRow = mine.row;
  const int firstPos = map.positions[t0];
  const int32_t* bt = map.blockTables + static_cast<size_t>(map.tokenSeq[t0]) * map.pitch;

  // This lane's two rows (gi and gi + 8 of the warp's 16), their positions and visible keys.
  int pos[2], lo[2];
  bool live[2];
  uint32_t qa[D / 32][2][4];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = blockRow + warp * 16 + gi + 8 * r;
    live[r] = row < rows;
    pos[r] = firstPos + (live[r] ? row / G : 0);
    lo[r] = a.window > 0 ? max(0, pos[r] - a.window + 1) : 0;
    const bf16_t* qr = q + ((static_cast<size_t>(g) * map.tokens + t0) * G + (live[r] ? row : 0)) * D;
#pragma unroll
    for (int c = 0; c < D / 32; ++c) {
      const uint4 w = live[r] ? *reinterpret_cast<const uint4*>(qr + c * 32 + 8 * qi) : make_uint4(0, 0, 0, 0);
      qa[c][r][0] = w.x;
      qa[c][r][1] = w.y;
      qa[c][r][2] = w.z;
      qa[c][r][3] = w.w;
    }
  }
  // The block's keys: from the first row's window start to the last row's position.
  const int lastRow = min(rows, blockRow + kRows) - 1;
  const int blockPosFirst = firstPos + blockRow / G, blockPosLast = firstPos + lastRow / G;
  const int begin = a.window > 0 ? max(0, blockPosFirst - a.window + 1) : 0;
  const int end = blockPosLast + 1;
  const int tiles = (end - begin + kMmaKeys - 1) / kMmaKeys;

  auto fetch = [&](int tile, int stage) {
    fetchKeys<D, kMmaKeys, kMmaThreads, P>(kCache, vCache, bt, a.kvHeads, g, a.blockSize, begin + tile * kMmaKeys, end,
                                           sk + stage * kMmaKeys * P, sv + stage * kMmaKeys * P);
  };

  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0, 0};
  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0;

  prefetchTiles<kMmaStages>(tiles, fetch);
  for (int tile = 0; tile < tiles; ++tile) {
    awaitTile<kMmaStages>(tile, tiles, fetch);
    const int stage = tile % kMmaStages;
    const bf16_t* K = sk + stage * kMmaKeys * P;
    const bf16_t* V = sv + stage * kMmaKeys * P;
    const int k0 = begin + tile * kMmaKeys;

    float sc[NT][4];
#pragma unroll
    for (int n = 0; n < NT; ++n) sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0;
#pragma unroll
    for (int c = 0; c < D / 32; ++c) {
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        const uint4 w = *reinterpret_cast<const uint4*>(K + (n * 8 + gi) * P + c * 32 + 8 * qi);
        mma(sc[n], qa[c][0][0], qa[c][1][0], qa[c][0][1], qa[c][1][1], w.x, w.y);
        mma(sc[n], qa[c][0][2], qa[c][1][2], qa[c][0][3], qa[c][1][3], w.z, w.w);
      }
    }
    // Online softmax per row; a row sees keys [lo, pos].
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int k = k0 + n * 8 + 2 * qi + e;
          const bool valid = live[r] && k <= pos[r] && k >= lo[r];
          const float v = valid ? sc[n][2 * r + e] * scale : -INFINITY;
          sc[n][2 * r + e] = v;
          mx = fmaxf(mx, v);
        }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float mn = fmaxf(m[r], mx);
      const float c = mn == -INFINITY ? 1.0f : __expf(m[r] - mn);
      float add = 0;
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float v = sc[n][2 * r + e];
          sc[n][2 * r + e] = v == -INFINITY ? 0.0f : __expf(v - mn);
          add += sc[n][2 * r + e];
        }
      l[r] = l[r] * c + add;
      m[r] = mn;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        o[n][2 * r] *= c;
        o[n][2 * r + 1] *= c;
      }
    }
    // O += P V, 16 keys at a time: S's n-tiles 2 ks and 2 ks + 1 are P's A fragment.
    const int mi = lane >> 3, ri = lane & 7;
#pragma unroll
    for (int ks = 0; ks < NT / 2; ++ks) {
      const uint32_t pa0 = packBf16(sc[2 * ks][0], sc[2 * ks][1]), pa1 = packBf16(sc[2 * ks][2], sc[2 * ks][3]);
      const uint32_t pa2 = packBf16(sc[2 * ks + 1][0], sc[2 * ks + 1][1]);
      const uint32_t pa3 = packBf16(sc[2 * ks + 1][2], sc[2 * ks + 1][3]);
#pragma unroll
      for (int d0 = 0; d0 < D; d0 += 16) {
        uint32_t b0, b1, b2, b3;
        ldmatrixT(V + (ks * 16 + (mi & 1) * 8 + ri) * P + d0 + (mi >> 1) * 8, b0, b1, b2, b3);
        mma(o[d0 / 8], pa0, pa1, pa2, pa3, b0, b1);
        mma(o[d0 / 8 + 1], pa0, pa1, pa2, pa3, b2, b3);
      }
    }
    __syncthreads();  // the next iteration's fetch overwrites this stage
  }
  copyWait<0>();

  // Every live row sees at least its own key, so l > 0.
  const int H = a.heads;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    if (!live[r]) continue;
    const int row = blockRow + warp * 16 + gi + 8 * r;
    const float inv = 1.0f / l[r];
    bf16_t* dst = out + (static_cast<size_t>(t0 + row / G) * H + g * G + row % G) * D + 2 * qi;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      *reinterpret_cast<uint32_t*>(dst + n * 8) = packBf16(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
    }
  }
}

template <int D, int G>
struct PrefillMma {
  static void launch(const bf16_t* q, const bf16_t* k, const bf16_t* v, const TokenMap& map, const AttnShape& a,
                     const PrefillTile* tiles, int numTiles, float scale, bf16_t* out, cudaStream_t s) {
    if (numTiles == 0) return;
    prefillMmaKernel<D, G>
        <<<dim3(numTiles, a.kvHeads), kMmaThreads, kMmaSmemBytes<D>, s>>>(q, k, v, map, a, tiles, scale, out);
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
  return prepareMmaKernel<PrefillMmaLauncher, PrefillMma>(headDim, group);
}

}  // namespace cuda
}  // namespace troupe
