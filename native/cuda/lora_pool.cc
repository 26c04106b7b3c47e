#include "cuda/lora_pool.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cuda/lora_fill.h"
#include "lora.h"

namespace troupe {
namespace cuda {

namespace {

// Host values go to the GPU through a staging buffer of this size: a few large copies per
// adapter, each followed by the conversions of the factors it carried.
constexpr size_t kStagingBytes = 32u << 20;
static_assert(kLoraMetaModules == kNumLoraModules, "LoraSlotMeta holds one rank per LoRA module");

int dtypeCode(DType d) { return d == DType::F32 ? 0 : d == DType::F16 ? 1 : 2; }

}  // namespace

GpuLoraPool::GpuLoraPool(const ModelConfig& c, int slots, int maxRank, uint32_t moduleMask, const GpuWeights& w,
                         const int* transposedSlots, int slotRank)
    : layers_(c.numLayers),
      slots_(slots),
      maxRank_(maxRank),
      slotRank_(slotRank > 0 ? slotRank : maxRank),
      mask_(moduleMask),
      spans_(slots, 0),
      table_(slots) {
  loraModuleDims(c, in_, out_);
  if (slotRank_ > maxRank_ || maxRank_ % slotRank_ != 0)
    throw std::invalid_argument("LoRA pool: slot rank " + std::to_string(slotRank_) + " does not divide max rank " +
                                std::to_string(maxRank_));
  a_.assign(static_cast<size_t>(layers_) * kNumLoraModules, nullptr);
  b_.assign(static_cast<size_t>(layers_) * kNumLoraModules, nullptr);
  bt_.assign(static_cast<size_t>(layers_) * kNumLoraModules, nullptr);
  // The first row of each module in its group's fused weight.
  int row0[kNumLoraModules] = {};
  for (int m = 1; m < kNumLoraModules; ++m)
    row0[m] = weightGroupOf(m) == weightGroupOf(m - 1) ? row0[m - 1] + out_[m - 1] : 0;
  for (int m = 0; m < kNumLoraModules; ++m) {
    const WeightGroup g = weightGroupOf(m);
    inWeights_[m] = w.pad[g] > 0;
    if (holds(static_cast<LoraModule>(m)) && inWeights_[m] &&
        w.pad[g] < loraPadColumns(g, slots_, slotRank_, mask_, w.splitRows[g]))
      throw std::logic_error("LoRA pool: the base weights have too few padding columns");
    // Only the padding columns run on from slot to slot: B's own [slots][out][maxRank] does not.
    if (holds(static_cast<LoraModule>(m)) && !inWeights_[m] && slotRank_ != maxRank_)
      throw std::logic_error("LoRA pool: slots of a rank below the max rank need B in the weights' padding");
    bLd_[m] = inWeights_[m] ? w.ld[g] : maxRank_;
    btSlots_[m] = transposedSlots && holds(static_cast<LoraModule>(m)) ? std::min(transposedSlots[m], slots_) : 0;
    bSlotStride_[m] = inWeights_[m] ? static_cast<size_t>(slotRank_) : static_cast<size_t>(out_[m]) * maxRank_;
  }
  auto alloc = [&](size_t n) {
    void* p = nullptr;
    if (cudaMalloc(&p, n * 2) != cudaSuccess) {
      cudaGetLastError();
      throw std::runtime_error("CUDA out of memory allocating the LoRA pool (" + std::to_string(slots_) +
                               " slots of rank " + std::to_string(slotRank_) + ")");
    }
    allocations_.push_back(p);
    bytes_ += n * 2;
    return static_cast<bf16_t*>(p);
  };
  // A slot's A rows for a group's held modules, one module after another.
  int heldInGroup[kNumWeightGroups] = {};
  for (int m = 0; m < kNumLoraModules; ++m)
    if (holds(static_cast<LoraModule>(m))) ++heldInGroup[weightGroupOf(m)];
  for (int m = 0; m < kNumLoraModules; ++m)
    aSlotStride_[m] = static_cast<size_t>(heldInGroup[weightGroupOf(m)]) * slotRank_ * in_[m];
  tail_.assign(static_cast<size_t>(layers_) * kNumWeightGroups, nullptr);
  for (int g = 0; g < kNumWeightGroups; ++g) {
    if (!w.tail[g]) continue;
    const int perSlot = heldInGroup[g] * slotRank_;
    if (perSlot == 0 || w.tail[g] % perSlot != 0 || w.tail[g] > slots_ * perSlot)
      throw std::logic_error("LoRA pool: the base weights' tail rows do not fit the pool's A rows");
    tailSlots_[g] = w.tail[g] / perSlot;
    int64_t rows = 0, in = 0;
    weightGroupShape(c, static_cast<WeightGroup>(g), rows, in);
    tailLd_[g] = w.ld[g];
    for (int l = 0; l < layers_; ++l)
      tail_[static_cast<size_t>(l) * kNumWeightGroups + g] =
          w.layers[l].matrix(static_cast<WeightGroup>(g)) + static_cast<size_t>(rows) * w.ld[g];
  }
  for (int l = 0; l < layers_; ++l) {
    // A group's held modules share one allocation, [slot][module][rank][in]: a prefill forms every
    // slot's shrink outputs for the group with one GEMM over it, and each chunk's outputs for its
    // slot's modules with one product that reads the chunk's rows once (backend_lora.cc).
    bf16_t* groupA[kNumWeightGroups] = {};
    for (int g = 0; g < kNumWeightGroups; ++g) {
      for (int m = 0; m < kNumLoraModules; ++m)
        if (weightGroupOf(m) == g && holds(static_cast<LoraModule>(m))) {
          // With slots of a lower rank, max rank / slot rank - 1 more slots' rows, zeroed: kernels
          // that read the max rank's rows from an adapter's first slot then stay inside it.
          const size_t slack = static_cast<size_t>(maxRank_ / slotRank_ - 1) * aSlotStride_[m];
          groupA[g] = alloc(static_cast<size_t>(slots_) * aSlotStride_[m] + slack);
          if (slack)
            check(cudaMemset(groupA[g] + static_cast<size_t>(slots_) * aSlotStride_[m], 0, slack * 2), "cudaMemset");
          break;
        }
    }
    for (int m = 0; m < kNumLoraModules; ++m) {
      if (!holds(static_cast<LoraModule>(m))) continue;
      const WeightGroup g = weightGroupOf(m);
      const size_t idx = static_cast<size_t>(l) * kNumLoraModules + m;
      a_[idx] = groupA[g] + static_cast<size_t>(loraColumnBlock(m, mask_)) * slotRank_ * in_[m];
      // With split rows each module's rows hold only their own block.
      const int block = w.splitRows[g] ? 0 : loraColumnBlock(m, mask_);
      b_[idx] = inWeights_[m] ? w.layers[l].matrix(g) + static_cast<size_t>(row0[m]) * bLd_[m] + (w.ld[g] - w.pad[g]) +
                                    static_cast<size_t>(block) * slots_ * slotRank_
                              : alloc(static_cast<size_t>(slots_) * out_[m] * maxRank_);
      if (btSlots_[m] > 0) bt_[idx] = alloc(static_cast<size_t>(btSlots_[m]) * slotRank_ * out_[m]);
    }
  }
  ranks_.ensure(static_cast<size_t>(slots_) * kNumLoraModules + 1);
  scaling_.ensure(static_cast<size_t>(slots_) + 1);
  check(cudaMemset(ranks_.get(), 0, ranks_.size() * 4), "cudaMemset");
  check(cudaMemset(scaling_.get(), 0, scaling_.size() * 4), "cudaMemset");
  staging_.ensure(kStagingBytes);
  bad_.ensure(1);
  badHost_.ensure(1);
  stream_ = createStream(StreamWork::kFill);
  ready_.resize(slots_);
  settled_ = std::make_unique<std::atomic<bool>[]>(slots_);
  for (auto& e : ready_) check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
  check(cudaDeviceSynchronize(), "LoRA pool setup");  // the memsets above ran on the legacy stream
}

GpuLoraPool::~GpuLoraPool() {
  if (stream_) cudaStreamSynchronize(stream_);
  for (auto& e : ready_) cudaEventDestroy(e);
  for (void* p : allocations_) cudaFree(p);
  if (stream_) cudaStreamDestroy(stream_);
}

void GpuLoraPool::load(int slot, const AdapterWeights& adapter) {
  AdapterWeights ad = adapter;
  const std::vector<char> seen = checkAdapter(ad, slot, slots_, maxRank_, slotRank_, layers_, mask_, in_, out_);
  // The run of slots it takes, and its ranks' width there: slots that no other adapter holds.
  const int span = loraSlotSpan(ad.rank, slotRank_), width = span * slotRank_;
  // A module the adapter targets must be targeted in every layer (the per-module rank is per
  // slot); a layer it skips gets zero factors, which add nothing.
  LoraSlotMeta meta{};
  meta.scaling = static_cast<float>(ad.scaling);
  for (int m = 0; m < kNumLoraModules; ++m) {
    for (int l = 0; l < layers_; ++l) {
      if (seen[static_cast<size_t>(l) * kNumLoraModules + m]) meta.ranks[m] = ad.rank;
    }
  }
  SlotTable::Writer writer = table_.write(slot);
  {
    std::lock_guard<std::mutex> lock(enqueueMu_);
    writer.dirty();
    // The slot's run is the new adapter's once the fill has succeeded; runs it overwrites are gone.
    for (int s = slot; s < slot + span; ++s) spans_[s] = 0;
    for (int l = 0; l < layers_; ++l) {
      for (int m = 0; m < kNumLoraModules; ++m) {
        const size_t idx = static_cast<size_t>(l) * kNumLoraModules + m;
        if (!meta.ranks[m] || seen[idx]) continue;
        // Both factors zeroed: never-written pool memory may hold NaN patterns, and NaN * 0 is NaN.
        for (int s = slot; s < slot + span; ++s)
          check(cudaMemsetAsync(a_[idx] + s * aSlotStride_[m], 0, static_cast<size_t>(slotRank_) * in_[m] * 2, stream_),
                "cudaMemsetAsync");
        check(cudaMemset2DAsync(b_[idx] + slot * bSlotStride_[m], static_cast<size_t>(bLd_[m]) * 2, 0,
                                static_cast<size_t>(inWeights_[m] ? width : maxRank_) * 2, out_[m], stream_),
              "cudaMemset2DAsync");
      }
    }
    check(cudaMemsetAsync(bad_.get(), 0, sizeof(int), stream_), "cudaMemsetAsync");
    enqueueFactors(slot, ad);
    // The transposed copies from B as written above (zeros where the adapter skips a layer).
    for (int l = 0; l < layers_; ++l)
      for (int m = 0; m < kNumLoraModules; ++m)
        if (slot + span <= btSlots_[m] && meta.ranks[m]) transposeB(l, m, slot, width);
    // What o's delta adds to gate/up's shrink through the norm, from the factors as written above.
    if (!normW_.empty() && meta.ranks[kO])
      for (int l = 0; l < layers_; ++l) {
        const LoraSlices gu = gateUpSlices(l);
        loraNormShrinkN(
            bt_[static_cast<size_t>(l) * kNumLoraModules + kO] + static_cast<size_t>(slot) * slotRank_ * out_[kO],
            normW_[l], gu.a[0] + slot * gu.aSlotStride[0], out_[kO], width, nsOutputs_,
            LoraRunRows{gu.count, slotRank_, maxRank_},
            normShrinkN_.get() + (static_cast<size_t>(l) * slots_ + slot) * slotRank_ * nsOutputs_, stream_);
      }
    // The tail rows' copy of the slot's A rows, as written above, a group's modules together.
    for (int l = 0; l < layers_; ++l)
      for (int m = 0; m < kNumLoraModules; ++m) copyTail(l, m, slot, span);
    check(cudaMemcpyAsync(badHost_.get(), bad_.get(), sizeof(int), cudaMemcpyDeviceToHost, stream_), "LoRA slot fill");
    setLoraSlotMeta(ranks_.get() + static_cast<size_t>(slot) * kNumLoraModules, scaling_.get() + slot, meta, stream_);
    // The run's other slots hold no adapter of their own: rank 0 makes every kernel skip them.
    for (int s = slot + 1; s < slot + span; ++s)
      setLoraSlotMeta(ranks_.get() + static_cast<size_t>(s) * kNumLoraModules, scaling_.get() + s, LoraSlotMeta{},
                      stream_);
    check(cudaGetLastError(), "LoRA slot fill launch");
    // The caller's host values (JS memory, or a host adapter it may free next) are read until
    // here, and the conversions' verdict is known only then: the slot is published after.
    check(cudaStreamSynchronize(stream_), "LoRA slot fill");
    if (*badHost_.get()) {
      // Dropped without commit, the writer leaves the slot empty; rank 0 makes any kernel skip it.
      setLoraSlotMeta(ranks_.get() + static_cast<size_t>(slot) * kNumLoraModules, scaling_.get() + slot, LoraSlotMeta{},
                      stream_);
      check(cudaStreamSynchronize(stream_), "LoRA slot fill");
      throw std::invalid_argument(
          "loadLoraSlot: the adapter holds NaN or Inf values (or values past bf16's range); "
          "slot " +
          std::to_string(slot) + " was left empty");
    }
    spans_[slot] = span;
    writer.commit(true, [&] { record(slot); });
  }
}

void GpuLoraPool::transposeB(int layer, int m, int slot, int width) {
  const size_t idx = static_cast<size_t>(layer) * kNumLoraModules + m;
  if (!bt_[idx]) return;  // a module the pool does not hold
  loraTransposeB(b_[idx] + slot * bSlotStride_[m], bLd_[m], out_[m], width,
                 bt_[idx] + static_cast<size_t>(slot) * slotRank_ * out_[m], stream_);
}

void GpuLoraPool::copyTail(int layer, int m, int slot, int count) {
  const WeightGroup g = weightGroupOf(m);
  bf16_t* tail = tail_[static_cast<size_t>(layer) * kNumWeightGroups + g];
  const size_t idx = static_cast<size_t>(layer) * kNumLoraModules + m;
  // Once a group: its first held module's A rows start the slot's rows of every held module. A
  // run's slots lie one after another in both places: one copy for those the tail rows hold.
  const int slots = std::min(count, tailSlots_[g] - slot);
  if (!tail || slots <= 0 || !holds(static_cast<LoraModule>(m)) || loraColumnBlock(m, mask_) != 0) return;
  const size_t rows = aSlotStride_[m] / in_[m];
  check(cudaMemcpy2DAsync(tail + slot * rows * tailLd_[g], static_cast<size_t>(tailLd_[g]) * 2,
                          a_[idx] + slot * aSlotStride_[m], static_cast<size_t>(in_[m]) * 2,
                          static_cast<size_t>(in_[m]) * 2, rows * slots, cudaMemcpyDeviceToDevice, stream_),
        "LoRA tail rows");
}

bool GpuLoraPool::keepNormShrink(const std::vector<const float*>& normW) {
  const LoraSlices gu = gateUpSlices(0);
  // n is made from o's transposed B at every slot's fill.
  if (!bt_[kO] || btSlots_[kO] < slots_ || gu.count == 0 || gu.in != out_[kO] ||
      static_cast<int>(normW.size()) != layers_)
    return false;
  nsOutputs_ = gu.count * maxRank_;
  normShrinkN_.ensure(static_cast<size_t>(layers_) * slots_ * slotRank_ * nsOutputs_);
  normW_ = normW;
  return true;
}

void GpuLoraPool::enqueueFactors(int slot, const AdapterWeights& ad) {
  struct Convert {
    size_t offset;  // in staging
    int dtype;
    int64_t rows, cols, srcPitch, col0;
    bf16_t* dst;
    int64_t dstPitch;
  };
  uint8_t* stage = staging_.get();
  std::vector<Convert> pending;
  const uint8_t* copyFrom = nullptr;  // the host bytes of the copy being gathered
  size_t copyLen = 0, copyAt = 0, used = 0;
  auto flushCopy = [&] {
    if (copyLen)
      check(cudaMemcpyAsync(stage + copyAt, copyFrom, copyLen, cudaMemcpyHostToDevice, stream_), "LoRA upload");
    copyLen = 0;
  };
  auto flushChunk = [&] {
    flushCopy();
    for (const Convert& c : pending)
      loraFactorToBf16(stage + c.offset, c.dtype, c.rows, c.cols, c.srcPitch, c.col0, c.dst, c.dstPitch, bad_.get(),
                       stream_);
    pending.clear();
    used = 0;
  };
  // Whole rows [row0, row0 + rows) of v go to staging (host bytes that follow the previous
  // piece's extend its copy); the kernel picks the slice's columns out of them.
  auto add = [&](const FactorView& v, int64_t row0, int64_t rows, bf16_t* dst, int64_t dstPitch) {
    const uint8_t* src = v.at(row0, 0);
    const size_t bytes = static_cast<size_t>(rows * v.cols) * v.elemBytes();
    size_t at;
    if (copyLen && src == copyFrom + copyLen && copyAt + copyLen + bytes <= kStagingBytes) {
      at = copyAt + copyLen;
      copyLen += bytes;
    } else {
      // Same address modulo 16 as the host bytes, so aligned values stay aligned.
      const size_t skew = reinterpret_cast<uintptr_t>(src) % 16;
      at = (used + 15) / 16 * 16 + skew;
      if (at + bytes > kStagingBytes) {
        flushChunk();
        at = skew;
      }
      flushCopy();
      copyFrom = src;
      copyLen = bytes;
      copyAt = at;
    }
    used = at + bytes;
    pending.push_back(Convert{at, dtypeCode(v.dtype), rows, v.takeCols, v.cols, v.col0, dst, dstPitch});
  };
  auto factor = [&](const FactorView& v, bf16_t* dst, int64_t dstPitch) {
    const size_t rowBytes = static_cast<size_t>(v.cols) * v.elemBytes();
    const int64_t perPiece = static_cast<int64_t>((kStagingBytes - 16) / rowBytes);
    if (perPiece < 1)
      throw std::invalid_argument("loadLoraSlot: a factor row of " + std::to_string(rowBytes) +
                                  " bytes exceeds the staging buffer");
    for (int64_t r = 0; r < v.takeRows; r += perPiece) {
      add(v, v.row0 + r, std::min(perPiece, v.takeRows - r), dst + r * dstPitch, dstPitch);
    }
  };
  for (const auto& w : ad.weights) {
    const int m = w.module;
    const size_t idx = static_cast<size_t>(w.layer) * kNumLoraModules + m;
    // A's rows go slotRank at a time to the run's slots, one after another (lora_runs.h); B's
    // columns run on from slot to slot.
    for (int64_t r = 0; r < w.a.takeRows; r += slotRank_) {
      FactorView rows = w.a;
      rows.row0 = w.a.row0 + r;
      rows.takeRows = std::min<int64_t>(slotRank_, w.a.takeRows - r);
      factor(rows, a_[idx] + (slot + r / slotRank_) * aSlotStride_[m], in_[m]);
    }
    factor(w.b, b_[idx] + slot * bSlotStride_[m], bLd_[m]);
  }
  flushChunk();
}

void GpuLoraPool::clear(int slot) {
  if (slot < 0 || slot >= slots_) {
    throw std::invalid_argument("clearLoraSlot: slot " + std::to_string(slot) + " is outside [0, " +
                                std::to_string(slots_) + ")");
  }
  SlotTable::Writer writer = table_.write(slot);
  std::lock_guard<std::mutex> lock(enqueueMu_);
  writer.dirty();
  // Rank 0 everywhere: the kernels skip the slot. Its factors stay until the next fill.
  setLoraSlotMeta(ranks_.get() + static_cast<size_t>(slot) * kNumLoraModules, scaling_.get() + slot, LoraSlotMeta{},
                  stream_);
  check(cudaGetLastError(), "LoRA slot clear launch");
  spans_[slot] = 0;
  writer.commit(false, [&] { record(slot); });
}

std::vector<GpuLoraPool::Region> GpuLoraPool::regions(int slot, int other) const {
  std::vector<Region> out;
  auto add = [&](const void* base, size_t pitch, size_t width, size_t rows) {
    out.push_back(Region{static_cast<uint8_t*>(const_cast<void*>(base)), pitch, width, rows});
  };
  for (int l = 0; l < layers_; ++l) {
    for (int m = 0; m < kNumLoraModules; ++m) {
      if (!holds(static_cast<LoraModule>(m))) continue;
      const size_t idx = static_cast<size_t>(l) * kNumLoraModules + m;
      const size_t inBytes = static_cast<size_t>(in_[m]) * 2;
      add(a_[idx] + slot * aSlotStride_[m], inBytes, inBytes, slotRank_);
      const int bWidth = inWeights_[m] ? slotRank_ : maxRank_;
      add(b_[idx] + slot * bSlotStride_[m], static_cast<size_t>(bLd_[m]) * 2, static_cast<size_t>(bWidth) * 2, out_[m]);
      if (bt_[idx] && std::max(slot, other) < btSlots_[m]) {
        const size_t outBytes = static_cast<size_t>(out_[m]) * 2;
        add(bt_[idx] + static_cast<size_t>(slot) * slotRank_ * out_[m], outBytes, outBytes, slotRank_);
      }
      const WeightGroup g = weightGroupOf(m);
      const bf16_t* tail = tail_[static_cast<size_t>(l) * kNumWeightGroups + g];
      if (tail && loraColumnBlock(m, mask_) == 0 && std::max(slot, other) < tailSlots_[g]) {
        const size_t rows = aSlotStride_[m] / in_[m];
        add(tail + slot * rows * tailLd_[g], static_cast<size_t>(tailLd_[g]) * 2, inBytes, rows);
      }
    }
    if (!normW_.empty()) {
      const size_t bytes = static_cast<size_t>(slotRank_) * nsOutputs_ * 4;
      add(normShrinkN_.get() + (static_cast<size_t>(l) * slots_ + slot) * slotRank_ * nsOutputs_, bytes, bytes, 1);
    }
  }
  add(ranks_.get() + static_cast<size_t>(slot) * kNumLoraModules, kNumLoraModules * 4, kNumLoraModules * 4, 1);
  add(scaling_.get() + slot, 4, 4, 1);
  return out;
}

void GpuLoraPool::swap(int a, int b) {
  checkSwap(a, b, slots_);
  // The runs of the larger of the two adapters' spans (an empty slot's is 0), whole and apart.
  const int span = std::max({spans_[a], spans_[b], 1});
  if (a % span != 0 || b % span != 0 || std::max(a, b) + span > slots_ || (a < b ? b - a : a - b) < span)
    throw std::invalid_argument("swapLoraSlots: runs of " + std::to_string(span) + " slots from " + std::to_string(a) +
                                " and " + std::to_string(b) + " are not two whole runs of the pool's " +
                                std::to_string(slots_) + " slots");
  auto writers = table_.writePair(a, b);
  std::lock_guard<std::mutex> lock(enqueueMu_);
  writers.first.dirty();
  writers.second.dirty();
  // One table of the two runs' pieces, side by side, exchanged by one launch: a copy a piece
  // (a few thousand for an 8B model) would cost more in calls than the bytes take to move.
  std::vector<Region> ra, rb;
  for (int i = 0; i < span; ++i) {
    const std::vector<Region> x = regions(a + i, b + i), y = regions(b + i, a + i);
    ra.insert(ra.end(), x.begin(), x.end());
    rb.insert(rb.end(), y.begin(), y.end());
  }
  std::vector<SwapRegion> table;
  table.reserve(ra.size());
  for (size_t i = 0; i < ra.size(); ++i) {
    const Region& x = ra[i];
    const Region& y = rb[i];
    const uintptr_t bits = reinterpret_cast<uintptr_t>(x.at) | reinterpret_cast<uintptr_t>(y.at) | x.pitch | x.width;
    const uint32_t unit = bits % 16 == 0 ? 16 : bits % 4 == 0 ? 4 : 2;
    table.push_back(SwapRegion{x.at, y.at, x.pitch, x.width, x.rows, unit});
  }
  const size_t bytes = table.size() * sizeof(SwapRegion);
  if (bytes > kStagingBytes) throw std::logic_error("swapLoraSlots: the slot's pieces exceed the staging buffer");
  check(cudaMemcpyAsync(staging_.get(), table.data(), bytes, cudaMemcpyHostToDevice, stream_), "LoRA slot swap");
  loraSwapRegions(reinterpret_cast<const SwapRegion*>(staging_.get()), static_cast<int>(table.size()), stream_);
  check(cudaGetLastError(), "LoRA slot swap launch");
  // A run that keeps a transposed copy of B, or a slot that keeps tail rows, which the other does
  // not: made again from the factors it received (its rank may be 0 there, where no kernel reads
  // them). The tail rows were swapped slot by slot where both slots keep them (regions).
  for (int l = 0; l < layers_; ++l)
    for (int m = 0; m < kNumLoraModules; ++m) {
      for (int s : {a, b})
        if (s + span <= btSlots_[m] && std::max(a, b) + span > btSlots_[m]) transposeB(l, m, s, span * slotRank_);
      const int tailSlots = tailSlots_[weightGroupOf(m)];
      for (int i = 0; i < span; ++i)
        for (int s : {a + i, b + i})
          if (s < tailSlots && std::max(a, b) + i >= tailSlots) copyTail(l, m, s, 1);
    }
  check(cudaGetLastError(), "LoRA slot swap transposes");
  check(cudaStreamSynchronize(stream_), "LoRA slot swap");
  for (int i = 0; i < span; ++i) std::swap(spans_[a + i], spans_[b + i]);
  const bool aHeld = writers.first.wasLoaded(), bHeld = writers.second.wasLoaded();
  writers.first.commit(bHeld, [&] { record(a); });
  writers.second.commit(aHeld, [&] { record(b); });
}

void GpuLoraPool::record(int slot) {
  settled_[slot].store(false);
  check(cudaEventRecord(ready_[slot], stream_), "cudaEventRecord");
}

void GpuLoraPool::waitFor(int slot, cudaStream_t stream) const {
  // A slot's write is not recorded again while a step holds it (SlotTable), so once its event has
  // completed the step's stream has nothing of it to wait for.
  if (settled_[slot].load()) return;
  const cudaError_t state = cudaEventQuery(ready_[slot]);
  if (state == cudaSuccess) {
    settled_[slot].store(true);
    return;
  }
  // Not ready is not a failure, but the runtime may keep it as the thread's last error, which
  // the next launch's check would report.
  if (state == cudaErrorNotReady) (void)cudaGetLastError();
  check(cudaStreamWaitEvent(stream, ready_[slot], 0), "cudaStreamWaitEvent");
}

LoraSlices GpuLoraPool::slices(int layer, std::initializer_list<LoraModule> modules, const int* outOffsets) const {
  LoraSlices s;
  int k = 0;
  for (LoraModule m : modules) {
    const int offset = outOffsets[k++];
    if (!holds(m)) continue;
    const size_t idx = static_cast<size_t>(layer) * kNumLoraModules + m;
    s.in = in_[m];
    s.maxRank = maxRank_;
    s.slotRank = slotRank_;
    s.a[s.count] = a_[idx];
    s.b[s.count] = b_[idx];
    s.aSlotStride[s.count] = aSlotStride_[m];
    s.bSlotStride[s.count] = bSlotStride_[m];
    s.bLd[s.count] = bLd_[m];
    s.out[s.count] = out_[m];
    s.outOffset[s.count] = offset;
    s.module[s.count] = m;
    ++s.count;
  }
  return s;
}

}  // namespace cuda
}  // namespace troupe
