// The consumers of the tail layout (lora_tail.h) other than RoPE (kernels.cu): SiLU-and-mul with
// the gate and up deltas, and the residual add with the o or down deltas before the next RMSNorm.
#include <cooperative_groups.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cub/block/block_reduce.cuh>
#include <stdexcept>

#include "cuda/bf16_pack.cuh"
#include "cuda/device.h"
#include "cuda/lora_tail.cuh"

namespace troupe {
namespace cuda {

namespace {

using namespace tail_ops;

constexpr int kSiluThreads = 128;  // four features a thread: 512 a block
constexpr int kSiluTokens = 4;     // tokens a thread carries through one pass over the ranks
constexpr int kNormParts = 4;      // blocks (a cluster) per row of addNormTail
constexpr int kNormThreads = 256;

__device__ __forceinline__ float silu(float x) { return x / (1.0f + __expf(-x)); }

__device__ __forceinline__ uint2 siluPack(const float (&g)[4], const float (&u)[4]) {
  return make_uint2(pairB(silu(g[0]) * u[0], silu(g[1]) * u[1]), pairB(silu(g[2]) * u[2], silu(g[3]) * u[3]));
}

// acc[k][i] += token k's delta of module j's output f + i, for the first `tokens` of kSiluTokens
// tokens of one slot (m: token k's scaled shrink outputs at m + k width). Rank by rank: one 8-byte
// piece of B for the four outputs, used by every token.
__device__ __forceinline__ void addDeltas(const LoraTail& tl, int j, int slot, int f, const float* m, int width,
                                          int tokens, int rank, float (&acc)[kSiluTokens][4]) {
  const int stride = tl.out[j] / 4;
  const uint2* b = reinterpret_cast<const uint2*>(tl.bt[j] + static_cast<size_t>(slot) * tl.maxRank * tl.out[j] + f);
  for (int r0 = 0; r0 < rank; r0 += kRanksInFlight) {
    uint2 v[kRanksInFlight];
#pragma unroll
    for (int i = 0; i < kRanksInFlight; ++i)
      v[i] = r0 + i < rank ? __ldg(b + static_cast<size_t>(r0 + i) * stride) : make_uint2(0, 0);
#pragma unroll
    for (int i = 0; i < kRanksInFlight; ++i) {
      if (r0 + i >= rank) break;
      const int r = r0 + i;
      const float w0 = bf16f(v[i].x & 0xffffu), w1 = bf16f(v[i].x >> 16), w2 = bf16f(v[i].y & 0xffffu),
                  w3 = bf16f(v[i].y >> 16);
#pragma unroll
      for (int k = 0; k < kSiluTokens; ++k) {
        const float mk = k < tokens ? m[k * width + r] : 0.0f;
        acc[k][0] = fmaf(mk, w0, acc[k][0]);
        acc[k][1] = fmaf(mk, w1, acc[k][1]);
        acc[k][2] = fmaf(mk, w2, acc[k][2]);
        acc[k][3] = fmaf(mk, w3, acc[k][3]);
      }
    }
  }
}

// Blocks y < gridItems take adapter item y: its tokens share a slot, so each B row piece a thread
// loads serves all of them; the rest take kSiluTokens base tokens each. ms: the item's tokens'
// scaled shrink outputs.
__global__ void __launch_bounds__(kSiluThreads)
    siluMulTailKernel(const float* gu, int ld, LoraTail tl, LoraItems items, int inter, int T, bf16_t* act, int ldAct) {
  extern __shared__ float ms[];  // [token of the item][count * maxRank]
  const int f = (blockIdx.x * kSiluThreads + threadIdx.x) * 4, y = blockIdx.y;
  if (y >= items.gridItems) {
    const int t0 = (y - items.gridItems) * kSiluTokens;
    if (f >= inter) return;
    for (int k = 0; k < kSiluTokens && t0 + k < T; ++k) {
      const int t = t0 + k;
      if (tl.rowSlot[t] >= 0) continue;
      const float* row = gu + static_cast<size_t>(t) * ld;
      const float4 g4 = *reinterpret_cast<const float4*>(row + f),
                   u4 = *reinterpret_cast<const float4*>(row + inter + f);
      const float g[4] = {g4.x, g4.y, g4.z, g4.w}, u[4] = {u4.x, u4.y, u4.z, u4.w};
      *reinterpret_cast<uint2*>(act + static_cast<size_t>(t) * ldAct + f) = siluPack(g, u);
    }
    return;
  }
  if (y >= *items.numItems) return;
  const int begin = items.itemStart[y], n = items.itemStart[y + 1] - begin, slot = items.itemSlot[y];
  const int width = tl.count * tl.maxRank;
  for (int k = 0; k < n; ++k) loadMids(tl, items.perm[begin + k], slot, ms + k * width);
  __syncthreads();
  if (f >= inter) return;
  // The gate and up modules among the held ones (-1: not held).
  int jg = -1, ju = -1;
  for (int j = 0; j < tl.count; ++j) (tl.outOffset[j] == 0 ? jg : ju) = j;
  const int rg = jg >= 0 ? tl.ranks[slot * kModules + tl.module[jg]] : 0;
  const int ru = ju >= 0 ? tl.ranks[slot * kModules + tl.module[ju]] : 0;
  for (int k0 = 0; k0 < n; k0 += kSiluTokens) {
    float g[kSiluTokens][4], u[kSiluTokens][4];
    int t[kSiluTokens];
#pragma unroll
    for (int k = 0; k < kSiluTokens; ++k) {
      t[k] = k0 + k < n ? items.perm[begin + k0 + k] : -1;
      const float* row = gu + static_cast<size_t>(t[k] >= 0 ? t[k] : 0) * ld;
      const float4 g4 = *reinterpret_cast<const float4*>(row + f),
                   u4 = *reinterpret_cast<const float4*>(row + inter + f);
      g[k][0] = g4.x, g[k][1] = g4.y, g[k][2] = g4.z, g[k][3] = g4.w;
      u[k][0] = u4.x, u[k][1] = u4.y, u[k][2] = u4.z, u[k][3] = u4.w;
    }
    if (jg >= 0) addDeltas(tl, jg, slot, f, ms + k0 * width + jg * tl.maxRank, width, n - k0, rg, g);
    if (ju >= 0) addDeltas(tl, ju, slot, f, ms + k0 * width + ju * tl.maxRank, width, n - k0, ru, u);
#pragma unroll
    for (int k = 0; k < kSiluTokens; ++k)
      if (t[k] >= 0) *reinterpret_cast<uint2*>(act + static_cast<size_t>(t[k]) * ldAct + f) = siluPack(g[k], u[k]);
  }
}

// Four consecutive columns a thread, each block a quarter of the row.
__global__ void __cluster_dims__(kNormParts, 1, 1) __launch_bounds__(kNormThreads)
    addNormTailKernel(float* hidden, const float* ext, int ldExt, LoraTail tl, const float* w, bf16_t* y, int ldy,
                      int h, float eps) {
  const int part = blockIdx.x, t = blockIdx.y;
  __shared__ float ms[kMaxLoraSlices * kMaxTailRank];
  __shared__ float sum;
  const int slot = tl.count ? tl.rowSlot[t] : -1;
  if (slot >= 0) loadMids(tl, t, slot, ms);
  __syncthreads();
  const int cols = h / kNormParts, c0 = part * cols;
  float* hr = hidden + static_cast<size_t>(t) * h;
  const float* er = ext + static_cast<size_t>(t) * ldExt;
  float ss = 0.0f;
  for (int c = c0 + 4 * threadIdx.x; c < c0 + cols; c += 4 * kNormThreads) {
    const float4 a = *reinterpret_cast<const float4*>(hr + c), e = *reinterpret_cast<const float4*>(er + c);
    float v[4] = {a.x + e.x, a.y + e.y, a.z + e.z, a.w + e.w};
    if (slot >= 0) {
      int cc = 0;
      const int j = sliceOf(tl, c, cc);
      if (j >= 0) delta4(tl, j, slot, cc, ms + j * tl.maxRank, tl.ranks[slot * kModules + tl.module[j]], v);
    }
    *reinterpret_cast<float4*>(hr + c) = make_float4(v[0], v[1], v[2], v[3]);
    ss += v[0] * v[0] + v[1] * v[1] + v[2] * v[2] + v[3] * v[3];
  }
  if (!y) return;
  using Reduce = cub::BlockReduce<float, kNormThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const float blockSum = Reduce(tmp).Sum(ss);
  if (threadIdx.x == 0) sum = blockSum;
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();
  float total = 0.0f;
#pragma unroll
  for (int r = 0; r < kNormParts; ++r) total += *cluster.map_shared_rank(&sum, r);
  cluster.sync();  // no block leaves while another still reads its sum
  const float scale = 1.0f / sqrtf(total / h + eps);
  bf16_t* yr = y + static_cast<size_t>(t) * ldy;
  for (int c = c0 + threadIdx.x; c < c0 + cols; c += kNormThreads) yr[c] = toB(w[c] * (hr[c] * scale));
}

}  // namespace

LoraTail loraTail(const LoraSlices& sl, int slots, const float* mid, int ldMid, const int32_t* rowSlot,
                  const int32_t* ranks, const float* scaling) {
  LoraTail tl;
  tl.count = sl.count;
  tl.maxRank = sl.maxRank;
  tl.slots = slots;
  tl.mid = mid;
  tl.ldMid = ldMid;
  for (int j = 0; j < sl.count; ++j) {
    if (!sl.bt[j]) throw std::logic_error("LoRA tail: the pool keeps no transposed B for this group");
    tl.bt[j] = sl.bt[j];
    tl.outOffset[j] = sl.outOffset[j];
    tl.out[j] = sl.out[j];
    tl.module[j] = sl.module[j];
  }
  tl.rowSlot = rowSlot;
  tl.ranks = ranks;
  tl.scaling = scaling;
  return tl;
}

bool loraTailSupported(int maxRank, int hidden, int intermediate) {
  return maxRank <= kMaxTailRank && hidden % (4 * kNormParts) == 0 && intermediate % 4 == 0;
}

bool siluMulTailFits(int maxItem, int count, int maxRank) {
  return static_cast<size_t>(maxItem) * count * maxRank * sizeof(float) <= 48u * 1024;
}

void siluMulTail(const float* gu, int ld, const LoraTail& tail, const LoraItems& items, int maxItem, bf16_t* act, int T,
                 int inter, cudaStream_t s, int ldAct) {
  if (T == 0) return;
  if (ldAct == 0) ldAct = inter;
  if (!siluMulTailFits(maxItem, tail.count, tail.maxRank))
    throw std::logic_error("LoRA tail: an item's shrink outputs exceed the SiLU kernel's shared memory");
  if (inter % 4 != 0) throw std::logic_error("LoRA tail: the intermediate size is not a multiple of 4");
  const dim3 grid((inter / 4 + kSiluThreads - 1) / kSiluThreads, items.gridItems + (T + kSiluTokens - 1) / kSiluTokens);
  const size_t smem = static_cast<size_t>(maxItem) * tail.count * tail.maxRank * sizeof(float);
  siluMulTailKernel<<<grid, kSiluThreads, smem, s>>>(gu, ld, tail, items, inter, T, act, ldAct);
  check(cudaGetLastError(), "LoRA tail SiLU launch");
}

void addNormTail(float* hidden, const float* ext, int ldExt, const LoraTail& tail, const float* w, bf16_t* y, int ldy,
                 int T, int h, float eps, cudaStream_t s) {
  if (T == 0) return;
  if (h % (4 * kNormParts) != 0) throw std::logic_error("LoRA tail: the hidden size is not a multiple of 16");
  addNormTailKernel<<<dim3(kNormParts, T), kNormThreads, 0, s>>>(hidden, ext, ldExt, tail, w, y, ldy ? ldy : h, h, eps);
  check(cudaGetLastError(), "LoRA tail add-norm launch");
}

}  // namespace cuda
}  // namespace troupe
