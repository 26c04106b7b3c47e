// Each token's LoRA delta is computed from that token alone (the GEMMs are per-element
// deterministic), so grouping tokens by slot changes speed, never a result bit.
#include "lora.h"

#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>

#include "cpu/gemm.h"
#include "cuda/lora_runs.h"
#include "tensor_file.h"

namespace troupe {

const char* const kLoraModuleNames[kNumLoraModules] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                       "gate_proj", "up_proj", "down_proj"};
const char* const kLoraKernelNames[static_cast<int>(LoraKernel::kNumLoraKernels)] = {"auto",    "fma",         "mma",
                                                                                     "mma-pdl", "mma-overlap", "fused"};

LoraKernel loraKernelNamed(const std::string& name) {
  for (int k = static_cast<int>(LoraKernel::kFma); k < static_cast<int>(LoraKernel::kNumLoraKernels); ++k)
    if (name == kLoraKernelNames[k]) return static_cast<LoraKernel>(k);
  return LoraKernel::kAuto;
}

std::string loraKernelNameList() {
  constexpr int first = static_cast<int>(LoraKernel::kFma), count = static_cast<int>(LoraKernel::kNumLoraKernels);
  std::string names;
  for (int k = first; k < count; ++k)
    names += std::string(k == first ? "" : k + 1 == count ? " or " : ", ") + "\"" + kLoraKernelNames[k] + "\"";
  return names;
}

void loraModuleDims(const ModelConfig& c, int* in, int* out) {
  const int h = c.hiddenSize, q = c.numHeads * c.headDim, kv = c.numKvHeads * c.headDim, inter = c.intermediateSize;
  const int ins[kNumLoraModules] = {h, h, h, q, h, h, inter};
  const int outs[kNumLoraModules] = {q, kv, kv, h, inter, inter, h};
  for (int m = 0; m < kNumLoraModules; ++m) {
    in[m] = ins[m];
    out[m] = outs[m];
  }
}

LoraPool::LoraPool(const ModelConfig& c, int slots, int maxRank, uint32_t moduleMask, int slotRank)
    : layers_(c.numLayers),
      maxRank_(maxRank),
      slotRank_(slotRank > 0 ? slotRank : maxRank),
      moduleMask_(moduleMask),
      slots_(slots > 0 ? slots : 0),
      table_(slots) {
  if (slotRank_ > maxRank_ && !slots_.empty())
    throw std::invalid_argument("createEngine: loraSlotRank " + std::to_string(slotRank_) + " exceeds maxLoraRank " +
                                std::to_string(maxRank_));
  loraModuleDims(c, in_, out_);
}

int loraSlotSpan(int rank, int slotRank) { return cuda::lora_runs::span(rank, slotRank); }

namespace {

std::string shapeOf(int64_t rows, int64_t cols) {
  return "[" + std::to_string(rows) + ", " + std::to_string(cols) + "]";
}

// The slice of `v` must be rows x cols (`expected` says so in words).
void checkFactor(FactorView& v, int64_t rows, int64_t cols, const std::string& what, const std::string& expected) {
  if (v.values() != static_cast<size_t>(rows * cols)) {
    throw std::invalid_argument(what + " has " + std::to_string(v.values()) + " values, expected " + expected);
  }
  if (v.flat) {
    v = FactorView{v.data, v.dtype, rows, cols, 0, 0, rows, cols, false};
    return;
  }
  if (v.takeRows != rows || v.takeCols != cols) {
    throw std::invalid_argument(what + ": the slot takes " + shapeOf(v.takeRows, v.takeCols) + " of it, expected " +
                                expected);
  }
  if (v.row0 < 0 || v.col0 < 0 || v.row0 + v.takeRows > v.rows || v.col0 + v.takeCols > v.cols) {
    throw std::invalid_argument(what + ": rows [" + std::to_string(v.row0) + ", " +
                                std::to_string(v.row0 + v.takeRows) + ") and columns [" + std::to_string(v.col0) +
                                ", " + std::to_string(v.col0 + v.takeCols) + ") are outside the " +
                                shapeOf(v.rows, v.cols) + " tensor");
  }
}

}  // namespace

std::vector<char> checkAdapter(AdapterWeights& ad, int slot, int slots, int maxRank, int slotRank, int layers,
                               uint32_t moduleMask, const int* in, const int* out) {
  const std::string where = "loadLoraSlot: slot " + std::to_string(slot) + ": ";
  if (slot < 0 || slot >= slots) {
    throw std::invalid_argument("loadLoraSlot: slot " + std::to_string(slot) + " is outside [0, " +
                                std::to_string(slots) + ")");
  }
  if (ad.rank < 1 || ad.rank > maxRank) {
    throw std::invalid_argument(where + "adapter rank " + std::to_string(ad.rank) + " is outside [1, " +
                                std::to_string(maxRank) + "] (max LoRA rank)");
  }
  const int span = loraSlotSpan(ad.rank, slotRank);
  if (slot % span != 0 || slot + span > slots) {
    throw std::invalid_argument(where + "an adapter of rank " + std::to_string(ad.rank) + " takes " +
                                std::to_string(span) + " slots of rank " + std::to_string(slotRank) +
                                ", from a multiple of " + std::to_string(span) + " within [0, " +
                                std::to_string(slots) + ")");
  }
  std::vector<char> seen(static_cast<size_t>(layers) * kNumLoraModules, 0);
  for (auto& w : ad.weights) {
    const std::string name = "layer " + std::to_string(w.layer) + " " + kLoraModuleNames[w.module];
    if (w.layer < 0 || w.layer >= layers) {
      throw std::invalid_argument(where + "layer " + std::to_string(w.layer) + " is outside [0, " +
                                  std::to_string(layers) + ")");
    }
    if (!(moduleMask & (1u << w.module))) {
      throw std::invalid_argument(where + "the adapter targets " + kLoraModuleNames[w.module] +
                                  ", which the LoRA pool does not hold (see loraModules)");
    }
    const int r = ad.rank;
    checkFactor(w.a, r, in[w.module], where + name + ": A",
                "rank " + std::to_string(r) + " x " + std::to_string(in[w.module]));
    checkFactor(w.b, out[w.module], r, where + name + ": B",
                std::to_string(out[w.module]) + " x rank " + std::to_string(r));
    char& given = seen[static_cast<size_t>(w.layer) * kNumLoraModules + w.module];
    if (given) throw std::invalid_argument(where + name + " is given twice");
    given = 1;
  }
  return seen;
}

