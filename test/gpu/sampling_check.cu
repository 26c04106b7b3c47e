// The GPU sampler's statistics and top-N (native/cuda/sampling.cu) against a host reference on
// rows built to reach each of its paths: random logits (the top-N from a few candidates), rows of
// many equal logits (more candidates than fit: a pass a place), NaN, +Inf, -Inf, -0 beside +0, a
// vocabulary that is not a multiple of 4 (scalar loads) and one smaller than a warp's share, and a
// greedy row with a penalty (its own argmax pass). Top-N ids must match exactly (value
// descending, id ascending), their logprobs within 1e-4; greedy tokens exactly. The rows without a
// penalty also go through sampleGreedyRows (a row split over several blocks), and every row through
// the resident form (values from a table by slot, the penalty from a row of token counts, which the
// kernel must then have counted its token in). With --bench it
// times sampleRows over 1 and 32 rows of a 128k vocabulary at several top-N widths, and
// sampleGreedyRows.
//
//   nvcc -std=c++17 -arch=sm_90a -O3 -Inative -o /tmp/sampling_check test/gpu/sampling_check.cu native/cuda/sampling.cu
//   /tmp/sampling_check && /tmp/sampling_check --bench
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "check_util.h"
#include "cuda/kernels.h"

using namespace troupe::cuda;
using namespace kernel_check;

