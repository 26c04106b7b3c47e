#include "tensor_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace troupe {

size_t dtypeBytes(DType d) { return d == DType::F32 ? 4 : 2; }

float halfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t frac = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (frac == 0) {
      bits = sign;
    } else {  // subnormal half: normalize
      exp = 127 - 15 + 1;
      while ((frac & 0x400u) == 0) {
        frac <<= 1;
        --exp;
      }
      frac &= 0x3ffu;
      bits = sign | (exp << 23) | (frac << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (frac << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (frac << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

std::string shapeString(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

TensorFiles::TensorFiles(const std::vector<TensorRef>& tensors) {
  for (const auto& t : tensors) byName_[t.name] = &t;
}

TensorFiles::~TensorFiles() {
  for (auto& [file, fd] : fds_) ::close(fd);
}

const TensorRef& TensorFiles::find(const std::string& name, const std::vector<int64_t>& shape) const {
  auto it = byName_.find(name);
  if (it == byName_.end()) throw std::invalid_argument("checkpoint is missing tensor " + name);
  const TensorRef& t = *it->second;
  if (t.shape != shape) {
    throw std::invalid_argument("tensor " + name + " has shape " + shapeString(t.shape) + ", expected " +
                                shapeString(shape));
  }
  size_t count = 1;
  for (auto d : shape) count *= static_cast<size_t>(d);
  if (static_cast<size_t>(t.nbytes) != count * dtypeBytes(t.dtype)) {
    throw std::invalid_argument("tensor " + name + " has " + std::to_string(t.nbytes) + " bytes, its shape " +
                                shapeString(shape) + " needs " + std::to_string(count * dtypeBytes(t.dtype)));
  }
  const int64_t rowBytes = shape.empty() ? 0 : t.nbytes / std::max<int64_t>(1, shape[0]);
  if (t.rowPitch != 0 && t.rowPitch < rowBytes) {
    throw std::invalid_argument("tensor " + name + " has a row pitch of " + std::to_string(t.rowPitch) +
                                " bytes, shorter than its rows of " + std::to_string(rowBytes));
  }
  return t;
}

void TensorFiles::read(const TensorRef& t, size_t from, size_t n, void* dst) {
  char* out = static_cast<char*>(dst);
  const size_t rowBytes = t.shape.empty() ? 0 : static_cast<size_t>(t.nbytes / std::max<int64_t>(1, t.shape[0]));
  if (t.rowPitch == 0 || static_cast<size_t>(t.rowPitch) == rowBytes) {
    readAt(t, t.offset + static_cast<int64_t>(from), n, out);
    return;
  }
  // A band of columns: one read per row piece.
  for (size_t done = 0; done < n;) {
    const size_t pos = from + done, row = pos / rowBytes, within = pos % rowBytes;
    const size_t len = std::min(n - done, rowBytes - within);
    readAt(t, t.offset + static_cast<int64_t>(row) * t.rowPitch + static_cast<int64_t>(within), len, out + done);
    done += len;
  }
}

void TensorFiles::readAt(const TensorRef& t, int64_t offset, size_t n, char* dst) {
  const int fd = open(t.file);
  for (size_t got = 0; got < n;) {
    const ssize_t r = ::pread(fd, dst + got, n - got, static_cast<off_t>(offset + static_cast<int64_t>(got)));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      throw std::runtime_error(t.file + ": reading tensor " + t.name + " failed: " +
                               (r == 0 ? std::string("file ended early (truncated?)") : std::strerror(errno)));
    }
    got += static_cast<size_t>(r);
  }
}

int TensorFiles::open(const std::string& file) {
  auto it = fds_.find(file);
  if (it != fds_.end()) return it->second;
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(file + ": cannot open: " + std::strerror(errno));
  fds_[file] = fd;
  return fd;
}

}  // namespace troupe
