// What one dependent phase of a decode layer costs when nothing else does: a chain of kernels
// replayed from a CUDA graph (plain, and with programmatic dependent launch as the engine's
// kernels are), against one persistent kernel whose phases meet at a grid-wide barrier
// (cooperative groups' grid sync, and a counter of our own). Each phase is one value a block:
// every block reads what another block wrote in the phase before and writes its own, so a phase
// cannot begin before the previous one has ended anywhere. The figures bound what a kernel
// holding a whole layer could save over a launch per phase. Prints one JSON object.
//   nvcc -std=c++17 -arch=sm_90a -O3 -Inative -Itest/gpu -o /tmp/phase_sync bench/phase_sync.cu && /tmp/phase_sync
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "check_util.h"
#include "cuda/pdl.cuh"

namespace cg = cooperative_groups;
using troupe::cuda::launchPdl;
using troupe::cuda::pdlLaunchDependents;
using troupe::cuda::pdlWait;

namespace {

constexpr int kThreads = 256;
constexpr int kPhases = 32;  // a graph's chain, and a persistent kernel's phases
constexpr int kReplays = 200;

// Phase p of block b: reads block (b + 1)'s value of phase p - 1 and writes its own of phase p
// (two alternating rows of `blocks` values).
__device__ __forceinline__ void phaseWork(int* buf, int phase, int blocks) {
  if (threadIdx.x != 0) return;
  const int b = blockIdx.x;
  const int v = __ldcg(buf + (phase & 1) * blocks + (b + 1) % blocks);
  __stcg(buf + ((phase + 1) & 1) * blocks + b, v + 1);
}

__global__ void phaseKernel(int* buf, int phase, int blocks) {
  pdlWait();
  pdlLaunchDependents();
  phaseWork(buf, phase, blocks);
}

__global__ void cooperativeKernel(int* buf, int blocks) {
  cg::grid_group grid = cg::this_grid();
  for (int p = 0; p < kPhases; ++p) {
    phaseWork(buf, p, blocks);
    grid.sync();
  }
}

// A generation barrier: the last block to arrive resets the count and opens the next generation.
__global__ void counterKernel(int* buf, int blocks, unsigned* bar) {
  for (int p = 0; p < kPhases; ++p) {
    phaseWork(buf, p, blocks);
    __syncthreads();
    if (threadIdx.x == 0) {
      volatile unsigned* gen = bar + 1;
      const unsigned g = *gen;
      __threadfence();
      if (atomicAdd(bar, 1u) == static_cast<unsigned>(blocks) - 1) {
        bar[0] = 0;
        __threadfence();
        atomicAdd(bar + 1, 1u);
      } else {
        while (*gen == g) {
        }
      }
      __threadfence();
    }
    __syncthreads();
  }
}

float elapsedUs(cudaEvent_t a, cudaEvent_t b) {
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, a, b));
  return ms * 1000.0f;
}

// us a phase of a graph of kPhases phaseKernel launches, each allowed to start early or not.
double chainUs(int* buf, int blocks, bool pdl, cudaStream_t st, cudaEvent_t a, cudaEvent_t b) {
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
  for (int p = 0; p < kPhases; ++p) {
    launchPdl(phaseKernel, dim3(blocks), dim3(kThreads), st, pdl, "phase launch", buf, p, blocks);
  }
  CK(cudaStreamEndCapture(st, &graph));
  CK(cudaGraphInstantiate(&exec, graph, 0));
  CK(cudaGraphLaunch(exec, st));
  CK(cudaEventRecord(a, st));
  for (int r = 0; r < kReplays; ++r) CK(cudaGraphLaunch(exec, st));
  CK(cudaEventRecord(b, st));
  CK(cudaEventSynchronize(b));
  CK(cudaGraphExecDestroy(exec));
  CK(cudaGraphDestroy(graph));
  return elapsedUs(a, b) / (kReplays * kPhases);
}

// us a phase of one persistent kernel of kPhases phases.
double persistentUs(int* buf, int blocks, bool cooperative, unsigned* bar, cudaStream_t st, cudaEvent_t a,
                    cudaEvent_t b) {
  auto once = [&] {
    if (cooperative) {
      void* args[] = {&buf, &blocks};
      CK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(cooperativeKernel), dim3(blocks), dim3(kThreads), args, 0,
                                     st));
    } else {
      counterKernel<<<blocks, kThreads, 0, st>>>(buf, blocks, bar);
      CK(cudaGetLastError());
    }
  };
  once();
  CK(cudaEventRecord(a, st));
  for (int r = 0; r < kReplays; ++r) once();
  CK(cudaEventRecord(b, st));
  CK(cudaEventSynchronize(b));
  return elapsedUs(a, b) / (kReplays * kPhases);
}

}  // namespace

int main() {
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  int perSm = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSm, cooperativeKernel, kThreads, 0));
  cudaStream_t st;
  CK(cudaStreamCreate(&st));
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  int* buf = nullptr;
  unsigned* bar = nullptr;
  const int maxBlocks = prop.multiProcessorCount * 4;
  CK(cudaMalloc(&buf, 2 * maxBlocks * sizeof(int)));
  CK(cudaMemset(buf, 0, 2 * maxBlocks * sizeof(int)));
  CK(cudaMalloc(&bar, 2 * sizeof(unsigned)));
  CK(cudaMemset(bar, 0, 2 * sizeof(unsigned)));
  std::printf("{\n  \"device\": \"%s, %d SMs\",\n  \"threadsPerBlock\": %d,\n  \"phases\": %d,\n  \"replays\": %d,\n",
              prop.name, prop.multiProcessorCount, kThreads, kPhases, kReplays);
  std::printf("  \"usPerPhase\": [\n");
  const std::vector<int> perSmCounts = {1, 2, 4};
  for (size_t i = 0; i < perSmCounts.size(); ++i) {
    const int blocks = prop.multiProcessorCount * perSmCounts[i];
    const bool fits = perSmCounts[i] <= perSm;  // a persistent grid must be resident at once
    const double plain = chainUs(buf, blocks, false, st, a, b), pdl = chainUs(buf, blocks, true, st, a, b);
    const double coop = fits ? persistentUs(buf, blocks, true, bar, st, a, b) : -1;
    const double counter = fits ? persistentUs(buf, blocks, false, bar, st, a, b) : -1;
    std::printf(
        "    {\"blocks\": %d, \"graphChain\": %.2f, \"graphChainEarlyLaunch\": %.2f, \"gridSync\": %.2f, "
        "\"counterBarrier\": %.2f}%s\n",
        blocks, plain, pdl, coop, counter, i + 1 < perSmCounts.size() ? "," : "");
  }
  std::printf("  ]\n}\n");
  CK(cudaFree(buf));
  CK(cudaFree(bar));
  return 0;
}
