// The CUDA backend's step: the plan run (replayed from a CUDA graph where it can be), the decoder
// forward, the projections without LoRA and attention. Its inputs are uploaded in
// backend_inputs.cc; the class is in backend_impl.h; construction is in backend.cc.
#include <algorithm>
#include <cmath>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "comm.h"
#include "cuda/backend_impl.h"
#include "cuda/collective.h"
#include "cuda/device.h"
#include "cuda/gemm.h"
#include "cuda/kernels.h"
#include "cuda/lora_fused.h"
#include "cuda/timing.h"
#include "cuda/weights.h"
#include "sampling.h"
#include "slot_table.h"

namespace troupe {
namespace cuda_engine {

namespace {

// Scores of one prefill tile (f32) stay under this many bytes; longer prompts run in tiles.
constexpr size_t kScoreBudgetBytes = 256u << 20;

}  // namespace

bool CudaBackend::graphable(const StepBatch& b, const Plan& p) const {
  if (timer_.enabled() || !comm_->capturable() || o_.cudaGraphMaxBs <= 0 || p.n > o_.cudaGraphMaxBs ||
      !p.prefillSeqs.empty())
    return false;
  return p.sampled == p.n;  // every row sampled: the rows list is then the identity
}

void CudaBackend::step(const StepBatch& b, StepOutput& out) {
  // Before anything may throw: the engine's table has stored the update whatever this step does.
  if (table_ && b.resident) table_->updated(b.seqUpdate);
  // The slots this batch uses stay as they are until it ends (run() waits for their copies on
  // the GPU, and synchronizes before returning); fills of other slots go on meanwhile.
  std::optional<SlotTable::Lease> lease;
  if (lora_) lease.emplace(lora_->table().acquire(b.loraSlots));
  // Every rank checks the same batch against the same slot states, so a bad batch fails on all
  // of them before any collective.
  validateBatch(b, c_, info_.kvBlocks, info_.blockSize, lease ? lease->loaded() : noSlots_);
  try {
    run(b, out);
  } catch (const std::exception& e) {
    // The other ranks would wait for this one forever.
    releaseGroup(tp_, std::string("failed during a step: ") + e.what());
    throw;
  }
}

void CudaBackend::run(const StepBatch& b, StepOutput& out) {
  spans_.start();
  check(cudaSetDevice(device_), "cudaSetDevice");
  Plan p;
  uploadInputs(b, p);
  ensureActivations(p.T, p.decodes, p.splits, p.sampled);
  stepSlots_ = 0, stepRank_ = 0;
  if (p.loraItems > 0) {
    // The last slot of each adapter's run (lora_runs.h), and the longest run.
    int highest = 0, span = 1;
    for (int slot : p.loraSlotsUsed) {
      span = std::max(span, lora_->span(slot));
      highest = std::max(highest, slot + std::max(lora_->span(slot), 1) - 1);
    }
    int covered = 1;
    while (covered <= highest) covered *= 2;
    stepSlots_ = slotBuckets_ ? std::min(covered, lora_->slots()) : lora_->slots();
    stepRank_ = std::min(lora_->maxRank(), lora_->slotRank() * span);
  }
  for (int slot : p.loraSlotsUsed) lora_->waitFor(slot, stream_);
  const bool graphed = graphable(b, p);
  if (graphed) {
    // A replayed graph reads the item count from device memory: launch for the most items a
    // step of this size can have.
    if (stepHasLora()) {
      // Decode-only: sgmv items are single tokens. csgmv cuts each used slot's n tokens into
      // ceil(n / chunk) <= floor(n / chunk) + 1 chunks of at most chunk tokens, so a step has at
      // most floor(T / chunk) + (slots used) items, the slots used no more than the step's covered
      // slots (stepSlots_, a key of the graph, as stepRank_ is); the blocks past the real ones only exit.
      const int chunk = o_.loraChunkSize;
      loraItems_.gridItems = o_.loraSgmv ? p.T : std::min(p.T, p.T / chunk + std::min(p.T, stepSlots_));
      const int longest = o_.loraSgmv ? 1 : std::min(p.T, chunk);
      loraItems_.gridTiles = (longest + cuda::kLoraTileTokens - 1) / cuda::kLoraTileTokens;
    }
    Graph& g = graphs_[{p.n, stepSlots_, stepRank_, p.splits}];
    if (!g.exec || g.generation != generation_) {
      // The products of shapes cuBLAS has not been timed on are noted while capturing (gemm.h).
      gemm_->noteUntuned(gemmTune_);
      capture(g, p);
      gemm_->noteUntuned(false);
      g.untuned = gemm_->takeNoted();
      g.replays = 0;
    }
    // Once the graph has run often enough, they are timed, and the graph captured again if any of
    // them now runs another kernel.
    if (!g.untuned.empty() && g.replays++ >= gemmTuneAfter_) {
      const std::vector<cuda::Gemm::Product> untuned = std::move(g.untuned);
      g.untuned.clear();
      if (gemm_->tune(untuned)) capture(g, p);
    }
    spans_.launching(stream_);
    check(cudaGraphLaunch(g.exec, stream_), "cudaGraphLaunch");
    spans_.launched(stream_);
  } else {
    timer_.begin(p.prefillSeqs.empty() ? "decode b" + std::to_string(p.n)
                                       : "prefill " + std::to_string(p.T) + " tokens");
    forward(&b, p);
    timer_.mark("sample", stream_);
  }
  if (tp_.rank == 0) {
    sample(b, p, out);
  } else {
    check(cudaStreamSynchronize(stream_), "step");
  }
  if (graphed && spans_.enabled()) spans_.end("b" + std::to_string(p.n) + (stepHasLora() ? " with adapters" : ""));
  timer_.end(stream_);
}

void CudaBackend::capture(Graph& g, const Plan& p) {
  if (g.exec) cudaGraphExecDestroy(g.exec);
  g.exec = nullptr;
  cudaGraph_t graph;
  check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "graph capture");
  try {
    forward(nullptr, p);
  } catch (...) {
    cudaStreamEndCapture(stream_, &graph);
    throw;
  }
  check(cudaStreamEndCapture(stream_, &graph), "graph capture");
  const cudaError_t e = cudaGraphInstantiate(&g.exec, graph, 0);
  cudaGraphDestroy(graph);
  check(e, "cudaGraphInstantiate");
  g.generation = generation_;
}

void CudaBackend::forward(const StepBatch* b, const Plan& p) {
  const int h = c_.hiddenSize, inter = c_.intermediateSize, T = p.T;
  const float eps = static_cast<float>(c_.rmsNormEps);
  timer_.mark("embed", stream_);
  pendingDelta_.reset();
  qkvTail_.reset();
  cuda::embed(w_->embed, dTokens_, hidden_.get(), T, h, tp_.vocabStart, tp_.vocabCount, stream_);
  comm_->allReduceSum(hidden_.get(), static_cast<size_t>(T) * h, stream_);
  for (int l = 0; l < c_.numLayers; ++l) {
    const cuda::GpuLayer& L = w_->layers[l];
    const int qkvOffsets[3] = {0, qDim_, qDim_ + kvDim_};
    const cuda::RowInput inputNorm{cuda::RowSource::kNorm, hidden_.get(), L.inputNorm, eps};
    // A prefill's q/k/v and gate/up rows in bf16 where bf16Rows allows (kBf16RowsTokens).
    const bool qkvBf16 = bf16Rows(l, cuda::kQkvWeight, {kQ, kK, kV});
    projection(l, cuda::kQkvWeight, "qkv", {kQ, kK, kV}, qkvOffsets, inputNorm, xn_.get(), qkv_.get(),
               qDim_ + 2 * kvDim_, false, qkvBf16 ? cuda::ElemType::BF16 : cuda::ElemType::F32);
    // Qwen2's biases and Qwen3's per-head norms, after the LoRA deltas as PEFT adds them to the
    // projection's output; nothing for Llama and Mistral (whose rows alone may be bf16).
    if (!qkvBf16) cuda::qkvBiasNorm(qkv_.get(), L.qkvBias, L.qNorm, L.kNorm, T, shape_, eps, stream_);
    timer_.mark("rope", stream_);
    bf16_t* kc = kCache_ + l * layerStride_;
    bf16_t* vc = vCache_ + l * layerStride_;
    if (qkvTail_) {
      // The GEMM wrote each token's shrink outputs after its q, k and v; the deltas go in here.
      cuda::ropeKvLora(qkv_.get(), qDim_ + 2 * kvDim_ + qkvTailUsed(), invFreq_.get(), map_, shape_, q_.get(), kc, vc,
                       *qkvTail_, stream_, itemPdl_);
      qkvTail_.reset();
    } else if (qkvBf16) {
      cuda::ropeKv(reinterpret_cast<const bf16_t*>(qkv_.get()), invFreq_.get(), map_, shape_, q_.get(), kc, vc,
                   stream_);
    } else {
      cuda::ropeKv(qkv_.get(), invFreq_.get(), map_, shape_, q_.get(), kc, vc, stream_);
    }
    timer_.mark("attention", stream_);
    attention(l, b, p);
    const int zero[1] = {0};
    // The rank's LoRA shrink saw only its heads' input columns; the expand is linear, so the
    // all-reduce below sums the rank-r shrink outputs as well.
    projection(l, cuda::kOWeight, "o", {kO}, zero, attentionRows(), nullptr, hidden_.get(), h, keepsResidual());
    reducePartial(T);
    const int guOffsets[2] = {0, inter};
    const cuda::RowInput postNorm{cuda::RowSource::kNorm, hidden_.get(), L.postNorm, eps};
    // SiLU-and-mul reads 117 MB against 235 a layer at 2,048 Llama-8B tokens where gate/up is bf16.
    const bool guBf16 = bf16Rows(l, cuda::kGateUpWeight, {kGate, kUp});
    gateUpActWanted_ = !guBf16 && gateUpGemm_;
    actMade_ = false;
    projection(l, cuda::kGateUpWeight, "gate_up", {kGate, kUp}, guOffsets, postNorm, xn_.get(), gateUp_.get(),
               2 * inter, false, guBf16 ? cuda::ElemType::BF16 : cuda::ElemType::F32);
    gateUpActWanted_ = false;
    cuda::RowInput silu{cuda::RowSource::kSiluMul};
    if (actMade_) {
      // The gate/up GEMM wrote down's input rows itself.
      silu = cuda::RowInput{cuda::RowSource::kCopy};
      silu.bf16 = act_.get();
      silu.ld = inter;
    } else if (guBf16) {
      silu.bf16 = reinterpret_cast<const bf16_t*>(gateUp_.get());
    } else {
      silu.f32 = gateUp_.get();
    }
    projection(l, cuda::kDownWeight, "down", {kDown}, zero, silu, act_.get(), hidden_.get(), h, keepsResidual());
    reducePartial(T);
  }
  if (pendingDelta_) throw std::logic_error("the last layer left a LoRA delta for a norm that does not take it");
  if (qkvTail_) throw std::logic_error("the last layer left a LoRA tail for a RoPE that did not take it");
  if (p.sampled > 0) {
    timer_.mark("head", stream_);
    cuda::rmsnorm(hidden_.get(), dRows_, w_->finalNorm, xs_.get(), p.sampled, h, eps, stream_, 0, normPdl_);
    if (tp_.size == 1) {
      project(p.sampled, c_.vocabSize, h, w_->head, h, xs_.get(), h, logits_.get(), false);
    } else {
      project(p.sampled, tp_.vocabPart, h, w_->head, h, xs_.get(), h, vocabPart_.get(), false);
      comm_->allGather(vocabPart_.get(), static_cast<size_t>(p.sampled) * tp_.vocabPart, vocabParts_.get(), stream_);
      cuda::joinVocab(vocabParts_.get(), p.sampled, tp_.vocabPart, logits_.get(), c_.vocabSize, stream_);
    }
  }
  check(cudaGetLastError(), "kernel launch");
}

void CudaBackend::reducePartial(int T) {
  if (tp_.size == 1) return;
  timer_.mark("all-reduce", stream_);
  comm_->allReduceSum(hidden_.get(), static_cast<size_t>(T) * c_.hiddenSize, stream_);
}

bool CudaBackend::gateUpAct(int M, int N, int K, const bf16_t* W, int ldw, const bf16_t* X, int ldx) {
  if (!gateUpActWanted_ || gemvTakes(M, K, W, ldw, X, ldx)) return false;
  cuda::GateUpGemmArgs a;
  a.W = W, a.ldw = ldw, a.X = X, a.ldx = ldx, a.act = act_.get(), a.ldAct = N / 2;
  a.M = M, a.inter = N / 2, a.K = K;
  if (!gateUpGemm_->supports(a, gateUpSplits_)) return false;
  gateUpGemm_->run(a, gateUpSplits_, stream_, true);
  actMade_ = true;
  return true;
}

void CudaBackend::project(int M, int N, int K, const bf16_t* W, int ldw, const bf16_t* X, int ldx, float* Y,
                          bool accumulate, cuda::ElemType yType, const cuda::DecodeGemmPrefetch& prefetch) {
  if (yType == cuda::ElemType::BF16) return gemm_->linear(M, N, K, W, ldw, X, ldx, Y, yType, 1, accumulate ? 1 : 0);
  cuda::DecodeGemmArgs a;
  a.W = W, a.ldw = ldw, a.X = X, a.ldx = ldx, a.Y = Y, a.ldy = N, a.M = M, a.N = N, a.K = K, a.accumulate = accumulate;
  if (gemvTakes(M, K, W, ldw, X, ldx)) {
    cuda::gemv(W, ldw, X, ldx, Y, M, N, K, accumulate, stream_, gemvEarly_);
  } else if (decodeGemm_ && accumulate && decodeGemm_->supports(a, kDecodeGemmSplits)) {
    // The projections that add into the residual (o, down): see decode_gemm.h.
    a.releaseEarly = normPdl_;
    a.releaseAtStart = normAtGemmStart_;
    a.prefetch = prefetch;
    decodeGemm_->run(a, kDecodeGemmSplits, stream_, true);
  } else {
    gemm_->linear(M, N, K, W, ldw, X, ldx, Y, ElemType::F32, 1, accumulate ? 1 : 0);
  }
}

void CudaBackend::attention(int l, const StepBatch* b, const Plan& p) {
  bf16_t* kc = kCache_ + l * layerStride_;
  bf16_t* vc = vCache_ + l * layerStride_;
  oColumnsMade_ = false;
  if (p.decodes > 0) {
    const cuda::OLoraEpilogue epi = p.prefillSeqs.empty() ? oLoraEpilogue(l) : cuda::OLoraEpilogue{};
    oColumnsMade_ = cuda::decodeAttention(q_.get(), kc, vc, dDecIdx_, p.decodes, map_, shape_, p.splits, partial_.get(),
                                          partialMl_.get(), attn_.get(), stream_, attnMma_, epi);
  }
  if (p.prefillSeqs.empty()) return;
  const int G = headsPerKv_, D = c_.headDim, KVH = c_.numKvHeads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  if (prefillMma_) {
    prefillMma_(q_.get(), kc, vc, map_, shape_, dPrefillTiles_, p.prefillTiles, scale, attn_.get(), stream_);
    return;
  }
  for (int i : p.prefillSeqs) {
    const int t0 = b->seqStarts[i], count = b->seqStarts[i + 1] - t0, ctx = b->contextLens[i];
    const int firstPos = ctx - count;
    const size_t gathered = static_cast<size_t>(KVH) * ctx * D;
    if (kGather_.ensure(gathered) | vGather_.ensure(gathered)) ++generation_;
    cuda::gatherKv(kc, vc, map_, i, ctx, shape_, kGather_.get(), vGather_.get(), stream_);
    const size_t perToken = static_cast<size_t>(KVH) * G * ctx;
    const int tile = static_cast<int>(std::clamp<size_t>(kScoreBudgetBytes / 4 / perToken, 1, count));
    for (int ts = 0; ts < count; ts += tile) {
      const int tn = std::min(tile, count - ts);
      const int keys = firstPos + ts + tn;
      const int rows = tn * G;
      const size_t sc = static_cast<size_t>(KVH) * rows * keys;
      if (scores_.ensure(sc) | probs_.ensure(sc) | heads_.ensure(static_cast<size_t>(KVH) * rows * D)) ++generation_;
      gemm_->batched(true, false, keys, rows, D, scale, kGather_.get(), D, static_cast<long long>(ctx) * D,
                     q_.get() + static_cast<size_t>(t0 + ts) * G * D, D, static_cast<long long>(p.T) * G * D, 0,
                     scores_.get(), ElemType::F32, keys, static_cast<long long>(rows) * keys, KVH);
      cuda::causalSoftmax(scores_.get(), probs_.get(), KVH, tn, G, keys, firstPos + ts, shape_.window, stream_);
      gemm_->batched(false, false, D, rows, keys, 1, vGather_.get(), D, static_cast<long long>(ctx) * D, probs_.get(),
                     keys, static_cast<long long>(rows) * keys, 0, heads_.get(), ElemType::BF16, D,
                     static_cast<long long>(rows) * D, KVH);
      cuda::scatterHeads(heads_.get(), attn_.get(), tn, t0 + ts, shape_, stream_);
    }
  }
}

}  // namespace cuda_engine
}  // namespace troupe
