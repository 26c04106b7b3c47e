// Where the tensor-copy decode attention's keys come from and land (attention_tma.cu), as plain
// functions of the step's numbers, so that a host program can check them against the paged
// cache they describe.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define TROUPE_TMA_PLAN __host__ __device__ __forceinline__
#else
#define TROUPE_TMA_PLAN inline
#endif

namespace troupe {
namespace cuda {
namespace attention_tma {

constexpr int kKeys = 64;  // a tile: four warps of 16 keys

// Whether a cache of this block size lies in whole blocks under every tile (or a tile in one
// block): a power of two of at least 8 rows, the least a 128-byte swizzled copy may hold.
TROUPE_TMA_PLAN bool wholeBlockTiles(int blockSize) { return blockSize >= 8 && (blockSize & (blockSize - 1)) == 0; }

// A context split's whole tiles: tiles of kKeys keys from begin (a multiple of kKeys), and the
// keys among them it attends to, [lo, end). Tiles start at multiples of kKeys, so a tile's keys
// fill whole cache blocks (or lie in one); the sliding window's start and the context's end are
// masked instead. A split past the context has no tiles.
struct Split {
  int begin, tiles, lo, end;
};
TROUPE_TMA_PLAN Split splitOf(int ctx, int window, int s, int splits) {
  const int windowLo = window > 0 && ctx > window ? ctx - window : 0;
  const int first = windowLo & ~(kKeys - 1);
  const int all = (ctx - first + kKeys - 1) / kKeys, per = (all + splits - 1) / splits;
  const int tile0 = s * per < all ? s * per : all;
  const int tiles = (tile0 + per < all ? tile0 + per : all) - tile0;
  const int begin = first + tile0 * kKeys;
  const int end = ctx < begin + tiles * kKeys ? ctx : begin + tiles * kKeys;
  return {begin, tiles, windowLo > begin ? windowLo : begin, end};
}

// The cache row (of KV head g, rows of head_dim values) where copy p of the tile at k0 starts:
// `rows` keys (min(block size, kKeys)) of one cache block; -1 when none of them is in [lo, end).
TROUPE_TMA_PLAN int copyRow(const int32_t* blockTable, int k0, int p, int rows, int blockSize, int kvHeads, int g,
                            int lo, int end) {
  const int k = k0 + p * rows;
  if (p >= kKeys / rows || k >= end || k + rows <= lo) return -1;
  return (blockTable[k / blockSize] * kvHeads + g) * blockSize + k % blockSize;
}

// Byte offset in a tile of the 16-byte piece c (values 8 c to 8 c + 7) of its key r, as the
// copies of 1 << rowsLog2 keys leave it, each 128-byte line swizzled by the tensor copies'
// 128-byte pattern (piece j of line L at j ^ (L % 8)). A copy a 64-value part of the rows leaves
// a cache block's keys as [head_dim / 64][row][64], so the eight rows a fragment reads lie on
// lines of eight different residues. (One copy of the whole rows, [row][head_dim / 64][64], was
// as fast on an H200: bench/results/2026-12-01-h200-attention-tma.json.)
template <int D>
TROUPE_TMA_PLAN int pieceOffset(int r, int c, int rowsLog2) {
  constexpr int kParts = D / 64;
  const int copy = r >> rowsLog2, row = r & ((1 << rowsLog2) - 1), part = c >> 3;
  const int line = (copy * kParts << rowsLog2) + (part << rowsLog2) + row;
  return line * 128 + (((c & 7) ^ (line & 7)) << 4);
}

}  // namespace attention_tma
}  // namespace cuda
}  // namespace troupe
