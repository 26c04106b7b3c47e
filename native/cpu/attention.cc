// Paged attention: a token's keys are found through its sequence's block table, so the order in
// which it reads them (positions 0..p) and hence every rounding is the same alone, in a mixed
// batch, or split over prefill chunks.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/ops.h"
#include "cpu/simd.h"

namespace troupe {

void KvCache::allocate(int nLayers, int nBlocks, int nKvHeads, int bs, int hd) {
  layers = nLayers;
  blocks = nBlocks;
  kvHeads = nKvHeads;
  blockSize = bs;
  headDim = hd;
  const size_t n = static_cast<size_t>(nLayers) * nBlocks * nKvHeads * bs * hd;
  k.assign(n, 0.0f);
  v.assign(n, 0.0f);
}

void writeKv(KvCache& cache, int layer, const float* k, const float* v, size_t ld,
             const std::vector<TokenPlace>& places) {
  const int bs = cache.blockSize;
  const int hd = cache.headDim;
  for (size_t t = 0; t < places.size(); ++t) {
    const int pos = places[t].position;
    const int block = places[t].blockTable[pos / bs];
    for (int h = 0; h < cache.kvHeads; ++h) {
      const size_t off = cache.offset(layer, block, h, pos % bs);
      std::memcpy(&cache.k[off], k + t * ld + static_cast<size_t>(h) * hd, sizeof(float) * hd);
      std::memcpy(&cache.v[off], v + t * ld + static_cast<size_t>(h) * hd, sizeof(float) * hd);
    }
  }
}

void pagedAttention(const KvCache& cache, int layer, const float* q, size_t ldq, float* out, size_t ldo,
                    const std::vector<TokenPlace>& places, int numHeads, int window, int threads) {
  const int bs = cache.blockSize;
  const int hd = cache.headDim;
  const int group = numHeads / cache.kvHeads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const int tokens = static_cast<int>(places.size());
  int maxCtx = 0;
  for (const auto& p : places) maxCtx = std::max(maxCtx, p.position + 1);
  const long long work = static_cast<long long>(tokens) * numHeads * maxCtx * hd;
#pragma omp parallel num_threads(threads) if (threads > 1 && work > 32768)
  {
    std::vector<float> scores(maxCtx);
    std::vector<double> acc(hd);
#pragma omp for collapse(2) schedule(dynamic, 4)
    for (int t = 0; t < tokens; ++t) {
      for (int h = 0; h < numHeads; ++h) {
        const TokenPlace& place = places[t];
        const int ctx = place.position + 1;
        // transformers' sliding mask: key j is visible from position p when p - window < j <= p.
        const int first = window > 0 ? std::max(0, ctx - window) : 0;
        const int kvh = h / group;
        const float* qh = q + t * ldq + static_cast<size_t>(h) * hd;
        float maxScore = -INFINITY;
        for (int j = first; j < ctx; ++j) {
          const size_t off = cache.offset(layer, place.blockTable[j / bs], kvh, j % bs);
          const float s = simd::dot(&cache.k[off], qh, hd) * scale;
          scores[j] = s;
          maxScore = std::max(maxScore, s);
        }
        double sum = 0;
        for (int j = first; j < ctx; ++j) {
          scores[j] = std::exp(scores[j] - maxScore);
          sum += scores[j];
        }
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int j = first; j < ctx; ++j) {
          const size_t off = cache.offset(layer, place.blockTable[j / bs], kvh, j % bs);
          const float* vj = &cache.v[off];
          const double p = scores[j];
          for (int d = 0; d < hd; ++d) acc[d] += p * vj[d];
        }
        float* o = out + t * ldo + static_cast<size_t>(h) * hd;
        const double inv = 1.0 / sum;
        for (int d = 0; d < hd; ++d) o[d] = static_cast<float>(acc[d] * inv);
      }
    }
  }
}

}  // namespace troupe
