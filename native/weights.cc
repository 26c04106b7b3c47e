// Reads the tensors (tensor_file.h) and converts them to float32, except BF16 matrices, which
// stay bf16 because widening them is exact.
#include "weights.h"

#include <cstring>

#include "tensor_file.h"

namespace troupe {

namespace {

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

std::vector<uint8_t> bytes(TensorFiles& r, const TensorRef& t) {
  std::vector<uint8_t> buf(static_cast<size_t>(t.nbytes));
  r.read(t, 0, buf.size(), buf.data());
  return buf;
}

std::vector<float> loadVector(TensorFiles& r, const std::string& name, int64_t n) {
  const TensorRef& t = r.find(name, {n});
  return toFloat(bytes(r, t), t.dtype);
}

Matrix loadMatrix(TensorFiles& r, const std::string& name, int64_t rows, int64_t cols) {
  const TensorRef& t = r.find(name, {rows, cols});
  Matrix m;
  m.rows = static_cast<int>(rows);
  m.cols = static_cast<int>(cols);
  auto raw = bytes(r, t);
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

ModelWeights loadWeights(const ModelConfig& c, const std::vector<TensorRef>& tensors, int vocabRows) {
  TensorFiles r(tensors);
  ModelWeights w;
  const int64_t h = c.hiddenSize, inter = c.intermediateSize;
  const int64_t qDim = static_cast<int64_t>(c.numHeads) * c.headDim;
  const int64_t kvDim = static_cast<int64_t>(c.numKvHeads) * c.headDim;
  w.embed = loadMatrix(r, "model.embed_tokens.weight", vocabRows, h);
  w.tied = c.tieWordEmbeddings;
  if (!w.tied) w.lmHead = loadMatrix(r, "lm_head.weight", vocabRows, h);
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
    if (c.qkvBias) {
      l.qBias = loadVector(r, p + "self_attn.q_proj.bias", qDim);
      l.kBias = loadVector(r, p + "self_attn.k_proj.bias", kvDim);
      l.vBias = loadVector(r, p + "self_attn.v_proj.bias", kvDim);
    }
    if (c.qkNorm) {
      l.qNorm = loadVector(r, p + "self_attn.q_norm.weight", c.headDim);
      l.kNorm = loadVector(r, p + "self_attn.k_norm.weight", c.headDim);
    }
    l.o = loadMatrix(r, p + "self_attn.o_proj.weight", h, qDim);
    l.gate = loadMatrix(r, p + "mlp.gate_proj.weight", inter, h);
    l.up = loadMatrix(r, p + "mlp.up_proj.weight", inter, h);
    l.down = loadMatrix(r, p + "mlp.down_proj.weight", h, inter);
  }
  return w;
}

}  // namespace troupe
