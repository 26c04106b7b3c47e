// rmsnorm_delta.h: one cluster of blocks a token, 256 threads a block and four features a thread.
// A thread loads its features' B values for the token's slot (a rank's run of outputs lies
// together in the transposed copy, so a warp reads 256 bytes a rank) and the norm's weights
// before the programmatic-launch wait; after it, the residual row and the shrink outputs, the
// delta, the sum of squares over the block and then over the cluster's blocks in rank order.
//
// Measured on an H200 at Llama-8B's shapes, 32 tokens over 8 rank-16 slots, replayed from a CUDA
// graph behind the projection's decode GEMM (test/gpu/decode_gemm_check.cu --bench,
// bench/results/2026-12-02-h200-lora-delta-in-norm.json): o's GEMM with the deltas inside and
// rmsnorm after it took 19.1 us, the GEMM leaving only the shrink and this kernel 17.9; down's 41.1
// against 39.6. With B read in its [out][rank] layout (32 bytes a row) this kernel cost 3 us more
// than rmsnorm and saved nothing. The blocks of a token meet at one cluster barrier, each pushing
// its sum into the others' shared memory: reading the sums after a barrier and then waiting at a
// second one cost o's GEMM and this kernel 0.35-0.45 us more, down's 0.25-0.35
// (bench/results/2026-12-04-h200-lora-norm-one-barrier.json).
//
// With NormShrinkColumns each block adds its tiles' parts of the next projection's shrink, sends
// the sums to the cluster's first block with its sum of squares, and that block's first threads
// finish the columns once the cluster has met.
#include <cooperative_groups.h>

#include <stdexcept>

#include "cuda/bf16_pack.cuh"
#include "cuda/device.h"
#include "cuda/lora_augmented.cuh"
#include "cuda/lora_runs.h"
#include "cuda/pdl.cuh"
#include "cuda/rmsnorm_delta.h"

