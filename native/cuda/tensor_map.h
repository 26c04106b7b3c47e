// Tensor maps for the tensor memory accelerator's copies (compute capability 9.0), made through
// the driver's cuTensorMapEncodeTiled, which the runtime hands out by version.
#pragma once

#include <cuda.h>

#include "cuda/kernels.h"

namespace troupe {
namespace cuda {

// Whether the driver makes tensor maps.
bool tensorMapsAvailable();

// Whether the kernels of a translation unit built for sm_90a (tensor copies, warpgroup mmas) run
// here: a device of compute capability 9.0, that unit's sm_90a code in this build (builtFlag: its
// __device__ int, 1 where that code was compiled), and the driver's tensor maps.
bool sm90aKernelsRun(const void* builtFlag);
// The same for one kernel that takes its 1 KB aligned stages from the start of its dynamic shared
// memory: also that its static part is whole kilobytes (the extern declaration's alignment pads it
// so), where a build that did not would reach the kernel's trap instead of leaving its work to
// cuBLAS.
bool sm90aStagedKernelRuns(const void* builtFlag, const void* kernel);

// A [rows][cols] bf16 matrix (rows ld apart) in boxes of boxCols x boxRows, 128-byte swizzled
// (boxCols x 2 bytes at most 128), with zeros for boxes past its ends.
CUtensorMap bf16TensorMap(const bf16_t* base, int cols, int rows, int ld, int boxCols, int boxRows);

// A KV cache's rows of headDim bf16 values (row r at base + r headDim) for the decode attention's
// copies, 128-byte swizzled: a box is a [boxRows][64] part of boxRows rows, from the column a
// copy names. Returns false where the driver refuses the view.
bool bf16CacheTensorMap(const bf16_t* base, int headDim, int boxRows, CUtensorMap* map);

}  // namespace cuda
}  // namespace troupe
