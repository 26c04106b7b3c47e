// gate/up's LoRA shrink begun by o's decode GEMM (DecodeGemmNormShrink) and finished by the norm
// after it (rmsnormDelta with NormShrinkColumns), against a host reference computed from the
// residual rows the norm wrote back: each token's own slot's columns, zero past each slice's rank
// and in every other slot's columns, the normed rows in each of the token's rows. A rows and B
// values past each rank are NaN, some tokens have no adapter, and three rounds must give the same
// bits. What o's delta adds comes from loraNormShrinkN (lora_fill.h), as the pool computes it.
// Included by decode_gemm_check.cu.
#pragma once

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "check_util.h"
#include "cuda/decode_gemm.h"
#include "cuda/lora_fill.h"
#include "cuda/rmsnorm_delta.h"

namespace norm_shrink_check {

using namespace kernel_check;
using namespace troupe::cuda;

struct NormShrinkCase {
  int M, N, K, slots, maxRank, slices;
  bool split;  // each slice its own row (gate/up's split rows)
};

inline int checkNormShrink(DecodeGemm& gemm, const NormShrinkCase& c, Rng& rng, cudaStream_t st) {
  const int R = c.maxRank, S = c.slots, C = c.slices * R, oRows = S * R, tiles = (c.N + 63) / 64;
  const int pad = c.split ? S * R : c.slices * S * R, ld = c.N + pad, rowsPerToken = c.split ? c.slices : 1;
  const int kO = 3, kGate = 4;
  // Module 0 is o's, 1 + j slice j's.
  auto rankOf = [&](int s, int module) { return s < 0 ? 0 : (s + module) % 3 == 0 ? R / 2 : R; };
  std::vector<int32_t> slot(c.M), ranks(S * 7, 0);
  std::vector<float> scaling(S);
  for (int k = 0; k < S; ++k) {
    ranks[k * 7 + kO] = rankOf(k, 0);
    for (int j = 0; j < c.slices; ++j) ranks[k * 7 + kGate + j] = rankOf(k, 1 + j);
    scaling[k] = 0.5f + 0.25f * k;
  }
  for (int m = 0; m < c.M; ++m) slot[m] = m % (S + 1) - 1;
  auto bf16s = [&](size_t n, float scale) {
    std::vector<uint16_t> v(n);
    for (auto& e : v) e = toBf16(scale * rng.sym());
    return v;
  };
  std::vector<uint16_t> W = bf16s(static_cast<size_t>(c.N) * c.K, 1.0f), X = bf16s(static_cast<size_t>(c.M) * c.K, 1.0f);
  std::vector<uint16_t> Ao = bf16s(static_cast<size_t>(oRows) * c.K, 0.125f);
  std::vector<uint16_t> Bt = bf16s(static_cast<size_t>(oRows) * c.N, 0.25f);
  std::vector<uint16_t> Agu = bf16s(static_cast<size_t>(S) * C * c.N, 0.125f);
  for (int row = 0; row < oRows; ++row)
    if (row % R >= rankOf(row / R, 0)) {
      for (int k = 0; k < c.K; ++k) Ao[static_cast<size_t>(row) * c.K + k] = kNaN16;
      for (int n = 0; n < c.N; ++n) Bt[static_cast<size_t>(row) * c.N + n] = kNaN16;
    }
  for (int row = 0; row < S * C; ++row)
    if (row % R >= rankOf(row / C, 1 + row % C / R))
      for (int n = 0; n < c.N; ++n) Agu[static_cast<size_t>(row) * c.N + n] = kNaN16;
  std::vector<float> normW(c.N), Y0(static_cast<size_t>(c.M) * c.N);
  for (auto& v : normW) v = 1.0f + 0.5f * rng.sym();
  for (auto& v : Y0) v = 2 * rng.sym();
  int32_t* dSlot = upload(slot);
  int32_t* dRanks = upload(ranks);
  float* dScaling = upload(scaling);
  float* dNormW = upload(normW);
  float* dY = upload(Y0);
  bf16_t* dW = reinterpret_cast<bf16_t*>(upload(W));
  bf16_t* dX = reinterpret_cast<bf16_t*>(upload(X));
  bf16_t* dAo = reinterpret_cast<bf16_t*>(upload(Ao));
  bf16_t* dBt = reinterpret_cast<bf16_t*>(upload(Bt));
  bf16_t* dAgu = reinterpret_cast<bf16_t*>(upload(Agu));
  float* dMid = upload(std::vector<float>(static_cast<size_t>(c.M) * R, std::nanf("")));
  float* dParts = upload(std::vector<float>(static_cast<size_t>(tiles) * 32 * 32, std::nanf("")));
  float* dN = upload(std::vector<float>(static_cast<size_t>(S) * R * C, std::nanf("")));
  const size_t xaElems = static_cast<size_t>(rowsPerToken) * c.M * ld;
  bf16_t* dXa = reinterpret_cast<bf16_t*>(upload(std::vector<uint16_t>(xaElems, kNaN16)));
  for (int k = 0; k < S; ++k)
    loraNormShrinkN(dBt + static_cast<size_t>(k) * R * c.N, dNormW, dAgu + static_cast<size_t>(k) * C * c.N, c.N, R, C,
                    LoraRunRows{C / R, R, R}, dN + static_cast<size_t>(k) * R * C, st);

  DecodeGemmArgs a;
  a.W = dW, a.ldw = c.K, a.X = dX, a.ldx = c.K, a.Y = dY, a.ldy = c.N, a.M = c.M, a.N = c.N, a.K = c.K;
  a.accumulate = true;
  DecodeGemmLora& l = a.lora;
  l.A = dAo, l.lda = c.K, l.rows = oRows, l.maxRank = R, l.rowSlot = dSlot, l.ranks = dRanks, l.rankPitch = 7;
  l.module = kO, l.scaling = dScaling, l.mid = dMid;
  a.normShrink.A = dAgu, a.normShrink.rows = S * C, a.normShrink.outputs = C;
  a.normShrink.normW = dNormW, a.normShrink.partial = dParts;
  ResidualDelta d;
  d.bt = dBt, d.rowSlot = dSlot, d.ranks = dRanks, d.rankPitch = 7, d.module = kO, d.maxRank = R, d.mid = dMid;
  NormShrinkColumns& cs = d.columns;
  cs.partial = dParts, cs.tiles = tiles, cs.outputs = C, cs.slices = c.slices, cs.slots = S, cs.rankModule = kGate;
  cs.n = dN, cs.scaling = dScaling;
  cs.xa.data = dXa, cs.xa.ld = ld, cs.xa.pad = pad, cs.xa.slicePitch = c.split ? static_cast<size_t>(c.M) * ld : 0;
  char what[128];
  std::snprintf(what, sizeof what, "norm shrink M %d N %d K %d slots %d rank %d slices %d%s", c.M, c.N, c.K, S, R,
                c.slices, c.split ? " split" : "");
  if (!gemm.supports(a, 2)) {
    std::printf("FAIL %s: not supported\n", what);
    return 1;
  }
  std::vector<float> Y, y(Y0.size());
  std::vector<uint16_t> xa, got(xaElems);
  for (int round = 0; round < 3; ++round) {
    CK(cudaMemcpyAsync(dY, Y0.data(), Y0.size() * 4, cudaMemcpyHostToDevice, st));
    gemm.run(a, 2, st, true);
    rmsnormDelta(dY, dNormW, dXa, c.M, c.N, 1e-5f, ld, d, st, true);
    CK(cudaMemcpyAsync(y.data(), dY, y.size() * 4, cudaMemcpyDeviceToHost, st));
    CK(cudaMemcpyAsync(got.data(), dXa, xaElems * 2, cudaMemcpyDeviceToHost, st));
    CK(cudaStreamSynchronize(st));
    if (round == 0) {
      Y = y, xa = got;
    } else if (std::memcmp(y.data(), Y.data(), y.size() * 4) != 0 || std::memcmp(got.data(), xa.data(), xaElems * 2)) {
      std::printf("FAIL %s: round %d differs from the first\n", what, round);
      return 1;
    }
  }
  int bad = 0;
  double worst = 0;
  auto at = [&](int m, int row, int col) { return xa[(static_cast<size_t>(row) * c.M + m) * ld + col]; };
  for (int m = 0; m < c.M && bad < 5; ++m) {
    const int s = slot[m];
    const float* h = Y.data() + static_cast<size_t>(m) * c.N;
    double squares = 0;
    for (int n = 0; n < c.N; ++n) squares += static_cast<double>(h[n]) * h[n];
    const double inv = 1.0 / std::sqrt(squares / c.N + 1e-5);
    for (int row = 0; row < rowsPerToken; ++row)
      for (int n = 0; n < c.N; ++n) {
        const double want = normW[n] * (h[n] * inv), v = fromBf16(at(m, row, n));
        if (!(std::fabs(v - want) <= std::fabs(want) / 128 + 1e-6) && bad++ < 5)
          std::printf("FAIL %s: token %d row %d normed %d: %g, want %g\n", what, m, row, n, v, want);
      }
    for (int row = 0; row < rowsPerToken; ++row)
      for (int col = 0; col < pad; ++col) {
        const int j = c.split ? row : col / (S * R), k = col % (S * R) / R, r = col % R;
        const uint16_t v = at(m, row, c.N + col);
        if (j >= c.slices || k != s || r >= rankOf(s, 1 + j)) {
          if (v != 0 && bad++ < 5)
            std::printf("FAIL %s: token %d row %d column %d holds %04x, want 0\n", what, m, row, col, v);
          continue;
        }
        double ref = 0, mag = 0;
        const uint16_t* aRow = Agu.data() + (static_cast<size_t>(s) * C + j * R + r) * c.N;
        for (int n = 0; n < c.N; ++n) {
          const double p = h[n] * inv * normW[n] * fromBf16(aRow[n]);
          ref += p, mag += std::fabs(p);
        }
        ref *= scaling[s], mag *= scaling[s];
        const double err = std::fabs(fromBf16(v) - ref);
        worst = std::max(worst, err / (mag + 1e-30));
        // h w reaches the products as bf16 (as the normed row does in the projection): 2^-9 of each.
        if (!(err <= std::fabs(ref) / 128 + mag / 512) && bad++ < 5)
          std::printf("FAIL %s: token %d slice %d rank %d: %g, want %g (magnitude %g)\n", what, m, j, r, fromBf16(v),
                      ref, mag);
      }
  }
  if (!bad) std::printf("ok   %s: worst column error %.2e of its magnitude\n", what, worst);
  for (void* p : {static_cast<void*>(dSlot), static_cast<void*>(dRanks), static_cast<void*>(dScaling),
                  static_cast<void*>(dNormW), static_cast<void*>(dY), static_cast<void*>(dW), static_cast<void*>(dX),
                  static_cast<void*>(dAo), static_cast<void*>(dBt), static_cast<void*>(dAgu), static_cast<void*>(dMid),
                  static_cast<void*>(dParts), static_cast<void*>(dN), static_cast<void*>(dXa)})
    CK(cudaFree(p));
  return bad ? 1 : 0;
}

// The engine's shape (Llama-8B's o and gate/up at 8 rank-16 slots), fewer tokens and slots, N
// past the last whole tile, one slice, both row layouts, and a norm whose last block has fewer
// features than the padding columns (N 1536 over shared rows: 512 features, 256 columns).
inline int normShrinkChecks(DecodeGemm& gemm, Rng& rng, cudaStream_t st) {
  const NormShrinkCase cases[] = {
      {32, 4096, 4096, 8, 16, 2, true}, {32, 4096, 4096, 8, 16, 2, false}, {7, 1000, 2048, 4, 16, 2, true},
      {19, 512, 512, 3, 8, 2, false},   {5, 640, 768, 8, 16, 1, true},     {1, 2048, 1024, 8, 8, 2, true},
      {13, 1536, 1024, 8, 16, 2, false},
  };
  int failed = 0;
  for (const NormShrinkCase& c : cases) failed += checkNormShrink(gemm, c, rng, st);
  return failed;
}

// o's GEMM at Llama-8B's shape over 8 rank-16 slots and the norm after it, replayed from a CUDA
// graph behind a 2 us kernel: the GEMM leaving its delta to the norm (the step's form without
// gate/up's shrink), the GEMM also forming gate/up's parts, and both halves of gate/up's shrink.
// Four copies of the weights and of gate/up's A rows, as a step meets them in memory.
inline void benchNormShrink(cudaStream_t st, int sms) {
  const int T = 32, S = 8, R = 16, C = 32, H = 4096, K = 4096, copies = 4, iters = 64, ld = H + S * R;
  auto zeros = [](size_t n) {
    void* p = nullptr;
    CK(cudaMalloc(&p, n));
    CK(cudaMemset(p, 0, n));
    return p;
  };
  const size_t wElems = static_cast<size_t>(H) * K, aguElems = static_cast<size_t>(S) * C * H;
  auto* W = static_cast<bf16_t*>(zeros(wElems * copies * 2));
  auto* X = static_cast<bf16_t*>(zeros(static_cast<size_t>(T) * K * 2));
  auto* Ao = static_cast<bf16_t*>(zeros(static_cast<size_t>(S) * R * K * 2));
  auto* Bt = static_cast<bf16_t*>(zeros(static_cast<size_t>(S) * R * H * 2));
  auto* Agu = static_cast<bf16_t*>(zeros(aguElems * copies * 2));
  auto* Y = static_cast<float*>(zeros(static_cast<size_t>(T) * H * 4));
  auto* mid = static_cast<float*>(zeros(static_cast<size_t>(T) * R * 4));
  auto* parts = static_cast<float*>(zeros(static_cast<size_t>(H / 64) * 32 * 32 * 4));
  auto* n = static_cast<float*>(zeros(static_cast<size_t>(S) * R * C * 4));
  auto* xa = static_cast<bf16_t*>(zeros(static_cast<size_t>(2) * T * ld * 2));
  float* w = upload(std::vector<float>(H, 1.0f));
  std::vector<int32_t> slot(T);
  for (int t = 0; t < T; ++t) slot[t] = t % S;
  int32_t* dSlot = upload(slot);
  int32_t* dRank = upload(std::vector<int32_t>(S * 7, R));
  float* dScale = upload(std::vector<float>(S, 1.0f));
  DecodeGemm gemm(sms);
  auto before = [&](cudaStream_t s2) { shortKernel<<<sms, 128, 0, s2>>>(); };
  auto time = [&](bool begun, bool finished) {
    return graphCallUs(st, iters, before, [&](int i, cudaStream_t s2) {
      DecodeGemmArgs a;
      a.W = W + (i % copies) * wElems, a.ldw = K, a.X = X, a.ldx = K, a.Y = Y, a.ldy = H, a.M = T, a.N = H, a.K = K;
      a.accumulate = true, a.releaseEarly = true;
      DecodeGemmLora& l = a.lora;
      l.A = Ao, l.lda = K, l.rows = S * R, l.maxRank = R, l.rowSlot = dSlot, l.ranks = dRank, l.rankPitch = 7;
      l.module = 3, l.scaling = dScale, l.mid = mid;
      if (begun) {
        a.normShrink.A = Agu + (i % copies) * aguElems, a.normShrink.rows = S * C, a.normShrink.outputs = C;
        a.normShrink.normW = w, a.normShrink.partial = parts;
      }
      gemm.run(a, 2, s2, true);
      ResidualDelta d;
      d.bt = Bt, d.rowSlot = dSlot, d.ranks = dRank, d.rankPitch = 7, d.module = 3, d.maxRank = R, d.mid = mid;
      if (finished) {
        NormShrinkColumns& cs = d.columns;
        cs.partial = parts, cs.tiles = H / 64, cs.outputs = C, cs.slices = 2, cs.slots = S, cs.rankModule = 4;
        cs.n = n, cs.scaling = dScale;
        cs.xa.data = xa, cs.xa.ld = ld, cs.xa.pad = S * R, cs.xa.slicePitch = static_cast<size_t>(T) * ld;
      }
      rmsnormDelta(Y, w, xa, T, H, 1e-5f, ld, d, s2, true);
    });
  };
  const double alone = graphCallUs(st, iters, before, [](int, cudaStream_t) {});
  std::printf(
      "o's GEMM and the norm after it, 8 rank-16 slots, behind a 2 us kernel (%5.2f): delta to the norm %6.2f; "
      "the GEMM forming gate/up's parts too %6.2f; and the norm finishing gate/up's columns %6.2f\n",
      alone, time(false, false), time(true, false), time(true, true));
  for (void* p : {static_cast<void*>(W), static_cast<void*>(X), static_cast<void*>(Ao), static_cast<void*>(Bt),
                  static_cast<void*>(Agu), static_cast<void*>(Y), static_cast<void*>(mid), static_cast<void*>(parts),
                  static_cast<void*>(n), static_cast<void*>(xa), static_cast<void*>(w), static_cast<void*>(dSlot),
                  static_cast<void*>(dRank), static_cast<void*>(dScale)})
    CK(cudaFree(p));
}

}  // namespace norm_shrink_check