namespace troupe {
namespace cuda {

namespace {

constexpr int kThreads = 256, kFeatures = 4, kBlockFeatures = kThreads * kFeatures, kMaxCluster = 8;

template <int kR, bool kCols>
__global__ void __launch_bounds__(kThreads)
    rmsnormDeltaKernel(float* h, const float* w, bf16_t* y, int H, float eps, int ldy, ResidualDelta d) {
#if __CUDA_ARCH__ >= 900
  pdlLaunchDependents();  // a LoRA item shrink after it may start (pdl.cuh)
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  const int parts = static_cast<int>(cluster.num_blocks()), part = static_cast<int>(cluster.block_rank());
  const int t = blockIdx.x / parts, n0 = part * kBlockFeatures + threadIdx.x * kFeatures;
  const bool active = n0 < H;
  // Every block of the cluster has started once this barrier phase completes (waited for below,
  // before a block writes into another's shared memory).
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
  // The pool and the step's slots were written before the grid began. B's loads wait on the slot
  // alone, not on its rank (one dependent read fewer before them); the rank masks the products.
  const int slot = d.rowSlot[t];
  const int rank = slot >= 0 ? min(d.ranks[slot * d.rankPitch + d.module], kR) : 0;
  // The adapter's ranks run on from slot to slot (lora_runs.h); loads stop at the last row the
  // pool has (their products past the rank are not taken).
  const int U = d.slotRank ? d.slotRank : kR;
  const int btLast = d.btSlots && slot >= 0 ? min(kR, (d.btSlots - slot) * U) - 1 : kR - 1;
  uint2 b[kR];
  float4 w4 = make_float4(0, 0, 0, 0);
  // Columns (kCols): thread c < outputs of the first block finishes output c; its n values, the
  // rank of its slice and the slot's scaling are the pool's. The n values wait in registers (80 a
  // thread at rank 16), not shared memory: the kernel's shared memory must stay under 1 KB so that
  // a block fits beside a decode GEMM block holding gate/up's A rows (231,424 bytes with its static
  // part, and a kilobyte each that the SM keeps).
  const NormShrinkColumns& cs = d.columns;
  const bool finisher = kCols && part == 0 && static_cast<int>(threadIdx.x) < cs.outputs && slot >= 0;
  float nv[kCols ? kR : 1];
  int colRank = 0;
  float colScale = 0;
  if (finisher) {
#pragma unroll
    for (int r = 0; r < kR; ++r)
      nv[r] = cs.n[(static_cast<size_t>(slot) * U + min(r, loraRunColumns(slot, cs.slots, U, kR) - 1)) * cs.outputs +
                   threadIdx.x];
    colRank = min(d.ranks[slot * d.rankPitch + cs.rankModule + threadIdx.x / kR], kR);
    colScale = cs.scaling[slot];
  }
  if (active) {
    w4 = *reinterpret_cast<const float4*>(w + n0);
    if (slot >= 0)
#pragma unroll
      for (int r = 0; r < kR; ++r)
        b[r] = *reinterpret_cast<const uint2*>(d.bt + (static_cast<size_t>(slot) * U + min(r, btLast)) * H + n0);
  }
  pdlWait();
  // This block's share of the tiles' parts (kCols): thread i takes pair i / 16 of outputs of the
  // block's tile i % 16 (a block's features are 16 tiles at most), loaded in the same round as the
  // row and mid, so that each half-warp holds one pair over the block's tiles and adds them by
  // shuffles below, in a fixed order. The finisher adds what the delta adds to its output as it goes.
  float2 colPart = make_float2(0, 0);
  float nd = 0;
  if constexpr (kCols) {
    const int pair = static_cast<int>(threadIdx.x) / 16, tile = part * 16 + static_cast<int>(threadIdx.x) % 16;
    if (slot >= 0 && pair < cs.outputs / 2 && tile < min(cs.tiles, (part + 1) * 16))
      colPart = __ldcg(reinterpret_cast<const float2*>(cs.partial + (static_cast<size_t>(tile) * 32 + t) * 32) + pair);
  }
  float4 x = make_float4(0, 0, 0, 0);
  float* row = h + static_cast<size_t>(t) * H + n0;
  if (active) {
    x = *reinterpret_cast<const float4*>(row);
    if (rank > 0) {
      // Up to rank 16 and without columns, every mid value in one round of loads beside the row's:
      // loaded as the products below reach them, each float4 may be a round trip of its own. (74
      // registers a thread at rank 16 against 64, still beside a decode GEMM block; the others
      // would no longer fit there.) o's GEMM and this kernel took 17.5 us against 17.7, down's
      // level (bench/results/2026-12-04-h200-lora-norm-mids.json).
      constexpr bool kMidsFirst = kR <= 16 && !kCols;
      const float4* midRow = reinterpret_cast<const float4*>(d.mid + t * kR);
      float4 mids[kMidsFirst ? kR / 4 : 1];
      if constexpr (kMidsFirst)
#pragma unroll
        for (int q = 0; q < kR / 4; ++q) mids[q] = __ldcg(midRow + q);
      float delta[kFeatures] = {};
#pragma unroll
      for (int r0 = 0; r0 < kR; r0 += 4) {
        const float4 m = kMidsFirst ? mids[r0 / 4] : __ldcg(midRow + r0 / 4);
        const float mv[4] = {m.x, m.y, m.z, m.w};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          // A select, not a product: past the rank B and mid may be NaN.
          if (r0 + e >= rank) continue;
          if (kCols && finisher) nd = fmaf(mv[e], nv[r0 + e], nd);
          const uint2 q = b[r0 + e];
          delta[0] = fmaf(__uint_as_float(q.x << 16), mv[e], delta[0]);
          delta[1] = fmaf(__uint_as_float(q.x & 0xffff0000u), mv[e], delta[1]);
          delta[2] = fmaf(__uint_as_float(q.y << 16), mv[e], delta[2]);
          delta[3] = fmaf(__uint_as_float(q.y & 0xffff0000u), mv[e], delta[3]);
        }
      }
      x.x += delta[0], x.y += delta[1], x.z += delta[2], x.w += delta[3];
      *reinterpret_cast<float4*>(row) = x;
    }
  }
  if constexpr (kCols)
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) {
      colPart.x += __shfl_xor_sync(0xffffffffu, colPart.x, o);
      colPart.y += __shfl_xor_sync(0xffffffffu, colPart.y, o);
    }
  float ss = x.x * x.x + x.y * x.y + x.z * x.z + x.w * x.w;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  __shared__ float warpSums[kThreads / 32];
  __shared__ float clusterSums[kMaxCluster];
  // The cluster's column sums, [part][32] in the first block (kCols; the launch sizes it).
  extern __shared__ float2 clusterCols[];
  if ((threadIdx.x & 31) == 0) warpSums[threadIdx.x >> 5] = ss;
  __syncthreads();
  // Thread i sends the block's sum to block i of the cluster, so that one barrier does: after it
  // every block adds the cluster's sums in rank order (the same total in each) from its own shared
  // memory, and no block reads the memory of one that may have exited.
  asm volatile("barrier.cluster.wait.aligned;" ::: "memory");
  if (threadIdx.x < parts) {
    float v = 0;
    for (int i = 0; i < kThreads / 32; ++i) v += warpSums[i];
    *cluster.map_shared_rank(&clusterSums[part], static_cast<int>(threadIdx.x)) = v;
  }
  if constexpr (kCols) {
    // Each half-warp's first lane sends its pair's sum over the block's tiles to the first block.
    const int pair = static_cast<int>(threadIdx.x) / 16;
    if (threadIdx.x % 16 == 0 && pair < cs.outputs / 2)
      *cluster.map_shared_rank(&clusterCols[part * 16 + pair], 0) = colPart;
  }
  cluster.sync();
  float total = 0;
  for (int i = 0; i < parts; ++i) total += clusterSums[i];
  if constexpr (kCols) {
    // Every padding column other than the token's own slot's (which the first block writes), by
    // all of the last block's threads: its features may be fewer than the columns.
    const AugmentedRows& xa = cs.xa;
    const int block = cs.slots * U, run = slot >= 0 ? loraRunColumns(slot, cs.slots, U, kR) : 0;
    if (part == parts - 1)
      for (int i = 0; i < augmentedRowCount(xa, cs.slices); ++i)
        for (int c = threadIdx.x; c < xa.pad; c += kThreads) {
          const int j = paddingSlice(xa, i, c, block, cs.slices);
          if (!(j < cs.slices && lora_runs::rankOfColumn(c % block, slot, run, U) >= 0))
            augmentedRow(xa, t, i)[H + c] = toB(0.0f);
        }
  }
  if (!active) return;
  const float k0 = 1.0f / sqrtf(total / H + eps);
  const uint2 normed =
      make_uint2(pairB(w4.x * (x.x * k0), w4.y * (x.y * k0)), pairB(w4.z * (x.z * k0), w4.w * (x.w * k0)));
  *reinterpret_cast<uint2*>(y + static_cast<size_t>(t) * ldy + n0) = normed;
  if constexpr (kCols) {
    const AugmentedRows& xa = cs.xa;
    const int rows = augmentedRowCount(xa, cs.slices), block = cs.slots * U;
    for (int i = 1; i < rows; ++i) *reinterpret_cast<uint2*>(augmentedRow(xa, t, i) + n0) = normed;
    if (finisher) {
      const int c = threadIdx.x, j = c / kR, r = c % kR;
      float v = 0;
      for (int i = 0; i < parts; ++i) v += reinterpret_cast<const float*>(clusterCols)[i * 32 + c];
      // A select, not a product: A rows past the slot's rank may hold anything.
      const float out = r < colRank ? colScale * k0 * (v + nd) : 0.0f;
      if (r < loraRunColumns(slot, cs.slots, U, kR)) loraColumns(xa, H, t, j, block, slot, U)[r] = toB(out);
    }
  }
#endif
}

}  // namespace

