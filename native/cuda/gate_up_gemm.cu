// The decode step's gate/up GEMM and SiLU-and-mul (gate_up_gemm.h). A unit is one tile of 32 gate
// rows and the 32 up rows of the same features over one of K's parts; block b takes units b, b +
// gridDim.x, ... (the tiles of part 0 first, so that a tile's parts run far apart and the one that
// ends last rarely waits). Its stages are the decode GEMM's (decode_gemm_ops.cuh): four 64-K boxes
// of the 64 weight rows (gate's 32 then up's, each a 32-row box, 1 KB aligned, so the pair reads as
// one 64-row swizzled tile) and of the token rows, a copying warp running up to kStages ahead of two
// warpgroups that take alternate stages across units. At a unit's end the second group hands its
// sums to the first, which writes the unit's part; the last part of a tile to finish adds the
// parts in part order and, its gate rows' warps meeting its up rows' through shared memory, writes
// silu(gate) x up as bf16.
#include <cuda.h>

#include <algorithm>
#include <stdexcept>

#include "cuda/bf16_pack.cuh"
#include "cuda/decode_gemm_ops.cuh"
#include "cuda/gate_up_gemm.h"
#include "cuda/pdl.cuh"
#include "cuda/silu.cuh"
#include "cuda/tensor_map.h"

