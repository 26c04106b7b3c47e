// Stand-alone check of the decode GEMV (native/cuda/gemv.cu) against a host reference: 1 to 4 tokens, N past the last whole block (and an odd N, so a warp of two rows has
// one past the end), K past the last whole round of pieces, padded leading dimensions,
// accumulating or not. With --bench it times Llama-8B's decode projections at 1 to 4 tokens,
// replayed from a CUDA graph behind a 2 us kernel (as the GEMV runs behind RMSNorm or SiLU), on
// the GEMV and on cuBLAS, with 4 copies of the weights so that no call finds them in L2.
//   nvcc -std=c++17 -gencode arch=compute_90a,code=sm_90a -O3 -Inative -Itest/gpu -o /tmp/gemv \
//        test/gpu/gemv_check.cu native/cuda/gemv.cu native/cuda/gemm.cc -lcublas && /tmp/gemv [--bench]
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "check_util.h"
#include "cuda/gemm.h"
#include "cuda/kernels.h"
#include "cuda/pdl.cuh"

using namespace kernel_check;
using namespace troupe::cuda;

namespace {

struct Case {
  int M, N, K, ld;
  bool accumulate;
};

int check(const Case& c, Rng& rng, cudaStream_t st) {
  std::vector<uint16_t> W(static_cast<size_t>(c.N) * c.ld), X(static_cast<size_t>(c.M) * c.ld);
  for (auto& v : W) v = toBf16(rng.sym());
  for (auto& v : X) v = toBf16(rng.sym());
  std::vector<float> Y0(static_cast<size_t>(c.M) * c.N);
  for (auto& v : Y0) v = c.accumulate ? rng.sym() : std::nanf("");
  // The reference in double; the bound: f32 rounding at each of a lane's adds (448 at K 14336),
  // against the sum of the products' magnitudes.
  std::vector<double> want(Y0.size()), bound(Y0.size());
  for (int m = 0; m < c.M; ++m) {
    for (int n = 0; n < c.N; ++n) {
      double sum = c.accumulate ? Y0[static_cast<size_t>(m) * c.N + n] : 0.0, mag = std::fabs(sum);
      for (int k = 0; k < c.K; ++k) {
        const double p = static_cast<double>(fromBf16(W[static_cast<size_t>(n) * c.ld + k])) *
                         fromBf16(X[static_cast<size_t>(m) * c.ld + k]);
        sum += p;
        mag += std::fabs(p);
      }
      want[static_cast<size_t>(m) * c.N + n] = sum;
      bound[static_cast<size_t>(m) * c.N + n] = 4e-5 * mag + 1e-6;
    }
  }
  auto* dW = reinterpret_cast<bf16_t*>(upload(W));
  auto* dX = reinterpret_cast<bf16_t*>(upload(X));
  float* dY = upload(Y0);
  CK(cudaMemcpyAsync(dY, Y0.data(), Y0.size() * 4, cudaMemcpyHostToDevice, st));
  gemv(dW, c.ld, dX, c.ld, dY, c.M, c.N, c.K, c.accumulate, st, true);
  CK(cudaGetLastError());
  std::vector<float> Y(Y0.size());
  CK(cudaMemcpyAsync(Y.data(), dY, Y.size() * 4, cudaMemcpyDeviceToHost, st));
  CK(cudaStreamSynchronize(st));
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < Y.size(); ++i) {
    const double err = std::fabs(Y[i] - want[i]) / bound[i];
    if (!(err <= worst)) worst = err, at = i;
  }
  const bool ok = worst <= 1.0;
  std::printf("%s M %d N %5d K %5d ld %5d %-10s worst %.3f of the bound%s\n", ok ? "ok  " : "FAIL", c.M, c.N, c.K,
              c.ld, c.accumulate ? "accumulate" : "write", worst,
              ok ? "" : (" at token " + std::to_string(at / c.N) + ", row " + std::to_string(at % c.N)).c_str());
  for (void* p : {static_cast<void*>(dW), static_cast<void*>(dX), static_cast<void*>(dY)}) cudaFree(p);
  return ok ? 0 : 1;
}

int checks() {
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  const Case cases[] = {
      {1, 4096, 4096, 4096, false}, {2, 1000, 2048, 2056, true},  {3, 257, 1032, 1040, true}, {4, 6144, 4096, 4096, false},
      {4, 4096, 14336, 14464, true}, {1, 63, 8, 8, false},        {3, 9, 264, 272, false},    {2, 130, 4104, 4104, true},
  };
  Rng rng{11};
  int failed = 0;
  for (const Case& c : cases) failed += check(c, rng, st);
  std::printf("%d failed\n", failed);
  return failed == 0 ? 0 : 1;
}

int bench() {
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s, %d SMs; us a call replayed from a CUDA graph behind a 2 us kernel, 4 copies of the weights\n",
              prop.name, prop.multiProcessorCount);
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  Gemm cublas(st);
  struct Shape {
    const char* name;
    int N, K;
    bool accumulate;
  };
  const Shape shapes[] = {
      {"q/k/v", 6144, 4096, false}, {"o", 4096, 4096, true}, {"gate/up", 28672, 4096, false}, {"down", 4096, 14336, true}};
  const int copies = 4, iters = 64, most = 4;
  float* Y = nullptr;
  bf16_t* X = nullptr;
  CK(cudaMalloc(&Y, static_cast<size_t>(most) * 28672 * 4));
  CK(cudaMemset(Y, 0, static_cast<size_t>(most) * 28672 * 4));
  CK(cudaMalloc(&X, static_cast<size_t>(most) * 14336 * 2));
  CK(cudaMemset(X, 0, static_cast<size_t>(most) * 14336 * 2));
  for (const Shape& s : shapes) {
    bf16_t* W = nullptr;
    const size_t wElems = static_cast<size_t>(s.N) * s.K;
    CK(cudaMalloc(&W, wElems * copies * 2));
    CK(cudaMemset(W, 0, wElems * copies * 2));
    auto before = [&](cudaStream_t s2) { shortKernel<<<prop.multiProcessorCount, 128, 0, s2>>>(); };
    auto timed = [&](auto&& call) { return graphCallUs(st, iters, before, call); };
    const double alone = timed([](int, cudaStream_t) {});
    for (int M = 1; M <= most; ++M) {
      std::printf("%-8s %d token(s) (%5.2f alone, %5.1f MB):", s.name, M, alone, wElems * 2 / 1e6);
      const double cb = timed([&](int i, cudaStream_t) {
        cublas.linear(M, s.N, s.K, W + (i % copies) * wElems, s.K, X, s.K, Y, ElemType::F32, 1, s.accumulate ? 1 : 0);
      });
      std::printf("  cuBLAS %6.2f", cb);
      const double us = timed([&](int i, cudaStream_t s2) {
        gemv(W + (i % copies) * wElems, s.K, X, s.K, Y, M, s.N, s.K, s.accumulate, s2, true);
      });
      std::printf("  GEMV %6.2f\n", us);
    }
    cudaFree(W);
  }
  cudaFree(X);
  cudaFree(Y);
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return checksOrBench(argc, argv, checks, bench); }
