// The inverse frequencies follow transformers' _compute_default_rope_parameters and
// _compute_llama3_parameters step by step in float32, as torch evaluates them.
#include <cmath>

#include "cpu/ops.h"

namespace troupe {

Rope::Rope(const ModelConfig& c) {
  const int dim = c.headDim;
  const float base = static_cast<float>(c.ropeTheta);
  invFreq_.resize(dim / 2);
  for (int i = 0; i < dim / 2; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(dim);
    const float p = static_cast<float>(std::pow(static_cast<double>(base), static_cast<double>(exponent)));
    invFreq_[i] = 1.0f / p;
  }
  if (!c.hasRopeScaling) return;
  const auto& s = c.ropeScaling;
  const float factor = static_cast<float>(s.factor);
  const float lowFreqFactor = static_cast<float>(s.lowFreqFactor);
  const float highFreqFactor = static_cast<float>(s.highFreqFactor);
  const double oldContextLen = s.originalMaxPositionEmbeddings;
  const double lowFreqWavelen = oldContextLen / s.lowFreqFactor;
  const double highFreqWavelen = oldContextLen / s.highFreqFactor;
  const float twoPi = static_cast<float>(2 * M_PI);
  for (float& f : invFreq_) {
    const float wavelen = twoPi / f;
    // wavelen > low_freq_wavelen: divide by factor
    float scaled = wavelen > lowFreqWavelen ? f / factor : f;
    const bool medium = !(wavelen < highFreqWavelen) && !(wavelen > lowFreqWavelen);
    if (medium) {
      const float smooth =
          (static_cast<float>(oldContextLen) / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
      scaled = (1.0f - smooth) * scaled / factor + smooth * scaled;
    }
    f = scaled;
  }
}

void Rope::angles(int position, float* cos, float* sin) const {
  const float pos = static_cast<float>(position);
  for (size_t i = 0; i < invFreq_.size(); ++i) {
    const float a = invFreq_[i] * pos;
    cos[i] = static_cast<float>(std::cos(static_cast<double>(a)));
    sin[i] = static_cast<float>(std::sin(static_cast<double>(a)));
  }
}

void Rope::apply(float* x, int nheads, const float* cos, const float* sin) const {
  const int half = static_cast<int>(invFreq_.size());
  for (int h = 0; h < nheads; ++h) {
    float* v = x + static_cast<size_t>(h) * 2 * half;
    for (int i = 0; i < half; ++i) {
      const float x1 = v[i];
      const float x2 = v[i + half];
      // q * cos + rotate_half(q) * sin with rotate_half(q) = cat(-x2, x1)
      v[i] = x1 * cos[i] + (-x2) * sin[i];
      v[i + half] = x2 * cos[i] + x1 * sin[i];
    }
  }
}

}  // namespace troupe
