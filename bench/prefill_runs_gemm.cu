// A prefill's projections over the fused LoRA layout (native/cuda/lora_fused.h), Llama-3.1-8B
// shapes, 8 sequences of 512 tokens each on its own adapter of a pool of 8 slots: every token's
// row carries every slot's LoRA columns, zero but for its own, so the one GEMM over [x | pad] does
// 8x the LoRA products the tokens need (at rank 64 about a tenth more than the base GEMM). Since a
// run's slot k owns columns in + j S R + k R .. + R, the run's products need only the prefix of
// its row through them: K = in + j S R + (k + 1) R. This times, per projection group:
//   padded   the engine's way: one GEMM (or batch of split rows' pieces) over in + pad columns
//   grouped  one cublasGemmGroupedBatchedEx over every run's products, each with its own K
//   streams  the same products as separate cublasGemmEx calls on four streams
//   fixed    equal products of in + S R / 2 columns (what a two-sided layout would allow)
//   own      one GEMM over in + R columns (the tokens' own products only: the lower bound)
//   base     one GEMM over in columns (no adapters)
// and then the shrink by chunks before those GEMMs (each 512-token run against its own slot's A
// rows, one pointer-batched GEMM a group) with the rank or the tokens on the GEMM's long side.
// Weights and inputs hold seeded random values in [-1/32, 1/32).
//
//   nvcc -std=c++17 -arch=sm_90a -O2 -o /tmp/prefill_runs_gemm bench/prefill_runs_gemm.cu -lcublas
//   /tmp/prefill_runs_gemm > out.json
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <vector>

#include "cuda_bench.cuh"

namespace {

using bench::check;
using bench::fillRandom;
using bench::freeAll;

// Mean microseconds of one call over 20, after 5 to warm up.
template <typename F>
float timeCalls(F&& call) {
  return bench::timeCalls(call, 20) * 1000;
}

// One product as cuBLAS sees it (column-major): C [m][n] = W^T . X with W's rows of k features.
struct Product {
  int m, n, k;
  const __nv_bfloat16* w;
  const __nv_bfloat16* x;
  void* c;
};

struct Group {
  const char* name;
  std::vector<int> rows;  // each module's weight rows
  int in;
  bool split;     // a row per module, each module's block alone in its padding
  bool residual;  // f32 output added to (o, down), else bf16
};

int gcdAll(const std::vector<int>& v) {
  return std::accumulate(v.begin(), v.end(), 0, [](int a, int b) { return std::gcd(a, b); });
}

}  // namespace

