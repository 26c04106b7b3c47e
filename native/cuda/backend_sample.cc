// The CUDA backend's sampling: each sampled row's token (greedy, or drawn on the device or the
// host with its filters and penalties), its logprob and alternatives, copied back as the step's
// output. The class is in backend_impl.h.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cuda/backend_impl.h"
#include "sampling.h"

namespace troupe {
namespace cuda_engine {

void CudaBackend::sample(const StepBatch& b, const Plan& p, StepOutput& out) {
  // Asking for more alternatives than the vocabulary holds gets all of it.
  const int n = p.n, V = c_.vocabSize, topN = std::min(b.topLogprobs, V), S = p.sampled;
  out.reset(n, topN, b.returnLogits);
  if (b.returnLogits) out.logits.assign(static_cast<size_t>(n) * V, std::nanf(""));
  if (S == 0) {
    check(cudaStreamSynchronize(stream_), "step");
    return;
  }
  std::vector<int> seqOf;
  for (int i = 0; i < n; ++i)
    if (b.sample[i]) seqOf.push_back(i);

  // Per row: mode, draw, penalties (unique seen tokens with their generated counts). Rows of the
  // resident form send only their slot, mode and draw (cuda::SampleStep): their values, and the
  // counts of a penalized sequence, live in the table on the device.
  const bool resident = b.resident && sampleTable_;
  if (resident && !table_) table_ = std::make_unique<cuda::SampleTable>(V, stream_);
  if (resident) {
    table_->begin();
    hostSteps_.ensure(S);
    steps_.ensure(S);
  }
  hostRows_.ensure(S);
  rows_.ensure(S);
  std::vector<int32_t> penTok, penCnt;
  std::vector<int> hostRows;
  for (int r = 0; r < S; ++r) {
    const int i = seqOf[r];
    cuda::SampleRow& row = hostRows_[r];
    row = cuda::SampleRow{};
    row.penStart = row.penEnd = static_cast<int32_t>(penTok.size());
    const std::string bad = samplingError(b, i, V);
    if (!bad.empty()) {
      // This sequence alone fails; kHost keeps the kernel off its row, and no host loop takes it.
      out.errors[i] = "invalid sampling values: " + bad;
      row.mode = cuda::kHost;
      if (resident) hostSteps_[r] = cuda::SampleStep{b.seqSlots[i], cuda::kHost, 0.0f, 0, 0};
      continue;
    }
    row.temperature = b.temperature[i];
    row.u = static_cast<float>(uniformDraw(b.seeds[i], b.draws[i]));
    // As sampleToken: below kGreedyTemperature is greedy; top_k <= 0 or >= vocab is off.
    const bool greedy = !(b.temperature[i] >= kGreedyTemperature) || b.topK[i] == 1;
    const bool filtered = (b.topK[i] > 0 && b.topK[i] < V) || b.topP[i] < 1 || b.minP[i] > 0;
    const int32_t drawn = filtered ? (sampleFilters_ ? cuda::kFiltered : cuda::kHost) : cuda::kSample;
    row.mode = topN > cuda::kMaxTopN ? cuda::kHost : greedy ? cuda::kGreedy : drawn;
    row.topK = b.topK[i];
    row.topP = b.topP[i];
    row.minP = b.minP[i];
    if (row.mode == cuda::kHost) hostRows.push_back(r);
    row.frequency = b.frequencyPenalty[i];
    row.presence = b.presencePenalty[i];
    row.repetition = b.repetitionPenalty[i];
    row.penStart = static_cast<int32_t>(penTok.size());
    if (resident) row.countRow = table_->prepare(b, i, row);
    const Penalties pen = penaltiesOf(b, i);
    if (row.countRow >= 0) {
      // Counted on the device.
    } else if (pen.active() && pen.uniqueCount >= 0) {
      // Counted by the engine as the tokens came.
      penTok.insert(penTok.end(), pen.unique, pen.unique + pen.uniqueCount);
      penCnt.insert(penCnt.end(), pen.generatedCounts, pen.generatedCounts + pen.uniqueCount);
    } else if (pen.active() && pen.count > 0) {
      std::map<int32_t, int32_t> counts;
      for (int j = 0; j < pen.count; ++j) counts[pen.tokens[j]] += j >= pen.promptLen ? 1 : 0;
      for (auto& [tok, cnt] : counts) {
        penTok.push_back(tok);
        penCnt.push_back(cnt);
      }
    }
    row.penEnd = static_cast<int32_t>(penTok.size());
    if (resident) hostSteps_[r] = cuda::SampleStep{b.seqSlots[i], row.mode, row.u, row.penStart, row.penEnd};
  }
  const size_t P = penTok.size();
  hostPen_.ensure(2 * P + 1);
  pen_.ensure(2 * P + 1);
  penOrig_.ensure(P + 1);
  std::copy(penTok.begin(), penTok.end(), hostPen_.get());
  std::copy(penCnt.begin(), penCnt.end(), hostPen_.get() + P);
  cuda::SampleInputs in;
  if (resident) {
    table_->upload();
    check(
        cudaMemcpyAsync(steps_.get(), hostSteps_.get(), S * sizeof(cuda::SampleStep), cudaMemcpyHostToDevice, stream_),
        "sampling upload");
    in.step = steps_.get(), in.table = table_->rows(), in.counts = table_->counts();
    bool counted = false;
    for (int r = 0; r < S && !counted; ++r) counted = hostRows_[r].countRow >= 0;
    if (counted) {
      countOrig_.ensure(static_cast<size_t>(S) * V);
      in.orig = countOrig_.get();
    }
  } else {
    check(cudaMemcpyAsync(rows_.get(), hostRows_.get(), S * sizeof(cuda::SampleRow), cudaMemcpyHostToDevice, stream_),
          "sampling upload");
    in.rows = rows_.get();
  }
  if (P > 0) check(cudaMemcpyAsync(pen_.get(), hostPen_.get(), 2 * P * 4, cudaMemcpyHostToDevice, stream_), "upload");

  // Raw logits the host needs, copied before the penalties change them.
  const bool allRows = b.returnLogits;
  const size_t hostLogitRows = allRows ? S : hostRows.size();
  hostLogits_.ensure(std::max<size_t>(hostLogitRows, 1) * V);
  if (allRows) {
    check(cudaMemcpyAsync(hostLogits_.get(), logits_.get(), static_cast<size_t>(S) * V * 4, cudaMemcpyDeviceToHost,
                          stream_),
          "logits download");
  } else {
    for (size_t k = 0; k < hostRows.size(); ++k) {
      check(cudaMemcpyAsync(hostLogits_.get() + k * V, logits_.get() + static_cast<size_t>(hostRows[k]) * V,
                            static_cast<size_t>(V) * 4, cudaMemcpyDeviceToHost, stream_),
            "logits download");
    }
  }
  const int gpuTopN = topN > cuda::kMaxTopN ? 0 : topN;
  outInts_.ensure(S + static_cast<size_t>(S) * gpuTopN);
  outFloats_.ensure(S + static_cast<size_t>(S) * gpuTopN);
  // Greedy rows without penalties or a top-N, the usual decode step, take one pass over their
  // logits split over several blocks a row (sampleRows gives a row one block): on an H200 one
  // 128k-logit row takes 12.6 us against 33.0, 32 rows 26.9 against 34.0.
  bool greedyOnly = gpuTopN == 0;
  for (int r = 0; r < S && greedyOnly; ++r) {
    const cuda::SampleRow& row = hostRows_[r];
    greedyOnly =
        row.mode == cuda::kHost || (row.mode == cuda::kGreedy && row.penStart == row.penEnd && row.countRow < 0);
  }
  if (greedyOnly) {
    greedyPartials_.ensure((cuda::greedyPartialsBytes(S, V) + 3) / 4);
    cuda::sampleGreedyRows(logits_.get(), S, V, in, greedyPartials_.get(), outInts_.get(), outFloats_.get(), stream_);
  } else {
    cuda::sampleRows(logits_.get(), S, V, in, pen_.get(), pen_.get() + P, penOrig_.get(), gpuTopN, outInts_.get(),
                     outFloats_.get(), outInts_.get() + S, outFloats_.get() + S, stream_);
  }
  check(cudaGetLastError(), "sampling launch");
  const size_t outCount = S + static_cast<size_t>(S) * gpuTopN;
  hostOutInts_.ensure(outCount);
  hostOutFloats_.ensure(outCount);
  check(cudaMemcpyAsync(hostOutInts_.get(), outInts_.get(), outCount * 4, cudaMemcpyDeviceToHost, stream_), "download");
  check(cudaMemcpyAsync(hostOutFloats_.get(), outFloats_.get(), outCount * 4, cudaMemcpyDeviceToHost, stream_),
        "download");
  check(cudaStreamSynchronize(stream_), "step");

  std::vector<char> onHost(S, 0);
  for (int r : hostRows) onHost[r] = 1;
  for (int r = 0; r < S; ++r) {
    const int i = seqOf[r];
    if (b.returnLogits) {
      std::copy(hostLogits_.get() + static_cast<size_t>(r) * V, hostLogits_.get() + static_cast<size_t>(r + 1) * V,
                out.logits.begin() + static_cast<size_t>(i) * V);
    }
    if (onHost[r] || !out.errors[i].empty()) continue;
    out.tokens[i] = hostOutInts_[r];
    out.logprobs[i] = hostOutFloats_[r];
    for (int k = 0; k < gpuTopN; ++k) {
      out.topIds[static_cast<size_t>(i) * topN + k] = hostOutInts_[S + static_cast<size_t>(r) * gpuTopN + k];
      out.topLogprobValues[static_cast<size_t>(i) * topN + k] =
          hostOutFloats_[S + static_cast<size_t>(r) * gpuTopN + k];
    }
  }
  // Filtered sampling and very long top-N lists run the CPU backend's code on the raw row, a row a
  // thread as the CPU engine samples: a row of a 128k vocabulary takes 0.2-0.3 ms of one core, so
  // 32 such rows one after another would take longer than the decode step itself.
  const int hostCount = static_cast<int>(hostRows.size());
  const int threads = o_.threads > 0 ? o_.threads : omp_get_num_procs();
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1 && hostCount > 1)
  for (int k = 0; k < hostCount; ++k) {
    const int r = hostRows[k], i = seqOf[r];
    sampleSequence(b, i, hostLogits_.get() + (allRows ? static_cast<size_t>(r) : k) * V, V, topN, out);
  }
  if (resident) {
    for (int r : hostRows) table_->countHostToken(b, seqOf[r], out.tokens[seqOf[r]]);
    table_->uploadHostCounts();
  }
}

}  // namespace cuda_engine
}  // namespace troupe
