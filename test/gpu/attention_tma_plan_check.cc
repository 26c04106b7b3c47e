// The tensor-copy decode attention's plan (native/cuda/attention_tma_plan.h) on the host, against
// the paged cache it describes: for head_dim 64 and 128, cache blocks of 8 to 128 keys, contexts
// of 1 to 1,000 keys, sliding windows and 1 to 32 splits, it plays the copies (each box's values
// placed as the tensor copy's 128-byte swizzle places them, a copy a 64-value part of the rows),
// the zeros a warp writes over its V rows outside the split, and every fragment read, and checks that each read finds the key and
// dimensions it wants, that keys outside the split read as masked (V zero), and that the splits
// attend to each visible key once. Needs no GPU:
//   g++ -std=c++17 -O2 -Inative -o /tmp/attention_tma_plan_check test/gpu/attention_tma_plan_check.cc
//   /tmp/attention_tma_plan_check
#include <algorithm>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "cuda/attention_tma_plan.h"

using namespace troupe::cuda::attention_tma;

namespace {

constexpr long kGarbage = -2, kZero = -1;  // shared memory never written, and zeroed

// Value label of (key, dimension) in KV head g of a sequence.
long label(int key, int dim) { return static_cast<long>(key) * 1024 + dim; }

template <int D>
int run(int bs, int kvHeads, int g, int ctx, int window, int splits, std::mt19937& rng) {
  const int blocks = (ctx + bs - 1) / bs;
  std::vector<int32_t> table(blocks);
  std::iota(table.begin(), table.end(), 3);
  std::shuffle(table.begin(), table.end(), rng);
  // cache row -> its key (for KV head g), or -1 for another head's row.
  auto keyOfRow = [&](int row) {
    const int block = row / (kvHeads * bs), head = row / bs % kvHeads, in = row % bs;
    if (head != g) return -1;
    const int b = static_cast<int>(std::find(table.begin(), table.end(), block) - table.begin());
    return b < blocks ? b * bs + in : -1;
  };
  const int rows = std::min(bs, kKeys), rowsLog2 = __builtin_ctz(rows);
  const int windowLo = window > 0 && ctx > window ? ctx - window : 0;
  std::vector<int> seen(ctx, 0);
  int bad = 0;
  std::vector<long> tile(kKeys * D);  // one label per bf16 value of the tile's K (V is the same)
  for (int s = 0; s < splits; ++s) {
    const Split sp = splitOf(ctx, window, s, splits);
    if (sp.begin % kKeys != 0 || (sp.tiles > 0 && (sp.lo < windowLo || sp.end > ctx))) ++bad;
    std::fill(tile.begin(), tile.end(), kGarbage);
    for (int i = 0; i < sp.tiles; ++i) {
      const int k0 = sp.begin + i * kKeys;
      for (int p = 0; p < kKeys / 8; ++p) {
        const int row0 = copyRow(table.data(), k0, p, rows, bs, kvHeads, g, sp.lo, sp.end);
        if (row0 < 0) continue;
        // The boxes at copy p's place, [D / 64][rows][64] a part at a time, each 128-byte line
        // swizzled.
        for (int h = 0; h < D / 64; ++h)
          for (int rr = 0; rr < rows; ++rr)
            for (int x = 0; x < 64; ++x) {
              const int line = p * (D / 64) * rows + h * rows + rr;
              const int piece = (x / 8) ^ (line % 8);
              const int byte = line * 128 + piece * 16 + (x % 8) * 2;
              const int key = keyOfRow(row0 + rr);
              tile[byte / 2] = key < 0 ? kGarbage - 1 : label(key, h * 64 + x);
            }
      }
      for (int w = 0; w < 4; ++w) {
        const int kw = k0 + w * 16;
        if (kw < sp.lo || kw + 16 > sp.end)  // the warp's zeros over its V rows outside the split
          for (int r = 0; r < 16; ++r)
            if (kw + r < sp.lo || kw + r >= sp.end)
              for (int c = 0; c < D / 8; ++c)
                for (int e = 0; e < 8; ++e) tile[pieceOffset<D>(w * 16 + r, c, rowsLog2) / 2 + e] = kZero;
        for (int r = 0; r < 16; ++r) {
          const int key = kw + r;
          const bool in = key >= sp.lo && key < sp.end;
          if (in) ++seen[key];
          for (int c = 0; c < D / 8; ++c)
            for (int e = 0; e < 8; ++e) {
              const long got = tile[pieceOffset<D>(w * 16 + r, c, rowsLog2) / 2 + e];
              const long want = in ? label(key, c * 8 + e) : kZero;
              if (got != want && bad++ < 5)
                std::printf("  D %d bs %d ctx %d window %d splits %d: split %d key %d piece %d reads %ld, not %ld\n", D,
                            bs, ctx, window, splits, s, key, c, got, want);
            }
        }
      }
    }
  }
  for (int k = 0; k < ctx; ++k)
    if (seen[k] != (k >= windowLo ? 1 : 0) && bad++ < 5)
      std::printf("  D %d bs %d ctx %d window %d splits %d: key %d attended %d times\n", D, bs, ctx, window, splits, k,
                  seen[k]);
  return bad;
}

// pieceOffset places a tile's pieces one to one on its bytes.
template <int D>
int onto() {
  int bad = 0;
  for (int rowsLog2 = 3; rowsLog2 <= 6; ++rowsLog2) {
    std::vector<int> hits(kKeys * D * 2 / 16, 0);
    for (int r = 0; r < kKeys; ++r)
      for (int c = 0; c < D / 8; ++c) {
        const int off = pieceOffset<D>(r, c, rowsLog2);
        if (off % 16 != 0 || off < 0 || off >= kKeys * D * 2) return 1;
        ++hits[off / 16];
      }
    bad += static_cast<int>(std::count_if(hits.begin(), hits.end(), [](int h) { return h != 1; }));
  }
  return bad;
}

}  // namespace

int main() {
  std::mt19937 rng(5);
  int failed = 0, cases = 0;
  failed += onto<64>() + onto<128>();
  for (int bs : {8, 16, 32, 64, 128})
    for (int ctx : {1, 2, 15, 16, 17, 63, 64, 65, 127, 128, 129, 200, 511, 512, 513, 777, 1000})
      for (int window : {0, 1, 20, 50, 64, 100, 300})
        for (int splits : {1, 2, 3, 4, 5, 8, 16, 32}) {
          // head_dim 64 and 128, on another KV head each time.
          const int g = cases % 4;
          failed += run<64>(bs, 4, g, ctx, window, splits, rng) != 0;
          failed += run<128>(bs, 4, (g + 1) % 4, ctx, window, splits, rng) != 0;
          cases += 2;
        }
  std::printf("%d cases, %d failed\n", cases, failed);
  return failed == 0 ? 0 : 1;
}
