// The RMSNorm that adds o's rank-16 delta (rmsnorm_delta.h) also forming gate/up's shrink, by
// groups of tokens of one adapter: a thread-block cluster takes a group of G tokens (1, 2 or 4)
// and each of its blocks a slice of the features for all G tokens, so that a block keeps
// rmsnormDelta's 1,024 elements of norm work whatever G is, while it reads its slice of the slot's
// gate/up A rows once for the G tokens (a quarter of the L2 reads at G = 4). The shrink is taken over
// w h and scaled by 1 / rms(h) after, so that the sums of squares and the dot products meet at one
// cluster barrier. Stand-alone: checked against a host reference, then timed as a decode step
// launches it (replayed from a CUDA graph behind a short kernel that releases it at once, as the
// decode GEMM before the norm does) beside rmsnormDelta alone and the shipped pair (rmsnormDelta,
// then gate/up's item shrink) over the same 32 tokens of 8 rank-16 slots. Each form is also timed
// without its dot products, and without loading A either, to see what its parts cost.
//
// On an H200 (bench/results/2026-12-04-h200-lora-norm-shrink-groups.json): rmsnormDelta 2.27 us,
// the pair 5.22, groups of 1, 2 and 4 tokens 7.86, 5.24 and 4.75. Groups of four beat the pair by
// half a microsecond a layer, about 0.3% of a decode step; not taken into the engine.
//
//   nvcc -std=c++17 -gencode arch=compute_90a,code=sm_90a -O3 -Inative -o /tmp/nsg \
//     bench/norm_shrink_groups.cu native/cuda/rmsnorm_delta.cu native/cuda/lora_item_shrink.cu && /tmp/nsg
#include <cooperative_groups.h>
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "cuda/bf16_pack.cuh"
#include "cuda/lora_fused.h"
#include "cuda/pdl.cuh"
#include "cuda/rmsnorm_delta.h"
#include "cuda_bench.cuh"

