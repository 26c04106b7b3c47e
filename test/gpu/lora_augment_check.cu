// Stand-alone check of the LoRA augment (native/cuda/lora_fused.cu: the kernel that writes a
// larger step's augmented rows, x copied in and each token's scaled shrink outputs under its
// slot's columns) against a host reference, bit for bit: one shared row or split rows, x copied
// from its own buffer, made in place in the first row or not copied at all, shrink outputs in
// each token's own slot's columns or in every slot's, in one piece or summed over several, ranks
// below the pool's, tokens without an adapter, max ranks that are not a multiple of 8 (the
// rounding tail) and rows that are not 16-byte aligned. Every column of every row is checked:
// columns the kernel must leave alone keep the NaN they were poisoned with. With --bench it times
// the launches of a prefill of 4,096 tokens on the Llama-3.1-8B shape (8 slots of rank 16 and of
// 64) against a device-to-device copy of the same bytes.
//   nvcc -std=c++17 -arch=sm_90a -O3 -Inative -Itest/gpu -o /tmp/augment test/gpu/lora_augment_check.cu \
//        native/cuda/lora_fused.cu && /tmp/augment [--bench]
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <vector>

#include "check_util.h"
#include "cuda/lora_fused.h"

using namespace kernel_check;
using namespace troupe::cuda;

namespace {

constexpr int kModules = 7;

enum class Copy { kNone, kOwnBuffer, kInPlace };
enum class Mid { kOwnSlot, kEverySlot };

struct Case {
  int T, in, slots, maxRank, count;
  bool split;
  Copy copy;
  Mid mid;
  int pieces;
  int misalign = 0;  // x this many elements past an aligned address (its own buffer only)
};

// The layout the backend gives a group: pad columns (lora_fused.h's loraPadColumns for `count`
// held modules) and the rows.
AugmentedRows layout(const Case& c, bf16_t* data) {
  AugmentedRows xa;
  const long long cols = static_cast<long long>(c.split ? 1 : c.count) * c.slots * c.maxRank;
  xa.pad = static_cast<int>((cols + 7) / 8 * 8);
  xa.ld = c.in + xa.pad;
  xa.data = data;
  xa.slicePitch = c.split ? static_cast<size_t>(c.T) * xa.ld : 0;
  return xa;
}

struct Inputs {
  std::vector<int32_t> rowSlot, ranks, module;
  std::vector<float> scaling, mid;
  std::vector<uint16_t> x;  // T rows of in (own buffer) or nothing
  LoraMid m;
};

Inputs makeInputs(const Case& c, Rng& rng) {
  Inputs h;
  for (int t = 0; t < c.T; ++t) h.rowSlot.push_back(rng.uni() < 0.15 ? -1 : static_cast<int>(rng.uni() * c.slots));
  for (int s = 0; s < c.slots; ++s) {
    h.scaling.push_back(0.25f + static_cast<float>(rng.uni()));
    for (int m = 0; m < kModules; ++m)
      h.ranks.push_back(s % 3 == 1 ? c.maxRank : 1 + static_cast<int>(rng.uni() * c.maxRank));
  }
  // Slices of modules spread over the seven (the ranks array is [slot][7]).
  for (int j = 0; j < c.count; ++j) h.module.push_back((j * 3 + 1) % kModules);
  LoraMid& m = h.m;
  m.pieces = c.pieces;
  if (c.mid == Mid::kOwnSlot) {
    m.tokenPitch = c.count * c.maxRank;
    m.slicePitch = c.maxRank;
  } else {
    m.tokenPitch = c.count * c.slots * c.maxRank;
    m.slicePitch = c.slots * c.maxRank;
    m.slotPitch = c.maxRank;
  }
  m.slab = static_cast<size_t>(c.T) * m.tokenPitch + 5;  // not a multiple of 4 floats
  // Every value set, the ones past each rank too: the kernel must select, not multiply by zero.
  h.mid.resize(m.slab * c.pieces);
  for (float& v : h.mid) v = rng.sym() * 4;
  if (c.copy == Copy::kOwnBuffer) {
    h.x.resize(static_cast<size_t>(c.T) * c.in + c.misalign);
    for (uint16_t& v : h.x) v = toBf16(rng.sym());
  }
  return h;
}

// What token t's row `row` must hold at column col after the launch; xIn is the x value the
// row's first columns take (or the poison they keep).
uint16_t expected(const Case& c, const Inputs& h, const AugmentedRows& xa, int t, int row, int col, uint16_t xIn) {
  if (col < c.in) return xIn;
  const int cc = col - c.in, R = c.maxRank, block = c.slots * R;
  const int j = c.split ? (cc / block == 0 ? row : c.count) : std::min(cc / block, c.count);
  const int k = (cc % block) / R, r = cc % R, slot = h.rowSlot[t];
  if (j >= c.count || slot < 0 || k != slot || r >= h.ranks[slot * kModules + h.module[j]]) return 0;
  const size_t at = static_cast<size_t>(t) * h.m.tokenPitch + static_cast<size_t>(slot) * h.m.slotPitch +
                    static_cast<size_t>(j) * h.m.slicePitch + r;
  float v = 0.0f;
  for (int i = 0; i < c.pieces; ++i) v += h.mid[at + i * h.m.slab];
  return toBf16(v * h.scaling[slot]);
}

// A case's inputs on the device, and the launch as the backend makes it.
struct DeviceInputs {
  int32_t* rowSlot;
  int32_t* ranks;
  float* scaling;
  float* mid;
  bf16_t* x;  // x's own buffer (Copy::kOwnBuffer) or null
  LoraSlices sl{};
  LoraMid m;

