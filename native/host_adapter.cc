#include "host_adapter.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef TROUPE_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <numeric>

#include "tensor_file.h"

namespace troupe {

namespace {

// Reads of this size fill the buffer; the tensors completed by each are checked while their
// bytes are still in cache.
constexpr size_t kReadChunk = 8u << 20;
constexpr size_t kPage = 4096;
constexpr size_t kHugePage = 2u << 20;

// A value is NaN or Inf when all its exponent bits are set.
template <class U>
int64_t firstAllSet(const uint8_t* p, size_t n, U mask) {
  if (reinterpret_cast<uintptr_t>(p) % sizeof(U) != 0) {
    for (size_t i = 0; i < n; ++i) {
      U v;
      std::memcpy(&v, p + i * sizeof(U), sizeof(U));
      if ((v & mask) == mask) return static_cast<int64_t>(i);
    }
    return -1;
  }
  const U* v = reinterpret_cast<const U*>(p);
  constexpr size_t kBlock = 4096;
  for (size_t s = 0; s < n; s += kBlock) {
    const size_t e = std::min(n, s + kBlock);
    // A branch-free pass the compiler vectorizes; the element is looked for only on a hit.
    unsigned bad = 0;
    for (size_t i = s; i < e; ++i) bad |= static_cast<unsigned>((v[i] & mask) == mask);
    if (!bad) continue;
    for (size_t i = s; i < e; ++i)
      if ((v[i] & mask) == mask) return static_cast<int64_t>(i);
  }
  return -1;
}

// "NaN", "Infinity" or "-Infinity", as JavaScript prints the value.
std::string nonFiniteName(const uint8_t* p, DType d) {
  if (d == DType::F32) {
    uint32_t u;
    std::memcpy(&u, p, 4);
    return (u & 0x007fffffu) ? "NaN" : (u & 0x80000000u) ? "-Infinity" : "Infinity";
  }
  uint16_t h;
  std::memcpy(&h, p, 2);
  const uint16_t frac = d == DType::BF16 ? 0x007f : 0x03ff;
  return (h & frac) ? "NaN" : (h & 0x8000u) ? "-Infinity" : "Infinity";
}

// Huge pages where the kernel gives them: a fresh buffer is faulted in 2 MiB at a time, which
// makes the reads into it several times faster than with 4 KiB pages.
uint8_t* allocate(size_t n, size_t* len) {
  const size_t align = n >= kHugePage ? kHugePage : kPage;
  *len = (std::max<size_t>(n, 1) + align - 1) / align * align;
  void* p = std::aligned_alloc(align, *len);
  if (!p) throw std::bad_alloc();
  if (align == kHugePage) madvise(p, *len, MADV_HUGEPAGE);
  return static_cast<uint8_t*>(p);
}

// Page-locks a filled buffer for DMA to the GPU. Locking memory already in place (huge pages) is
// far cheaper than cudaHostAlloc, which zeroes and locks 4 KiB pages (on an H200 host, 2 ms
// against 27 ms for 84 MB). Portable: every GPU of a tensor-parallel group copies its slice
// from the same buffer.
bool pageLock(uint8_t* p, size_t len) {
#ifdef TROUPE_HAVE_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) == cudaSuccess && count > 0 &&
      cudaHostRegister(p, len, cudaHostRegisterPortable) == cudaSuccess) {
    return true;
  }
  cudaGetLastError();  // no GPU, or no page-locked memory left: ordinary memory still works
#else
  (void)p;
  (void)len;
#endif
  return false;
}

void release(uint8_t* p, bool pinned) {
  if (!p) return;
#ifdef TROUPE_HAVE_CUDA
  if (pinned) cudaHostUnregister(p);
#else
  (void)pinned;
#endif
  std::free(p);
}

class Fd {
 public:
  explicit Fd(const std::string& file) : fd_(::open(file.c_str(), O_RDONLY | O_CLOEXEC)) {
    if (fd_ < 0) throw std::runtime_error(file + ": cannot open: " + std::strerror(errno));
  }
  ~Fd() { ::close(fd_); }
  int get() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

int64_t firstNonFinite(const uint8_t* p, size_t n, DType d) {
  if (d == DType::F32) return firstAllSet<uint32_t>(p, n, 0x7f800000u);
  return firstAllSet<uint16_t>(p, n, d == DType::BF16 ? 0x7f80 : 0x7c00);
}

std::unique_ptr<HostAdapter> HostAdapter::read(const AdapterFileSpec& spec) {
  std::unique_ptr<HostAdapter> h(new HostAdapter());
  h->file_ = spec.file;
  h->rank_ = spec.rank;
  h->scaling_ = spec.scaling;
  h->tensors_ = spec.tensors;
  const std::string& file = spec.file;
  auto fail = [&](const AdapterTensor* t, const std::string& detail) {
    throw AdapterFileError(file + ": " + (t ? "tensor \"" + t->name + "\": " : std::string()) + detail);
  };
  if (spec.tensors.empty()) fail(nullptr, "holds no LoRA weights");
  if (spec.rank < 1) fail(nullptr, "rank " + std::to_string(spec.rank) + " is not positive");

  // Pair each module's A with its B; the shapes must fit the rank.
  std::map<std::pair<int, int>, Pair> pairs;
  for (size_t i = 0; i < h->tensors_.size(); ++i) {
    const AdapterTensor& t = h->tensors_[i];
    const int64_t count = t.rows * t.cols;
    if (t.rows < 1 || t.cols < 1 || (t.isB ? t.cols : t.rows) != spec.rank) {
      fail(&t, "shape [" + std::to_string(t.rows) + ", " + std::to_string(t.cols) + "] does not fit rank " +
                   std::to_string(spec.rank));
    }
    if (t.offset < 0 || t.nbytes != count * static_cast<int64_t>(dtypeBytes(t.dtype))) {
      fail(&t, std::to_string(t.nbytes) + " bytes at offset " + std::to_string(t.offset) + " do not hold its " +
                   std::to_string(count) + " values");
    }
    Pair& p = pairs.try_emplace({t.layer, t.module}, Pair{t.layer, t.module, -1, -1}).first->second;
    int& slot = t.isB ? p.b : p.a;
    if (slot >= 0) fail(&t, std::string("duplicates the lora_") + (t.isB ? "B" : "A") + " of its module");
    slot = static_cast<int>(i);
  }
  for (const auto& [key, p] : pairs) {
    if (p.a < 0 || p.b < 0) {
      fail(&h->tensors_[p.a < 0 ? p.b : p.a], std::string("has no matching lora_") + (p.a < 0 ? "A" : "B") + " tensor");
    }
    h->pairs_.push_back(p);
  }

  Fd fd(file);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw std::runtime_error(file + ": cannot stat: " + std::strerror(errno));
  // The buffer starts 64-byte aligned relative to the file, so values aligned in the file are
  // aligned in memory.
  int64_t lo = INT64_MAX, hi = 0;
  for (const AdapterTensor& t : h->tensors_) {
    if (t.offset + t.nbytes > st.st_size) {
      fail(&t, "ends at byte " + std::to_string(t.offset + t.nbytes) + " of a " + std::to_string(st.st_size) +
                   "-byte file (truncated?)");
    }
    h->values_ += static_cast<size_t>(t.nbytes);
    lo = std::min(lo, t.offset);
    hi = std::max(hi, t.offset + t.nbytes);
  }
  lo &= ~int64_t{63};
  h->base_ = lo;
  h->size_ = static_cast<size_t>(hi - lo);
  size_t len = 0;
  h->buf_ = allocate(h->size_, &len);

  // Tensors by where they end, so each read lets the ones it completed be checked.
  std::vector<size_t> order(h->tensors_.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t x, size_t y) {
    return h->tensors_[x].offset + h->tensors_[x].nbytes < h->tensors_[y].offset + h->tensors_[y].nbytes;
  });
  size_t next = 0;
  for (size_t done = 0; done < h->size_;) {
    const size_t want = std::min(kReadChunk, h->size_ - done);
    const ssize_t r = ::pread(fd.get(), h->buf_ + done, want, static_cast<off_t>(lo + static_cast<int64_t>(done)));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw std::runtime_error(file + ": reading failed: " + std::strerror(errno));
    if (r == 0) fail(nullptr, "the file ended early (truncated while being read?)");
    done += static_cast<size_t>(r);
    for (; next < order.size(); ++next) {
      const AdapterTensor& t = h->tensors_[order[next]];
      if (t.offset + t.nbytes - lo > static_cast<int64_t>(done)) break;
      const uint8_t* p = h->buf_ + (t.offset - lo);
      // One NaN or Inf would poison every token of every request in the adapter's batches.
      const int64_t bad = firstNonFinite(p, static_cast<size_t>(t.rows * t.cols), t.dtype);
      if (bad >= 0) {
        fail(&t, "holds " + nonFiniteName(p + bad * dtypeBytes(t.dtype), t.dtype) + " at element " + std::to_string(bad) +
                     "; the weights must be finite");
      }
    }
  }
  if (spec.pageLocked) h->pinned_ = pageLock(h->buf_, len);
  return h;
}

HostAdapter::~HostAdapter() { release(buf_, pinned_); }

AdapterWeights HostAdapter::weights(const std::vector<ModuleSlice>& slices) const {
  AdapterWeights ad;
  ad.rank = rank_;
  ad.scaling = scaling_;
  for (const Pair& p : pairs_) {
    const AdapterTensor& a = tensors_[p.a];
    const AdapterTensor& b = tensors_[p.b];
    const ModuleSlice s = slices.empty() ? ModuleSlice{} : slices[p.module];
    AdapterModuleWeights w;
    w.layer = p.layer;
    w.module = p.module;
    w.a = FactorView{buf_ + (a.offset - base_), a.dtype, a.rows, a.cols, 0, s.inStart, a.rows,
                     s.inCount < 0 ? a.cols : s.inCount, false};
    w.b = FactorView{buf_ + (b.offset - base_), b.dtype, b.rows, b.cols, s.outStart, 0,
                     s.outCount < 0 ? b.rows : s.outCount, b.cols, false};
    ad.weights.push_back(w);
  }
  return ad;
}

}  // namespace troupe
