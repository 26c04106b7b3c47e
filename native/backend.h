// The C++ side of the engine boundary (src/engine/types.ts). binding.cc converts JS values into
// these structs; a Backend (CPU now, CUDA from native/cuda/ later) does the math.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace troupe {

enum class DType { F32, F16, BF16 };

struct RopeScaling {
  double factor = 1;
  double lowFreqFactor = 1;
  double highFreqFactor = 4;
  double originalMaxPositionEmbeddings = 8192;
};

struct ModelConfig {
  std::string architecture;
  int hiddenSize = 0;
  int intermediateSize = 0;
  int numLayers = 0;
  int numHeads = 0;
  int numKvHeads = 0;
  int headDim = 0;
  int vocabSize = 0;
  double rmsNormEps = 1e-5;
  double ropeTheta = 10000;
  bool hasRopeScaling = false;
  RopeScaling ropeScaling;
  int maxPositionEmbeddings = 0;
  bool tieWordEmbeddings = false;
  // What sets a family apart from Llama (src/model/families.ts): biases on q/k/v (Qwen2), an
  // RMSNorm over each q and k head before RoPE (Qwen3), and a sliding window: a position attends
  // to at most this many positions, itself included (Mistral; 0 is unlimited).
  bool qkvBias = false;
  bool qkNorm = false;
  int slidingWindow = 0;
};

struct TensorRef {
  std::string name;
  std::string file;
  int64_t offset = 0;
  int64_t nbytes = 0;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  // Bytes between the starts of consecutive rows in the file; 0 when the rows are contiguous.
  // A tensor-parallel rank's band of columns of a row-parallel weight has the full row's pitch.
  int64_t rowPitch = 0;
};

// This engine's place in a tensor-parallel group (src/model/tensor-parallel.ts plans it): its
// rank, the group's size and id, and the heads, KV heads, MLP features and vocabulary rows it
// holds. vocabPart is every rank's row count before the last rank's remainder, so gathered
// logits line up. Size 1 holds everything.
struct TensorParallel {
  int rank = 0;
  int size = 1;
  std::string group;
  int numHeads = 0;
  int numKvHeads = 0;
  int intermediateSize = 0;
  int vocabStart = 0;
  int vocabCount = 0;
  int vocabPart = 0;
};

// Same order as LORA_MODULES in types.ts.
enum LoraModule { kQ = 0, kK, kV, kO, kGate, kUp, kDown, kNumLoraModules };
extern const char* const kLoraModuleNames[kNumLoraModules];

// How the CUDA backend runs the LoRA shrink/expand: CUDA-core FMA loops, or tensor-core mma.sync
// (compute capability 8.0), optionally launched with programmatic dependent launch (9.0) or with
// the shrink on a second stream beside the base projection; or kFused: the mma shrink, and the
// expand folded into the base projection's GEMM (cuda/lora_fused.h).
// kAuto: kFused where tensor cores run mma.sync (compute capability 8.0+), kFma below.
enum class LoraKernel { kAuto, kFma, kMma, kMmaPdl, kMmaOverlap, kFused, kNumLoraKernels };
// The engine option's names, by LoraKernel ("auto" is never given: it is the option left out).
extern const char* const kLoraKernelNames[static_cast<int>(LoraKernel::kNumLoraKernels)];
// The kernel a name gives (kAuto where none has it), and the names for a message that refuses one
// ("fma", "mma", ... or "fused").
LoraKernel loraKernelNamed(const std::string& name);
std::string loraKernelNameList();

struct EngineOptions {
  std::string device = "cpu";
  int blockSize = 16;
  int kvBlocks = 0;
  double memFractionStatic = 0.9;
  int loraSlots = 0;
  int maxLoraRank = 0;
  // Ranks per pool slot: an adapter takes loraSlotSpan(rank) consecutive slots (lora.h); 0 means
  // maxLoraRank, one slot an adapter.
  int loraSlotRank = 0;
  uint32_t loraModuleMask = 0;  // bit m set: the pool holds module m
  int threads = 0;
  int cudaGraphMaxBs = 0;
  // CUDA LoRA kernels: chunks of at most loraChunkSize tokens of one adapter (csgmv), or one
  // segment per sequence (sgmv). The CPU backend groups by slot either way.
  bool loraSgmv = false;
  int loraChunkSize = 16;
  LoraKernel loraKernel = LoraKernel::kAuto;
  TensorParallel tp;
  int cudaDevice = 0;  // which GPU this rank runs on
  // Tensor-parallel ranks on GPUs with peer access all-reduce small messages with troupe's
  // one-shot peer kernels rather than NCCL (--disable-custom-all-reduce turns this off).
  bool customAllReduce = true;
};

