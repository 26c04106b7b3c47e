// Each token's LoRA delta is computed from that token alone (the GEMMs are per-element
// deterministic), so grouping tokens by slot changes speed, never a result bit.
#include "lora.h"

#include <stdexcept>
#include <string>

#include "cpu/gemm.h"

namespace troupe {

const char* const kLoraModuleNames[kNumLoraModules] = {"q_proj", "k_proj",    "v_proj",   "o_proj",
                                                       "gate_proj", "up_proj", "down_proj"};

void loraModuleDims(const ModelConfig& c, int* in, int* out) {
  const int h = c.hiddenSize, q = c.numHeads * c.headDim, kv = c.numKvHeads * c.headDim, inter = c.intermediateSize;
  const int ins[kNumLoraModules] = {h, h, h, q, h, h, inter};
  const int outs[kNumLoraModules] = {q, kv, kv, h, inter, inter, h};
  for (int m = 0; m < kNumLoraModules; ++m) {
    in[m] = ins[m];
    out[m] = outs[m];
  }
}

LoraPool::LoraPool(const ModelConfig& c, int slots, int maxRank, uint32_t moduleMask)
    : layers_(c.numLayers), maxRank_(maxRank), moduleMask_(moduleMask), slots_(slots > 0 ? slots : 0) {
  loraModuleDims(c, in_, out_);
}

std::vector<char> checkAdapter(const AdapterWeights& ad, int slot, int slots, int maxRank, int layers,
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
  std::vector<char> seen(static_cast<size_t>(layers) * kNumLoraModules, 0);
  for (const auto& w : ad.weights) {
    const std::string name = "layer " + std::to_string(w.layer) + " " + kLoraModuleNames[w.module];
    if (w.layer < 0 || w.layer >= layers) {
      throw std::invalid_argument(where + "layer " + std::to_string(w.layer) + " is outside [0, " +
                                  std::to_string(layers) + ")");
    }
    if (!(moduleMask & (1u << w.module))) {
      throw std::invalid_argument(where + "the adapter targets " + kLoraModuleNames[w.module] +
                                  ", which the LoRA pool does not hold (see loraModules)");
    }
    const size_t aLen = static_cast<size_t>(ad.rank) * in[w.module];
    const size_t bLen = static_cast<size_t>(out[w.module]) * ad.rank;
    if (w.a.size != aLen) {
      throw std::invalid_argument(where + name + ": A has " + std::to_string(w.a.size) + " values, expected rank " +
                                  std::to_string(ad.rank) + " x " + std::to_string(in[w.module]));
    }
    if (w.b.size != bLen) {
      throw std::invalid_argument(where + name + ": B has " + std::to_string(w.b.size) + " values, expected " +
                                  std::to_string(out[w.module]) + " x rank " + std::to_string(ad.rank));
    }
    char& given = seen[static_cast<size_t>(w.layer) * kNumLoraModules + w.module];
    if (given) throw std::invalid_argument(where + name + " is given twice");
    given = 1;
  }
  return seen;
}

void LoraPool::load(int slot, const AdapterWeights& ad) {
  checkAdapter(ad, slot, slots(), maxRank_, layers_, moduleMask_, in_, out_);
  Slot s;
  s.loaded = true;
  s.rank = ad.rank;
  s.scaling = static_cast<float>(ad.scaling);
  s.factors.resize(static_cast<size_t>(layers_) * kNumLoraModules);
  for (const auto& w : ad.weights) {
    Factors& f = s.factors[static_cast<size_t>(w.layer) * kNumLoraModules + w.module];
    f.a.assign(w.a.data, w.a.data + w.a.size);
    f.b.assign(w.b.data, w.b.data + w.b.size);
  }
  slots_[slot] = std::move(s);
}

void LoraPool::clear(int slot) {
  if (slot < 0 || slot >= slots()) {
    throw std::invalid_argument("clearLoraSlot: slot " + std::to_string(slot) + " is outside [0, " +
                                std::to_string(slots()) + ")");
  }
  slots_[slot] = Slot{};
}

std::vector<bool> LoraPool::loadedSlots() const {
  std::vector<bool> out(slots_.size());
  for (size_t i = 0; i < slots_.size(); ++i) out[i] = slots_[i].loaded;
  return out;
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
    for (int i = 0; i < n; ++i) std::copy(x + g.tokens[i] * ldx, x + g.tokens[i] * ldx + in, xg.begin() + static_cast<size_t>(i) * in);
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
