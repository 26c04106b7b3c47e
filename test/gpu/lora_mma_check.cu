// The tensor-core LoRA kernels (native/cuda/lora_mma.cu) and the CUDA-core ones against a
// double-precision reference on random pools: ranks 1 to 96 (not multiples of 8 or 16, past one
// 64-rank pass, zero for a slice), tiles shorter than 16 tokens, outputs and inputs that are not
// multiples of a tile or of 8 (the unaligned load path), base rows between adapter rows, work items
// fewer than the grid launches (as a CUDA graph launches), and the mma pair with programmatic
// dependent launch, in and out of a graph. The mma expand also runs with every way of grouping
// tiles into blocks (1 to 8 tiles: runs of one slot's items, slot changes and rank passes inside a
// block, items longer than a block's tiles or not a multiple of them, blocks past the last item),
// and each result must equal the one-tile-per-block result bit for bit. Factor memory past each
// slot's rank, x past `in`, mid before the shrink writes it and shared memory before a launch hold
// NaN, so a kernel that reads any of them fails. The grouping loraExpandGroup picks for the
// engine's shapes is checked too: several tiles per block in a prefill, one in a decode step.
// Exit status 1 on any failure. With --bench, times the kernel pairs instead (lora_mma_bench.cu).
//
// Built from the repository root with the kernels (no other part of the addon):
//   nvcc -std=c++17 -arch=sm_90a -O3 -Inative -o /tmp/lora_mma_check test/gpu/lora_mma_check.cu
//        test/gpu/lora_mma_bench.cu native/cuda/lora_kernels.cu native/cuda/lora_mma.cu
//   /tmp/lora_mma_check && /tmp/lora_mma_check --bench
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "lora_mma_util.h"

using namespace lora_check;

