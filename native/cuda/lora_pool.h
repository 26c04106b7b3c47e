// The LoRA pool on the GPU: per layer and targeted module, each slot's A [slotRank][in] in bf16 (a
// group's modules in one allocation, [slot][module][slotRank][in], which a prefill's shrink reads
// as one matrix), and B either in the padding columns of the base weight, where the fused kernel
// reads it (lora_fused.h: slot k's [out][slotRank] at column in + j S U + k U of the module's rows,
// in + k U with split rows, U the slot rank), or, when the weights have no padding, in its own
// [slots][out][maxRank]; plus each slot's rank per module and scaling. An adapter of rank r takes
// loraSlotSpan(r, U) slots from its own (lora.h): its rank row q lies in slot k + q / U at q % U
// (loraSlotRow), so its B columns and its transposed B rows run on from slot to slot, and its
// first slot holds its ranks and scaling (the others' are 0). Without a slot rank below the max
// rank, every adapter takes one slot. Where the weights have tail rows for a group
// (GpuWeights::tail), each slot's A rows of the group are copied there too, [slot][module][maxRank]
// rows after the base rows, at the weight's pitch. Nothing here moves after construction, so
// captured CUDA graphs keep reading the right memory whatever is filled. A slot is filled on the
// pool's own stream: the host values (page-locked when they come from a host adapter) are copied in
// large pieces to a device staging buffer and converted to bf16 there, and the slot's event is
// recorded. The slot table lets steps that do not use the slot run meanwhile; a step that uses it
// makes its stream wait for that event.
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <vector>

#include "backend.h"
#include "cuda/device.h"
#include "cuda/lora_kernels.h"
#include "cuda/weights.h"
#include "slot_table.h"

namespace troupe {
namespace cuda {

class GpuLoraPool {
 public:
  // weights: outlive the pool; where a group has padding columns, enough for these slots, ranks
  // and modules (loraPadColumns), and the pool keeps that group's B factors there; where a group
  // has tail rows, the first tail / (held modules x slotRank) slots keep their A rows there too.
  // transposedSlots[m] (none if null): how many of the first slots also keep module m's B as
  // [slotRank][out] a slot (bTransposed); the kernels that read it read only steps whose slots lie
  // there. slotRank: ranks a slot (0: maxRank); below maxRank only with B in the weights' padding.
  GpuLoraPool(const ModelConfig& c, int slots, int maxRank, uint32_t moduleMask, const GpuWeights& weights,
              const int* transposedSlots = nullptr, int slotRank = 0);
  ~GpuLoraPool();
  GpuLoraPool(const GpuLoraPool&) = delete;
  GpuLoraPool& operator=(const GpuLoraPool&) = delete;

  // Both run on the caller's thread with the pool's device current, beside steps (see
  // SlotTable), and return once the slot's copies are done, so the host values may go.
  void load(int slot, const AdapterWeights& adapter);
  void clear(int slot);
  // Exchanges two runs of slots (the larger span of the adapters at a and b) inside device memory:
  // their factors, ranks and scaling, in one launch.
  void swap(int a, int b);
  SlotTable& table() { return table_; }
  // Makes `stream` wait for the last write of `slot`; the caller holds a lease on the slot.
  void waitFor(int slot, cudaStream_t stream) const;

  int slots() const { return slots_; }
  int maxRank() const { return maxRank_; }
  int slotRank() const { return slotRank_; }
  // The slots the adapter in `slot` takes (0 for an empty slot); read by a step while it holds a
  // lease on the slot, which keeps fills and swaps of it away.
  int span(int slot) const { return spans_[slot]; }
  bool holds(LoraModule m) const { return (mask_ >> m) & 1u; }
  // The slices of one fused projection at `layer` (modules not held are left out).
  LoraSlices slices(int layer, std::initializer_list<LoraModule> modules, const int* outOffsets) const;
  // Module m's B at `layer` as [slot][slotRank][out] (a rank's outputs contiguous) for the first
  // transposedSlots(m) slots, where the pool was asked to keep it; else nullptr.
  const bf16_t* bTransposed(int layer, LoraModule m) const {
    return bt_[static_cast<size_t>(layer) * kNumLoraModules + m];
  }
  int transposedSlots(LoraModule m) const { return btSlots_[m]; }
  // The first slots whose A rows group g's tail rows hold (0 without tail rows).
  int tailSlots(WeightGroup g) const { return tailSlots_[g]; }
  // Keeps, at each fill, what o's delta adds through the norm after it to gate/up's shrink
  // (rmsnorm_delta.h's NormShrinkColumns): per layer and slot n = B_o^T diag(w) A^T,
  // [slot][slotRank][outputs] for gate/up's held modules' A rows (outputs of them, maxRank each:
  // an adapter's rows run on from slot to slot, as its transposed B's do).
  // normW: each layer's weights of that norm. Needs o's B kept transposed and gate or up held;
  // call it before the first fill. Returns whether it is kept.
  bool keepNormShrink(const std::vector<const float*>& normW);
  // Layer l's gate/up slices, whose shrink keepNormShrink's n serves.
  LoraSlices gateUpSlices(int layer) const {
    const int zero[2] = {0, 0};
    return slices(layer, {kGate, kUp}, zero);
  }
  // Layer l's n for every slot, or nullptr where it is not kept.
  const float* normShrinkN(int layer) const {
    return normW_.empty() ? nullptr : normShrinkN_.get() + static_cast<size_t>(layer) * slots_ * slotRank_ * nsOutputs_;
  }
  const int32_t* ranks() const { return ranks_.get(); }
  const float* scaling() const { return scaling_.get(); }
  size_t bytes() const { return bytes_; }

