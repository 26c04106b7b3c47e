// The memory a host adapter's values live in. Fresh memory costs a page fault and zeroing per
// page on first touch (about 40% of reading an 84 MB adapter whose file is in the page cache),
// and page-locking it (cudaHostRegister) more. So a freed buffer is kept (faulted in, and
// page-locked if it was) in a small process-wide free list, and the next read of a compatible
// size takes it instead: adapters churning through CPU memory pay for fresh memory once, not at
// every load.
#pragma once

#include <cstddef>
#include <cstdint>

namespace troupe {

class HostBuffer {
 public:
  // Most bytes, and most buffers, the free list keeps: three 84 MB adapters (rank 16 on every
  // module of Llama-3.1-8B), as many as the loader reads at once. Larger buffers are freed.
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
