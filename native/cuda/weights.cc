// Reads each tensor in chunks through a pinned buffer and converts it to bf16 (matrices) or f32
// (norm weights) on the GPU, so F32, F16 and BF16 checkpoints all load the same way.
#include "cuda/weights.h"

#include <algorithm>
#include <stdexcept>

#include "cuda/device.h"
#include "tensor_file.h"

namespace troupe {
namespace cuda {

namespace {

constexpr size_t kChunkBytes = 64u << 20;

int dtypeCode(DType d) { return d == DType::F32 ? 0 : d == DType::F16 ? 1 : 2; }

class Loader {
 public:
  Loader(const std::vector<TensorRef>& tensors, cudaStream_t stream) : files_(tensors), stream_(stream) {
    pinned_.ensure(kChunkBytes);
    staging_.ensure(kChunkBytes);
  }

  // Writes the tensor's values to dst (bf16 when toBf16, else f32), element offset 0.
  void load(const std::string& name, const std::vector<int64_t>& shape, void* dst, bool toBf16) {
    const TensorRef& t = files_.find(name, shape);
    const size_t elem = dtypeBytes(t.dtype);
    for (size_t done = 0; done < static_cast<size_t>(t.nbytes);) {
      const size_t n = std::min(kChunkBytes, static_cast<size_t>(t.nbytes) - done);
      files_.read(t, done, n, pinned_.get());
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
  TensorFiles files_;
  cudaStream_t stream_;
  PinnedBuffer<uint8_t> pinned_;
  DeviceBuffer<uint8_t> staging_;
};

}  // namespace

void* GpuWeights::alloc(size_t n) {
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    // With the fused LoRA layout the pool's B factors (and q/k/v's A rows) live in the weights.
    const std::string lora = loraBytes_ == 0 ? ""
                                             : "; " + std::to_string(loraBytes_ >> 20) +
                                                   " MiB of the weights hold the LoRA pool's factors, which fewer "
                                                   "pool slots or a lower maximum rank would shrink";
    throw std::runtime_error("CUDA out of memory loading the weights (" + std::to_string(bytes >> 20) +
                             " MiB placed, " + std::to_string(n >> 20) + " MiB more needed" + lora + ")");
  }
  allocations_.push_back(p);
  bytes += n;
  return p;
}

GpuWeights::GpuWeights(const ModelConfig& c, const std::vector<TensorRef>& tensors, cudaStream_t stream, int vocabRows,
                       int vocabPart, const int* lora, const bool* split, const int* tailRows) {
  try {
    Loader r(tensors, stream);
    const int64_t h = c.hiddenSize, inter = c.intermediateSize, V = vocabRows;
    const int64_t qDim = static_cast<int64_t>(c.numHeads) * c.headDim;
    const int64_t kvDim = static_cast<int64_t>(c.numKvHeads) * c.headDim;
    int64_t total[kNumWeightGroups], ins[kNumWeightGroups];
    for (int g = 0; g < kNumWeightGroups; ++g) {
      weightGroupShape(c, static_cast<WeightGroup>(g), total[g], ins[g]);
      pad[g] = lora ? lora[g] : 0;
      splitRows[g] = split && split[g] && pad[g] > 0;
      ld[g] = static_cast<int>(ins[g]) + pad[g];
      tail[g] = tailRows ? tailRows[g] : 0;
      loraBytes_ += static_cast<size_t>(c.numLayers) * 2 * ((total[g] + tail[g]) * pad[g] + tail[g] * ins[g]);
    }
    auto matrix = [&](int64_t rows, int64_t cols) { return static_cast<bf16_t*>(alloc(rows * cols * 2)); };
    // A group's matrix, its padding columns zeroed: the pool fills only the slots it loads, and
    // those columns meet zeros in every activation row that no adapter uses, where NaN garbage
    // would still poison the sum.
    DeviceBuffer<bf16_t> rows;  // one tensor at a time, when the matrix is padded
    auto grouped = [&](WeightGroup g) {
      bf16_t* m = matrix(total[g] + tail[g], ld[g]);
      if (tail[g])
        check(cudaMemsetAsync(m + total[g] * ld[g], 0, static_cast<size_t>(tail[g]) * ld[g] * 2, stream),
              "weight upload");
      if (pad[g])
        check(cudaMemset2DAsync(m + ins[g], static_cast<size_t>(ld[g]) * 2, 0, static_cast<size_t>(pad[g]) * 2,
                                total[g], stream),
              "weight upload");
      return m;
    };
    auto part = [&](WeightGroup g, const std::string& name, int64_t rowsOf, bf16_t* m, int64_t row0) {
      bf16_t* dst = m + row0 * ld[g];
      if (!pad[g]) return r.load(name, {rowsOf, ins[g]}, dst, true);
      rows.ensure(static_cast<size_t>(rowsOf * ins[g]));
      r.load(name, {rowsOf, ins[g]}, rows.get(), true);
      check(cudaMemcpy2DAsync(dst, static_cast<size_t>(ld[g]) * 2, rows.get(), static_cast<size_t>(ins[g]) * 2,
                              static_cast<size_t>(ins[g]) * 2, rowsOf, cudaMemcpyDeviceToDevice, stream),
            "weight upload");
    };
    auto vec = [&](const std::string& name, int64_t n) {
      float* p = static_cast<float*>(alloc(n * 4));
      r.load(name, {n}, p, false);
      return p;
    };
    // vocabPart rows, the ones past this rank's vocabRows zero, so every rank's lm_head output
    // has the same width for the all-gather.
    auto vocabMatrix = [&](const std::string& name) {
      bf16_t* m = matrix(vocabPart, h);
      check(cudaMemsetAsync(m, 0, static_cast<size_t>(vocabPart) * h * 2, stream), "weight upload");
      r.load(name, {V, h}, m, true);
      return m;
    };
    embed = vocabMatrix("model.embed_tokens.weight");
    head = c.tieWordEmbeddings ? embed : vocabMatrix("lm_head.weight");
    finalNorm = vec("model.norm.weight", h);
    layers.resize(c.numLayers);
    for (int i = 0; i < c.numLayers; ++i) {
      const std::string p = "model.layers." + std::to_string(i) + ".";
      GpuLayer& l = layers[i];
      l.inputNorm = vec(p + "input_layernorm.weight", h);
      l.postNorm = vec(p + "post_attention_layernorm.weight", h);
      l.qkv = grouped(kQkvWeight);
      part(kQkvWeight, p + "self_attn.q_proj.weight", qDim, l.qkv, 0);
      part(kQkvWeight, p + "self_attn.k_proj.weight", kvDim, l.qkv, qDim);
      part(kQkvWeight, p + "self_attn.v_proj.weight", kvDim, l.qkv, qDim + kvDim);
      if (c.qkvBias) {
        l.qkvBias = static_cast<float*>(alloc((qDim + 2 * kvDim) * 4));
        r.load(p + "self_attn.q_proj.bias", {qDim}, l.qkvBias, false);
        r.load(p + "self_attn.k_proj.bias", {kvDim}, l.qkvBias + qDim, false);
        r.load(p + "self_attn.v_proj.bias", {kvDim}, l.qkvBias + qDim + kvDim, false);
      }
      if (c.qkNorm) {
        l.qNorm = vec(p + "self_attn.q_norm.weight", c.headDim);
        l.kNorm = vec(p + "self_attn.k_norm.weight", c.headDim);
      }
      l.o = grouped(kOWeight);
      part(kOWeight, p + "self_attn.o_proj.weight", h, l.o, 0);
      l.gateUp = grouped(kGateUpWeight);
      part(kGateUpWeight, p + "mlp.gate_proj.weight", inter, l.gateUp, 0);
      part(kGateUpWeight, p + "mlp.up_proj.weight", inter, l.gateUp, inter);
      l.down = grouped(kDownWeight);
      part(kDownWeight, p + "mlp.down_proj.weight", h, l.down, 0);
    }
    check(cudaStreamSynchronize(stream), "weight upload");  // before `rows` goes
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