 private:
  // Records ready_[slot] after the slot's write on the fill stream.
  void record(int slot);
  // One piece of a slot's memory: `rows` rows of `width` bytes, `pitch` bytes apart.
  struct Region {
    uint8_t* at;
    size_t pitch, width, rows;
  };
  // Every piece of `slot`'s memory, in the same order for every slot; the transposed copies of B
  // only where `other` has them too (slot and other both below transposedSlots).
  std::vector<Region> regions(int slot, int other) const;
  // Module m's transposed copy of the run of `width` ranks from `slot`'s B, made from B as it is in
  // the pool (fill stream).
  void transposeB(int layer, int m, int slot, int width);
  // The tail rows' copy of module m's group's A rows of the `count` slots from `slot` (those of them
  // that the tail rows hold), from A as it is in the pool.
  void copyTail(int layer, int m, int slot, int count);
  // Enqueues the copies and conversions of the adapter's factors into `slot` (enqueueMu_ held).
  void enqueueFactors(int slot, const AdapterWeights& adapter);

  int layers_, slots_, maxRank_, slotRank_;
  uint32_t mask_;
  int in_[kNumLoraModules], out_[kNumLoraModules];
  std::vector<bf16_t*> a_, b_;            // [layer * 7 + module]; b_: slot 0's first column in the weight
  std::vector<bf16_t*> bt_;               // [layer * 7 + module]: bTransposed's, or nullptr
  int btSlots_[kNumLoraModules] = {};     // the slots that keep bt_'s copy, per module
  int tailSlots_[kNumWeightGroups] = {};  // the slots whose A rows tail_ holds, per group
  std::vector<bf16_t*> tail_;             // [layer * 4 + group]: the weight's tail rows, or nullptr
  int tailLd_[kNumWeightGroups] = {};
  size_t aSlotStride_[kNumLoraModules] = {};  // from one slot's A rows of a module to the next slot's
  bool inWeights_[kNumLoraModules] = {};      // B in the base weight's padding columns
  int bLd_[kNumLoraModules] = {};             // B's row pitch
  size_t bSlotStride_[kNumLoraModules] = {};
  std::vector<const float*> normW_;  // keepNormShrink's
  int nsOutputs_ = 0;
  DeviceBuffer<float> normShrinkN_;  // [layer][slot][slotRank][nsOutputs_]
  // Per slot: the slots its adapter takes, 0 when empty. The scheduler places the runs (an evicted
  // adapter's run stays until a fill or a move overwrites it), so a fill or a move here only checks
  // alignment and bounds; written under enqueueMu_ by fills and moves, read by steps for slots they lease.
  std::vector<int> spans_;
  DeviceBuffer<int32_t> ranks_;  // [slot * 7 + module]
  DeviceBuffer<float> scaling_;  // [slot]
  cudaStream_t stream_ = nullptr;
  std::vector<cudaEvent_t> ready_;  // per slot: its last write
  // Per slot: ready_ is known to have completed since its last record, so a step need not make
  // its stream wait on it (each wait is a driver call before the step's launch).
  std::unique_ptr<std::atomic<bool>[]> settled_;
  // Fills of different slots share the staging buffer; the stream orders their GPU work, this
  // lock the host side that lays it out.
  std::mutex enqueueMu_;
  DeviceBuffer<uint8_t> staging_;
  DeviceBuffer<int> bad_;  // set by a fill's conversions on a non-finite value
  PinnedBuffer<int> badHost_;
  size_t bytes_ = 0;
  std::vector<void*> allocations_;
  SlotTable table_;
};

}  // namespace cuda
}  // namespace troupe
