// Reading checkpoint tensors named by TensorRefs with pread (the files may be large; nothing is
// mapped). Shared by the CPU and CUDA weight loaders.
#pragma once

#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend.h"

namespace troupe {

size_t dtypeBytes(DType d);
// An IEEE half as float (exact, subnormals and infinities included).
float halfToFloat(uint16_t h);
std::string shapeString(const std::vector<int64_t>& shape);

class TensorFiles {
 public:
  explicit TensorFiles(const std::vector<TensorRef>& tensors);
  ~TensorFiles();
  TensorFiles(const TensorFiles&) = delete;
  TensorFiles& operator=(const TensorFiles&) = delete;

  // The tensor `name`; throws std::invalid_argument when it is missing, has another shape, or
  // its byte count does not match its shape.
  const TensorRef& find(const std::string& name, const std::vector<int64_t>& shape) const;
  // Bytes [from, from + n) of the tensor's values with its rows packed (a strided band of columns
  // comes out contiguous). Throws std::runtime_error naming the file when a read fails.
  void read(const TensorRef& t, size_t from, size_t n, void* dst);

 private:
  void readAt(const TensorRef& t, int64_t offset, size_t n, char* dst);
  int open(const std::string& file);

  std::unordered_map<std::string, const TensorRef*> byName_;
  std::map<std::string, int> fds_;
};

}  // namespace troupe