struct EngineInfo {
  std::string device;
  std::string deviceName;
  int kvBlocks = 0;
  int blockSize = 0;
  int loraSlots = 0;
  int maxLoraRank = 0;
  int loraSlotRank = 0;
  // How the tensor-parallel ranks exchange activations: "none" (one rank), "host" (through host
  // memory), "nccl", or "p2p+nccl" (small messages through peer-to-peer kernels).
  std::string collective = "none";
  // How LoRA deltas are computed: "none" (no LoRA pool), "cpu", or the CUDA backend's loraKernel
  // after its automatic choice ("fma", "mma", "mma-pdl", "mma-overlap" or "fused").
  std::string loraKernel = "none";
};

template <class T>
struct Span {
  const T* data = nullptr;
  size_t size = 0;
  const T& operator[](size_t i) const { return data[i]; }
};

// Sampling values, one entry per sequence: a step's rows (StepBatch), or the sequences a step
// gives sampling slots (SeqUpdate).
struct SamplingColumns {
  Span<float> temperature, topP, minP;
  Span<int32_t> topK;
  // Penalties (types.ts says how they apply): per sequence, plus each penalized sequence's prompt
  // then generated tokens at penaltyTokens[penaltyStarts[i], penaltyStarts[i + 1]).
  Span<float> frequencyPenalty, presencePenalty, repetitionPenalty;
  Span<int32_t> penaltyTokens, penaltyStarts, penaltyPromptLens;
  Span<uint32_t> seeds;
};

// Sequences' values stored in the engine's sampling slots (sequence_table.h): entry u fills
// slot slots[u].
struct SeqUpdate : SamplingColumns {
  Span<int32_t> slots;
};

// A resident row's penalty counts, kept by the engine as tokens arrive (sequence_table.h): its
// distinct tokens in the order first seen, how often each was generated (0: the prompt only), and
// the smallest and largest of them (so that a step checks them against the vocabulary at once).
struct CountedTokens {
  const int32_t* unique = nullptr;
  const int32_t* generated = nullptr;
  int32_t count = 0;
  int32_t minId = 0, maxId = 0;
};

// Views of the typed arrays of one StepBatch; they stay valid for the synchronous step call.
// The sampling columns and the block table are the rows' own, or (when seqSlots is set) views
// of the engine's per-sequence table (sequence_table.h), filled before the backend sees the batch.
struct StepBatch : SamplingColumns {
  Span<int32_t> tokens, positions, seqStarts, contextLens, blockTables, loraSlots;
  Span<uint8_t> sample;
  Span<uint32_t> draws;
  Span<int32_t> seqSlots;  // per row, in the resident form; empty otherwise
  SeqUpdate seqUpdate;
  // The resident form's block table: row i's blocks new since its slot's last step, at
  // blockAppends[blockAppendStarts[i], blockAppendStarts[i + 1]) (all of them after a fill).
  Span<int32_t> blockAppends, blockAppendStarts;
  // The resident form's penalty counts, a row each (none for rows without a penalty): views of the
  // engine's own, neither copied nor walked by a step; the backends read them instead of counting
  // penaltyTokens.
  Span<CountedTokens> penaltyCounts;
  bool resident = false;
  int maxBlocksPerSeq = 0;
  int topLogprobs = 0;
  bool returnLogits = false;
  size_t numSeqs() const { return contextLens.size; }
};

struct StepOutput {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  std::vector<int32_t> topIds;
  std::vector<float> topLogprobValues;
  std::vector<float> logits;  // numSeqs x vocab when returnLogits
  bool hasLogits = false;
  // Per sequence: why it got no token (its sampling values are malformed, or sampling it
  // threw); empty when it is fine. The other sequences' results stand. Filled by rank 0.
  std::vector<std::string> errors;

  // Before sampling: n sequences without a token (-1), topN empty alternatives each, no errors,
  // and no logits yet (the backend fills them when hasLogits).
  void reset(int n, int topN, bool returnLogits) {
    tokens.assign(n, -1);
    logprobs.assign(n, 0.0f);
    topIds.assign(static_cast<size_t>(n) * topN, -1);
    topLogprobValues.assign(static_cast<size_t>(n) * topN, 0.0f);
    hasLogits = returnLogits;
    logits.clear();
    errors.assign(n, std::string());
  }
};

