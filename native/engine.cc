#include "engine.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <stdexcept>

#include "cpu/gemm.h"
#include "sampling.h"

namespace troupe {

namespace {

// Without an explicit size the CPU cache holds this many tokens, capped by a memory budget.
constexpr long long kDefaultCacheTokens = 32768;
constexpr long long kDefaultCacheBytes = 512ll << 20;

std::string cpuName() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  }
  return "unknown CPU";
}

}  // namespace

CpuBackend::CpuBackend(const ModelConfig& c, const std::vector<TensorRef>& tensors, const EngineOptions& o) try
    : tp_(o.tp),
      comm_(joinGroup(o.tp)),
      config_(rankConfig(c, o.tp)),
      options_(o),
      threads_(o.threads > 0 ? o.threads : omp_get_num_procs()),
      weights_(loadWeights(config_, tensors, o.tp.vocabCount)),
      rope_(c),
      lora_(config_, o.loraSlots, o.maxLoraRank, o.loraModuleMask, o.loraSlotRank) {
  long long blocks = o.kvBlocks;
  if (blocks == 0) {
    const long long perToken = 2ll * config_.numLayers * config_.numKvHeads * config_.headDim * sizeof(float);
    const long long tokens = std::min(kDefaultCacheTokens, kDefaultCacheBytes / perToken);
    blocks = std::max(1ll, tokens / o.blockSize);
  }
  // The scheduler keeps one block table for all ranks, so they all take the smallest cache.
  blocks = comm_->allReduceMin(tp_.rank, blocks);
  cache_.allocate(config_.numLayers, static_cast<int>(blocks), config_.numKvHeads, o.blockSize, config_.headDim);
} catch (const std::exception& e) {
  releaseGroup(o.tp, std::string("failed to start: ") + e.what());
  throw;
}

CpuBackend::~CpuBackend() { releaseGroup(tp_, "was shut down"); }

EngineInfo CpuBackend::info() const {
  EngineInfo i;
  i.device = "cpu";
  i.deviceName = cpuName() + " (" + std::to_string(threads_) + " threads)";
  i.kvBlocks = cache_.blocks;
  i.blockSize = cache_.blockSize;
  i.loraSlots = lora_.slots();
  i.maxLoraRank = options_.maxLoraRank;
  i.loraSlotRank = lora_.slotRank();
  i.collective = tp_.size > 1 ? "host" : "none";
  i.loraKernel = lora_.slots() > 0 ? "cpu" : "none";
  return i;
}

void CpuBackend::step(const StepBatch& b, StepOutput& out) {
  // The slots this batch uses stay as they are until it ends; fills of other slots go on.
  const SlotTable::Lease lease = lora_.table().acquire(b.loraSlots);
  // Every rank checks the same batch against the same slot states, so a bad batch fails on all
  // of them before any collective.
  validateBatch(b, config_, cache_.blocks, cache_.blockSize, lease.loaded());
  try {
    forward(b, out);
  } catch (const std::exception& e) {
    // The other ranks would wait for this one forever.
    releaseGroup(tp_, std::string("failed during a step: ") + e.what());
    throw;
  }
}

void CpuBackend::embed(const StepBatch& b, float* hidden) {
  const int h = config_.hiddenSize;
  for (size_t t = 0; t < b.tokens.size; ++t) {
    const int row = b.tokens[t] - tp_.vocabStart;
    float* dst = hidden + t * h;
    // Vocab-parallel: a token outside this rank's rows comes from another rank's sum.
    if (row >= 0 && row < tp_.vocabCount) {
      weights_.embed.rowToFloat(row, dst);
    } else {
      std::fill(dst, dst + h, 0.0f);
    }
  }
  comm_->allReduceSum(tp_.rank, hidden, b.tokens.size * h);
}

void CpuBackend::forward(const StepBatch& b, StepOutput& out) {
  const int n = static_cast<int>(b.numSeqs());
  const int tokens = static_cast<int>(b.tokens.size);
  const int h = config_.hiddenSize;

  std::vector<TokenPlace> places(tokens);
  std::map<int, std::vector<int>> bySlot;
  for (int i = 0; i < n; ++i) {
    for (int t = b.seqStarts[i]; t < b.seqStarts[i + 1]; ++t) {
      places[t] = TokenPlace{b.positions[t], b.blockTables.data + static_cast<size_t>(i) * b.maxBlocksPerSeq};
      if (b.loraSlots[i] >= 0) bySlot[b.loraSlots[i]].push_back(t);
    }
  }
  std::vector<SlotGroup> groups;
  for (auto& [slot, toks] : bySlot) groups.push_back(SlotGroup{slot, std::move(toks)});

  const int half = rope_.half();
  std::vector<std::vector<float>> cos(tokens, std::vector<float>(half)), sin(tokens, std::vector<float>(half));
  for (int t = 0; t < tokens; ++t) rope_.angles(b.positions[t], cos[t].data(), sin[t].data());

  std::vector<float> hidden(static_cast<size_t>(tokens) * h);
  embed(b, hidden.data());
  for (int l = 0; l < config_.numLayers; ++l) layer(l, hidden.data(), tokens, places, cos, sin, groups);
  sample(b, hidden.data(), out);
}

