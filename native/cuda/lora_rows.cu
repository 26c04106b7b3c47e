// The LoRA row shrink of the fused layout (lora_fused.h): a decode step's projection input rows,
// made and extended with their adapter's scaled shrink outputs in one launch. Grid: tokens x cuts;
// each block remakes its token's row in shared memory (a norm's reduction included: 16 KB of f32
// from L2 for Llama-8B), copies its cut of the row and zeroes its cut of the padding, then its
// warps take every cuts-th of the token's shrink outputs: A's row (bf16, its first pieces loaded
// before the row is made, so both waits overlap) dotted with the row in f32. Dropping the separate
// shrink and augment kernels and the second GEMM over the padding is the point: a decode step's
// LoRA cost was their launches. SiLU rows are not made here: 14,336 SiLUs remade by every cut cost
// more than siluMul's own launch (which writes them into xa; this kernel then reads them in place).
#include <cuda_bf16.h>

#include <algorithm>
#include <cub/block/block_reduce.cuh>
#include <stdexcept>

#include "cuda/bf16_dot.cuh"
#include "cuda/bf16_pack.cuh"
#include "cuda/device.h"
#include "cuda/lora_augmented.cuh"
#include "cuda/lora_fused.h"
#include "cuda/lora_runs.h"

namespace troupe {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kModules = 7;                 // ranks is [slot][7 modules]
constexpr int kInFlight = 8;                // A pieces a lane loads before it uses them
constexpr int kRowUnroll = 4;               // input pieces a thread loads before it uses them
constexpr size_t kDefaultSmem = 48 * 1024;  // shared memory a kernel gets without opting in
constexpr size_t kMaxRowSmem = 112 * 1024;  // rows of up to 57,344 features

template <RowSource S>
__global__ void __launch_bounds__(kThreads)
    rowShrinkKernel(RowInput in, LoraSlices sl, int slots, const int32_t* rowSlot, const int32_t* ranks,
                    const float* scaling, AugmentedRows xa) {
  extern __shared__ __align__(16) unsigned char smem[];
  bf16_t* xs = reinterpret_cast<bf16_t*>(smem);
  const int t = blockIdx.x, cut = blockIdx.y, cuts = gridDim.y, n = sl.in;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int slot = rowSlot[t], R = sl.maxRank, U = sl.slotRank ? sl.slotRank : R, block = slots * U;
  // Output i is slice i / R's rank i % R of the adapter's run from `slot` (lora_runs.h); ranks past
  // the run's columns read its last row and write nothing.
  const int run = slot >= 0 ? loraRunColumns(slot, slots, U, R) : 0;
  const int pieces = n / 8;
  // This block's outputs are i = cut + cuts o. With fewer of them than warps (a rank-16 down
  // projection has 16 over the whole step), `share` warps split each output's row and add up
  // through shared memory, so a short step still keeps every warp reading A.
  const int mine = (sl.count * R - cut + cuts - 1) / cuts;
  const int share = mine >= kWarps ? 1 : kWarps / mine, groups = kWarps / share;
  const int first = warp / share, part = warp % share, stride = 32 * share;
  // Each warp's first batch of A pieces is on its way before the row is made, so the wait for A
  // overlaps the wait for the row's inputs. Nothing here waits on the slot's rank: rows past it
  // are read and their outputs zeroed after, so no load queues behind another.
  uint4 head[kInFlight];
  if (slot >= 0 && first < mine) {
    const int i = cut + cuts * first, j = i / R, r = min(i % R, run - 1);
    const uint4* a =
        reinterpret_cast<const uint4*>(sl.a[j] + slot * sl.aSlotStride[j] + lora_runs::sliceRow(r, sl.count, U) * n);
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const int c = part * 32 + lane + stride * u;
      head[u] = c < pieces ? __ldg(a + c) : make_uint4(0, 0, 0, 0);
    }
  }
  // The row, rounded to bf16 as rmsnorm writes it (the same expressions), eight features a piece
  // and kRowUnroll pieces a thread in flight: one load at a time per thread left the block waiting
  // on L2 for most of its life.
  if constexpr (S == RowSource::kNorm) {
    const float4* x = reinterpret_cast<const float4*>(in.f32 + static_cast<size_t>(t) * n);
    const float4* w = reinterpret_cast<const float4*>(in.normW);
    float ss = 0;
    for (int c0 = threadIdx.x; c0 < pieces; c0 += kThreads * kRowUnroll) {
      float4 v[2 * kRowUnroll];
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u) {
        const int c = c0 + kThreads * u;
        v[2 * u] = c < pieces ? x[2 * c] : make_float4(0, 0, 0, 0);
        v[2 * u + 1] = c < pieces ? x[2 * c + 1] : make_float4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < 2 * kRowUnroll; ++u)
        ss += v[u].x * v[u].x + v[u].y * v[u].y + v[u].z * v[u].z + v[u].w * v[u].w;
    }
    using Reduce = cub::BlockReduce<float, kThreads>;
    __shared__ typename Reduce::TempStorage tmp;
    __shared__ float scale;
    const float total = Reduce(tmp).Sum(ss);
    if (threadIdx.x == 0) scale = 1.0f / sqrtf(total / n + in.eps);
    __syncthreads();
    const float k = scale;
    for (int c0 = threadIdx.x; c0 < pieces; c0 += kThreads * kRowUnroll) {
      float4 v[2 * kRowUnroll], g[2 * kRowUnroll];
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u) {
        const int c = min(c0 + kThreads * u, pieces - 1);
        v[2 * u] = x[2 * c], v[2 * u + 1] = x[2 * c + 1];
        g[2 * u] = w[2 * c], g[2 * u + 1] = w[2 * c + 1];
      }
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u) {
        const int c = c0 + kThreads * u;
        if (c >= pieces) break;
        const float4 a = v[2 * u], b = v[2 * u + 1], ga = g[2 * u], gb = g[2 * u + 1];
        reinterpret_cast<uint4*>(xs)[c] = pack8(ga.x * (a.x * k), ga.y * (a.y * k), ga.z * (a.z * k), ga.w * (a.w * k),
                                                gb.x * (b.x * k), gb.y * (b.y * k), gb.z * (b.z * k), gb.w * (b.w * k));
      }
    }
  } else {
    const uint4* src = reinterpret_cast<const uint4*>(in.bf16 + static_cast<size_t>(t) * in.ld);
    for (int c = threadIdx.x; c < pieces; c += kThreads) reinterpret_cast<uint4*>(xs)[c] = __ldg(src + c);
  }
  __syncthreads();
  const int perCut = (pieces + cuts - 1) / cuts, padCut = (xa.pad + cuts - 1) / cuts;
  for (int rowIdx = 0; rowIdx < augmentedRowCount(xa, sl.count); ++rowIdx) {
    bf16_t* row = augmentedRow(xa, t, rowIdx);
    // A row made in place (rmsnorm or siluMul wrote it into xa before) is already there.
    const bool inPlace = S == RowSource::kCopy && in.bf16 + static_cast<size_t>(t) * in.ld == row;
    for (int c = cut * perCut + threadIdx.x; !inPlace && c < min(pieces, (cut + 1) * perCut); c += kThreads)
      reinterpret_cast<uint4*>(row)[c] = reinterpret_cast<const uint4*>(xs)[c];
    // Padding columns: module block j, the rank q of the adapter from slot k at in + j S U + k U + q
    // (split rows: row j's in + k U + q). The token's own run of columns of the modules here are
    // the warps' below (zero past its rank); the rest zero.
    for (int c = cut * padCut + threadIdx.x; c < min(xa.pad, (cut + 1) * padCut); c += kThreads) {
      const int j = paddingSlice(xa, rowIdx, c, block, sl.count);
      if (!(j < sl.count && lora_runs::rankOfColumn(c % block, slot, run, U) >= 0)) row[n + c] = 0;
    }
  }
  if (slot < 0) return;
  __shared__ float partial[kWarps];
  const float scale = scaling[slot];
  const uint4* x = reinterpret_cast<const uint4*>(xs);
  for (int o = first; o < mine; o += groups) {
    const int i = cut + cuts * o, j = i / R, r = i % R;
    const uint4* a = reinterpret_cast<const uint4*>(sl.a[j] + slot * sl.aSlotStride[j] +
                                                    lora_runs::sliceRow(min(r, run - 1), sl.count, U) * n);
    float v = 0;
    // Eight 16-byte pieces a lane in flight at once; the first eight of the first output came early.
    for (int c0 = part * 32 + lane; c0 < pieces; c0 += stride * kInFlight) {
      uint4 av[kInFlight];
      const bool early = o == first && c0 == part * 32 + lane;
#pragma unroll
      for (int u = 0; u < kInFlight; ++u) {
        const int c = c0 + stride * u;
        av[u] = early ? head[u] : c < pieces ? __ldg(a + c) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < kInFlight; ++u)
        if (c0 + stride * u < pieces) dot8(av[u], x[c0 + stride * u], v);
    }
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(0xffffffffu, v, d);
    if (r >= ranks[slot * kModules + sl.module[j]]) v = 0;  // a select: rows past the rank may hold anything
    // share > 1 leaves each warp one output at most, so this loop runs once and the sums wait below.
    if (share > 1) {
      if (lane == 0) partial[warp] = v;
    } else if (lane == 0 && r < run) {
      loraColumns(xa, n, t, j, block, slot, U)[r] = toB(v * scale);
    }
  }
  if (share == 1) return;
  __syncthreads();
  if (part == 0 && lane == 0 && first < mine) {
    const int i = cut + cuts * first, j = i / R, r = i % R;
    float v = 0;
    for (int w = warp; w < warp + share; ++w) v += partial[w];
    if (r < run) loraColumns(xa, n, t, j, block, slot, U)[r] = toB(v * scale);
  }
}

