// Reads tensors with pread (the files may be large; nothing is mapped) and converts them to
// float32, except BF16 matrices, which stay bf16 because widening them is exact.
#include "weights.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <stdexcept>
#include <unordered_map>

namespace troupe {

namespace {

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

class Reader {
 public:
  Reader(const std::vector<TensorRef>& tensors) {
    for (const auto& t : tensors) byName_[t.name] = &t;
  }
  ~Reader() {
    for (auto& [file, fd] : fds_) ::close(fd);
  }

  const TensorRef& find(const std::string& name, const std::vector<int64_t>& shape) const {
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
    return t;
  }

  std::vector<uint8_t> bytes(const TensorRef& t) {
    int fd = open(t.file);
    std::vector<uint8_t> buf(static_cast<size_t>(t.nbytes));
    size_t done = 0;
    while (done < buf.size()) {
      const ssize_t got = ::pread(fd, buf.data() + done, buf.size() - done, static_cast<off_t>(t.offset + done));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        throw std::runtime_error(t.file + ": reading tensor " + t.name + " failed: " +
                                 (got == 0 ? std::string("file ended early (truncated?)") : std::strerror(errno)));
      }
      done += static_cast<size_t>(got);
    }
    return buf;
  }

 private:
  int open(const std::string& file) {
    auto it = fds_.find(file);
    if (it != fds_.end()) return it->second;
    const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error(file + ": cannot open: " + std::strerror(errno));
    fds_[file] = fd;
    return fd;
  }

  std::unordered_map<std::string, const TensorRef*> byName_;
  std::map<std::string, int> fds_;
};

std::vector<float> toFloat(const std::vector<uint8_t>& raw, DType dtype) {
  const size_t n = raw.size() / dtypeBytes(dtype);
  std::vector<float> out(n);
  if (dtype == DType::F32) {
    std::memcpy(out.data(), raw.data(), raw.size());
  } else {
    const uint16_t* h = reinterpret_cast<const uint16_t*>(raw.data());
    for (size_t i = 0; i < n; ++i) {
      if (dtype == DType::BF16) {
        const uint32_t u = static_cast<uint32_t>(h[i]) << 16;
        std::memcpy(&out[i], &u, 4);
      } else {
        out[i] = halfToFloat(h[i]);
      }
    }
  }
  return out;
}

std::vector<float> loadVector(Reader& r, const std::string& name, int64_t n) {
  const TensorRef& t = r.find(name, {n});
  return toFloat(r.bytes(t), t.dtype);
}

Matrix loadMatrix(Reader& r, const std::string& name, int64_t rows, int64_t cols) {
  const TensorRef& t = r.find(name, {rows, cols});
  Matrix m;
  m.rows = static_cast<int>(rows);
  m.cols = static_cast<int>(cols);
  auto raw = r.bytes(t);
  if (t.dtype == DType::BF16) {
    m.isBf16 = true;
    m.bf16.resize(raw.size() / 2);
    std::memcpy(m.bf16.data(), raw.data(), raw.size());
  } else {
    m.f32 = toFloat(raw, t.dtype);
  }
  return m;
}

}  // namespace

ModelWeights loadWeights(const ModelConfig& c, const std::vector<TensorRef>& tensors, int threads) {
  Reader r(tensors);
  ModelWeights w;
  const int64_t h = c.hiddenSize, inter = c.intermediateSize;
  const int64_t qDim = static_cast<int64_t>(c.numHeads) * c.headDim;
  const int64_t kvDim = static_cast<int64_t>(c.numKvHeads) * c.headDim;
  w.embed = loadMatrix(r, "model.embed_tokens.weight", c.vocabSize, h);
  w.tied = c.tieWordEmbeddings;
  if (!w.tied) w.lmHead = loadMatrix(r, "lm_head.weight", c.vocabSize, h);
  w.finalNorm = loadVector(r, "model.norm.weight", h);
  w.layers.resize(c.numLayers);
  for (int i = 0; i < c.numLayers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights& l = w.layers[i];
    l.inputNorm = loadVector(r, p + "input_layernorm.weight", h);
    l.postNorm = loadVector(r, p + "post_attention_layernorm.weight", h);
    l.q = loadMatrix(r, p + "self_attn.q_proj.weight", qDim, h);
    l.k = loadMatrix(r, p + "self_attn.k_proj.weight", kvDim, h);
    l.v = loadMatrix(r, p + "self_attn.v_proj.weight", kvDim, h);
    l.o = loadMatrix(r, p + "self_attn.o_proj.weight", h, qDim);
    l.gate = loadMatrix(r, p + "mlp.gate_proj.weight", inter, h);
    l.up = loadMatrix(r, p + "mlp.up_proj.weight", inter, h);
    l.down = loadMatrix(r, p + "mlp.down_proj.weight", h, inter);
  }
  return w;
}

}  // namespace troupe
