// Elementwise and per-token kernels of the CUDA backend: conversion, embedding, RMSNorm, the q/k/v
// bias and per-head norm, RoPE with the KV write, SiLU-and-mul, and the pieces of the GEMM-based
// prefill attention.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cub/block/block_reduce.cuh>

#include "cuda/bf16_pack.cuh"
#include "cuda/device.h"
#include "cuda/kernels.h"
#include "cuda/pdl.cuh"
#include "cuda/silu.cuh"

namespace troupe {
namespace cuda {

namespace {

struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

__device__ __forceinline__ float toF(bf16_t v) { return __uint_as_float(static_cast<uint32_t>(v) << 16); }

// A projection's output rows hold f32, or bf16 where its GEMM wrote bf16 (bf16Rows in
// backend_impl.h): the kernels that read them take either.
__device__ __forceinline__ float rowValue(float v) { return v; }
__device__ __forceinline__ float rowValue(bf16_t v) { return toF(v); }

// W consecutive values of such a row (W 1 or 4; 4 from a 4-aligned feature: one 16-byte load of
// f32 or 8-byte of bf16), and W bf16 values stored to a row of bf16.
template <typename In>
__device__ __forceinline__ void loadRow(const In* p, float (&x)[1]) {
  x[0] = rowValue(*p);
}
__device__ __forceinline__ void loadRow(const float* p, float (&x)[4]) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  x[0] = v.x, x[1] = v.y, x[2] = v.z, x[3] = v.w;
}
__device__ __forceinline__ void loadRow(const bf16_t* p, float (&x)[4]) {
  const uint2 v = *reinterpret_cast<const uint2*>(p);
  x[0] = __uint_as_float(v.x << 16), x[1] = __uint_as_float(v.x & 0xffff0000u);
  x[2] = __uint_as_float(v.y << 16), x[3] = __uint_as_float(v.y & 0xffff0000u);
}
__device__ __forceinline__ void storeRow(bf16_t* p, const float (&x)[1]) { *p = toB(x[0]); }
__device__ __forceinline__ void storeRow(bf16_t* p, const float (&x)[4]) {
  *reinterpret_cast<uint2*>(p) = make_uint2(pairB(x[0], x[1]), pairB(x[2], x[3]));
}

__global__ void convertKernel(const void* src, int dtype, bf16_t* dst, float* dstF, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    float v;
    if (dtype == 0) {
      v = static_cast<const float*>(src)[i];
    } else if (dtype == 1) {
      v = __half2float(static_cast<const __half*>(src)[i]);
    } else {
      v = toF(static_cast<const bf16_t*>(src)[i]);
    }
    if (dst) dst[i] = toB(v);
    if (dstF) dstF[i] = v;
  }
}

int gridFor(size_t n, int threads) {
  size_t b = (n + threads - 1) / threads;
  return static_cast<int>(b > 65535 * 8 ? 65535 * 8 : (b == 0 ? 1 : b));
}

__global__ void embedKernel(const bf16_t* table, const int32_t* tokens, float* hidden, int h, int vocabStart,
                            int vocabCount) {
  const int t = blockIdx.x;
  const int r = tokens[t] - vocabStart;
  float* out = hidden + static_cast<size_t>(t) * h;
  if (r < 0 || r >= vocabCount) {  // another rank's row
    for (int i = threadIdx.x; i < h; i += blockDim.x) out[i] = 0.0f;
    return;
  }
  const bf16_t* row = table + static_cast<size_t>(r) * h;
  for (int i = threadIdx.x; i < h; i += blockDim.x) out[i] = toF(row[i]);
}

__global__ void joinVocabKernel(const float* parts, int rows, int part, float* logits, int V) {
  const int r = blockIdx.y;
  for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < V; j += gridDim.x * blockDim.x) {
    const int rank = j / part, col = j - rank * part;
    logits[static_cast<size_t>(r) * V + j] = parts[(static_cast<size_t>(rank) * rows + r) * part + col];
  }
}

constexpr int kNormThreads = 256;
constexpr int kNormMaxVec = 8;  // float4s a thread holds: rows of up to 8,192 features stay in registers