namespace {

struct Row {
  std::string name;
  std::vector<float> logits;
  float repetition = 1;  // applied to `penalized` when not 1
  int penalized = -1;
};

// The host's view of a row: NaN as -Inf, log-softmax as sampling.cu's logprobOf.
struct Reference {
  std::vector<int> top;
  std::vector<float> topLogprobs;
  int token = 0;
  float logprob = 0;
};

float logprobOf(float v, float m, double logSum) {
  if (m == INFINITY) return v == INFINITY ? static_cast<float>(-logSum) : -INFINITY;
  if (m == -INFINITY) return -INFINITY;
  return static_cast<float>((static_cast<double>(v) - m) - logSum);
}

Reference reference(const Row& row, int topN) {
  std::vector<float> x = row.logits;
  for (float& v : x)
    if (std::isnan(v)) v = -INFINITY;
  const float m = *std::max_element(x.begin(), x.end());
  double sum = 0;
  for (float v : x) sum += m == INFINITY ? (v == INFINITY ? 1.0 : 0.0) : m == -INFINITY ? 0.0 : std::exp(double(v) - m);
  const double logSum = std::log(sum);
  std::vector<int> order(x.size());
  std::iota(order.begin(), order.end(), 0);
  auto before = [&](int a, int b) { return x[a] > x[b] || (x[a] == x[b] && a < b); };
  std::partial_sort(order.begin(), order.begin() + topN, order.end(), before);
  Reference r;
  for (int n = 0; n < topN; ++n) {
    r.top.push_back(order[n]);
    r.topLogprobs.push_back(logprobOf(x[order[n]], m, logSum));
  }
  std::vector<float> pen = x;
  if (row.penalized >= 0) {
    float& l = pen[row.penalized];
    l = l > 0 ? l / row.repetition : l * row.repetition;
  }
  int best = 0;
  for (int i = 1; i < static_cast<int>(pen.size()); ++i)
    if (pen[i] > pen[best]) best = i;
  r.token = best;
  r.logprob = logprobOf(x[best], m, logSum);
  return r;
}

bool close(float a, float b) { return a == b || std::fabs(a - b) <= 1e-4f; }

// One launch over rows of one vocabulary size (sampleGreedyRows where greedySplit, which takes no
// penalty or top-N; resident: the rows' values from a table, in reverse slot order, and penalties
// from count rows); the failures it finds.
int check(const std::vector<Row>& rows, int topN, bool greedySplit = false, bool resident = false) {
  const int vocab = static_cast<int>(rows[0].logits.size()), n = static_cast<int>(rows.size());
  std::vector<float> flat;
  std::vector<SampleRow> params;
  std::vector<int32_t> penTokens, penCounts;
  for (const Row& row : rows) {
    flat.insert(flat.end(), row.logits.begin(), row.logits.end());
    SampleRow p{};
    p.temperature = 0;
    p.mode = kGreedy;
    p.repetition = row.repetition;
    p.penStart = static_cast<int32_t>(penTokens.size());
    if (row.penalized >= 0) penTokens.push_back(row.penalized), penCounts.push_back(0);
    p.penEnd = static_cast<int32_t>(penTokens.size());
    p.topP = 1;
    params.push_back(p);
  }
  // The resident form: row i's values at slot n - 1 - i, its penalized token seen in the prompt.
  std::vector<SampleRow> table(n);
  std::vector<SampleStep> steps(n);
  std::vector<int32_t> counts(static_cast<size_t>(n) * vocab, 0);
  for (int i = 0; i < n; ++i) {
    table[n - 1 - i] = params[i];
    table[n - 1 - i].countRow = i;
    steps[i] = SampleStep{n - 1 - i, params[i].mode, params[i].u, 0, 0};
    if (rows[i].penalized >= 0) counts[static_cast<size_t>(i) * vocab + rows[i].penalized] = 1;
  }
  float* dLogits = upload(flat);
  SampleRow* dParams = upload(params);
  SampleRow* dTable = upload(table);
  SampleStep* dSteps = upload(steps);
  int32_t* dCounts = upload(counts);
  SampleInputs in;
  float* dOrig = upload(std::vector<float>(flat.size()));
  if (resident)
    in.step = dSteps, in.table = dTable, in.counts = dCounts, in.orig = dOrig;
  else
    in.rows = dParams;
  int32_t* dPenTokens = upload(penTokens);
  int32_t* dPenCounts = upload(penCounts);
  float* dPenOrig = upload(std::vector<float>(penTokens.size() + 1));
  int32_t* dTokens = upload(std::vector<int32_t>(n));
  float* dLogprobs = upload(std::vector<float>(n));
  int32_t* dTopIds = upload(std::vector<int32_t>(static_cast<size_t>(n) * topN + 1));
  float* dTopValues = upload(std::vector<float>(static_cast<size_t>(n) * topN + 1));
  void* dPartials = nullptr;
  if (greedySplit) {
    CK(cudaMalloc(&dPartials, greedyPartialsBytes(n, vocab)));
    sampleGreedyRows(dLogits, n, vocab, in, dPartials, dTokens, dLogprobs, nullptr);
  } else {
    sampleRows(dLogits, n, vocab, in, dPenTokens, dPenCounts, dPenOrig, topN, dTokens, dLogprobs, dTopIds,
               dTopValues, nullptr);
  }
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  std::vector<int32_t> tokens(n), topIds(static_cast<size_t>(n) * topN);
  std::vector<float> logprobs(n), topValues(static_cast<size_t>(n) * topN);
  CK(cudaMemcpy(tokens.data(), dTokens, n * sizeof(int32_t), cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(logprobs.data(), dLogprobs, n * sizeof(float), cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(topIds.data(), dTopIds, topIds.size() * sizeof(int32_t), cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(topValues.data(), dTopValues, topValues.size() * sizeof(float), cudaMemcpyDeviceToHost));
  std::vector<int32_t> countsAfter(counts.size());
  CK(cudaMemcpy(countsAfter.data(), dCounts, counts.size() * sizeof(int32_t), cudaMemcpyDeviceToHost));
  int failed = 0;
  for (int i = 0; i < n; ++i) {
    const Reference ref = reference(rows[i], topN);
    bool ok = tokens[i] == ref.token && close(logprobs[i], ref.logprob);
    for (int k = 0; k < topN; ++k)
      ok = ok && topIds[i * topN + k] == ref.top[k] && close(topValues[i * topN + k], ref.topLogprobs[k]);
    // The resident form counts the token as generated (2 per time, 1 once seen); nothing else.
    for (int v = 0; v < vocab && resident && !greedySplit; ++v) {
      const size_t at = static_cast<size_t>(i) * vocab + v;
      ok = ok && countsAfter[at] == (v == tokens[i] ? (counts[at] | 1) + 2 : counts[at]);
    }
    if (!ok) {
      ++failed;
      std::printf("FAIL %s%s%s (vocab %d, top %d): token %d (want %d), logprob %g (want %g)", rows[i].name.c_str(),
                  greedySplit ? " (split)" : "", resident ? " (resident)" : "", vocab, topN, tokens[i], ref.token, logprobs[i], ref.logprob);
      for (int k = 0; k < std::min(topN, 4); ++k)
        std::printf(" | top %d: %d %g (want %d %g)", k, topIds[i * topN + k], topValues[i * topN + k], ref.top[k],
                    ref.topLogprobs[k]);
      std::printf("\n");
    }
  }
  for (void* p : std::initializer_list<void*>{dLogits, dParams, dTable, dSteps, dCounts, dOrig, dPenTokens, dPenCounts, dPenOrig, dTokens, dLogprobs,
                                              dTopIds, dTopValues, dPartials})
    CK(cudaFree(p));
  return failed;
}

std::vector<float> randomRow(int vocab, uint64_t seed, float scale) {
  Rng rng{seed};
  std::vector<float> x(vocab);
  for (float& v : x) v = scale * rng.sym();
  return x;
}

std::vector<Row> rowsOf(int vocab) {
  std::vector<Row> rows;
  rows.push_back({"random", randomRow(vocab, 1, 10)});
  // Three levels: ties everywhere, far more candidates than fit.
  Row levels{"three levels", randomRow(vocab, 2, 1)};
  for (float& v : levels.logits) v = std::floor(1.5f * (v + 1));
  rows.push_back(levels);
  Row special{"NaN and +Inf", randomRow(vocab, 3, 5)};
  special.logits[vocab / 3] = NAN;
  special.logits[vocab / 2] = INFINITY;
  special.logits[vocab - 1] = INFINITY;
  rows.push_back(special);
  Row empty{"all -Inf and NaN", std::vector<float>(vocab, -INFINITY)};
  empty.logits[vocab / 4] = NAN;
  rows.push_back(empty);
  // The largest values on consecutive ids (one warp's share), then zeros, -0 beside +0 (equal,
  // so in id order), on ids spread over two warps; every other logit below them.
  Row clustered{"clustered, signed zeros", randomRow(vocab, 4, 1)};
  for (float& v : clustered.logits) v = -2.0f - std::fabs(v);
  for (int i = 0; i < std::min(vocab, 40); ++i) clustered.logits[i] = 50.0f - i;
  for (int i = 0; i < std::min(vocab, 200); i += 7) clustered.logits[i] = i % 2 ? -0.0f : 0.0f;
  rows.push_back(clustered);
  // Penalized greedy: the argmax's logit halved, which another id then beats.
  Row penalized{"penalized greedy", randomRow(vocab, 5, 10)};
  const int top = static_cast<int>(std::max_element(penalized.logits.begin(), penalized.logits.end()) -
                                   penalized.logits.begin());
  penalized.penalized = top;
  penalized.repetition = 2;
  rows.push_back(penalized);
  return rows;
}

int bench() {
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s\n", prop.name);
  const int vocab = 128256;
  for (int n : {1, 32}) {
    std::vector<float> flat;
    for (int i = 0; i < n; ++i) {
      const std::vector<float> x = randomRow(vocab, 100 + i, 10);
      flat.insert(flat.end(), x.begin(), x.end());
    }
    SampleRow p{};
    p.mode = kGreedy;
    p.repetition = 1;
    p.topP = 1;
    float* dLogits = upload(flat);
    SampleRow* dParams = upload(std::vector<SampleRow>(n, p));
    int32_t* dInts = upload(std::vector<int32_t>(static_cast<size_t>(n) * (kMaxTopN + 1)));
    float* dFloats = upload(std::vector<float>(static_cast<size_t>(n) * (kMaxTopN + 1) + 1));
    for (int topN : {0, 1, 5, 20, 64}) {
      const double us = timeCalls(5, 50, [&](int) {
        sampleRows(dLogits, n, vocab, SampleInputs{dParams}, dInts, dInts, dFloats, topN, dInts, dFloats, dInts + n, dFloats + n,
                   nullptr);
      });
      std::printf("%2d rows x %d logits, top %2d: %7.1f us\n", n, vocab, topN, us);
    }
    void* dPartials = nullptr;
    CK(cudaMalloc(&dPartials, greedyPartialsBytes(n, vocab)));
    const double us = timeCalls(5, 50, [&](int) {
      sampleGreedyRows(dLogits, n, vocab, SampleInputs{dParams}, dPartials, dInts, dFloats, nullptr);
    });
    std::printf("%2d rows x %d logits, greedy split over blocks: %7.1f us\n", n, vocab, us);
    CK(cudaFree(dPartials));
    for (void* q : std::initializer_list<void*>{dLogits, dParams, dInts, dFloats}) CK(cudaFree(q));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--bench") == 0) return bench();
  int failed = 0, cases = 0;
  for (int vocab : {128256, 1001, 40}) {
    const std::vector<Row> rows = rowsOf(vocab);
    for (int topN : {0, 1, 5, 20, kMaxTopN}) {
      if (topN > vocab) continue;
      failed += check(rows, topN) + check(rows, topN, false, true);
      cases += 2 * static_cast<int>(rows.size());
    }
    std::vector<Row> plain;
    for (const Row& row : rows)
      if (row.penalized < 0) plain.push_back(row);
    failed += check(plain, 0, true) + check(plain, 0, true, true);
    cases += 2 * static_cast<int>(plain.size());
  }
  std::printf("%d of %d rows failed\n", failed, cases);
  return failed > 0;
}
