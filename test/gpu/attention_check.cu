// The decode attention kernel (native/cuda/attention.cu) against a double-precision reference on a
// paged cache whose blocks are shuffled: head_dim 32 to 256, query groups 1 to 8, contexts of one
// key, of a few keys, not a multiple of a tile or a block, a sliding window, more splits than
// keys, and several decode tokens whose sequences have different lengths. Exit status 1 on any
// failure; the tensor-core kernels (attention_mma.cu, and attention_tma.cu fed by tensor copies) run
// every case they apply to, beside the CUDA-core one. The prefill kernels (attention_prefill.cu, and
// attention_prefill_tma.cu on wgmma fed by tensor copies) run every chunk of a case in one launch: chunks from a
// sequence's start and after a cached prefix, several sequences, groups of 1 to 8, and a sliding window. With --bench
// [BATCH CONTEXT], times decodeAttention instead at the Llama-3.1-8B shape (32 heads over 8 KV heads of 128) for
// batches of 1 to 128 and contexts of 512 to 8192, with the engine's kernel (the one fed by tensor copies where it
// applies; TROUPE_CUDA_ATTENTION_TMA=0: the cp.async one; TROUPE_CUDA_ATTENTION_MMA=0: the CUDA-core one) and split
// counts of one to three and for 1, 2, 4 and 8 blocks per SM (* marks the engine's), and prints the cache bytes
// read per second (each timed call reads another layer's cache, so the caches do not stay in L2); then the prefill
// kernel for 1 x 2048, 8 x 512 and 1 x 8192 tokens.
//
// Built from the repository root with the kernel (no other part of the addon):
//   nvcc -std=c++17 -arch=sm_90a -O3 -Inative -o /tmp/attention_check test/gpu/attention_check.cu
//        native/cuda/attention.cu native/cuda/attention_mma.cu native/cuda/attention_tma.cu
//        native/cuda/attention_prefill.cu native/cuda/attention_prefill_tma.cu native/cuda/tensor_map.cc
//   /tmp/attention_check && /tmp/attention_check --bench [BATCH CONTEXT | prefill]
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "check_util.h"
#include "cuda/kernels.h"

using namespace troupe::cuda;
using namespace kernel_check;

namespace {

struct Shape {
  int heads, kvHeads, D, bs, window;
};

// One step's decode tokens over `layers` copies of a paged cache (layer l at l * layerElems).
struct Problem {
  Shape sh;
  std::vector<int> ctx;       // per token: the keys it sees (its position + 1)
  std::vector<int> seqStart;  // per sequence: its first token, and the end
  int layers = 1, pitch = 0, blocks = 0;
  std::vector<bf16_t> q, k, v;  // q [kvHead][token][group][D]; cache [layer][block][kvHead][row][D]
  std::vector<int32_t> positions, tokenSeq, blockTables, idx;
  size_t layerElems = 0;
};

// Sequence i holds seqCtx[i] keys, the last counts[i] of them this step's tokens (1: a decode).
Problem make(const Shape& sh, const std::vector<int>& seqCtx, int layers, uint32_t seed, bool fillCache = true,
             std::vector<int> counts = {}) {
  Problem p;
  p.sh = sh;
  p.layers = layers;
  const std::vector<int>& ctx = seqCtx;
  if (counts.empty()) counts.assign(ctx.size(), 1);
  const int seqs = static_cast<int>(ctx.size());
  for (int c : ctx) p.pitch = std::max(p.pitch, (c + sh.bs - 1) / sh.bs);
  p.blocks = seqs * p.pitch;
  std::mt19937 rng(seed);
  std::vector<int32_t> order(p.blocks);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);  // a sequence's blocks lie anywhere in the cache
  p.blockTables.assign(static_cast<size_t>(seqs) * p.pitch, -1);
  for (int i = 0; i < seqs; ++i)
    for (int b = 0; b < (ctx[i] + sh.bs - 1) / sh.bs; ++b) p.blockTables[i * p.pitch + b] = order[i * p.pitch + b];
  p.seqStart.push_back(0);
  for (int i = 0; i < seqs; ++i) {
    for (int j = ctx[i] - counts[i]; j < ctx[i]; ++j) {
      p.idx.push_back(static_cast<int32_t>(p.positions.size()));
      p.positions.push_back(j);
      p.tokenSeq.push_back(i);
      p.ctx.push_back(j + 1);
    }
    p.seqStart.push_back(static_cast<int>(p.positions.size()));
  }
  const int n = static_cast<int>(p.positions.size());
  p.layerElems = static_cast<size_t>(p.blocks) * sh.kvHeads * sh.bs * sh.D;
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  p.q.resize(static_cast<size_t>(n) * sh.heads * sh.D);
  for (auto& x : p.q) x = toBf16(6.0f * u(rng));  // peaked softmaxes: a missed key shows
  p.k.resize(p.layerElems * layers);
  p.v.resize(p.layerElems * layers);
  if (fillCache) {
    for (auto& x : p.k) x = toBf16(u(rng));
    for (auto& x : p.v) x = toBf16(u(rng));
  }
  return p;
}

