// The CUDA backend's class, whose members are defined in backend.cc (construction and buffers),
// backend_step.cc (inputs, the forward pass and attention), backend_lora.cc (the projections with
// their LoRA deltas and the pool's slots) and backend_sample.cc (sampling and what a step returns).
#pragma once

#include <cstdlib>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "backend.h"
#include "comm.h"
#include "cuda/collective.h"
#include "cuda/decode_gemm.h"
#include "cuda/device.h"
#include "cuda/gate_up_gemm.h"
#include "cuda/gemm.h"
#include "cuda/kernels.h"
#include "cuda/lora_chunks.h"
#include "cuda/lora_fused.h"
#include "cuda/lora_mma.h"
#include "cuda/lora_pool.h"
#include "cuda/lora_tail.h"
#include "cuda/rmsnorm_delta.h"
#include "cuda/sample_table.h"
#include "cuda/timing.h"
#include "cuda/weights.h"

namespace troupe {
namespace cuda_engine {

using cuda::bf16_t;
using cuda::check;
using cuda::DeviceBuffer;
using cuda::ElemType;
using cuda::PinnedBuffer;

// loraKernel fused: steps of at most this many tokens (decode batches, whose GEMMs are bound by
// reading the weights) make their input rows with the LoRA columns in one kernel (lora_rows.cu:
// the norm's rows made there, SiLU's made by siluMul beside the columns first), so the LoRA shrink
// adds no launch of its own before the one GEMM; with TROUPE_LORA_ROW_SHRINK=0 they add the deltas with a second GEMM
// over the padding columns instead, the shrink running beside the base GEMM. Larger steps run the tensor-core shrink
// and fold the deltas into one GEMM. TROUPE_LORA_FUSED_SPLIT_TOKENS sets it (for tests and
// comparisons; 0: every step takes the larger steps' way).
inline constexpr int kFusedSplitMaxTokens = 128;
// Steps of this many tokens or more write q/k/v and gate/up in bf16, as transformers' Linear
// layers do: their readers (RoPE, SiLU-and-mul) then read half the bytes and cuBLAS stores half.
// Decode steps of up to 32 rows keep f32, which measured the same or up to 1.5% faster at 8 and 32
// rows; at 64 and 128 rows bf16 took up to 3% off the step on an H200: in three builds' alternating
// runs 64 rows 6.08-6.27 ms against 6.22-6.41, 128 rows 7.73-7.86 against 7.84-8.09
// (bench/results/2026-12-02-h200-bf16-rows-33.json). A step with adapters keeps
// f32 up to kFusedSplitMaxTokens tokens (bf16Rows).
inline constexpr int kBf16RowsTokens = 33;

struct Graph {
  cudaGraphExec_t exec = nullptr;
  uint64_t generation = 0;
  // cuBLAS's products that ran the default kernel when it was captured, for Gemm::tune once the
  // graph has been launched CudaBackend::gemmTuneAfter_ times; replays counts the launches until then.
  std::vector<cuda::Gemm::Product> untuned;
  int replays = 0;
};

class CudaBackend : public Backend {
 public:
  CudaBackend(const ModelConfig& c, const std::vector<TensorRef>& tensors, const EngineOptions& o);
  ~CudaBackend() override;

  EngineInfo info() const override { return info_; }
  void step(const StepBatch& batch, StepOutput& out) override;
  void loadLoraSlot(int slot, const AdapterWeights& adapter) override;
  void clearLoraSlot(int slot) override;
  void swapLoraSlots(int a, int b) override;
  SlotTable* loraSlotTable() override { return lora_ ? &lora_->table() : nullptr; }

