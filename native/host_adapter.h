// A LoRA adapter's weights in host memory, read by native code from adapter_model.safetensors
// into one buffer in the file's dtypes (page-locked on CUDA builds when a GPU is present, so a
// copy into a pool slot is DMA from it), with every value checked for NaN/Inf. The JS side
// (src/model/adapter.ts) parsed the header and checked the names and shapes against the model;
// this reads the bytes (a few threads, each with a few large reads) and checks them. The loader
// keeps one per adapter as its CPU copy and fills pool slots from it (whole, or a
// tensor-parallel rank's slice).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend.h"
#include "host_buffer.h"

namespace troupe {

// What is wrong is the file (values, size), not the machine: binding.cc marks the JS error so.
class AdapterFileError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

struct AdapterTensor {
  std::string name;  // shown in errors; the JS side checked it is a LoRA tensor name
  int layer = 0;
  LoraModule module = kQ;
  bool isB = false;
  int64_t offset = 0;  // absolute byte offset in the file
  int64_t nbytes = 0;
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0;
};

struct AdapterFileSpec {
  std::string file;
  int rank = 0;
  double scaling = 1;
  std::vector<AdapterTensor> tensors;
  bool pageLocked = false;  // asked for; granted on CUDA builds with a visible GPU
};

// The part of one module's factors a pool slot takes: columns [inStart, inStart + inCount) of A
// and rows [outStart, outStart + outCount) of B. A count of -1 takes the whole dimension.
struct ModuleSlice {
  int64_t inStart = 0, inCount = -1, outStart = 0, outCount = -1;
};

class HostAdapter {
 public:
  // Throws AdapterFileError naming the file (and tensor) when the contents are wrong,
  // std::runtime_error when reading fails.
  static std::unique_ptr<HostAdapter> read(const AdapterFileSpec& spec);
  ~HostAdapter();
  HostAdapter(const HostAdapter&) = delete;
  HostAdapter& operator=(const HostAdapter&) = delete;

  // The values it holds (the buffer may be a few bytes longer, for alignment).
  size_t bytes() const { return values_; }
  bool pageLocked() const;
  // Views into the buffer, each module sliced by slices[module] (empty: everything whole).
  AdapterWeights weights(const std::vector<ModuleSlice>& slices) const;

 private:
  HostAdapter() = default;
  struct Pair {
    int layer;
    LoraModule module;
    int a, b;  // indices into tensors_
  };
  std::string file_;
  int rank_ = 0;
  double scaling_ = 1;
  std::vector<AdapterTensor> tensors_;
  std::vector<Pair> pairs_;
  std::unique_ptr<HostBuffer> buf_;
  size_t size_ = 0;
  size_t values_ = 0;
  int64_t base_ = 0;  // file offset of buf_->data()[0]
};

// Index of the first NaN or +/-Inf among n values of dtype at p (any alignment), or -1.
int64_t firstNonFinite(const uint8_t* p, size_t n, DType dtype);

}  // namespace troupe