// 1 / rms of a row from each thread's sum of squares; every thread of the block gets it.
__device__ __forceinline__ float rmsScale(float ss, int h, float eps) {
  using Reduce = cub::BlockReduce<float, kNormThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ float scale;
  const float total = Reduce(tmp).Sum(ss);
  if (threadIdx.x == 0) scale = 1.0f / sqrtf(total / h + eps);
  __syncthreads();
  return scale;
}

// The general form: any width, any alignment.
__global__ void rmsnormKernel(const float* x, const int32_t* rows, const float* w, bf16_t* y, int h, int ldy,
                              float eps) {
  pdlLaunchDependents();  // a LoRA item shrink after it may start (pdl.cuh)
  pdlWait();
  const int r = blockIdx.x;
  const float* xr = x + static_cast<size_t>(rows ? rows[r] : r) * h;
  float ss = 0;
  for (int i = threadIdx.x; i < h; i += blockDim.x) ss += xr[i] * xr[i];
  const float scale = rmsScale(ss, h, eps);
  bf16_t* yr = y + static_cast<size_t>(r) * ldy;
  for (int i = threadIdx.x; i < h; i += blockDim.x) yr[i] = toB(w[i] * (xr[i] * scale));
}

// The common form: a row's float4s loaded at once and kept in registers for the write, so a block
// waits on memory once, not once per strided pass (a decode step is mostly such waits).
template <int kVec>
__global__ void rmsnormVecKernel(const float* x, const int32_t* rows, const float* w, bf16_t* y, int h, int ldy,
                                 float eps) {
  pdlLaunchDependents();  // a LoRA item shrink after it may start (pdl.cuh)
  const int r = blockIdx.x, n4 = h / 4;
  const float4* xr = reinterpret_cast<const float4*>(x + static_cast<size_t>(rows ? rows[r] : r) * h);
  const float4* w4 = reinterpret_cast<const float4*>(w);
  // The norm's weights are loaded with the row, not after the sum: one wait on memory, not two
  // (a GEMV launched early may be streaming its weights meanwhile, which lengthens each wait).
  float4 v[kVec], g[kVec];
  float ss = 0;
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int c = threadIdx.x + k * kNormThreads;
    g[k] = c < n4 ? w4[c] : make_float4(0, 0, 0, 0);
  }
  // Launched early (rmsnorm's pdl), the weights above load while the kernel before drains.
  pdlWait();
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int c = threadIdx.x + k * kNormThreads;
    v[k] = c < n4 ? xr[c] : make_float4(0, 0, 0, 0);
  }
#pragma unroll
  for (int k = 0; k < kVec; ++k) ss += v[k].x * v[k].x + v[k].y * v[k].y + v[k].z * v[k].z + v[k].w * v[k].w;
  const float k0 = rmsScale(ss, h, eps);
  uint2* yr = reinterpret_cast<uint2*>(y + static_cast<size_t>(r) * ldy);
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int c = threadIdx.x + k * kNormThreads;
    if (c >= n4) break;
    const float4 a = v[k], gk = g[k];
    yr[c] = make_uint2(pairB(gk.x * (a.x * k0), gk.y * (a.y * k0)), pairB(gk.z * (a.z * k0), gk.w * (a.w * k0)));
  }
}

// One block per token; the bias first (every thread over the row), then one warp per head.
__global__ void qkvBiasNormKernel(float* qkv, const float* bias, const float* qNorm, const float* kNorm, AttnShape a,
                                  float eps) {
  const int D = a.headDim, width = (a.heads + 2 * a.kvHeads) * D;
  float* row = qkv + static_cast<size_t>(blockIdx.x) * width;
  if (bias) {
    for (int e = threadIdx.x; e < width; e += blockDim.x) row[e] += bias[e];
    __syncthreads();
  }
  if (!qNorm) return;
  const int lane = threadIdx.x & 31, warps = blockDim.x / 32;
  for (int head = threadIdx.x / 32; head < a.heads + a.kvHeads; head += warps) {
    float* v = row + static_cast<size_t>(head) * D;  // k heads follow the q heads in the row
    const float* w = head < a.heads ? qNorm : kNorm;
    float ss = 0;
    for (int i = lane; i < D; i += 32) ss += v[i] * v[i];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    const float scale = 1.0f / sqrtf(ss / D + eps);
    for (int i = lane; i < D; i += 32) v[i] = w[i] * (v[i] * scale);
  }
}

