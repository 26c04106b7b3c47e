#include <cmath>

#include "cpu/ops.h"

namespace troupe {

void rmsnorm(const float* x, const float* w, float* y, int m, int h, float eps, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && m > 8)
  for (int t = 0; t < m; ++t) {
    const float* xr = x + static_cast<size_t>(t) * h;
    float* yr = y + static_cast<size_t>(t) * h;
    // A double sum in index order: exact enough to match float32 torch and independent of the batch.
    double ss = 0;
    for (int i = 0; i < h; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float variance = static_cast<float>(ss / h);
    const float inv = 1.0f / std::sqrt(variance + eps);
    for (int i = 0; i < h; ++i) yr[i] = w[i] * (xr[i] * inv);
  }
}

void addBias(float* x, const float* b, int m, int n) {
  for (int t = 0; t < m; ++t) {
    float* row = x + static_cast<size_t>(t) * n;
    for (int i = 0; i < n; ++i) row[i] += b[i];
  }
}

void siluAndMul(const float* gate, size_t ldg, const float* up, size_t ldu, float* out, int m, int n, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && m > 8)
  for (int t = 0; t < m; ++t) {
    const float* g = gate + t * ldg;
    const float* u = up + t * ldu;
    float* o = out + static_cast<size_t>(t) * n;
    for (int i = 0; i < n; ++i) o[i] = (g[i] / (1.0f + std::exp(-g[i]))) * u[i];
  }
}

}  // namespace troupe
