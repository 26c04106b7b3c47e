// Launchers for the CUDA backend's kernels. Plain C++ types only (bf16 values travel as
// uint16_t), so host code compiled by the C++ compiler can include this header.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace troupe {
namespace cuda {

using bf16_t = uint16_t;

// Where the step's tokens live: per token its position and sequence; per sequence a row of
// the block table (pitch entries). Layouts: the KV cache of one layer is
// [block][kvHead][row in block][headDim]; q is [kvHead][token][group][headDim], so the query
// heads that share a KV head are adjacent rows for the prefill GEMMs.
struct TokenMap {
  const int32_t* positions;
  const int32_t* tokenSeq;
  const int32_t* blockTables;
  int pitch;
  int tokens;
};

// window > 0: a position attends to at most the last `window` positions, itself included
// (transformers' sliding mask); 0 attends to the whole prefix.
struct AttnShape {
  int heads, kvHeads, headDim, blockSize, window;
};

// src holds n values of dtype (0 = F32, 1 = F16, 2 = BF16).
void convertToBf16(const void* src, int dtype, bf16_t* dst, size_t n, cudaStream_t s);
void convertToF32(const void* src, int dtype, float* dst, size_t n, cudaStream_t s);

// hidden[t] = table[tokens[t] - vocabStart], or zeros when the token is not among this rank's
// vocabCount rows (vocab-parallel: the all-reduce that follows fills it in).
void embed(const bf16_t* table, const int32_t* tokens, float* hidden, int T, int h, int vocabStart, int vocabCount,
           cudaStream_t s);

// logits[r][j] = parts[j / part][r][j % part] for j < V: the lm_head outputs of all ranks, as
// all-gathered rank-major, laid out row by row.
void joinVocab(const float* parts, int rows, int part, float* logits, int V, cudaStream_t s);

// y[r] = bf16(w * x[rows ? rows[r] : r] / rms) for r < m; row r of y starts at y + r * ldy (h when 0).
// pdl: launched so that it may start while the kernel before it drains (compute capability 9.0,
// pdl.cuh); it loads w meanwhile and reads x once that kernel has completed.
void rmsnorm(const float* x, const int32_t* rows, const float* w, bf16_t* y, int m, int h, float eps, cudaStream_t s,
             int ldy = 0, bool pdl = false);

// The family-specific steps between the q/k/v projection and RoPE, in place on qkv (f32 rows
// [q | k | v], T rows): adds bias ([q | k | v], Qwen2) when given, then RMSNorm over each q head
// with qNorm and each k head with kNorm (headDim weights each, Qwen3) when given.
void qkvBiasNorm(float* qkv, const float* bias, const float* qNorm, const float* kNorm, int T, const AttnShape& a,
                 float eps, cudaStream_t s);

// Rotates q and k of qkv (f32 rows [q | k | v], or bf16 where the q/k/v GEMM wrote bf16) by each
// token's position, writes q (bf16, layout above) and stores k and v into the layer's cache.
void ropeKv(const float* qkv, const float* invFreq, const TokenMap& map, const AttnShape& a, bf16_t* q, bf16_t* kCache,
            bf16_t* vCache, cudaStream_t s);
void ropeKv(const bf16_t* qkv, const float* invFreq, const TokenMap& map, const AttnShape& a, bf16_t* q, bf16_t* kCache,
            bf16_t* vCache, cudaStream_t s);

// The o projection's LoRA shrink, taken by the tensor-core decode attention when it writes the
// final output itself (one split): out is then token t's augmented row of the fused layout at xa +
// t ld, its first `in` columns the attention's output and the `pad` after them the LoRA columns
// (slot k's maxRank from in + k maxRank), which the kernel writes: the token's scaled shrink
// outputs under its slot's, zero under every other (lora_o_epilogue.cuh). Off while a is null.
struct OLoraEpilogue {
  const bf16_t* a = nullptr;  // o's A factors: slot k's [slotRank][in] at a + k aSlotStride
  size_t aSlotStride = 0;
  int maxRank = 0, in = 0;
  // The pool's slots and their rank (0: maxRank): an adapter's rows and columns run on from its
  // slot's (lora_runs.h), as far as the pool's last slot.
  int slots = 0, slotRank = 0;
  const int32_t* rowSlot = nullptr;  // each token's slot, -1 for the base model
  const int32_t* ranks = nullptr;    // slot k's rank for o at ranks[k rankPitch + module]
  int rankPitch = 0, module = 0;
  const float* scaling = nullptr;
  bf16_t* xa = nullptr;
  int ld = 0, pad = 0;
  float* partial = nullptr;    // [tokens][kvHeads][maxRank]: each block's partial sums
  int32_t* tickets = nullptr;  // [tokens], zero between launches
};

// Attention of single tokens (decodes) over their sequence's cache, split over `splits` parts of
// the context, then combined into out ([token][head][headDim], bf16). idx lists the tokens.
// mma: the tensor-core kernel prepareDecodeAttentionMma returned, or nullptr for the CUDA-core one.
// With out (one split only) the kernel writes the final output and no combine is needed.
using DecodeMmaLauncher = void (*)(const bf16_t* q, const bf16_t* k, const bf16_t* v, const int32_t* idx, int count,
                                   const TokenMap& map, const AttnShape& a, int splits, float scale, float* partial,
                                   float* ml, bf16_t* out, const OLoraEpilogue& epi, cudaStream_t s);
bool decodeAttentionSupported(int headDim, int group);
// Which decode attention kernel a backend runs: CUDA cores, tensor cores fed by cp.async
// (attention_mma.cu) or by tensor copies (attention_tma.cu).
enum class DecodeKernel { kCudaCore, kMma, kTma };
// How many splits a step of `decodes` decode tokens gives each token's context, on a GPU of `sms`
// multiprocessors, the longest context being `longestContext` keys.
// The kernels split each context by its own length on the device, so a captured graph stays valid
// for any contexts that give the same count (graphs are kept per count).
constexpr int kMaxDecodeSplits = 32;
constexpr int kMmaKeysPerSplit = 768;     // about the keys a split, once the batch fills the SMs
constexpr int kMmaMinKeysPerSplit = 128;  // and before (two of the kernel's tiles)
constexpr int kTmaBlocksPerSm = 2;        // the tensor-copy kernel's blocks resident on an SM
constexpr int kTmaShortContext = 1024;    // up to which its splits aim at a block an SM, not two
int decodeAttentionSplits(int decodes, int kvHeads, int sms, DecodeKernel kernel, int longestContext);
// With epi set (epi.a), the o projection's LoRA columns are taken too where the tensor-core kernel
// runs one split, and out is ignored for epi.xa; returns whether they were.
bool decodeAttention(const bf16_t* q, const bf16_t* kCache, const bf16_t* vCache, const int32_t* idx, int count,
                     const TokenMap& map, const AttnShape& a, int splits, float* partial, float* partialMl, bf16_t* out,
                     cudaStream_t s, DecodeMmaLauncher mma, const OLoraEpilogue& epi = {});
// The tensor-core decode attention (attention_mma.cu) for this head_dim and query group on the
// current device, its shared-memory limit raised (call it outside any graph capture), or nullptr
// where it does not apply: compute capability below 8.0, head_dim other than 64 or 128, more than 8
// query heads per KV head.
DecodeMmaLauncher prepareDecodeAttentionMma(int headDim, int group);
// The same attention with the cache's tiles brought by tensor copies (attention_tma.cu): sm_90a,
// head_dim 64 or 128, a cache block size that is a power of two of at least 8; nullptr elsewhere.
// early: launched to start while ropeKv, which must be the kernel just before it, still runs (it
// copies the keys before each token's own until then).
DecodeMmaLauncher prepareDecodeAttentionTma(int headDim, int group, int blockSize, bool early);

// One block of the prefill attention: kPrefillTileRows query rows (rows are (token, query head of
// the group) pairs) of one sequence's chunk, tokens [t0, t0 + count) of the step, from row `row` on.
struct PrefillTile {
  int32_t t0, count, row;
};
constexpr int kPrefillTileRows = 128;
// A step's prefill chunks (each: first token in the step, token count, position of its first
// token) as tiles, the ones whose last row sees the most keys first: they run longest, and the
// short ones then fill the tail of the grid.
struct PrefillChunk {
  int t0, count, firstPos;
};
std::vector<PrefillTile> prefillAttentionTiles(const std::vector<PrefillChunk>& chunks, int group);

// Causal attention of every prefill chunk of a step in one launch, one block per tile and KV head
// (tiles in device memory, from prefillAttentionTiles); each chunk's keys are already in the cache
// and its positions consecutive. On tensor cores without materializing the scores
// (attention_prefill.cu); out as decodeAttention's. Prepared as the decode kernel is, for the same
// shapes.
using PrefillMmaLauncher = void (*)(const bf16_t* q, const bf16_t* kCache, const bf16_t* vCache, const TokenMap& map,
                                    const AttnShape& a, const PrefillTile* tiles, int numTiles, float scale,
                                    bf16_t* out, cudaStream_t s);
PrefillMmaLauncher preparePrefillAttentionMma(int headDim, int group);
// The same attention on warpgroup mmas with the cache's tiles brought by tensor copies
// (attention_prefill_tma.cu): sm_90a, head_dim 64 or 128, a cache block size that is a power of
// two of at least 8; nullptr elsewhere.
PrefillMmaLauncher preparePrefillAttentionTma(int headDim, int group, int blockSize);

// Copies positions [0, keys) of sequence seq from the cache to kOut, vOut ([kvHead][keys][headDim]).
void gatherKv(const bf16_t* kCache, const bf16_t* vCache, const TokenMap& map, int seq, int keys, const AttnShape& a,
              bf16_t* kOut, bf16_t* vOut, cudaStream_t s);
// scores: [kvHead][rows][keys] with rows = tokens * group, already scaled; row (t, j) sees keys
// [0, firstPos + t], or with window > 0 the last `window` of them. Writes the softmax to probs
// (bf16, zero where masked).
void causalSoftmax(const float* scores, bf16_t* probs, int kvHeads, int tokens, int group, int keys, int firstPos,
                   int window, cudaStream_t s);
// o: [kvHead][tokens * group][headDim] -> out rows [firstToken + t][head][headDim].
void scatterHeads(const bf16_t* o, bf16_t* out, int tokens, int firstToken, const AttnShape& a, cudaStream_t s);

// Y[m][n] = X[m] . W[n] (+ Y[m][n] when accumulating) for m < M, n < N over K features, with W's
// rows ldw and X's ldx elements apart (bf16), Y [M][N] f32: the decode-step projection when only a
// few tokens run (gemvSupported says when: 16-byte pieces throughout).
constexpr int kGemvLimitRows = 4;
// The most a decode step gives it. On an H200 at Llama-8B's shapes, ms a step on the GEMV against
// cuBLAS and the decode GEMM: 3 tokens 4.44-4.63 against 4.51-4.84 over seven rounds; 4 tokens
// 4.79-4.81 against 4.71 (bench/results/2026-12-02-h200-gemv-forms.json).
constexpr int kGemvMaxRows = 3;
bool gemvSupported(int M, int K, const bf16_t* W, int ldw, const bf16_t* X, int ldx);
// early: launched so that it may start while the kernel before it runs (compute capability 9.0,
// pdl.cuh), loading its first weights meanwhile.
void gemv(const bf16_t* W, int ldw, const bf16_t* X, int ldx, float* Y, int M, int N, int K, bool accumulate,
          cudaStream_t s, bool early = false);

// act[t][i] = bf16(silu(gu[t][i]) * gu[t][inter + i]); row t of act starts at act + t * ldAct (inter when 0).
void siluMul(const float* gu, bf16_t* act, int T, int inter, cudaStream_t s, int ldAct = 0);
// The same from bf16 rows of gate then up (a step whose gate/up GEMM wrote bf16, as transformers'
// Linear layers do; backend_step.cc).
void siluMul(const bf16_t* gu, bf16_t* act, int T, int inter, cudaStream_t s, int ldAct = 0);

// Per sampled row, after the lm_head: log-softmax statistics, the top-N, penalties, then the token.
// kFiltered: a draw under top-k, top-p and min-p (sample_filter.cuh); kHost: the row is left to
// the host.
enum SampleMode : int32_t { kGreedy = 0, kSample = 1, kHost = 2, kFiltered = 3 };
struct SampleRow {
  float temperature = 1;
  float u = 0;  // the uniform draw for (seed, draws)
  int32_t mode = kGreedy;
  int32_t penStart = 0, penEnd = 0;  // unique seen tokens in penTokens/penCounts
  float frequency = 0, presence = 0, repetition = 1;
  int32_t topK = 0;  // kFiltered: 0 off
  float topP = 1;    // 1 off
  float minP = 0;    // 0 off
  // The row of SampleInputs::counts that holds this sequence's token counts (-1: none; the
  // penalties then come from penStart..penEnd).
  int32_t countRow = -1;
};
// A step's row of a sequence whose sampling values live on the device (SampleInputs::table):
// what changes from step to step.
struct SampleStep {
  int32_t slot;  // the sequence's entry of the table
  int32_t mode;
  float u;
  int32_t penStart, penEnd;  // as SampleRow's, for a sequence without a count row
};
// Where the sampled rows' values come from: rows[r] for row r, or (step set) the table entry of
// step[r].slot with step[r]'s draw, mode and penalty range. counts: [count row][vocab] of
// 2 x (times generated) + (seen in the prompt or output), read for the penalties of rows with a
// count row, and incremented for the token the kernel samples for them. orig: [rows][vocab] where
// such rows keep the raw values of the logits their penalties change (with counts only).
struct SampleInputs {
  const SampleRow* rows = nullptr;
  const SampleStep* step = nullptr;
  const SampleRow* table = nullptr;
  int32_t* counts = nullptr;
  float* orig = nullptr;
};
// logits: rows x vocab (modified in place by the penalties). topN <= kMaxTopN.
constexpr int kMaxTopN = 64;
void sampleRows(float* logits, int rows, int vocab, const SampleInputs& params, const int32_t* penTokens,
                const int32_t* penCounts, float* penOrig, int topN, int32_t* outTokens, float* outLogprobs,
                int32_t* topIds, float* topValues, cudaStream_t s);
// sampleRows for launches whose rows are all kGreedy without penalties or kHost (left alone),
// asking no top-N: one pass over each row, split over several blocks a row.
// partials: greedyPartialsBytes(rows, vocab) of device memory.
size_t greedyPartialsBytes(int rows, int vocab);
void sampleGreedyRows(float* logits, int rows, int vocab, const SampleInputs& params, void* partials,
                      int32_t* outTokens, float* outLogprobs, cudaStream_t s);
// Writes table[slots[i]] = rows[i] for i < n.
void scatterSampleRows(SampleRow* table, const int32_t* slots, const SampleRow* rows, int n, cudaStream_t s);
// For i < n, entry (count row, token, value) of SampleInputs::counts: value >= 0 sets the count to
// it; -1 counts one more generated token. A launch names each (row, token) once.
void setTokenCounts(int32_t* counts, int vocab, const int3* entries, int n, cudaStream_t s);

}  // namespace cuda
}  // namespace troupe
