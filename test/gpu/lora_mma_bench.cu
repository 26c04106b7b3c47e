// Times the LoRA kernel pairs alone on the Llama-3.1-8B shape, 8 adapters of rank 16 and 64 on all
// seven modules, each of the 32 layers with its own factors (so they come from memory as in a
// step): one step's 128 shrink/expand pairs (q/k/v, o, gate/up, down per layer) captured in a CUDA
// graph, the median of 20 replays, and each projection group's share. Decode: 32 rows over 8
// adapters or 1 (csgmv chunks of 16, the grid a decode graph launches); prefill: 8 x 512 tokens
// over 8 adapters or 1. Each scenario also prints the mma expand's blocks per layer (the four
// groups together) and how many tiles each takes (loraExpandGroup). No base model runs between the pairs, so this is
// the LoRA kernels' own cost; bench/gpu-lora.js measures whole steps. Built with lora_mma_check.cu (see there), run
// with --bench.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "lora_mma_util.h"

using namespace lora_check;

namespace {

constexpr int kLayers = 32, kSlots = 8, kHidden = 4096, kKv = 1024, kInter = 14336;

struct Group {
  const char* name;
  int in;
  std::vector<int> outs;
};
const std::vector<Group> kGroups = {{"qkv", kHidden, {kHidden, kKv, kKv}},
                                    {"o", kHidden, {kHidden}},
                                    {"gate_up", kHidden, {kInter, kInter}},
                                    {"down", kInter, {kHidden}}};

__global__ void fillBf16(bf16_t* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const uint32_t h = (static_cast<uint32_t>(i) ^ seed) * 2654435761u;
    p[i] = static_cast<bf16_t>(0x3c00u | (h >> 25) | ((h >> 16) & 0x8000u));  // +-[2^-7, 2^-6)
  }
}

template <class T>
T* alloc(size_t n, std::vector<void*>& owned) {
  T* p = nullptr;
  CK(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
  owned.push_back(p);
  return p;
}

bf16_t* randomBf16(size_t n, uint32_t seed, std::vector<void*>& owned) {
  bf16_t* p = alloc<bf16_t>(n, owned);
  fillBf16<<<1024, 256>>>(p, n, seed);
  CK(cudaGetLastError());
  return p;
}

struct Scenario {
  const char* name;
  std::vector<int> lens, slots;
  bool graphGrid;  // launch for the most items a decode graph allows, as the backend does
};

// Median ms of 20 replays of a graph of `layers` x the chosen groups' pairs.
double pairsMs(Kernel k, const std::vector<int>& groups, const std::vector<std::vector<LoraSlices>>& sl,
               const LoraItems& items, const int32_t* ranks, const float* scaling, bf16_t* const* x, float* const* y,
               const int* ldy, float* mid, size_t slab, cudaStream_t st) {
  return graphMs(
      st,
      [&](cudaStream_t s) {
        for (int l = 0; l < kLayers; ++l)
          for (int gi : groups)
            runPair(k, items, sl[l][gi], ranks, scaling, x[gi], kGroups[gi].in, mid, slab, y[gi], ldy[gi], s);
      },
      3, 20);
}

}  // namespace

