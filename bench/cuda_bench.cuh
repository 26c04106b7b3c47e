// What the stand-alone CUDA benchmarks in bench/ share: failing loudly, seeded random bf16
// values, timing a call with CUDA events, and freeing a case's buffers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>

namespace bench {

// Exits naming the call when a CUDA or cuBLAS status is not success.
inline void check(int status, const char* what) {
  if (status != 0) {
    std::fprintf(stderr, "%s failed: %d\n", what, status);
    std::exit(1);
  }
}

// Seeded values in [-1/32, 1/32): constant values let the clocks run higher than a model's data does.
__global__ void fillRandom(__nv_bfloat16* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = __float2bfloat16((static_cast<float>(h & 0xffff) / 65536.0f - 0.5f) / 16.0f);
  }
}

// Mean milliseconds of one call over `calls`, after 5 to warm up.
template <typename F>
float timeCalls(F&& call, int calls) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < 5; ++i) call();
  cudaEventRecord(a);
  for (int i = 0; i < calls; ++i) call();
  cudaEventRecord(b);
  cudaEventSynchronize(b);
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms / calls;
}

// Frees each device buffer of a case.
inline void freeAll(std::initializer_list<void*> buffers) {
  for (void* p : buffers) cudaFree(p);
}

}  // namespace bench
