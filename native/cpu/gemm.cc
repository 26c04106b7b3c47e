// Register-tiled kernels: a tile of R weight rows x T tokens keeps R*T accumulators, each one
// walked over k exactly as simd::dot walks it, so tiling changes speed but never a result bit.
#include "cpu/gemm.h"

#include <algorithm>

#include "cpu/simd.h"

namespace troupe {

using namespace simd;

void Matrix::rowToFloat(int r, float* out) const {
  const size_t base = static_cast<size_t>(r) * cols;
  if (isBf16) {
    for (int i = 0; i < cols; ++i) {
      uint32_t u = static_cast<uint32_t>(bf16[base + i]) << 16;
      std::memcpy(&out[i], &u, 4);
    }
  } else {
    std::memcpy(out, f32.data() + base, sizeof(float) * cols);
  }
}

namespace {

template <class W, int R, int T>
inline void tile(const W* w, size_t ldw, const float* x, size_t ldx, float* y, size_t ldy, int k) {
  vf acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = zero();
  int i = 0;
  for (; i + kLanes <= k; i += kLanes) {
    vf xv[T];
    for (int t = 0; t < T; ++t) xv[t] = load(x + t * ldx + i);
    for (int r = 0; r < R; ++r) {
      const vf wv = load(w + r * ldw + i);
      for (int t = 0; t < T; ++t) acc[r][t] = fma(wv, xv[t], acc[r][t]);
    }
  }
  if (i < k) {
    const int n = k - i;
    vf xv[T];
    for (int t = 0; t < T; ++t) xv[t] = load(x + t * ldx + i, n);
    for (int r = 0; r < R; ++r) {
      const vf wv = load(w + r * ldw + i, n);
      for (int t = 0; t < T; ++t) acc[r][t] = fma(wv, xv[t], acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) y[t * ldy + r] = hsum(acc[r][t]);
}

// Rows [r0, r0 + rows) against all m tokens.
template <class W, int R>
void rowBlock(const W* w, size_t ldw, int rows, const float* x, int m, size_t ldx, float* y, size_t ldy, int k) {
  if (m == 1) {
    if (rows == R) {
      tile<W, R, 1>(w, ldw, x, ldx, y, ldy, k);
    } else {
      for (int r = 0; r < rows; ++r) tile<W, 1, 1>(w + r * ldw, ldw, x, ldx, y + r, ldy, k);
    }
    return;
  }
  for (int m0 = 0; m0 < m; m0 += 4) {
    const int t = std::min(4, m - m0);
    const float* xt = x + m0 * ldx;
    float* yt = y + m0 * ldy;
    for (int r = 0; r < rows; r += 4) {
      const W* wr = w + r * ldw;
      float* yr = yt + r;
      if (rows - r >= 4) {
        switch (t) {
          case 4:
            tile<W, 4, 4>(wr, ldw, xt, ldx, yr, ldy, k);
            break;
          case 3:
            tile<W, 4, 3>(wr, ldw, xt, ldx, yr, ldy, k);
            break;
          case 2:
            tile<W, 4, 2>(wr, ldw, xt, ldx, yr, ldy, k);
            break;
          default:
            tile<W, 4, 1>(wr, ldw, xt, ldx, yr, ldy, k);
            break;
        }
      } else {
        for (int rr = r; rr < rows; ++rr)
          for (int tt = 0; tt < t; ++tt)
            tile<W, 1, 1>(w + rr * ldw, ldw, xt + tt * ldx, ldx, yt + tt * ldy + rr, ldy, k);
      }
    }
  }
}

template <class W>
void gemmT(const W* w, int n, int k, size_t ldw, const float* x, int m, size_t ldx, float* y, size_t ldy, int threads) {
  if (n <= 0 || m <= 0) return;
  // Decode streams the weights once: 8 rows in flight hide the FMA latency. With several tokens
  // a 4x4 tile reuses each loaded weight vector 4 times.
  constexpr int kBlock = 8;
  const int blocks = (n + kBlock - 1) / kBlock;
  const bool parallel = threads > 1 && static_cast<double>(n) * k * m > 65536.0;
#pragma omp parallel for schedule(static) num_threads(threads) if (parallel)
  for (int b = 0; b < blocks; ++b) {
    const int r0 = b * kBlock;
    const int rows = std::min(kBlock, n - r0);
    rowBlock<W, kBlock>(w + static_cast<size_t>(r0) * ldw, ldw, rows, x, m, ldx, y + r0, ldy, k);
  }
}

}  // namespace

void gemm(const Matrix& w, const float* x, int m, size_t ldx, float* y, size_t ldy, int threads) {
  if (w.isBf16) {
    gemmT(w.bf16.data(), w.rows, w.cols, w.cols, x, m, ldx, y, ldy, threads);
  } else {
    gemmT(w.f32.data(), w.rows, w.cols, w.cols, x, m, ldx, y, ldy, threads);
  }
}

void gemmF32(const float* w, int n, int k, size_t ldw, const float* x, int m, size_t ldx, float* y, size_t ldy,
             int threads) {
  gemmT(w, n, k, ldw, x, m, ldx, y, ldy, threads);
}

}  // namespace troupe