struct Device {
  bf16_t *q, *k, *v, *out;
  int32_t *positions, *tokenSeq, *blockTables, *idx;
  float *partial, *ml;
  TokenMap map;
  AttnShape a;
};

Device uploadProblem(const Problem& p, int maxSplits) {
  Device d{};
  const int n = static_cast<int>(p.ctx.size());
  d.q = upload(p.q);
  d.k = upload(p.k);
  d.v = upload(p.v);
  d.positions = upload(p.positions);
  d.tokenSeq = upload(p.tokenSeq);
  d.blockTables = upload(p.blockTables);
  d.idx = upload(p.idx);
  CK(cudaMalloc(&d.out, static_cast<size_t>(n) * p.sh.heads * p.sh.D * 2));
  CK(cudaMalloc(&d.partial, static_cast<size_t>(n) * p.sh.heads * maxSplits * p.sh.D * 4));
  CK(cudaMalloc(&d.ml, static_cast<size_t>(n) * p.sh.heads * maxSplits * 2 * 4));
  d.map = TokenMap{d.positions, d.tokenSeq, d.blockTables, p.pitch, n};
  d.a = AttnShape{p.sh.heads, p.sh.kvHeads, p.sh.D, p.sh.bs, p.sh.window};
  return d;
}

void release(Device& d) {
  for (void* x : {static_cast<void*>(d.q), static_cast<void*>(d.k), static_cast<void*>(d.v), static_cast<void*>(d.out),
                  static_cast<void*>(d.positions), static_cast<void*>(d.tokenSeq), static_cast<void*>(d.blockTables),
                  static_cast<void*>(d.idx), static_cast<void*>(d.partial), static_cast<void*>(d.ml)})
    cudaFree(x);
}

// out[t][h][d] in double: softmax over the visible keys of q . k / sqrt(D), times v.
std::vector<double> reference(const Problem& p) {
  const Shape& s = p.sh;
  const int n = static_cast<int>(p.ctx.size()), G = s.heads / s.kvHeads;
  std::vector<double> out(static_cast<size_t>(n) * s.heads * s.D);
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.D));
  for (int t = 0; t < n; ++t) {
    const int ctx = p.ctx[t], lo = s.window > 0 ? std::max(0, ctx - s.window) : 0;
    for (int h = 0; h < s.heads; ++h) {
      const int g = h / G, j = h % G;
      const bf16_t* qr = &p.q[((static_cast<size_t>(g) * n + t) * G + j) * s.D];
      std::vector<double> sc(ctx - lo);
      double mx = -INFINITY;
      auto row = [&](const std::vector<bf16_t>& c, int key) {
        const int blk = p.blockTables[p.tokenSeq[t] * p.pitch + key / s.bs];
        return &c[((static_cast<size_t>(blk) * s.kvHeads + g) * s.bs + key % s.bs) * s.D];
      };
      for (int key = lo; key < ctx; ++key) {
        const bf16_t* kr = row(p.k, key);
        double dot = 0;
        for (int d = 0; d < s.D; ++d) dot += static_cast<double>(fromBf16(qr[d])) * fromBf16(kr[d]);
        sc[key - lo] = dot * scale;
        mx = std::max(mx, sc[key - lo]);
      }
      double sum = 0;
      for (double& x : sc) sum += (x = std::exp(x - mx));
      for (int d = 0; d < s.D; ++d) {
        double o = 0;
        for (int key = lo; key < ctx; ++key) o += sc[key - lo] * fromBf16(row(p.v, key)[d]);
        out[(static_cast<size_t>(t) * s.heads + h) * s.D + d] = o / sum;
      }
    }
  }
  return out;
}

