// The decode step's gate/up GEMM and SiLU-and-mul (gate_up_gemm.h). A unit is one tile of 32 gate
// rows and the 32 up rows of the same features over some or all of K's stages; block b takes units
// b, b + gridDim.x, ... in the plan's order (gate_up_plan.h: LoRA A tiles' units, whole tiles,
// then the parts of tiles split over the grid). Its stages are the decode GEMM's
// (decode_gemm_ops.cuh): four 64-K boxes of the 64 weight rows (gate's 32 then up's, each a 32-row
// box, 1 KB aligned, so the pair reads as one 64-row swizzled tile) and of the token rows, a copying
// warp running up to kStages ahead of two warpgroups that take alternate stages across units. At a
// unit's end the second group hands its sums to the first; a split tile's parts but the last leave
// theirs in a workspace, and the last adds them in part order; then, its gate rows' warps meeting
// its up rows' through shared memory, the first group writes silu(gate) x up as bf16, or for an A
// tile the LoRA columns that the weight units' last stages read. With split rows, a paired padding
// stage multiplies both halves' rows by both halves' token rows in one product 64 tokens wide.
#include <cuda.h>

#include <algorithm>
#include <stdexcept>

#include "cuda/bf16_pack.cuh"
#include "cuda/decode_gemm_ops.cuh"
#include "cuda/gate_up_gemm.h"
#include "cuda/gate_up_plan.h"
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

// A paired padding stage (gate_up_plan.h): two 64-K boxes of the 64 weight rows and of 64 token
// rows (X's 32, then X2's), in the same shared memory as a stage of four boxes of 32 token rows.
constexpr int kPairedTokens = 2 * kTokens;
constexpr int kPairedStageBytes = (kTileRows + kPairedTokens) * (kCopies / 2) * kBox * 2;
static_assert(kPairedTokens * (kCopies / 2) == kTokens * kCopies, "a paired stage's token rows fill a stage's");

__device__ int gGateUpGemmBuilt = TROUPE_DECODE_GEMM_BODY;

using gate_up::kMaxAParts;
using gate_up::kMaxATiles;
using gate_up::Plan;
using gate_up::Unit;
static_assert(kMaxATiles * kTileRows == kDecodeGemmSpreadMaxRows, "an A tile for every 64 of the most A rows");