template <RowSource S>
void launch(const RowInput& row, const LoraSlices& sl, int slots, const int32_t* rowSlot, const int32_t* ranks,
            const float* scaling, int T, int cuts, const AugmentedRows& xa, cudaStream_t st) {
  rowShrinkKernel<S>
      <<<dim3(T, cuts), kThreads, static_cast<size_t>(sl.in) * 2, st>>>(row, sl, slots, rowSlot, ranks, scaling, xa);
}

}  // namespace

bool rowShrinkSupported(int in, int ldxa) {
  return in % 8 == 0 && ldxa % 8 == 0 && static_cast<size_t>(in) * 2 <= kMaxRowSmem;
}

void prepareRowShrink(int maxIn) {
  const int bytes = static_cast<int>(std::min(static_cast<size_t>(maxIn) * 2, kMaxRowSmem));
  if (static_cast<size_t>(bytes) <= kDefaultSmem) return;
  check(cudaFuncSetAttribute(rowShrinkKernel<RowSource::kNorm>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
        "row shrink shared memory");
  check(cudaFuncSetAttribute(rowShrinkKernel<RowSource::kCopy>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
        "row shrink shared memory");
}

void loraRowShrink(const RowInput& row, const LoraSlices& sl, int slots, const int32_t* rowSlot, const int32_t* ranks,
                   const float* scaling, int T, const AugmentedRows& xa, int sms, cudaStream_t st) {
  if (T == 0) return;
  // About one block an SM over the step, at least one shrink output a block: each cut remakes the
  // token's row, so more cuts read more of it from L2.
  const int outputs = sl.count * sl.maxRank;
  const int cuts = std::clamp((sms + T - 1) / T, 1, std::max(1, outputs));
  switch (row.source) {
    case RowSource::kNorm:
      launch<RowSource::kNorm>(row, sl, slots, rowSlot, ranks, scaling, T, cuts, xa, st);
      break;
    case RowSource::kSiluMul:
      throw std::invalid_argument("LoRA row shrink: SiLU rows are made by siluMul (into xa) first, then copied");
    case RowSource::kCopy:
      launch<RowSource::kCopy>(row, sl, slots, rowSlot, ranks, scaling, T, cuts, xa, st);
      break;
  }
  check(cudaGetLastError(), "LoRA row shrink launch");
}

}  // namespace cuda
}  // namespace troupe
