// The CUDA backend: the decoder forward of native/engine.cc on one GPU. The residual stream stays
// in f32 (cuBLAS adds each layer's o_proj and down_proj output into it), GEMM inputs are bf16.
// Multi-token sequences attend through two batched GEMMs and a masked softmax; single tokens
// (decodes) through the paged decode kernel. Decode-only steps of up to cudaGraphMaxBs sequences
// replay a CUDA graph captured once per batch size. As one rank of a tensor-parallel group it
// holds its heads, MLP features and vocabulary rows (collective.h carries the sums and gathers),
// and rank 0 samples. Here: its construction, buffers and factory; backend_impl.h says where the
// rest is.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "comm.h"
#include "cpu/ops.h"
#include "cuda/backend_impl.h"
#include "cuda/collective.h"
#include "cuda/device.h"
#include "cuda/gemm.h"
#include "cuda/lora_fused.h"
#include "cuda/lora_pool.h"
#include "cuda/weights.h"

namespace troupe {
namespace cuda_engine {

namespace {

// An item shrink block shape from the environment variable var ({} where it is unset): W,S with
// the kernels instantiated for rows of up to 8,192 features (o's and gate/up's).
cuda::ItemShrinkShape parseItemShape(const char* var) {
  cuda::ItemShrinkShape shape;
  const char* env = std::getenv(var);
  if (!env) return shape;
  auto among = [](int v, std::initializer_list<int> ok) { return std::find(ok.begin(), ok.end(), v) != ok.end(); };
  char end = 0;
  if (std::sscanf(env, "%d,%d%c", &shape.outPerWarp, &shape.warpsPerOutput, &end) != 2 ||
      !among(shape.outPerWarp, {1, 2, 4}) || !among(shape.warpsPerOutput, {1, 2, 4, 8}))
    throw std::invalid_argument(std::string(var) +
                                " must be W,S with W (outputs a warp) 1, 2 or 4 and S (warps an output) 1, 2, 4 or 8, "
                                "not \"" +
                                env + "\"");
  return shape;
}

// A switch naming weight groups (TROUPE_LORA_IN_GEMM, TROUPE_CUDA_BF16_ROWS): 0, or names of
// `names` comma-separated, each once; their groups' bits.
unsigned parseGroups(const char* var, const std::string& text,
                     std::initializer_list<std::pair<const char*, cuda::WeightGroup>> names) {
  if (text == "0") return 0;
  unsigned bits = 0;
  bool ok = !text.empty();
  for (size_t at = 0; ok && at <= text.size();) {
    const size_t end = std::min(text.find(',', at), text.size());
    const std::string part = text.substr(at, end - at);
    unsigned bit = 0;
    for (const auto& [name, group] : names)
      if (part == name) bit = 1u << group;
    ok = bit != 0 && (bits & bit) == 0;
    bits |= bit;
    at = end + 1;
  }
  if (!ok) {
    std::string each, all;
    for (const auto& [name, group] : names) {
      each += std::string(", ") + name;
      all += (all.empty() ? "" : ",") + std::string(name);
    }
    throw std::invalid_argument(std::string(var) + ": expected 0" + each + " or " + all + "; got \"" + text + "\"");
  }
  return bits;
}

// A switch holding a whole number from least to most (TROUPE_CUDA_BF16_ROWS_TOKENS, TROUPE_CUDA_GEMV,
// TROUPE_CUDA_ATTENTION_SPLITS).
int parseCount(const char* var, const std::string& text, int least, int most) {
  char* end = nullptr;
  const long n = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || n < least || n > most) {
    throw std::invalid_argument(std::string(var) + ": expected a whole number from " + std::to_string(least) + " to " +
                                std::to_string(most) + "; got \"" + text + "\"");
  }
  return static_cast<int>(n);
}

// TROUPE_LORA_SHRINK_CHUNKS: row counts, descending, comma-separated; "0" for none.
std::vector<int> parseChunkSizes(const std::string& text) {
  if (text == "0") return {};
  std::vector<int> sizes;
  size_t at = 0;
  while (at <= text.size()) {
    const size_t end = std::min(text.find(',', at), text.size());
    const std::string part = text.substr(at, end - at);
    char* stop = nullptr;
    const long v = std::strtol(part.c_str(), &stop, 10);
    if (part.empty() || *stop != '\0' || v < 1 || v > 65536 || (!sizes.empty() && v >= sizes.back()))
      throw std::invalid_argument(
          "TROUPE_LORA_SHRINK_CHUNKS: expected 0 or row counts from 1 to 65536, descending and "
          "comma-separated (like 512,128,32); got \"" +
          text + "\"");
    sizes.push_back(static_cast<int>(v));
    at = end + 1;
  }
  return sizes;
}

}  // namespace

CudaBackend::CudaBackend(const ModelConfig& full, const std::vector<TensorRef>& tensors, const EngineOptions& o) try
    : tp_(o.tp), group_(joinGroup(o.tp)), c_(rankConfig(full, o.tp)), o_(o), device_(o.cudaDevice) {
  const ModelConfig& c = c_;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    throw std::invalid_argument("createEngine: device \"cuda\" requested but no CUDA device is visible");
  }
  if (device_ >= count) {
    throw std::invalid_argument("createEngine: CUDA device " + std::to_string(device_) + " requested, " +
                                std::to_string(count) + " visible");
  }
  if (c.numHeads % c.numKvHeads != 0) throw std::invalid_argument("numHeads must be a multiple of numKvHeads");
  // Slots of a lower rank than the max (lora_runs.h): a power of two of 8 or more that divides it, so
  // that runs of slots hold every rank and the kernels' 8-column pieces stay in one slot.
  // The max rank a power of two too: its place is then a whole number of runs of any span.
  const int slotRank = o.loraSlotRank > 0 ? o.loraSlotRank : o.maxLoraRank;
  auto powerOfTwo = [](int n) { return n > 0 && (n & (n - 1)) == 0; };
  if (o.loraSlotRank > 0 && o.loraSlotRank != o.maxLoraRank &&
      (slotRank < 8 || !powerOfTwo(slotRank) || !powerOfTwo(o.maxLoraRank) || o.maxLoraRank % slotRank != 0))
    throw std::invalid_argument("createEngine: loraSlotRank " + std::to_string(o.loraSlotRank) +
                                " must be a power of two of 8 or more that divides maxLoraRank (" +
                                std::to_string(o.maxLoraRank) + "), itself a power of two");
  headsPerKv_ = c.numHeads / c.numKvHeads;
  if (!cuda::decodeAttentionSupported(c.headDim, headsPerKv_)) {
    throw std::invalid_argument(
        "the CUDA backend supports head_dim 32, 64, 128 or 256 and 1 to 8 query heads per "
        "KV head (at most 4 at head_dim 256); this model has head_dim " +
        std::to_string(c.headDim) + " and " + std::to_string(headsPerKv_));
  }
  check(cudaSetDevice(device_), "cudaSetDevice");
  if (const char* env = std::getenv("TROUPE_CUDA_GEMV"))
    gemvRows_ = parseCount("TROUPE_CUDA_GEMV", env, 0, cuda::kGemvLimitRows);
  if (const char* env = std::getenv("TROUPE_CUDA_DECODE_GEMM")) decodeGemmEnabled_ = std::string(env) != "0";
  if (const char* env = std::getenv("TROUPE_CUDA_GATE_UP_GEMM")) {
    const std::string v = env;
    gateUpGemmOn_ = v != "0";
    gateUpSplits_ = v == "0" || v == "balanced" ? 0 : parseCount("TROUPE_CUDA_GATE_UP_GEMM", v, 1, 4);
  }
  if (const char* env = std::getenv("TROUPE_LORA_GATE_UP_SHRINK"))
    gateUpShrinkRows_ = parseCount("TROUPE_LORA_GATE_UP_SHRINK", env, 0, cuda::kDecodeGemmSpreadMaxRows);
  if (const char* env = std::getenv("TROUPE_CUDA_GATE_UP_PAIRED")) gateUpPaired_ = std::string(env) != "0";
  if (const char* env = std::getenv("TROUPE_CUDA_GEMM_TUNE")) gemmTune_ = std::string(env) != "0";
  if (const char* env = std::getenv("TROUPE_CUDA_GEMM_TUNE_AFTER"))
    gemmTuneAfter_ = parseCount("TROUPE_CUDA_GEMM_TUNE_AFTER", env, 0, 1 << 30);
  if (const char* env = std::getenv("TROUPE_LORA_FUSED_SPLIT_TOKENS")) fusedSplitMaxTokens_ = std::atoi(env);
  if (const char* env = std::getenv("TROUPE_CUDA_ATTENTION_SPLITS"))
    attnSplits_ = parseCount("TROUPE_CUDA_ATTENTION_SPLITS", env, 0, cuda::kMaxDecodeSplits);
  if (const char* env = std::getenv("TROUPE_LORA_ROW_SHRINK")) rowShrink_ = std::string(env) != "0";
  if (const char* env = std::getenv("TROUPE_LORA_ITEM_SHRINK")) {
    const std::string v(env);
    itemShrink_ = v == "0" ? ItemShrink::kNone : v == "copied" ? ItemShrink::kCopied : ItemShrink::kAll;
  }
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, device_), "cudaGetDeviceProperties");
  sms_ = prop.multiProcessorCount;
  itemPdl_ = prop.major >= 9;
  gemvEarly_ = prop.major >= 9;
  normPdl_ = prop.major >= 9;
  if (const char* env = std::getenv("TROUPE_CUDA_NORM_PDL")) normPdl_ = normPdl_ && std::string(env) != "0";
  if (const char* env = std::getenv("TROUPE_CUDA_NORM_AT_GEMM_START"))
    normAtGemmStart_ = normPdl_ && std::string(env) != "0";
  if (const char* env = std::getenv("TROUPE_CUDA_GEMV_EARLY")) gemvEarly_ = gemvEarly_ && std::string(env) != "0";
  if (const char* env = std::getenv("TROUPE_CUDA_BF16_ROWS"))
    bf16Rows_ =
        parseGroups("TROUPE_CUDA_BF16_ROWS", env, {{"qkv", cuda::kQkvWeight}, {"gate_up", cuda::kGateUpWeight}});
  if (const char* env = std::getenv("TROUPE_CUDA_BF16_ROWS_TOKENS"))
    bf16RowsTokens_ = parseCount("TROUPE_CUDA_BF16_ROWS_TOKENS", env, 1, 1 << 30);
  if (const char* env = std::getenv("TROUPE_CUDA_SAMPLE_FILTERS")) sampleFilters_ = std::string(env) != "0";
  if (const char* env = std::getenv("TROUPE_CUDA_SAMPLE_TABLE")) sampleTable_ = std::string(env) != "0";
  if (const char* env = std::getenv("TROUPE_LORA_SHRINK_GEMM")) shrinkAllSlots_ = std::string(env) != "0";
  if (const char* env = std::getenv("TROUPE_LORA_SHRINK_CHUNKS")) shrinkChunkSizes_ = parseChunkSizes(env);
  if (const char* env = std::getenv("TROUPE_LORA_ITEM_PDL")) itemPdl_ = itemPdl_ && std::string(env) != "0";
  if (const char* env = std::getenv("TROUPE_LORA_O_GEMM_EARLY")) oGemmEarly_ = std::string(env) != "0";
  if (const char* env = std::getenv("TROUPE_LORA_DELTA_IN_NORM")) deltaInNorm_ = std::string(env) != "0";
  if (const char* env = std::getenv("TROUPE_LORA_IN_GEMM"))
    loraInGemm_ = parseGroups("TROUPE_LORA_IN_GEMM", env,
                              {{"qkv", cuda::kQkvWeight}, {"o", cuda::kOWeight}, {"down", cuda::kDownWeight}});
  if (const char* env = std::getenv("TROUPE_LORA_GATE_UP_IN_O")) gateUpInO_ = std::string(env) != "0";
  if (const char* env = std::getenv("TROUPE_LORA_GATE_UP_PREFETCH")) gateUpPrefetch_ = std::string(env) != "0";
  if (const char* env = std::getenv("TROUPE_LORA_O_ROWS_EARLY")) oRowsEarly_ = std::string(env) != "0";
  oItemShape_ = parseItemShape("TROUPE_LORA_O_ITEM_SHAPE");
  gateUpItemShape_ = parseItemShape("TROUPE_LORA_GATE_UP_ITEM_SHAPE");
  if (const char* env = std::getenv("TROUPE_LORA_SLOT_BUCKETS")) slotBuckets_ = std::string(env) != "0";
  if (const char* env = std::getenv("TROUPE_LORA_TAIL"))
    loraTail_ = parseGroups("TROUPE_LORA_TAIL", env, {{"qkv", cuda::kQkvWeight}});
  if (const char* env = std::getenv("TROUPE_LORA_O_IN_ATTENTION"))
    oInAttention_ = std::string(env) == "0" ? OInAttention::kOff : OInAttention::kOn;
  if (const char* env = std::getenv("TROUPE_CUDA_ATTENTION_MMA"); !env || std::string(env) != "0") {
    attnMma_ = cuda::prepareDecodeAttentionMma(c.headDim, headsPerKv_);
    if (attnMma_) attnKernel_ = cuda::DecodeKernel::kMma;
    // The same kernel fed by tensor copies (attention_tma.cu) where it applies, unless
    // TROUPE_CUDA_ATTENTION_TMA=0 asks for the cp.async one; it starts while ropeKv runs unless
    // TROUPE_CUDA_ATTENTION_EARLY=0.
    const char* early = std::getenv("TROUPE_CUDA_ATTENTION_EARLY");
    if (const char* tma = std::getenv("TROUPE_CUDA_ATTENTION_TMA"); !tma || std::string(tma) != "0")
      if (const cuda::DecodeMmaLauncher fed = cuda::prepareDecodeAttentionTma(c.headDim, headsPerKv_, o.blockSize,
                                                                              !early || std::string(early) != "0")) {
        attnMma_ = fed;
        attnKernel_ = cuda::DecodeKernel::kTma;
      }
    prefillMma_ = cuda::preparePrefillAttentionMma(c.headDim, headsPerKv_);
    // On Hopper the prefill attention runs on warpgroup mmas fed by tensor copies
    // (attention_prefill_tma.cu) unless TROUPE_CUDA_PREFILL_TMA=0 asks for the mma.sync one.
    if (const char* tma = std::getenv("TROUPE_CUDA_PREFILL_TMA"); !tma || std::string(tma) != "0")
      if (const cuda::PrefillMmaLauncher fed = cuda::preparePrefillAttentionTma(c.headDim, headsPerKv_, o.blockSize))
        prefillMma_ = fed;
  }
  // On the H200, mma-overlap cut the LoRA decode overhead of 8 adapters by a fifth (rank 16) to a
  // third (rank 64 with sgmv) against fma, and prefill's at rank 64 by half
  // (bench/results/2026-11-29-h200-lora.json).
  const bool pooled = o.loraSlots > 0 && o.maxLoraRank > 0 && o.loraModuleMask != 0;
  // Split rows (lora_fused.h): TROUPE_LORA_SPLIT_ROWS=0 gives each group one shared row, gate_up
  // splits gate/up only, all splits q/k/v whatever their padding, for comparing.
  const char* splitEnv = std::getenv("TROUPE_LORA_SPLIT_ROWS");
  const std::string splitMode = splitEnv ? splitEnv : "";
  const cuda::SplitRows splitRows = splitMode == "0"         ? cuda::SplitRows::kNone
                                    : splitMode == "gate_up" ? cuda::SplitRows::kGateUp
                                    : splitMode == "all"     ? cuda::SplitRows::kAll
                                                             : cuda::SplitRows::kAuto;
  int pad[cuda::kNumWeightGroups] = {};
  bool split[cuda::kNumWeightGroups] = {};
  for (int g = 0; g < cuda::kNumWeightGroups && pooled; ++g) {
    const auto group = static_cast<cuda::WeightGroup>(g);
    split[g] = cuda::loraSplitRows(group, o.loraModuleMask, o.loraSlots, slotRank, splitRows);
    pad[g] = cuda::loraPadColumns(group, o.loraSlots, slotRank, o.loraModuleMask, split[g]);
  }
  // TROUPE_LORA_KERNEL names the kernels where the engine options leave the choice to the engine
  // (servers), for comparing them through HTTP.
  if (const char* env = std::getenv("TROUPE_LORA_KERNEL"); env && o_.loraKernel == LoraKernel::kAuto) {
    o_.loraKernel = loraKernelNamed(env);
    if (o_.loraKernel == LoraKernel::kAuto)
      throw std::invalid_argument("TROUPE_LORA_KERNEL: expected " + loraKernelNameList() + "; got \"" + env + "\"");
  }
  if (o_.loraKernel == LoraKernel::kAuto) {
    // The fused kernel keeps B in the weights' padding columns, as many bytes as the others keep in
    // the pool, and its GEMMs read the slots up to the highest a step uses (the scheduler moves the
    // adapters that requests want to low slots). It was once left to pools of up to about 10 slots
    // of rank 64 (its GEMMs then read every slot). On an H200 at Llama-3.1-8B's shapes, a decode
    // step of 32 over 8 rank-64 adapters then took +22% to +23% over the base step with 32, 64 or
    // 128 slots against +93% to +97% with mma-overlap, and through HTTP (64 adapters over 32 slots)
    // 6.48 ms against 9.80 (bench/results/2026-12-04-h200-lora-fused-large-pools.json).
    o_.loraKernel = prop.major < 8 ? LoraKernel::kFma : LoraKernel::kFused;
  }
  if (o_.loraKernel != LoraKernel::kFma) {
    const bool pdl = o_.loraKernel == LoraKernel::kMmaPdl;
    if (prop.major < (pdl ? 9 : 8)) {
      throw std::invalid_argument(std::string("the tensor-core LoRA kernels") +
                                  (pdl ? " with programmatic dependent launch" : "") + " need compute capability " +
                                  (pdl ? "9.0" : "8.0") + "; " + prop.name + " has " + std::to_string(prop.major) +
                                  "." + std::to_string(prop.minor));
    }
  }
  // Only the fused layout's padding columns run on from slot to slot.
  if (pooled && slotRank != o.maxLoraRank && o_.loraKernel != LoraKernel::kFused)
    throw std::invalid_argument("createEngine: slots of a rank below maxLoraRank need the fused LoRA kernel");
  stream_ = cuda::createStream(cuda::StreamWork::kStep);
  // Only the fused kernel reads B from the weights' padding; the others keep it in the pool.
  if (o_.loraKernel != LoraKernel::kFused) std::fill(pad, pad + cuda::kNumWeightGroups, 0);
  // Tail rows (loraTail_): one GPU and the fused layout; q/k/v in one shared weight and nothing
  // (biases, per-head norms) between its GEMM and RoPE. The GEMM reads the step's slots' A rows
  // whether the batch uses them or not (the item shrink reads only the batch's), so the first slots
  // keep them while they add at most a sixteenth to q/k/v's rows (Llama-8B: 8 slots of rank 16, as
  // measured), and steps over more slots take the item shrink. A pool cut into slots of rank 16 or
  // less keeps them whatever its max rank, for the steps whose adapters each take one slot
  // (stepRank_).
  int tail[cuda::kNumWeightGroups] = {};
  shape_ = cuda::AttnShape{c.numHeads, c.numKvHeads, c.headDim, o.blockSize, c.slidingWindow};
  if (pooled && o_.loraKernel == LoraKernel::kFused && tp_.size == 1 && (loraTail_ >> cuda::kQkvWeight & 1u) &&
      !split[cuda::kQkvWeight] && !c.qkvBias && !c.qkNorm && cuda::ropeKvLoraSupported(shape_, slotRank)) {
    const int perSlot = cuda::heldInGroup(cuda::kQkvWeight, o.loraModuleMask) * slotRank;
    const int slots =
        perSlot > 0 ? std::min(o.loraSlots, (c.numHeads + 2 * c.numKvHeads) * c.headDim / (16 * perSlot)) : 0;
    tail[cuda::kQkvWeight] = slots * perSlot;
  }
  w_ = std::make_unique<cuda::GpuWeights>(c, tensors, stream_, tp_.vocabCount, tp_.vocabPart, pad, split, tail);
  gemm_ = std::make_unique<cuda::Gemm>(stream_);
  if (decodeGemmEnabled_ && cuda::DecodeGemm::available()) decodeGemm_ = std::make_unique<cuda::DecodeGemm>(sms_);
  if (gateUpGemmOn_ && cuda::GateUpGemm::available()) {
    gateUpGemm_ = std::make_unique<cuda::GateUpGemm>(sms_);
    gateUpGemm_->reserve(c.intermediateSize);
  }
  qDim_ = c.numHeads * c.headDim;
  kvDim_ = c.numKvHeads * c.headDim;

  const Rope rope(c);
  invFreq_.ensure(rope.invFreq().size());
  check(cudaMemcpy(invFreq_.get(), rope.invFreq().data(), rope.invFreq().size() * 4, cudaMemcpyHostToDevice), "upload");

  if (pooled) {
    // Where o's and down's decode GEMM may take their LoRA (loraGemmArgs: one GPU, the step's slots'
    // A rows in its shrink tiles), the norm after it adds their deltas from a transposed copy of B.
    // Only steps whose slots lie in the first kDecodeGemmLoraMaxRows / slot rank can (slot buckets),
    // so only those slots keep the copy; steps of a rank (stepRank_) the norm does not take leave
    // the deltas to the GEMM or the item shrink (loraGemmArgs). With every slot required to, pools
    // of more than 8 rank-16 slots kept none, and their GEMMs added the deltas themselves: a decode
    // step of 32 rows over 8 rank-16 adapters in the first 8 of 128 slots took +15.5% over the base
    // step that way, +11.0% with the norms (H200, Llama-8B's shapes;
    // bench/results/2026-12-04-h200-lora-low-slots-transposed.json).
    int transposedSlots[kNumLoraModules] = {};
    const int lowSlots = slotRank > 0 ? cuda::kDecodeGemmLoraMaxRows / slotRank : 0;
    if (deltaInNorm_ && decodeGemm_ && tp_.size == 1 && o_.loraKernel == LoraKernel::kFused && lowSlots > 0 &&
        cuda::rmsnormDeltaSupported(c.hiddenSize, slotRank)) {
      if (loraInGemm_ >> cuda::kOWeight & 1u) transposedSlots[kO] = lowSlots;
      if (loraInGemm_ >> cuda::kDownWeight & 1u) transposedSlots[kDown] = lowSlots;
    }
    // RoPE after a GEMM with tail rows reads its group's B transposed, for the slots the rows hold.
    for (int m = 0; m < kNumLoraModules; ++m) {
      const cuda::WeightGroup g = cuda::weightGroupOf(m);
      const int perSlot = cuda::heldInGroup(g, o.loraModuleMask) * slotRank;
      if (w_->tail[g] > 0 && perSlot > 0) transposedSlots[m] = w_->tail[g] / perSlot;
    }
    lora_ = std::make_unique<cuda::GpuLoraPool>(c, o.loraSlots, o.maxLoraRank, o.loraModuleMask, *w_, transposedSlots,
                                                slotRank);
    // Gate's and up's outputs together within what the GEMM's parts hold (keepNormShrink: every
    // slot keeping o's transposed B).
    if (gateUpInO_ && lora_->bTransposed(0, kO) && 2 * o.maxLoraRank <= cuda::kNormShrinkMaxOutputs) {
      std::vector<const float*> normW;
      for (int l = 0; l < c.numLayers; ++l) normW.push_back(w_->layers[l].postNorm);
      normShrinkKept_ = lora_->keepNormShrink(normW);
      if (normShrinkKept_)
        normShrinkParts_.ensure(static_cast<size_t>(normShrinkTiles()) * cuda::kDecodeGemmMaxRows *
                                cuda::kNormShrinkMaxOutputs);
    }
    loraPieces_ = cuda::loraKPieces(std::max({c.hiddenSize, c.numHeads * c.headDim, c.intermediateSize}));
    if (o_.loraKernel == LoraKernel::kFused) {
      cuda::prepareRowShrink(std::max({c.hiddenSize, c.numHeads * c.headDim, c.intermediateSize}));
    }
    if (o_.loraKernel == LoraKernel::kMmaOverlap || o_.loraKernel == LoraKernel::kFused) {
      loraStream_ = cuda::createStream(cuda::StreamWork::kStep);
      check(cudaEventCreateWithFlags(&loraFork_, cudaEventDisableTiming), "cudaEventCreate");
      check(cudaEventCreateWithFlags(&loraJoin_, cudaEventDisableTiming), "cudaEventCreate");
    }
  }
  // Activations for a typical step first, so the cache sizing below sees them.
  ensureActivations(512, 256, cuda::kMaxDecodeSplits, 256);
  const size_t perBlock = static_cast<size_t>(c.numLayers) * c.numKvHeads * o.blockSize * c.headDim * 2 * 2;
  // Every rank's GPU, gathered once all ranks have placed their weights, pool and activations, so
  // the free memory measured below is what the cache can have.
  const std::vector<int> devices = cuda::gatherDevices(*group_, tp_.rank, device_);
  const int sharing = static_cast<int>(std::count(devices.begin(), devices.end(), device_));
  comm_ = cuda::makeDeviceComm(group_, tp_.rank, devices, o.customAllReduce);
  int64_t blocks = o.kvBlocks;
  if (blocks == 0) {
    size_t free = 0, total = 0;
    check(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
    blocks = static_cast<int64_t>(
        std::min<size_t>(static_cast<size_t>(free * o.memFractionStatic) / sharing / perBlock, 1u << 30));
  }
  // One block table serves every rank, so all take the smallest cache.
  blocks = group_->allReduceMin(tp_.rank, blocks);
  if (blocks < 1) throw std::runtime_error("no GPU memory is left for the KV cache after the weights");
  layerStride_ = static_cast<size_t>(blocks) * c.numKvHeads * o.blockSize * c.headDim;
  void* k = nullptr;
  void* v = nullptr;
  const size_t cacheBytes = layerStride_ * c.numLayers * 2;
  if (cudaMalloc(&k, cacheBytes) != cudaSuccess || cudaMalloc(&v, cacheBytes) != cudaSuccess) {
    cudaGetLastError();
    if (k) cudaFree(k);
    throw std::runtime_error("CUDA out of memory allocating a KV cache of " + std::to_string(blocks) + " blocks (" +
                             std::to_string(2 * cacheBytes >> 20) + " MiB)");
  }
  kCache_ = static_cast<bf16_t*>(k);
  vCache_ = static_cast<bf16_t*>(v);
  noSlots_.assign(o.loraSlots, false);

  info_.device = "cuda";
  info_.deviceName = std::string(prop.name) + " (" + std::to_string(prop.totalGlobalMem >> 30) + " GiB)";
  info_.kvBlocks = blocks;
  info_.blockSize = o.blockSize;
  info_.loraSlots = o.loraSlots;
  info_.maxLoraRank = o.maxLoraRank;
  info_.loraSlotRank = slotRank;
  info_.collective = comm_->name();
  info_.loraKernel = lora_ ? kLoraKernelNames[static_cast<int>(o_.loraKernel)] : "none";
} catch (const std::exception& e) {
  releaseGroup(o.tp, std::string("failed to start: ") + e.what());
  throw;
}

