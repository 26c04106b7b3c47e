// What the stand-alone kernel checks share (attention_check.cu, lora_mma_check.cu and its
// benchmark): error checks, seeded values, bf16 rounding and uploads.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cuda/pdl.cuh"

namespace kernel_check {

#define CK(x)                                                                                  \
  do {                                                                                         \
    const cudaError_t e_ = (x);                                                                \
    if (e_ != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(2);                                                                            \
    }                                                                                          \
  } while (0)

struct Rng {
  uint64_t s;
  double uni() {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<double>(s >> 11) * (1.0 / 9007199254740992.0);
  }
  float sym() { return static_cast<float>(2 * uni() - 1); }
};

// Round to nearest even (finite inputs).
inline uint16_t toBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float fromBf16(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
constexpr uint16_t kNaN16 = 0x7fc0;

template <class T>
T* upload(const std::vector<T>& h) {
  T* d = nullptr;
  CK(cudaMalloc(&d, std::max<size_t>(h.size(), 1) * sizeof(T)));
  if (!h.empty()) CK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

// Microseconds per call of call(i) over `iters` calls, after `warmup` untimed ones (i counts
// from 0 across both).
template <typename F>
double timeCalls(int warmup, int iters, F&& call) {
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  for (int i = 0; i < warmup + iters; ++i) {
    if (i == warmup) CK(cudaEventRecord(e0));
    call(i);
  }
  CK(cudaEventRecord(e1));
  CK(cudaEventSynchronize(e1));
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, e0, e1));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return 1000.0 * ms / iters;
}

// Median milliseconds of replaying, as one CUDA graph, what capture(st) enqueues on st: `reps`
// timed replays after `warmup` untimed ones.
template <typename F>
float graphMs(cudaStream_t st, F&& capture, int warmup, int reps) {
  cudaGraph_t graph;
  CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  capture(st);
  CK(cudaStreamEndCapture(st, &graph));
  cudaGraphExec_t exec;
  CK(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  std::vector<float> ms;
  for (int rep = 0; rep < warmup + reps; ++rep) {
    CK(cudaEventRecord(e0, st));
    CK(cudaGraphLaunch(exec, st));
    CK(cudaEventRecord(e1, st));
    CK(cudaEventSynchronize(e1));
    float t = 0;
    CK(cudaEventElapsedTime(&t, e0, e1));
    if (rep >= warmup) ms.push_back(t);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Microseconds per call of call(i, st) when `iters` calls are replayed from one CUDA graph on st,
// as the engine replays a decode step: no launch costs but the graph's own gaps between kernels.
template <typename F>
double timeGraph(int iters, F&& call) {
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  const float ms = graphMs(
      st,
      [&](cudaStream_t s) {
        for (int i = 0; i < iters; ++i) call(i, s);
      },
      1, 5);
  cudaStreamDestroy(st);
  return 1000.0 * ms / iters;
}

// Values within +-scale from a hash of each index, on the device, for benchmarks: buffers of zeros
// can run faster than a model's values (less switching in the DRAM and the tensor cores).
__device__ inline float noiseAt(size_t i, uint32_t seed, float scale) {
  uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed ^ static_cast<uint32_t>(i >> 32) * 40503u;
  h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
  return (static_cast<float>(h & 0xffffu) / 32768.0f - 1.0f) * scale;
}
static __global__ void noiseBf16Kernel(uint16_t* p, size_t n, uint32_t seed, float scale) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    p[i] = static_cast<uint16_t>(__float_as_uint(noiseAt(i, seed, scale)) >> 16);
}
static __global__ void noiseF32Kernel(float* p, size_t n, uint32_t seed, float scale) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    p[i] = noiseAt(i, seed, scale);
}
inline void fillNoise(uint16_t* p, size_t n, uint32_t seed, float scale) {
  noiseBf16Kernel<<<1024, 256>>>(p, n, seed, scale);
  CK(cudaDeviceSynchronize());
}
inline void fillNoise(float* p, size_t n, uint32_t seed, float scale) {
  noiseF32Kernel<<<1024, 256>>>(p, n, seed, scale);
  CK(cudaDeviceSynchronize());
}

// A kernel of about 2 us (as a grid of SM-count blocks of 128) that lets the next one start early,
// like the norm before a projection.
static __global__ void shortKernel() {
  troupe::cuda::pdlLaunchDependents();
  const long long t0 = clock64();
  while (clock64() - t0 < 2000) {
  }
}

// A kernel that holds shared memory as the decode attention does (two blocks an SM of 100 KB
// each), so that a decode GEMM launched after it finds no room until its blocks leave, which they
// do over a few microseconds (each spins `cycles` and up to half as long again).
constexpr int kHoldBytes = 100 * 1024;
static __global__ void smemHoldKernel(int cycles) {
  extern __shared__ char hold[];
  troupe::cuda::pdlLaunchDependents();
  const long long t0 = clock64(), until = cycles + (blockIdx.x % 8) * (cycles / 16);
  while (clock64() - t0 < until) {
  }
  if (threadIdx.x == 0) hold[0] = 0;
}

// Microseconds a call of call(i, s) when `iters` calls, each behind before(s), are replayed from
// one CUDA graph on st (the median of 5 replays).
template <typename B, typename F>
double graphCallUs(cudaStream_t st, int iters, B&& before, F&& call) {
  const float ms = graphMs(
      st,
      [&](cudaStream_t s) {
        for (int i = 0; i < iters; ++i) {
          before(s);
          call(i, s);
        }
      },
      1, 5);
  return 1000.0 * ms / iters;
}

// A stand-alone check's main: its checks, or with --bench its benchmark.
inline int checksOrBench(int argc, char** argv, int (*checks)(), int (*bench)()) {
  return argc > 1 && std::strcmp(argv[1], "--bench") == 0 ? bench() : checks();
}

}  // namespace kernel_check