// Half the largest head_dim the CUDA backend takes (backend.cc refuses others).
constexpr int kMaxRopeHalf = 128;

// kVec: four features a thread at a time (16-byte loads of f32 rows, 8-byte of bf16, 8-byte
// stores), where head_dim is a multiple of 8; a prefill's tokens otherwise each take ten rounds of
// scalar loads whose latency the loop does not overlap.
template <bool kVec, typename In>
__global__ void ropeKvKernel(const In* __restrict__ qkv, const float* __restrict__ invFreq, TokenMap map, AttnShape a,
                             bf16_t* __restrict__ q, bf16_t* __restrict__ kCache, bf16_t* __restrict__ vCache) {
  pdlLaunchDependents();  // the decode attention after it may start copying earlier keys (attention_tma.cu)
  const int t = blockIdx.x, first = blockIdx.y * blockDim.x + threadIdx.x, stride = gridDim.y * blockDim.x;
  const int D = a.headDim, half = D / 2, G = a.heads / a.kvHeads;
  const int qDim = a.heads * D, kvDim = a.kvHeads * D;
  const In* row = qkv + static_cast<size_t>(t) * (qDim + 2 * kvDim);
  const int pos = map.positions[t];
  const int block = map.blockTables[static_cast<size_t>(map.tokenSeq[t]) * map.pitch + pos / a.blockSize];
  const int inBlock = pos % a.blockSize;
  // One double-precision sincos per frequency, which every head shares: computed per element,
  // a Llama-8B row's 40 heads repeated each one 40 times (a seventh of the kernel's time).
  __shared__ float cosSin[2][kMaxRopeHalf];
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float angle = invFreq[i] * static_cast<float>(pos);
    double sd, cd;
    sincos(static_cast<double>(angle), &sd, &cd);
    cosSin[0][i] = static_cast<float>(cd);
    cosSin[1][i] = static_cast<float>(sd);
  }
  __syncthreads();
  // Where head `head`'s rotated row goes: q's [KV head][token][group member] rows, or the cache.
  auto dstOf = [&](int head) {
    if (head < a.heads) return q + ((static_cast<size_t>(head / G) * map.tokens + t) * G + head % G) * D;
    return kCache + ((static_cast<size_t>(block) * a.kvHeads + (head - a.heads)) * a.blockSize + inBlock) * D;
  };
  bf16_t* vDst = vCache + (static_cast<size_t>(block) * a.kvHeads * a.blockSize + inBlock) * D;
  const In* vrow = row + qDim + kvDim;
  constexpr int W = kVec ? 4 : 1;  // features a thread takes at once
  // q and k heads: rotate_half layout of transformers' Llama (k heads follow the q heads in the row).
  const int pieces = half / W;
  for (int e = first; e < (a.heads + a.kvHeads) * pieces; e += stride) {
    const int head = e / pieces, i = (e % pieces) * W;
    const In* v = row + static_cast<size_t>(head) * D;
    float x1[W], x2[W], o1[W], o2[W];
    loadRow(v + i, x1);
    loadRow(v + i + half, x2);
#pragma unroll
    for (int j = 0; j < W; ++j) {
      const float c = cosSin[0][i + j], sn = cosSin[1][i + j];
      o1[j] = x1[j] * c + (-x2[j]) * sn;
      o2[j] = x2[j] * c + x1[j] * sn;
    }
    bf16_t* dst = dstOf(head);
    storeRow(dst + i, o1);
    storeRow(dst + i + half, o2);
  }
  // v heads, [KV head][head_dim] in the row as in the cache's (block, KV head, row) rows.
  for (int e = first * W; e < kvDim; e += stride * W) {
    float x[W];
    loadRow(vrow + e, x);
    storeRow(vDst + static_cast<size_t>(e / D) * a.blockSize * D + e % D, x);
  }
}