void factorToFloat(const FactorView& v, float* dst) {
  for (int64_t i = 0; i < v.takeRows; ++i) {
    const uint8_t* src = v.at(v.row0 + i, v.col0);
    float* d = dst + static_cast<size_t>(i) * v.takeCols;
    const size_t n = static_cast<size_t>(v.takeCols);
    if (v.dtype == DType::F32) {
      std::memcpy(d, src, n * 4);
    } else if (v.dtype == DType::BF16) {
      for (size_t j = 0; j < n; ++j) {
        uint16_t h;
        std::memcpy(&h, src + 2 * j, 2);
        const uint32_t u = static_cast<uint32_t>(h) << 16;
        std::memcpy(d + j, &u, 4);
      }
    } else {
      for (size_t j = 0; j < n; ++j) {
        uint16_t h;
        std::memcpy(&h, src + 2 * j, 2);
        d[j] = halfToFloat(h);
      }
    }
  }
}

void LoraPool::load(int slot, const AdapterWeights& adapter) {
  AdapterWeights ad = adapter;
  checkAdapter(ad, slot, slots(), maxRank_, slotRank_, layers_, moduleMask_, in_, out_);
  SlotTable::Writer writer = table_.write(slot);
  Slot s;
  s.rank = ad.rank;
  s.scaling = static_cast<float>(ad.scaling);
  s.factors.resize(static_cast<size_t>(layers_) * kNumLoraModules);
  for (const auto& w : ad.weights) {
    Factors& f = s.factors[static_cast<size_t>(w.layer) * kNumLoraModules + w.module];
    f.a.resize(w.a.values());
    f.b.resize(w.b.values());
    factorToFloat(w.a, f.a.data());
    factorToFloat(w.b, f.b.data());
  }
  slots_[slot] = std::move(s);
  writer.commit(true);
}

void LoraPool::clear(int slot) {
  if (slot < 0 || slot >= slots()) {
    throw std::invalid_argument("clearLoraSlot: slot " + std::to_string(slot) + " is outside [0, " +
                                std::to_string(slots()) + ")");
  }
  SlotTable::Writer writer = table_.write(slot);
  slots_[slot] = Slot{};
  writer.commit(false);
}

void checkSwap(int a, int b, int slots) {
  for (int s : {a, b})
    if (s < 0 || s >= slots)
      throw std::invalid_argument("swapLoraSlots: slot " + std::to_string(s) + " is outside [0, " +
                                  std::to_string(slots) + ")");
  if (a == b) throw std::invalid_argument("swapLoraSlots: both slots are " + std::to_string(a));
}

void LoraPool::swap(int a, int b) {
  checkSwap(a, b, slots());
  auto writers = table_.writePair(a, b);
  std::swap(slots_[a], slots_[b]);
  const bool aHeld = writers.first.wasLoaded(), bHeld = writers.second.wasLoaded();
  writers.first.commit(bHeld);
  writers.second.commit(aHeld);
}

void LoraPool::apply(int layer, LoraModule m, const float* x, size_t ldx, float* y, size_t ldy,
                     const std::vector<SlotGroup>& groups, int threads) const {
  const int in = in_[m], out = out_[m];
  std::vector<float> xg, mid, delta;
  for (const SlotGroup& g : groups) {
    const Slot& s = slots_[g.slot];
    const Factors& f = s.factors[static_cast<size_t>(layer) * kNumLoraModules + m];
    if (f.a.empty()) continue;
    const int n = static_cast<int>(g.tokens.size());
    const int r = s.rank;
    xg.resize(static_cast<size_t>(n) * in);
    for (int i = 0; i < n; ++i)
      std::copy(x + g.tokens[i] * ldx, x + g.tokens[i] * ldx + in, xg.begin() + static_cast<size_t>(i) * in);
    mid.resize(static_cast<size_t>(n) * r);
    delta.resize(static_cast<size_t>(n) * out);
    gemmF32(f.a.data(), r, in, in, xg.data(), n, in, mid.data(), r, threads);
    gemmF32(f.b.data(), out, r, r, mid.data(), n, r, delta.data(), out, threads);
    for (int i = 0; i < n; ++i) {
      float* yr = y + g.tokens[i] * ldy;
      const float* d = delta.data() + static_cast<size_t>(i) * out;
      for (int j = 0; j < out; ++j) yr[j] += s.scaling * d[j];
    }
  }
}

}  // namespace troupe