 private:
  struct Plan {
    int T = 0, n = 0, decodes = 0, sampled = 0, splits = 1;
    std::vector<int> prefillSeqs;
    std::vector<int> loraSlotsUsed;
    int loraItems = 0;
    int loraTiles = 0;     // 16-token tiles of the longest item
    int prefillTiles = 0;  // blocks of the prefill attention's one launch (per KV head)
  };
  void uploadInputs(const StepBatch& b, Plan& plan);
  void run(const StepBatch& b, StepOutput& out);
  void forward(const StepBatch* b, const Plan& plan);
  void attention(int layer, const StepBatch* b, const Plan& plan);
  void sample(const StepBatch& b, const Plan& plan, StepOutput& out);
  // Sums a row-parallel layer's partial outputs, which the projection left in hidden_: rank 0
  // added its part to the residual, the others wrote theirs over it (see keepsResidual).
  void reducePartial(int T);
  // Whether a row-parallel projection adds to the residual in hidden_ (one rank only, so the
  // all-reduce counts the residual once) rather than overwriting it, which saves the other ranks
  // clearing hidden_ before each of them.
  bool keepsResidual() const { return tp_.rank == 0; }
  void ensureActivations(int T, int decodes, int splits, int sampled);
  // y (+)= LoRA deltas of the modules in `modules` (one fused launch pair), when the step has adapter
  // tokens. With loraKernel mma-overlap, startLora runs the shrink first on loraStream_, beside the
  // base projection (it reads only the projection's input), and applyLora the expand once both are done.
  void startLora(int layer, std::initializer_list<LoraModule> modules, const bf16_t* x, int ldx);
  void applyLora(int layer, std::initializer_list<LoraModule> modules, const int* offsets, const bf16_t* x, int ldx,
                 float* y, int ldy);
  // One of layer l's four projections with its LoRA deltas: y[T][N] (+ y when accumulating) =
  // x . W^T + the adapters' deltas of `modules` (their first output columns at offsets).
  // The input row comes from `input`: made into `made` (xn_, act_) unless the row shrink makes it
  // together with the LoRA columns.
  // yType BF16 (y then holds bf16 rows): only where bf16Rows says so.
  void projection(int l, cuda::WeightGroup g, const char* name, std::initializer_list<LoraModule> modules,
                  const int* offsets, const cuda::RowInput& input, bf16_t* made, float* y, int N, bool accumulate,
                  cuda::ElemType yType = cuda::ElemType::F32);
  // Whether layer l's projection of group g (q/k/v or gate/up, `modules`) writes bf16 rows this
  // step: a step of bf16RowsTokens_ tokens or more, where the projection is one cuBLAS GEMM (any
  // LoRA of those modules taken inside it as augmented columns) and nothing reads its rows as f32
  // (q/k/v with Qwen2's biases or Qwen3's norms does).
  bool bf16Rows(int l, cuda::WeightGroup g, std::initializer_list<LoraModule> modules) const;
  // A projection's input rows the plain way (rmsnorm, siluMul, or as they are): where they are.
  // Made rows go to `made`, ld apart (in when 0).
  const bf16_t* makeRows(const cuda::RowInput& input, bf16_t* made, int in, int ld = 0);
  // The loraKernel fused form of projection (lora_fused.h), for a step with adapter tokens.
  void fusedProjection(int l, const cuda::LoraSlices& sl, cuda::WeightGroup g, const char* name, const bf16_t* x,
                       int ldx, const bf16_t* W, float* y, int N, bool accumulate, cuda::ElemType yType);
  // Y[M][N] = X . W^T (+ Y when accumulating) over K features, rows ldw and ldx apart: f32 out by a
  // GEMV kernel for a few tokens or the decode GEMM, else cuBLAS (the only one that writes bf16).
  // prefetch: what the decode GEMM, where it takes the product, asks of L2 (DecodeGemmPrefetch).
  void project(int M, int N, int K, const bf16_t* W, int ldw, const bf16_t* X, int ldx, float* Y, bool accumulate,
               cuda::ElemType yType = cuda::ElemType::F32, const cuda::DecodeGemmPrefetch& prefetch = {});
  // gate/up's whole product without adapters (N = gate's and up's rows) over K features of X, as
  // silu(gate) x up into act_ (N / 2 columns a row) by the gate/up GEMM, where forward() asked for
  // it and the kernel takes the shape; false (nothing run) otherwise.
  bool gateUpAct(int M, int N, int K, const bf16_t* W, int ldw, const bf16_t* X, int ldx);
  // The fused kernel's augmented rows for group g at this step (lora_fused.h), and layer l's GEMM
  // over their columns [col0, col0 + K) with W's same columns (per slice with split rows, slice j
  // writing sl.out[j] columns of y from sl.outOffset[j]).
  cuda::AugmentedRows augmented(cuda::WeightGroup g);
  void projectAugmented(int l, const cuda::AugmentedRows& xa, const cuda::LoraSlices& sl, int col0, int K,
                        const bf16_t* W, float* y, int N, bool accumulate, cuda::ElemType yType = cuda::ElemType::F32,
                        const cuda::DecodeGemmPrefetch& prefetch = {});
  // The pointer arrays of q/k/v's pieces with split rows (see piecePtrs_), written when the
  // buffers they point into move.
  void buildPiecePointers();
  // Whether this step's projections take the fused LoRA layout (lora_fused.h).
  bool fusedLoraStep() const { return lora_ && stepHasLora() && o_.loraKernel == LoraKernel::kFused; }
  // How a fused step's projection over `input` (in features, augmented rows ld apart) takes its
  // shrink. The one place that decides it, so that the decode attention taking the o shrink
  // (oLoraEpilogue) and the projection itself agree.
  struct DecodeShrink {
    bool decode = false;      // a decode step's way: the rows and their LoRA columns, then one GEMM
    bool items = false;       // the item shrink wanted: rows made for it go into xa
    bool itemShrink = false;  // and it takes them (otherwise the row shrink)
  };
  DecodeShrink decodeShrink(int in, int ld, const cuda::RowInput& input) const;
  // What the decode attention needs to take layer l's o shrink as it finishes (kernels.h), or an
  // empty one where the o projection takes it itself.
  cuda::OLoraEpilogue oLoraEpilogue(int l);
  // The o projection's input: the attention's output, [token][head][headDim].
  cuda::RowInput attentionRows() const;
  // The decode GEMM's arguments for a fused step's o or down projection (group g of layer l, its
  // input rows x ldx apart) with the LoRA deltas taken inside it (decode_gemm.h), or M = 0 where
  // that is off or unsupported. Without lora.B the deltas are the next norm's (rmsnorm_delta.h).
  cuda::DecodeGemmArgs loraGemmArgs(int l, cuda::WeightGroup g, const cuda::LoraSlices& sl, const bf16_t* x, int ldx,
                                    float* y, int N, bool accumulate) const;
  cuda::DecodeGemmArgs qkvGemmArgs(const cuda::LoraSlices& sl, const bf16_t* W, int ld, const bf16_t* x, int ldx,
                                   float* y, int N, bool accumulate) const;
  // The splits a tile that loraGemmArgs' GEMM runs with: two where every block fits, else one.
  int loraGemmSplits(const cuda::DecodeGemmArgs& a) const;
  // Captures the step's graph into g (its old one dropped).
  void capture(Graph& g, const Plan& p);
  bool graphable(const StepBatch& b, const Plan& plan) const;

