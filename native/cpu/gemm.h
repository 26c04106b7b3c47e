// Matrix products Y = X W^T for the linear layers, the LoRA factors and the lm_head.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace troupe {

// A row-major weight matrix. BF16 checkpoints stay in bf16 (widening to float is exact, so the
// products are identical to an f32 copy) which halves the memory the lm_head GEMV streams.
struct Matrix {
  int rows = 0;
  int cols = 0;
  bool isBf16 = false;
  std::vector<float> f32;
  std::vector<uint16_t> bf16;

  void rowToFloat(int r, float* out) const;
};

// Y[m * ldy + n] = sum_k W[n, k] * X[m * ldx + k] for m < M, n < W.rows, k < W.cols.
// Each element is one simd::dot, so it is bitwise the same for any M and any thread count.
void gemm(const Matrix& w, const float* x, int m, size_t ldx, float* y, size_t ldy, int threads);

// The same over a plain float matrix of n rows and k columns with row stride ldw.
void gemmF32(const float* w, int n, int k, size_t ldw, const float* x, int m, size_t ldx, float* y, size_t ldy,
             int threads);

}  // namespace troupe
