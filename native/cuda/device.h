// Small RAII helpers for device and pinned host memory, and error checks that throw.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace troupe {
namespace cuda {

inline bool alignedTo(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }
inline bool aligned16(const void* p) { return alignedTo(p, 16); }

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("CUDA ") + what + " failed: " + cudaGetErrorString(e));
}

// What a stream carries, for its priority under TROUPE_CUDA_STREAM_PRIORITY=1: a step's kernels at
// the device's highest priority and an adapter slot's fill at its lowest. The block scheduler
// then starts a step's pending blocks before a fill's, whose conversion kernels would otherwise
// take every SM between a step's kernels while a copy runs beside serving. Measured on an H200
// with rank-128 fills beside 32-row decode steps: steps 1.03 times their time alone instead of
// 1.06, fills 29 ms instead of 22; within the spread of the serving runs, so off by default.
// Without the variable every stream has the default priority.
enum class StreamWork { kStep, kFill };

inline cudaStream_t createStream(StreamWork work) {
  int priority = 0;
  const char* env = std::getenv("TROUPE_CUDA_STREAM_PRIORITY");
  if (env && std::string(env) == "1") {
    int least = 0, greatest = 0;
    check(cudaDeviceGetStreamPriorityRange(&least, &greatest), "cudaDeviceGetStreamPriorityRange");
    priority = work == StreamWork::kStep ? greatest : least;
  }
  cudaStream_t s = nullptr;
  check(cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, priority), "cudaStreamCreate");
  return s;
}

// Device memory that grows on demand; `generation` counts reallocations, since a captured graph
// holds the old address.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { release(); }

  // Returns true when the buffer moved.
  bool ensure(size_t count) {
    if (count <= size_) return false;
    release();
    ptr_ = allocate(count);
    size_ = count;
    return true;
  }
  // As ensure, keeping the first `keep` elements (copied on stream s, which it then waits for, so
  // that the old memory may go).
  bool grow(size_t count, size_t keep, cudaStream_t s) {
    if (count <= size_) return false;
    T* p = allocate(count);
    if (keep > 0) {
      check(cudaMemcpyAsync(p, ptr_, keep * sizeof(T), cudaMemcpyDeviceToDevice, s), "device copy");
      check(cudaStreamSynchronize(s), "device copy");
    }
    release();
    ptr_ = p;
    size_ = count;
    return true;
  }
  void release() {
    if (ptr_) cudaFree(ptr_);
    ptr_ = nullptr;
    size_ = 0;
  }
  T* get() const { return ptr_; }
  size_t size() const { return size_; }

 private:
  static T* allocate(size_t count) {
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, count * sizeof(T));
    if (e != cudaSuccess) {
      cudaGetLastError();
      throw std::runtime_error("CUDA out of memory allocating " + std::to_string(count * sizeof(T) >> 20) +
                               " MiB of activations: " + cudaGetErrorString(e));
    }
    return static_cast<T*>(p);
  }

  T* ptr_ = nullptr;
  size_t size_ = 0;
};

template <class T>
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer() {
    if (ptr_) cudaFreeHost(ptr_);
  }
  void ensure(size_t count) {
    if (count <= size_) return;
    if (ptr_) cudaFreeHost(ptr_);
    ptr_ = nullptr;
    size_ = 0;
    void* p = nullptr;
    check(cudaMallocHost(&p, count * sizeof(T)), "cudaMallocHost");
    ptr_ = static_cast<T*>(p);
    size_ = count;
  }
  T* get() const { return ptr_; }
  T& operator[](size_t i) const { return ptr_[i]; }

 private:
  T* ptr_ = nullptr;
  size_t size_ = 0;
};

}  // namespace cuda
}  // namespace troupe
