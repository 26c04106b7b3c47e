// Programmatic dependent launch (compute capability 9.0). A grid launched with the attribute may
// start while the grid before it still runs: what it reads before pdlWait must have been written
// before that grid began (a step's uploads, the LoRA pool), and it writes nothing before it. At
// least one block of such a grid waits before it exits, so that it never completes before the
// grid it depends on; a block that writes nothing may exit without waiting. pdlLaunchDependents
// lets the next grid start launching once every block of this one has called it. Both are no-ops
// in grids launched without the attribute and before sm_90.
#pragma once

#include <cuda_runtime_api.h>

#include "cuda/device.h"

namespace troupe {
namespace cuda {

__device__ __forceinline__ void pdlWait() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdlLaunchDependents() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Starts moving the 16 bytes at p into L2, without waiting and without a register.
__device__ __forceinline__ void prefetchL2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// kernel<<<grid, block, smem, st>>>(args...) in thread-block clusters of `cluster` blocks along x
// (0: launched without clusters), allowed to start early when pdl is set.
template <class... Params, class... Args>
void launchPdlCluster(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, int cluster, cudaStream_t st,
                      bool pdl, const char* what, Args... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = st;
  cudaLaunchAttribute attr[2];
  unsigned n = 0;
  if (cluster > 0) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = cluster;
    attr[n].val.clusterDim.y = 1;
    attr[n].val.clusterDim.z = 1;
    ++n;
  }
  if (pdl) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  cfg.attrs = attr;
  cfg.numAttrs = n;
  check(cudaLaunchKernelEx(&cfg, kernel, static_cast<Params>(args)...), what);
}

// kernel<<<grid, block, smem, st>>>(args...), allowed to start early when pdl is set.
template <class... Params, class... Args>
void launchPdlShared(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t st, bool pdl,
                     const char* what, Args... args) {
  launchPdlCluster(kernel, grid, block, smem, 0, st, pdl, what, args...);
}

// kernel<<<grid, block, 0, st>>>(args...), allowed to start early when pdl is set.
template <class... Params, class... Args>
void launchPdl(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t st, bool pdl, const char* what,
               Args... args) {
  launchPdlShared(kernel, grid, block, 0, st, pdl, what, args...);
}

}  // namespace cuda
}  // namespace troupe