// Host values of one LoRA factor: a rows x cols row-major tensor of dtype, of which a slot takes
// rows [row0, row0 + takeRows) and columns [col0, col0 + takeCols) (a tensor-parallel rank's
// slice; the whole tensor otherwise). `flat` marks values given without a shape (the
// Float32Arrays of loadLoraSlot): checkAdapter gives them the shape the slot expects.
struct FactorView {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0;
  int64_t row0 = 0, col0 = 0, takeRows = 0, takeCols = 0;
  bool flat = false;

  size_t values() const { return static_cast<size_t>(takeRows) * static_cast<size_t>(takeCols); }
  size_t elemBytes() const { return dtype == DType::F32 ? 4 : 2; }
  // Element (r, c) of the whole tensor.
  const uint8_t* at(int64_t r, int64_t c) const {
    return static_cast<const uint8_t*>(data) + (static_cast<size_t>(r) * cols + c) * elemBytes();
  }
};

struct AdapterModuleWeights {
  int layer = 0;
  LoraModule module = kQ;
  FactorView a;  // rank x in
  FactorView b;  // out x rank
};

struct AdapterWeights {
  int rank = 0;
  double scaling = 1;
  std::vector<AdapterModuleWeights> weights;
};

class SlotTable;

// One engine instance. step() calls are serialized by the caller (binding.cc holds a per-engine
// mutex). loadLoraSlot and clearLoraSlot may run on any thread, at the same time as a step and
// as each other: the engine's SlotTable orders them (a step waits only for the slots it uses).
// loadLoraSlot returns once the slot holds the values (on CUDA, once its copies are done), so
// the caller may free the host memory then.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual EngineInfo info() const = 0;
  virtual void step(const StepBatch& batch, StepOutput& out) = 0;
  virtual void loadLoraSlot(int slot, const AdapterWeights& adapter) = 0;
  virtual void clearLoraSlot(int slot) = 0;
  // Exchanges what slots a and b hold (either may be empty), so that an adapter a batch uses can
  // move into a low slot without a copy from host memory; like a fill, it waits for the steps
  // using either slot and returns once the exchange is done.
  virtual void swapLoraSlots(int a, int b) = 0;
  // The pool's slot states (tests hold writes through it); null without a LoRA pool.
  virtual SlotTable* loraSlotTable() = 0;
};

std::unique_ptr<Backend> makeCpuBackend(const ModelConfig& config, const std::vector<TensorRef>& tensors,
                                        const EngineOptions& options);

#ifdef TROUPE_CUDA_BACKEND
// Defined by the sources in native/cuda/.
std::unique_ptr<Backend> makeCudaBackend(const ModelConfig& config, const std::vector<TensorRef>& tensors,
                                         const EngineOptions& options);
int cudaBackendDeviceCount();
#endif

// Fills in a size-1 group and checks the rank's shard against the model; throws
// std::invalid_argument naming what does not fit.
void checkTensorParallel(const ModelConfig& config, TensorParallel& tp);

// Checks a batch's structure against the engine's shape; throws std::invalid_argument naming the
// problem. slotLoaded[s] says whether pool slot s holds an adapter. Sampling values are not
// checked here: they fail their own sequence only (samplingError).
void validateBatch(const StepBatch& batch, const ModelConfig& config, int kvBlocks, int blockSize,
                   const std::vector<bool>& slotLoaded);

// What is wrong with sequence i's sampling values (ranges, penalty token ids), or "" when
// nothing is. Needs a batch that passed validateBatch.
std::string samplingError(const StepBatch& batch, size_t i, int vocabSize);
// Sequence i's penalties as the sampler takes them: its tokens, and their counts when the batch
// carries the engine's (the resident form). Needs a batch that passed validateBatch.
struct Penalties;
Penalties penaltiesOf(const StepBatch& batch, size_t i);
// Sequence i's token, logprob and topN alternatives in `out`, drawn from its raw logits row with
// its sampling values and penalties; a failure goes to out.errors[i] instead (nothing throws).
void sampleSequence(const StepBatch& batch, size_t i, const float* logits, int vocabSize, int topN, StepOutput& out);
// The structure of n entries of sampling columns (lengths, penalty offsets); throws naming
// `where` ("batch", "batch.seqUpdate").
void validateColumns(const SamplingColumns& columns, size_t n, const std::string& where);

}  // namespace troupe
