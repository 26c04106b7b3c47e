// Elementwise and per-token kernels of the decoder forward on the CPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "backend.h"

namespace troupe {

// y = w * (x / sqrt(mean(x^2) + eps)) for each of m rows of h floats, as transformers' LlamaRMSNorm.
void rmsnorm(const float* x, const float* w, float* y, int m, int h, float eps, int threads);

// x[t][i] += b[i] for each of m rows of n floats.
void addBias(float* x, const float* b, int m, int n);

// out[i] = silu(gate[i]) * up[i]; gate and up are m rows of n with row strides ldg and ldu.
void siluAndMul(const float* gate, size_t ldg, const float* up, size_t ldu, float* out, int m, int n, int threads);

// Rotary embedding in the rotate_half layout of transformers' Llama, including the "llama3"
// frequency scaling of Llama 3.1.
class Rope {
 public:
  Rope(const ModelConfig& config);
  // cos and sin of every frequency at one position (headDim / 2 values each).
  void angles(int position, float* cos, float* sin) const;
  // Rotates heads [h0, h0 + nheads) of one token in place.
  void apply(float* x, int nheads, const float* cos, const float* sin) const;
  int half() const { return static_cast<int>(invFreq_.size()); }
  const std::vector<float>& invFreq() const { return invFreq_; }

 private:
  std::vector<float> invFreq_;
};

// The paged KV cache: per layer, block, kv head, row in block, head_dim floats.
struct KvCache {
  int layers = 0, blocks = 0, kvHeads = 0, blockSize = 0, headDim = 0;
  std::vector<float> k, v;

  void allocate(int layers, int blocks, int kvHeads, int blockSize, int headDim);
  size_t offset(int layer, int block, int kvHead, int row) const {
    return ((static_cast<size_t>(layer) * blocks + block) * kvHeads + kvHead) * blockSize * headDim +
           static_cast<size_t>(row) * headDim;
  }
};

// Where each token of a step lives: its position and its sequence's block table.
struct TokenPlace {
  int position;
  const int32_t* blockTable;
};

// Stores the step's k and v (rows of kvHeads * headDim) into the cache at each token's place.
void writeKv(KvCache& cache, int layer, const float* k, const float* v, size_t ld,
             const std::vector<TokenPlace>& places);

// Causal attention of each token over positions [0, position] of its sequence, or with a sliding
// window > 0 over the last `window` of them, read from the cache; q and out are rows of
// numHeads * headDim. Grouped-query: head h reads kv head h / (numHeads / kvHeads).
void pagedAttention(const KvCache& cache, int layer, const float* q, size_t ldq, float* out, size_t ldo,
                    const std::vector<TokenPlace>& places, int numHeads, int window, int threads);

}  // namespace troupe
