// The LoRA pool: loraSlots slots; an adapter's A and B for every layer and module it targets, at
// its own rank (at most maxLoraRank), sit in its first slot, and the rest of the slots its rank
// takes (loraSlotSpan) stay empty.
#pragma once

#include <vector>

#include "backend.h"
#include "slot_table.h"

namespace troupe {

// Tokens of one step grouped by the pool slot their sequence uses.
struct SlotGroup {
  int slot;
  std::vector<int> tokens;
};

// Input and output features of each LoRA module of the model (the shapes of its A and B).
void loraModuleDims(const ModelConfig& config, int* in, int* out);

// Checks an adapter against a pool of `slots` slots (max rank, layers, held modules, and the
// in/out sizes per module, which each factor's slice must have) before slot `slot` takes it, and
// gives flat factors their shape; throws std::invalid_argument naming the problem. Returns, per
// layer * kNumLoraModules + module, whether the adapter gives that factor.
std::vector<char> checkAdapter(AdapterWeights& adapter, int slot, int slots, int maxRank, int slotRank, int layers,
                               uint32_t moduleMask, const int* in, const int* out);

// The consecutive slots an adapter of `rank` takes in a pool of `slotRank` ranks a slot: the
// least power of two of them that holds its rank (src/engine/lora-slots.ts). checkAdapter wants
// its first slot a multiple of that power.
int loraSlotSpan(int rank, int slotRank);

// Throws std::invalid_argument unless a and b are distinct slots of a pool of `slots`.
void checkSwap(int a, int b, int slots);

// The factor's slice as float32, row-major (takeRows x takeCols); widening bf16 and f16 is exact.
void factorToFloat(const FactorView& v, float* dst);

class LoraPool {
 public:
  // slotRank: ranks a slot (0: maxRank); an adapter takes loraSlotSpan(rank, slotRank) slots.
  LoraPool(const ModelConfig& config, int slots, int maxRank, uint32_t moduleMask, int slotRank = 0);

  // Safe beside a step (see SlotTable): the new values are built while steps that use other
  // slots run.
  void load(int slot, const AdapterWeights& adapter);
  void clear(int slot);
  void swap(int a, int b);
  SlotTable& table() { return table_; }
  int slots() const { return static_cast<int>(slots_.size()); }
  int slotRank() const { return slotRank_; }

  // y[t] += scaling * B (A x[t]) for every token t of every group whose slot targets module m.
  // The caller holds a lease on the groups' slots.
  void apply(int layer, LoraModule m, const float* x, size_t ldx, float* y, size_t ldy,
             const std::vector<SlotGroup>& groups, int threads) const;

  int inDim(LoraModule m) const { return in_[m]; }
  int outDim(LoraModule m) const { return out_[m]; }

 private:
  struct Factors {
    std::vector<float> a;  // rank x in
    std::vector<float> b;  // out x rank
  };
  struct Slot {
    int rank = 0;
    float scaling = 0;
    std::vector<Factors> factors;  // layer * kNumLoraModules + module; empty a = not targeted
  };

  int layers_;
  int maxRank_;
  int slotRank_;  // ranks a slot (loraSlotSpan)
  uint32_t moduleMask_;
  int in_[kNumLoraModules];
  int out_[kNumLoraModules];
  std::vector<Slot> slots_;  // slot s is written only by the holder of table_.write(s)
  SlotTable table_;
};

}  // namespace troupe