__global__ void gatherKvKernel(const bf16_t* kCache, const bf16_t* vCache, TokenMap map, int seq, int keys, AttnShape a,
                               bf16_t* kOut, bf16_t* vOut) {
  // One block per (key, kvHead); headDim values each, copied as 32-bit pairs.
  const int key = blockIdx.x, kh = blockIdx.y;
  const int D = a.headDim;
  const int block = map.blockTables[static_cast<size_t>(seq) * map.pitch + key / a.blockSize];
  const size_t src = ((static_cast<size_t>(block) * a.kvHeads + kh) * a.blockSize + key % a.blockSize) * D;
  const size_t dst = (static_cast<size_t>(kh) * keys + key) * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    kOut[dst + d] = kCache[src + d];
    vOut[dst + d] = vCache[src + d];
  }
}

constexpr int kSoftmaxThreads = 256;

__global__ void causalSoftmaxKernel(const float* scores, bf16_t* probs, int tokens, int group, int keys, int firstPos,
                                    int window) {
  const int r = blockIdx.x, kh = blockIdx.y;
  const size_t base = (static_cast<size_t>(kh) * tokens * group + r) * keys;
  const float* s = scores + base;
  bf16_t* p = probs + base;
  // Keys [first, valid) are visible: the causal prefix, cut to the window.
  const int valid = firstPos + r / group + 1;
  const int first = window > 0 ? max(0, valid - window) : 0;
  using Reduce = cub::BlockReduce<float, kSoftmaxThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ float shared;
  float m = -INFINITY;
  for (int k = first + threadIdx.x; k < valid; k += blockDim.x) m = fmaxf(m, s[k]);
  m = Reduce(tmp).Reduce(m, MaxOp());
  if (threadIdx.x == 0) shared = m;
  __syncthreads();
  m = shared;
  float sum = 0;
  for (int k = first + threadIdx.x; k < valid; k += blockDim.x) sum += __expf(s[k] - m);
  __syncthreads();
  sum = Reduce(tmp).Sum(sum);
  if (threadIdx.x == 0) shared = 1.0f / sum;
  __syncthreads();
  const float inv = shared;
  for (int k = threadIdx.x; k < keys; k += blockDim.x)
    p[k] = toB(k >= first && k < valid ? __expf(s[k] - m) * inv : 0.0f);
}

__global__ void scatterHeadsKernel(const bf16_t* o, bf16_t* out, int tokens, int firstToken, AttnShape a) {
  const int t = blockIdx.x;
  const int D = a.headDim, G = a.heads / a.kvHeads;
  for (int e = threadIdx.x; e < a.heads * D; e += blockDim.x) {
    const int head = e / D, d = e % D;
    const int g = head / G, j = head % G;
    out[(static_cast<size_t>(firstToken) + t) * a.heads * D + e] =
        o[((static_cast<size_t>(g) * tokens + t) * G + j) * D + d];
  }
}

template <typename In>
__global__ void siluMulKernel(const In* gu, bf16_t* act, int inter, int ldAct) {
  pdlLaunchDependents();
  const int t = blockIdx.y;
  const In* g = gu + static_cast<size_t>(t) * 2 * inter;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < inter; i += gridDim.x * blockDim.x) {
    const float x = rowValue(g[i]);
    act[static_cast<size_t>(t) * ldAct + i] = toB(silu(x) * rowValue(g[inter + i]));
  }
}

// Four features a thread: float4 loads of gate and up and one 8-byte store, the same expression.
// A prefill's SiLU reads 8 bytes and writes 2 per feature (587 MB a layer at 4,096 tokens), so it
// is bound by memory once each thread has more than one load in flight.
__global__ void siluMulVecKernel(const float* gu, bf16_t* act, int inter, int ldAct) {
  pdlLaunchDependents();
  const int t = blockIdx.y, n4 = inter / 4;
  const float4* g = reinterpret_cast<const float4*>(gu + static_cast<size_t>(t) * 2 * inter);
  const float4* u = g + n4;
  uint2* out = reinterpret_cast<uint2*>(act + static_cast<size_t>(t) * ldAct);
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += gridDim.x * blockDim.x) {
    const float4 x = g[i], m = u[i];
    out[i] = make_uint2(pairB(silu(x.x) * m.x, silu(x.y) * m.y), pairB(silu(x.z) * m.z, silu(x.w) * m.w));
  }
}

