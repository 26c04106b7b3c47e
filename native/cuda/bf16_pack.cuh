// f32 to bf16 bits (round to nearest even), one value and packed pairs, as the kernels that write
// bf16 rows store them (the lower-addressed value in the low half).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace troupe {
namespace cuda {

__device__ __forceinline__ uint16_t toB(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }

__device__ __forceinline__ uint32_t pairB(float lo, float hi) {
  return static_cast<uint32_t>(toB(lo)) | static_cast<uint32_t>(toB(hi)) << 16;
}

__device__ __forceinline__ uint4 pack8(float a, float b, float c, float d, float e, float f, float g, float h) {
  return make_uint4(pairB(a, b), pairB(c, d), pairB(e, f), pairB(g, h));
}

}  // namespace cuda
}  // namespace troupe
