#include "cuda/sample_table.h"

#include <algorithm>
#include <stdexcept>

#include "sampling.h"

namespace troupe {
namespace cuda {

namespace {

// Copies v to d (grown to fit; its old values need not stay) on stream s. From pageable memory:
// cudaMemcpyAsync has read v by the time it returns, so v may change after.
template <class T>
void send(DeviceBuffer<T>& d, const std::vector<T>& v, cudaStream_t s) {
  d.ensure(v.size());
  check(cudaMemcpyAsync(d.get(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice, s), "sampling upload");
}

}  // namespace

void SampleTable::updated(const SeqUpdate& u) {
  for (size_t k = 0; k < u.slots.size; ++k) {
    const size_t s = static_cast<size_t>(u.slots[k]);
    if (s < slots_.size()) slots_[s].stored = false;
  }
}

void SampleTable::begin() {
  stagedSlots_.clear();
  stagedRows_.clear();
  clearRows_.clear();
  countEntries_.clear();
}

int32_t SampleTable::takeCountRow(Slot& s) {
  if (s.countRow >= 0) return s.countRow;
  if (!freeRows_.empty()) {
    s.countRow = freeRows_.back();
    freeRows_.pop_back();
    return s.countRow;
  }
  const size_t rowValues = static_cast<size_t>(vocab_);
  if (static_cast<size_t>(countRows_ + 1) * rowValues > counts_.size()) {
    // Doubling: a sequence's first penalized step rarely pays for a copy of the others' rows.
    const size_t rows = std::max<size_t>(8, 2 * static_cast<size_t>(countRows_));
    try {
      counts_.grow(rows * rowValues, static_cast<size_t>(countRows_) * rowValues, stream_);
    } catch (const std::runtime_error&) {
      return -1;  // its penalties come from its token list, as a per-row step sends them
    }
  }
  s.countRow = countRows_++;
  return s.countRow;
}

int32_t SampleTable::prepare(const StepBatch& b, size_t i, const SampleRow& row) {
  const int32_t slot = b.seqSlots[i];
  if (static_cast<size_t>(slot) >= slots_.size()) slots_.resize(static_cast<size_t>(slot) + 1);
  Slot& s = slots_[static_cast<size_t>(slot)];
  if (s.stored) return s.countRow;
  const Penalties pen = penaltiesOf(b, i);
  if (pen.active()) {
    if (takeCountRow(s) >= 0) {
      // Its counts from the engine's (the prompt's and generated tokens'), over a cleared row.
      clearRows_.push_back(s.countRow);
      for (int j = 0; j < pen.uniqueCount; ++j)
        if (pen.unique[j] >= 0 && pen.unique[j] < vocab_)
          countEntries_.push_back(int3{s.countRow, pen.unique[j], 1 + 2 * pen.generatedCounts[j]});
    }
  } else if (s.countRow >= 0) {
    freeRows_.push_back(s.countRow);
    s.countRow = -1;
  }
  SampleRow stored = row;
  stored.countRow = s.countRow;
  stagedSlots_.push_back(slot);
  stagedRows_.push_back(stored);
  s.stored = true;
  return s.countRow;
}

void SampleTable::upload() {
  const cudaStream_t s = stream_;
  if (stagedSlots_.empty()) return;
  const size_t need = slots_.size();
  if (need > table_.size()) table_.grow(std::max(need, 2 * table_.size()), table_.size(), s);
  send(uploadSlots_, stagedSlots_, s);
  send(uploadRows_, stagedRows_, s);
  scatterSampleRows(table_.get(), uploadSlots_.get(), uploadRows_.get(), static_cast<int>(stagedSlots_.size()), s);
  for (int32_t r : clearRows_)
    check(cudaMemsetAsync(counts_.get() + static_cast<size_t>(r) * vocab_, 0, static_cast<size_t>(vocab_) * 4, s),
          "sampling counts");
  if (!countEntries_.empty()) {
    send(uploadEntries_, countEntries_, s);
    setTokenCounts(counts_.get(), vocab_, uploadEntries_.get(), static_cast<int>(countEntries_.size()), s);
  }
  check(cudaGetLastError(), "sampling table launch");
}

void SampleTable::countHostToken(const StepBatch& b, size_t i, int32_t token) {
  const size_t slot = static_cast<size_t>(b.seqSlots[i]);
  if (slot < slots_.size() && slots_[slot].countRow >= 0 && token >= 0 && token < vocab_)
    hostCounts_.push_back(int3{slots_[slot].countRow, token, -1});
}

void SampleTable::uploadHostCounts() {
  const cudaStream_t s = stream_;
  if (hostCounts_.empty()) return;
  send(uploadHostEntries_, hostCounts_, s);
  setTokenCounts(counts_.get(), vocab_, uploadHostEntries_.get(), static_cast<int>(hostCounts_.size()), s);
  check(cudaGetLastError(), "sampling counts launch");
  hostCounts_.clear();
}

}  // namespace cuda
}  // namespace troupe