// bf16 gate and up: eight features a thread, 16-byte loads and store (4 bytes read and 2 written
// a feature, against 8 and 2 from f32 rows).
__global__ void siluMulHalfVecKernel(const bf16_t* gu, bf16_t* act, int inter, int ldAct) {
  pdlLaunchDependents();
  const int t = blockIdx.y, n8 = inter / 8;
  const uint4* g = reinterpret_cast<const uint4*>(gu + static_cast<size_t>(t) * 2 * inter);
  const uint4* u = g + n8;
  uint4* out = reinterpret_cast<uint4*>(act + static_cast<size_t>(t) * ldAct);
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += gridDim.x * blockDim.x) {
    const uint4 x = g[i], m = u[i];
    const uint32_t xs[4] = {x.x, x.y, x.z, x.w}, ms[4] = {m.x, m.y, m.z, m.w};
    uint32_t o[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float x0 = __uint_as_float(xs[j] << 16), x1 = __uint_as_float(xs[j] & 0xffff0000u);
      const float m0 = __uint_as_float(ms[j] << 16), m1 = __uint_as_float(ms[j] & 0xffff0000u);
      o[j] = pairB(silu(x0) * m0, silu(x1) * m1);
    }
    out[i] = make_uint4(o[0], o[1], o[2], o[3]);
  }
}

}  // namespace

void convertToBf16(const void* src, int dtype, bf16_t* dst, size_t n, cudaStream_t s) {
  convertKernel<<<gridFor(n, 256), 256, 0, s>>>(src, dtype, dst, nullptr, n);
}

void convertToF32(const void* src, int dtype, float* dst, size_t n, cudaStream_t s) {
  convertKernel<<<gridFor(n, 256), 256, 0, s>>>(src, dtype, nullptr, dst, n);
}

void embed(const bf16_t* table, const int32_t* tokens, float* hidden, int T, int h, int vocabStart, int vocabCount,
           cudaStream_t s) {
  embedKernel<<<T, 256, 0, s>>>(table, tokens, hidden, h, vocabStart, vocabCount);
}

void joinVocab(const float* parts, int rows, int part, float* logits, int V, cudaStream_t s) {
  if (rows == 0) return;
  joinVocabKernel<<<dim3(std::min((V + 255) / 256, 64), rows), 256, 0, s>>>(parts, rows, part, logits, V);
}

void rmsnorm(const float* x, const int32_t* rows, const float* w, bf16_t* y, int m, int h, float eps, cudaStream_t s,
             int ldy, bool pdl) {
  if (m == 0) return;
  if (ldy == 0) ldy = h;
  const int vec = (h / 4 + kNormThreads - 1) / kNormThreads;
  const dim3 grid(m), block(kNormThreads);
  const char* what = "rmsnorm launch";
  if (h % 4 != 0 || ldy % 4 != 0 || vec > kNormMaxVec || !alignedTo(x, 16) || !alignedTo(w, 16) || !alignedTo(y, 8)) {
    launchPdl(rmsnormKernel, grid, block, s, pdl, what, x, rows, w, y, h, ldy, eps);
  } else if (vec <= 1) {
    launchPdl(rmsnormVecKernel<1>, grid, block, s, pdl, what, x, rows, w, y, h, ldy, eps);
  } else if (vec <= 2) {
    launchPdl(rmsnormVecKernel<2>, grid, block, s, pdl, what, x, rows, w, y, h, ldy, eps);
  } else if (vec <= 4) {
    launchPdl(rmsnormVecKernel<4>, grid, block, s, pdl, what, x, rows, w, y, h, ldy, eps);
  } else {
    launchPdl(rmsnormVecKernel<kNormMaxVec>, grid, block, s, pdl, what, x, rows, w, y, h, ldy, eps);
  }
}

void qkvBiasNorm(float* qkv, const float* bias, const float* qNorm, const float* kNorm, int T, const AttnShape& a,
                 float eps, cudaStream_t s) {
  if (T == 0 || (!bias && !qNorm)) return;
  qkvBiasNormKernel<<<T, 256, 0, s>>>(qkv, bias, qNorm, kNorm, a, eps);
}