namespace {

using troupe::cuda::bf16_t;
using troupe::cuda::ResidualDelta;

constexpr int kThreads = 256, kRank = 16, kJ = 32, kChunks = kThreads / 32;  // kJ: gate's and up's ranks

__device__ __forceinline__ float lo(uint32_t p) { return __uint_as_float(p << 16); }
__device__ __forceinline__ float hi(uint32_t p) { return __uint_as_float(p & 0xffff0000u); }
__device__ __forceinline__ uint16_t toB(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }

// Group g: the tokens groups[g] (-1 past its end), all of slot groupSlot[g]. Token t's gate/up
// columns: y[t ldy + H + slot kJ + j], j = module rank + r, zero past the module's rank.
template <int kTok>
__global__ void __launch_bounds__(kThreads)
    normShrinkGroups(float* h, const float* w, bf16_t* y, int H, float eps, int ldy, ResidualDelta d,
                     const int4* groups, const int* groupSlot, const bf16_t* a, const int* ranks, int rankPitch,
                     int gateModule, const float* scaling, int work) {
#if __CUDA_ARCH__ >= 900
  constexpr int kQuads = kThreads / kTok, kBlockF = kQuads * 4, kChunk = kBlockF / kChunks;
  troupe::cuda::pdlLaunchDependents();
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  const int parts = static_cast<int>(cluster.num_blocks()), part = static_cast<int>(cluster.block_rank());
  const int g = blockIdx.x / parts, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
  const int4 gt = groups[g];
  const int slot = groupSlot[g];
  const int k = tid / kQuads, n0 = part * kBlockF + (tid % kQuads) * 4;
  const int t = k == 0 ? gt.x : k == 1 ? gt.y : k == 2 ? gt.z : gt.w;
  const int rank = slot >= 0 ? min(d.ranks[slot * d.rankPitch + d.module], kRank) : 0;
  // Before the wait: the norm's weights, o's B for the slot, and this thread's piece of gate/up's A.
  const float4 w4 = *reinterpret_cast<const float4*>(w + n0);
  uint2 b[kRank];
  if (slot >= 0)
#pragma unroll
    for (int r = 0; r < kRank; ++r)
      b[r] = *reinterpret_cast<const uint2*>(d.bt + (static_cast<size_t>(slot) * kRank + r) * H + n0);
  uint4 av[kChunk / 8];
  const int f0 = part * kBlockF + warp * kChunk;  // the dot role: warp = chunk, lane = output j
  // work: 2 the whole kernel; 1 loading A without the dot products; 0 neither (what they cost).
  const bool loadA = slot >= 0 && work >= 1, dots = slot >= 0 && work >= 2;
  if (loadA)
#pragma unroll
    for (int i = 0; i < kChunk / 8; ++i)
      av[i] = *reinterpret_cast<const uint4*>(a + (static_cast<size_t>(slot) * kJ + lane) * H + f0 + i * 8);
  troupe::cuda::pdlWait();
  float4 x = make_float4(0, 0, 0, 0);
  if (t >= 0) {
    float* row = h + static_cast<size_t>(t) * H + n0;
    x = *reinterpret_cast<const float4*>(row);
    if (rank > 0) {
      float delta[4] = {};
#pragma unroll
      for (int r0 = 0; r0 < kRank; r0 += 4) {
        const float4 m = __ldcg(reinterpret_cast<const float4*>(d.mid + t * kRank + r0));
        const float mv[4] = {m.x, m.y, m.z, m.w};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (r0 + e >= rank) continue;
          const uint2 q = b[r0 + e];
          delta[0] = fmaf(lo(q.x), mv[e], delta[0]);
          delta[1] = fmaf(hi(q.x), mv[e], delta[1]);
          delta[2] = fmaf(lo(q.y), mv[e], delta[2]);
          delta[3] = fmaf(hi(q.y), mv[e], delta[3]);
        }
      }
      x.x += delta[0], x.y += delta[1], x.z += delta[2], x.w += delta[3];
      *reinterpret_cast<float4*>(row) = x;
    }
  }
  __shared__ __align__(16) float u[kTok][kBlockF];
  __shared__ float warpSums[kThreads / 32];
  __shared__ float chunkDots[kChunks][kTok][kJ];
  __shared__ float recvSums[16][kTok];
  __shared__ float recvDots[kTok * kJ];
  float ss = x.x * x.x + x.y * x.y + x.z * x.z + x.w * x.w;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if (lane == 0) warpSums[warp] = ss;
  const int f = n0 - part * kBlockF;
  u[k][f] = w4.x * x.x, u[k][f + 1] = w4.y * x.y, u[k][f + 2] = w4.z * x.z, u[k][f + 3] = w4.w * x.w;
  __syncthreads();
  if (loadA && !dots && av[0].x == 0x7fc07fc0u) chunkDots[0][0][lane] = 1;  // keeps the loads
  if (dots) {
    float acc[kTok] = {};
    const float* uc = &u[0][warp * kChunk];
#pragma unroll
    for (int i = 0; i < kChunk / 8; ++i) {
      const uint32_t p[4] = {av[i].x, av[i].y, av[i].z, av[i].w};
#pragma unroll
      for (int kk = 0; kk < kTok; ++kk) {
        // Every lane reads the same four features: one broadcast load of 16 bytes.
        const float4 u0 = *reinterpret_cast<const float4*>(uc + kk * kBlockF + i * 8);
        const float4 u1 = *reinterpret_cast<const float4*>(uc + kk * kBlockF + i * 8 + 4);
        acc[kk] = fmaf(lo(p[0]), u0.x, acc[kk]);
        acc[kk] = fmaf(hi(p[0]), u0.y, acc[kk]);
        acc[kk] = fmaf(lo(p[1]), u0.z, acc[kk]);
        acc[kk] = fmaf(hi(p[1]), u0.w, acc[kk]);
        acc[kk] = fmaf(lo(p[2]), u1.x, acc[kk]);
        acc[kk] = fmaf(hi(p[2]), u1.y, acc[kk]);
        acc[kk] = fmaf(lo(p[3]), u1.z, acc[kk]);
        acc[kk] = fmaf(hi(p[3]), u1.w, acc[kk]);
      }
    }
#pragma unroll
    for (int kk = 0; kk < kTok; ++kk) chunkDots[warp][kk][lane] = acc[kk];
  }
  __syncthreads();
  // Every block of the cluster has started (the arrive above): push this block's sums of squares
  // into every block, and its dot products into the block that owns each output (j % parts).
  asm volatile("barrier.cluster.wait.aligned;" ::: "memory");
  const int owned = kJ / parts;
  if (tid < parts) {
    for (int kk = 0; kk < kTok; ++kk) {
      float v = 0;
      for (int i = kk * (kQuads / 32); i < (kk + 1) * (kQuads / 32); ++i) v += warpSums[i];
      *cluster.map_shared_rank(&recvSums[part][kk], tid) = v;
    }
  }
  if (dots && tid < kTok * kJ) {
    const int kk = tid / kJ, j = tid % kJ;
    float v = 0;
    for (int c = 0; c < kChunks; ++c) v += chunkDots[c][kk][j];
    *cluster.map_shared_rank(&recvDots[(part * kTok + kk) * owned + j / parts], j % parts) = v;
  }
  cluster.sync();
  if (t < 0) return;
  float total = 0;
  for (int i = 0; i < parts; ++i) total += recvSums[i][k];
  const float k0 = 1.0f / sqrtf(total / H + eps);
  *reinterpret_cast<uint2*>(y + static_cast<size_t>(t) * ldy + n0) =
      make_uint2(troupe::cuda::pairB(w4.x * (x.x * k0), w4.y * (x.y * k0)),
                 troupe::cuda::pairB(w4.z * (x.z * k0), w4.w * (x.w * k0)));
  // The owned outputs of the group's tokens: thread i < kTok x owned (the same threads' t is not
  // theirs, so they read the group's tokens again).
  if (dots && tid < kTok * owned) {
    const int kk = tid / owned, jj = tid % owned, j = jj * parts + part;
    const int tk = kk == 0 ? gt.x : kk == 1 ? gt.y : kk == 2 ? gt.z : gt.w;
    if (tk < 0) return;
    float tot = 0;
    for (int i = 0; i < parts; ++i) tot += recvSums[i][kk];
    float v = 0;
    for (int i = 0; i < parts; ++i) v += recvDots[(i * kTok + kk) * owned + jj];
    const int mr = min(ranks[slot * rankPitch + gateModule + j / kRank], kRank);
    const float out = j % kRank < mr ? scaling[slot] * (v / sqrtf(tot / H + eps)) : 0.0f;
    y[static_cast<size_t>(tk) * ldy + H + slot * kJ + j] = toB(out);
  }
#endif
}