bool rmsnormDeltaSupported(int H, int maxRank) {
  return H % kFeatures == 0 && H > 0 && H <= kMaxCluster * kBlockFeatures &&
         (maxRank == 8 || maxRank == 16 || maxRank == 32);
}

void rmsnormDelta(float* h, const float* w, bf16_t* y, int T, int H, float eps, int ldy, const ResidualDelta& d,
                  cudaStream_t s, bool pdl) {
  if (T == 0) return;
  // Slots of a lower rank: B's rows are read as far as the slots that keep it, which it must say.
  const bool runs = d.slotRank && d.slotRank != d.maxRank;
  if (!rmsnormDeltaSupported(H, d.maxRank) || ldy % 4 != 0 || !alignedTo(h, 16) || !alignedTo(w, 16) ||
      !alignedTo(y, 8) || !alignedTo(d.mid, 16) || !alignedTo(d.bt, 8) || (runs && d.btSlots <= 0))
    throw std::invalid_argument("rmsnormDelta: unsupported shape or alignment");
  const int parts = (H + kBlockFeatures - 1) / kBlockFeatures;
  const NormShrinkColumns& cs = d.columns;
  const bool cols = cs.partial != nullptr;
  if (cols &&
      (cs.outputs != cs.slices * d.maxRank || cs.outputs > 32 || cs.slices < 1 || cs.tiles < 1 ||
       cs.tiles > parts * 16 || H < 4 * cs.outputs || !cs.n || !cs.scaling || y != cs.xa.data || ldy != cs.xa.ld ||
       cs.slots * (d.slotRank ? d.slotRank : d.maxRank) * (cs.xa.slicePitch ? 1 : cs.slices) > cs.xa.pad))
    throw std::invalid_argument("rmsnormDelta: unsupported LoRA columns");
  auto kernel = d.maxRank == 8    ? (cols ? rmsnormDeltaKernel<8, true> : rmsnormDeltaKernel<8, false>)
                : d.maxRank == 16 ? (cols ? rmsnormDeltaKernel<16, true> : rmsnormDeltaKernel<16, false>)
                                  : (cols ? rmsnormDeltaKernel<32, true> : rmsnormDeltaKernel<32, false>);
  const size_t smem = cols ? parts * 32 * sizeof(float) : 0;
  launchPdlCluster(kernel, dim3(T * parts), dim3(kThreads), smem, parts, s, pdl, "rmsnormDelta launch", h, w, y, H, eps,
                   ldy, d);
}

}  // namespace cuda
}  // namespace troupe
