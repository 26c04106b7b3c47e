// A 16-lane float vector for the dot-product kernels. Every dot product in the CPU backend is
// one accumulator of 16 lanes walked over k in order and summed by the same hsum, so its
// rounding depends only on its two operands, never on the batch around it.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define TROUPE_AVX512 1
#endif

namespace troupe::simd {

constexpr int kLanes = 16;

#ifdef TROUPE_AVX512

using vf = __m512;

inline vf zero() { return _mm512_setzero_ps(); }
inline __mmask16 tailMask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
inline vf load(const float* p) { return _mm512_loadu_ps(p); }
inline vf load(const float* p, int n) { return _mm512_maskz_loadu_ps(tailMask(n), p); }
inline vf widenBf16(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
inline vf load(const uint16_t* p) { return widenBf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline vf load(const uint16_t* p, int n) { return widenBf16(_mm256_maskz_loadu_epi16(tailMask(n), p)); }
inline vf fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline float hsum(vf v) { return _mm512_reduce_add_ps(v); }
inline vf sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
inline vf add(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf mul(vf a, float b) { return _mm512_mul_ps(a, _mm512_set1_ps(b)); }
inline vf splat(float x) { return _mm512_set1_ps(x); }
inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
inline float hmax(vf v) { return _mm512_reduce_max_ps(v); }
inline void store(float* p, vf v) { _mm512_storeu_ps(p, v); }
inline void store(float* p, vf v, int n) { _mm512_mask_storeu_ps(p, tailMask(n), v); }

// exp for x <= 0 (softmax terms), within 2 ulp: 2^n * p(r) with r in [-ln2/2, ln2/2].
inline vf exp(vf x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
  const vf n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT);
  vf r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  vf p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const vf r2 = _mm512_mul_ps(r, r);
  p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

#else

struct vf {
  float l[kLanes];
};

inline vf zero() { return vf{}; }
inline float bf16ToFloat(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline vf load(const float* p, int n = kLanes) {
  vf v{};
  for (int i = 0; i < n; ++i) v.l[i] = p[i];
  return v;
}
inline vf load(const uint16_t* p, int n = kLanes) {
  vf v{};
  for (int i = 0; i < n; ++i) v.l[i] = bf16ToFloat(p[i]);
  return v;
}
inline vf fma(vf a, vf b, vf c) {
  for (int i = 0; i < kLanes; ++i) c.l[i] = std::fma(a.l[i], b.l[i], c.l[i]);
  return c;
}
inline float hsum(vf v) {
  // A fixed pairwise tree.
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int i = 0; i < w; ++i) v.l[i] += v.l[i + w];
  return v.l[0];
}
inline vf sub(vf a, vf b) {
  for (int i = 0; i < kLanes; ++i) a.l[i] -= b.l[i];
  return a;
}
inline vf add(vf a, vf b) {
  for (int i = 0; i < kLanes; ++i) a.l[i] += b.l[i];
  return a;
}
inline vf mul(vf a, float b) {
  for (int i = 0; i < kLanes; ++i) a.l[i] *= b;
  return a;
}
inline vf splat(float x) {
  vf v;
  for (int i = 0; i < kLanes; ++i) v.l[i] = x;
  return v;
}
inline vf vmax(vf a, vf b) {
  for (int i = 0; i < kLanes; ++i) a.l[i] = a.l[i] > b.l[i] ? a.l[i] : b.l[i];
  return a;
}
inline float hmax(vf v) {
  float m = v.l[0];
  for (int i = 1; i < kLanes; ++i) m = v.l[i] > m ? v.l[i] : m;
  return m;
}
inline void store(float* p, vf v, int n = kLanes) {
  for (int i = 0; i < n; ++i) p[i] = v.l[i];
}
inline vf exp(vf x) {
  for (int i = 0; i < kLanes; ++i) x.l[i] = std::exp(x.l[i]);
  return x;
}

#endif

// Dot product of x (floats) with a row w (floats or bf16 bits), in the canonical order.
template <class W>
inline float dot(const W* w, const float* x, int k) {
  vf acc = zero();
  int i = 0;
  for (; i + kLanes <= k; i += kLanes) acc = fma(load(w + i), load(x + i), acc);
  if (i < k) acc = fma(load(w + i, k - i), load(x + i, k - i), acc);
  return hsum(acc);
}

}  // namespace troupe::simd