__global__ void __launch_bounds__(kThreads, 1)
    gateUpGemmKernel(GateUpGemmArgs args, const __grid_constant__ CUtensorMap wMap,
                     const __grid_constant__ CUtensorMap xMap, const __grid_constant__ CUtensorMap x2Map,
                     const __grid_constant__ CUtensorMap aMap, Plan plan, float* partials, unsigned* counters) {
#if TROUPE_DECODE_GEMM_BODY
  extern __shared__ __align__(1024) uint8_t smemRaw[];
  if (smemAddr(smemRaw) % 1024 != 0) __trap();
  bf16_t* smem = reinterpret_cast<bf16_t*>(smemRaw);
  float* unitSums = reinterpret_cast<float*>(smem + kStages * kStageElems);
  float* upSums = unitSums + 2 * kUnitSumsFloats;
  __shared__ uint64_t full[kStages], empty[kStages];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, q = lane & 3;
  const int units = plan.units();
  // With LoRA, past the tiles' counters: the A tiles whose columns are written, and the blocks
  // that have read that count (the last of them sets both back to 0 for the next launch).
  unsigned* ready = counters + plan.readyCounter();
  unsigned* readers = ready + 1;
  initStageBarriers(full, empty, kStages, kConsumerWarps / 2);
  auto stageW = [&](int n) { return smem + (n % kStages) * kStageElems; };
  auto stageX = [&](int n) { return stageW(n) + kTileRows * kStageK; };

  if (warp == kConsumerWarps) {  // the copying warp
    if (lane == 0) {
      asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&wMap)) : "memory");
      asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&xMap)) : "memory");
      if (args.X2) asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&x2Map)) : "memory");
      if (plan.aTiles) asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(&aMap)) : "memory");
      // A weight unit's stage s (Plan::stageColumn, stageHalf): with split rows, the other half's
      // rows of an unpaired padding stage are copied from past the weights' last row (zeros); a
      // paired padding stage is two boxes wide, both halves' rows. An A unit's stages are x stages.
      const int beyond = 2 * args.inter;
      auto issueW = [&](int n, const Unit& x, int s) {
        const int k = plan.stageColumn(s), half = plan.stageHalf(s);
        const bool paired = !x.isA && plan.pairedStage(s);
        barrierExpect(&full[n % kStages], paired ? kPairedStageBytes : (kTileRows + kTokens) * kStageK * 2);
        for (int c = 0; c < (paired ? kCopies / 2 : kCopies); ++c) {
          bf16_t* w = stageW(n) + c * kTileRows * kBox;
          const int kc = k + c * kBox;
          if (x.isA) {
            tensorCopy(w, &aMap, kc, x.tile * kTileRows, &full[n % kStages]);
            tensorCopy(w + kHalfRows * kBox, &aMap, kc, x.tile * kTileRows + kHalfRows, &full[n % kStages]);
          } else {
            tensorCopy(w, &wMap, kc, half == 1 ? beyond : x.tile * kHalfRows, &full[n % kStages]);
            tensorCopy(w + kHalfRows * kBox, &wMap, kc, half == 0 ? beyond : args.inter + x.tile * kHalfRows,
                       &full[n % kStages]);
          }
        }
      };
      // The LoRA columns are read only once every A tile's are written (by other blocks, so through
      // global memory and then the tensor copies' proxy).
      bool seen = plan.aTiles == 0;
      auto issueX = [&](int n, const Unit& x, int s) {
        if (!x.isA && plan.readsColumns(s) && !seen) {
          while (loadAcquire(ready) < static_cast<unsigned>(plan.aTiles)) __nanosleep(64);
          asm volatile("fence.proxy.async.global;" ::: "memory");
          seen = true;
        }
        if (!x.isA && plan.pairedStage(s)) {
          // Each box 64 token rows: X's, then X2's (up's rows multiply these).
          for (int c = 0; c < kCopies / 2; ++c) {
            bf16_t* rows = stageX(n) + c * kPairedTokens * kBox;
            const int kc = plan.stageColumn(s) + c * kBox;
            tensorCopy(rows, &xMap, kc, 0, &full[n % kStages]);
            tensorCopy(rows + kTokens * kBox, &x2Map, kc, 0, &full[n % kStages]);
          }
          return;
        }
        const CUtensorMap* map = plan.stageHalf(s) == 1 ? &x2Map : &xMap;
        for (int c = 0; c < kCopies; ++c)
          tensorCopy(stageX(n) + c * kTokens * kBox, map, plan.stageColumn(s) + c * kBox, 0, &full[n % kStages]);
      };
      // The first stages' weights (and A rows) before the wait (written before the grid began),
      // then every stage's token rows after it.
      int n = 0;
      for (int u = blockIdx.x; u < units && n < kStages; u += gridDim.x) {
        const Unit x = plan.unit(u);
        for (int i = 0; i < x.count && n < kStages; ++i, ++n) issueW(n, x, x.kt0 + i);
      }
      const int early = n;
      pdlWait();
      n = 0;
      for (int u = blockIdx.x; u < units; u += gridDim.x) {
        const Unit x = plan.unit(u);
        for (int i = 0; i < x.count; ++i, ++n) {
          if (n >= early) {
            barrierWait(&empty[n % kStages], ((n / kStages) - 1) & 1);
            issueW(n, x, x.kt0 + i);
          }
          issueX(n, x, x.kt0 + i);
        }
      }
      // Every block counts itself once past its wait (or without one); a block that waited saw
      // every A tile done, so the last one may set the counts back.
      if (plan.aTiles && atomicAdd(readers, 1u) == gridDim.x - 1) {
        atomicExch(ready, 0u);
        atomicExch(readers, 0u);
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
  auto pairedStage = [&](int n, float(&sums)[8][4]) {
    multiplyBoxes<kCopies / 2>(stageW(n), stageX(n), &full[n % kStages], &empty[n % kStages], (n / kStages) & 1, sums);
  };
  // acc[j][h]: row 16 (warp & 3) + g (+ 8 for h >= 2) of the tile, token 8 j + 2 q + (h & 1).
  const int r0 = (warp & 3) * 16 + g;
  auto tokenOf = [&](int j, int h) { return 8 * j + 2 * q + (h & 1); };
  int n = 0, parity = 0;
  for (int u = blockIdx.x; u < units; u += gridDim.x, parity ^= 1) {
    const Unit x = plan.unit(u);
    float acc[4][4] = {}, paired[8][4] = {};
    for (int i = 0; i < x.count; ++i, ++n)
      if (n % 2 != group)
        continue;
      else if (!x.isA && plan.pairedStage(x.kt0 + i))
        pairedStage(n, paired);
      else
        stage(n, acc);
    if (plan.paired && !x.isA) {
      // Paired padding stages' sums: gate's rows (warps 0 and 1 of a group) over X's tokens (the
      // product's first 32 columns), up's over X2's (the last 32).
      const bool up = (warp & 3) >= 2;
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int h = 0; h < 4; ++h) acc[j][h] += up ? paired[j + 4][h] : paired[j][h];
    }
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
    if (x.parts > 1) {
      // A split tile's parts meet in the workspace: every part but the last leaves its sums there
      // and counts itself, without waiting; the last (after all the others in every block's order,
      // gate_up_plan.h) waits for their counts and adds the parts in part order.
      const size_t first = plan.partIndex(x) - x.part;
      unsigned* done = counters + plan.counter(x);
      if (x.part < x.parts - 1) {
        float4* mine = reinterpret_cast<float4*>(partials + (first + x.part) * kPartFloats);
#pragma unroll
        for (int j = 0; j < 4; ++j)
          __stcg(mine + j * 128 + tid, make_float4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]));
        __threadfence();
        firstGroupSync();
        if (tid == 0) atomicAdd(done, 1u);
        continue;
      }
      if (tid == 0) {
        while (loadAcquire(done) < static_cast<unsigned>(x.parts - 1)) __nanosleep(32);
        *done = 0;  // ready for the next launch: every other part has counted itself
      }
      firstGroupSync();
      float sum[4][4] = {};
      for (int p = 0; p < x.parts; ++p) {
        const float4* theirs = reinterpret_cast<const float4*>(partials + (first + p) * kPartFloats);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float4 v =
              p == x.part ? make_float4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]) : __ldcg(theirs + j * 128 + tid);
          sum[j][0] += v.x, sum[j][1] += v.y, sum[j][2] += v.z, sum[j][3] += v.w;
        }
      }
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int h = 0; h < 4; ++h) acc[j][h] = sum[j][h];
    }
    if (x.isA) {
      // The A tile's shrink outputs as LoRA columns: each token's own slot's, scaled, below its
      // module's rank; zero in every other column, which the padding stages multiply as well.
      const DecodeGemmLora& lora = args.lora;
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int h = 0; h < 4; ++h) {
          const int row = x.tile * kTileRows + r0 + (h >= 2 ? 8 : 0), t = tokenOf(j, h);
          if (row >= lora.rows || t >= args.M) continue;
          const LoraRowPlace p = loraRowPlace(lora, row);
          const int slot = lora.rowSlot[t], r = loraOwnRank(lora, p, slot);
          const bool own = r >= 0 && r < min(lora.ranks[slot * lora.rankPitch + lora.module + p.module], lora.maxRank);
          // Split rows: module j's columns in its own row, from xK; else one block of every module's.
          bf16_t* row0 = const_cast<bf16_t*>(args.X2 && p.module == 1 ? args.X2 : args.X);
          const int column = args.X2 ? p.column - p.module * (lora.rows / lora.modules) : p.column;
          row0[static_cast<size_t>(t) * args.ldx + args.xK + column] = toB(own ? acc[j][h] * lora.scaling[slot] : 0.0f);
        }
      asm volatile("fence.proxy.async.global;" ::: "memory");
      __threadfence();
      firstGroupSync();
      if (tid == 0) atomicAdd(ready, 1u);
      continue;
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
          const int row = r0 + (h >= 2 ? 8 : 0), t = tokenOf(j, h), f = x.tile * kHalfRows + row;
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