void CpuBackend::layer(int index, float* hidden, int tokens, const std::vector<TokenPlace>& places,
                       const std::vector<std::vector<float>>& cos, const std::vector<std::vector<float>>& sin,
                       const std::vector<SlotGroup>& groups) {
  const LayerWeights& w = weights_.layers[index];
  const int h = config_.hiddenSize;
  const int qDim = config_.numHeads * config_.headDim;
  const int kvDim = config_.numKvHeads * config_.headDim;
  const int inter = config_.intermediateSize;
  const float eps = static_cast<float>(config_.rmsNormEps);
  const size_t T = static_cast<size_t>(tokens);

  std::vector<float> xn(T * h), q(T * qDim), k(T * kvDim), v(T * kvDim), attn(T * qDim), proj(T * h);
  rmsnorm(hidden, w.inputNorm.data(), xn.data(), tokens, h, eps, threads_);
  gemm(w.q, xn.data(), tokens, h, q.data(), qDim, threads_);
  gemm(w.k, xn.data(), tokens, h, k.data(), kvDim, threads_);
  gemm(w.v, xn.data(), tokens, h, v.data(), kvDim, threads_);
  lora_.apply(index, kQ, xn.data(), h, q.data(), qDim, groups, threads_);
  lora_.apply(index, kK, xn.data(), h, k.data(), kvDim, groups, threads_);
  lora_.apply(index, kV, xn.data(), h, v.data(), kvDim, groups, threads_);
  if (config_.qkvBias) {
    addBias(q.data(), w.qBias.data(), tokens, qDim);
    addBias(k.data(), w.kBias.data(), tokens, kvDim);
    addBias(v.data(), w.vBias.data(), tokens, kvDim);
  }
  if (config_.qkNorm) {
    // Every head of every token is one row of headDim values (rmsnorm may work in place).
    rmsnorm(q.data(), w.qNorm.data(), q.data(), tokens * config_.numHeads, config_.headDim, eps, threads_);
    rmsnorm(k.data(), w.kNorm.data(), k.data(), tokens * config_.numKvHeads, config_.headDim, eps, threads_);
  }
  for (int t = 0; t < tokens; ++t) {
    rope_.apply(q.data() + t * qDim, config_.numHeads, cos[t].data(), sin[t].data());
    rope_.apply(k.data() + t * kvDim, config_.numKvHeads, cos[t].data(), sin[t].data());
  }
  writeKv(cache_, index, k.data(), v.data(), kvDim, places);
  pagedAttention(cache_, index, q.data(), qDim, attn.data(), qDim, places, config_.numHeads, config_.slidingWindow,
                 threads_);
  gemm(w.o, attn.data(), tokens, qDim, proj.data(), h, threads_);
  lora_.apply(index, kO, attn.data(), qDim, proj.data(), h, groups, threads_);
  // Row-parallel: each rank's product covers its heads only. Its LoRA shrink saw those heads'
  // input columns; the expand is linear, so summing the expanded partials here sums the
  // rank-r shrink outputs as well.
  comm_->allReduceSum(tp_.rank, proj.data(), T * h);
  for (size_t i = 0; i < T * h; ++i) hidden[i] += proj[i];

  std::vector<float> gate(T * inter), up(T * inter), act(T * inter);
  rmsnorm(hidden, w.postNorm.data(), xn.data(), tokens, h, eps, threads_);
  gemm(w.gate, xn.data(), tokens, h, gate.data(), inter, threads_);
  gemm(w.up, xn.data(), tokens, h, up.data(), inter, threads_);
  lora_.apply(index, kGate, xn.data(), h, gate.data(), inter, groups, threads_);
  lora_.apply(index, kUp, xn.data(), h, up.data(), inter, groups, threads_);
  siluAndMul(gate.data(), inter, up.data(), inter, act.data(), tokens, inter, threads_);
  gemm(w.down, act.data(), tokens, inter, proj.data(), h, threads_);
  lora_.apply(index, kDown, act.data(), inter, proj.data(), h, groups, threads_);
  comm_->allReduceSum(tp_.rank, proj.data(), T * h);
  for (size_t i = 0; i < T * h; ++i) hidden[i] += proj[i];
}