namespace troupe {
namespace cuda {

namespace {

using namespace decode_gemm;  // NOLINT(build/namespaces): the decode GEMM's layout and instructions

constexpr int kHalfRows = kTileRows / 2;  // gate's rows of a tile, and up's
// Shared memory after the stages: the second group's sums at a unit's end (two, by unit parity),
// then up's sums for the gate rows' warps.
constexpr int kUnitSumsFloats = 4 * 16 * 32;
constexpr int kUpFloats = kHalfRows * kTokens;
constexpr int kGateUpSmemBytes = kSmemBytes + (2 * kUnitSumsFloats + kUpFloats) * 4;

__device__ int gGateUpGemmBuilt = TROUPE_DECODE_GEMM_BODY;

__global__ void __launch_bounds__(kThreads, 1)
    gateUpGemmKernel(GateUpGemmArgs args, const __grid_constant__ CUtensorMap wMap,
                     const __grid_constant__ CUtensorMap xMap, const __grid_constant__ CUtensorMap x2Map, int tiles,
                     int kTiles, int xStages, int padStages, int splits, float* partials, unsigned* counters) {
#if TROUPE_DECODE_GEMM_BODY
  extern __shared__ __align__(1024) uint8_t smemRaw[];
  if (smemAddr(smemRaw) % 1024 != 0) __trap();
  bf16_t* smem = reinterpret_cast<bf16_t*>(smemRaw);
  float* unitSums = reinterpret_cast<float*>(smem + kStages * kStageElems);
  float* upSums = unitSums + 2 * kUnitSumsFloats;
  __shared__ uint64_t full[kStages], empty[kStages];
  __shared__ bool last;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, q = lane & 3;
  const int units = tiles * splits;
  // Unit u: tile u % tiles over K stages [kt0, kt0 + count) of part u / tiles.
  auto partStart = [&](int part) { return part * kTiles / splits; };
  initStageBarriers(full, empty, kStages, kConsumerWarps / 2);
  auto stageW = [&](int n) { return smem + (n % kStages) * kStageElems; };
  auto stageX = [&](int n) { return stageW(n) + kTileRows * kStageK; };

  if (warp == kConsumerWarps) {  // the copying warp
    if (lane == 0) {
      asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&wMap)) : "memory");
      asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&xMap)) : "memory");
      if (args.X2) asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&x2Map)) : "memory");
      // Stage s of a unit: K stage s, or with split rows past xStages gate's then up's padding
      // stages (half 0, 1), the other half's rows copied from past the weights' last row (zeros).
      auto kOf = [&](int s) { return s < xStages ? s : xStages + (s - xStages) % padStages; };
      auto halfOf = [&](int s) { return s < xStages ? -1 : (s - xStages) / padStages; };
      const int beyond = 2 * args.inter;
      auto issueW = [&](int n, int tile, int s) {
        const int k = kOf(s), half = halfOf(s);
        barrierExpect(&full[n % kStages], (kTileRows + kTokens) * kStageK * 2);
        for (int c = 0; c < kCopies; ++c) {
          bf16_t* w = stageW(n) + c * kTileRows * kBox;
          tensorCopy(w, &wMap, k * kStageK + c * kBox, half == 1 ? beyond : tile * kHalfRows, &full[n % kStages]);
          tensorCopy(w + kHalfRows * kBox, &wMap, k * kStageK + c * kBox,
                     half == 0 ? beyond : args.inter + tile * kHalfRows, &full[n % kStages]);
        }
      };
      auto issueX = [&](int n, int s) {
        const CUtensorMap* map = halfOf(s) == 1 ? &x2Map : &xMap;
        for (int c = 0; c < kCopies; ++c)
          tensorCopy(stageX(n) + c * kTokens * kBox, map, kOf(s) * kStageK + c * kBox, 0, &full[n % kStages]);
      };
      // The first stages' weights before the wait (written before the grid began), then every
      // stage's token rows after it.
      int n = 0;
      for (int u = blockIdx.x; u < units && n < kStages; u += gridDim.x) {
        const int tile = u % tiles, part = u / tiles, kt0 = partStart(part), count = partStart(part + 1) - kt0;
        for (int i = 0; i < count && n < kStages; ++i, ++n) issueW(n, tile, kt0 + i);
      }
      const int early = n;
      pdlWait();
      n = 0;
      for (int u = blockIdx.x; u < units; u += gridDim.x) {
        const int tile = u % tiles, part = u / tiles, kt0 = partStart(part), count = partStart(part + 1) - kt0;
        for (int i = 0; i < count; ++i, ++n) {
          if (n >= early) {
            barrierWait(&empty[n % kStages], ((n / kStages) - 1) & 1);
            issueW(n, tile, kt0 + i);
          }
          issueX(n, kt0 + i);
        }
      }
    }
    __syncwarp();
    pdlLaunchDependents();
    return;
  }
  pdlWait();
  const int group = warp >> 2;
  auto stage = [&](int n, float(&sums)[4][4]) {
    multiplyStage(stageW(n), stageX(n), &full[n % kStages], &empty[n % kStages], (n / kStages) & 1, sums);
  };
  // acc[j][h]: row 16 (warp & 3) + g (+ 8 for h >= 2) of the tile, token 8 j + 2 q + (h & 1).
  const int r0 = (warp & 3) * 16 + g;
  auto tokenOf = [&](int j, int h) { return 8 * j + 2 * q + (h & 1); };
  int n = 0, parity = 0;
  for (int u = blockIdx.x; u < units; u += gridDim.x, parity ^= 1) {
    const int tile = u % tiles, part = u / tiles, kt0 = partStart(part), count = partStart(part + 1) - kt0;
    float acc[4][4] = {};
    for (int i = 0; i < count; ++i, ++n)
      if (n % 2 == group) stage(n, acc);
    // The second group's sums to the first, in this unit's buffer: the first group read the other
    // one before it last met the second here.
    float* handed = unitSums + parity * kUnitSumsFloats;
    if (group == 1)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int h = 0; h < 4; ++h) handed[((warp & 3) * 16 + j * 4 + h) * 32 + lane] = acc[j][h];
    consumersSync();
    if (group == 1) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int h = 0; h < 4; ++h) acc[j][h] += handed[((warp & 3) * 16 + j * 4 + h) * 32 + lane];
    if (splits > 1) {
      // The unit's part through the workspace; the tile's last part to finish adds them all in part
      // order (the same sum whichever finishes last).
      float4* mine = reinterpret_cast<float4*>(partials + (static_cast<size_t>(tile) * splits + part) * kPartFloats);
#pragma unroll
      for (int j = 0; j < 4; ++j) __stcg(mine + j * 128 + tid, make_float4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]));
      __threadfence();
      firstGroupSync();
      if (tid == 0) {
        last = atomicAdd(counters + tile, 1u) == static_cast<unsigned>(splits - 1);
        if (last) counters[tile] = 0;  // ready for the next launch
      }
      firstGroupSync();
      if (!last) continue;
      __threadfence();
      float sum[4][4] = {};
      for (int p = 0; p < splits; ++p) {
        const float4* theirs =
            reinterpret_cast<const float4*>(partials + (static_cast<size_t>(tile) * splits + p) * kPartFloats);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float4 v =
              p == part ? make_float4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]) : __ldcg(theirs + j * 128 + tid);
          sum[j][0] += v.x, sum[j][1] += v.y, sum[j][2] += v.z, sum[j][3] += v.w;
        }
      }
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int h = 0; h < 4; ++h) acc[j][h] = sum[j][h];
    }
    // Up's rows (warps 2 and 3 of the group) meet gate's (warps 0 and 1) in shared memory.
    if (r0 >= kHalfRows)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int h = 0; h < 4; ++h) upSums[(r0 - kHalfRows + (h >= 2 ? 8 : 0)) * kTokens + tokenOf(j, h)] = acc[j][h];
    firstGroupSync();
    if (r0 < kHalfRows)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int h = 0; h < 4; ++h) {
          const int row = r0 + (h >= 2 ? 8 : 0), t = tokenOf(j, h), f = tile * kHalfRows + row;
          if (t < args.M && f < args.inter) {
            const float up = upSums[row * kTokens + t];
            args.act[static_cast<size_t>(t) * args.ldAct + f] = toB(silu(acc[j][h]) * up);
          }
        }
    firstGroupSync();  // upSums is free for the next unit
  }
  pdlLaunchDependents();