// The stages' worth of a unit's epilogue and of a split part's meeting in the workspace, for
// balancing: on an H100 at Llama-8B's shape, 32 gate/up tiles a unit took 86.8 us in one part and
// 100.2 in two (a last arriver adding the parts), about 1.35 us a stage.
constexpr double kEpilogueStages = 0.5, kFixupStages = 1.0;
// Uniform parts the workspace is reserved for.
constexpr int kMaxSplits = 4;

}  // namespace

Plan GateUpGemm::planOf(const GateUpGemmArgs& a, int splits) const {
  const int tiles = a.inter / kHalfRows;
  Plan p = gate_up::makePlan(a.inter, a.K, a.xK, a.X2 != nullptr, a.paired, splits > 0 ? splits : 1,
                             a.lora.A ? a.lora.rows : 0, a.loraParts, kHalfRows, kStageK, kTileRows,
                             gate_up::reservedWeightParts(tiles, kMaxSplits, sms_));
  if (splits > 0) return p;
  // Balanced plans are searched once a shape (a few milliseconds on the host).
  const auto key = std::make_tuple(p.tiles, p.kTiles, p.xStages, p.padStages, p.aTiles, p.aParts, p.paired);
  auto it = balanced_.find(key);
  if (it == balanced_.end())
    it = balanced_.emplace(key, gate_up::balancedPlan(p, sms_, kEpilogueStages, kFixupStages)).first;
  p.whole = it->second.whole, p.tailParts = it->second.tailParts;
  return p;
}

