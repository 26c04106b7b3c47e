#include "cuda/lora_pool.h"

#include <cstring>
#include <stdexcept>
#include <string>

#include "lora.h"

namespace troupe {
namespace cuda {

namespace {

uint16_t toBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

}  // namespace

GpuLoraPool::GpuLoraPool(const ModelConfig& c, int slots, int maxRank, uint32_t moduleMask)
    : layers_(c.numLayers), slots_(slots), maxRank_(maxRank), mask_(moduleMask) {
  loraModuleDims(c, in_, out_);
  a_.assign(static_cast<size_t>(layers_) * kNumLoraModules, nullptr);
  b_.assign(static_cast<size_t>(layers_) * kNumLoraModules, nullptr);
  for (int l = 0; l < layers_; ++l) {
    for (int m = 0; m < kNumLoraModules; ++m) {
      if (!holds(static_cast<LoraModule>(m))) continue;
      for (int ab = 0; ab < 2; ++ab) {
        const size_t n = static_cast<size_t>(slots_) * maxRank_ * (ab == 0 ? in_[m] : out_[m]);
        void* p = nullptr;
        if (cudaMalloc(&p, n * 2) != cudaSuccess) {
          cudaGetLastError();
          throw std::runtime_error("CUDA out of memory allocating the LoRA pool (" + std::to_string(slots_) +
                                   " slots, max rank " + std::to_string(maxRank_) + ")");
        }
        allocations_.push_back(p);
        bytes_ += n * 2;
        (ab == 0 ? a_ : b_)[static_cast<size_t>(l) * kNumLoraModules + m] = static_cast<bf16_t*>(p);
      }
    }
  }
  ranks_.ensure(static_cast<size_t>(slots_) * kNumLoraModules + 1);
  scaling_.ensure(static_cast<size_t>(slots_) + 1);
  hostRanks_.assign(static_cast<size_t>(slots_) * kNumLoraModules, 0);
  hostScaling_.assign(slots_, 0.0f);
  check(cudaMemset(ranks_.get(), 0, ranks_.size() * 4), "cudaMemset");
  check(cudaMemset(scaling_.get(), 0, scaling_.size() * 4), "cudaMemset");
  check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  ready_.resize(slots_);
  for (auto& e : ready_) check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
  check(cudaEventCreateWithFlags(&stagingFree_, cudaEventDisableTiming), "cudaEventCreate");
  metaStaging_.ensure(static_cast<size_t>(slots_) * (kNumLoraModules + 1));
}

GpuLoraPool::~GpuLoraPool() {
  if (stream_) cudaStreamSynchronize(stream_);
  for (auto& e : ready_) cudaEventDestroy(e);
  if (stagingFree_) cudaEventDestroy(stagingFree_);
  for (void* p : allocations_) cudaFree(p);
  if (stream_) cudaStreamDestroy(stream_);
}

void GpuLoraPool::load(int slot, const AdapterWeights& ad) {
  const std::vector<char> seen = checkAdapter(ad, slot, slots_, maxRank_, layers_, mask_, in_, out_);
  const int r = ad.rank;
  size_t total = 0;
  for (const auto& w : ad.weights) total += w.a.size + w.b.size;
  // A module the adapter targets must be targeted in every layer (the per-module rank is per
  // slot); a layer it skips gets zero factors, which add nothing.
  int moduleRank[kNumLoraModules] = {0};
  for (int m = 0; m < kNumLoraModules; ++m) {
    for (int l = 0; l < layers_; ++l) {
      if (seen[static_cast<size_t>(l) * kNumLoraModules + m]) moduleRank[m] = r;
    }
  }
  // The previous load's copies must be done with the staging buffer before it is refilled.
  check(cudaEventSynchronize(stagingFree_), "cudaEventSynchronize");
  staging_.ensure(total + 1);
  uint16_t* st = staging_.get();
  size_t off = 0;
  check(cudaStreamWaitEvent(stream_, ready_[slot], 0), "cudaStreamWaitEvent");
  for (int l = 0; l < layers_; ++l) {
    for (int m = 0; m < kNumLoraModules; ++m) {
      if (!moduleRank[m]) continue;
      const size_t idx = static_cast<size_t>(l) * kNumLoraModules + m;
      if (seen[idx]) continue;
      // Both factors zeroed: never-written pool memory may hold NaN patterns, and NaN * 0 is NaN.
      check(cudaMemsetAsync(a_[idx] + static_cast<size_t>(slot) * maxRank_ * in_[m], 0,
                            static_cast<size_t>(maxRank_) * in_[m] * 2, stream_),
            "cudaMemsetAsync");
      check(cudaMemsetAsync(b_[idx] + static_cast<size_t>(slot) * out_[m] * maxRank_, 0,
                            static_cast<size_t>(out_[m]) * maxRank_ * 2, stream_),
            "cudaMemsetAsync");
    }
  }
  for (const auto& w : ad.weights) {
    const int m = w.module;
    const size_t idx = static_cast<size_t>(w.layer) * kNumLoraModules + m;
    bf16_t* aDst = a_[idx] + static_cast<size_t>(slot) * maxRank_ * in_[m];
    bf16_t* bDst = b_[idx] + static_cast<size_t>(slot) * out_[m] * maxRank_;
    uint16_t* aSrc = st + off;
    for (size_t i = 0; i < w.a.size; ++i) aSrc[i] = toBf16(w.a[i]);
    off += w.a.size;
    uint16_t* bSrc = st + off;
    for (size_t i = 0; i < w.b.size; ++i) bSrc[i] = toBf16(w.b[i]);
    off += w.b.size;
    check(cudaMemcpyAsync(aDst, aSrc, w.a.size * 2, cudaMemcpyHostToDevice, stream_), "LoRA upload");
    check(cudaMemcpy2DAsync(bDst, static_cast<size_t>(maxRank_) * 2, bSrc, static_cast<size_t>(r) * 2,
                            static_cast<size_t>(r) * 2, out_[m], cudaMemcpyHostToDevice, stream_),
          "LoRA upload");
  }
  for (int m = 0; m < kNumLoraModules; ++m) hostRanks_[static_cast<size_t>(slot) * kNumLoraModules + m] = moduleRank[m];
  hostScaling_[slot] = static_cast<float>(ad.scaling);
  int32_t* meta = metaStaging_.get() + static_cast<size_t>(slot) * (kNumLoraModules + 1);
  std::memcpy(meta, hostRanks_.data() + static_cast<size_t>(slot) * kNumLoraModules, kNumLoraModules * 4);
  std::memcpy(meta + kNumLoraModules, &hostScaling_[slot], 4);
  check(cudaMemcpyAsync(ranks_.get() + static_cast<size_t>(slot) * kNumLoraModules, meta, kNumLoraModules * 4,
                        cudaMemcpyHostToDevice, stream_),
        "LoRA upload");
  check(cudaMemcpyAsync(scaling_.get() + slot, meta + kNumLoraModules, 4, cudaMemcpyHostToDevice, stream_),
        "LoRA upload");
  check(cudaEventRecord(ready_[slot], stream_), "cudaEventRecord");
  check(cudaEventRecord(stagingFree_, stream_), "cudaEventRecord");
}

void GpuLoraPool::clear(int slot) {
  if (slot < 0 || slot >= slots_) {
    throw std::invalid_argument("clearLoraSlot: slot " + std::to_string(slot) + " is outside [0, " +
                                std::to_string(slots_) + ")");
  }
  check(cudaEventSynchronize(ready_[slot]), "cudaEventSynchronize");
  for (int m = 0; m < kNumLoraModules; ++m) hostRanks_[static_cast<size_t>(slot) * kNumLoraModules + m] = 0;
  check(cudaMemset(ranks_.get() + static_cast<size_t>(slot) * kNumLoraModules, 0, kNumLoraModules * 4), "cudaMemset");
}

void GpuLoraPool::waitFor(int slot, cudaStream_t stream) const {
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
    s.a[s.count] = a_[idx];
    s.b[s.count] = b_[idx];
    s.aSlotStride[s.count] = static_cast<size_t>(maxRank_) * in_[m];
    s.bSlotStride[s.count] = static_cast<size_t>(out_[m]) * maxRank_;
    s.out[s.count] = out_[m];
    s.outOffset[s.count] = offset;
    s.module[s.count] = m;
    ++s.count;
  }
  return s;
}

}  // namespace cuda
}  // namespace troupe