int judge(const char* name, const char* kernel, int splits, const Problem& p, const std::vector<bf16_t>& got) {
  const std::vector<double> ref = reference(p);
  double worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double diff = std::fabs(fromBf16(got[i]) - ref[i]);
    worst = std::isnan(diff) ? INFINITY : std::max(worst, diff / (1.0 + std::fabs(ref[i])));
  }
  // bf16 output: a relative rounding of 2^-8, plus float sums over up to a few thousand keys.
  const bool pass = worst <= 8e-3;
  std::printf("  %s %-34s %-10s splits %2d  max rel diff %.2e\n", pass ? "ok  " : "FAIL", name, kernel, splits, worst);
  return pass ? 0 : 1;
}

// The decode kernels: CUDA cores, tensor cores, and tensor cores fed by tensor copies.
using Kernel = DecodeKernel;
const char* kernelName(Kernel k) { return k == Kernel::kCudaCore ? "cuda-core" : k == Kernel::kMma ? "mma" : "tma"; }
// TROUPE_CUDA_ATTENTION_EARLY=1: the tensor-copy kernel launched as the engine launches it, allowed
// to start while the kernel before it runs (off by default here: back-to-back timed calls would
// overlap one another, which no step does).
bool launchedEarly() {
  const char* env = std::getenv("TROUPE_CUDA_ATTENTION_EARLY");
  return env && std::strcmp(env, "1") == 0;
}

DecodeMmaLauncher prepare(Kernel k, const Shape& sh) {
  const int group = sh.heads / sh.kvHeads;
  return k == Kernel::kMma   ? prepareDecodeAttentionMma(sh.D, group)
         : k == Kernel::kTma ? prepareDecodeAttentionTma(sh.D, group, sh.bs, launchedEarly())
                             : nullptr;
}

int check(const char* name, const Shape& sh, const std::vector<int>& ctx, int splits, Kernel kernel) {
  const Problem p = make(sh, ctx, 1, 7u + static_cast<uint32_t>(ctx.size()) * 31u + splits);
  if (!decodeAttentionSupported(sh.D, sh.heads / sh.kvHeads)) {
    std::printf("  skip %-34s (not supported)\n", name);
    return 0;
  }
  Device d = uploadProblem(p, splits);
  decodeAttention(d.q, d.k, d.v, d.idx, static_cast<int>(ctx.size()), d.map, d.a, splits, d.partial, d.ml, d.out,
                  nullptr, prepare(kernel, sh));
  CK(cudaDeviceSynchronize());
  std::vector<bf16_t> got(p.q.size());
  CK(cudaMemcpy(got.data(), d.out, got.size() * 2, cudaMemcpyDeviceToHost));
  release(d);
  return judge(name, kernelName(kernel), splits, p, got);
}

// A step's prefill tiles (prefillAttentionTiles) in device memory.
struct PrefillTiles {
  PrefillTile* device = nullptr;
  int count = 0;
  PrefillTiles(const std::vector<PrefillChunk>& chunks, int group) {
    const std::vector<PrefillTile> host = prefillAttentionTiles(chunks, group);
    count = static_cast<int>(host.size());
    device = upload(host);
  }
  ~PrefillTiles() { cudaFree(device); }
  PrefillTiles(const PrefillTiles&) = delete;
  PrefillTiles& operator=(const PrefillTiles&) = delete;
};

// The prefill kernel on mma.sync (attention_prefill.cu) or, tma, on wgmma fed by tensor copies
// (attention_prefill_tma.cu).
PrefillMmaLauncher preparePrefill(const Shape& sh, bool tma) {
  const int group = sh.heads / sh.kvHeads;
  return tma ? preparePrefillAttentionTma(sh.D, group, sh.bs) : preparePrefillAttentionMma(sh.D, group);
}

