// The augmented activation rows of the fused LoRA layout (lora_fused.h), 16 bytes a thread.
// The pieces of each shrink output are summed in the order the expand kernels sum them.
#include <cuda_bf16.h>

#include <climits>
#include <stdexcept>
#include <string>

#include "cuda/device.h"
#include "cuda/lora_augmented.cuh"
#include "cuda/lora_fused.h"

namespace troupe {
namespace cuda {

namespace {

constexpr int kAugmentThreads = 256;
constexpr int kAugmentUnitsPerThread = 2;
constexpr int kModules = 7;  // ranks is [slot][7 modules]
constexpr int kChunk = 8;    // columns a unit writes: 16 bytes of bf16

// The work of one launch, cut into units of 8 columns of one augmented row: first every row's
// padding chunks (token-major), then the x chunks of the rows that take a copy of x.
struct AugmentWork {
  LoraSlices sl;
  int slots;
  const int32_t* rowSlot;
  const int32_t* ranks;
  const float* scaling;
  LoraMid mid;
  const bf16_t* x;
  int ldx;
  AugmentedRows xa;
  int rows;             // augmented rows a token
  int padChunks;        // xa.pad / 8
  int copyRows;         // rows taking a copy of x: the last copyRows of each token's
  int copyChunks;       // ceil(in / 8)
  int padUnits, units;  // fewer than 2^31 (checked on the host)
  bool vec;             // 16-byte loads and stores (alignment checked on the host)
};

// Where the shrink output of slice j's rank q of the adapter from `slot` is in token t's mid.
__device__ __forceinline__ const float* midAt(const LoraMid& m, int t, int slot, int j, int q) {
  const int within = m.slotRank ? q / m.slotRank * m.spanPitch + q % m.slotRank : q;
  return m.data + static_cast<size_t>(t) * m.tokenPitch + slot * m.slotPitch + j * m.slicePitch + within;
}

// The scaled shrink output under padding column c of token t's row `row` (zero where the column is
// another adapter's, past the adapter's rank for its module, or in the rounding tail). A select,
// not a product: values past the rank (and other adapters') may be anything. The pieces are summed
// in slab order, as the expand kernels sum them.
__device__ __forceinline__ float paddingValue(const AugmentWork& w, int t, int slot, int row, int c) {
  const int U = w.sl.slotRank ? w.sl.slotRank : w.sl.maxRank, block = w.slots * U;
  const int j = paddingSlice(w.xa, row, c, block, w.sl.count), q = c % block - slot * U;
  if (j >= w.sl.count || q < 0 || q >= __ldg(w.ranks + slot * kModules + w.sl.module[j])) return 0.0f;
  const float* p = midAt(w.mid, t, slot, j, q);
  float v = 0.0f;
  for (int i = 0; i < w.mid.pieces; ++i) v += __ldcg(p + i * w.mid.slab);
  return v * __ldg(w.scaling + slot);
}

// Eight padding columns from c0. With the slot rank a multiple of 8 they share their slice and
// slot, so the rank and the eight sums are looked up once; otherwise column by column.
__device__ __forceinline__ void paddingChunk(const AugmentWork& w, int t, int row, int c0, float (&v)[kChunk]) {
  const int slot = __ldg(w.rowSlot + t);
  const int U = w.sl.slotRank ? w.sl.slotRank : w.sl.maxRank, block = w.slots * U;
  if (U % kChunk != 0) {
#pragma unroll
    for (int e = 0; e < kChunk; ++e) v[e] = slot >= 0 ? paddingValue(w, t, slot, row, c0 + e) : 0.0f;
    return;
  }
  const int j = paddingSlice(w.xa, row, c0, block, w.sl.count), r0 = c0 % block - slot * U;
#pragma unroll
  for (int e = 0; e < kChunk; ++e) v[e] = 0.0f;
  if (slot < 0 || j >= w.sl.count || r0 < 0) return;
  const int rank = __ldg(w.ranks + slot * kModules + w.sl.module[j]);
  if (r0 >= rank) return;
  const float* p = midAt(w.mid, t, slot, j, r0);
  for (int i = 0; i < w.mid.pieces; ++i) {
#pragma unroll
    for (int e = 0; e < kChunk; ++e) v[e] += __ldcg(p + i * w.mid.slab + e);
  }
  const float scale = __ldg(w.scaling + slot);
#pragma unroll
  for (int e = 0; e < kChunk; ++e) v[e] = r0 + e < rank ? v[e] * scale : 0.0f;
}

__device__ __forceinline__ uint32_t packBf16(float lo, float hi) {
  return static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(lo))) |
         static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(hi))) << 16;
}

