// siluMulLora (lora_tail.h): a thread takes two features of four tokens of the step's slot order,
// reading its features' B for the group's slot from the transposed copies before the
// programmatic-launch wait. After it, the block's first threads round the tokens' scaled shrink
// outputs to bf16 into shared memory (as the fused layout's LoRA columns are), and every thread
// adds its deltas, then SiLU and the product, with siluMul's expression (base tokens' rows come
// out bit for bit the same).
#include <stdexcept>

#include "cuda/bf16_pack.cuh"
#include "cuda/device.h"
#include "cuda/lora_tail.h"
#include "cuda/pdl.cuh"
#include "cuda/silu.cuh"

namespace troupe {
namespace cuda {

namespace {

// A thread takes two features of four tokens (two, not siluMul's four: the deltas' products make
// the kernel issue-bound, and more threads hide more of its load latency).
constexpr int kFeatures = 2, kGroup = 4, kThreads = 128;

__device__ __forceinline__ void addDelta(float2& x, uint32_t b, float v) {
  x.x = fmaf(__uint_as_float(b << 16), v, x.x);
  x.y = fmaf(__uint_as_float(b & 0xffff0000u), v, x.y);
}

// Which held slices are gate's (outputs from 0) and up's (from inter), picked by selects (a
// parameter array indexed at run time would go through local memory); -1 where one is not held.
__device__ __forceinline__ void gateUpSlices(const LoraTailDelta& d, int inter, int& jg, int& ju) {
  jg = ju = -1;
#pragma unroll
  for (int j = 0; j < kMaxLoraSlices; ++j) {
    if (j >= d.count) continue;
    if (d.outOffset[j] == 0) jg = j;
    if (d.outOffset[j] == inter) ju = j;
  }
}

__device__ __forceinline__ const bf16_t* sliceB(const LoraTailDelta& d, int j, int slot, int inter) {
  const bf16_t* b = d.bt[0];
#pragma unroll
  for (int k = 1; k < kMaxLoraSlices; ++k)
    if (k == j) b = d.bt[k];
  return b + static_cast<size_t>(slot) * d.maxRank * inter;
}

__device__ __forceinline__ int sliceRank(const LoraTailDelta& d, int j, int slot) {
  if (j < 0 || slot < 0) return 0;
  int module = d.module[0];
#pragma unroll
  for (int k = 1; k < kMaxLoraSlices; ++k)
    if (k == j) module = d.module[k];
  return min(d.ranks[slot * d.rankPitch + module], d.maxRank);
}

// B's values for a thread's two features of one slot, every row up to maxRank (those past the
// slot's rank are read but never used).
__device__ __forceinline__ void loadB(uint32_t (&b)[kLoraTailMaxRank], const bf16_t* bt, int maxRank, int inter) {
#pragma unroll
  for (int r = 0; r < kLoraTailMaxRank; ++r)
    if (r < maxRank) b[r] = *reinterpret_cast<const uint32_t*>(bt + static_cast<size_t>(r) * inter);
}

// A thread takes two features of kGroup consecutive tokens of the step's slot order (d.order), so
// that it reads its features' B once for the group (a group mostly holds one slot; a token of
// another slot reads its own). The loads are laid out so that the chain a thread waits on is
// short: the tokens' rows and slots, then B, the ranks and the gate/up values together.
__global__ void __launch_bounds__(kThreads)
    siluMulLoraKernel(const float* __restrict__ gu, int pitch, int inter, bf16_t* __restrict__ act, int ldAct, int T,
                      LoraTailDelta d) {
  pdlLaunchDependents();
  __shared__ float v[kGroup][kMaxLoraSlices][kLoraTailMaxRank];
  const int p0 = blockIdx.x * kGroup, n = min(kGroup, T - p0);
  const int f = (blockIdx.y * kThreads + threadIdx.x) * kFeatures;
  int t[kGroup], slot[kGroup];
#pragma unroll
  for (int k = 0; k < kGroup; ++k) t[k] = d.order[p0 + min(k, n - 1)];
#pragma unroll
  for (int k = 0; k < kGroup; ++k) slot[k] = d.rowSlot[t[k]];
  int jg, ju;
  gateUpSlices(d, inter, jg, ju);
  uint32_t bG[kLoraTailMaxRank] = {}, bU[kLoraTailMaxRank] = {};
  const bool fast = slot[0] >= 0 && f < inter;
  if (fast && jg >= 0) loadB(bG, sliceB(d, jg, slot[0], inter) + f, d.maxRank, inter);
  if (fast && ju >= 0) loadB(bU, sliceB(d, ju, slot[0], inter) + f, d.maxRank, inter);
  const int rankG0 = sliceRank(d, jg, slot[0]), rankU0 = sliceRank(d, ju, slot[0]);
  pdlWait();
  const int per = d.count * d.maxRank;
  for (int i = threadIdx.x; i < n * per; i += kThreads) {
    const int k = i / per, j = (i % per) / d.maxRank, r = i % d.maxRank, tk = d.order[p0 + k], s = d.rowSlot[tk];
    if (s < 0) continue;
    const float x =
        d.scaling[s] * gu[static_cast<size_t>(tk) * pitch + d.tailColumn + (s * d.count + j) * d.maxRank + r];
    v[k][j][r] = __uint_as_float(static_cast<uint32_t>(toB(x)) << 16);
  }
  float2 g[kGroup], up[kGroup];
#pragma unroll
  for (int k = 0; k < kGroup; ++k) {
    if (k >= n || f >= inter) continue;
    const float* row = gu + static_cast<size_t>(t[k]) * pitch;
    g[k] = *reinterpret_cast<const float2*>(row + f), up[k] = *reinterpret_cast<const float2*>(row + inter + f);
  }
  __syncthreads();
  if (f >= inter) return;
#pragma unroll
  for (int k = 0; k < kGroup; ++k) {
    if (k >= n) continue;
    // A select, not a product, past the rank: B and the outputs there may be NaN.
    if (slot[k] == slot[0]) {
#pragma unroll
      for (int r = 0; r < kLoraTailMaxRank; ++r) {
        if (r < rankG0) addDelta(g[k], bG[r], v[k][jg][r]);
        if (r < rankU0) addDelta(up[k], bU[r], v[k][ju][r]);
      }
    } else if (slot[k] >= 0) {
      const int rankG = sliceRank(d, jg, slot[k]), rankU = sliceRank(d, ju, slot[k]);
      const bf16_t* btG = rankG > 0 ? sliceB(d, jg, slot[k], inter) + f : nullptr;
      const bf16_t* btU = rankU > 0 ? sliceB(d, ju, slot[k], inter) + f : nullptr;
      for (int r = 0; r < rankG; ++r)
        addDelta(g[k], *reinterpret_cast<const uint32_t*>(btG + static_cast<size_t>(r) * inter), v[k][jg][r]);
      for (int r = 0; r < rankU; ++r)
        addDelta(up[k], *reinterpret_cast<const uint32_t*>(btU + static_cast<size_t>(r) * inter), v[k][ju][r]);
    }
    *reinterpret_cast<uint32_t*>(act + static_cast<size_t>(t[k]) * ldAct + f) =
        pairB(silu(g[k].x) * up[k].x, silu(g[k].y) * up[k].y);
  }
}

}  // namespace

bool siluMulLoraSupported(int inter, int maxRank) {
  return inter % kFeatures == 0 && maxRank >= 1 && maxRank <= kLoraTailMaxRank;
}

void siluMulLora(const float* gu, int pitch, int inter, bf16_t* act, int T, int ldAct, const LoraTailDelta& d,
                 cudaStream_t s, bool pdl) {
  if (T == 0) return;
  bool aligned = siluMulLoraSupported(inter, d.maxRank) && pitch % kFeatures == 0 && ldAct % kFeatures == 0 &&
                 alignedTo(gu, 8) && alignedTo(act, 4) && d.count <= kMaxLoraSlices && d.tailColumn == 2 * inter;
  for (int j = 0; j < d.count; ++j)
    aligned = aligned && alignedTo(d.bt[j], 4) && d.out[j] == inter && (d.outOffset[j] == 0 || d.outOffset[j] == inter);
  if (!aligned) throw std::invalid_argument("siluMulLora: unsupported shape or alignment");
  launchPdl(siluMulLoraKernel, dim3((T + kGroup - 1) / kGroup, (inter / kFeatures + kThreads - 1) / kThreads),
            dim3(kThreads), s, pdl, "siluMulLora launch", gu, pitch, inter, act, ldAct, T, d);
}

}  // namespace cuda
}  // namespace troupe
