#include "slot_table.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace troupe {

SlotTable::SlotTable(int slots) : slots_(slots > 0 ? slots : 0) {}

SlotTable::Lease::~Lease() {
  if (!table_) return;
  {
    std::lock_guard<std::mutex> lock(table_->mu_);
    for (int s : slots_) --table_->slots_[s].readers;
  }
  table_->cv_.notify_all();
}

SlotTable::Lease SlotTable::acquire(Span<int32_t> wanted) {
  std::vector<int> mine;
  std::vector<char> seen(slots_.size(), 0);
  for (size_t i = 0; i < wanted.size; ++i) {
    const int s = wanted[i];
    if (s < 0 || s >= size() || seen[s]) continue;
    seen[s] = 1;
    mine.push_back(s);
  }
  std::unique_lock<std::mutex> lock(mu_);
  auto busy = [&] {
    for (int s : mine)
      if (slots_[s].writing) return true;
    return false;
  };
  if (busy()) {
    for (int s : mine) ++slots_[s].waitingSteps;
    cv_.notify_all();  // for waitFor(kStepWaiting)
    cv_.wait(lock, [&] { return !busy(); });
    for (int s : mine) --slots_[s].waitingSteps;
  }
  std::vector<bool> loaded(slots_.size());
  for (size_t s = 0; s < slots_.size(); ++s) loaded[s] = slots_[s].loaded;
  for (int s : mine) ++slots_[s].readers;
  return Lease(this, std::move(mine), std::move(loaded));
}

SlotTable::Writer SlotTable::write(int slot) {
  checkSlot(slot, "write");
  std::unique_lock<std::mutex> lock(mu_);
  State& st = slots_[slot];
  cv_.wait(lock, [&] { return !st.writing; });
  // Claimed before waiting for the readers, so new steps that want the slot queue behind it.
  st.writing = true;
  cv_.wait(lock, [&] { return st.readers == 0; });
  if (st.held) {
    st.parked = true;
    cv_.notify_all();
    cv_.wait(lock, [&] { return !st.held; });
    st.parked = false;
  }
  return Writer(this, slot, st.loaded);
}

std::pair<SlotTable::Writer, SlotTable::Writer> SlotTable::writePair(int a, int b) {
  checkSlot(a, "writePair");
  checkSlot(b, "writePair");
  if (a == b) throw std::invalid_argument("writePair: both slots are " + std::to_string(a));
  Writer first = write(std::min(a, b));
  Writer second = write(std::max(a, b));
  if (a < b) return {std::move(first), std::move(second)};
  return {std::move(second), std::move(first)};
}

SlotTable::Writer::~Writer() {
  if (!table_) return;
  std::lock_guard<std::mutex> lock(table_->mu_);
  table_->finishWrite(slot_, dirty_ ? false : table_->slots_[slot_].loaded);
}

void SlotTable::finishWrite(int slot, bool loaded) {
  slots_[slot].loaded = loaded;
  slots_[slot].writing = false;
  cv_.notify_all();
}

void SlotTable::checkSlot(int slot, const char* fn) const {
  if (slot < 0 || slot >= size()) {
    throw std::invalid_argument(std::string(fn) + ": slot " + std::to_string(slot) + " is outside [0, " +
                                std::to_string(size()) + ")");
  }
}

void SlotTable::hold(int slot) {
  checkSlot(slot, "holdLoraSlotWrites");
  std::lock_guard<std::mutex> lock(mu_);
  slots_[slot].held = true;
}

void SlotTable::release(int slot) {
  checkSlot(slot, "releaseLoraSlotWrites");
  {
    std::lock_guard<std::mutex> lock(mu_);
    slots_[slot].held = false;
  }
  cv_.notify_all();
}

void SlotTable::waitFor(int slot, Event e) {
  checkSlot(slot, "waitForLoraSlot");
  std::unique_lock<std::mutex> lock(mu_);
  const State& st = slots_[slot];
  cv_.wait(lock, [&] { return e == Event::kWriteHeld ? st.parked : st.waitingSteps > 0; });
}

}  // namespace troupe
