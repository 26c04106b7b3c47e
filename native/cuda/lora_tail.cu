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

constexpr int kSiluThreads = 128;  // features a block takes (one a thread)
constexpr int kSiluTokens = 8;     // tokens whose gate and up values a thread loads at once
constexpr int kNormParts = 4;      // blocks (a cluster) per row of addNormTail
constexpr int kNormThreads = 256;

__device__ __forceinline__ float silu(float x) { return x / (1.0f + __expf(-x)); }

// Blocks y < gridItems take adapter item y (its tokens share a slot, so each thread's B rows stay
// in L1 across them); the rest take kSiluTokens base tokens each. ms: the item's tokens' mids.
__global__ void __launch_bounds__(kSiluThreads)
    siluMulTailKernel(const float* gu, int ld, LoraTail tl, LoraItems items, int inter, int T, bf16_t* act, int ldAct) {
  extern __shared__ float ms[];  // [token of the item][count * maxRank]
  const int f = blockIdx.x * kSiluThreads + threadIdx.x, y = blockIdx.y;
  if (y >= items.gridItems) {
    const int t0 = (y - items.gridItems) * kSiluTokens;
    if (f >= inter) return;
    for (int k = 0; k < kSiluTokens && t0 + k < T; ++k) {
      const int t = t0 + k;
      if (tl.rowSlot[t] >= 0) continue;
      const float* row = gu + static_cast<size_t>(t) * ld;
      act[static_cast<size_t>(t) * ldAct + f] = toB(silu(row[f]) * row[inter + f]);
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
    float g[kSiluTokens], u[kSiluTokens];
    int t[kSiluTokens];
#pragma unroll
    for (int k = 0; k < kSiluTokens; ++k) {
      t[k] = k0 + k < n ? items.perm[begin + k0 + k] : -1;
      const float* row = gu + static_cast<size_t>(t[k] >= 0 ? t[k] : 0) * ld;
      g[k] = t[k] >= 0 ? row[f] : 0.0f;
      u[k] = t[k] >= 0 ? row[inter + f] : 0.0f;
    }
#pragma unroll
    for (int k = 0; k < kSiluTokens; ++k) {
      if (t[k] < 0) break;
      const float* m = ms + (k0 + k) * width;
      const float dg = jg >= 0 ? delta(tl, jg, slot, f, m + jg * tl.maxRank, rg) : 0.0f;
      const float du = ju >= 0 ? delta(tl, ju, slot, f, m + ju * tl.maxRank, ru) : 0.0f;
      act[static_cast<size_t>(t[k]) * ldAct + f] = toB(silu(g[k] + dg) * (u[k] + du));
    }
  }
}

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
  for (int c = c0 + threadIdx.x; c < c0 + cols; c += kNormThreads) {
    float v = hr[c] + er[c];
    if (slot >= 0) v += deltaAt(tl, slot, c, ms);
    hr[c] = v;
    ss += v * v;
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
  tl.bLd = sl.bLd[0];
  for (int j = 0; j < sl.count; ++j) {
    if (sl.bSlotStride[j] != static_cast<size_t>(sl.maxRank) || sl.bLd[j] != tl.bLd)
      throw std::logic_error("LoRA tail: B is not in the weight's padding columns");
    tl.b[j] = sl.b[j];
    tl.outOffset[j] = sl.outOffset[j];
    tl.out[j] = sl.out[j];
    tl.module[j] = sl.module[j];
  }
  tl.rowSlot = rowSlot;
  tl.ranks = ranks;
  tl.scaling = scaling;
  return tl;
}

bool loraTailSupported(int maxRank, int bLd, int in) {
  return maxRank % 8 == 0 && maxRank <= kMaxTailRank && bLd % 8 == 0 && in % 8 == 0;
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
  const dim3 grid((inter + kSiluThreads - 1) / kSiluThreads, items.gridItems + (T + kSiluTokens - 1) / kSiluTokens);
  const size_t smem = static_cast<size_t>(maxItem) * tail.count * tail.maxRank * sizeof(float);
  siluMulTailKernel<<<grid, kSiluThreads, smem, s>>>(gu, ld, tail, items, inter, T, act, ldAct);
  check(cudaGetLastError(), "LoRA tail SiLU launch");
}

void addNormTail(float* hidden, const float* ext, int ldExt, const LoraTail& tail, const float* w, bf16_t* y, int ldy,
                 int T, int h, float eps, cudaStream_t s) {
  if (T == 0) return;
  if (h % kNormParts != 0) throw std::logic_error("LoRA tail: the hidden size is not a multiple of 4");
  addNormTailKernel<<<dim3(kNormParts, T), kNormThreads, 0, s>>>(hidden, ext, ldExt, tail, w, y, ldy ? ldy : h, h, eps);
  check(cudaGetLastError(), "LoRA tail add-norm launch");
}

}  // namespace cuda
}  // namespace troupe