namespace {

template <typename In>
void launchRopeKv(const In* qkv, const float* invFreq, const TokenMap& map, const AttnShape& a, bf16_t* q,
                  bf16_t* kCache, bf16_t* vCache, cudaStream_t s) {
  // A short step spreads each token over several blocks: one block's 256 threads would take ten
  // rounds of double-precision sincos for a Llama-8B token, on one SM.
  const int spread = std::clamp(64 / std::max(map.tokens, 1), 1, 8);
  const dim3 grid(map.tokens, spread);
  // Rows of head_dim values start 4 x sizeof(In) bytes apart at head_dim % 8 == 0 (q and the cache
  // in bf16, every qkv row too since the row holds heads + 2 KV heads of them).
  if (a.headDim % 8 == 0 && alignedTo(qkv, 4 * sizeof(In)) && alignedTo(q, 8) && alignedTo(kCache, 8) &&
      alignedTo(vCache, 8)) {
    ropeKvKernel<true><<<grid, 256, 0, s>>>(qkv, invFreq, map, a, q, kCache, vCache);
  } else {
    ropeKvKernel<false><<<grid, 256, 0, s>>>(qkv, invFreq, map, a, q, kCache, vCache);
  }
}

}  // namespace

void ropeKv(const float* qkv, const float* invFreq, const TokenMap& map, const AttnShape& a, bf16_t* q, bf16_t* kCache,
            bf16_t* vCache, cudaStream_t s) {
  launchRopeKv(qkv, invFreq, map, a, q, kCache, vCache, s);
}

void ropeKv(const bf16_t* qkv, const float* invFreq, const TokenMap& map, const AttnShape& a, bf16_t* q, bf16_t* kCache,
            bf16_t* vCache, cudaStream_t s) {
  launchRopeKv(qkv, invFreq, map, a, q, kCache, vCache, s);
}

void gatherKv(const bf16_t* kCache, const bf16_t* vCache, const TokenMap& map, int seq, int keys, const AttnShape& a,
              bf16_t* kOut, bf16_t* vOut, cudaStream_t s) {
  const int threads = a.headDim < 128 ? a.headDim : 128;
  gatherKvKernel<<<dim3(keys, a.kvHeads), threads, 0, s>>>(kCache, vCache, map, seq, keys, a, kOut, vOut);
}

void causalSoftmax(const float* scores, bf16_t* probs, int kvHeads, int tokens, int group, int keys, int firstPos,
                   int window, cudaStream_t s) {
  causalSoftmaxKernel<<<dim3(tokens * group, kvHeads), kSoftmaxThreads, 0, s>>>(scores, probs, tokens, group, keys,
                                                                                firstPos, window);
}

void scatterHeads(const bf16_t* o, bf16_t* out, int tokens, int firstToken, const AttnShape& a, cudaStream_t s) {
  scatterHeadsKernel<<<tokens, 256, 0, s>>>(o, out, tokens, firstToken, a);
}

void siluMul(const float* gu, bf16_t* act, int T, int inter, cudaStream_t s, int ldAct) {
  if (T == 0) return;
  if (ldAct == 0) ldAct = inter;
  if (inter % 4 == 0 && ldAct % 4 == 0 && alignedTo(gu, 16) && alignedTo(act, 8)) {
    siluMulVecKernel<<<dim3((inter / 4 + 255) / 256, T), 256, 0, s>>>(gu, act, inter, ldAct);
  } else {
    siluMulKernel<<<dim3((inter + 255) / 256, T), 256, 0, s>>>(gu, act, inter, ldAct);
  }
}

void siluMul(const bf16_t* gu, bf16_t* act, int T, int inter, cudaStream_t s, int ldAct) {
  if (T == 0) return;
  if (ldAct == 0) ldAct = inter;
  if (inter % 8 == 0 && ldAct % 8 == 0 && alignedTo(gu, 16) && alignedTo(act, 16)) {
    siluMulHalfVecKernel<<<dim3((inter / 8 + 255) / 256, T), 256, 0, s>>>(gu, act, inter, ldAct);
  } else {
    siluMulKernel<<<dim3((inter + 255) / 256, T), 256, 0, s>>>(gu, act, inter, ldAct);
  }
}

}  // namespace cuda
}  // namespace troupe