// Every prefill chunk of p (tokens [seqStart[i], seqStart[i + 1])) through a tensor-core kernel.
int checkPrefill(const char* name, const Shape& sh, const std::vector<int>& seqCtx, const std::vector<int>& counts,
                 bool tma) {
  const PrefillMmaLauncher run = preparePrefill(sh, tma);
  if (!run) {
    std::printf("  skip %-34s (%s not supported)\n", name, tma ? "tensor-copy kernel" : "mma kernel");
    return 0;
  }
  const Problem p = make(sh, seqCtx, 1, 5u + static_cast<uint32_t>(seqCtx.size()) * 17u, true, counts);
  Device d = uploadProblem(p, 1);
  const float scale = 1.0f / std::sqrt(static_cast<float>(sh.D));
  // Every chunk in one launch, as the engine runs a step's prefill chunks.
  std::vector<PrefillChunk> chunks;
  for (size_t i = 0; i + 1 < p.seqStart.size(); ++i) {
    const int count = p.seqStart[i + 1] - p.seqStart[i];
    chunks.push_back(PrefillChunk{p.seqStart[i], count, seqCtx[i] - count});
  }
  PrefillTiles tiles(chunks, sh.heads / sh.kvHeads);
  run(d.q, d.k, d.v, d.map, d.a, tiles.device, tiles.count, scale, d.out, nullptr);
  CK(cudaDeviceSynchronize());
  std::vector<bf16_t> got(p.q.size());
  CK(cudaMemcpy(got.data(), d.out, got.size() * 2, cudaMemcpyDeviceToHost));
  release(d);
  return judge(name, tma ? "prefill tma" : "prefill", 0, p, got);
}

// n contexts from 1 to about `most` keys, mixed.
std::vector<int> manyContexts(int n, int most) {
  std::vector<int> ctx;
  for (int i = 0; i < n; ++i) ctx.push_back(1 + (i * 37 + i * i * 11) % most);
  return ctx;
}

int runChecks() {
  int failed = 0;
  struct C {
    const char* name;
    Shape sh;
    std::vector<int> ctx;
    int splits;
  };
  const std::vector<C> cases = {
      {"D128 G4 one key", {32, 8, 128, 16, 0}, {1}, 1},
      {"D128 G4 mixed contexts", {32, 8, 128, 16, 0}, {1, 17, 100, 777, 64, 65}, 1},
      {"D128 G4 mixed contexts, 3 splits", {32, 8, 128, 16, 0}, {1, 17, 100, 777, 64, 65}, 3},
      {"D128 G4 more splits than keys", {32, 8, 128, 16, 0}, {5, 40}, 32},
      {"D128 G4 window 50", {32, 8, 128, 16, 50}, {30, 50, 51, 300}, 4},
      {"D128 G1", {8, 8, 128, 16, 0}, {33, 200}, 2},
      {"D128 G7 (Qwen2.5)", {28, 4, 128, 16, 0}, {129, 260}, 2},
      {"D128 G8", {32, 4, 128, 16, 0}, {70, 513}, 2},
      {"D64 G7 (Qwen2.5-0.5B)", {14, 2, 64, 16, 0}, {1, 99, 1000}, 4},
      {"D64 G2 block size 32", {8, 4, 64, 32, 0}, {31, 32, 33, 500}, 3},
      {"D32 G4", {16, 4, 32, 16, 0}, {3, 300}, 2},
      {"D256 G2", {8, 4, 256, 16, 0}, {1, 45, 400}, 2},
      {"D256 G4 window 100", {16, 4, 256, 16, 100}, {99, 101, 700}, 5},
      {"D128 G4 long context", {32, 8, 128, 16, 0}, {4000}, 8},
      // More (token, KV head, split) items than every SM's blocks: the tensor-copy kernel's blocks
      // then go through several items each.
      {"D128 G4 70 sequences", {32, 8, 128, 16, 0}, manyContexts(70, 700), 1},
      {"D128 G4 70 sequences, 2 splits", {32, 8, 128, 16, 0}, manyContexts(70, 700), 2},
      {"D128 G4 window 50, 70 sequences", {32, 8, 128, 16, 50}, manyContexts(70, 300), 1},
      {"D128 G8 140 sequences", {32, 4, 128, 16, 0}, manyContexts(140, 300), 1},
      {"D64 G7 150 sequences", {14, 2, 64, 16, 0}, manyContexts(150, 400), 1},
      {"D128 G2 block size 8, 40 sequences", {16, 8, 128, 8, 0}, manyContexts(40, 500), 1},
  };
  for (const C& c : cases) {
    failed += check(c.name, c.sh, c.ctx, c.splits, Kernel::kCudaCore);
    for (Kernel k : {Kernel::kMma, Kernel::kTma})
      if (prepare(k, c.sh)) failed += check(c.name, c.sh, c.ctx, c.splits, k);
  }
  struct PC {
    const char* name;
    Shape sh;
    std::vector<int> ctx, counts;  // per sequence: keys in the cache, of which the chunk's tokens are the last
  };
  const std::vector<PC> prefills = {
      {"prefill D128 G4 from the start", {32, 8, 128, 16, 0}, {100}, {100}},
      {"prefill D128 G4 after a prefix", {32, 8, 128, 16, 0}, {300}, {77}},
      {"prefill D128 G4 three sequences", {32, 8, 128, 16, 0}, {1, 65, 200}, {1, 65, 130}},
      {"prefill D128 G4 twenty chunks",
       {32, 8, 128, 16, 0},
       {17, 40, 3, 100, 64, 65, 16, 200, 1, 33, 250, 8, 90, 12, 77, 130, 2, 48, 300, 21},
       {17, 20, 3, 50, 64, 32, 16, 100, 1, 16, 250, 4, 90, 6, 77, 65, 2, 24, 300, 10}},
      {"prefill D128 G7", {28, 4, 128, 16, 0}, {150}, {150}},
      {"prefill D128 G8", {32, 4, 128, 16, 0}, {64}, {64}},
      {"prefill D64 G7", {14, 2, 64, 16, 0}, {90, 500}, {90, 250}},
      {"prefill D64 G1 block size 32", {4, 4, 64, 32, 0}, {129}, {129}},
      {"prefill D128 G4 window 50", {32, 8, 128, 16, 50}, {300}, {300}},
      {"prefill D128 G4 window 50 after a prefix", {32, 8, 128, 16, 50}, {260}, {100}},
      // One query head a KV head: a tile's 128 rows are 128 tokens, so its warps cross key tiles
      // (rows wholly masked in a tile, tiles a warp skips).
      {"prefill D128 G1 long chunk", {8, 8, 128, 16, 0}, {700}, {700}},
      {"prefill D128 G1 window 20 after a prefix", {8, 8, 128, 16, 20}, {500}, {300}},
      {"prefill D128 G2 window 1", {16, 8, 128, 16, 1}, {100}, {60}},
      {"prefill D128 G3 block size 24", {24, 8, 128, 24, 0}, {333}, {200}},
      {"prefill D128 G6 window 100", {12, 2, 128, 16, 100}, {90, 640}, {90, 640}},
      {"prefill D64 G5 window 70", {10, 2, 64, 16, 70}, {400}, {400}},
      {"prefill D64 G8 three sequences", {16, 2, 64, 8, 0}, {5, 129, 300}, {5, 100, 300}},
      {"prefill D128 G4 block size 8 after a prefix", {32, 8, 128, 8, 0}, {333}, {250}},
      {"prefill D128 G4 block size 128 after a prefix", {32, 8, 128, 128, 0}, {1000}, {390}},
      {"prefill D128 G4 900 tokens, two sequences", {32, 8, 128, 16, 0}, {900, 600}, {900, 300}},
      {"prefill D256 (not supported)", {8, 4, 256, 16, 0}, {40}, {40}},
  };
  for (const PC& c : prefills)
    for (bool tma : {false, true}) failed += checkPrefill(c.name, c.sh, c.ctx, c.counts, tma);
  std::printf("%d failed\n", failed);
  return failed;
}

