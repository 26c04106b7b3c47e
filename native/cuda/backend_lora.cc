// The CUDA backend's projections with their adapters' LoRA deltas (the fused, tensor-core and
// CUDA-core forms, chosen by loraKernel) and the pool's slots. The class is in backend_impl.h.
#include <algorithm>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "cuda/backend_impl.h"

namespace troupe {
namespace cuda_engine {

const bf16_t* CudaBackend::makeRows(const cuda::RowInput& input, bf16_t* made, int in, int ld) {
  const int T = map_.tokens;
  switch (input.source) {
    case cuda::RowSource::kNorm:
      timer_.mark("norm", stream_);
      if (pendingDelta_) {
        // The residual's rows take the deltas of the projection that wrote them first.
        if (input.f32 != hidden_.get()) throw std::logic_error("a LoRA delta is pending on a norm of other rows");
        cuda::rmsnormDelta(hidden_.get(), input.normW, made, T, in, input.eps, ld ? ld : in, *pendingDelta_, stream_,
                           true);
        pendingDelta_.reset();
        return made;
      }
      cuda::rmsnorm(input.f32, nullptr, input.normW, made, T, in, input.eps, stream_, ld, normPdl_);
      return made;
    case cuda::RowSource::kSiluMul:
      timer_.mark("silu", stream_);
      if (input.f32) {
        cuda::siluMul(input.f32, made, T, in, stream_, ld);
      } else {
        cuda::siluMul(input.bf16, made, T, in, stream_, ld);
      }
      return made;
    case cuda::RowSource::kCopy:
      break;
  }
  return input.bf16;
}

void CudaBackend::projection(int l, cuda::WeightGroup g, const char* name, std::initializer_list<LoraModule> modules,
                             const int* offsets, const cuda::RowInput& input, bf16_t* made, float* y, int N,
                             bool accumulate, cuda::ElemType yType) {
  const bf16_t* W = w_->layers[l].matrix(g);
  const int ld = w_->ld[g], in = ld - w_->pad[g], T = map_.tokens;
  if (yType != cuda::ElemType::F32 && !bf16Rows(l, g, modules)) {
    throw std::logic_error(std::string(name) + ": bf16 output where the projection writes f32");
  }
  if (fusedLoraStep()) {
    const cuda::LoraSlices sl = stepSlices(l, modules, offsets);
    const DecodeShrink d = decodeShrink(in, ld, input);
    if (w_->tail[g] > 0 && stepSlots_ <= lora_->tailSlots(g) && cuda::ropeKvLoraSupported(shape_, sl.maxRank) &&
        sl.count > 0 && d.decode && yType == cuda::ElemType::F32) {
      // Every slot's shrink outputs after each token's q, k and v, for ropeKvLora (lora_tail.h),
      // which adds the deltas.
      const bf16_t* x = makeRows(input, made, in);
      timer_.mark(name, stream_);
      project(T, N + qkvTailUsed(), in, W, ld, x, in, y, accumulate);
      qkvTail_ = tailDelta(l, sl, N);
      return;
    }
    if (sl.count > 0 && d.decode && (loraInGemm_ >> g & 1u) && yType == cuda::ElemType::F32) {
      // q/k/v, o and down: the decode GEMM takes the shrink itself, from the rows as they are or as
      // rmsnorm or siluMul makes them, and adds the deltas or leaves them to the norm after it.
      const bool copied = input.source == cuda::RowSource::kCopy;
      cuda::DecodeGemmArgs a =
          loraGemmArgs(l, g, sl, copied ? input.bf16 : made, copied ? input.ld : in, y, N, accumulate);
      if (a.M > 0) {
        makeRows(input, made, in);
        timer_.mark(name, stream_);
        a.releaseEarly = normPdl_;
        a.releaseAtStart = normAtGemmStart_;
        const bool gateUpBegun = g == cuda::kOWeight && gateUpInO_ && gateUpShrinkInO(l, a);
        if (g == cuda::kOWeight && !gateUpBegun) a.prefetch = gateUpPrefetch(l);
        decodeGemm_->run(a, loraGemmSplits(a), stream_, true);
        if (!a.lora.B) {
          // The deltas are the next norm's (loraGemmArgs says which).
          const LoraModule m = g == cuda::kOWeight ? kO : kDown;
          cuda::ResidualDelta d;
          d.bt = lora_->bTransposed(l, m), d.rowSlot = dRowSlot_, d.ranks = lora_->ranks();
          d.rankPitch = kNumLoraModules, d.module = m, d.maxRank = sl.maxRank, d.mid = loraMid_.get();
          d.slotRank = lora_->slotRank(), d.btSlots = lora_->transposedSlots(m);
          if (gateUpBegun) d.columns = gateUpColumns(l);
          pendingDelta_ = d;
        }
        return;
      }
    }
    if (sl.count > 0 && d.decode) {
      // A decode step: the input rows and their LoRA columns, then one GEMM. The rows are made
      // into xa (rmsnorm, siluMul) and the item shrink adds the columns; the row shrink can make
      // norm rows itself, but SiLU rows it reads where siluMul wrote them (it would remake all of
      // them in every block of a token).
      cuda::RowInput rows = input;
      // The norm finishes the shrink that o's GEMM began (gateUpShrinkInO): the columns come with
      // the rows.
      const bool columnsMade =
          pendingDelta_ && pendingDelta_->columns.partial && input.source == cuda::RowSource::kNorm;
      // A pending delta is added by the norm kernel (makeRows), not by the row shrink's own rows.
      if (input.source == cuda::RowSource::kSiluMul ||
          ((d.items || pendingDelta_) && input.source == cuda::RowSource::kNorm)) {
        rows = cuda::RowInput{cuda::RowSource::kCopy};
        rows.bf16 = makeRows(input, xa_.get(), in, ld);
        rows.ld = ld;
      }
      const cuda::AugmentedRows xa = augmented(g);
      if (g == cuda::kGateUpWeight && !columnsMade) {
        // gate/up's GEMM makes its LoRA columns itself (gate_up_gemm.h), from the normed rows in xa.
        const cuda::GateUpGemmArgs gu = gateUpLoraArgs(l, sl, xa);
        if (gu.M > 0) {
          if (rows.source != cuda::RowSource::kCopy) makeRows(input, xa.data, in, ld);
          timer_.mark(name, stream_);
          gateUpGemm_->run(gu, gateUpSplits_, stream_, true);
          actMade_ = true;
          return;
        }
      }
      timer_.mark("lora", stream_);
      if ((g == cuda::kOWeight && oColumnsMade_) || columnsMade) {
        // The decode attention (oLoraEpilogue) or the norm wrote the rows and their LoRA columns.
      } else if (d.itemShrink) {
        const cuda::DecodeGemmArgs late =
            g == cuda::kOWeight ? oLateGemm(l, rows, xa, y, N, accumulate) : cuda::DecodeGemmArgs{};
        cuda::loraItemShrink(rows, sl, loraItems_, lora_->slots(), dRowSlot_, lora_->ranks(), lora_->scaling(), T, xa,
                             stream_, itemPdl_,
                             g == cuda::kOWeight        ? oItemShape_
                             : g == cuda::kGateUpWeight ? gateUpItemShape_
                                                        : cuda::ItemShrinkShape{},
                             g == cuda::kOWeight && oGemmEarly_, late.M > 0 ? oRowsReady_.get() : nullptr);
        if (late.M > 0) {
          timer_.mark(name, stream_);
          decodeGemm_->run(late, kDecodeGemmSplits, stream_, true);
          return;
        }
      } else {
        cuda::loraRowShrink(rows, sl, lora_->slots(), dRowSlot_, lora_->ranks(), lora_->scaling(), T, xa, sms_,
                            stream_);
      }
      timer_.mark(name, stream_);
      return projectAugmented(l, xa, sl, 0, in + paddingUsed(g), W, y, N, accumulate, cuda::ElemType::F32,
                              g == cuda::kOWeight ? gateUpPrefetch(l) : cuda::DecodeGemmPrefetch{});
    }
    if (sl.count > 0) {
      // The larger steps' one GEMM reads [x | LoRA columns] as one row: rows that a kernel makes
      // here (RMSNorm, SiLU-and-mul) it makes in their place there, so that the augment does not
      // copy them (a prefill of 8 x 512 Llama-8B tokens over 8 adapters took 1.5 ms less at rank
      // 16, 2.9 at rank 64; the attention's rows for o are still copied).
      const bool inPlace = T > fusedSplitMaxTokens_ && input.source != cuda::RowSource::kCopy;
      const int ldx = inPlace ? ld : in;
      const bf16_t* x = makeRows(input, inPlace ? augmented(g).data : made, in, ldx);
      timer_.mark(name, stream_);
      return fusedProjection(l, sl, g, name, x, ldx, W, y, N, accumulate, yType);
    }
  }
  const bf16_t* x = makeRows(input, made, in);
  timer_.mark(name, stream_);
  // gate/up with no deltas to add after the product: the gate/up GEMM may take it whole.
  if (g == cuda::kGateUpWeight && (!lora_ || !stepHasLora() || lora_->slices(l, modules, offsets).count == 0) &&
      gateUpAct(T, N, in, W, ld, x, in))
    return;
  startLora(l, modules, x, in);
  project(T, N, in, W, ld, x, in, y, accumulate, yType);
  applyLora(l, modules, offsets, x, in, y, N);
}

bool CudaBackend::bf16Rows(int l, cuda::WeightGroup g, std::initializer_list<LoraModule> modules) const {
  if (!(bf16Rows_ >> g & 1u) || map_.tokens < bf16RowsTokens_) return false;
  const cuda::GpuLayer& L = w_->layers[l];
  if (g == cuda::kQkvWeight && (L.qkvBias || L.qNorm)) return false;
  if (!lora_ || !stepHasLora()) return true;
  const int noOffsets[cuda::kMaxLoraSlices] = {};
  if (lora_->slices(l, modules, noOffsets).count == 0) return true;
  // The fused layout's one GEMM over [x | LoRA columns] (fusedProjection; q/k/v's pieces with
  // split rows have pointers to bf16 rows too, buildPiecePointers); every other form adds the
  // deltas into f32 rows.
  return fusedLoraStep() && map_.tokens > fusedSplitMaxTokens_;
}

void CudaBackend::fusedProjection(int l, const cuda::LoraSlices& sl, cuda::WeightGroup g, const char* name,
                                  const bf16_t* x, int ldx, const bf16_t* W, float* y, int N, bool accumulate,
                                  cuda::ElemType yType) {
  const int ld = w_->ld[g], pad = w_->pad[g], in = ld - pad, T = map_.tokens;
  const cuda::AugmentedRows xa = augmented(g);
  const size_t slab = loraMid_.size() / loraPieces_;
  // The tiled shrink's outputs: each token's own slot only, in the split's slabs.
  cuda::LoraMid tiled;
  tiled.data = loraMid_.get();
  tiled.slab = slab;
  tiled.pieces = cuda::loraMmaSplit(loraItems_, sl).pieces;
  tiled.tokenPitch = sl.count * sl.maxRank;
  tiled.slicePitch = sl.maxRank;
  // Every shrink form below leaves its outputs somewhere else (mid); the augment that reads them
  // is the same.
  auto augment = [&](const cuda::LoraMid& mid, const bf16_t* copy, cudaStream_t st) {
    cuda::loraAugment(sl, lora_->slots(), dRowSlot_, lora_->ranks(), lora_->scaling(), mid, copy, ldx, T, xa, st);
  };
  auto lora = [&](const bf16_t* copy, cudaStream_t st) {
    cuda::loraShrinkMma(loraItems_, sl, lora_->ranks(), x, ldx, loraMid_.get(), slab, st);
    augment(tiled, copy, st);
  };
  if (T > fusedSplitMaxTokens_) {
    // One GEMM over [x | LoRA columns] . [W | B]^T: the deltas cost a few percent more of a GEMM
    // that is bound by arithmetic, instead of a pass over y.
    timer_.mark("lora shrink", stream_);
    if (!loraChunkClasses_.empty()) {
      const cuda::LoraMid own = shrinkByChunks(sl, x, ldx);
      timer_.mark("lora augment", stream_);
      augment(own, x, stream_);
    } else if (shrinkAllSlots_ && cuda::loraAContiguous(sl)) {
      // The shrink as one GEMM over every slot's A rows (tensor cores at full rate, A read once),
      // of which each token keeps its own slot's columns: the tiled shrink reads a slot's A again
      // for every 16 tokens, and at rank 64 took about 4x the GEMM growth the padding costs.
      const int cols = sl.count * stepSlots_ * sl.slotRank;  // A's rows are slot-major
      project(T, cols, in, sl.a[0], in, x, ldx, loraMid_.get(), false);
      cuda::LoraMid every;
      every.data = loraMid_.get();
      every.tokenPitch = cols;
      every.slicePitch = sl.slotRank;
      every.slotPitch = every.spanPitch = sl.count * sl.slotRank;
      every.slotRank = sl.slotRank;
      augment(every, x, stream_);
    } else {
      lora(x, stream_);
    }
    timer_.mark(name, stream_);
    projectAugmented(l, xa, sl, 0, in + paddingUsed(g), W, y, N, accumulate, yType);
    return;
  }
  // A decode step reads W once whatever K is: the shrink runs beside the base GEMM (it reads only
  // x), and a second GEMM over the padding columns adds the deltas once both are done.
  check(cudaEventRecord(loraFork_, stream_), "cudaEventRecord");
  check(cudaStreamWaitEvent(loraStream_, loraFork_, 0), "cudaStreamWaitEvent");
  lora(nullptr, loraStream_);
  check(cudaEventRecord(loraJoin_, loraStream_), "cudaEventRecord");
  project(T, N, in, W, ld, x, ldx, y, accumulate);
  timer_.mark("lora", stream_);
  check(cudaStreamWaitEvent(stream_, loraJoin_, 0), "cudaStreamWaitEvent");
  projectAugmented(l, xa, sl, in, paddingUsed(g), W, y, N, true);
}

int CudaBackend::coveredSlots(cuda::WeightGroup g) const {
  return w_->splitRows[g] || cuda::heldInGroup(g, o_.loraModuleMask) <= 1 ? stepSlots_ : lora_->slots();
}

int CudaBackend::paddingUsed(cuda::WeightGroup g) const {
  const int covered = coveredSlots(g), pad = w_->pad[g];
  // Fewer than the pool's only where the group's columns are one block, slot k's at k maxRank.
  if (covered >= lora_->slots()) return pad;
  return std::min(pad, (covered * lora_->slotRank() + 7) / 8 * 8);
}

int CudaBackend::qkvTailUsed() const {
  const cuda::WeightGroup g = cuda::kQkvWeight;
  return w_->tail[g] / lora_->tailSlots(g) * stepSlots_;
}

cuda::LoraMid CudaBackend::shrinkByChunks(const cuda::LoraSlices& sl, const bf16_t* x, int ldx) {
  // Each token's shrink outputs for its own slot only, as the segmented shrinks leave them.
  cuda::LoraMid own;
  own.data = loraMid_.get();
  own.tokenPitch = sl.count * sl.maxRank;
  own.slicePitch = sl.maxRank;
  // Where a slot's slices' A rows follow one another (the pool's layout), a chunk takes one
  // product for all of them, which reads its rows of x once. On an H200 at 8 x 512 Llama-8B
  // tokens over 8 adapters the shrink took 3.91 ms a step instead of 4.38 at rank 16, 4.43 instead
  // of 4.56 at rank 64 (bench/results/2026-12-02-h200-lora-a-slot-major.json).
  cuda::LoraSlices per = sl;
  int rows = sl.maxRank;
  if (cuda::loraAContiguous(sl)) {
    // One product over the max rank's rows of all slices from the adapter's first slot: its run's
    // rows, slot-major (lora_runs.h), and past them rows it leaves alone (the pool has them).
    per.count = 1, rows = sl.count * sl.maxRank;
    own.slicePitch = sl.slotRank;
    own.slotRank = sl.slotRank;
    own.spanPitch = sl.count * sl.slotRank;
  } else if (sl.slotRank != sl.maxRank) {
    throw std::logic_error("LoRA chunk shrink: slots of a lower rank need the pool's one matrix of A rows");
  }
  // Every class's pointers in one launch: the classes' chunks follow one another in the table
  // (planLoraChunks), so class c's entries are a run of each of the three arrays.
  const cuda::LoraChunkClass& last = loraChunkClasses_.back();
  const int chunks = last.first + last.count, entries = chunks * per.count;
  void** ptrs = chunkPtrs_.get();
  cuda::loraChunkPointers(dLoraChunks_, chunks, per, x, ldx, loraMid_.get(), own.tokenPitch, ptrs, stream_);
  for (const cuda::LoraChunkClass& c : loraChunkClasses_) {
    void** at = ptrs + c.first * per.count;
    // Column-major, as cuBLAS sees it: mid^T [rows][chunk] = A [rows][in] . x^T [in][chunk].
    gemm_->pointerBatched(true, false, rows, c.rows, sl.in, 1.0f, at, sl.in, at + entries, ldx, 0.0f, at + 2 * entries,
                          cuda::ElemType::F32, own.tokenPitch, c.count * per.count);
  }
  return own;
}

cuda::RowInput CudaBackend::attentionRows() const {
  cuda::RowInput heads;
  heads.bf16 = attn_.get();
  heads.ld = qDim_;
  return heads;
}

cuda::AugmentedRows CudaBackend::augmented(cuda::WeightGroup g) {
  cuda::AugmentedRows xa;
  xa.data = xa_.get();
  xa.ld = w_->ld[g];
  // The kernels that write the rows write the padding columns that the step's GEMMs read, the
  // covered slots'. Writing every slot's zeros, a prefill of 8 x 512 over 8 rank-64 adapters in the
  // first slots of a pool of 128 ran +25.9% over the base prefill; with the covered slots only,
  // +14.8% (H200, Llama-8B's shapes; bench/results/2026-12-04-h200-lora-prefill-covered-padding.json).
  xa.pad = paddingUsed(g);
  xa.slicePitch = w_->splitRows[g] ? xaTokens_ * xa.ld : 0;
  return xa;
}

void CudaBackend::buildPiecePointers() {
  const cuda::WeightGroup g = cuda::kQkvWeight;
  if (!lora_ || !w_->splitRows[g]) return;
  const int offsets[3] = {0, qDim_, qDim_ + kvDim_}, ld = w_->ld[g];
  const cuda::AugmentedRows xa = augmented(g);
  std::vector<const void*> host;
  for (int l = 0; l < c_.numLayers; ++l) {
    const cuda::LoraSlices sl = lora_->slices(l, {kQ, kK, kV}, offsets);
    const int n = cuda::splitPieceRows(sl);
    // Each piece's weight rows, augmented rows, and outputs in f32 rows or in bf16 rows (bf16Rows).
    std::vector<const void*> a, b, c, cBf16;
    for (int j = 0; j < sl.count; ++j)
      for (int row = sl.outOffset[j]; row < sl.outOffset[j] + sl.out[j]; row += n) {
        a.push_back(w_->layers[l].matrix(g) + static_cast<size_t>(row) * ld);
        b.push_back(xa.data + j * xa.slicePitch);
        c.push_back(qkv_.get() + row);
        cBf16.push_back(reinterpret_cast<bf16_t*>(qkv_.get()) + row);
      }
    for (const auto* v : {&a, &b, &c, &cBf16}) host.insert(host.end(), v->begin(), v->end());
  }
  // Its size never changes, so once made the array stays where graphs captured it; the copy is
  // ordered after the steps before on the stream that reads it.
  piecePtrs_.ensure(host.size());
  check(cudaMemcpyAsync(piecePtrs_.get(), host.data(), host.size() * sizeof(void*), cudaMemcpyHostToDevice, stream_),
        "q/k/v piece pointers");
}

void CudaBackend::projectAugmented(int l, const cuda::AugmentedRows& xa, const cuda::LoraSlices& sl, int col0, int K,
                                   const bf16_t* W, float* y, int N, bool accumulate, cuda::ElemType yType,
                                   const cuda::DecodeGemmPrefetch& prefetch) {
  const int T = map_.tokens;
  if (xa.slicePitch == 0)
    return project(T, N, K, W + col0, xa.ld, xa.data + col0, xa.ld, y, accumulate, yType, prefetch);
  // Split rows: slice j's weight rows against its own augmented rows; one token's output row is
  // the slices' runs of outputs one after another. One token takes a GEMV per slice.
  auto wRows = [&](int row) { return W + static_cast<size_t>(row) * xa.ld + col0; };
  auto xaRows = [&](int j) { return xa.data + j * xa.slicePitch + col0; };
  if (T == 1) {
    for (int j = 0; j < sl.count; ++j)
      project(1, sl.out[j], K, wRows(sl.outOffset[j]), xa.ld, xaRows(j), xa.ld, y + sl.outOffset[j], accumulate);
    return;
  }
  const float beta = accumulate ? 1.0f : 0.0f;
  // As cuBLAS sees them (column-major): Y^T [n][T], column pitch N, each product's n rows of W.
  bool equal = true;
  for (int j = 1; j < sl.count; ++j) equal = equal && sl.out[j] == sl.out[0];
  if (equal) {
    const int n = sl.out[0];
    gemm_->batched(true, false, n, T, K, 1.0f, wRows(0), xa.ld, static_cast<long long>(n) * xa.ld, xaRows(0), xa.ld,
                   static_cast<long long>(xa.slicePitch), beta, y, yType, N, n, sl.count);
    return;
  }
  // q/k/v: pieces of k's rows in one batched launch, from the pointers buildPiecePointers wrote
  // for the whole GEMM into qkv_. Anything else (the GEMM over the padding columns alone) takes a
  // launch per slice.
  if (col0 == 0 && y == qkv_.get() && piecePtrs_.size() > 0) {
    const int pieces = cuda::splitPieces(sl);
    const void* const* at = piecePtrs_.get() + static_cast<size_t>(l) * 4 * pieces;
    const void* const* c = at + (yType == cuda::ElemType::BF16 ? 3 : 2) * pieces;
    gemm_->pointerBatched(true, false, cuda::splitPieceRows(sl), T, K, 1.0f, at, xa.ld, at + pieces, xa.ld, beta,
                          const_cast<void* const*>(c), yType, N, pieces);
    return;
  }
  auto yColumns = [&](int col) -> void* {
    return yType == cuda::ElemType::BF16 ? static_cast<void*>(reinterpret_cast<bf16_t*>(y) + col)
                                         : static_cast<void*>(y + col);
  };
  for (int j = 0; j < sl.count; ++j)
    gemm_->batched(true, false, sl.out[j], T, K, 1.0f, wRows(sl.outOffset[j]), xa.ld, 0, xaRows(j), xa.ld, 0, beta,
                   yColumns(sl.outOffset[j]), yType, N, 0, 1);
}

void CudaBackend::startLora(int layer, std::initializer_list<LoraModule> modules, const bf16_t* x, int ldx) {
  shrinkStarted_ = false;
  if (!lora_ || !stepHasLora() || o_.loraKernel != LoraKernel::kMmaOverlap) return;
  const int noOffsets[cuda::kMaxLoraSlices] = {};
  const cuda::LoraSlices sl = lora_->slices(layer, modules, noOffsets);
  if (sl.count == 0) return;
  // Recorded after everything before on stream_: the input is written and the last expand has
  // read mid. Under capture the fork and the join below become a parallel branch of the graph.
  check(cudaEventRecord(loraFork_, stream_), "cudaEventRecord");
  check(cudaStreamWaitEvent(loraStream_, loraFork_, 0), "cudaStreamWaitEvent");
  cuda::loraShrinkMma(loraItems_, sl, lora_->ranks(), x, ldx, loraMid_.get(), loraMid_.size() / loraPieces_,
                      loraStream_);
  check(cudaEventRecord(loraJoin_, loraStream_), "cudaEventRecord");
  shrinkStarted_ = true;
}

void CudaBackend::applyLora(int layer, std::initializer_list<LoraModule> modules, const int* offsets, const bf16_t* x,
                            int ldx, float* y, int ldy) {
  if (!lora_ || !stepHasLora()) return;
  const cuda::LoraSlices sl = lora_->slices(layer, modules, offsets);
  if (sl.count == 0) return;
  timer_.mark("lora", stream_);
  const size_t slab = loraMid_.size() / loraPieces_;
  if (shrinkStarted_) {
    shrinkStarted_ = false;
    check(cudaStreamWaitEvent(stream_, loraJoin_, 0), "cudaStreamWaitEvent");
    cuda::loraExpandMma(loraItems_, sl, lora_->ranks(), lora_->scaling(), loraMid_.get(), slab, y, ldy, stream_);
  } else if (o_.loraKernel == LoraKernel::kFma) {
    cuda::loraShrink(loraItems_, sl, lora_->ranks(), x, ldx, loraMid_.get(), slab, stream_);
    cuda::loraExpand(loraItems_, sl, lora_->ranks(), lora_->scaling(), loraMid_.get(), slab, y, ldy, stream_);
  } else {
    const bool pdl = o_.loraKernel == LoraKernel::kMmaPdl;
    cuda::loraShrinkMma(loraItems_, sl, lora_->ranks(), x, ldx, loraMid_.get(), slab, stream_, pdl);
    cuda::loraExpandMma(loraItems_, sl, lora_->ranks(), lora_->scaling(), loraMid_.get(), slab, y, ldy, stream_, pdl);
  }
}

void CudaBackend::loadLoraSlot(int slot, const AdapterWeights& adapter) {
  if (!lora_) {
    throw std::invalid_argument("loadLoraSlot: slot " + std::to_string(slot) +
                                " is outside [0, 0): this engine has no LoRA pool (loraSlots 0)");
  }
  check(cudaSetDevice(device_), "cudaSetDevice");  // this may be any thread
  lora_->load(slot, adapter);
}

void CudaBackend::clearLoraSlot(int slot) {
  if (!lora_) {
    throw std::invalid_argument("clearLoraSlot: slot " + std::to_string(slot) +
                                " is outside [0, 0): this engine has no LoRA pool (loraSlots 0)");
  }
  check(cudaSetDevice(device_), "cudaSetDevice");
  lora_->clear(slot);
}

void CudaBackend::swapLoraSlots(int a, int b) {
  if (!lora_) throw std::invalid_argument("swapLoraSlots: this engine has no LoRA pool (loraSlots 0)");
  check(cudaSetDevice(device_), "cudaSetDevice");
  lora_->swap(a, b);
}

}  // namespace cuda_engine
}  // namespace troupe
