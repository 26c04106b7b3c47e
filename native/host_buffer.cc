#include "host_buffer.h"

#include <sys/mman.h>

#ifdef TROUPE_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#include <algorithm>
#include <array>
#include <cstdlib>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

namespace troupe {

namespace {

constexpr size_t kPage = 4096;
constexpr size_t kHugePage = 2u << 20;

size_t alignmentFor(size_t n) { return n >= kHugePage ? kHugePage : kPage; }
size_t roundedLength(size_t n) {
  const size_t align = alignmentFor(n);
  return (std::max<size_t>(n, 1) + align - 1) / align * align;
}

struct Kept {
  uint8_t* p;
  size_t len;
  bool pinned;
};

void release(const Kept& k) {
#ifdef TROUPE_HAVE_CUDA
  if (k.pinned) cudaHostUnregister(k.p);
#endif
  std::free(k.p);
}

// Never destroyed: buffers still kept at exit are left to the OS, since unregistering them then
// could run after the CUDA runtime is torn down.
struct FreeList {
  FreeList() { kept.reserve(HostBuffer::kRecycleCount + 1); }
  std::mutex mu;
  std::vector<Kept> kept;  // oldest first
  size_t bytes = 0;
};
FreeList& freeList() {
  static FreeList* f = new FreeList();
  return *f;
}

// A kept buffer at least len bytes and at most a quarter larger (so a small adapter does not
// hold on to a large buffer): of those, one page-locked as asked if any, and the smallest.
Kept takeKept(size_t len, bool wantLocked) {
  auto rank = [&](const Kept& k) { return std::make_pair(k.pinned != wantLocked, k.len); };
  FreeList& f = freeList();
  std::lock_guard<std::mutex> lock(f.mu);
  auto best = f.kept.end();
  for (auto it = f.kept.begin(); it != f.kept.end(); ++it) {
    if (it->len < len || it->len > len + len / 4 || (it->pinned && !wantLocked)) continue;
    if (best == f.kept.end() || rank(*it) < rank(*best)) best = it;
  }
  if (best == f.kept.end()) return Kept{nullptr, 0, false};
  const Kept k = *best;
  f.kept.erase(best);
  f.bytes -= k.len;
  return k;
}

}  // namespace

HostBuffer::HostBuffer(size_t n, bool wantLocked) {
  len_ = roundedLength(n);
  const Kept k = takeKept(len_, wantLocked);
  if (k.p) {
    p_ = k.p;
    len_ = k.len;
    pinned_ = k.pinned;
    return;
  }
  // Huge pages where the kernel gives them: a fresh buffer is faulted in 2 MiB at a time, which
  // makes the reads into it several times faster than with 4 KiB pages.
  const size_t align = alignmentFor(n);
  p_ = static_cast<uint8_t*>(std::aligned_alloc(align, len_));
  if (!p_) throw std::bad_alloc();
  if (align == kHugePage) madvise(p_, len_, MADV_HUGEPAGE);
}

HostBuffer::~HostBuffer() {
  if (!p_) return;
  const Kept mine{p_, len_, pinned_};
  if (len_ > kRecycleBytes) {
    release(mine);
    return;
  }
  // Over the caps, the oldest go; they are freed (and unregistered) outside the lock.
  std::array<Kept, kRecycleCount + 1> doomed;
  size_t ndoomed = 0;
  {
    FreeList& f = freeList();
    std::lock_guard<std::mutex> lock(f.mu);
    f.kept.push_back(mine);  // never allocates: room was reserved
    f.bytes += len_;
    while (f.bytes > kRecycleBytes || f.kept.size() > kRecycleCount) {
      doomed[ndoomed++] = f.kept.front();
      f.bytes -= f.kept.front().len;
      f.kept.erase(f.kept.begin());
    }
  }
  for (size_t i = 0; i < ndoomed; ++i) release(doomed[i]);
}

// Locking memory already in place (huge pages) is far cheaper than cudaHostAlloc, which zeroes
// and locks 4 KiB pages (on an H200 host, 2 ms against 27 ms for 84 MB). Portable: every GPU of
// a tensor-parallel group copies its slice from the same buffer.
bool HostBuffer::pageLock() {
#ifdef TROUPE_HAVE_CUDA
  if (pinned_) return true;
  int count = 0;
  if (cudaGetDeviceCount(&count) == cudaSuccess && count > 0 &&
      cudaHostRegister(p_, len_, cudaHostRegisterPortable) == cudaSuccess) {
    pinned_ = true;
    return true;
  }
  cudaGetLastError();  // no GPU, or no page-locked memory left: ordinary memory still works
#endif
  return pinned_;
}

}  // namespace troupe