float bf(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// The kernel before, releasing its dependents at once as the decode GEMM before the norm does once
// its products are summed, so that what the norm loads before its wait overlaps it.
__global__ void spin(int ns) {
  troupe::cuda::pdlLaunchDependents();
  const long long start = clock64();
  while (clock64() - start < static_cast<long long>(ns) * 2) {
  }
}

}  // namespace

int main() {
  const int H = 4096, T = 32, slots = 8, ldy = H + slots * kJ;
  const float eps = 1e-5f;
  std::vector<float> hh(static_cast<size_t>(T) * H), wh(H), mid(T * kRank), scal(slots);
  std::vector<uint16_t> bt(static_cast<size_t>(slots) * kRank * H), ah(static_cast<size_t>(slots) * kJ * H);
  std::vector<int> rowSlot(T), ranks(slots * 7, kRank);
  uint32_t s = 12345;
  auto rnd = [&] {
    s = s * 1664525u + 1013904223u;
    return (static_cast<float>(s >> 8) / 16777216.0f - 0.5f);
  };
  auto toBh = [](float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  };
  for (auto& v : hh) v = rnd();
  for (auto& v : wh) v = 1.0f + 0.5f * rnd();
  for (auto& v : mid) v = rnd();
  for (auto& v : bt) v = toBh(rnd() * 0.1f);
  for (auto& v : ah) v = toBh(rnd() * 0.05f);
  for (int i = 0; i < slots; ++i) scal[i] = 2.0f;
  for (int t = 0; t < T; ++t) rowSlot[t] = t % slots;
  ranks[3 * 7 + 4] = 8;  // slot 3's gate at rank 8: its columns past 8 are zero
  const int gateModule = 4, oModule = 3;

  float *dh, *dw, *dmid, *dscal;
  bf16_t *dbt, *da, *dy;
  int *drow, *dranks;
  bench::check(cudaMalloc(&dh, hh.size() * 4), "malloc");
  bench::check(cudaMalloc(&dw, H * 4), "malloc");
  bench::check(cudaMalloc(&dmid, mid.size() * 4), "malloc");
  bench::check(cudaMalloc(&dscal, slots * 4), "malloc");
  bench::check(cudaMalloc(&dbt, bt.size() * 2), "malloc");
  bench::check(cudaMalloc(&da, ah.size() * 2), "malloc");
  bench::check(cudaMalloc(&dy, static_cast<size_t>(T) * ldy * 2), "malloc");
  bench::check(cudaMalloc(&drow, T * 4), "malloc");
  bench::check(cudaMalloc(&dranks, ranks.size() * 4), "malloc");
  cudaMemcpy(dw, wh.data(), H * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dmid, mid.data(), mid.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dscal, scal.data(), slots * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dbt, bt.data(), bt.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(da, ah.data(), ah.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(drow, rowSlot.data(), T * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dranks, ranks.data(), ranks.size() * 4, cudaMemcpyHostToDevice);
  ResidualDelta d;
  d.bt = dbt;
  d.rowSlot = drow;
  d.ranks = dranks;
  d.rankPitch = 7;
  d.module = oModule;
  d.maxRank = kRank;
  d.mid = dmid;

  // Host reference: the delta, the normed row, and the columns from A (w h) / rms(h).
  std::vector<float> refH(hh), refRms(T);
  for (int t = 0; t < T; ++t) {
    const int sl = rowSlot[t];
    double ss = 0;
    for (int n = 0; n < H; ++n) {
      float dlt = 0;
      for (int r = 0; r < kRank; ++r) dlt += bf(bt[(static_cast<size_t>(sl) * kRank + r) * H + n]) * mid[t * kRank + r];
      refH[static_cast<size_t>(t) * H + n] += dlt;
      ss += static_cast<double>(refH[static_cast<size_t>(t) * H + n]) * refH[static_cast<size_t>(t) * H + n];
    }
    refRms[t] = static_cast<float>(std::sqrt(ss / H + eps));
  }
  cudaStream_t st;
  cudaStreamCreate(&st);
  int failed = 0;
  // Token t's column j (0-31: gate's ranks, then up's) for slot sl: this kernel's layout, or the
  // item shrink's (xa[t][H + module S R + slot R + r]).
  auto ownCol = [&](int sl, int j) { return H + sl * kJ + j; };
  auto itemCol = [&](int sl, int j) { return H + (j / kRank) * slots * kRank + sl * kRank + j % kRank; };
  auto checkOut = [&](const char* what, bool cols, auto col, bool fromRows = false) {
    std::vector<uint16_t> yh(static_cast<size_t>(T) * ldy);
    cudaMemcpy(yh.data(), dy, yh.size() * 2, cudaMemcpyDeviceToHost);
    double worstY = 0, worstC = 0;
    int shown = 0;
    for (int t = 0; t < T; ++t) {
      for (int n = 0; n < H; ++n) {
        const float ref = wh[n] * refH[static_cast<size_t>(t) * H + n] / refRms[t];
        worstY = std::fmax(worstY, std::fabs(bf(yh[static_cast<size_t>(t) * ldy + n]) - ref) / (std::fabs(ref) + 1e-3));
      }
      if (!cols) continue;
      const int sl = rowSlot[t];
      for (int j = 0; j < kJ; ++j) {
        const int mr = ranks[sl * 7 + gateModule + j / kRank];
        // The item shrink dots A with the bf16 rows it reads; this kernel with w h, scaled by 1 / rms.
        double v = 0;
        for (int n = 0; n < H; ++n)
          v += bf(ah[(static_cast<size_t>(sl) * kJ + j) * H + n]) *
               (fromRows ? bf(yh[static_cast<size_t>(t) * ldy + n])
                         : wh[n] * refH[static_cast<size_t>(t) * H + n] / refRms[t]);
        const double ref = j % kRank < mr ? scal[sl] * v : 0.0;
        const double got = bf(yh[static_cast<size_t>(t) * ldy + col(sl, j)]);
        const double e = std::fabs(got - ref) / (std::fabs(ref) + 1e-2);
        if (e >= 1e-2 && shown < 6) {
          std::printf("  token %d slot %d column %d: %.5f against %.5f\n", t, sl, j, got, ref);
          ++shown;
        }
        worstC = std::fmax(worstC, e);
      }
    }
    const bool ok = worstY < 8e-3 && (!cols || worstC < 1e-2);
    failed += !ok;
    std::printf("%s: normed rows worst relative %.2e, columns %.2e: %s\n", what, worstY, cols ? worstC : 0.0,
                ok ? "ok" : "FAIL");
  };

  // Groups of four take clusters of 16 blocks, past the 8 every device allows: set once.
  for (auto kernel : {normShrinkGroups<1>, normShrinkGroups<2>, normShrinkGroups<4>})
    bench::check(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1), "cluster size");
  auto launchGroups = [&](int G, int4* dgroups, int* dgslot, int nGroups, bool pdl, int work = 2) {
    const int blockF = kThreads / G * 4, parts = H / blockF;
    auto kernel = G == 1 ? normShrinkGroups<1> : G == 2 ? normShrinkGroups<2> : normShrinkGroups<4>;
    troupe::cuda::launchPdlCluster(kernel, dim3(nGroups * parts), dim3(kThreads), 0, parts, st, pdl,
                                   "normShrinkGroups launch", dh, dw, dy, H, eps, ldy, d, dgroups, dgslot, da, dranks,
                                   7, gateModule, dscal, work);
  };
  // Mean microseconds one launch adds behind a 2 us kernel, both replayed from a CUDA graph of 20.
  auto timeAdded = [&](auto&& launch) {
    auto graphOf = [&](bool with) {
      cudaGraph_t gph;
      cudaGraphExec_t ex;
      bench::check(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal), "capture");
      for (int i = 0; i < 20; ++i) {
        spin<<<132, 128, 0, st>>>(2000);
        if (with) launch();
      }
      bench::check(cudaStreamEndCapture(st, &gph), "capture");
      bench::check(cudaGraphInstantiate(&ex, gph, 0), "instantiate");
      cudaGraphDestroy(gph);
      return ex;
    };
    cudaGraphExec_t both = graphOf(true), alone = graphOf(false);
    float best[2] = {1e9f, 1e9f};
    for (int round = 0; round < 5; ++round)
      for (int which = 0; which < 2; ++which) {
        cudaGraphExec_t ex = which ? alone : both;
        const float ms = bench::timeCalls([&] { cudaGraphLaunch(ex, st); }, 20);
        best[which] = std::fmin(best[which], ms);
      }
    cudaGraphExecDestroy(both);
    cudaGraphExecDestroy(alone);
    return (best[0] - best[1]) * 1000.0f / 20;
  };

  // rmsnormDelta alone (the shipped norm; gate/up's item shrink follows it in a step).
  cudaMemcpy(dh, hh.data(), hh.size() * 4, cudaMemcpyHostToDevice);
  cudaMemset(dy, 0, static_cast<size_t>(T) * ldy * 2);
  troupe::cuda::rmsnormDelta(dh, dw, dy, T, H, eps, ldy, d, st, false);
  bench::check(cudaStreamSynchronize(st), "rmsnormDelta");
  checkOut("rmsnormDelta", false, ownCol);
  const float normUs = timeAdded([&] { troupe::cuda::rmsnormDelta(dh, dw, dy, T, H, eps, ldy, d, st, true); });
  std::printf("rmsnormDelta alone: %.2f us added\n", normUs);

  // The shipped pair: rmsnormDelta, then gate/up's item shrink over the rows it wrote (one item a
  // slot of its 4 tokens), both launched early.
  {
    std::vector<int> perm, itemStart{0}, itemSlot;
    for (int sl = 0; sl < slots; ++sl) {
      for (int t = 0; t < T; ++t)
        if (rowSlot[t] == sl) perm.push_back(t);
      itemStart.push_back(static_cast<int>(perm.size()));
      itemSlot.push_back(sl);
    }
    const int items = static_cast<int>(itemSlot.size());
    int* dl;
    bench::check(cudaMalloc(&dl, (perm.size() + itemStart.size() + itemSlot.size() + 1) * 4), "malloc");
    cudaMemcpy(dl, perm.data(), perm.size() * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(dl + T, itemStart.data(), itemStart.size() * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(dl + T + items + 1, itemSlot.data(), items * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(dl + T + 2 * items + 1, &items, 4, cudaMemcpyHostToDevice);
    troupe::cuda::LoraItems li{dl, dl + T, dl + T + items + 1, dl + T + 2 * items + 1, items, 1};
    troupe::cuda::LoraSlices sl;
    sl.count = 2;
    sl.in = H;
    sl.maxRank = kRank;
    for (int m = 0; m < 2; ++m) {
      sl.a[m] = da + static_cast<size_t>(m) * kRank * H;
      sl.aSlotStride[m] = static_cast<size_t>(kJ) * H;
      sl.b[m] = nullptr;
      sl.bSlotStride[m] = 0;
      sl.bLd[m] = 0;
      sl.out[m] = 14336;
      sl.outOffset[m] = m * 14336;
      sl.module[m] = gateModule + m;
    }
    troupe::cuda::RowInput rows;
    rows.source = troupe::cuda::RowSource::kCopy;
    rows.bf16 = dy;
    rows.ld = ldy;
    troupe::cuda::AugmentedRows xa;
    xa.data = dy;
    xa.ld = ldy;
    xa.pad = ldy - H;
    auto pair = [&](bool pdl) {
      troupe::cuda::rmsnormDelta(dh, dw, dy, T, H, eps, ldy, d, st, pdl);
      troupe::cuda::loraItemShrink(rows, sl, li, slots, drow, dranks, dscal, T, xa, st, pdl);
    };
    cudaMemcpy(dh, hh.data(), hh.size() * 4, cudaMemcpyHostToDevice);
    cudaMemset(dy, 0, static_cast<size_t>(T) * ldy * 2);
    pair(false);
    bench::check(cudaStreamSynchronize(st), "rmsnormDelta and the item shrink");
    checkOut("rmsnormDelta and the item shrink", true, itemCol, true);
    const float us = timeAdded([&] { pair(true); });
    std::printf("rmsnormDelta and gate/up's item shrink: %.2f us added (%.2f over rmsnormDelta)\n", us, us - normUs);
    cudaFree(dl);
  }

  for (int G : {1, 2, 4}) {
    std::vector<int4> groups;
    std::vector<int> gslot;
    for (int sl = 0; sl < slots; ++sl) {
      std::vector<int> toks;
      for (int t = 0; t < T; ++t)
        if (rowSlot[t] == sl) toks.push_back(t);
      for (size_t i = 0; i < toks.size(); i += G) {
        int v[4] = {-1, -1, -1, -1};
        for (int e = 0; e < G && i + e < toks.size(); ++e) v[e] = toks[i + e];
        groups.push_back(make_int4(v[0], v[1], v[2], v[3]));
        gslot.push_back(sl);
      }
    }
    int4* dgroups;
    int* dgslot;
    bench::check(cudaMalloc(&dgroups, groups.size() * sizeof(int4)), "malloc");
    bench::check(cudaMalloc(&dgslot, gslot.size() * 4), "malloc");
    cudaMemcpy(dgroups, groups.data(), groups.size() * sizeof(int4), cudaMemcpyHostToDevice);
    cudaMemcpy(dgslot, gslot.data(), gslot.size() * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(dh, hh.data(), hh.size() * 4, cudaMemcpyHostToDevice);
    cudaMemset(dy, 0, static_cast<size_t>(T) * ldy * 2);
    const int n = static_cast<int>(groups.size());
    launchGroups(G, dgroups, dgslot, n, false);
    bench::check(cudaStreamSynchronize(st), "normShrinkGroups");
    char what[64];
    std::snprintf(what, sizeof what, "groups of %d (%d clusters of %d)", G, n, H / (kThreads / G * 4));
    checkOut(what, true, ownCol);
    const float us = timeAdded([&] { launchGroups(G, dgroups, dgslot, n, true); });
    std::printf("norm and gate/up shrink, groups of %d: %.2f us added (%.2f over rmsnormDelta)\n", G, us, us - normUs);
    // What the shrink's parts cost: the same launch without the dot products, and without A too.
    for (int work : {1, 0}) {
      const float part = timeAdded([&] { launchGroups(G, dgroups, dgslot, n, true, work); });
      std::printf("  groups of %d %s: %.2f us added\n", G,
                  work ? "loading A, no dot products" : "without A or dot products", part);
    }
    cudaFree(dgroups);
    cudaFree(dgslot);
  }
  std::printf("%s\n", failed ? "FAILED" : "all checks passed");
  return failed ? 1 : 0;
}
