// Tensor maps (tensor_map.h).
#include "cuda/tensor_map.h"

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

#include "cuda/device.h"

namespace troupe {
namespace cuda {

namespace {

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

EncodeTiled encodeTiled() {
  static EncodeTiled fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult found{};
#if CUDART_VERSION >= 12050
    check(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &found),
          "cudaGetDriverEntryPointByVersion");
#else  // toolkits before 12.5 have only the unversioned query
    check(cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &p, cudaEnableDefault, &found), "cudaGetDriverEntryPoint");
#endif
    if (found != cudaDriverEntryPointSuccess || !p)
      throw std::runtime_error("the CUDA driver has no cuTensorMapEncodeTiled (compute capability 9.0 needs it)");
    return reinterpret_cast<EncodeTiled>(p);
  }();
  return fn;
}

}  // namespace

bool tensorMapsAvailable() {
  try {
    encodeTiled();
    return true;
  } catch (const std::exception&) {
    cudaGetLastError();
    return false;
  }
}

bool sm90aKernelsRun(const void* builtFlag) {
  int device = 0, major = 0, built = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess || major != 9 ||
      cudaMemcpyFromSymbol(&built, builtFlag, sizeof(int)) != cudaSuccess || built != 1 || !tensorMapsAvailable()) {
    cudaGetLastError();  // no sm_90a code in this build for this device
    return false;
  }
  return true;
}

bool sm90aStagedKernelRuns(const void* builtFlag, const void* kernel) {
  cudaFuncAttributes attr{};
  return sm90aKernelsRun(builtFlag) && cudaFuncGetAttributes(&attr, kernel) == cudaSuccess &&
         attr.sharedSizeBytes % 1024 == 0;
}

CUtensorMap bf16TensorMap(const bf16_t* base, int cols, int rows, int ld, int boxCols, int boxRows) {
  CUtensorMap map;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(ld) * 2};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(boxCols), static_cast<cuuint32_t>(boxRows)};
  const cuuint32_t elementStrides[2] = {1, 1};
  const CUresult r = encodeTiled()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<bf16_t*>(base), dims, strides,
                                   box, elementStrides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                   CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) throw std::runtime_error("cuTensorMapEncodeTiled failed: " + std::to_string(r));
  return map;
}

bool bf16CacheTensorMap(const bf16_t* base, int headDim, int boxRows, CUtensorMap* map) {
  // The cache's size is not known here; copies only ever address rows of a sequence's blocks.
  constexpr cuuint64_t kRows = 1u << 31;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(headDim), kRows};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(headDim) * 2};
  const cuuint32_t box[2] = {64, static_cast<cuuint32_t>(boxRows)};
  const cuuint32_t elementStrides[2] = {1, 1};
  return encodeTiled()(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<bf16_t*>(base), dims, strides, box,
                       elementStrides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                       CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

}  // namespace cuda
}  // namespace troupe