#endif
}

}  // namespace

bool GateUpGemm::available() {
  static const bool built = sm90aStagedKernelRuns(&gGateUpGemmBuilt, reinterpret_cast<const void*>(&gateUpGemmKernel));
  return built;
}

GateUpGemm::GateUpGemm(int sms) : sms_(std::max(sms, 1)) {
  check(cudaFuncSetAttribute(gateUpGemmKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kGateUpSmemBytes),
        "cudaFuncSetAttribute");
}

namespace {

// A call's K stages: those over the features both halves read, and with X2 each half's stages
// past them.
struct Stages {
  int x, pad, total;
};
Stages stagesOf(const GateUpGemmArgs& a) {
  if (!a.X2) {
    const int x = (a.K + kStageK - 1) / kStageK;
    return {x, 0, x};
  }
  const int x = a.xK / kStageK, pad = (a.K - a.xK + kStageK - 1) / kStageK;
  return {x, pad, x + 2 * pad};
}

}  // namespace

bool GateUpGemm::supports(const GateUpGemmArgs& a, int splits) const {
  const bool split = !a.X2 || (a.xK % kStageK == 0 && a.xK > 0 && a.xK < a.K && aligned16(a.X2));
  return available() && split && a.M >= 1 && a.M <= kTokens && a.inter >= kHalfRows && a.inter % kHalfRows == 0 &&
         a.K >= kStageK && a.K % 8 == 0 && splits >= 1 && stagesOf(a).total >= splits && a.ldw % 8 == 0 &&
         a.ldx % 8 == 0 && a.ldAct % 8 == 0 && a.ldw >= a.K && a.ldx >= a.K && a.ldAct >= a.inter && aligned16(a.W) &&
         aligned16(a.X) && aligned16(a.act);
}

void GateUpGemm::reserve(int inter, int splits) {
  const int tiles = (inter + kHalfRows - 1) / kHalfRows;
  partials_.ensure(static_cast<size_t>(tiles) * splits * kPartFloats);
  if (counters_.ensure(tiles)) check(cudaMemset(counters_.get(), 0, tiles * sizeof(unsigned)), "cudaMemset");
}

void GateUpGemm::run(const GateUpGemmArgs& a, int splits, cudaStream_t st, bool pdl) {
  if (!supports(a, splits)) throw std::invalid_argument("gate/up GEMM: unsupported shape");
  const Stages s = stagesOf(a);
  const int tiles = a.inter / kHalfRows, units = tiles * splits;
  reserve(a.inter, splits);
  // Both maps end at K: a last stage reaching past it lands zeros in the weights and the rows.
  const CUtensorMap wMap = bf16TensorMap(a.W, a.K, 2 * a.inter, a.ldw, kBox, kHalfRows);
  const CUtensorMap xMap = bf16TensorMap(a.X, a.K, a.M, a.ldx, kBox, kTokens);
  const CUtensorMap x2Map = a.X2 ? bf16TensorMap(a.X2, a.K, a.M, a.ldx, kBox, kTokens) : xMap;
  launchPdlShared(gateUpGemmKernel, dim3(std::min(units, sms_)), dim3(kThreads), kGateUpSmemBytes, st, pdl,
                  "gate/up GEMM launch", a, wMap, xMap, x2Map, tiles, s.total, s.x, s.pad, splits, partials_.get(),
                  counters_.get());
}

}  // namespace cuda
}  // namespace troupe
