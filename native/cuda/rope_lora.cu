// ropeKvLora (lora_tail.h): a thread takes four features of a token, a pair of them for q and k heads (the two
// halves that rotate together) or four of v, so that a token's row is a few blocks and every
// thread's loads are one round. Before the programmatic-launch wait it reads the token's slot and
// ranks (step inputs and the pool, written before the grid began), loads its features' B values
// for the slot (each rank's run of outputs lies together in the transposed copy) and the block
// computes the rotation angles; after it, the block's first threads round the token's scaled
// shrink outputs to bf16 into shared memory, and every thread adds its delta and rotates.
#include <algorithm>
#include <stdexcept>

#include "cuda/bf16_pack.cuh"
#include "cuda/device.h"
#include "cuda/lora_runs.h"
#include "cuda/lora_tail.h"
#include "cuda/pdl.cuh"

namespace troupe {
namespace cuda {

namespace {

constexpr int kThreads = 256, kFeatures = 4, kMaxHalf = 128;

__device__ __forceinline__ void addDelta(float (&x)[kFeatures], uint2 b, float v) {
  x[0] = fmaf(__uint_as_float(b.x << 16), v, x[0]);
  x[1] = fmaf(__uint_as_float(b.x & 0xffff0000u), v, x[1]);
  x[2] = fmaf(__uint_as_float(b.y << 16), v, x[2]);
  x[3] = fmaf(__uint_as_float(b.y & 0xffff0000u), v, x[3]);
}

__device__ __forceinline__ void load4(const float* p, float (&x)[kFeatures]) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  x[0] = v.x, x[1] = v.y, x[2] = v.z, x[3] = v.w;
}

__device__ __forceinline__ void store4(bf16_t* p, const float (&x)[kFeatures]) {
  *reinterpret_cast<uint2*>(p) = make_uint2(pairB(x[0], x[1]), pairB(x[2], x[3]));
}

__global__ void __launch_bounds__(kThreads)
    ropeKvLoraKernel(const float* __restrict__ qkv, int pitch, const float* __restrict__ invFreq, TokenMap map,
                     AttnShape a, bf16_t* __restrict__ q, bf16_t* __restrict__ kCache, bf16_t* __restrict__ vCache,
                     LoraTailDelta d) {
  pdlLaunchDependents();  // the decode attention after it may start copying earlier keys, as after ropeKv
  const int t = blockIdx.x, u = blockIdx.y * kThreads + threadIdx.x;
  const int D = a.headDim, half = D / 2, G = a.heads / a.kvHeads, qDim = a.heads * D, kvDim = a.kvHeads * D;
  const int pieces = half / kFeatures, pairUnits = (a.heads + a.kvHeads) * pieces,
            units = pairUnits + kvDim / kFeatures;
  const int pos = map.positions[t];
  const int block = map.blockTables[static_cast<size_t>(map.tokenSeq[t]) * map.pitch + pos / a.blockSize];
  const int inBlock = pos % a.blockSize;
  __shared__ float cosSin[2][kMaxHalf];
  __shared__ float v[kMaxLoraSlices][kLoraTailMaxRank];
  for (int i = threadIdx.x; i < half; i += kThreads) {
    const float angle = invFreq[i] * static_cast<float>(pos);
    double sd, cd;
    sincos(static_cast<double>(angle), &sd, &cd);  // as ropeKv: the same rotation bit for bit
    cosSin[0][i] = static_cast<float>(cd);
    cosSin[1][i] = static_cast<float>(sd);
  }
  // This thread's first feature f (a q or k head's pair: f and f + half), and its module j.
  int f = -1, head = 0, i = 0;
  const bool pair = u < pairUnits;
  if (pair) {
    head = u / pieces, i = (u % pieces) * kFeatures, f = head * D + i;
  } else if (u < units) {
    f = qDim + kvDim + (u - pairUnits) * kFeatures;
  }
  const int slot = d.rowSlot[t];
  // Its module's values picked by selects (a parameter array indexed at run time would go
  // through local memory).
  int j = -1, out = 0, module = 0;
  const bf16_t* bt = nullptr;
#pragma unroll
  for (int k = 0; k < kMaxLoraSlices; ++k)
    if (k < d.count && f >= d.outOffset[k] && f < d.outOffset[k] + d.out[k])
      j = k, out = d.out[k], module = d.module[k], bt = d.bt[k] + (f - d.outOffset[k]);
  if (slot < 0) j = -1;
  int rank = 0;
  uint2 b1[kLoraTailMaxRank] = {}, b2[kLoraTailMaxRank] = {};
  if (j >= 0) {
    rank = min(d.ranks[slot * d.rankPitch + module], d.maxRank);
    bt += static_cast<size_t>(slot) * (d.slotRank ? d.slotRank : d.maxRank) * out;
#pragma unroll
    for (int r = 0; r < kLoraTailMaxRank; ++r) {
      if (r >= rank) continue;
      b1[r] = *reinterpret_cast<const uint2*>(bt + static_cast<size_t>(r) * out);
      if (pair) b2[r] = *reinterpret_cast<const uint2*>(bt + static_cast<size_t>(r) * out + half);
    }
  }
  pdlWait();
  const float* row = qkv + static_cast<size_t>(t) * pitch;
  // The token's shrink outputs, scaled and rounded to bf16 as the fused layout's LoRA columns are.
  if (slot >= 0 && threadIdx.x < d.count * d.maxRank) {
    const int jj = threadIdx.x / d.maxRank, r = threadIdx.x % d.maxRank;
    // Ranks past the pool's last slot read that slot's last column instead (then skipped past the
    // token's rank), so that no read passes the row's last tail column.
    const int U = d.slotRank ? d.slotRank : d.maxRank;
    const int rr = d.slots ? min(r, (d.slots - slot) * U - 1) : r;
    const float s = d.scaling[slot] * row[d.tailColumn + lora_runs::slotMajorRow(slot, jj, rr, d.count, U)];
    v[jj][r] = __uint_as_float(static_cast<uint32_t>(toB(s)) << 16);
  }
  __syncthreads();
  if (f < 0) return;
  float x1[kFeatures], x2[kFeatures];
  load4(row + f, x1);
  if (pair) load4(row + f + half, x2);
    // A select, not a product, past the rank: B and the outputs there may be NaN.
#pragma unroll
  for (int r = 0; r < kLoraTailMaxRank; ++r) {
    if (r >= rank) continue;
    const float s = v[j][r];
    addDelta(x1, b1[r], s);
    if (pair) addDelta(x2, b2[r], s);
  }
  if (!pair) {
    const int e = f - qDim - kvDim;
    store4(vCache + (static_cast<size_t>(block) * a.kvHeads * a.blockSize + inBlock) * D +
               static_cast<size_t>(e / D) * a.blockSize * D + e % D,
           x1);
    return;
  }
  float o1[kFeatures], o2[kFeatures];
#pragma unroll
  for (int e = 0; e < kFeatures; ++e) {
    const float c = cosSin[0][i + e], sn = cosSin[1][i + e];
    o1[e] = x1[e] * c + (-x2[e]) * sn;
    o2[e] = x2[e] * c + x1[e] * sn;
  }
  bf16_t* dst =
      head < a.heads
          ? q + ((static_cast<size_t>(head / G) * map.tokens + t) * G + head % G) * D
          : kCache + ((static_cast<size_t>(block) * a.kvHeads + (head - a.heads)) * a.blockSize + inBlock) * D;
  store4(dst + i, o1);
  store4(dst + i + half, o2);
}

}  // namespace

bool ropeKvLoraSupported(const AttnShape& a, int maxRank) {
  return a.headDim % (2 * kFeatures) == 0 && a.headDim / 2 <= kMaxHalf && maxRank >= 1 && maxRank <= kLoraTailMaxRank &&
         a.heads % a.kvHeads == 0;
}

void ropeKvLora(const float* qkv, int pitch, const float* invFreq, const TokenMap& map, const AttnShape& a, bf16_t* q,
                bf16_t* kCache, bf16_t* vCache, const LoraTailDelta& d, cudaStream_t s, bool pdl) {
  if (map.tokens == 0) return;
  bool aligned = ropeKvLoraSupported(a, d.maxRank) && pitch % kFeatures == 0 && alignedTo(qkv, 16) && alignedTo(q, 8) &&
                 alignedTo(kCache, 8) && alignedTo(vCache, 8) && d.count <= kMaxLoraSlices;
  for (int j = 0; j < d.count; ++j)
    aligned = aligned && alignedTo(d.bt[j], 8) && d.out[j] % a.headDim == 0 && d.outOffset[j] % a.headDim == 0;
  if (!aligned) throw std::invalid_argument("ropeKvLora: unsupported shape or alignment");
  // q and k heads' pairs of four features, then v's fours.
  const int units = (a.heads + a.kvHeads) * (a.headDim / 2 / kFeatures) + a.kvHeads * a.headDim / kFeatures;
  launchPdl(ropeKvLoraKernel, dim3(map.tokens, (units + kThreads - 1) / kThreads), dim3(kThreads), s, pdl,
            "ropeKvLora launch", qkv, pitch, invFreq, map, a, q, kCache, vCache, d);
}

}  // namespace cuda
}  // namespace troupe
