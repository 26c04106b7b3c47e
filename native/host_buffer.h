// The memory a host adapter's values live in. Fresh memory costs a page fault and zeroing per
// page on first touch, and page-locking it (cudaHostRegister) costs more; together they were
// a third of reading an adapter whose file is in the page cache. So a released buffer is kept
// (already faulted in, and page-locked if it was) in a small process-wide free list that the
// next read of a compatible size takes instead, as happens when adapters churn through CPU
// memory. The list holds at most kRecycleBytes; beyond that, buffers are freed.
#pragma once

#include <cstddef>
#include <cstdint>

namespace troupe {

class HostBuffer {
 public:
  // Most bytes, and most buffers, the free list keeps for reuse.
  static constexpr size_t kRecycleBytes = size_t{256} << 20;
  static constexpr size_t kRecycleCount = 8;

  // At least n bytes: a kept buffer a little larger than n (page-locked ones first when
  // wantLocked; a page-locked one is never handed to a reader that did not ask for it), or
  // fresh memory.
  HostBuffer(size_t n, bool wantLocked);
  // Back to the free list, or freed when the list is full. Only the owner releases a buffer,
  // so one is never handed out while a host adapter still uses it.
  ~HostBuffer();
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;

  uint8_t* data() const { return p_; }
  bool pageLocked() const { return pinned_; }
  // Page-locks the buffer for DMA to the GPU, once it is filled (CUDA builds with a GPU); true
  // when it is page-locked, already or now.
  bool pageLock();

 private:
  uint8_t* p_ = nullptr;
  size_t len_ = 0;
  bool pinned_ = false;
};

}  // namespace troupe
