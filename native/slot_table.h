// Which LoRA pool slots hold an adapter, which are being written (filled or cleared) and which
// a step is using, under a lock of its own rather than the engine's: a fill of slot s and a step
// that does not use s run at the same time; a step that uses s waits for s's fill to end, and a
// fill of s waits for the steps using s (so a step never sees half an adapter). Both backends
// keep one per engine.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

#include "backend.h"

namespace troupe {

class SlotTable {
 public:
  explicit SlotTable(int slots);
  SlotTable(const SlotTable&) = delete;
  SlotTable& operator=(const SlotTable&) = delete;

  int size() const { return static_cast<int>(slots_.size()); }

  // A step's hold on the slots its batch names (numbers outside the pool are skipped:
  // validateBatch names them). While it lives those slots are not written.
  class Lease {
   public:
    Lease(Lease&& o) noexcept : table_(o.table_), slots_(std::move(o.slots_)), loaded_(std::move(o.loaded_)) {
      o.table_ = nullptr;
    }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease();
    // Whether each slot held an adapter when the lease was taken (for validateBatch; only the
    // leased slots' entries stay true for the step).
    const std::vector<bool>& loaded() const { return loaded_; }
    // The distinct leased slots, in first-use order.
    const std::vector<int>& slots() const { return slots_; }

   private:
    friend class SlotTable;
    Lease(SlotTable* t, std::vector<int> slots, std::vector<bool> loaded)
        : table_(t), slots_(std::move(slots)), loaded_(std::move(loaded)) {}
    SlotTable* table_;
    std::vector<int> slots_;
    std::vector<bool> loaded_;
  };
  // Waits until none of `slots` is being written, then holds them.
  Lease acquire(Span<int32_t> slots);

  // A fill or clear of one slot. Taking it waits for the slot's earlier writer and for the steps
  // using it; until commit(), steps that want the slot wait. Dropped without commit (the write
  // failed), the slot counts as empty if `dirty` was set, else it keeps what it held.
  class Writer {
   public:
    Writer(Writer&& o) noexcept : table_(o.table_), slot_(o.slot_), dirty_(o.dirty_), wasLoaded_(o.wasLoaded_) {
      o.table_ = nullptr;
    }
    Writer(const Writer&) = delete;
    Writer& operator=(const Writer&) = delete;
    ~Writer();
    // The slot's memory is being changed: a failure from here on leaves it empty.
    void dirty() { dirty_ = true; }
    // Whether the slot held an adapter when the write began.
    bool wasLoaded() const { return wasLoaded_; }
    // Ends the write; `loaded` says whether the slot now holds an adapter. `publish` runs under
    // the table's lock (a CUDA fill records its event there, so a step that leases the slot
    // next waits for that record).
    template <class F>
    void commit(bool loaded, F publish) {
      std::lock_guard<std::mutex> lock(table_->mu_);
      publish();
      table_->finishWrite(slot_, loaded);
      table_ = nullptr;
    }
    void commit(bool loaded) {
      commit(loaded, [] {});
    }

   private:
    friend class SlotTable;
    Writer(SlotTable* t, int slot, bool wasLoaded) : table_(t), slot_(slot), wasLoaded_(wasLoaded) {}
    SlotTable* table_;
    int slot_;
    bool dirty_ = false;
    bool wasLoaded_;
  };
  // `slot` must be in range (the pool checks it first, naming the call).
  Writer write(int slot);
  // Writes of two distinct slots at once (a swap of their adapters), taken in slot order, so that
  // two such pairs, or a pair and a single write, never wait for each other in a circle. The
  // first is `a`'s.
  std::pair<Writer, Writer> writePair(int a, int b);

  // Test hooks: while slot s is held, a write of s stops once it has claimed the slot (steps
  // that use s then wait too) until release(s). waitFor blocks until a write of s is stopped
  // there (kWriteHeld) or a step waits for s (kStepWaiting).
  enum class Event { kWriteHeld, kStepWaiting };
  void hold(int slot);
  void release(int slot);
  void waitFor(int slot, Event e);

 private:
  struct State {
    bool loaded = false;
    bool writing = false;
    bool held = false;     // test hook
    bool parked = false;   // a write is stopped at the hold
    int readers = 0;       // steps using the slot
    int waitingSteps = 0;  // steps waiting for its write
  };
  void finishWrite(int slot, bool loaded);  // mu_ held
  void checkSlot(int slot, const char* fn) const;

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<State> slots_;
};

}  // namespace troupe