CudaBackend::~CudaBackend() {
  releaseGroup(tp_, "was shut down");
  cudaSetDevice(device_);
  if (stream_) cudaStreamSynchronize(stream_);
  if (loraStream_) {
    cudaStreamSynchronize(loraStream_);
    cudaStreamDestroy(loraStream_);
    cudaEventDestroy(loraFork_);
    cudaEventDestroy(loraJoin_);
  }
  for (auto& [bs, g] : graphs_)
    if (g.exec) cudaGraphExecDestroy(g.exec);
  if (kCache_) cudaFree(kCache_);
  if (vCache_) cudaFree(vCache_);
  comm_.reset();
  gemm_.reset();
  decodeGemm_.reset();
  gateUpGemm_.reset();
  w_.reset();
  if (stream_) cudaStreamDestroy(stream_);
}

void CudaBackend::ensureActivations(int T, int decodes, int splits, int sampled) {
  const size_t t = static_cast<size_t>(std::max(T, 1));
  bool moved = false;
  moved |= hidden_.ensure(t * c_.hiddenSize);
  moved |= xn_.ensure(t * c_.hiddenSize);
  moved |= qkv_.ensure(t * (qDim_ + 2 * kvDim_ + w_->tail[cuda::kQkvWeight]));
  moved |= q_.ensure(t * qDim_);
  moved |= attn_.ensure(t * qDim_);
  moved |= gateUp_.ensure(t * 2 * c_.intermediateSize);
  moved |= act_.ensure(t * c_.intermediateSize);
  const size_t d = static_cast<size_t>(std::max(decodes, 1));
  moved |= partial_.ensure(d * c_.numHeads * splits * c_.headDim);
  moved |= partialMl_.ensure(d * c_.numHeads * splits * 2);
  const size_t s = static_cast<size_t>(std::max(sampled, 1));
  moved |= xs_.ensure(s * c_.hiddenSize);
  moved |= logits_.ensure(s * c_.vocabSize);
  if (tp_.size > 1) {
    moved |= vocabPart_.ensure(s * tp_.vocabPart);
    moved |= vocabParts_.ensure(s * tp_.vocabPart * tp_.size);
  }
  // Room for loraPieces_ slabs of each token's own shrink outputs, or for every slot's (the GEMM shrink).
  if (lora_)
    moved |= loraMid_.ensure(t * cuda::kMaxLoraSlices * lora_->maxRank() * std::max(loraPieces_, lora_->slots()));
  if (lora_ && o_.loraKernel == LoraKernel::kFused) {
    size_t perToken = 0;  // a token's augmented rows, for the group that has the most
    for (int g = 0; g < cuda::kNumWeightGroups; ++g)
      perToken = std::max(perToken, static_cast<size_t>(w_->ld[g]) * (w_->splitRows[g] ? cuda::kMaxLoraSlices : 1));
    moved |= xa_.ensure(t * perToken);
    xaTokens_ = xa_.size() / perToken;
    moved |= oPartial_.ensure(t * c_.numKvHeads * lora_->maxRank());
    // The decode attention's o shrink counts its blocks here; each count goes back to zero when the
    // last block of its token is done, so zero once, as allocated.
    if (oTickets_.ensure(t)) {
      check(cudaMemset(oTickets_.get(), 0, oTickets_.size() * 4), "cudaMemset");
      moved = true;
    }
    // The o item shrink's rows-ready count for its GEMM (oLateGemm), which sets it back to zero.
    if (oRowsReady_.ensure(2)) {
      check(cudaMemset(oRowsReady_.get(), 0, 2 * sizeof(unsigned)), "cudaMemset");
      moved = true;
    }
    if (moved) buildPiecePointers();
    // A chunk has a row at least, so a step has at most T of them. Only steps that no graph
    // captures read these pointer arrays, so their moving leaves the graphs as they are.
    chunkPtrs_.ensure(3 * t * cuda::kMaxLoraSlices);
  }
  if (moved) ++generation_;
}

}  // namespace cuda_engine

std::unique_ptr<Backend> makeCudaBackend(const ModelConfig& config, const std::vector<TensorRef>& tensors,
                                         const EngineOptions& options) {
  return std::make_unique<cuda_engine::CudaBackend>(config, tensors, options);
}

int cudaBackendDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

}  // namespace troupe