// Llama-3.1-8B's attention: 32 heads over 8 KV heads of 128, cache blocks of 16.
const Shape kLlama8b{32, 8, 128, 16, 0};

int bench(int onlyBatch, int onlyCtx, Kernel which) {
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  std::printf("%s, %d SMs\n", prop.name, sms);
  const Shape& sh = kLlama8b;
  // --bench B C: that batch and context alone, any of them; --bench: these, up to 128 x 2048 keys.
  const std::vector<int> contexts = onlyBatch > 0 ? std::vector<int>{onlyCtx} : std::vector<int>{512, 2048, 8192};
  const std::vector<int> batches =
      onlyBatch > 0 ? std::vector<int>{onlyBatch} : std::vector<int>{1, 8, 16, 32, 64, 128};
  for (int ctx : contexts) {
    if (onlyBatch < 0) break;  // --bench prefill: the prefill rows alone
    for (int b : batches) {
      if (onlyBatch == 0 && b * ctx > 128 * 2048) continue;
      const size_t bytes = static_cast<size_t>(b) * ctx * sh.kvHeads * sh.D * 2 * 2;
      const int layers = static_cast<int>(std::clamp<size_t>((size_t{1} << 30) / bytes, 2, 16));
      const Problem p = make(sh, std::vector<int>(b, ctx), layers, 11u, false);
      Device d = uploadProblem(p, kMaxDecodeSplits);
      const DecodeMmaLauncher kernel = prepare(which, sh);
      const int work = b * sh.kvHeads;
      const int pick = decodeAttentionSplits(b, sh.kvHeads, sms, kernel ? which : Kernel::kCudaCore, ctx);
      std::printf("batch %3d, context %4d (%5.1f MB a layer):", b, ctx, bytes / 1e6);
      // About 1, 2, 4 and 8 blocks an SM, the engine's pick, one to three splits, and where the
      // batch leaves SMs idle a few more (few keys a split leave most of a 64-key tile masked).
      std::set<int> counts{pick, 1, 2, 3};
      for (int mult : {1, 2, 4, 8}) counts.insert(std::clamp((mult * sms + work - 1) / work, 1, kMaxDecodeSplits));
      if (work < sms) counts.insert({4, 6, 8, 16});
      for (int splits : counts) {
        const double us = timeCalls(10, 200, [&](int i) {
          const size_t off = static_cast<size_t>(i % layers) * p.layerElems;
          decodeAttention(d.q, d.k + off, d.v + off, d.idx, b, d.map, d.a, splits, d.partial, d.ml, d.out, nullptr,
                          kernel);
        });
        std::printf("  splits %2d%s %7.1f us %5.2f TB/s", splits, splits == pick ? "*" : " ", us, bytes / us / 1e6);
      }
      std::printf("\n");
      release(d);
    }
  }
  if (onlyBatch >= 0) std::printf("(* the engine's split count; times include the combine kernel and launch gaps)\n");
  if (onlyBatch > 0) return 0;
  // The tensor-copy kernel also at cache blocks of 64 keys: one copy a 64-value part of a tile's K
  // or V rows, where blocks of 16 take four.
  for (const auto& [tma, bs] : std::vector<std::pair<bool, int>>{{false, sh.bs}, {true, sh.bs}, {true, 64}}) {
    const Shape shb{sh.heads, sh.kvHeads, sh.D, bs, sh.window};
    const PrefillMmaLauncher run = preparePrefill(shb, tma);
    if (!run) continue;
    for (const auto& [seqs, len] : std::vector<std::pair<int, int>>{{1, 2048}, {8, 512}, {1, 8192}}) {
      // Random keys, so that row maxima move (and O is rescaled) as they would in a model.
      const Problem p = make(shb, std::vector<int>(seqs, len), 1, 3u, true, std::vector<int>(seqs, len));
      Device d = uploadProblem(p, 1);
      const float scale = 1.0f / std::sqrt(static_cast<float>(sh.D));
      std::vector<PrefillChunk> chunks;
      for (int i = 0; i < seqs; ++i) chunks.push_back(PrefillChunk{i * len, len, 0});
      PrefillTiles tiles(chunks, sh.heads / sh.kvHeads);
      const double us = timeCalls(
          3, 50, [&](int) { run(d.q, d.k, d.v, d.map, d.a, tiles.device, tiles.count, scale, d.out, nullptr); });
      // Causal: token j sees j + 1 keys; 4 flops per head, key and dimension (two products).
      const double flops = 4.0 * sh.heads * sh.D * seqs * (static_cast<double>(len) * (len + 1) / 2);
      const std::string form = !tma ? "" : bs == sh.bs ? " (tensor copies)" : " (tensor copies, blocks of 64)";
      std::printf("prefill %d x %d tokens%s: %7.1f us a layer, %.0f TFLOPS\n", seqs, len, form.c_str(), us,
                  flops / us / 1e6);
      release(d);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--bench") == 0) {
    auto set = [](const char* name, const char* value) {
      return std::getenv(name) && std::strcmp(std::getenv(name), value) == 0;
    };
    const Kernel which = set("TROUPE_CUDA_ATTENTION_MMA", "0")                                       ? Kernel::kCudaCore
                         : set("TROUPE_CUDA_ATTENTION_TMA", "0") || !prepare(Kernel::kTma, kLlama8b) ? Kernel::kMma
                                                                                                     : Kernel::kTma;
    if (argc > 2 && std::strcmp(argv[2], "prefill") == 0) return bench(-1, 0, which);
    return bench(argc > 3 ? std::atoi(argv[2]) : 0, argc > 3 ? std::atoi(argv[3]) : 0, which);
  }
  return runChecks() == 0 ? 0 : 1;
}
