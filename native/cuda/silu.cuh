// SiLU as every kernel that writes SiLU-and-mul rows computes it, so that rows made by different
// kernels (siluMul, the LoRA expand in its place) agree bit for bit.
#pragma once

namespace troupe {
namespace cuda {

__device__ __forceinline__ float silu(float x) { return x / (1.0f + __expf(-x)); }

}  // namespace cuda
}  // namespace troupe
