// siluMulLora (lora_tail.h): a thread takes four features of a token's gate and the same four of
// its up, as siluMul's vector kernel does. Before the programmatic-launch wait it reads the
// token's slot and ranks and loads its features' B values for the slot from the transposed copies;
// after it, the block's first threads round the token's scaled shrink outputs to bf16 into shared
// memory (as the fused layout's LoRA columns are), and every thread adds its deltas, then SiLU and
// the product, with siluMul's expression (base tokens' rows come out bit for bit the same).
#include <stdexcept>

#include "cuda/bf16_pack.cuh"
#include "cuda/device.h"
#include "cuda/lora_tail.h"
#include "cuda/pdl.cuh"
#include "cuda/silu.cuh"

namespace troupe {
namespace cuda {

namespace {

constexpr int kThreads = 256, kFeatures = 4;

__device__ __forceinline__ void addDelta(float4& x, uint2 b, float v) {
  x.x = fmaf(__uint_as_float(b.x << 16), v, x.x);
  x.y = fmaf(__uint_as_float(b.x & 0xffff0000u), v, x.y);
  x.z = fmaf(__uint_as_float(b.y << 16), v, x.z);
  x.w = fmaf(__uint_as_float(b.y & 0xffff0000u), v, x.w);
}

__global__ void __launch_bounds__(kThreads) siluMulLoraKernel(const float* __restrict__ gu, int pitch, int inter,
                                                              bf16_t* __restrict__ act, int ldAct, LoraTailDelta d) {
  pdlLaunchDependents();
  const int t = blockIdx.x, f = (blockIdx.y * kThreads + threadIdx.x) * kFeatures;
  __shared__ float v[kMaxLoraSlices][kLoraTailMaxRank];
  const int slot = d.rowSlot[t];
  // The held slices among gate (outputs from 0) and up (from inter), picked by selects (a
  // parameter array indexed at run time would go through local memory).
  int jg = -1, ju = -1, rankG = 0, rankU = 0;
  const bf16_t* btG = nullptr;
  const bf16_t* btU = nullptr;
#pragma unroll
  for (int k = 0; k < kMaxLoraSlices; ++k) {
    if (k >= d.count || slot < 0) continue;
    const int rank = min(d.ranks[slot * d.rankPitch + d.module[k]], d.maxRank);
    const bf16_t* bt = d.bt[k] + static_cast<size_t>(slot) * d.maxRank * inter + f;
    if (d.outOffset[k] == 0) jg = k, rankG = rank, btG = bt;
    if (d.outOffset[k] == inter) ju = k, rankU = rank, btU = bt;
  }
  uint2 bG[kLoraTailMaxRank] = {}, bU[kLoraTailMaxRank] = {};
  if (f < inter) {
#pragma unroll
    for (int r = 0; r < kLoraTailMaxRank; ++r) {
      if (r < rankG) bG[r] = *reinterpret_cast<const uint2*>(btG + static_cast<size_t>(r) * inter);
      if (r < rankU) bU[r] = *reinterpret_cast<const uint2*>(btU + static_cast<size_t>(r) * inter);
    }
  }
  pdlWait();
  const float* row = gu + static_cast<size_t>(t) * pitch;
  if (slot >= 0 && threadIdx.x < d.count * d.maxRank) {
    const int j = threadIdx.x / d.maxRank, r = threadIdx.x % d.maxRank;
    const float s = d.scaling[slot] * row[d.tailColumn + (slot * d.count + j) * d.maxRank + r];
    v[j][r] = __uint_as_float(static_cast<uint32_t>(toB(s)) << 16);
  }
  __syncthreads();
  if (f >= inter) return;
  float4 g = *reinterpret_cast<const float4*>(row + f), u = *reinterpret_cast<const float4*>(row + inter + f);
  // A select, not a product, past the rank: B and the outputs there may be NaN.
#pragma unroll
  for (int r = 0; r < kLoraTailMaxRank; ++r) {
    if (r < rankG) addDelta(g, bG[r], v[jg][r]);
    if (r < rankU) addDelta(u, bU[r], v[ju][r]);
  }
  *reinterpret_cast<uint2*>(act + static_cast<size_t>(t) * ldAct + f) =
      make_uint2(pairB(silu(g.x) * u.x, silu(g.y) * u.y), pairB(silu(g.z) * u.z, silu(g.w) * u.w));
}

}  // namespace

bool siluMulLoraSupported(int inter, int maxRank) {
  return inter % kFeatures == 0 && maxRank >= 1 && maxRank <= kLoraTailMaxRank;
}

void siluMulLora(const float* gu, int pitch, int inter, bf16_t* act, int T, int ldAct, const LoraTailDelta& d,
                 cudaStream_t s, bool pdl) {
  if (T == 0) return;
  bool aligned = siluMulLoraSupported(inter, d.maxRank) && pitch % kFeatures == 0 && ldAct % kFeatures == 0 &&
                 alignedTo(gu, 16) && alignedTo(act, 8) && d.count <= kMaxLoraSlices && d.tailColumn == 2 * inter;
  for (int j = 0; j < d.count; ++j)
    aligned = aligned && alignedTo(d.bt[j], 8) && d.out[j] == inter && (d.outOffset[j] == 0 || d.outOffset[j] == inter);
  if (!aligned) throw std::invalid_argument("siluMulLora: unsupported shape or alignment");
  launchPdl(siluMulLoraKernel, dim3(T, (inter / kFeatures + kThreads - 1) / kThreads), dim3(kThreads), s, pdl,
            "siluMulLora launch", gu, pitch, inter, act, ldAct, d);
}

}  // namespace cuda
}  // namespace troupe
