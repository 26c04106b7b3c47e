// Decode attention over the paged cache. A block takes one (token, KV head, context split): its
// 16 groups of 8 lanes walk the split's keys, each group holding headDim / 8 dimensions of every
// query head that shares the KV head (GQA reads each key once for the whole group), with an
// online softmax. Splits are combined by a second kernel; the number of splits depends only on
// the launch, so a captured graph stays valid as contexts grow.
#include <cuda_bf16.h>

#include "cuda/kernels.h"

namespace troupe {
namespace cuda {

namespace {

constexpr int kThreads = 128;
constexpr int kGroups = kThreads / 8;

template <int N>
__device__ __forceinline__ void loadRow(const bf16_t* p, float (&out)[N]) {
  static_assert(N % 4 == 0, "row slices are at least 4 values");
  if constexpr (N % 8 == 0) {
#pragma unroll
    for (int c = 0; c < N / 8; ++c) {
      const uint4 w = reinterpret_cast<const uint4*>(p)[c];
      const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        out[c * 8 + 2 * i] = __uint_as_float(words[i] << 16);
        out[c * 8 + 2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
      }
    }
  } else {
    const uint2 w = *reinterpret_cast<const uint2*>(p);
    out[0] = __uint_as_float(w.x << 16);
    out[1] = __uint_as_float(w.x & 0xffff0000u);
    out[2] = __uint_as_float(w.y << 16);
    out[3] = __uint_as_float(w.y & 0xffff0000u);
  }
}

template <int D, int G>
__global__ void __launch_bounds__(kThreads)
    decodeKernel(const bf16_t* q, const bf16_t* kCache, const bf16_t* vCache, const int32_t* idx, TokenMap map,
                 AttnShape a, int splits, float scale, float* partial, float* partialMl) {
  constexpr int DL = D / 8;
  const int local = blockIdx.x, g = blockIdx.y, s = blockIdx.z;
  const int t = idx[local];
  const int lane8 = threadIdx.x & 7, sub = threadIdx.x >> 3;
  const int KVH = a.kvHeads, bs = a.blockSize;

  float qr[G][DL];
#pragma unroll
  for (int j = 0; j < G; ++j) {
    float tmp[DL];
    loadRow<DL>(q + ((static_cast<size_t>(g) * map.tokens + t) * G + j) * D + lane8 * DL, tmp);
#pragma unroll
    for (int d = 0; d < DL; ++d) qr[j][d] = tmp[d] * scale;
  }
  const int ctx = map.positions[t] + 1;
  // The visible keys [lo, ctx): the whole prefix, or its last a.window positions.
  const int lo = a.window > 0 ? max(0, ctx - a.window) : 0;
  const int len = (ctx - lo + splits - 1) / splits;
  const int begin = lo + s * len;
  const int end = min(ctx, begin + len);
  const int32_t* bt = map.blockTables + static_cast<size_t>(map.tokenSeq[t]) * map.pitch;

  float m[G], l[G], acc[G][DL];
#pragma unroll
  for (int j = 0; j < G; ++j) {
    m[j] = -INFINITY;
    l[j] = 0;
#pragma unroll
    for (int d = 0; d < DL; ++d) acc[j][d] = 0;
  }
  // Every lane runs the same number of iterations (the shuffles need the whole warp); lanes past
  // the end of the split skip the update.
  for (int k0 = begin; k0 < end; k0 += kGroups) {
    const int k = k0 + sub;
    const bool valid = k < end;
    float kf[DL], vf[DL];
    if (valid) {
      const size_t off = ((static_cast<size_t>(bt[k / bs]) * KVH + g) * bs + k % bs) * D + lane8 * DL;
      loadRow<DL>(kCache + off, kf);
      loadRow<DL>(vCache + off, vf);
    } else {
#pragma unroll
      for (int d = 0; d < DL; ++d) kf[d] = vf[d] = 0;
    }
#pragma unroll
    for (int j = 0; j < G; ++j) {
      float dot = 0;
#pragma unroll
      for (int d = 0; d < DL; ++d) dot += qr[j][d] * kf[d];
      dot += __shfl_xor_sync(0xffffffffu, dot, 1);
      dot += __shfl_xor_sync(0xffffffffu, dot, 2);
      dot += __shfl_xor_sync(0xffffffffu, dot, 4);
      if (!valid) continue;
      const float mn = fmaxf(m[j], dot);
      const float c = __expf(m[j] - mn);
      const float p = __expf(dot - mn);
      l[j] = l[j] * c + p;
#pragma unroll
      for (int d = 0; d < DL; ++d) acc[j][d] = acc[j][d] * c + p * vf[d];
      m[j] = mn;
    }
  }

  // Combine the 16 lane groups in a fixed order, so results do not depend on timing.
  __shared__ float sm[kGroups][G];
  __shared__ float sacc[G][D];
  __shared__ float sl[kGroups][G];
  if (lane8 == 0) {
#pragma unroll
    for (int j = 0; j < G; ++j) sm[sub][j] = m[j];
  }
  for (int e = threadIdx.x; e < G * D; e += kThreads) sacc[e / D][e % D] = 0;
  __syncthreads();
#pragma unroll
  for (int j = 0; j < G; ++j) {
    float M = -INFINITY;
    for (int i = 0; i < kGroups; ++i) M = fmaxf(M, sm[i][j]);
    const float c = m[j] == -INFINITY ? 0.0f : __expf(m[j] - M);
    l[j] *= c;
#pragma unroll
    for (int d = 0; d < DL; ++d) acc[j][d] *= c;
  }
  if (lane8 == 0) {
#pragma unroll
    for (int j = 0; j < G; ++j) sl[sub][j] = l[j];
  }
  for (int i = 0; i < kGroups; ++i) {
    if (sub == i) {
#pragma unroll
      for (int j = 0; j < G; ++j)
#pragma unroll
        for (int d = 0; d < DL; ++d) sacc[j][lane8 * DL + d] += acc[j][d];
    }
    __syncthreads();
  }
  const int H = a.heads;
  for (int e = threadIdx.x; e < G * D; e += kThreads) {
    const int j = e / D, d = e % D;
    partial[((static_cast<size_t>(local) * H + g * G + j) * splits + s) * D + d] = sacc[j][d];
  }
  if (threadIdx.x < G) {
    const int j = threadIdx.x;
    float M = -INFINITY, L = 0;
    for (int i = 0; i < kGroups; ++i) {
      M = fmaxf(M, sm[i][j]);
      L += sl[i][j];
    }
    float* ml = partialMl + ((static_cast<size_t>(local) * H + g * G + j) * splits + s) * 2;
    ml[0] = M;
    ml[1] = L;
  }
}

__global__ void combineKernel(const float* partial, const float* partialMl, const int32_t* idx, int heads, int D,
                              int splits, bf16_t* out) {
  const int local = blockIdx.x, h = blockIdx.y;
  const size_t base = static_cast<size_t>(local) * heads + h;
  const float* ml = partialMl + base * splits * 2;
  float M = -INFINITY;
  for (int s = 0; s < splits; ++s)
    if (ml[2 * s + 1] > 0) M = fmaxf(M, ml[2 * s]);
  float L = 0;
  for (int s = 0; s < splits; ++s)
    if (ml[2 * s + 1] > 0) L += __expf(ml[2 * s] - M) * ml[2 * s + 1];
  const float inv = 1.0f / L;
  const int t = idx[local];
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float o = 0;
    for (int s = 0; s < splits; ++s) {
      if (ml[2 * s + 1] > 0) o += __expf(ml[2 * s] - M) * partial[(base * splits + s) * D + d];
    }
    out[(static_cast<size_t>(t) * heads + h) * D + d] = __bfloat16_as_ushort(__float2bfloat16_rn(o * inv));
  }
}

template <int D, int G>
void launch(const bf16_t* q, const bf16_t* k, const bf16_t* v, const int32_t* idx, int count, const TokenMap& map,
            const AttnShape& a, int splits, float scale, float* partial, float* ml, cudaStream_t s) {
  decodeKernel<D, G>
      <<<dim3(count, a.kvHeads, splits), kThreads, 0, s>>>(q, k, v, idx, map, a, splits, scale, partial, ml);
}

using Launcher = void (*)(const bf16_t*, const bf16_t*, const bf16_t*, const int32_t*, int, const TokenMap&,
                          const AttnShape&, int, float, float*, float*, cudaStream_t);

// Groups of 5 to 8 query heads per KV head (Qwen2.5's 6 and 7 among them) hold G * headDim / 8
// query and accumulator values per lane, too many registers at head_dim 256.
template <int D>
Launcher pickG(int group) {
  constexpr bool wide = D <= 128;
  switch (group) {
    case 1:
      return launch<D, 1>;
    case 2:
      return launch<D, 2>;
    case 3:
      return launch<D, 3>;
    case 4:
      return launch<D, 4>;
    case 5:
      return wide ? launch<D, (wide ? 5 : 1)> : nullptr;
    case 6:
      return wide ? launch<D, (wide ? 6 : 1)> : nullptr;
    case 7:
      return wide ? launch<D, (wide ? 7 : 1)> : nullptr;
    case 8:
      return wide ? launch<D, (wide ? 8 : 1)> : nullptr;
    default:
      return nullptr;
  }
}

Launcher pick(int headDim, int group) {
  switch (headDim) {
    case 32:
      return pickG<32>(group);
    case 64:
      return pickG<64>(group);
    case 128:
      return pickG<128>(group);
    case 256:
      return pickG<256>(group);
    default:
      return nullptr;
  }
}

}  // namespace

bool decodeAttentionSupported(int headDim, int group) { return pick(headDim, group) != nullptr; }

void decodeAttention(const bf16_t* q, const bf16_t* kCache, const bf16_t* vCache, const int32_t* idx, int count,
                     const TokenMap& map, const AttnShape& a, int splits, float* partial, float* partialMl, bf16_t* out,
                     cudaStream_t s) {
  const float scale = 1.0f / sqrtf(static_cast<float>(a.headDim));
  pick(a.headDim, a.heads / a.kvHeads)(q, kCache, vCache, idx, count, map, a, splits, scale, partial, partialMl, s);
  combineKernel<<<dim3(count, a.heads), a.headDim, 0, s>>>(partial, partialMl, idx, a.heads, a.headDim, splits, out);
}

}  // namespace cuda
}  // namespace troupe
