// Stand-alone check of the gate/up GEMM with SiLU-and-mul (native/cuda/gate_up_gemm.cu) against a
// host reference: 1 to 32 tokens, one to three K parts and the balanced plan, padded leading
// dimensions, LoRA columns past a whole stage, split rows (paired padding stages and not), the
// GEMM's own LoRA shrink, and Llama-8B's shape against cuBLAS's sums. Every case runs three rounds
// back to back with programmatic launch and must give the same bits each round. With --bench it
// times Llama-8B's gate/up at 32 decode tokens, replayed from a CUDA graph behind a 2 us kernel (as
// behind the norm), against cuBLAS's GEMM followed by siluMul.
//   nvcc -std=c++17 -gencode arch=compute_90a,code=sm_90a -O3 -Inative -Itest/gpu -o /tmp/gugemm \
//        test/gpu/gate_up_gemm_check.cu native/cuda/gate_up_gemm.cu native/cuda/tensor_map.cc \
//        native/cuda/kernels.cu native/cuda/gemm.cc -lcublas -lcublasLt -lcuda && /tmp/gugemm [--bench]
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "check_util.h"
#include "cuda/gate_up_gemm.h"
#include "cuda/gemm.h"
#include "cuda/kernels.h"

using namespace kernel_check;
using namespace troupe::cuda;