  TensorParallel tp_;
  std::shared_ptr<CommGroup> group_;
  ModelConfig c_;  // this rank's part (the vocabulary stays whole)
  EngineOptions o_;
  int device_ = 0;
  std::unique_ptr<cuda::DeviceComm> comm_;
  // The most tokens a projection runs on the GEMV; TROUPE_CUDA_GEMV=N (0 sends every projection to
  // cuBLAS or the decode GEMM, for comparing).
  int gemvRows_ = cuda::kGemvMaxRows;
  bool gemvTakes(int M, int K, const bf16_t* W, int ldw, const bf16_t* X, int ldx) const {
    return M <= gemvRows_ && cuda::gemvSupported(M, K, W, ldw, X, ldx);
  }
  // GEMVs launched to start while the kernel before them runs (compute capability 9.0, gemv.cu);
  // TROUPE_CUDA_GEMV_EARLY=0 waits for it, for comparing.
  bool gemvEarly_ = false;
  // The weight groups (bits) whose projections write bf16 rows where bf16Rows allows, and the
  // fewest tokens a step has for them to (TROUPE_CUDA_BF16_ROWS, TROUPE_CUDA_BF16_ROWS_TOKENS).
  unsigned bf16Rows_ = 1u << cuda::kQkvWeight | 1u << cuda::kGateUpWeight;
  int bf16RowsTokens_ = kBf16RowsTokens;
  // The decode GEMM of our own for the projections that add into the residual (decode_gemm.h),
  // where the build and the device have it; TROUPE_CUDA_DECODE_GEMM=0 keeps them on cuBLAS.
  bool decodeGemmEnabled_ = true;
  // A decode step's gate/up GEMM and SiLU-and-mul as one kernel of our own (gate_up_gemm.h),
  // writing down's input rows: no siluMul launch, and no cuBLAS launch gap after the norm.
  // TROUPE_CUDA_GATE_UP_GEMM=0 keeps cuBLAS and siluMul, =N (1-4) splits every tile's K into N
  // parts, =balanced (the default) takes the plan whose longest block is shortest. On an H100 at
  // Llama-8B's shape one part took 86.8 us behind a 2 us kernel, 2-4 parts 100-104 (a last arriver
  // adding them), against 85.6 for cuBLAS and siluMul (bench/results/2026-12-06-h100-gate-up-gemm.json).
  // One part leaves 52 of the 448 tiles to a fourth round of 132 blocks, 16 stages each, which the
  // balanced plan spreads over every block: 86.95 us against 90.09 for one part and 89.72 for
  // cuBLAS and siluMul, and base steps of 32 rows 6.96 ms against 7.04-7.07 with cuBLAS
  // (bench/results/2026-12-06-h100-gate-up-shrink.json). With gate/up adapters it runs where it
  // makes their LoRA columns itself (gateUpShrinkRows_); reading the item shrink's, split rows'
  // padding stages run once a half and the step was level with cuBLAS's at best.
  bool gateUpGemmOn_ = true;
  int gateUpSplits_ = 0;
  // cuBLAS's products in a step's graph run the kernel timed fastest for their shape (gemm.h);
  // TROUPE_CUDA_GEMM_TUNE=0 keeps cublasGemmEx's default, for comparing.
  bool gemmTune_ = true;
  // A graph's shapes are timed once it has been launched this many times, and the graph captured
  // again (TROUPE_CUDA_GEMM_TUNE_AFTER; 0: at its first capture). Timing a batch size's shapes
  // holds its step about 45 ms for 0.3-0.8% off each step after, so a server tunes the sizes it
  // runs often and not the ones a batch passes through: on an H200 with 32 streams through HTTP
  // the server's decode steps took 8.6 ms on average when each new size was tuned at once, 5.8
  // without tuning (bench/results/2026-12-04-h200-gemm-tune-after.json).
  int gemmTuneAfter_ = kGemmTuneAfter;
  static constexpr int kGemmTuneAfter = 256;
  static constexpr int kDecodeGemmSplits = 2;
  // The weight groups (bits by cuda::WeightGroup) whose decode steps take their LoRA inside the
  // decode GEMM rather than by an item shrink before it; TROUPE_LORA_IN_GEMM=0 none, or a list of
  // qkv, o and down.
  unsigned loraInGemm_ = 1u << cuda::kQkvWeight | 1u << cuda::kOWeight | 1u << cuda::kDownWeight;
  // q/k/v keeps the item shrink up to this max rank, and o takes it above this one
  // (loraGemmArgs and qkvGemmArgs say why).
  static constexpr int kQkvItemShrinkMaxRank = 16, kOInGemmMaxRank = 16;
  // At max rank kLoraTailMaxRank and below a decode step's q/k/v GEMM may form its shrink itself,
  // over every slot's A rows kept as tail rows of the weight (GpuWeights::tail, lora_tail.h), RoPE
  // adding the deltas. loraTail_: the groups (bits) that may (TROUPE_LORA_TAIL: qkv or 0); the
  // weights' tail rows say which do. qkvTail_: what this layer's GEMM left for RoPE.
  unsigned loraTail_ = 1u << cuda::kQkvWeight;
  std::optional<cuda::LoraTailDelta> qkvTail_;
  // Layer l's deltas of the slices sl, whose GEMM wrote N outputs before the tail's.
  cuda::LoraTailDelta tailDelta(int l, const cuda::LoraSlices& sl, int N) const;
  int fusedSplitMaxTokens_ = kFusedSplitMaxTokens;
  // loraKernel fused, steps of at most fusedSplitMaxTokens_: the row shrink (lora_rows.cu) makes
  // the input and LoRA columns for one GEMM; TROUPE_LORA_ROW_SHRINK=0 keeps the split form.
  bool rowShrink_ = true;
  // Which decode rows take the item shrink (lora_item_shrink.cu: A read once per adapter item)
  // after they are made, rather than the row shrink: every group by default (norm rows made by
  // rmsnorm first); TROUPE_LORA_ITEM_SHRINK=0 none, =copied only rows copied or made by siluMul
  // (o, down), for comparing.
  enum class ItemShrink { kNone, kCopied, kAll } itemShrink_ = ItemShrink::kAll;
  // The item shrink launched to start while the kernel that made its rows drains (compute
  // capability 9.0; TROUPE_LORA_ITEM_PDL=0 waits for it, for comparing).
  bool itemPdl_ = false;
  // o's item shrink lets the decode GEMM after it start at once, so that the GEMM's first weight
  // stages are copied under the attention's tail as in a step without adapters, instead of after
  // the shrink's sums; the GEMM still waits for the shrink before it reads a row. 8 rank-64
  // adapters, batch 32, H200: 6.53-6.54 ms a step against 6.61-6.68
  // (bench/results/2026-12-02-h200-lora-o-gemm-early.json). TROUPE_LORA_O_GEMM_EARLY=0 releases
  // it after the sums, for comparing.
  bool oGemmEarly_ = true;
  // Further: o's GEMM reads the attention's rows as they are, once the item shrink's first blocks
  // count them written, and waits for the shrink only before its LoRA columns' stages
  // (decode_gemm.h's DecodeGemmLateColumns), so that it streams its weights and rows under the
  // shrink as the base step's does. TROUPE_LORA_O_ROWS_EARLY=0 waits for the shrink first.
  bool oRowsEarly_ = true;
  DeviceBuffer<unsigned> oRowsReady_;  // [2], zero between steps
  // o's decode GEMM in that form at layer l over the attention's rows and xa's columns, or M = 0
  // where it does not apply.
  cuda::DecodeGemmArgs oLateGemm(int l, const cuda::RowInput& rows, const cuda::AugmentedRows& xa, float* y, int N,
                                 bool accumulate) const;
  // Decode steps whose o and down projections take their LoRA inside the decode GEMM leave the
  // deltas B s to the RMSNorm of the residual after it (rmsnorm_delta.h), so that the GEMM's weight
  // tiles do not wait for its shrink tiles: a decode step of 32 rows over 8 rank-16 adapters on an
  // H200 +7.2% / +7.7% over the base step against +12.6% / +12.8%
  // (bench/results/2026-12-02-h200-lora-delta-in-norm.json). The last layer's down keeps them (the
  // final norm reads only sampled rows).
  // TROUPE_LORA_DELTA_IN_NORM=0 adds them in the GEMM, for comparing.
  bool deltaInNorm_ = true;
  // RMSNorms launched to start while the kernel before them drains, and the decode GEMM before them
  // releasing them once its products are summed (DecodeGemmArgs::releaseEarly), so that the norm,
  // and a LoRA item shrink launched early after it, wait on the multiprocessors instead of being
  // launched after the GEMM's writes (compute capability 9.0; TROUPE_CUDA_NORM_PDL=0 launches them
  // after, for comparing). H200, Llama-8B's shapes, a decode step of 32: 5.17 ms against 5.28, and
  // over 8 rank-64 adapters 6.27 against 6.45 (bench/results/2026-12-04-h200-norm-pdl.json).
  bool normPdl_ = false;
  // With normPdl_, the decode GEMM before a norm releases it as its blocks start rather than once
  // their products are summed (DecodeGemmArgs::releaseAtStart), so that rmsnormDelta's reads of B
  // fall beside the GEMM's weights. TROUPE_CUDA_NORM_AT_GEMM_START=1 takes it, for comparing.
  bool normAtGemmStart_ = false;
  // The delta that the next RMSNorm of the residual adds (makeRows), set by o's or down's GEMM.
  std::optional<cuda::ResidualDelta> pendingDelta_;
  // Decode steps over one attention split take the o projection's shrink in the attention kernel
  // (lora_o_epilogue.cuh) up to kOInAttentionMaxRank, where it saves its launch; at rank 64 its
  // longer epilogue on the attention cost more than the launch (8 adapters, batch 32, H200:
  // rank 16 6.27 ms a step against 6.38, rank 64 7.00 against 6.97). TROUPE_LORA_O_IN_ATTENTION=0
  // leaves it to the item shrink and =1 takes it at every rank, for comparing.
  enum class OInAttention { kOff, kSmallRanks, kOn } oInAttention_ = OInAttention::kSmallRanks;
  static constexpr int kOInAttentionMaxRank = 16;
  // Decode steps whose o projection takes its LoRA in the decode GEMM with the delta left to the
  // norm also begin gate/up's shrink there (decode_gemm.h's DecodeGemmNormShrink), the norm
  // finishing it as gate/up's LoRA columns (NormShrinkColumns), in place of gate/up's item shrink
  // between the norm and its GEMM: rank 16 and below (gate's and up's outputs together up to 32, at
  // most 256 A rows over the slots). Level with the item shrink, not faster: 8 rank-16 adapters,
  // batch 32, H200, 5.79 ms a step against 5.80, and +11.0% over the base step against +10.5% with
  // a norm small enough to sit beside the GEMM's blocks (bench/results/2026-12-04-h200-lora-gate-up-in-o.json,
  // bench/results/2026-12-04-h200-lora-norm-shrink-small.json). TROUPE_LORA_GATE_UP_IN_O=1 takes it,
  // for comparing.
  bool gateUpInO_ = false;
  // o's decode GEMM asks L2 for gate/up's A factors of the step's slots as its blocks issue their
  // last stages (DecodeGemmPrefetch), so that the item shrink after the norm reads them from L2: 8
  // adapters, batch 32, H200, the step's graph took 37-43 us less at rank 64 (+19.6% and +20.0%
  // over the base step against +20.0% and +20.5%) and the same at rank 16
  // (bench/results/2026-12-04-h200-lora-gate-up-prefetch.json). TROUPE_LORA_GATE_UP_PREFETCH=0
  // leaves it out, for comparing.
  bool gateUpPrefetch_ = true;
  // What o's GEMM at layer l asks of L2 for gate/up (nothing where it is off or does not apply).
  cuda::DecodeGemmPrefetch gateUpPrefetch(int l) const;
  // The item shrink's block shape for o and gate/up (lora_fused.h's ItemShrinkShape; {} picks by
  // the outputs): TROUPE_LORA_O_ITEM_SHAPE / TROUPE_LORA_GATE_UP_ITEM_SHAPE as outPerWarp,warps.
  cuda::ItemShrinkShape oItemShape_, gateUpItemShape_;
  // Whether a decode step's gate/up takes the item shrink over the norm's rows, at slices sl.
  bool gateUpItemShrink(const cuda::LoraSlices& sl) const;
  bool normShrinkKept_ = false;          // the pool keeps what o's delta adds (normShrinkN)
  DeviceBuffer<float> normShrinkParts_;  // [o's weight tile][32 tokens][32]
  // Sets a.normShrink where o's GEMM a at layer l may begin gate/up's shrink, and says whether.
  bool gateUpShrinkInO(int l, cuda::DecodeGemmArgs& a) const;
  // The norm's half of it at layer l.
  cuda::NormShrinkColumns gateUpColumns(int l);
  // o's weight tiles (64 rows each), each leaving its parts.
  int normShrinkTiles() const { return (c_.hiddenSize + 63) / 64; }
  bool oColumnsMade_ = false;       // this layer's attention wrote the o rows and their LoRA columns
  DeviceBuffer<float> oPartial_;    // [tokens][KV heads][max rank]
  DeviceBuffer<int32_t> oTickets_;  // [tokens]
  // loraKernel fused, steps past fusedSplitMaxTokens_: the shrink as one cuBLAS GEMM over every
  // slot's A rows (TROUPE_LORA_SHRINK_GEMM=0: the tiled tensor-core shrink, for comparing).
  bool shrinkAllSlots_ = true;
  // Steps past fusedSplitMaxTokens_ whose adapter runs are all at least the smallest of these
  // rows: the shrink by chunks of these row counts, one batched GEMM each (lora_chunks.h), rather
  // than over every slot's A rows. TROUPE_LORA_SHRINK_CHUNKS: the counts, descending and
  // comma-separated; 0 for none.
  std::vector<int> shrinkChunkSizes_ = {512, 128, 32};
  // Runs it over x (rows ldx apart) into loraMid_, and says where the outputs are.
  cuda::LoraMid shrinkByChunks(const cuda::LoraSlices& sl, const bf16_t* x, int ldx);
  cuda::OpTimer timer_{std::getenv("TROUPE_CUDA_TIMING") != nullptr &&
                       std::string(std::getenv("TROUPE_CUDA_TIMING")) == "1"};
  cuda::StepSpans spans_;
  int sms_ = 1;
  // The tensor-core attention kernels where they apply (TROUPE_CUDA_ATTENTION_MMA=0: the CUDA-core
  // decode kernel and GEMM-based prefill, for comparing); nullptr: those.
  cuda::DecodeMmaLauncher attnMma_ = nullptr;
  cuda::DecodeKernel attnKernel_ = cuda::DecodeKernel::kCudaCore;  // the one attnMma_ runs
  // TROUPE_CUDA_ATTENTION_SPLITS=N: every decode attention with N context splits (0: the count
  // decodeAttentionSplits picks for the step), so that split rules can be compared in one build.
  int attnSplits_ = 0;
  cuda::PrefillMmaLauncher prefillMma_ = nullptr;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda::GpuWeights> w_;
  std::unique_ptr<cuda::Gemm> gemm_;
  std::unique_ptr<cuda::DecodeGemm> decodeGemm_;
  std::unique_ptr<cuda::GateUpGemm> gateUpGemm_;
  // Set by forward() for the gate/up projection: where the product is one GEMM over the rows (no
  // LoRA pass after it), gateUpAct takes it into act_ and actMade_ says so.
  bool gateUpActWanted_ = false, actMade_ = false;
  // With adapters, the gate/up GEMM makes gate/up's LoRA columns itself, with no shrink kernel
  // before it, where the covered slots' A rows of both modules are at most this many
  // (TROUPE_LORA_GATE_UP_SHRINK; 0: never). Above it the item or row shrink makes them and cuBLAS
  // reads them. On an H100 with 8 adapters and paired padding stages, 256 rows (rank 16) took
  // 7.46-7.535 ms a step against 7.57-7.62 with cuBLAS, 1,024 (rank 64) 8.43-8.45 against
  // 8.47-8.50 (bench/results/2026-12-06-h100-gate-up-paired.json); more rows are unmeasured, and
  // the A units grow with them. gateUpLoraArgs: its arguments for layer l's step, or M = 0.
  int gateUpShrinkRows_ = 1024;
  // Split rows' padding stages in that GEMM take gate's and up's columns at once, each half's rows
  // over its own token rows (gate_up_gemm.h); TROUPE_CUDA_GATE_UP_PAIRED=0 runs them once a half
  // (7.65 ms a step at rank 16 against 7.46-7.535 paired, on the H100 above).
  bool gateUpPaired_ = true;
  cuda::GateUpGemmArgs gateUpLoraArgs(int l, const cuda::LoraSlices& sl, const cuda::AugmentedRows& xa) const;
  EngineInfo info_;
  std::vector<bool> noSlots_;  // the slot states of an engine without a pool: all empty
  cuda::AttnShape shape_{};
  int qDim_, kvDim_, headsPerKv_;
  DeviceBuffer<float> invFreq_;
  bf16_t* kCache_ = nullptr;
  bf16_t* vCache_ = nullptr;
  size_t layerStride_ = 0;  // cache elements per layer

