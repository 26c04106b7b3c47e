// Dot products of bf16 pieces in f32, shared by the GEMV and the LoRA row shrink.
#pragma once

#include <cstdint>

namespace troupe {
namespace cuda {

// acc += w . x over eight bf16 values each (one 16-byte piece): a bf16 is the top half of an f32.
__device__ __forceinline__ void dot8(const uint4& w, const uint4& x, float& acc) {
  const uint32_t wa[4] = {w.x, w.y, w.z, w.w};
  const uint32_t xa[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    acc = fmaf(__uint_as_float(wa[i] << 16), __uint_as_float(xa[i] << 16), acc);
    acc = fmaf(__uint_as_float(wa[i] & 0xffff0000u), __uint_as_float(xa[i] & 0xffff0000u), acc);
  }
}

}  // namespace cuda
}  // namespace troupe