namespace {

struct Case {
  std::string name;
  int in, ldx, maxRank, slots;
  std::vector<int> outs;               // per slice
  std::vector<int> lens, seqSlots;     // sequences, slot -1 for the base model
  std::vector<std::vector<int>> rank;  // [slot][slice]
  bool sgmv;
  int chunk;
  int padItems;  // extra blocks along the items, as a graph launches for the most items possible
};

// One case's device state and its reference.
struct Setup {
  Case c;
  int T = 0, ldy = 0;
  LoraItems items{};
  LoraSlices sl{};
  int32_t* dRanks = nullptr;
  float* dScaling = nullptr;
  bf16_t* dx = nullptr;
  float *dy = nullptr, *dMid = nullptr;
  size_t slab = 0, midFloats = 0;
  std::vector<float> y0, ref;
  std::vector<char> adapted;  // per token
  std::vector<void*> owned;
};

Setup build(const Case& c, uint64_t seed) {
  Setup S;
  S.c = c;
  Rng rng{seed};
  for (int n : c.lens) S.T += n;
  const int count = static_cast<int>(c.outs.size()), T = S.T, in = c.in;
  int outTotal = 0;
  std::vector<int> offset;
  for (int o : c.outs) offset.push_back(outTotal), outTotal += o + 3;  // gaps between slices stay untouched
  S.ldy = outTotal + 1;
  // Factors: random where the slot's rank reaches, NaN elsewhere.
  std::vector<std::vector<float>> A(count), B(count);
  std::vector<float> scaling(c.slots);
  for (auto& v : scaling) v = 0.5f + static_cast<float>(rng.uni());
  std::vector<int32_t> ranks(static_cast<size_t>(c.slots) * 7 + 1, 0);
  S.sl.count = count;
  S.sl.in = in;
  S.sl.maxRank = c.maxRank;
  for (int s = 0; s < count; ++s) {
    const int out = c.outs[s], module = (2 * s + 1) % 7;
    std::vector<uint16_t> ha(static_cast<size_t>(c.slots) * c.maxRank * in, kNaN16);
    std::vector<uint16_t> hb(static_cast<size_t>(c.slots) * out * c.maxRank, kNaN16);
    A[s].assign(ha.size(), 0.0f);
    B[s].assign(hb.size(), 0.0f);
    const float sa = 1.0f / std::sqrt(static_cast<float>(in));
    for (int slot = 0; slot < c.slots; ++slot) {
      const int r = c.rank[slot][s];
      ranks[slot * 7 + module] = r;
      for (int i = 0; i < r; ++i)
        for (int k = 0; k < in; ++k) {
          const size_t e = (static_cast<size_t>(slot) * c.maxRank + i) * in + k;
          ha[e] = toBf16(sa * rng.sym());
          A[s][e] = fromBf16(ha[e]);
        }
      for (int o = 0; o < out; ++o)
        for (int i = 0; i < r; ++i) {
          const size_t e = (static_cast<size_t>(slot) * out + o) * c.maxRank + i;
          hb[e] = toBf16(rng.sym() / std::sqrt(static_cast<float>(std::max(r, 1))));
          B[s][e] = fromBf16(hb[e]);
        }
    }
    bf16_t* da = upload(ha);
    bf16_t* db = upload(hb);
    S.owned.push_back(da);
    S.owned.push_back(db);
    S.sl.a[s] = da;
    S.sl.b[s] = db;
    S.sl.aSlotStride[s] = static_cast<size_t>(c.maxRank) * in;
    S.sl.bSlotStride[s] = static_cast<size_t>(out) * c.maxRank;
    S.sl.bLd[s] = c.maxRank;
    S.sl.out[s] = out;
    S.sl.outOffset[s] = offset[s];
    S.sl.module[s] = module;
  }
  std::vector<uint16_t> hx(static_cast<size_t>(T) * c.ldx, kNaN16);
  std::vector<float> x(hx.size(), 0.0f);
  for (int t = 0; t < T; ++t)
    for (int k = 0; k < in; ++k) {
      hx[static_cast<size_t>(t) * c.ldx + k] = toBf16(rng.sym());
      x[static_cast<size_t>(t) * c.ldx + k] = fromBf16(hx[static_cast<size_t>(t) * c.ldx + k]);
    }
  S.y0.resize(static_cast<size_t>(T) * S.ldy);
  for (auto& v : S.y0) v = rng.sym();
  // Items, and the reference: y0 + scaling * (x A^T) B^T for each adapter token.
  const Items it = buildItems(c.lens, c.seqSlots, c.slots, c.sgmv, c.chunk);
  const int nItems = static_cast<int>(it.slot.size());
  S.items = uploadItems(it, T, nItems + c.padItems, it.tiles() + (c.padItems > 0 ? 1 : 0), S.owned);
  S.ref = S.y0;
  S.adapted.assign(T, 0);
  for (int i = 0; i < nItems; ++i) {
    const int slot = it.slot[i];
    for (int p = it.start[i]; p < it.start[i + 1]; ++p) {
      const int t = it.perm[p];
      S.adapted[t] = 1;
      for (int s = 0; s < count; ++s) {
        const int r = c.rank[slot][s];
        std::vector<double> mid(r, 0.0);
        for (int i2 = 0; i2 < r; ++i2) {
          const float* a = &A[s][(static_cast<size_t>(slot) * c.maxRank + i2) * in];
          const float* xr = &x[static_cast<size_t>(t) * c.ldx];
          double v = 0;
          for (int k = 0; k < in; ++k) v += static_cast<double>(xr[k]) * a[k];
          mid[i2] = v;
        }
        for (int o = 0; o < c.outs[s]; ++o) {
          double v = 0;
          for (int i2 = 0; i2 < r; ++i2) v += mid[i2] * B[s][(static_cast<size_t>(slot) * c.outs[s] + o) * c.maxRank + i2];
          S.ref[static_cast<size_t>(t) * S.ldy + offset[s] + o] += static_cast<float>(scaling[slot] * v);
        }
      }
    }
  }
  S.dRanks = upload(ranks);
  S.dScaling = upload(scaling);
  S.dx = upload(hx);
  S.dy = upload(S.y0);
  // mid as the backend sizes it: loraKPieces(in) slabs of tokens x 3 slices x maxRank.
  S.slab = static_cast<size_t>(T) * tc::kMaxLoraSlices * c.maxRank;
  S.midFloats = S.slab * tc::loraKPieces(in);
  CK(cudaMalloc(&S.dMid, S.midFloats * 4));
  for (void* p : {static_cast<void*>(S.dRanks), static_cast<void*>(S.dScaling), static_cast<void*>(S.dx),
                  static_cast<void*>(S.dy), static_cast<void*>(S.dMid)})
    S.owned.push_back(p);
  return S;
}

#ifdef __CUDACC__
// Shared memory keeps its contents between kernels: NaN everywhere, so a kernel that uses shared
// values it did not write in this launch fails.
__global__ void poisonShared(int words) {
  extern __shared__ uint32_t sm[];
  for (int i = threadIdx.x; i < words; i += blockDim.x) sm[i] = 0xffffffffu;
}
void poisonSharedMemory(cudaStream_t st) {
  int device = 0, sms = 0, bytes = 0;
  CK(cudaGetDevice(&device));
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  CK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  CK(cudaFuncSetAttribute(poisonShared, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  poisonShared<<<sms, 1024, bytes, st>>>(bytes / 4);
  CK(cudaGetLastError());
}
#else
void poisonSharedMemory(cudaStream_t) {}
#endif

// Runs one kernel pair (in a captured graph when asked) from y0 and a NaN-filled mid; the worst
// |y - reference| over adapter tokens relative to the largest reference delta, or +inf when a
// base row changed or a value is not finite.
double runCase(Setup& S, Kernel k, bool graph, cudaStream_t st, const tc::LoraExpandGroup* group = nullptr,
               std::vector<float>* result = nullptr) {
  CK(cudaMemcpy(S.dy, S.y0.data(), S.y0.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemset(S.dMid, 0xff, S.midFloats * 4));
  poisonSharedMemory(st);
  CK(cudaStreamSynchronize(st));
  if (graph) {
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    runPair(k, S.items, S.sl, S.dRanks, S.dScaling, S.dx, S.c.ldx, S.dMid, S.slab, S.dy, S.ldy, st, group);
    CK(cudaStreamEndCapture(st, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    CK(cudaGraphLaunch(ge, st));
    CK(cudaStreamSynchronize(st));
    CK(cudaGraphExecDestroy(ge));
    CK(cudaGraphDestroy(g));
  } else {
    runPair(k, S.items, S.sl, S.dRanks, S.dScaling, S.dx, S.c.ldx, S.dMid, S.slab, S.dy, S.ldy, st, group);
  }
  CK(cudaGetLastError());
  CK(cudaStreamSynchronize(st));
  std::vector<float> y(S.y0.size());
  CK(cudaMemcpy(y.data(), S.dy, y.size() * 4, cudaMemcpyDeviceToHost));
  if (result) *result = y;
  double worst = 0, scale = 1e-30;
  for (size_t e = 0; e < y.size(); ++e) {
    const size_t t = e / S.ldy;
    if (!std::isfinite(y[e])) return INFINITY;
    if (!S.adapted[t] && std::memcmp(&y[e], &S.y0[e], 4) != 0) return INFINITY;
    worst = std::max(worst, std::fabs(static_cast<double>(y[e]) - S.ref[e]));
    scale = std::max(scale, std::fabs(static_cast<double>(S.ref[e]) - S.y0[e]));
  }
  return worst / scale;
}

std::vector<int> repeat(int n, int v) { return std::vector<int>(n, v); }

std::vector<Case> cases() {
  std::vector<Case> cs;
  const std::vector<int> all8 = {0, 1, 2, 3, 4, 5, 6, 7};
  std::vector<int> rr(32);
  for (int i = 0; i < 32; ++i) rr[i] = i % 8;
  auto uniform = [](int slots, int count, int r) { return std::vector<std::vector<int>>(slots, std::vector<int>(count, r)); };
  // Decode: 32 single-token rows over 8 adapters, grid padded as a graph's.
  cs.push_back({"decode b32, 8 adapters, rank 16", 512, 512, 16, 8, {512, 128, 128}, repeat(32, 1), rr, uniform(8, 3, 16),
                false, 16, 6});
  cs.push_back({"decode b32 sgmv, rank 64", 1024, 1024, 64, 8, {1024}, repeat(32, 1), rr, uniform(8, 1, 64), true, 16, 0});
  // Every rank shape: 1, 5, 8, 9, 16, 24, 33, 64 (and a slice left out), base rows between.
  {
    Case c{"mixed ranks 1-64, chunk 5, base rows", 1024, 1032, 64, 8, {1024, 256, 264}, {}, {}, {}, false, 5, 3};
    const int ranks[8] = {1, 5, 8, 9, 16, 24, 33, 64};
    for (int s = 0; s < 8; ++s) c.rank.push_back({ranks[s], s == 3 ? 0 : ranks[s], ranks[(s + 3) % 8]});
    for (int i = 0; i < 40; ++i) {
      c.lens.push_back(1 + (i * 7) % 5);
      c.seqSlots.push_back(i % 5 == 4 ? -1 : i % 8);
    }
    cs.push_back(c);
    c.name = "mixed ranks 1-64, chunk 16";
    c.chunk = 16;
    cs.push_back(c);
    c.name = "mixed ranks 1-64, sgmv";
    c.sgmv = true;
    c.padItems = 0;
    cs.push_back(c);
  }
  // Prefill with sgmv: items of 1 to 100 tokens, so whole and partial 16-token tiles.
  cs.push_back({"prefill sgmv, lengths 1-100", 2048, 2048, 32, 4, {2048}, {1, 15, 16, 17, 33, 100, 7}, {0, 1, 2, 3, 0, 1, -1},
                {{32}, {7}, {16}, {25}}, true, 16, 0});
  // Ranks past one 64-rank pass; outputs that are not multiples of 128 or of 8.
  cs.push_back({"ranks 65-96, out 1000 and 77", 768, 768, 96, 3, {1000, 77}, {20, 3, 9}, {0, 1, 2}, {{72, 96}, {96, 65}, {65, 1}},
                false, 16, 0});
  // Unaligned: in and ldx not multiples of 8, maxRank 20 (B rows not 16-byte aligned).
  cs.push_back({"unaligned in 203, ldx 205, max rank 20", 203, 205, 20, 3, {77, 40}, {5, 12, 1}, {0, 1, 2}, {{20, 7}, {13, 20}, {1, 3}},
                false, 16, 2});
  // A long input (many pieces for the CUDA-core kernels, a few for the mma ones).
  cs.push_back({"in 3584, rank 32", 3584, 3584, 32, 2, {512}, {40, 9}, {0, 1}, uniform(2, 1, 32), false, 16, 0});
  // Prefill runs of one slot's items: 1 adapter, then 2 interleaved (a block's items change slot),
  // items of one tile (chunk 16), of three (chunk 40: 16 + 16 + 8 tokens, not a multiple of a
  // block's tiles) and of one partial tile (chunk 5).
  {
    Case c{"prefill 1 adapter, chunk 16, 37 items", 512, 512, 32, 2, {512, 130}, {300, 200, 77}, {0, 0, 0},
           uniform(2, 2, 32), false, 16, 0};
    cs.push_back(c);
    c.name = "prefill 2 adapters, chunk 40, rank 16/48";
    c.seqSlots = {0, 1, 0};
    c.maxRank = 48;
    c.rank = {{16, 16}, {48, 48}};
    c.chunk = 40;
    cs.push_back(c);
    c.name = "prefill 2 adapters, chunk 5, grid padded";
    c.chunk = 5;
    c.padItems = 11;
    cs.push_back(c);
  }
  // Decode with far more items launched than there are (a graph captured for a larger step).
  cs.push_back({"decode b8 of 4 adapters, grid padded by 29", 512, 512, 16, 4, {256}, repeat(8, 1), {0, 1, 2, 3, 0, 1, 2, 3},
                uniform(4, 1, 16), false, 16, 29});
  // Large enough that loraExpandGroup itself groups (128 items of one tile, 40 column blocks).
  cs.push_back({"prefill 2048 tokens, 1 adapter (grouped)", 512, 512, 16, 1, {4096, 1024}, repeat(4, 512), repeat(4, 0),
                uniform(1, 2, 16), false, 16, 0});
  // Many tiles: the mma split takes one long piece per tile.
  cs.push_back({"prefill 1024 tokens, 8 adapters, rank 64", 1024, 1024, 64, 8, {1024, 256, 256}, repeat(8, 128), all8,
                uniform(8, 3, 64), false, 16, 0});
  return cs;
}

// Items x tiles per expand block: single items and runs, long items, and shapes that do not
// divide the items (3 x 2) or a 3-tile item (1 x 2, 2 x 4).
const tc::LoraExpandGroup kGroups[] = {{1, 1}, {2, 1}, {8, 1}, {1, 2}, {1, 8}, {2, 4}, {3, 2}, {4, 2}, {7, 1}};

// loraExpandGroup on the engine's Llama-3.1-8B groups (host only): a prefill of 8 x 512 tokens
// (csgmv chunk 16: 256 items of one tile; sgmv: 8 items of 32) takes several tiles per block, a
// decode step of 32 rows (the graph's grid: 10 items, or 32 with sgmv) keeps one.
int checkGrouping() {
  struct G {
    const char* name;
    std::vector<int> outs;
  };
  const G groups[] = {{"qkv", {4096, 1024, 1024}}, {"o", {4096}}, {"gate_up", {14336, 14336}}, {"down", {4096}}};
  struct Step {
    const char* name;
    int items, tiles;
    bool grouped;
  };
  const Step steps[] = {{"prefill 8x512 csgmv", 256, 1, true}, {"prefill 8x512 sgmv", 8, 32, true},
                        {"decode b32 csgmv graph", 10, 1, false}, {"decode b32 csgmv", 8, 1, false}};
  int failures = 0;
  for (const Step& st : steps) {
    std::printf("expand grouping, %-24s", st.name);
    for (const G& g : groups) {
      LoraSlices sl{};
      sl.count = static_cast<int>(g.outs.size());
      sl.in = 4096;
      sl.maxRank = 16;
      for (int s = 0; s < sl.count; ++s) sl.out[s] = g.outs[s];
      const LoraItems it{nullptr, nullptr, nullptr, nullptr, st.items, st.tiles};
      const tc::LoraExpandGroup gr = tc::loraExpandGroup(it, sl);
      const bool ok = (gr.items * gr.tiles > 1) == st.grouped && gr.items * gr.tiles <= 8;
      failures += ok ? 0 : 1;
      std::printf(" %s %dx%d%s", g.name, gr.items, gr.tiles, ok ? "" : " FAIL");
    }
    std::printf("\n");
  }
  return failures;
}

int check() {
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  int device = 0;
  cudaDeviceProp prop{};
  CK(cudaGetDevice(&device));
  CK(cudaGetDeviceProperties(&prop, device));
  const bool pdl = prop.major >= 9;
  // The CUDA-core path keeps mid in f32 (error ~1e-6 of the delta); the mma path's split mid
  // (~2^-17) lands close to it. A misplaced fragment is off by the order of the delta itself.
  const double tol = 1e-4;
  int failures = checkGrouping();
  uint64_t seed = 1;
  for (const Case& c : cases()) {
    Setup S = build(c, seed++);
    const tc::LoraMmaSplit sp = tc::loraMmaSplit(S.items, S.sl);
    if (sp.pieces > tc::loraKPieces(c.in) || static_cast<long long>(sp.pieces) * sp.len < c.in ||
        static_cast<long long>(sp.pieces - 1) * sp.len >= c.in) {
      std::printf("FAIL %s: mma split of %d pieces x %d features does not tile in = %d within %d slabs\n",
                  c.name.c_str(), sp.pieces, sp.len, c.in, tc::loraKPieces(c.in));
      ++failures;
    }
    const tc::LoraExpandGroup chosen = tc::loraExpandGroup(S.items, S.sl);
    std::printf("%-44s T %4d, mma pieces %2d x %4d, expand %dx%d:", c.name.c_str(), S.T, sp.pieces, sp.len,
                chosen.items, chosen.tiles);
    for (Kernel k : {Kernel::kFma, Kernel::kMma, Kernel::kMmaPdl}) {
      if (k == Kernel::kMmaPdl && !pdl) continue;
      for (bool graph : {false, true}) {
        const double err = runCase(S, k, graph, st);
        const bool ok = err <= tol;
        failures += ok ? 0 : 1;
        std::printf(" %s%s %.1e%s", kernelName(k), graph ? "/graph" : "", err, ok ? "" : " FAIL");
      }
    }
    // Every grouping of the mma expand, against one tile per block: the same bits.
    std::vector<float> one, other;
    const tc::LoraExpandGroup single{1, 1};
    runCase(S, Kernel::kMma, false, st, &single, &one);
    int mismatched = 0;
    for (const tc::LoraExpandGroup& gr : kGroups) {
      for (Kernel k : {Kernel::kMma, Kernel::kMmaPdl}) {
        if (k == Kernel::kMmaPdl && !pdl) continue;
        for (bool graph : {false, true}) {
          const double err = runCase(S, k, graph, st, &gr, &other);
          if (err <= tol && other.size() == one.size() && std::memcmp(other.data(), one.data(), one.size() * 4) == 0)
            continue;
          ++mismatched;
          std::printf("\n  FAIL expand %dx%d %s%s: error %.1e, %s", gr.items, gr.tiles, kernelName(k),
                      graph ? "/graph" : "", err, err <= tol ? "bits differ from 1x1" : "over the bar");
        }
      }
    }
    failures += mismatched;
    std::printf("%s", mismatched ? "\n" : " groupings bit-equal");
    std::printf("\n");
    for (void* p : S.owned) CK(cudaFree(p));
  }
  std::printf("%d failed (relative max error bar %.0e)\n", failures, tol);
  return failures ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--bench") return loraBench();
  return check();
}