int loraBench() {
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s: LoRA kernels alone, Llama-3.1-8B shape, %d layers, %d adapters on all seven modules\n", prop.name,
              kLayers, kSlots);
  std::vector<int> rr(32), eight(8);
  for (int i = 0; i < 32; ++i) rr[i] = i % 8;
  for (int i = 0; i < 8; ++i) eight[i] = i;
  const std::vector<Scenario> scenarios = {
      {"decode b32, 8 adapters", std::vector<int>(32, 1), rr, true},
      {"decode b32, 1 adapter", std::vector<int>(32, 1), std::vector<int>(32, 0), true},
      {"prefill 8x512, 8 adapters", std::vector<int>(8, 512), eight, false},
      {"prefill 8x512, 1 adapter", std::vector<int>(8, 512), std::vector<int>(8, 0), false}};
  std::vector<Kernel> kernels = {Kernel::kFma, Kernel::kMma};
  if (prop.major >= 9) kernels.push_back(Kernel::kMmaPdl);
  for (int rank : {16, 64}) {
    std::vector<void*> owned;
    // Per layer and group: A [slots][rank][in] and B [slots][out][rank] per slice.
    std::vector<std::vector<LoraSlices>> sl(kLayers, std::vector<LoraSlices>(kGroups.size()));
    uint32_t seed = 1;
    for (int l = 0; l < kLayers; ++l) {
      for (size_t gi = 0; gi < kGroups.size(); ++gi) {
        LoraSlices& s = sl[l][gi];
        s.count = static_cast<int>(kGroups[gi].outs.size());
        s.in = kGroups[gi].in;
        s.maxRank = rank;
        int offset = 0;
        for (int k = 0; k < s.count; ++k) {
          const int out = kGroups[gi].outs[k];
          s.a[k] = randomBf16(static_cast<size_t>(kSlots) * rank * s.in, seed++, owned);
          s.b[k] = randomBf16(static_cast<size_t>(kSlots) * out * rank, seed++, owned);
          s.aSlotStride[k] = static_cast<size_t>(rank) * s.in;
          s.bSlotStride[k] = static_cast<size_t>(out) * rank;
          s.bLd[k] = rank;
          s.out[k] = out;
          s.outOffset[k] = offset;
          s.module[k] = gi == 0 ? k : gi == 1 ? 3 : gi == 2 ? 4 + k : 6;
          offset += out;
        }
      }
    }
    std::vector<int32_t> ranks(kSlots * 7 + 1, rank);
    std::vector<float> scaling(kSlots + 1, 2.0f);
    int32_t* dRanks = upload(ranks);
    float* dScaling = upload(scaling);
    owned.push_back(dRanks);
    owned.push_back(dScaling);
    for (const Scenario& sc : scenarios) {
      int T = 0;
      for (int n : sc.lens) T += n;
      const Items it = buildItems(sc.lens, sc.slots, kSlots, false, 16);
      // The backend's decode-graph bound: floor(T / chunk) + slots used items of one tile.
      const int gridItems = sc.graphGrid ? std::min(T, T / 16 + std::min(T, kSlots)) : static_cast<int>(it.slot.size());
      std::vector<void*> step;
      const LoraItems items = uploadItems(it, T, gridItems, it.tiles(), step);
      bf16_t* x[4];
      float* y[4];
      int ldy[4];
      for (size_t gi = 0; gi < kGroups.size(); ++gi) {
        int width = 0;
        for (int o : kGroups[gi].outs) width += o;
        ldy[gi] = width;
        x[gi] = randomBf16(static_cast<size_t>(T) * kGroups[gi].in, 1000 + gi, step);
        y[gi] = alloc<float>(static_cast<size_t>(T) * width, step);
        CK(cudaMemset(y[gi], 0, static_cast<size_t>(T) * width * 4));
      }
      const size_t slab = static_cast<size_t>(T) * tc::kMaxLoraSlices * rank;
      float* mid = alloc<float>(slab * tc::loraKPieces(kInter), step);
      CK(cudaDeviceSynchronize());
      long long blocks = 0, single = 0;
      std::string groups;
      for (size_t gi = 0; gi < kGroups.size(); ++gi) {
        const LoraSlices& s = sl[0][gi];
        const tc::LoraExpandGroup g = tc::loraExpandGroup(items, s);
        long long cols = 0, widest = 0;
        for (int k = 0; k < s.count; ++k) {
          cols += (s.out[k] + 127) / 128;
          widest = std::max<long long>(widest, (s.out[k] + 127) / 128);
        }
        // One tile per block over every slice's widest column range, as before the grouping.
        single += static_cast<long long>(items.gridItems) * items.gridTiles * s.count * widest;
        blocks += static_cast<long long>((items.gridItems + g.items - 1) / g.items) *
                  ((items.gridTiles + g.tiles - 1) / g.tiles) * cols;
        groups += std::string(gi ? ", " : "") + kGroups[gi].name + " " + std::to_string(g.items) + "x" +
                  std::to_string(g.tiles);
      }
      std::printf(
          "rank %2d  %-26s mma expand: %lld blocks per layer (%lld with one tile per block and every slice as wide as "
          "the widest; %s)\n",
          rank, sc.name, blocks, single, groups.c_str());
      for (Kernel k : kernels) {
        const double total = pairsMs(k, {0, 1, 2, 3}, sl, items, dRanks, dScaling, x, y, ldy, mid, slab, st);
        std::printf("rank %2d  %-26s %-7s step %7.3f ms  (", rank, sc.name, kernelName(k), total);
        for (int gi = 0; gi < 4; ++gi) {
          const double t = pairsMs(k, {gi}, sl, items, dRanks, dScaling, x, y, ldy, mid, slab, st);
          std::printf("%s%s %.3f", gi ? ", " : "", kGroups[gi].name, t);
        }
        std::printf(")\n");
      }
      for (void* p : step) CK(cudaFree(p));
    }
    for (void* p : owned) CK(cudaFree(p));
  }
  return 0;
}