  // Step inputs: one int arena ([tokens | positions | tokenSeq | decIdx | rows | blockTables]).
  int pitch_ = 0;
  PinnedBuffer<int32_t> hostInts_;
  DeviceBuffer<int32_t> ints_;
  cuda::TokenMap map_{};
  const int32_t* dTokens_ = nullptr;
  const int32_t* dDecIdx_ = nullptr;
  const int32_t* dRows_ = nullptr;
  const int32_t* dRowSlot_ = nullptr;  // each token's LoRA slot, -1 for the base model
  // This step's shrink chunks (none: the shrink over every slot's A rows), their table on the
  // device and the pointer arrays of their batched GEMMs.
  std::vector<cuda::LoraChunkClass> loraChunkClasses_;
  const int32_t* dLoraChunks_ = nullptr;
  DeviceBuffer<void*> chunkPtrs_;
  const cuda::PrefillTile* dPrefillTiles_ = nullptr;
  // Activations.
  DeviceBuffer<float> hidden_, qkv_, gateUp_, scores_, partial_, partialMl_, logits_;
  DeviceBuffer<float> vocabPart_, vocabParts_;  // this rank's lm_head rows, then every rank's
  DeviceBuffer<float> greedyPartials_;          // sampleGreedyRows' per-block statistics
  DeviceBuffer<bf16_t> xn_, q_, attn_, act_, kGather_, vGather_, probs_, heads_, xs_;
  DeviceBuffer<bf16_t> xa_;  // loraKernel fused: a projection's input rows with their LoRA columns
  // Tokens xa_ holds: split rows lie this many rows apart whatever a step's size, so that the
  // pointers below stay valid for every step and every graph until xa_ moves.
  size_t xaTokens_ = 0;
  // q/k/v with split rows: per layer, the A, B, C (f32 rows) and C (bf16 rows) pointer arrays
  // (splitPieces each) of the one batched GEMM over pieces of k's rows (lora_fused.h); empty
  // without them.
  DeviceBuffer<const void*> piecePtrs_;
  uint64_t generation_ = 1;  // bumped whenever a buffer a graph uses moves
  // By (batch size, stepSlots_, stepRank_, attention splits).
  std::map<std::tuple<int, int, int, int>, Graph> graphs_;
  // LoRA: the pool (when adapters are enabled), the step's work items and the shrink output.
  std::unique_ptr<cuda::GpuLoraPool> lora_;
  cuda::LoraItems loraItems_{};
  // The pool slots this step's LoRA kernels cover: one past the highest slot the batch uses,
  // rounded up to a power of two (at most the pool's); 0 without adapter tokens. The GEMMs that
  // read every slot's A rows or B columns (tail rows, shrink tiles, padding columns) read the
  // covered ones only, and each count has graphs of its own, so a batch over one adapter does not
  // pay for eight; the loader fills the lowest free slot, which keeps a server's few adapters
  // low. TROUPE_LORA_SLOT_BUCKETS=0 covers every slot, for comparing.
  int stepSlots_ = 0;
  bool slotBuckets_ = true;
  bool stepHasLora() const { return stepSlots_ > 0; }
  // The rank a step's LoRA kernels are chosen and sized by: the slot rank times the longest run of
  // slots an adapter of the batch takes (lora_runs.h), at most the pool's max rank; 0 without
  // adapter tokens. Where the pool is cut into slots below its max rank, a batch of small adapters
  // then takes the kernels of its own rank (a decode step's q/k/v tail rows, o's shrink in the
  // attention or its GEMM, the deltas in the norms; a prefill's shrink over its rank's rows) rather
  // than the max rank's; each value has graphs of its own.
  int stepRank_ = 0;
  // The pool's slices for this step: its max rank the step's (stepRank_).
  cuda::LoraSlices stepSlices(int layer, std::initializer_list<LoraModule> modules, const int* offsets) const;
  cuda::LoraSlices gateUpStepSlices(int layer) const;
  // Slots that group g's slot-ordered extents cover this step: stepSlots_ where one slot's padding
  // columns come before the next slot's (split rows, or one held module), else the pool's.
  int coveredSlots(cuda::WeightGroup g) const;
  // Group g's padding columns that this step's GEMMs read (all w_->pad[g] of them, or those of
  // the covered slots).
  int paddingUsed(cuda::WeightGroup g) const;
  // q/k/v's tail rows (GpuWeights::tail, slot-major) that this step's GEMM writes after its
  // outputs: the covered slots'.
  int qkvTailUsed() const;
  DeviceBuffer<float> loraMid_;  // loraPieces_ slabs of partial shrink results
  int loraPieces_ = 1;
  cudaStream_t loraStream_ = nullptr;  // mma-overlap: the shrinks, forked from and joined to stream_
  cudaEvent_t loraFork_ = nullptr, loraJoin_ = nullptr;
  bool shrinkStarted_ = false;  // startLora ran the shrink of the group applyLora finishes next
  // Sampling. Rows with top-k, top-p or min-p are drawn on the GPU (sample_filter.cuh), or with
  // TROUPE_CUDA_SAMPLE_FILTERS=0 on the host from a downloaded logits row.
  bool sampleFilters_ = true;
  PinnedBuffer<cuda::SampleRow> hostRows_;
  DeviceBuffer<cuda::SampleRow> rows_;
  // The resident form's values on the device (rank 0, made by its first resident step), and
  // each step's rows of it. TROUPE_CUDA_SAMPLE_TABLE=0 sends resident rows' values and penalty
  // lists every step as the per-row form's, for comparing.
  bool sampleTable_ = true;
  std::unique_ptr<cuda::SampleTable> table_;
  PinnedBuffer<cuda::SampleStep> hostSteps_;
  DeviceBuffer<cuda::SampleStep> steps_;
  DeviceBuffer<float> countOrig_;  // SampleInputs::orig
  PinnedBuffer<int32_t> hostPen_;
  DeviceBuffer<int32_t> pen_;
  DeviceBuffer<float> penOrig_;
  DeviceBuffer<int32_t> outInts_;
  DeviceBuffer<float> outFloats_;
  PinnedBuffer<int32_t> hostOutInts_;
  PinnedBuffer<float> hostOutFloats_;
  PinnedBuffer<float> hostLogits_;
};

}  // namespace cuda_engine
}  // namespace troupe