// Each thread takes kAugmentUnitsPerThread units a block's width apart (so a warp's stores are
// contiguous), reads all of them before it writes any: every unit is independent, and one
// token's chain of dependent loads (its slot, then its rank and scale) would otherwise be paid
// per token, one block a token, as the previous form did.
__global__ void __launch_bounds__(kAugmentThreads) augmentKernel(AugmentWork w) {
  uint4 val[kAugmentUnitsPerThread];
  bf16_t* dst[kAugmentUnitsPerThread];
  int n[kAugmentUnitsPerThread];  // columns to write (the last x chunk may be short)
#pragma unroll
  for (int q = 0; q < kAugmentUnitsPerThread; ++q) {
    const int u = (blockIdx.x * kAugmentUnitsPerThread + q) * kAugmentThreads + threadIdx.x;
    dst[q] = nullptr;
    n[q] = kChunk;
    if (u < w.padUnits) {
      const int perToken = w.rows * w.padChunks;
      const int t = u / perToken, rem = u % perToken;
      const int row = rem / w.padChunks, c0 = rem % w.padChunks * kChunk;
      float v[kChunk];
      paddingChunk(w, t, row, c0, v);
      val[q] = make_uint4(packBf16(v[0], v[1]), packBf16(v[2], v[3]), packBf16(v[4], v[5]), packBf16(v[6], v[7]));
      dst[q] = augmentedRow(w.xa, t, row) + w.sl.in + c0;
    } else if (u < w.units) {
      const int cu = u - w.padUnits;
      const int perToken = w.copyRows * w.copyChunks;
      const int t = cu / perToken, rem = cu % perToken;
      const int row = w.rows - w.copyRows + rem / w.copyChunks, c0 = rem % w.copyChunks * kChunk;
      const bf16_t* src = w.x + static_cast<size_t>(t) * w.ldx + c0;
      n[q] = min(kChunk, w.sl.in - c0);
      if (w.vec) {
        val[q] = __ldg(reinterpret_cast<const uint4*>(src));
      } else {
        uint32_t e[kChunk];
#pragma unroll
        for (int i = 0; i < kChunk; ++i) e[i] = i < n[q] ? src[i] : 0u;
        val[q] = make_uint4(e[0] | e[1] << 16, e[2] | e[3] << 16, e[4] | e[5] << 16, e[6] | e[7] << 16);
      }
      dst[q] = augmentedRow(w.xa, t, row) + c0;
    }
  }
#pragma unroll
  for (int q = 0; q < kAugmentUnitsPerThread; ++q) {
    if (!dst[q]) continue;
    if (w.vec) {
      *reinterpret_cast<uint4*>(dst[q]) = val[q];
    } else {
      const uint32_t words[4] = {val[q].x, val[q].y, val[q].z, val[q].w};
#pragma unroll
      for (int i = 0; i < kChunk; ++i)
        if (i < n[q]) dst[q][i] = static_cast<bf16_t>(words[i / 2] >> (16 * (i % 2)));
    }
  }
}

}  // namespace

void loraAugment(const LoraSlices& sl, int slots, const int32_t* rowSlot, const int32_t* ranks, const float* scaling,
                 const LoraMid& mid, const bf16_t* x, int ldx, int T, const AugmentedRows& xa, cudaStream_t st) {
  if (T == 0) return;
  AugmentWork w{sl, slots, rowSlot, ranks, scaling, mid, x, ldx, xa};
  w.rows = xa.slicePitch ? sl.count : 1;
  w.padChunks = (xa.pad + kChunk - 1) / kChunk;
  // x may be the first row itself, made in place (CudaBackend::projection): the other rows copy it.
  w.copyRows = !x ? 0 : x == xa.data ? w.rows - 1 : w.rows;
  w.copyChunks = (sl.in + kChunk - 1) / kChunk;
  const long long padUnits = static_cast<long long>(T) * w.rows * w.padChunks;
  const long long units = padUnits + static_cast<long long>(T) * w.copyRows * w.copyChunks;
  const long long perBlock = static_cast<long long>(kAugmentThreads) * kAugmentUnitsPerThread;
  const long long blocks = (units + perBlock - 1) / perBlock;
  if (blocks * perBlock > INT_MAX) {
    throw std::invalid_argument("LoRA augment: " + std::to_string(T) + " tokens of " + std::to_string(w.rows) +
                                " rows of " + std::to_string(sl.in + xa.pad) + " columns are too many for one launch");
  }
  w.padUnits = static_cast<int>(padUnits);
  w.units = static_cast<int>(units);
  w.vec = sl.in % kChunk == 0 && xa.pad % kChunk == 0 && ldx % kChunk == 0 && xa.ld % kChunk == 0 &&
          xa.slicePitch % kChunk == 0 && aligned16(x) && aligned16(xa.data);
  if (blocks == 0) return;
  augmentKernel<<<static_cast<unsigned>(blocks), kAugmentThreads, 0, st>>>(w);
  check(cudaGetLastError(), "LoRA augment launch");
}

}  // namespace cuda
}  // namespace troupe
