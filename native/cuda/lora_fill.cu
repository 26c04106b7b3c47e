#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/lora_fill.h"
#include "cuda/lora_runs.h"

namespace troupe {
namespace cuda {

namespace {

template <class U>
__device__ __forceinline__ U loadAny(const unsigned char* p) {
  // Adapter files keep their values aligned, but nothing in safetensors promises it.
  if ((reinterpret_cast<uintptr_t>(p) & (sizeof(U) - 1)) == 0) return *reinterpret_cast<const U*>(p);
  U v = 0;
  for (int b = 0; b < static_cast<int>(sizeof(U)); ++b) v |= static_cast<U>(p[b]) << (8 * b);
  return v;
}

__global__ void factorKernel(const unsigned char* src, int dtype, int64_t rows, int64_t cols, int64_t srcPitch,
                             int64_t col0, bf16_t* dst, int64_t dstPitch, int* bad) {
  const int64_t n = rows * cols;
  const int elem = dtype == 0 ? 4 : 2;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = k / cols, j = k % cols;
    const unsigned char* p = src + (i * srcPitch + col0 + j) * elem;
    bf16_t out;
    if (dtype == 2) {
      out = loadAny<uint16_t>(p);
    } else {
      const float v =
          dtype == 0 ? __uint_as_float(loadAny<uint32_t>(p)) : __half2float(__ushort_as_half(loadAny<uint16_t>(p)));
      out = __bfloat16_as_ushort(__float2bfloat16_rn(v));
    }
    // B factors sit beside the base weights, where every token's GEMM meets them (times zero
    // outside the adapter's rows, and zero times Inf is NaN): nothing non-finite may land.
    if ((out & 0x7f80u) == 0x7f80u) {
      out = 0;
      *bad = 1;
    }
    dst[i * dstPitch + j] = out;
  }
}

__global__ void transposeBKernel(const bf16_t* b, int64_t ld, int out, bf16_t* bt) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x, r = blockIdx.y;
  if (n < out) bt[static_cast<int64_t>(r) * out + n] = b[n * ld + r];
}

__device__ __forceinline__ float toFloat(bf16_t v) { return __uint_as_float(static_cast<uint32_t>(v) << 16); }

// Block r, warp w: outputs w, w + warps, ... of rank r, each a dot over the H features.
__global__ void normShrinkNKernel(const bf16_t* bt, const float* w, const bf16_t* a, int H, int C, int width,
                                  LoraRunRows run, float* n) {
  const int r = blockIdx.x, lane = threadIdx.x & 31, warps = blockDim.x / 32;
  for (int c = threadIdx.x / 32; c < C; c += warps) {
    // Column c is slice c / maxRank's rank c % maxRank; past the run's width its A row lies in
    // other slots (or past the pool), and no token reads it.
    const int j = c / run.maxRank, q = c % run.maxRank;
    if (q >= width) {
      if (lane == 0) n[r * C + c] = 0;
      continue;
    }
    const bf16_t* bRow = bt + static_cast<int64_t>(r) * H;
    const bf16_t* aRow = a + lora_runs::runRow(j, q, run.slices, run.slotRank) * H;
    float s = 0;
    for (int i = lane; i < H; i += 32) s = fmaf(toFloat(bRow[i]) * w[i], toFloat(aRow[i]), s);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) n[r * C + c] = s;
  }
}

__global__ void metaKernel(int32_t* ranks, float* scaling, LoraSlotMeta meta) {
  const int t = threadIdx.x;
  if (t < kLoraMetaModules) ranks[t] = meta.ranks[t];
  if (t == 0) *scaling = meta.scaling;
}

template <class U>
__device__ __forceinline__ void swapUnits(const SwapRegion& r, uint64_t start, uint64_t step) {
  const uint64_t perRow = r.width / sizeof(U);
  const uint64_t n = perRow * r.rows;
  for (uint64_t k = start; k < n; k += step) {
    const uint64_t at = (k / perRow) * r.pitch + (k % perRow) * sizeof(U);
    U* pa = reinterpret_cast<U*>(r.a + at);
    U* pb = reinterpret_cast<U*>(r.b + at);
    const U va = *pa, vb = *pb;
    *pa = vb;
    *pb = va;
  }
}

// blockIdx.y: the region; the x blocks and their threads walk its units.
__global__ void swapKernel(const SwapRegion* regions) {
  const SwapRegion r = regions[blockIdx.y];
  const uint64_t start = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x;
  const uint64_t step = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  if (r.unit == 16)
    swapUnits<uint4>(r, start, step);
  else if (r.unit == 4)
    swapUnits<uint32_t>(r, start, step);
  else
    swapUnits<uint16_t>(r, start, step);
}

}  // namespace

void loraSwapRegions(const SwapRegion* regions, int count, cudaStream_t s) {
  // Regions of a slot run from a few bytes (its ranks) to a few MB (a layer's A rows): 16 blocks a
  // region keep the large ones spread over the GPU; the small ones' blocks leave at once.
  for (int first = 0; first < count; first += 65535) {
    const int n = count - first < 65535 ? count - first : 65535;
    swapKernel<<<dim3(16, n), 256, 0, s>>>(regions + first);
  }
}

void loraFactorToBf16(const void* src, int dtype, int64_t rows, int64_t cols, int64_t srcPitch, int64_t col0,
                      bf16_t* dst, int64_t dstPitch, int* bad, cudaStream_t s) {
  const int64_t n = rows * cols;
  if (n == 0) return;
  const int64_t blocks = (n + 255) / 256;
  factorKernel<<<static_cast<int>(blocks < 4096 ? blocks : 4096), 256, 0, s>>>(
      static_cast<const unsigned char*>(src), dtype, rows, cols, srcPitch, col0, dst, dstPitch, bad);
}

void loraTransposeB(const bf16_t* b, int64_t ld, int out, int R, bf16_t* bt, cudaStream_t s) {
  if (out == 0 || R == 0) return;
  transposeBKernel<<<dim3((out + 255) / 256, R), 256, 0, s>>>(b, ld, out, bt);
}

void loraNormShrinkN(const bf16_t* bt, const float* w, const bf16_t* a, int H, int R, int C, LoraRunRows run, float* n,
                     cudaStream_t s) {
  normShrinkNKernel<<<R, 256, 0, s>>>(bt, w, a, H, C, R, run, n);
}

void setLoraSlotMeta(int32_t* ranks, float* scaling, const LoraSlotMeta& meta, cudaStream_t s) {
  metaKernel<<<1, 32, 0, s>>>(ranks, scaling, meta);
}

}  // namespace cuda
}  // namespace troupe
