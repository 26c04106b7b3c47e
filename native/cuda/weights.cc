// Reads each tensor in chunks through a pinned buffer and converts it to bf16 (matrices) or f32
// (norm weights) on the GPU, so F32, F16 and BF16 checkpoints all load the same way.
#include "cuda/weights.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <stdexcept>
#include <unordered_map>

#include "cuda/device.h"

namespace troupe {
namespace cuda {

namespace {

constexpr size_t kChunkBytes = 64u << 20;

size_t dtypeBytes(DType d) { return d == DType::F32 ? 4 : 2; }
int dtypeCode(DType d) { return d == DType::F32 ? 0 : d == DType::F16 ? 1 : 2; }

std::string shapeString(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

class Loader {
 public:
  Loader(const std::vector<TensorRef>& tensors, cudaStream_t stream) : stream_(stream) {
    for (const auto& t : tensors) byName_[t.name] = &t;
    pinned_.ensure(kChunkBytes);
    staging_.ensure(kChunkBytes);
  }
  ~Loader() {
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

  // Writes the tensor's values to dst (bf16 when toBf16, else f32), element offset 0.
  void load(const std::string& name, const std::vector<int64_t>& shape, void* dst, bool toBf16) {
    const TensorRef& t = find(name, shape);
    const size_t elem = dtypeBytes(t.dtype);
    const int fd = open(t.file);
    for (size_t done = 0; done < static_cast<size_t>(t.nbytes);) {
      const size_t n = std::min(kChunkBytes, static_cast<size_t>(t.nbytes) - done);
      read(fd, t, done, n);
      const size_t first = done / elem, count = n / elem;
      if (toBf16 && t.dtype == DType::BF16) {
        check(cudaMemcpyAsync(static_cast<bf16_t*>(dst) + first, pinned_.get(), n, cudaMemcpyHostToDevice, stream_),
              "weight upload");
      } else {
        check(cudaMemcpyAsync(staging_.get(), pinned_.get(), n, cudaMemcpyHostToDevice, stream_), "weight upload");
        if (toBf16) {
          convertToBf16(staging_.get(), dtypeCode(t.dtype), static_cast<bf16_t*>(dst) + first, count, stream_);
        } else {
          convertToF32(staging_.get(), dtypeCode(t.dtype), static_cast<float*>(dst) + first, count, stream_);
        }
      }
      // The pinned chunk is reused by the next read.
      check(cudaStreamSynchronize(stream_), "weight upload");
      done += n;
    }
  }

 private:
  void read(int fd, const TensorRef& t, size_t from, size_t n) {
    char* buf = reinterpret_cast<char*>(pinned_.get());
    for (size_t got = 0; got < n;) {
      const ssize_t r = ::pread(fd, buf + got, n - got, static_cast<off_t>(t.offset + from + got));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        throw std::runtime_error(t.file + ": reading tensor " + t.name + " failed: " +
                                 (r == 0 ? std::string("file ended early (truncated?)") : std::strerror(errno)));
      }
      got += static_cast<size_t>(r);
    }
  }
  int open(const std::string& file) {
    auto it = fds_.find(file);
    if (it != fds_.end()) return it->second;
    const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error(file + ": cannot open: " + std::strerror(errno));
    fds_[file] = fd;
    return fd;
  }

  cudaStream_t stream_;
  std::unordered_map<std::string, const TensorRef*> byName_;
  std::map<std::string, int> fds_;
  PinnedBuffer<uint8_t> pinned_;
  DeviceBuffer<uint8_t> staging_;
};

}  // namespace

void* GpuWeights::alloc(size_t n) {
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error("CUDA out of memory loading the weights (" + std::to_string(bytes >> 20) +
                             " MiB placed, " + std::to_string(n >> 20) + " MiB more needed)");
  }
  allocations_.push_back(p);
  bytes += n;
  return p;
}

GpuWeights::GpuWeights(const ModelConfig& c, const std::vector<TensorRef>& tensors, cudaStream_t stream) {
  try {
    Loader r(tensors, stream);
    const int64_t h = c.hiddenSize, inter = c.intermediateSize, V = c.vocabSize;
    const int64_t qDim = static_cast<int64_t>(c.numHeads) * c.headDim;
    const int64_t kvDim = static_cast<int64_t>(c.numKvHeads) * c.headDim;
    auto matrix = [&](int64_t rows, int64_t cols) { return static_cast<bf16_t*>(alloc(rows * cols * 2)); };
    auto vec = [&](const std::string& name) {
      float* p = static_cast<float*>(alloc(h * 4));
      r.load(name, {h}, p, false);
      return p;
    };
    embed = matrix(V, h);
    r.load("model.embed_tokens.weight", {V, h}, embed, true);
    head = embed;
    if (!c.tieWordEmbeddings) {
      head = matrix(V, h);
      r.load("lm_head.weight", {V, h}, head, true);
    }
    finalNorm = vec("model.norm.weight");
    layers.resize(c.numLayers);
    for (int i = 0; i < c.numLayers; ++i) {
      const std::string p = "model.layers." + std::to_string(i) + ".";
      GpuLayer& l = layers[i];
      l.inputNorm = vec(p + "input_layernorm.weight");
      l.postNorm = vec(p + "post_attention_layernorm.weight");
      l.qkv = matrix(qDim + 2 * kvDim, h);
      r.load(p + "self_attn.q_proj.weight", {qDim, h}, l.qkv, true);
      r.load(p + "self_attn.k_proj.weight", {kvDim, h}, l.qkv + qDim * h, true);
      r.load(p + "self_attn.v_proj.weight", {kvDim, h}, l.qkv + (qDim + kvDim) * h, true);
      l.o = matrix(h, qDim);
      r.load(p + "self_attn.o_proj.weight", {h, qDim}, l.o, true);
      l.gateUp = matrix(2 * inter, h);
      r.load(p + "mlp.gate_proj.weight", {inter, h}, l.gateUp, true);
      r.load(p + "mlp.up_proj.weight", {inter, h}, l.gateUp + inter * h, true);
      l.down = matrix(h, inter);
      r.load(p + "mlp.down_proj.weight", {h, inter}, l.down, true);
    }
  } catch (...) {
    for (void* p : allocations_) cudaFree(p);
    allocations_.clear();
    throw;
  }
}

GpuWeights::~GpuWeights() {
  for (void* p : allocations_) cudaFree(p);
}

}  // namespace cuda
}  // namespace troupe
