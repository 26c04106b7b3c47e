// Where a fused decode step's projections take their LoRA shrink: the item or row shrink before
// the GEMM, the decode GEMM itself (q/k/v, o and down), or the decode attention (o). The one place that
// decides, so that the attention and the projections agree. The class is in backend_impl.h.
#include "cuda/backend_impl.h"

namespace troupe {
namespace cuda_engine {

cuda::LoraSlices CudaBackend::stepSlices(int layer, std::initializer_list<LoraModule> modules,
                                         const int* offsets) const {
  cuda::LoraSlices sl = lora_->slices(layer, modules, offsets);
  if (stepRank_ > 0) sl.maxRank = stepRank_;
  return sl;
}

cuda::LoraSlices CudaBackend::gateUpStepSlices(int layer) const {
  const int zero[2] = {0, 0};
  return stepSlices(layer, {kGate, kUp}, zero);
}

CudaBackend::DecodeShrink CudaBackend::decodeShrink(int in, int ld, const cuda::RowInput& input) const {
  DecodeShrink d;
  d.decode = rowShrink_ && map_.tokens <= fusedSplitMaxTokens_ && cuda::rowShrinkSupported(in, ld) &&
             (input.source != cuda::RowSource::kCopy || input.ld % 8 == 0);
  // sgmv's items are single tokens: the item shrink would read A per token too, with more blocks
  // than the row shrink (measured +25% / +60% decode at rank 16 / 64, against +17% / +46%).
  d.items = d.decode && !o_.loraSgmv &&
            (itemShrink_ == ItemShrink::kAll ||
             (itemShrink_ == ItemShrink::kCopied && input.source != cuda::RowSource::kNorm));
  // Made rows go into xa, ld apart; copied ones are read where they are.
  d.itemShrink = d.items && cuda::itemShrinkSupported(in, ld, input.source == cuda::RowSource::kCopy ? input.ld : ld);
  return d;
}

cuda::DecodeGemmArgs CudaBackend::loraGemmArgs(int l, cuda::WeightGroup g, const cuda::LoraSlices& sl, const bf16_t* x,
                                               int ldx, float* y, int N, bool accumulate) const {
  const bf16_t* W = w_->layers[l].matrix(g);
  const int ld = w_->ld[g], in = ld - w_->pad[g], T = map_.tokens;
  const bool gemv = gemvTakes(T, in, W, ld, x, ldx);
  // Only where project() would take the decode GEMM over the same rows (or cuBLAS, for q/k/v).
  // One GPU only: measured there (with tensor parallelism each rank's shrink would be a partial
  // sum, which the expand may take as well, but that path is not measured).
  if (!decodeGemm_ || !(loraInGemm_ >> g & 1u) || tp_.size != 1 || !fusedLoraStep() || gemv || sl.in != in ||
      !cuda::loraAContiguous(sl))
    return {};
  if (g == cuda::kQkvWeight) return qkvGemmArgs(sl, W, ld, x, ldx, y, N, accumulate);
  if (!accumulate || sl.count != 1 || w_->splitRows[g]) return {};
  // o's shrink tiles pay at small ranks (8 slots of rank 16); with one slot of rank 64 covered (64
  // A rows, every token's in one tile) the step took 0.12 ms longer than with o's item shrink (H200,
  // Llama-8B's shapes, 32 rows; bench/results/2026-12-04-h200-lora-slot-buckets.json).
  if (g == cuda::kOWeight && sl.maxRank > kOInGemmMaxRank) return {};
  cuda::DecodeGemmArgs a;
  a.W = W, a.ldw = ld, a.X = x, a.ldx = ldx, a.Y = y, a.ldy = N, a.M = T, a.N = N, a.K = in, a.accumulate = true;
  cuda::DecodeGemmLora& lo = a.lora;
  // Every slot's A rows of the module, and B in the weight's padding columns (lora_fused.h).
  lo.A = sl.a[0], lo.lda = in, lo.rows = coveredSlots(g) * sl.slotRank, lo.maxRank = sl.maxRank;
  lo.slotRank = sl.slotRank;
  lo.B = W + in, lo.ldb = ld, lo.rowSlot = dRowSlot_, lo.ranks = lora_->ranks(), lo.rankPitch = kNumLoraModules;
  lo.module = g == cuda::kOWeight ? kO : kDown, lo.scaling = lora_->scaling(), lo.mid = loraMid_.get();
  // The deltas go to the norm after the GEMM where the pool keeps B transposed, except the last
  // layer's down (the final norm reads only the sampled rows): o's to the norm before gate/up,
  // down's to the next layer's before q/k/v.
  const LoraModule m = g == cuda::kOWeight ? kO : kDown;
  const bool later = lora_->bTransposed(l, m) && coveredSlots(g) <= lora_->transposedSlots(m) &&
                     cuda::rmsnormDeltaSupported(c_.hiddenSize, sl.maxRank) &&
                     (g == cuda::kOWeight || l + 1 < c_.numLayers);
  if (later) lo.B = nullptr;
  if (decodeGemm_->supports(a, kDecodeGemmSplits)) return a;
  // More A rows than shrink tiles fit beside the weights' (rank 64 at 8 slots): down's shrink
  // spread over the weight blocks' own pipelines, the deltas from B in the weights' padding
  // columns. Not o's: its GEMM streams about 10 us after the attention, and its padding stages
  // then wait for the shrink outputs. On an H200 at Llama-8B's shapes, 8 rank-64 adapters, a decode
  // step of 32 took +21.6% over the base step with down's spread, +24.6% with o's as well, +24.1%
  // with both by the item shrink (bench/results/2026-12-02-h200-lora-spread-shrink.json).
  if (g != cuda::kDownWeight) return {};
  lo.B = W + in, lo.spread = true;
  if (decodeGemm_->supports(a, kDecodeGemmSplits)) return a;
  return {};
}

bool CudaBackend::gateUpShrinkInO(int l, cuda::DecodeGemmArgs& a) const {
  const cuda::DecodeGemmLora& lo = a.lora;
  if (!normShrinkKept_ || !lo.A || lo.B || lo.spread || lo.module != kO) return false;
  const cuda::LoraSlices sl = gateUpStepSlices(l);
  const int outputs = sl.count * sl.maxRank;
  // Only where gate/up would take the item shrink, which this replaces (the sizes the GEMM takes,
  // supports says), and where the pool's n, laid out by its max rank, is the step's.
  if (sl.maxRank != lora_->maxRank() || !gateUpItemShrink(sl) || !cuda::loraAContiguous(sl) ||
      (sl.count == 2 && sl.module[1] != sl.module[0] + 1))
    return false;
  cuda::DecodeGemmArgs with = a;
  cuda::DecodeGemmNormShrink& ns = with.normShrink;
  ns.A = sl.a[0], ns.rows = lora_->slots() * sl.count * sl.slotRank, ns.outputs = outputs;
  ns.slices = sl.count, ns.slotRank = sl.slotRank;
  ns.normW = w_->layers[l].postNorm, ns.partial = normShrinkParts_.get();
  if (!decodeGemm_->supports(with, loraGemmSplits(a))) return false;
  a = with;
  return true;
}

bool CudaBackend::gateUpItemShrink(const cuda::LoraSlices& sl) const {
  const cuda::WeightGroup g = cuda::kGateUpWeight;
  const int ld = w_->ld[g], in = ld - w_->pad[g];
  return sl.count > 0 && sl.in == in && w_->tail[g] == 0 &&
         decodeShrink(in, ld, cuda::RowInput{cuda::RowSource::kNorm}).itemShrink;
}

cuda::DecodeGemmPrefetch CudaBackend::gateUpPrefetch(int l) const {
  cuda::DecodeGemmPrefetch pf;
  const cuda::LoraSlices sl = gateUpStepSlices(l);
  if (!gateUpPrefetch_ || !gateUpItemShrink(sl) || sl.count > 2) return pf;
  for (int j = 0; j < sl.count; ++j) pf.a[j] = sl.a[j], pf.slotStride[j] = sl.aSlotStride[j];
  pf.bytes = static_cast<size_t>(sl.maxRank) * sl.in * sizeof(bf16_t), pf.slices = sl.count, pf.rowSlot = dRowSlot_;
  if (sl.slotRank != sl.maxRank) {
    // An adapter's rows of both slices lie together from its first slot's (lora_runs.h): the max
    // rank's rows of both, which the pool has past its last slot too.
    pf.slices = 1;
    pf.bytes *= sl.count;
  }
  return cuda::DecodeGemm::prefetchSupported(pf) ? pf : cuda::DecodeGemmPrefetch{};
}

cuda::NormShrinkColumns CudaBackend::gateUpColumns(int l) {
  const cuda::LoraSlices sl = gateUpStepSlices(l);
  cuda::NormShrinkColumns cs;
  cs.partial = normShrinkParts_.get();
  cs.tiles = normShrinkTiles();
  cs.outputs = sl.count * sl.maxRank, cs.slices = sl.count, cs.slots = lora_->slots();
  cs.rankModule = sl.module[0], cs.n = lora_->normShrinkN(l), cs.scaling = lora_->scaling();
  // The norm's columns form every slot's block (rmsnorm_delta.h), so it writes the whole padding.
  cs.xa = augmented(cuda::kGateUpWeight);
  cs.xa.pad = w_->pad[cuda::kGateUpWeight];
  return cs;
}

cuda::DecodeGemmArgs CudaBackend::qkvGemmArgs(const cuda::LoraSlices& sl, const bf16_t* W, int ld, const bf16_t* x,
                                              int ldx, float* y, int N, bool accumulate) const {
  // q/k/v: one split (96 weight blocks at Llama-8B's shape); every held module's A rows spread
  // over the weight blocks' first stages, added by spare blocks into the columns that every weight
  // tile reads with B from its padding. The modules' ranks are read as module + j. (A rows taken
  // by blocks of their own beside the weights' read slower than the weights and came late:
  // bench/results/2026-12-02-h200-lora-qkv-columns.json.) Above rank 16 only: on an H200 at
  // Llama-8B's shapes the GEMM took 25.5-26.6 us at rank 64 against 27.6 for the item shrink and
  // cuBLAS (a decode step of 32 over 8 adapters about 0.05 ms shorter), and 24 us at rank 16
  // against 23 (the step +12.7% over the base step against +9.7%;
  // bench/results/2026-12-02-h200-lora-qkv-spread.json).
  if (sl.maxRank <= kQkvItemShrinkMaxRank) return {};
  for (int j = 1; j < sl.count; ++j)
    if (sl.module[j] != sl.module[0] + j) return {};
  const cuda::WeightGroup g = cuda::kQkvWeight;
  cuda::DecodeGemmArgs a;
  a.W = W, a.ldw = ld, a.X = x, a.ldx = ldx, a.Y = y, a.ldy = N, a.M = map_.tokens, a.N = N, a.K = sl.in;
  a.accumulate = accumulate;
  cuda::DecodeGemmLora& lo = a.lora;
  lo.A = sl.a[0], lo.lda = sl.in, lo.rows = coveredSlots(g) * sl.count * sl.slotRank, lo.maxRank = sl.maxRank;
  if (lo.rows > gateUpShrinkRows_) return {};
  lo.slotRank = sl.slotRank;
  lo.B = W + sl.in, lo.ldb = ld, lo.rowSlot = dRowSlot_, lo.ranks = lora_->ranks(), lo.rankPitch = kNumLoraModules;
  lo.module = sl.module[0], lo.scaling = lora_->scaling(), lo.spread = true;
  lo.modules = sl.count, lo.splitRows = w_->splitRows[g];
  for (int j = 0; j < sl.count; ++j) lo.moduleRow[j] = sl.outOffset[j];
  return decodeGemm_->supports(a, 1) ? a : cuda::DecodeGemmArgs{};
}

cuda::GateUpGemmArgs CudaBackend::gateUpLoraArgs(int l, const cuda::LoraSlices& sl,
                                                 const cuda::AugmentedRows& xa) const {
  const cuda::WeightGroup g = cuda::kGateUpWeight;
  const int ld = w_->ld[g], in = ld - w_->pad[g], T = map_.tokens;
  // Every covered slot's A rows of both modules (slot-major), and their columns in the padding's
  // order, as the item shrink writes them.
  const int rows = coveredSlots(g) * sl.count * sl.slotRank;
  if (!gateUpActWanted_ || gateUpShrinkRows_ == 0 || rows > gateUpShrinkRows_ || tp_.size != 1 || sl.in != in ||
      !cuda::loraAContiguous(sl) || (sl.count == 2 && sl.module[1] != sl.module[0] + 1) ||
      gemvTakes(T, in, w_->layers[l].matrix(g), ld, xa.data, ld))
    return {};
  cuda::GateUpGemmArgs a;
  a.W = w_->layers[l].matrix(g), a.ldw = ld, a.X = xa.data, a.ldx = xa.ld;
  a.X2 = xa.slicePitch ? xa.data + xa.slicePitch : nullptr;
  a.act = act_.get(), a.ldAct = c_.intermediateSize, a.M = T, a.inter = c_.intermediateSize;
  a.K = in + paddingUsed(g), a.xK = in, a.paired = gateUpPaired_;
  cuda::DecodeGemmLora& lo = a.lora;
  lo.A = sl.a[0], lo.lda = in, lo.rows = rows, lo.maxRank = sl.maxRank;
  lo.slotRank = sl.slotRank, lo.rowSlot = dRowSlot_, lo.ranks = lora_->ranks(), lo.rankPitch = kNumLoraModules;
  lo.module = sl.module[0], lo.scaling = lora_->scaling(), lo.modules = sl.count;
  return gateUpGemm_->supports(a, gateUpSplits_) ? a : cuda::GateUpGemmArgs{};
}

cuda::LoraTailDelta CudaBackend::tailDelta(int l, const cuda::LoraSlices& sl, int N) const {
  cuda::LoraTailDelta d;
  d.tailColumn = N, d.count = sl.count, d.maxRank = sl.maxRank, d.slotRank = sl.slotRank, d.slots = stepSlots_;
  for (int j = 0; j < sl.count; ++j) {
    d.outOffset[j] = sl.outOffset[j], d.out[j] = sl.out[j], d.module[j] = sl.module[j];
    d.bt[j] = lora_->bTransposed(l, static_cast<LoraModule>(sl.module[j]));
  }
  d.rowSlot = dRowSlot_, d.ranks = lora_->ranks(), d.rankPitch = kNumLoraModules, d.scaling = lora_->scaling();
  return d;
}

int CudaBackend::loraGemmSplits(const cuda::DecodeGemmArgs& a) const {
  return decodeGemm_->supports(a, kDecodeGemmSplits) ? kDecodeGemmSplits : 1;
}

cuda::DecodeGemmArgs CudaBackend::oLateGemm(int l, const cuda::RowInput& rows, const cuda::AugmentedRows& xa, float* y,
                                            int N, bool accumulate) const {
  const cuda::WeightGroup g = cuda::kOWeight;
  const int ld = w_->ld[g], in = ld - w_->pad[g], T = map_.tokens, K = in + paddingUsed(g);
  const bf16_t* W = w_->layers[l].matrix(g);
  // Only where the item shrink releases the GEMM as it starts, and where project() would take the
  // decode GEMM over xa's rows (its choice, mirrored).
  if (!oRowsEarly_ || !oGemmEarly_ || !itemPdl_ || !decodeGemm_ || !accumulate ||
      rows.source != cuda::RowSource::kCopy || xa.slicePitch != 0 || gemvTakes(T, K, W, ld, xa.data, xa.ld))
    return {};
  cuda::DecodeGemmArgs a;
  a.W = W, a.ldw = ld, a.X = rows.bf16, a.ldx = rows.ld, a.Y = y, a.ldy = N, a.M = T, a.N = N, a.K = K;
  a.accumulate = true, a.releaseEarly = normPdl_, a.releaseAtStart = normAtGemmStart_, a.prefetch = gateUpPrefetch(l);
  a.late.X = xa.data + in, a.late.ld = xa.ld, a.late.count = paddingUsed(g);
  a.late.ready = oRowsReady_.get(), a.late.target = T;
  return decodeGemm_->supports(a, kDecodeGemmSplits) ? a : cuda::DecodeGemmArgs{};
}

cuda::OLoraEpilogue CudaBackend::oLoraEpilogue(int l) {
  const cuda::WeightGroup g = cuda::kOWeight;
  const int ld = w_->ld[g], in = ld - w_->pad[g];
  // Only where the o projection would take the item shrink over the attention's rows as they are.
  if (oInAttention_ == OInAttention::kOff || !fusedLoraStep() || !decodeShrink(in, ld, attentionRows()).itemShrink)
    return {};
  if (oInAttention_ == OInAttention::kSmallRanks && stepRank_ > kOInAttentionMaxRank) return {};
  const int zero[1] = {0};
  const cuda::LoraSlices sl = stepSlices(l, {kO}, zero);
  if (sl.count != 1 || sl.in != in) return {};
  const cuda::RowInput heads = attentionRows();
  if (loraGemmArgs(l, g, sl, heads.bf16, heads.ld, hidden_.get(), c_.hiddenSize, keepsResidual()).M > 0) return {};
  cuda::OLoraEpilogue e;
  e.a = sl.a[0];
  e.aSlotStride = sl.aSlotStride[0];
  e.maxRank = sl.maxRank;
  e.slots = lora_->slots(), e.slotRank = sl.slotRank;
  e.in = in;
  e.rowSlot = dRowSlot_;
  e.ranks = lora_->ranks();
  e.rankPitch = kNumLoraModules;
  e.module = kO;
  e.scaling = lora_->scaling();
  e.xa = xa_.get();
  e.ld = ld;
  e.pad = paddingUsed(g);
  e.partial = oPartial_.get();
  e.tickets = oTickets_.get();
  return e;
}

}  // namespace cuda_engine
}  // namespace troupe
