#include "host_adapter.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <numeric>
#include <system_error>
#include <thread>

#include "tensor_file.h"

namespace troupe {

namespace {

// A file is read in pieces of about this size, each cut where a tensor starts so every tensor
// lies in one piece: the thread that reads a piece checks its tensors while their bytes are
// still in its core's cache, and an 84 MB adapter has enough pieces for threads to share evenly.
constexpr int64_t kPieceBytes = 2 << 20;
// One thread reading an 84 MB adapter into fresh memory reached 2 GB/s on a 16-core H200 host
// (a core's speed at copying from the page cache, faulting pages in and zeroing them), four
// reading four adapters at once 5.7 GB/s: the work per adapter was the limit, so up to this many
// threads share one.
constexpr int kThreadsPerRead = 4;

// The threads that help reads, process-wide: a quarter of the cores (1 to 8). One read alone gets
// kThreadsPerRead - 1 of them; reads at once (each on its own libuv thread) share them, so
// however many run, they add no more threads than this to the host's.
class Helpers {
 public:
  static Helpers& get() {
    static Helpers* h = new Helpers();
    return *h;
  }
  // Up to `want` helpers, as many as are free now; never waits.
  int take(int want) {
    int free = free_.load();
    while (free > 0 && !free_.compare_exchange_weak(free, free - std::min(free, want))) {
    }
    return std::max(0, std::min(free, want));
  }
  void give(int n) { free_ += n; }

 private:
  Helpers() : free_(std::clamp(static_cast<int>(std::thread::hardware_concurrency()) / 4, 1, 8)) {}
  std::atomic<int> free_;
};

// Runs piece(k) for every k in [0, n), on this thread and the helpers it gets, which take k in
// increasing order. Once one throws, no more are taken; those taken before (all lower) still
// finish, and the exception of the lowest k is rethrown: the one a single thread going through
// them in order would have met first.
void forEachPiece(size_t n, const std::function<void(size_t)>& piece) {
  std::atomic<size_t> next{0};
  std::atomic<bool> stop{false};
  std::mutex mu;
  size_t failed = SIZE_MAX;
  std::exception_ptr failure;
  auto work = [&] {
    while (!stop.load(std::memory_order_relaxed)) {
      const size_t k = next.fetch_add(1);
      if (k >= n) return;
      try {
        piece(k);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        if (k < failed) {
          failed = k;
          failure = std::current_exception();
        }
        stop = true;
      }
    }
  };
  Helpers& helpers = Helpers::get();
  const int granted = helpers.take(static_cast<int>(std::min<size_t>(kThreadsPerRead, n)) - 1);
  std::vector<std::thread> threads;
  try {
    for (int i = 0; i < granted; ++i) threads.emplace_back(work);
  } catch (const std::system_error&) {
    // No more threads to be had: the ones started, and this one, do it all the same.
  }
  work();
  for (std::thread& t : threads) t.join();
  helpers.give(granted);
  if (failure) std::rethrow_exception(failure);
}

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
  // Tensors by where they start: pieces are cut in this order, and the first bad tensor in it
  // is the one named.
  std::vector<size_t> order(h->tensors_.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t x, size_t y) { return h->tensors_[x].offset < h->tensors_[y].offset; });
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
  // The buffer starts 64-byte aligned relative to the file, so values aligned in the file are
  // aligned in memory.
  lo &= ~int64_t{63};
  h->base_ = lo;
  h->size_ = static_cast<size_t>(hi - lo);
  h->buf_ = std::make_unique<HostBuffer>(h->size_, spec.pageLocked);
  uint8_t* const buf = h->buf_->data();

  // Pieces: file bytes [begin, end) and the tensors order[first, last) inside them. A cut falls
  // only where no tensor before it reaches past it.
  struct Piece {
    int64_t begin, end;
    size_t first, last;
  };
  std::vector<Piece> pieces{Piece{lo, hi, 0, order.size()}};
  int64_t reach = 0;
  for (size_t k = 1; k < order.size(); ++k) {
    const AdapterTensor& prev = h->tensors_[order[k - 1]];
    reach = std::max(reach, prev.offset + prev.nbytes);
    const int64_t at = h->tensors_[order[k]].offset;
    if (at - pieces.back().begin >= kPieceBytes && at >= reach) {
      pieces.back().end = at;
      pieces.back().last = k;
      pieces.push_back(Piece{at, hi, k, order.size()});
    }
  }

  forEachPiece(pieces.size(), [&](size_t k) {
    const Piece& pc = pieces[k];
    for (int64_t at = pc.begin; at < pc.end;) {
      const ssize_t r = ::pread(fd.get(), buf + (at - lo), static_cast<size_t>(pc.end - at), static_cast<off_t>(at));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) throw std::runtime_error(file + ": reading failed: " + std::strerror(errno));
      if (r == 0) fail(nullptr, "the file ended early (truncated while being read?)");
      at += r;
    }
    for (size_t i = pc.first; i < pc.last; ++i) {
      const AdapterTensor& t = h->tensors_[order[i]];
      const uint8_t* p = buf + (t.offset - lo);
      // One NaN or Inf would poison every token of every request in the adapter's batches.
      const int64_t bad = firstNonFinite(p, static_cast<size_t>(t.rows * t.cols), t.dtype);
      if (bad >= 0) {
        fail(&t, "holds " + nonFiniteName(p + bad * dtypeBytes(t.dtype), t.dtype) + " at element " +
                     std::to_string(bad) + "; the weights must be finite");
      }
    }
  });
  if (spec.pageLocked) h->buf_->pageLock();  // a no-op on a reused buffer that is locked already
  return h;
}

HostAdapter::~HostAdapter() = default;

bool HostAdapter::pageLocked() const { return buf_->pageLocked(); }

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
    w.a = FactorView{buf_->data() + (a.offset - base_),  a.dtype, a.rows, a.cols, 0, s.inStart, a.rows,
                     s.inCount < 0 ? a.cols : s.inCount, false};
    w.b = FactorView{buf_->data() + (b.offset - base_),    b.dtype, b.rows, b.cols, s.outStart, 0,
                     s.outCount < 0 ? b.rows : s.outCount, b.cols,  false};
    ad.weights.push_back(w);
  }
  return ad;
}

}  // namespace troupe
