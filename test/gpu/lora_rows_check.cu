// Stand-alone check of the LoRA row shrink (native/cuda/lora_rows.cu) and item shrink
// (native/cuda/lora_item_shrink.cu, over items of 16 and of 5 tokens) against a host reference:
// for each way of making the row (RMSNorm inside the row shrink, or by rmsnorm into xa before the
// item shrink; SiLU x up written into xa by siluMul and read there in place, as the engine does; a
// copy), several slot counts, ranks below the pool's, 1 to 3 modules, base-model tokens and 1 to
// many cuts a row, every written column of every row: the row as rmsnorm / siluMul would write
// it, the token's slot's scaled shrink outputs (zero past its rank, whatever A holds there) and
// zeros in every other padding column. With --bench it times both ways at an 8B model's decode
// shapes, replayed from a CUDA graph, beside what the base model pays to make the same rows;
// --bench GROUP RANK times one group at one rank (and skips the shape sweep), so that a profiler
// can be pointed at its launches. The bench also times every slot's shrink as one decode GEMM
// (decode_gemm.h) over the slots' A rows, for comparison.
//   nvcc -std=c++17 -gencode arch=compute_90a,code=sm_90a -O3 -Inative -Itest/gpu -o /tmp/rows \
//        test/gpu/lora_rows_check.cu native/cuda/lora_rows.cu native/cuda/lora_item_shrink.cu \
//        native/cuda/kernels.cu native/cuda/decode_gemm.cu native/cuda/tensor_map.cc && /tmp/rows [--bench]
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "check_util.h"
#include "cuda/decode_gemm.h"
#include "cuda/kernels.h"
#include "cuda/lora_fused.h"

using namespace kernel_check;
using namespace troupe::cuda;