  DeviceInputs(const Case& c, const Inputs& h)
      : rowSlot(upload(h.rowSlot)),
        ranks(upload(h.ranks)),
        scaling(upload(h.scaling)),
        mid(upload(h.mid)),
        x(c.copy == Copy::kOwnBuffer ? upload(h.x) : nullptr),
        m(h.m) {
    sl.count = c.count;
    sl.in = c.in;
    sl.maxRank = c.maxRank;
    for (int j = 0; j < c.count; ++j) sl.module[j] = h.module[j];
    m.data = mid;
  }
  void launch(const Case& c, const AugmentedRows& xa, cudaStream_t st) const {
    const bf16_t* from = c.copy == Copy::kOwnBuffer ? x + c.misalign : c.copy == Copy::kInPlace ? xa.data : nullptr;
    const int ldx = c.copy == Copy::kInPlace ? xa.ld : c.in;
    loraAugment(sl, c.slots, rowSlot, ranks, scaling, m, from, ldx, c.T, xa, st);
  }
  void free() {
    for (void* p : {static_cast<void*>(rowSlot), static_cast<void*>(ranks), static_cast<void*>(scaling),
                    static_cast<void*>(mid), static_cast<void*>(x)})
      cudaFree(p);
  }
};

int run(const Case& c, Rng& rng) {
  const Inputs h = makeInputs(c, rng);
  AugmentedRows xa = layout(c, nullptr);
  const int rows = c.split ? c.count : 1;
  const size_t elems = static_cast<size_t>(rows) * c.T * xa.ld;
  // Poison, then (in place) the first rows' x columns as the norm would have written them.
  std::vector<uint16_t> before(elems, kNaN16);
  if (c.copy == Copy::kInPlace) {
    for (int t = 0; t < c.T; ++t)
      for (int i = 0; i < c.in; ++i) before[static_cast<size_t>(t) * xa.ld + i] = toBf16(rng.sym());
  }
  bf16_t* dXa = upload(before);
  xa.data = dXa;
  DeviceInputs d(c, h);
  // Twice, so that the second launch finds the first's output where it writes.
  for (int rep = 0; rep < 2; ++rep) d.launch(c, xa, nullptr);
  CK(cudaDeviceSynchronize());
  std::vector<uint16_t> got(elems);
  CK(cudaMemcpy(got.data(), dXa, elems * 2, cudaMemcpyDeviceToHost));
  long bad = 0;
  for (int row = 0; row < rows; ++row)
    for (int t = 0; t < c.T; ++t)
      for (int col = 0; col < xa.ld; ++col) {
        const size_t at = row * xa.slicePitch + static_cast<size_t>(t) * xa.ld + col;
        uint16_t xIn = kNaN16;
        if (col < c.in) {
          if (c.copy == Copy::kOwnBuffer) xIn = h.x[c.misalign + static_cast<size_t>(t) * c.in + col];
          if (c.copy == Copy::kInPlace) xIn = before[static_cast<size_t>(t) * xa.ld + col];
        }
        const uint16_t want = expected(c, h, xa, t, row, col, xIn);
        if (got[at] != want && bad++ < 3)
          std::printf("  row %d token %d column %d: got 0x%04x, want 0x%04x\n", row, t, col, got[at], want);
      }
  const char* copies[] = {"no copy", "own buffer", "in place"};
  std::printf("%-4s T %4d in %5d slots %d maxRank %2d count %d %-6s %-10s mid %-5s pieces %d%s: %ld wrong\n",
              bad ? "FAIL" : "ok", c.T, c.in, c.slots, c.maxRank, c.count, c.split ? "split" : "shared",
              copies[static_cast<int>(c.copy)], c.mid == Mid::kOwnSlot ? "own" : "every", c.pieces,
              c.misalign ? " misaligned x" : "", bad);
  d.free();
  cudaFree(dXa);
  return bad ? 1 : 0;
}

// A prefill's launches at the 8B shape: 4,096 tokens over 8 slots, each group as the engine lays
// it out (q/k/v split from 8 slots of rank 32, gate/up always; rows made in place by RMSNorm or
// SiLU-and-mul except o's, which the attention wrote elsewhere). Bytes are what must move: x read
// and copied, padding written, shrink outputs read.
int bench() {
  struct Group {
    const char* name;
    int in, count;
    bool splitFrom32, gateUp;
    Copy copy;
  };
  const Group groups[] = {{"q/k/v", 4096, 3, true, false, Copy::kInPlace},
                          {"o", 4096, 1, false, false, Copy::kOwnBuffer},
                          {"gate/up", 4096, 2, false, true, Copy::kInPlace},
                          {"down", 14336, 1, false, false, Copy::kInPlace}};
  Rng rng{7};
  const int T = 4096, slots = 8;
  for (const int R : {16, 64}) {
    double sum = 0, sumFloor = 0;
    for (const Group& g : groups) {
      Case c{T, g.in, slots, R, g.count, g.gateUp || (g.splitFrom32 && slots * R >= 256), g.copy, Mid::kOwnSlot, 1};
      const Inputs h = makeInputs(c, rng);
      AugmentedRows xa = layout(c, nullptr);
      const int rows = c.split ? c.count : 1;
      const size_t elems = static_cast<size_t>(rows) * T * xa.ld;
      bf16_t* dXa;
      CK(cudaMalloc(&dXa, elems * 2));
      CK(cudaMemset(dXa, 0, elems * 2));
      xa.data = dXa;
      DeviceInputs d(c, h);
      const int copies = c.copy == Copy::kOwnBuffer ? rows : rows - 1;
      const double bytes = 2.0 * T * copies * c.in * 2 + 2.0 * T * rows * xa.pad + 4.0 * T * d.m.tokenPitch;
      const double us = timeGraph(20, [&](int, cudaStream_t st) { d.launch(c, xa, st); });
      // The floor: a device-to-device copy moving the same bytes (half read, half written).
      const size_t copyBytes = static_cast<size_t>(bytes / 2) / 16 * 16;
      void *a, *b;
      CK(cudaMalloc(&a, copyBytes));
      CK(cudaMalloc(&b, copyBytes));
      const double floorUs =
          timeGraph(20, [&](int, cudaStream_t st) { CK(cudaMemcpyAsync(b, a, copyBytes, cudaMemcpyDeviceToDevice, st)); });
      std::printf("rank %2d %-8s rows %d pad %4d: %7.2f us (%.2f TB/s), a copy of the same bytes %7.2f us\n", R,
                  g.name, rows, xa.pad, us, bytes / us / 1e6, floorUs);
      sum += us;
      sumFloor += floorUs;
      d.free();
      for (void* p : {static_cast<void*>(dXa), a, b}) cudaFree(p);
    }
    std::printf("rank %2d layer: %.1f us against %.1f us of copies (%.2f ms a 32-layer step)\n", R, sum, sumFloor,
                sum * 32 / 1000);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--bench") == 0) return bench();
  Rng rng{3};
  int failed = 0;
  for (Mid mid : {Mid::kOwnSlot, Mid::kEverySlot})
    for (Copy copy : {Copy::kNone, Copy::kOwnBuffer, Copy::kInPlace}) {
      failed += run({37, 256, 4, 16, 3, false, copy, mid, 1}, rng);
      failed += run({37, 256, 4, 16, 3, true, copy, mid, 1}, rng);
      failed += run({29, 512, 8, 64, 2, true, copy, mid, 3}, rng);
      failed += run({33, 1024, 3, 8, 1, false, copy, mid, 2}, rng);
      // Max ranks off a multiple of 8: column by column, and a rounding tail after the blocks.
      failed += run({19, 256, 3, 12, 3, false, copy, mid, 1}, rng);
      failed += run({23, 128, 5, 7, 2, true, copy, mid, 2}, rng);
    }
  // Rows that cannot take 16-byte accesses: x off alignment, features off a multiple of 8.
  failed += run({21, 256, 4, 16, 2, true, Copy::kOwnBuffer, Mid::kOwnSlot, 1, 3}, rng);
  failed += run({17, 250, 3, 16, 3, false, Copy::kOwnBuffer, Mid::kOwnSlot, 1}, rng);
  failed += run({17, 250, 3, 16, 2, true, Copy::kInPlace, Mid::kEverySlot, 2}, rng);
  // More units than one block's, more blocks than a wave (the 8B shape's down rows, fewer tokens).
  failed += run({64, 14336, 8, 16, 1, false, Copy::kOwnBuffer, Mid::kOwnSlot, 1}, rng);
  std::printf("%d failed\n", failed);
  return failed == 0 ? 0 : 1;
}