namespace {

struct Case {
  int M, inter, K, pad, splits;
  bool byCublas;  // sums from cuBLAS (large shapes), else from the host
  int xK = 0;     // split rows: up's rows read features from xK on from a second row (X2)
};

double siluHost(double x) { return x / (1.0 + std::exp(-x)); }

int check(GateUpGemm& gemm, Gemm& cublas, const Case& c, bool paired, Rng& rng, cudaStream_t st) {
  const int ldw = c.K + c.pad, ldx = c.K + c.pad, ldAct = c.inter + c.pad;
  std::vector<uint16_t> W(static_cast<size_t>(2) * c.inter * ldw), X(static_cast<size_t>(c.M) * ldx);
  for (auto& v : W) v = toBf16(rng.sym());
  for (auto& v : X) v = toBf16(rng.sym());
  // X2's features below xK are NaN: both halves must read those from X.
  std::vector<uint16_t> X2(X.size());
  for (size_t i = 0; i < X2.size(); ++i) X2[i] = static_cast<int>(i % ldx) < c.xK ? kNaN16 : toBf16(rng.sym());
  auto xAt = [&](int m, int n, int k) {
    const size_t at = static_cast<size_t>(m) * ldx + k;
    return c.xK > 0 && n >= c.inter && k >= c.xK ? X2[at] : X[at];
  };
  std::vector<uint16_t> act0(static_cast<size_t>(c.M) * ldAct, kNaN16);
  bf16_t* dW = reinterpret_cast<bf16_t*>(upload(W));
  bf16_t* dX = reinterpret_cast<bf16_t*>(upload(X));
  bf16_t* dX2 = reinterpret_cast<bf16_t*>(upload(X2));
  bf16_t* dAct = reinterpret_cast<bf16_t*>(upload(act0));
  GateUpGemmArgs a;
  a.W = dW, a.ldw = ldw, a.X = dX, a.ldx = ldx, a.act = dAct, a.ldAct = ldAct, a.M = c.M, a.inter = c.inter, a.K = c.K;
  if (c.xK > 0) a.X2 = dX2, a.xK = c.xK;
  a.paired = paired;
  int bad = 0;
  if (!gemm.supports(a, c.splits)) {
    std::printf("FAIL M %d inter %d K %d splits %d: not supported\n", c.M, c.inter, c.K, c.splits);
    bad = 1;
  }
  // The sums, [token][gate's inter, then up's], and each sum's bound (its |products| added).
  std::vector<double> sums(static_cast<size_t>(c.M) * 2 * c.inter), bounds(sums.size());
  if (c.byCublas) {
    float* dY = nullptr;
    CK(cudaMalloc(&dY, sums.size() * 4));
    cublas.linear(c.M, 2 * c.inter, c.K, dW, ldw, dX, ldx, dY, ElemType::F32, 1, 0);
    std::vector<float> Y(sums.size());
    CK(cudaMemcpyAsync(Y.data(), dY, Y.size() * 4, cudaMemcpyDeviceToHost, st));
    CK(cudaStreamSynchronize(st));
    CK(cudaFree(dY));
    for (size_t i = 0; i < Y.size(); ++i) sums[i] = Y[i], bounds[i] = c.K / 4.0;  // |x w| averages 1/4
  } else {
    for (int m = 0; m < c.M; ++m)
      for (int n = 0; n < 2 * c.inter; ++n) {
        double s = 0, b = 0;
        for (int k = 0; k < c.K; ++k) {
          const double p = static_cast<double>(fromBf16(xAt(m, n, k))) * fromBf16(W[static_cast<size_t>(n) * ldw + k]);
          s += p, b += std::fabs(p);
        }
        sums[static_cast<size_t>(m) * 2 * c.inter + n] = s, bounds[static_cast<size_t>(m) * 2 * c.inter + n] = b;
      }
  }
  std::vector<uint16_t> first;
  for (int round = 0; round < 3 && !bad; ++round) {
    CK(cudaMemcpyAsync(dAct, act0.data(), act0.size() * 2, cudaMemcpyHostToDevice, st));
    gemm.run(a, c.splits, st, true);
    std::vector<uint16_t> act(act0.size());
    CK(cudaMemcpyAsync(act.data(), dAct, act.size() * 2, cudaMemcpyDeviceToHost, st));
    CK(cudaStreamSynchronize(st));
    if (round == 0) {
      first = act;
    } else if (std::memcmp(act.data(), first.data(), act.size() * 2) != 0) {
      std::printf("FAIL M %d inter %d K %d splits %d: round %d differs from the first\n", c.M, c.inter, c.K, c.splits,
                  round);
      bad = 1;
    }
  }
  double worst = 0;
  for (int m = 0; m < c.M && !bad; ++m)
    for (int n = 0; n < ldAct; ++n) {
      const uint16_t got = first[static_cast<size_t>(m) * ldAct + n];
      if (n >= c.inter) {
        // Past inter the row's padding stays as it was.
        if (got != kNaN16) {
          std::printf("FAIL M %d inter %d: token %d wrote column %d past inter\n", c.M, c.inter, m, n);
          bad = 1;
        }
        continue;
      }
      const size_t at = static_cast<size_t>(m) * 2 * c.inter;
      const double gs = sums[at + n], us = sums[at + c.inter + n];
      const double want = siluHost(gs) * us;
      // The sums' f32 error (a few ulps of their bounds) through silu' (at most 1.1) and the other
      // factor, and bf16's rounding of the result.
      const double tol =
          1e-5 * (bounds[at + n] * std::fabs(us) * 1.1 + bounds[at + c.inter + n] * std::fabs(siluHost(gs)) +
                  bounds[at + n] * bounds[at + c.inter + n] * 1e-5) +
          std::fabs(want) / 128 + 1e-6;
      const double err = std::fabs(fromBf16(got) - want);
      if (!(err <= tol)) {
        std::printf("FAIL M %d inter %d K %d splits %d: token %d feature %d: %g against %g\n", c.M, c.inter, c.K,
                    c.splits, m, n, fromBf16(got), want);
        bad = 1;
        break;
      }
      worst = std::max(worst, err / tol);
    }
  if (!bad)
    std::printf("ok   M %2d inter %5d K %5d pad %d splits %d xK %d%s: worst %.3f of the bound\n", c.M, c.inter, c.K,
                c.pad, c.splits, c.xK, c.xK > 0 && paired ? " paired" : "", worst);
  CK(cudaFree(dW));
  CK(cudaFree(dX));
  CK(cudaFree(dX2));
  CK(cudaFree(dAct));
  return bad;
}

// With LoRA: the GEMM makes the LoRA columns itself (slots x 2 modules of A rows over xK
// features; split rows or one block of both modules) and reads them in its last stages. Tokens of
// every slot and of none, ranks below the max, three rounds bit-equal, and the columns it wrote
// checked as well as act.
struct LoraCase {
  int M, inter, xK, slots, rank, splits, loraParts;
  bool split;
};

int checkLora(GateUpGemm& gemm, const LoraCase& c, bool paired, Rng& rng, cudaStream_t st) {
  const int modules = 2, rows = c.slots * modules * c.rank, cols = c.split ? rows / 2 : rows, K = c.xK + cols;
  const int ldw = K + 8, ldx = K + 8, ldAct = c.inter;
  constexpr int kPitch = 7, kGate = 4;  // the pool's ranks, [slot][module]; gate's index
  std::vector<uint16_t> W(static_cast<size_t>(2) * c.inter * ldw), A(static_cast<size_t>(rows) * c.xK);
  for (auto& v : W) v = toBf16(rng.sym());
  for (auto& v : A) v = toBf16(rng.sym() * 0.25f);
  // Token rows: x then NaN in the columns the GEMM writes (X2's x part NaN too: never read).
  std::vector<uint16_t> X(static_cast<size_t>(c.M) * ldx, kNaN16), X2(X.size(), kNaN16);
  for (int m = 0; m < c.M; ++m)
    for (int k = 0; k < c.xK; ++k) X[static_cast<size_t>(m) * ldx + k] = toBf16(rng.sym());
  std::vector<int32_t> slot(c.M), ranks(static_cast<size_t>(c.slots) * kPitch, 0);
  std::vector<float> scaling(c.slots);
  for (int m = 0; m < c.M; ++m) slot[m] = m % (c.slots + 1) - 1;  // -1: no adapter
  for (int k = 0; k < c.slots; ++k) {
    scaling[k] = 0.5f + k;
    for (int j = 0; j < modules; ++j) ranks[k * kPitch + kGate + j] = (k + j) % 2 ? c.rank : c.rank / 2;
  }
  // The columns, [token][module][slot][rank] as bf16 (host sums in double), then the sums.
  std::vector<uint16_t> col(static_cast<size_t>(c.M) * rows, 0);
  for (int m = 0; m < c.M; ++m)
    for (int row = 0; row < rows; ++row) {
      const int k = row / (modules * c.rank), j = row / c.rank % modules, r = row % c.rank;
      if (slot[m] != k || r >= ranks[k * kPitch + kGate + j]) continue;
      double sum = 0;
      for (int f = 0; f < c.xK; ++f)
        sum += static_cast<double>(fromBf16(X[static_cast<size_t>(m) * ldx + f])) *
               fromBf16(A[static_cast<size_t>(row) * c.xK + f]);
      col[static_cast<size_t>(m) * rows + j * (rows / 2) + k * c.rank + r] =
          toBf16(static_cast<float>(sum * scaling[k]));
    }
  // Row n's LoRA column c for token m: with split rows gate's rows read module 0's block, up's
  // module 1's; else every row reads both blocks.
  auto colOf = [&](int m, int n, int cc) {
    const int j = c.split ? (n >= c.inter ? 1 : 0) : 0;
    return fromBf16(col[static_cast<size_t>(m) * rows + j * (rows / 2) + cc]);
  };
  std::vector<double> sums(static_cast<size_t>(c.M) * 2 * c.inter), bounds(sums.size()), slack(sums.size());
  for (int m = 0; m < c.M; ++m)
    for (int n = 0; n < 2 * c.inter; ++n) {
      double s = 0, b = 0, sl = 0;
      const uint16_t* w = &W[static_cast<size_t>(n) * ldw];
      for (int k = 0; k < c.xK; ++k) {
        const double p = static_cast<double>(fromBf16(X[static_cast<size_t>(m) * ldx + k])) * fromBf16(w[k]);
        s += p, b += std::fabs(p);
      }
      for (int cc = 0; cc < cols; ++cc) {
        const double p = static_cast<double>(colOf(m, n, cc)) * fromBf16(w[c.xK + cc]);
        s += p, b += std::fabs(p), sl += std::fabs(p) / 128;  // a column a bf16 step apart
      }
      const size_t at = static_cast<size_t>(m) * 2 * c.inter + n;
      sums[at] = s, bounds[at] = b, slack[at] = sl;
    }
  bf16_t* dW = reinterpret_cast<bf16_t*>(upload(W));
  bf16_t* dA = reinterpret_cast<bf16_t*>(upload(A));
  bf16_t* dX = reinterpret_cast<bf16_t*>(upload(X));
  bf16_t* dX2 = reinterpret_cast<bf16_t*>(upload(X2));
  std::vector<uint16_t> act0(static_cast<size_t>(c.M) * ldAct, kNaN16);
  bf16_t* dAct = reinterpret_cast<bf16_t*>(upload(act0));
  int32_t* dSlot = upload(slot);
  int32_t* dRanks = upload(ranks);
  float* dScaling = upload(scaling);
  GateUpGemmArgs a;
  a.W = dW, a.ldw = ldw, a.X = dX, a.X2 = c.split ? dX2 : nullptr, a.ldx = ldx, a.act = dAct, a.ldAct = ldAct;
  a.M = c.M, a.inter = c.inter, a.K = K, a.xK = c.xK, a.loraParts = c.loraParts, a.paired = paired;
  DecodeGemmLora& l = a.lora;
  l.A = dA, l.lda = c.xK, l.rows = rows, l.maxRank = c.rank, l.rowSlot = dSlot, l.ranks = dRanks;
  l.rankPitch = kPitch, l.module = kGate, l.scaling = dScaling, l.modules = modules;
  char what[160];
  std::snprintf(what, sizeof what, "LoRA M %d inter %d xK %d slots %d rank %d splits %d parts %d %s", c.M, c.inter,
                c.xK, c.slots, c.rank, c.splits, c.loraParts,
                c.split ? (paired ? "split rows paired" : "split rows") : "one block");
  int bad = 0;
  if (!gemm.supports(a, c.splits)) {
    std::printf("FAIL %s: not supported\n", what);
    bad = 1;
  }
  std::vector<uint16_t> first, gotX(X.size()), gotX2(X.size());
  for (int round = 0; round < 3 && !bad; ++round) {
    CK(cudaMemcpyAsync(dAct, act0.data(), act0.size() * 2, cudaMemcpyHostToDevice, st));
    CK(cudaMemcpyAsync(dX, X.data(), X.size() * 2, cudaMemcpyHostToDevice, st));
    CK(cudaMemcpyAsync(dX2, X2.data(), X2.size() * 2, cudaMemcpyHostToDevice, st));
    gemm.run(a, c.splits, st, true);
    std::vector<uint16_t> act(act0.size());
    CK(cudaMemcpyAsync(act.data(), dAct, act.size() * 2, cudaMemcpyDeviceToHost, st));
    CK(cudaMemcpyAsync(gotX.data(), dX, X.size() * 2, cudaMemcpyDeviceToHost, st));
    CK(cudaMemcpyAsync(gotX2.data(), dX2, X.size() * 2, cudaMemcpyDeviceToHost, st));
    CK(cudaStreamSynchronize(st));
    if (round == 0) {
      first = act;
    } else if (std::memcmp(act.data(), first.data(), act.size() * 2) != 0) {
      std::printf("FAIL %s: round %d differs from the first\n", what, round);
      bad = 1;
    }
  }
  // The columns it wrote: the host's, or one bf16 step from them.
  for (int m = 0; m < c.M && !bad; ++m)
    for (int cc = 0; cc < rows && !bad; ++cc) {
      const int j = cc / (rows / 2), within = cc % (rows / 2);
      const uint16_t got = c.split ? (j ? gotX2 : gotX)[static_cast<size_t>(m) * ldx + c.xK + within]
                                   : gotX[static_cast<size_t>(m) * ldx + c.xK + cc];
      const float want = fromBf16(col[static_cast<size_t>(m) * rows + cc]), g = fromBf16(got);
      if (!(std::fabs(g - want) <= std::fabs(want) / 128)) {
        std::printf("FAIL %s: token %d (slot %d) column %d: %g against %g\n", what, m, slot[m], cc, g, want);
        bad = 1;
      }
    }
  double worst = 0;
  for (int m = 0; m < c.M && !bad; ++m)
    for (int n = 0; n < c.inter; ++n) {
      const size_t at = static_cast<size_t>(m) * 2 * c.inter;
      const double gs = sums[at + n], us = sums[at + c.inter + n], want = siluHost(gs) * us;
      const double tol =
          (1e-5 * bounds[at + n] + slack[at + n]) * std::fabs(us) * 1.1 +
          (1e-5 * bounds[at + c.inter + n] + slack[at + c.inter + n]) * std::fabs(siluHost(gs)) +
          (1e-5 * bounds[at + n] + slack[at + n]) * (1e-5 * bounds[at + c.inter + n] + slack[at + c.inter + n]) +
          std::fabs(want) / 128 + 1e-6;
      const double err = std::fabs(fromBf16(first[static_cast<size_t>(m) * ldAct + n]) - want);
      if (!(err <= tol)) {
        std::printf("FAIL %s: token %d feature %d: %g against %g\n", what, m, n,
                    fromBf16(first[static_cast<size_t>(m) * ldAct + n]), want);
        bad = 1;
      }
      worst = std::max(worst, err / tol);
    }
  if (!bad) std::printf("ok   %s: worst %.3f of the bound\n", what, worst);
  for (void* p :
       {static_cast<void*>(dW), static_cast<void*>(dA), static_cast<void*>(dX), static_cast<void*>(dX2),
        static_cast<void*>(dAct), static_cast<void*>(dSlot), static_cast<void*>(dRanks), static_cast<void*>(dScaling)})
    CK(cudaFree(p));
  return bad;
}

int checks() {
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  if (!GateUpGemm::available()) {
    std::printf("FAIL the gate/up GEMM is not available on %s\n", prop.name);
    return 1;
  }
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  GateUpGemm gemm(prop.multiProcessorCount);
  Gemm cublas(st);
  Rng rng{7};
  // More units than blocks (1,024 / 32 tiles x 2 parts over 132), a unit a block, a token alone,
  // three parts of an odd stage count, padded rows; K past a whole stage (LoRA columns); split
  // rows (one and two padding stages a half, 8 slots of rank 16 and of rank 64 at 1,024
  // features); then Llama-8B's shape; the balanced plan (splits 0), which splits the tiles of a
  // small shape over every block.
  const Case cases[] = {
      {32, 4096, 1024, 0, 2, false},       {32, 512, 1024, 0, 1, false},      {1, 256, 512, 0, 2, false},
      {7, 1024, 1792, 8, 3, false},        {32, 64, 256, 0, 1, false},        {32, 1024, 1088, 0, 2, false},
      {32, 1024, 1152, 0, 2, false, 1024}, {9, 512, 1536, 8, 3, false, 1024}, {32, 14336, 4096, 0, 2, true},
      {20, 14336, 4096, 0, 1, true},       {32, 14336, 4096, 0, 0, true},     {7, 1024, 1792, 8, 0, false},
      {32, 1024, 1152, 0, 0, false, 1024}};
  int failed = 0;
  // Split rows' cases both with paired padding stages and without.
  for (const Case& c : cases)
    for (bool paired : {true, false})
      if (paired || c.xK > 0) failed += check(gemm, cublas, c, paired, rng, st);
  // Split rows and one block; one and several A parts; more A tiles than one (8 slots of rank 64:
  // 16); one weight part and two, and the balanced plan (splits 0), Llama-8B's shape at rank 16
  // among them.
  const LoraCase loraCases[] = {{32, 1024, 1024, 8, 16, 1, 4, true}, {32, 1024, 1024, 8, 16, 2, 1, false},
                                {13, 512, 2048, 8, 64, 1, 4, true},  {32, 2048, 1024, 4, 32, 1, 3, true},
                                {1, 256, 512, 2, 16, 2, 2, false},   {32, 2048, 1024, 4, 32, 0, 3, true},
                                {13, 512, 2048, 8, 64, 0, 4, true},  {32, 14336, 4096, 8, 16, 0, 4, true}};
  for (const LoraCase& c : loraCases)
    for (bool paired : {true, false})
      if (paired || c.split) failed += checkLora(gemm, c, paired, rng, st);
  std::printf("%d failed\n", failed);
  return failed > 0 ? 1 : 0;
}

int bench() {
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf(
      "%s, %d SMs; 32 tokens; us a call replayed from a CUDA graph behind a 2 us kernel, 4 copies of the "
      "weights\n",
      prop.name, prop.multiProcessorCount);
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  Gemm cublas(st);
  GateUpGemm gemm(prop.multiProcessorCount);
  const int T = 32, inter = 14336, K = 4096, copies = 4, iters = 64;
  const size_t wElems = static_cast<size_t>(2) * inter * K;
  bf16_t *W = nullptr, *X = nullptr, *act = nullptr;
  float* gu = nullptr;
  CK(cudaMalloc(&W, wElems * copies * 2));
  noiseBf16Kernel<<<1024, 256>>>(reinterpret_cast<uint16_t*>(W), wElems * copies, 1, 0.05f);
  CK(cudaMalloc(&X, static_cast<size_t>(T) * K * 2));
  noiseBf16Kernel<<<64, 256>>>(reinterpret_cast<uint16_t*>(X), static_cast<size_t>(T) * K, 2, 1.0f);
  CK(cudaMalloc(&act, static_cast<size_t>(T) * inter * 2));
  CK(cudaMalloc(&gu, static_cast<size_t>(T) * 2 * inter * 4));
  CK(cudaDeviceSynchronize());
  auto before = [&](cudaStream_t s) { shortKernel<<<prop.multiProcessorCount, 128, 0, s>>>(); };
  const double alone = graphCallUs(st, iters, before, [](int, cudaStream_t) {});
  const double cb = graphCallUs(st, iters, before, [&](int i, cudaStream_t s) {
    cublas.linear(T, 2 * inter, K, W + (i % copies) * wElems, K, X, K, gu, ElemType::F32, 1, 0);
    siluMul(gu, act, T, inter, s, inter);
  });
  const double cbGemm = graphCallUs(st, iters, before, [&](int i, cudaStream_t s) {
    (void)s;
    cublas.linear(T, 2 * inter, K, W + (i % copies) * wElems, K, X, K, gu, ElemType::F32, 1, 0);
  });
  std::printf("the 2 us kernel alone %6.2f; cuBLAS and siluMul %6.2f (cuBLAS alone %6.2f)\n", alone, cb, cbGemm);
  for (int splits : {0, 1, 2, 3, 4}) {
    GateUpGemmArgs a;
    a.W = W, a.ldw = K, a.X = X, a.ldx = K, a.act = act, a.ldAct = inter, a.M = T, a.inter = inter, a.K = K;
    gemm.run(a, splits, st, false);  // its workspace, before the capture
    CK(cudaStreamSynchronize(st));
    const double ours = graphCallUs(st, iters, before, [&](int i, cudaStream_t s) {
      a.W = W + (i % copies) * wElems;
      gemm.run(a, splits, s, true);
    });
    if (splits == 0) {
      std::printf("ours, balanced: %6.2f\n", ours);
    } else {
      std::printf("ours, %d part%s: %6.2f\n", splits, splits > 1 ? "s" : "", ours);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return checksOrBench(argc, argv, checks, bench); }