namespace {

constexpr int kModules = 7;

struct Case {
  RowSource source;
  int T, in, slots, maxRank, count, sms;
  bool split = false;  // one augmented row per module (lora_fused.h's split rows)
};

const char* name(RowSource s) { return s == RowSource::kNorm ? "norm" : s == RowSource::kSiluMul ? "silu" : "copy"; }

// The row as the plain kernels make it, in the same f32 expressions (the norm's sum in double:
// the reduction order differs, so a row value may land one bf16 step away).
std::vector<float> hostRow(const Case& c, const std::vector<float>& f32, const std::vector<float>& normW,
                           const std::vector<uint16_t>& src, int t, float eps) {
  std::vector<float> row(c.in);
  if (c.source == RowSource::kNorm) {
    double ss = 0;
    for (int i = 0; i < c.in; ++i) ss += static_cast<double>(f32[t * c.in + i]) * f32[t * c.in + i];
    const float scale = 1.0f / std::sqrt(static_cast<float>(ss / c.in) + eps);
    for (int i = 0; i < c.in; ++i) row[i] = fromBf16(toBf16(normW[i] * (f32[t * c.in + i] * scale)));
  } else if (c.source == RowSource::kSiluMul) {
    for (int i = 0; i < c.in; ++i) {
      const float x = f32[t * 2 * c.in + i];
      row[i] = fromBf16(toBf16(x / (1.0f + std::exp(-x)) * f32[t * 2 * c.in + c.in + i]));
    }
  } else {
    for (int i = 0; i < c.in; ++i) row[i] = fromBf16(src[t * c.in + i]);
  }
  return row;
}

// A step's LoraItems as the backend builds them: the adapter tokens sorted by slot (stable), each
// slot's run cut into items of at most `chunk`. graphBounds launches for as many items and tiles
// as a CUDA graph of T rows would (the blocks past the real ones must only exit).
struct HostItems {
  LoraItems view{};
  std::vector<int32_t*> owned;
  void free() {
    for (int32_t* p : owned) cudaFree(p);
    owned.clear();
  }
};

HostItems makeItems(const std::vector<int32_t>& rowSlot, int chunk, bool graphBounds) {
  const int T = static_cast<int>(rowSlot.size());
  std::vector<int32_t> perm, start, slot;
  int longest = 0, slots = 0;
  for (int32_t s : rowSlot) slots = std::max(slots, s + 1);
  for (int s = 0; s < slots; ++s) {
    std::vector<int32_t> run;
    for (int t = 0; t < T; ++t)
      if (rowSlot[t] == s) run.push_back(t);
    for (size_t i = 0; i < run.size(); i += chunk) {
      start.push_back(static_cast<int32_t>(perm.size()));
      slot.push_back(s);
      const size_t end = std::min(run.size(), i + chunk);
      longest = std::max(longest, static_cast<int>(end - i));
      perm.insert(perm.end(), run.begin() + i, run.begin() + end);
    }
  }
  const int numItems = static_cast<int>(slot.size());
  start.push_back(static_cast<int32_t>(perm.size()));
  HostItems h;
  const std::vector<int32_t> count{numItems};
  const std::vector<int32_t>* parts[] = {&perm, &start, &slot, &count};
  for (const std::vector<int32_t>* v : parts) h.owned.push_back(upload(*v));
  const int tiles = (std::max(longest, 1) + kLoraTileTokens - 1) / kLoraTileTokens;
  h.view =
      LoraItems{h.owned[0],
                h.owned[1],
                h.owned[2],
                h.owned[3],
                graphBounds ? T : numItems,
                graphBounds ? (std::min(T, std::max(chunk, longest)) + kLoraTileTokens - 1) / kLoraTileTokens : tiles};
  return h;
}

int run(const Case& c, Rng& rng) {
  const float eps = 1e-5f;
  const int R = c.maxRank, block = c.slots * R;
  const int pad = ((c.split ? 1 : c.count) * block + 7) / 8 * 8, ld = c.in + pad + 8;
  const int rowsPerToken = c.split ? c.count : 1;
  std::vector<float> f32(static_cast<size_t>(c.T) * 2 * c.in), normW(c.in), scaling(c.slots);
  std::vector<uint16_t> src(static_cast<size_t>(c.T) * c.in);
  for (auto& v : f32) v = 3 * rng.sym();
  for (auto& v : normW) v = 1 + 0.5f * rng.sym();
  for (auto& v : src) v = toBf16(rng.sym());
  for (auto& v : scaling) v = 0.5f + rng.sym();
  std::vector<int32_t> ranks(static_cast<size_t>(c.slots) * kModules), rowSlot(c.T);
  for (auto& r : ranks) r = 1 + static_cast<int>(rng.uni() * R);  // 1..R, most below R
  for (int t = 0; t < c.T; ++t) rowSlot[t] = t % 5 == 4 ? -1 : static_cast<int>(rng.uni() * c.slots);
  const int modules[3] = {4, 5, 2};  // gate, up, v: any module indices into ranks
  std::vector<std::vector<uint16_t>> a(c.count, std::vector<uint16_t>(static_cast<size_t>(c.slots) * R * c.in));
  for (auto& m : a)
    for (auto& v : m) v = toBf16(0.1f * rng.sym());

  LoraSlices sl{};
  sl.count = c.count;
  sl.in = c.in;
  sl.maxRank = R;
  std::vector<uint16_t*> da;
  for (int j = 0; j < c.count; ++j) {
    da.push_back(upload(a[j]));
    sl.a[j] = da.back();
    sl.aSlotStride[j] = static_cast<size_t>(R) * c.in;
    sl.module[j] = modules[j];
  }
  float* dF32 = upload(f32);
  float* dNormW = upload(normW);
  float* dScaling = upload(scaling);
  uint16_t* dSrc = upload(src);
  int32_t* dRanks = upload(ranks);
  int32_t* dRowSlot = upload(rowSlot);
  // Filled with NaN so that a column nobody writes shows.
  std::vector<uint16_t> xa(static_cast<size_t>(rowsPerToken) * c.T * ld, kNaN16);
  uint16_t* dXa = upload(xa);
  AugmentedRows out;
  out.data = dXa;
  out.ld = ld;
  out.pad = pad;
  out.slicePitch = c.split ? static_cast<size_t>(c.T) * ld : 0;

  // The ways to run it: the row shrink, and the item shrink over items of 16 tokens (csgmv's
  // chunk) and of 5 tokens launched for as many items and tiles as a CUDA graph would.
  // The item shrink's other block shapes (ItemShrinkShape: outputs a warp, warps an output) too.
  struct Way {
    const char* name;
    int chunk;  // 0: the row shrink
    bool graphBounds;
    ItemShrinkShape shape;
  };
  const Way ways[] = {{"rows", 0, false, {}},           {"items/16", 16, false, {}},
                      {"items/5 ", 5, true, {}},        {"items/16 1x1", 16, false, {1, 1}},
                      {"items/5 2x2", 5, true, {2, 2}}, {"items/16 4x4", 16, false, {4, 4}},
                      {"items/5 1x8", 5, true, {1, 8}}, {"items/16 2x16", 16, false, {2, 16}}};
  int failed = 0;
  for (const Way& way : ways) {
    if (way.shape.warpsPerOutput > 8 && c.in <= 8192) continue;  // 16 warps an output: long rows only
    std::fill(xa.begin(), xa.end(), kNaN16);
    CK(cudaMemcpy(dXa, xa.data(), xa.size() * 2, cudaMemcpyHostToDevice));
    RowInput row;
    row.source = c.source;
    row.f32 = dF32;
    row.normW = dNormW;
    row.eps = eps;
    row.bf16 = dSrc;
    row.ld = c.in;
    if (c.source == RowSource::kSiluMul) {
      // The engine's way with SiLU rows: siluMul writes them into xa, the shrink reads them there.
      siluMul(dF32, dXa, c.T, c.in, nullptr, ld);
      row = RowInput{RowSource::kCopy};
      row.bf16 = dXa;
      row.ld = ld;
    }
    HostItems items;
    if (way.chunk == 0) {
      prepareRowShrink(c.in);
      loraRowShrink(row, sl, c.slots, dRowSlot, dRanks, dScaling, c.T, out, c.sms, nullptr);
    } else {
      // The engine's way with norm rows here: rmsnorm writes them into xa, the shrink reads them there.
      if (c.source == RowSource::kNorm) {
        rmsnorm(dF32, nullptr, dNormW, dXa, c.T, c.in, eps, nullptr, ld);
        row = RowInput{RowSource::kCopy};
        row.bf16 = dXa;
        row.ld = ld;
      }
      items = makeItems(rowSlot, way.chunk, way.graphBounds);
      // Launched as the engine launches it on sm_90: allowed to start while rmsnorm runs.
      loraItemShrink(row, sl, items.view, c.slots, dRowSlot, dRanks, dScaling, c.T, out, nullptr, true, way.shape);
    }
    CK(cudaDeviceSynchronize());
    items.free();
    CK(cudaMemcpy(xa.data(), dXa, xa.size() * 2, cudaMemcpyDeviceToHost));
    double rowDiff = 0, loraDiff = 0;
    int bad = 0;
    for (int t = 0; t < c.T; ++t) {
      const std::vector<float> ref = hostRow(c, f32, normW, src, t, eps);
      for (int rowIdx = 0; rowIdx < rowsPerToken; ++rowIdx) {
        const uint16_t* got = xa.data() + out.slicePitch * rowIdx + static_cast<size_t>(t) * ld;
        for (int i = 0; i < c.in; ++i) {
          const float g = fromBf16(got[i]);
          // One bf16 step (2^-8 relative): the norm sums in another order, SiLU uses __expf.
          const double d = std::fabs(g - ref[i]) / std::max(std::fabs(ref[i]), 1e-6f);
          rowDiff = std::max(rowDiff, d);
          if (!(d <= (c.source == RowSource::kCopy ? 0 : 8e-3))) ++bad;
        }
        const int slot = rowSlot[t];
        for (int col = 0; col < pad; ++col) {
          // Split rows: the token's row j holds module j's block only (the rest is the rounding tail).
          const int j = !c.split ? col / block : col < block ? rowIdx : c.count, k = (col % block) / R, r = col % R;
          const float g = fromBf16(got[c.in + col]);
          const bool live = slot >= 0 && j < c.count && k == slot && r < ranks[slot * kModules + modules[j]];
          if (!live) {
            if (g != 0.0f) ++bad;
            continue;
          }
          double sum = 0, mag = 0;
          const uint16_t* arow = a[j].data() + (static_cast<size_t>(slot) * R + r) * c.in;
          for (int i = 0; i < c.in; ++i) {
            const double p = static_cast<double>(fromBf16(arow[i])) * ref[i];
            sum += p;
            mag += std::fabs(p);
          }
          const double want = sum * scaling[slot];
          // The bf16 output's rounding (2^-9 relative) plus the row's one-step differences.
          const double d = std::fabs(g - want) / (std::fabs(scaling[slot]) * mag + 1e-12);
          loraDiff = std::max(loraDiff, d);
          if (!(d < 1e-2)) ++bad;
        }
        if (!std::isnan(fromBf16(got[c.in + pad]))) ++bad;  // past the padding: untouched
      }
    }
    std::printf("  %s %s %s T %3d in %5d slots %d rank %2d modules %d%s sms %3d  row %.1e  lora %.1e  %d bad\n",
                bad ? "FAIL" : "ok  ", way.name, name(c.source), c.T, c.in, c.slots, R, c.count,
                c.split ? " split" : "", c.sms, rowDiff, loraDiff, bad);
    failed += bad ? 1 : 0;
  }
  for (auto* p : da) cudaFree(p);
  cudaFree(dF32);
  cudaFree(dNormW);
  cudaFree(dScaling);
  cudaFree(dSrc);
  cudaFree(dRanks);
  cudaFree(dRowSlot);
  cudaFree(dXa);
  return failed;
}

// Llama-3.1-8B's four groups at 32 decode tokens over 8 slots (8 items of 4 tokens), ranks 16
// and 64, timed as replays of one CUDA graph (as a decode step runs): what the base model pays to
// make the rows (rmsnorm, siluMul, nothing for a copy), the row shrink's way and the item
// shrink's way of making the rows and their LoRA columns. Each call reads another layer's A.
int bench(const char* only, int onlyRank) {
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s, %d SMs; 32 tokens, 8 slots, A rotated over 32 layers; us a call in a graph\n", prop.name,
              prop.multiProcessorCount);
  const int T = 32, slots = 8, layers = 32, iters = 256;
  struct Group {
    const char* name;
    RowSource source;
    int in, count;
    bool split;
  };
  const Group groups[] = {{"qkv", RowSource::kNorm, 4096, 3, false},
                          {"o", RowSource::kCopy, 4096, 1, false},
                          {"gate_up", RowSource::kNorm, 4096, 2, true},
                          {"down", RowSource::kSiluMul, 14336, 1, false}};
  prepareRowShrink(14336);
  float *f32 = nullptr, *normW = nullptr, *scaling = nullptr;
  bf16_t *src = nullptr, *made = nullptr, *xa = nullptr;
  int32_t *ranks = nullptr, *rowSlot = nullptr;
  CK(cudaMalloc(&f32, static_cast<size_t>(T) * 2 * 14336 * 4));
  CK(cudaMemset(f32, 0, static_cast<size_t>(T) * 2 * 14336 * 4));
  CK(cudaMalloc(&normW, 14336 * 4));
  CK(cudaMemset(normW, 0, 14336 * 4));
  CK(cudaMalloc(&src, static_cast<size_t>(T) * 14336 * 2));
  CK(cudaMemset(src, 0, static_cast<size_t>(T) * 14336 * 2));
  CK(cudaMalloc(&made, static_cast<size_t>(T) * 14336 * 2));
  std::vector<float> hScaling(slots, 0.5f);
  scaling = upload(hScaling);
  std::vector<int32_t> hRowSlot(T);
  for (int t = 0; t < T; ++t) hRowSlot[t] = t % slots;
  rowSlot = upload(hRowSlot);
  HostItems items = makeItems(hRowSlot, 16, false);
  // The grid the engine captures in a CUDA graph for such a step (csgmv, chunk 16): as many items
  // as a 32-token step over 8 slots can have, whatever this step has.
  LoraItems graphGrid = items.view;
  graphGrid.gridItems = std::min(T, T / 16 + std::min(T, slots));
  graphGrid.gridTiles = 1;
  for (int R : {16, 64}) {
    if (onlyRank != 0 && R != onlyRank) continue;
    std::vector<int32_t> hRanks(static_cast<size_t>(slots) * kModules, R);
    ranks = upload(hRanks);
    for (const Group& g : groups) {
      if (only && std::strcmp(only, g.name) != 0) continue;
      const int pad = ((g.split ? 1 : g.count) * slots * R + 7) / 8 * 8, ld = g.in + pad;
      CK(cudaMalloc(&xa, static_cast<size_t>(g.split ? g.count : 1) * T * ld * 2));
      AugmentedRows out;
      out.data = xa;
      out.ld = ld;
      out.pad = pad;
      out.slicePitch = g.split ? static_cast<size_t>(T) * ld : 0;
      const size_t aElems = static_cast<size_t>(slots) * R * g.in;
      bf16_t* a = nullptr;
      CK(cudaMalloc(&a, aElems * g.count * layers * 2));
      CK(cudaMemset(a, 0, aElems * g.count * layers * 2));
      const auto slicesAt = [&](int i) {
        LoraSlices sl{};
        sl.count = g.count;
        sl.in = g.in;
        sl.maxRank = R;
        for (int j = 0; j < g.count; ++j) {
          sl.a[j] = a + (static_cast<size_t>(i % layers) * g.count + j) * aElems;
          sl.aSlotStride[j] = static_cast<size_t>(R) * g.in;
          sl.module[j] = j;
        }
        return sl;
      };
      RowInput copied{RowSource::kCopy};
      copied.bf16 = src;
      copied.ld = g.in;
      RowInput inXa{RowSource::kCopy};  // rows rmsnorm or siluMul wrote into xa
      inXa.bf16 = xa;
      inXa.ld = ld;
      const double base = timeGraph(iters, [&](int, cudaStream_t st) {
        if (g.source == RowSource::kNorm) rmsnorm(f32, nullptr, normW, made, T, g.in, 1e-5f, st);
        if (g.source == RowSource::kSiluMul) siluMul(f32, made, T, g.in, st);
      });
      const double rows = timeGraph(iters, [&](int i, cudaStream_t st) {
        RowInput row = copied;
        if (g.source == RowSource::kNorm) {
          row = RowInput{RowSource::kNorm};
          row.f32 = f32;
          row.normW = normW;
          row.eps = 1e-5f;
        } else if (g.source == RowSource::kSiluMul) {
          siluMul(f32, xa, T, g.in, st, ld);
          row = inXa;
        }
        loraRowShrink(row, slicesAt(i), slots, rowSlot, ranks, scaling, T, out, prop.multiProcessorCount, st);
      });
      auto item = [&](bool pdl, const LoraItems& grid, ItemShrinkShape shape = {}) {
        return timeGraph(iters, [&](int i, cudaStream_t st) {
          RowInput row = copied;
          if (g.source == RowSource::kNorm) rmsnorm(f32, nullptr, normW, xa, T, g.in, 1e-5f, st, ld);
          if (g.source == RowSource::kSiluMul) siluMul(f32, xa, T, g.in, st, ld);
          if (g.source != RowSource::kCopy) row = inXa;
          loraItemShrink(row, slicesAt(i), grid, slots, rowSlot, ranks, scaling, T, out, st, pdl, shape);
        });
      };
      const double itemUs = item(false, items.view), pdlUs = item(true, items.view), graphUs = item(true, graphGrid);
      std::printf(
          "rank %2d %-8s base %5.1f   row shrink %5.1f (+%4.1f)   item shrink %5.1f (+%4.1f)   early-launched %5.1f "
          "(+%4.1f)   graph grid %5.1f (+%4.1f)\n",
          R, g.name, base, rows, rows - base, itemUs, itemUs - base, pdlUs, pdlUs - base, graphUs, graphUs - base);
      // Every slot's shrink as one decode GEMM over the slots' A rows (f32 out), early-launched.
      {
        static DecodeGemm dg(prop.multiProcessorCount);
        static float* mid = nullptr;
        if (!mid) CK(cudaMalloc(&mid, static_cast<size_t>(T) * 3 * slots * 64 * 4));
        const int N = g.count * slots * R;
        std::printf("rank %2d %-8s decode GEMM over every slot's A (%d rows), +us by splits:", R, g.name, N);
        for (int splits : {1, 2, 3, 4, 5, 6, 8, 11, 16, 22}) {
          DecodeGemmArgs a;
          a.W = slicesAt(0).a[0], a.ldw = g.in, a.X = g.source == RowSource::kCopy ? src : xa;
          a.ldx = g.source == RowSource::kCopy ? g.in : ld, a.Y = mid, a.ldy = N, a.M = T, a.N = N, a.K = g.in;
          if (!dg.supports(a, splits)) continue;
          const double us = timeGraph(iters, [&](int i, cudaStream_t st) {
            if (g.source == RowSource::kNorm) rmsnorm(f32, nullptr, normW, xa, T, g.in, 1e-5f, st, ld);
            if (g.source == RowSource::kSiluMul) siluMul(f32, xa, T, g.in, st, ld);
            DecodeGemmArgs b = a;
            b.W = slicesAt(i).a[0];
            dg.run(b, splits, st, true);
          });
          std::printf(" %d:%4.1f", splits, us - base);
        }
        std::printf("\n");
      }
      // The item shrink's block shapes, early-launched over the graph's grid: outputs a warp x warps
      // sharing an output's features.
      if (!only) {
        std::printf("rank %2d %-8s shapes (+us over the rows):", R, g.name);
        for (int outW : {1, 2, 4})
          for (int split : {1, 2, 4, 8, 16}) {
            if (split == 16 && g.in <= 8192) continue;
            std::printf(" %dx%d %4.1f", outW, split, item(true, graphGrid, ItemShrinkShape{outW, split}) - base);
          }
        std::printf("\n");
      }
      cudaFree(a);
      cudaFree(xa);
    }
    cudaFree(ranks);
  }
  items.free();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--bench") == 0)
    return argc > 3 ? bench(argv[2], std::atoi(argv[3])) : bench(nullptr, 0);
  Rng rng{11};
  int failed = 0;
  for (RowSource s : {RowSource::kNorm, RowSource::kSiluMul, RowSource::kCopy}) {
    failed += run({s, 1, 256, 1, 8, 1, 132}, rng);
    failed += run({s, 13, 1024, 3, 16, 3, 132}, rng);
    failed += run({s, 32, 4096, 8, 16, 3, 132}, rng);
    failed += run({s, 32, 4096, 8, 64, 2, 132}, rng);
    failed += run({s, 64, 14336, 4, 32, 1, 132}, rng);
    failed += run({s, 7, 2048, 2, 8, 2, 1}, rng);  // one cut a row
    failed += run({s, 9, 512, 3, 12, 1, 132}, rng);
    // Outputs not a multiple of the item shrink's outputs a block (2 up to 32 outputs, 4 above).
    failed += run({s, 11, 512, 3, 7, 3, 132}, rng);
    failed += run({s, 21, 1024, 4, 13, 3, 132}, rng);
    failed += run({s, 20, 9216, 3, 24, 2, 132}, rng);  // rows past 8,192 features, more than 32 outputs
    // Split rows (gate/up's layout): each module's own row, the row copied into each.
    failed += run({s, 32, 4096, 8, 64, 2, 132, true}, rng);
    failed += run({s, 13, 1024, 3, 7, 2, 132, true}, rng);  // a rounding tail after the block
    failed += run({s, 7, 2048, 2, 8, 3, 1, true}, rng);
  }
  std::printf("%d failed\n", failed);
  return failed == 0 ? 0 : 1;
}