void CpuBackend::sample(const StepBatch& b, const float* hidden, StepOutput& out) {
  const int n = static_cast<int>(b.numSeqs());
  const int h = config_.hiddenSize;
  const int vocab = config_.vocabSize;
  const int topN = std::min(b.topLogprobs, vocab);  // asking for more than the vocabulary gets all of it
  out.reset(n, topN, b.returnLogits);

  // Only the last position of each sampled sequence goes through the final norm and lm_head.
  std::vector<int> seqs;
  for (int i = 0; i < n; ++i)
    if (b.sample[i]) seqs.push_back(i);
  const int s = static_cast<int>(seqs.size());
  std::vector<float> last(static_cast<size_t>(s) * h), normed(static_cast<size_t>(s) * h);
  for (int j = 0; j < s; ++j) {
    const int t = b.seqStarts[seqs[j] + 1] - 1;
    std::copy(hidden + static_cast<size_t>(t) * h, hidden + static_cast<size_t>(t + 1) * h,
              last.begin() + static_cast<size_t>(j) * h);
  }
  rmsnorm(last.data(), weights_.finalNorm.data(), normed.data(), s, h, static_cast<float>(config_.rmsNormEps),
          threads_);
  std::vector<float> part(static_cast<size_t>(s) * tp_.vocabCount);
  gemm(weights_.head(), normed.data(), s, h, part.data(), tp_.vocabCount, threads_);
  const std::vector<float> logits = gatherLogits(std::move(part), s);
  if (tp_.rank != 0) return;  // rank 0 samples for the group

#pragma omp parallel for schedule(dynamic, 1) num_threads(threads_) if (threads_ > 1 && s > 1)
  for (int j = 0; j < s; ++j) {
    const int i = seqs[j];
    // One sequence's bad values or failure is its own: nothing may leave the parallel region.
    try {
      const std::string bad = samplingError(b, i, vocab);
      if (!bad.empty()) {
        out.errors[i] = "invalid sampling values: " + bad;
        continue;
      }
    } catch (const std::exception& e) {
      out.errors[i] = std::string("sampling failed: ") + e.what();
      continue;
    }
    sampleSequence(b, i, logits.data() + static_cast<size_t>(j) * vocab, vocab, topN, out);
  }
  if (b.returnLogits) {
    out.logits.assign(static_cast<size_t>(n) * vocab, std::nanf(""));
    for (int j = 0; j < s; ++j)
      std::copy(logits.begin() + static_cast<size_t>(j) * vocab, logits.begin() + static_cast<size_t>(j + 1) * vocab,
                out.logits.begin() + static_cast<size_t>(seqs[j]) * vocab);
  }
}

std::vector<float> CpuBackend::gatherLogits(std::vector<float> local, int rows) {
  if (tp_.size == 1) return local;
  const int V = config_.vocabSize, part = tp_.vocabPart, count = tp_.vocabCount;
  std::vector<float> padded(static_cast<size_t>(rows) * part, 0.0f), all(static_cast<size_t>(tp_.size) * rows * part);
  for (int j = 0; j < rows; ++j)
    std::copy(local.begin() + static_cast<size_t>(j) * count, local.begin() + static_cast<size_t>(j + 1) * count,
              padded.begin() + static_cast<size_t>(j) * part);
  comm_->allGather(tp_.rank, padded.data(), padded.size(), all.data());
  std::vector<float> logits(static_cast<size_t>(rows) * V);
  for (int r = 0; r < tp_.size; ++r) {
    const int start = r * part, len = std::max(0, std::min(part, V - start));
    for (int j = 0; j < rows; ++j) {
      const float* src = all.data() + (static_cast<size_t>(r) * rows + j) * part;
      std::copy(src, src + len, logits.begin() + static_cast<size_t>(j) * V + start);
    }
  }
  return logits;
}

std::unique_ptr<Backend> makeCpuBackend(const ModelConfig& config, const std::vector<TensorRef>& tensors,
                                        const EngineOptions& options) {
  return std::make_unique<CpuBackend>(config, tensors, options);
}

}  // namespace troupe