namespace {

// The LoRA part's own conditions (GateUpGemmArgs::lora).
bool loraSupported(const GateUpGemmArgs& a) {
  const DecodeGemmLora& l = a.lora;
  if (!l.A) return true;
  const int modules = a.X2 ? 2 : l.modules;
  return a.xK > 0 && a.xK % kStageK == 0 && l.modules == modules && modules >= 1 && modules <= 2 &&
         l.rows % (8 * modules) == 0 && l.rows <= kMaxATiles * kTileRows && a.K - a.xK == l.rows / (a.X2 ? 2 : 1) &&
         l.lda % 8 == 0 && l.lda >= a.xK && aligned16(l.A) && l.maxRank > 0 && l.rowSlot && l.ranks && l.scaling &&
         a.loraParts >= 1 && a.loraParts <= kMaxAParts;
}

}  // namespace

bool GateUpGemm::supports(const GateUpGemmArgs& a, int splits) const {
  const bool split = !a.X2 || (a.xK % kStageK == 0 && a.xK > 0 && a.xK < a.K && aligned16(a.X2));
  return available() && split && loraSupported(a) && a.M >= 1 && a.M <= kTokens && a.inter >= kHalfRows &&
         a.inter % kHalfRows == 0 && a.K >= kStageK && a.K % 8 == 0 && splits >= 0 && splits <= kMaxSplits &&
         gate_up::makePlan(a.inter, a.K, a.xK, a.X2 != nullptr, a.paired, 1, 0, 1, kHalfRows, kStageK, kTileRows, 0)
                 .kTiles >= splits &&
         a.ldw % 8 == 0 && a.ldx % 8 == 0 && a.ldAct % 8 == 0 && a.ldw >= a.K && a.ldx >= a.K && a.ldAct >= a.inter &&
         aligned16(a.W) && aligned16(a.X) && aligned16(a.act);
}

void GateUpGemm::reserve(int inter) {
  const int tiles = (inter + kHalfRows - 1) / kHalfRows, counters = gate_up::reservedCounters(tiles);
  partials_.ensure(gate_up::reservedParts(tiles, kMaxSplits, sms_) * kPartFloats);
  if (counters_.ensure(counters)) check(cudaMemset(counters_.get(), 0, counters * sizeof(unsigned)), "cudaMemset");
}

void GateUpGemm::run(const GateUpGemmArgs& a, int splits, cudaStream_t st, bool pdl) {
  if (!supports(a, splits)) throw std::invalid_argument("gate/up GEMM: unsupported shape");
  const Plan p = planOf(a, splits);
  const int units = p.units();
  reserve(a.inter);
  // Both maps end at K: a last stage reaching past it lands zeros in the weights and the rows.
  const CUtensorMap wMap = bf16TensorMap(a.W, a.K, 2 * a.inter, a.ldw, kBox, kHalfRows);
  const CUtensorMap xMap = bf16TensorMap(a.X, a.K, a.M, a.ldx, kBox, kTokens);
  const CUtensorMap x2Map = a.X2 ? bf16TensorMap(a.X2, a.K, a.M, a.ldx, kBox, kTokens) : xMap;
  const CUtensorMap aMap = a.lora.A ? bf16TensorMap(a.lora.A, a.xK, a.lora.rows, a.lora.lda, kBox, kHalfRows) : wMap;
  launchPdlShared(gateUpGemmKernel, dim3(std::min(units, sms_)), dim3(kThreads), kGateUpSmemBytes, st, pdl,
                  "gate/up GEMM launch", a, wMap, xMap, x2Map, aMap, p, partials_.get(), counters_.get());
}

}  // namespace cuda
}  // namespace troupe
