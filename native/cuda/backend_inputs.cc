// The CUDA backend's step inputs: tokens, positions, block tables, the LoRA work items and slot
// lists, and the prefill attention's tiles, laid out in one upload. The class is in backend_impl.h.
#include <algorithm>
#include <vector>

#include "cuda/backend_impl.h"
#include "cuda/kernels.h"
#include "cuda/lora_chunks.h"

namespace troupe {
namespace cuda_engine {

void CudaBackend::uploadInputs(const StepBatch& b, Plan& p) {
  p.n = static_cast<int>(b.numSeqs());
  p.T = static_cast<int>(b.tokens.size);
  std::vector<int32_t> decIdx, rows;
  int longest = 0;
  for (int i = 0; i < p.n; ++i) {
    const int count = b.seqStarts[i + 1] - b.seqStarts[i];
    if (count == 1) {
      decIdx.push_back(b.seqStarts[i]);
      longest = std::max(longest, static_cast<int>(b.contextLens[i]));
    } else {
      p.prefillSeqs.push_back(i);
    }
    if (b.sample[i]) rows.push_back(b.seqStarts[i + 1] - 1);
  }
  p.decodes = static_cast<int>(decIdx.size());
  p.sampled = static_cast<int>(rows.size());
  if (p.decodes > 0) {
    p.splits = attnSplits_ > 0 ? attnSplits_
                               : cuda::decodeAttentionSplits(p.decodes, c_.numKvHeads, sms_, attnKernel_, longest);
  }
  if (b.maxBlocksPerSeq > pitch_) {
    pitch_ = b.maxBlocksPerSeq;
    ++generation_;
  }
  // LoRA work items: csgmv gathers each slot's tokens across sequences and cuts them into chunks;
  // sgmv makes one item per sequence.
  std::vector<int32_t> perm, itemStart{0}, itemSlot;
  if (lora_) {
    std::vector<std::vector<int>> bySlot(lora_->slots());
    for (int i = 0; i < p.n; ++i) {
      const int slot = b.loraSlots[i];
      if (slot < 0) continue;
      if (bySlot[slot].empty()) p.loraSlotsUsed.push_back(slot);
      if (o_.loraSgmv) {
        for (int t = b.seqStarts[i]; t < b.seqStarts[i + 1]; ++t) perm.push_back(t);
        itemStart.push_back(static_cast<int32_t>(perm.size()));
        itemSlot.push_back(slot);
      }
      for (int t = b.seqStarts[i]; t < b.seqStarts[i + 1]; ++t) bySlot[slot].push_back(t);
    }
    if (!o_.loraSgmv) {
      for (int slot : p.loraSlotsUsed) {
        const auto& toks = bySlot[slot];
        for (size_t k = 0; k < toks.size(); k += o_.loraChunkSize) {
          const size_t e = std::min(toks.size(), k + o_.loraChunkSize);
          perm.insert(perm.end(), toks.begin() + k, toks.begin() + e);
          itemStart.push_back(static_cast<int32_t>(perm.size()));
          itemSlot.push_back(slot);
        }
      }
    }
    p.loraItems = static_cast<int>(itemSlot.size());
    int longest = 0;
    for (int i = 0; i < p.loraItems; ++i) longest = std::max(longest, itemStart[i + 1] - itemStart[i]);
    p.loraTiles = (longest + cuda::kLoraTileTokens - 1) / cuda::kLoraTileTokens;
  }
  // The prefill chunks' attention tiles: every chunk of the step in one launch.
  std::vector<cuda::PrefillTile> tiles;
  if (prefillMma_ && !p.prefillSeqs.empty()) {
    std::vector<cuda::PrefillChunk> chunks;
    for (int i : p.prefillSeqs) {
      const int t0 = b.seqStarts[i], count = b.seqStarts[i + 1] - t0;
      chunks.push_back(cuda::PrefillChunk{t0, count, static_cast<int>(b.contextLens[i]) - count});
    }
    tiles = cuda::prefillAttentionTiles(chunks, headsPerKv_);
  }
  p.prefillTiles = static_cast<int>(tiles.size());
  const size_t T = p.T, n = p.n, D = std::max(p.decodes, 1), S = std::max(p.sampled, 1);
  const size_t loraInts = lora_ ? 4 * T + 2 : 0;
  const size_t tileInts = 3 * tiles.size();
  // A step with prefill past the decode bound takes its shrink by chunks when its runs allow
  // (lora_chunks.h). Only such steps: a CUDA graph would keep the chunks of the step it captured.
  std::vector<int32_t> chunks;
  loraChunkClasses_.clear();
  if (lora_ && o_.loraKernel == LoraKernel::kFused && p.T > fusedSplitMaxTokens_ && p.loraItems > 0 &&
      !p.prefillSeqs.empty())
    loraChunkClasses_ = cuda::planLoraChunks(b.seqStarts.data, b.loraSlots.data, p.n, shrinkChunkSizes_, chunks);
  const size_t total = 3 * T + D + S + n * pitch_ + loraInts + chunks.size() + tileInts;
  hostInts_.ensure(total);
  if (ints_.ensure(total)) ++generation_;
  int32_t* h = hostInts_.get();
  std::copy(b.tokens.data, b.tokens.data + T, h);
  std::copy(b.positions.data, b.positions.data + T, h + T);
  for (size_t i = 0; i < n; ++i)
    std::fill(h + 2 * T + b.seqStarts[i], h + 2 * T + b.seqStarts[i + 1], static_cast<int32_t>(i));
  std::copy(decIdx.begin(), decIdx.end(), h + 3 * T);
  std::copy(rows.begin(), rows.end(), h + 3 * T + D);
  int32_t* bt = h + 3 * T + D + S;
  for (size_t i = 0; i < n; ++i) {
    std::copy(b.blockTables.data + i * b.maxBlocksPerSeq, b.blockTables.data + (i + 1) * b.maxBlocksPerSeq,
              bt + i * pitch_);
    std::fill(bt + i * pitch_ + b.maxBlocksPerSeq, bt + (i + 1) * pitch_, -1);
  }
  int32_t* li = bt + n * pitch_;
  if (lora_) {
    std::fill(li, li + loraInts, 0);
    std::copy(perm.begin(), perm.end(), li);
    std::copy(itemStart.begin(), itemStart.end(), li + T);
    std::copy(itemSlot.begin(), itemSlot.end(), li + 2 * T + 1);
    li[3 * T + 1] = p.loraItems;
    int32_t* rowSlot = li + 3 * T + 2;
    for (size_t i = 0; i < n; ++i)
      std::fill(rowSlot + b.seqStarts[i], rowSlot + b.seqStarts[i + 1], static_cast<int32_t>(b.loraSlots[i]));
  }
  std::copy(chunks.begin(), chunks.end(), li + loraInts);
  for (size_t k = 0; k < tiles.size(); ++k) {
    int32_t* at = h + (total - tileInts) + 3 * k;
    at[0] = tiles[k].t0;
    at[1] = tiles[k].count;
    at[2] = tiles[k].row;
  }
  check(cudaMemcpyAsync(ints_.get(), h, total * 4, cudaMemcpyHostToDevice, stream_), "input upload");
  int32_t* dv = ints_.get();
  dTokens_ = dv;
  map_ = cuda::TokenMap{dv + T, dv + 2 * T, dv + 3 * T + D + S, pitch_, p.T};
  dDecIdx_ = dv + 3 * T;
  dRows_ = dv + 3 * T + D;
  if (lora_) {
    const int32_t* dl = dv + 3 * T + D + S + n * pitch_;
    loraItems_ = cuda::LoraItems{dl, dl + T, dl + 2 * T + 1, dl + 3 * T + 1, p.loraItems, p.loraTiles};
    dRowSlot_ = dl + 3 * T + 2;
    dLoraChunks_ = dl + loraInts;
  }
  dPrefillTiles_ = reinterpret_cast<const cuda::PrefillTile*>(dv + (total - tileInts));
}

}  // namespace cuda_engine
}  // namespace troupe