int main() {
  const int S = 8, runs = 8, runRows = 512, T = runs * runRows;
  const Group groups[] = {{"qkv", {4096, 1024, 1024}, 4096, false, false},
                          {"o", {4096}, 4096, false, true},
                          {"gate_up", {14336, 14336}, 4096, true, false},
                          {"down", {4096}, 14336, false, true}};
  cublasHandle_t h;
  check(cublasCreate(&h), "cublasCreate");
  void* ws;
  check(cudaMalloc(&ws, 64 << 20), "cudaMalloc");
  check(cublasSetWorkspace(h, ws, 64 << 20), "cublasSetWorkspace");
  cudaStream_t streams[4];
  for (auto& s : streams) cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  cudaEvent_t fork, joins[4];
  cudaEventCreateWithFlags(&fork, cudaEventDisableTiming);
  for (auto& e : joins) cudaEventCreateWithFlags(&e, cudaEventDisableTiming);
  std::printf("{\"tokens\": %d, \"runs\": %d, \"slots\": %d, \"rows\": [\n", T, runs, S);
  bool first = true;
  for (int R : {16, 64}) {
    for (Group g : groups) {
      // q/k/v take split rows from S R >= 256, as the engine does.
      if (g.rows.size() == 3 && S * R >= 256) g.split = true;
      const int mods = static_cast<int>(g.rows.size()), blocks = g.split ? 1 : mods, pad = blocks * S * R,
                ld = g.in + pad;
      int N = 0;
      for (int r : g.rows) N += r;
      const int xRows = g.split ? mods : 1;
      __nv_bfloat16 *W, *X;
      void* Y;
      const size_t yBytes = static_cast<size_t>(T) * N * (g.residual ? 4 : 2);
      check(cudaMalloc(&W, static_cast<size_t>(N) * ld * 2), "cudaMalloc W");
      check(cudaMalloc(&X, static_cast<size_t>(xRows) * T * ld * 2), "cudaMalloc X");
      check(cudaMalloc(&Y, yBytes), "cudaMalloc Y");
      fillRandom<<<1024, 256>>>(W, static_cast<size_t>(N) * ld, 1);
      fillRandom<<<1024, 256>>>(X, static_cast<size_t>(xRows) * T * ld, 2);
      cudaMemset(Y, 0, yBytes);
      const cudaDataType_t yType = g.residual ? CUDA_R_32F : CUDA_R_16BF;
      const size_t yElem = g.residual ? 4 : 2;
      const float alpha = 1, beta = g.residual ? 1.0f : 0.0f;
      const size_t slicePitch = static_cast<size_t>(T) * ld;
      // The products of one form: for each module's pieces (split rows: pieces of the rows' gcd so
      // that the engine's batched form has equal products) against token rows [t0, t0 + n).
      const int piece = g.split ? gcdAll(g.rows) : 0;
      auto products = [&](int t0, int n, auto kOf) {
        std::vector<Product> p;
        int row0 = 0;
        for (int j = 0; j < mods; ++j) {
          const int k = kOf(j);
          const __nv_bfloat16* x = X + (g.split ? j * slicePitch : 0) + static_cast<size_t>(t0) * ld;
          const int step = g.split ? piece : g.rows[j];
          for (int r = row0; r < row0 + g.rows[j]; r += step)
            p.push_back({step, n, k, W + static_cast<size_t>(r) * ld, x,
                         static_cast<char*>(Y) + (static_cast<size_t>(t0) * N + r) * yElem});
          row0 += g.rows[j];
        }
        return p;
      };
      auto one = [&](const Product& p, cudaStream_t st) {
        cublasSetStream(h, st);
        check(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, p.m, p.n, p.k, &alpha, p.w, CUDA_R_16BF, ld, p.x, CUDA_R_16BF,
                           ld, &beta, p.c, yType, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              "cublasGemmEx");
      };
      void** dPtrs;
      check(cudaMalloc(&dPtrs, 3 * 4096 * sizeof(void*)), "cudaMalloc ptrs");
      const auto padded = products(0, T, [&](int) { return ld; });
      const auto base = products(0, T, [&](int) { return g.in; });
      const auto own = products(0, T, [&](int) { return g.in + R; });
      std::vector<Product> runsK, fixed;
      auto add = [](std::vector<Product>& to, const std::vector<Product>& from) {
        to.insert(to.end(), from.begin(), from.end());
      };
      for (int r = 0; r < runs; ++r) {
        const int slot = r;  // every run on its own slot, slots 0..7
        add(runsK,
            products(r * runRows, runRows, [&](int j) { return g.in + (g.split ? 0 : j * S * R) + (slot + 1) * R; }));
        add(fixed, products(r * runRows, runRows, [&](int j) { return g.in + (g.split ? 0 : j * S * R) + S * R / 2; }));
      }
      auto runAll = [&](const std::vector<Product>& ps) {
        // The engine's batched form for equal products (split rows), one call each otherwise.
        bool equal = true;
        for (const Product& p : ps) equal = equal && p.m == ps[0].m && p.k == ps[0].k && p.n == ps[0].n;
        if (equal && ps.size() > 1) {
          std::vector<const void*> host;
          for (const Product& p : ps) host.push_back(p.w);
          for (const Product& p : ps) host.push_back(p.x);
          for (const Product& p : ps) host.push_back(p.c);
          check(cudaMemcpy(dPtrs, host.data(), host.size() * sizeof(void*), cudaMemcpyHostToDevice), "ptrs");
          const int b = static_cast<int>(ps.size());
          const Product p0 = ps[0];
          return timeCalls([&] {
            cublasSetStream(h, 0);
            check(cublasGemmBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, p0.m, p0.n, p0.k, &alpha, (const void* const*)dPtrs,
                                      CUDA_R_16BF, ld, (const void* const*)(dPtrs + b), CUDA_R_16BF, ld, &beta,
                                      (void* const*)(dPtrs + 2 * b), yType, N, b, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT),
                  "cublasGemmBatchedEx");
          });
        }
        return timeCalls([&] {
          for (const Product& p : ps) one(p, 0);
        });
      };
      const float tPadded = runAll(padded), tBase = runAll(base), tOwn = runAll(own), tFixed = runAll(fixed);
      // The base projection as one GEMM over all of the group's rows (a step without adapters), its
      // rows ld apart as in the padded weight, and as in an unpadded one.
      auto whole = [&](int k, int lda) {
        return timeCalls([&] {
          cublasSetStream(h, 0);
          check(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, N, T, k, &alpha, W, CUDA_R_16BF, lda, X, CUDA_R_16BF, lda,
                             &beta, Y, yType, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                "cublasGemmEx");
        });
      };
      const float tWholeBase = whole(g.in, ld), tWholeTight = whole(g.in, g.in), tWholePadded = whole(ld, ld);
      const float tStreams = timeCalls([&] {
        cudaEventRecord(fork, 0);
        for (int s = 0; s < 4; ++s) cudaStreamWaitEvent(streams[s], fork, 0);
        for (size_t i = 0; i < runsK.size(); ++i) one(runsK[i], streams[i % 4]);
        for (int s = 0; s < 4; ++s) {
          cudaEventRecord(joins[s], streams[s]);
          cudaStreamWaitEvent(0, joins[s], 0);
        }
      });
      cublasSetStream(h, 0);
      // Grouped: products of equal (m, n, k) share a group.
      std::vector<int> gm, gn, gk, gsize, glda, gldb, gldc;
      std::vector<cublasOperation_t> ta, tb;
      std::vector<float> galpha, gbeta;
      std::vector<const void*> pa, pb;
      std::vector<void*> pc;
      {
        std::vector<bool> taken(runsK.size(), false);
        for (size_t i = 0; i < runsK.size(); ++i) {
          if (taken[i]) continue;
          int count = 0;
          for (size_t j = i; j < runsK.size(); ++j) {
            const Product& p = runsK[j];
            if (taken[j] || p.m != runsK[i].m || p.n != runsK[i].n || p.k != runsK[i].k) continue;
            taken[j] = true;
            pa.push_back(p.w);
            pb.push_back(p.x);
            pc.push_back(p.c);
            ++count;
          }
          gm.push_back(runsK[i].m);
          gn.push_back(runsK[i].n);
          gk.push_back(runsK[i].k);
          gsize.push_back(count);
          glda.push_back(ld);
          gldb.push_back(ld);
          gldc.push_back(N);
          ta.push_back(CUBLAS_OP_T);
          tb.push_back(CUBLAS_OP_N);
          galpha.push_back(alpha);
          gbeta.push_back(beta);
        }
      }
      const int total = static_cast<int>(pa.size());
      std::vector<const void*> host;
      host.insert(host.end(), pa.begin(), pa.end());
      host.insert(host.end(), pb.begin(), pb.end());
      host.insert(host.end(), pc.begin(), pc.end());
      check(cudaMemcpy(dPtrs, host.data(), host.size() * sizeof(void*), cudaMemcpyHostToDevice), "ptrs");
      int groupStatus = 0;
      float tGrouped = -1;
      groupStatus = cublasGemmGroupedBatchedEx(h, ta.data(), tb.data(), gm.data(), gn.data(), gk.data(), galpha.data(),
                                               (const void* const*)dPtrs, CUDA_R_16BF, glda.data(),
                                               (const void* const*)(dPtrs + total), CUDA_R_16BF, gldb.data(),
                                               gbeta.data(), (void* const*)(dPtrs + 2 * total), yType, gldc.data(),
                                               static_cast<int>(gm.size()), gsize.data(), CUBLAS_COMPUTE_32F);
      if (groupStatus == 0) {
        tGrouped = timeCalls([&] {
          cublasGemmGroupedBatchedEx(h, ta.data(), tb.data(), gm.data(), gn.data(), gk.data(), galpha.data(),
                                     (const void* const*)dPtrs, CUDA_R_16BF, glda.data(),
                                     (const void* const*)(dPtrs + total), CUDA_R_16BF, gldb.data(), gbeta.data(),
                                     (void* const*)(dPtrs + 2 * total), yType, gldc.data(), static_cast<int>(gm.size()),
                                     gsize.data(), CUBLAS_COMPUTE_32F);
        });
      }
      check(cudaGetLastError(), "kernels");
      std::printf(
          "%s{\"rank\": %d, \"group\": \"%s\", \"split\": %s, \"K\": %d, \"paddedUs\": %.1f, \"groupedUs\": %.1f, "
          "\"groupedStatus\": %d, \"groups\": %d, \"streamsUs\": %.1f, \"fixedUs\": %.1f, \"ownUs\": %.1f, "
          "\"baseUs\": %.1f, \"wholeBaseUs\": %.1f, \"wholeTightUs\": %.1f, \"wholePaddedUs\": %.1f}",
          first ? "" : ",\n", R, g.name, g.split ? "true" : "false", ld, tPadded, tGrouped, groupStatus,
          static_cast<int>(gm.size()), tStreams, tFixed, tOwn, tBase, tWholeBase, tWholeTight, tWholePadded);
      std::fflush(stdout);
      first = false;
      freeAll({W, X, Y, dPtrs});
    }
  }
  // The shrink by chunks (the engine's prefill shrink): each 512-token chunk against its own slot's
  // A rows, one pointer-batched GEMM a group over chunks x slices, with the rank on the GEMM's long
  // side (m = rank, n = tokens) or the tokens (m = tokens, n = rank; mid written rank by rank).
  std::printf("\n], \"shrinks\": [\n");
  first = true;
  for (int R : {16, 64}) {
    struct Shrink {
      const char* name;
      int in, count;  // input features, slices (modules) of the group
    };
    for (const Shrink& sh :
         {Shrink{"qkv", 4096, 3}, Shrink{"o", 4096, 1}, Shrink{"gate_up", 4096, 2}, Shrink{"down", 14336, 1}}) {
      const int in = sh.in, count = sh.count;
      __nv_bfloat16 *A, *X;
      float* mid;
      check(cudaMalloc(&A, static_cast<size_t>(count) * S * R * in * 2), "cudaMalloc A");
      check(cudaMalloc(&X, static_cast<size_t>(T) * in * 2), "cudaMalloc X");
      check(cudaMalloc(&mid, static_cast<size_t>(T) * count * R * 4), "cudaMalloc mid");
      fillRandom<<<1024, 256>>>(A, static_cast<size_t>(count) * S * R * in, 3);
      fillRandom<<<1024, 256>>>(X, static_cast<size_t>(T) * in, 4);
      const int b = runs * count;
      void** dPtrs;
      check(cudaMalloc(&dPtrs, 3 * b * sizeof(void*)), "cudaMalloc ptrs");
      const float alpha = 1, beta = 0;
      float us[2];
      for (int tokensLong = 0; tokensLong < 2; ++tokensLong) {
        std::vector<const void*> host(3 * b);
        for (int c = 0; c < runs; ++c)
          for (int j = 0; j < count; ++j) {
            const int e = c * count + j, slot = c;
            host[e] = A + (static_cast<size_t>(j) * S + slot) * R * in;
            host[b + e] = X + static_cast<size_t>(c) * runRows * in;
            host[2 * b + e] = tokensLong ? mid + static_cast<size_t>(j) * R * T + c * runRows
                                         : mid + static_cast<size_t>(c) * runRows * count * R + j * R;
          }
        check(cudaMemcpy(dPtrs, host.data(), host.size() * sizeof(void*), cudaMemcpyHostToDevice), "ptrs");
        const void* const* pa = const_cast<const void* const*>(dPtrs);
        us[tokensLong] = timeCalls([&] {
          cublasSetStream(h, 0);
          if (tokensLong) {
            check(cublasGemmBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, runRows, R, in, &alpha, pa + b, CUDA_R_16BF, in, pa,
                                      CUDA_R_16BF, in, &beta, dPtrs + 2 * b, CUDA_R_32F, T, b, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT),
                  "cublasGemmBatchedEx");
          } else {
            check(cublasGemmBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, R, runRows, in, &alpha, pa, CUDA_R_16BF, in, pa + b,
                                      CUDA_R_16BF, in, &beta, dPtrs + 2 * b, CUDA_R_32F, count * R, b,
                                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                  "cublasGemmBatchedEx");
          }
        });
      }
      check(cudaGetLastError(), "kernels");
      std::printf("%s{\"rank\": %d, \"group\": \"%s\", \"products\": %d, \"rankLongUs\": %.1f, \"tokensLongUs\": %.1f}",
                  first ? "" : ",\n", R, sh.name, b, us[0], us[1]);
      std::fflush(stdout);
      first = false;
      freeAll({A, X, mid, dPtrs});
    }
  }
  std::printf("\n]}\n");
  return 0;
}
