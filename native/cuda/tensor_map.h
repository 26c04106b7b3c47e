// Tensor maps for the tensor memory accelerator's copies (compute capability 9.0), made through
// the driver's cuTensorMapEncodeTiled, which the runtime hands out by version.
#pragma once

#include <cuda.h>

#include "cuda/kernels.h"

namespace troupe {
namespace cuda {

// Whether the driver makes tensor maps.
bool tensorMapsAvailable();

// A [rows][cols] bf16 matrix (rows ld apart) in boxes of boxCols x boxRows, 128-byte swizzled
// (boxCols x 2 bytes at most 128), with zeros for boxes past its ends.
CUtensorMap bf16TensorMap(const bf16_t* base, int cols, int rows, int ld, int boxCols, int boxRows);

// A KV cache's rows of headDim bf16 values (row r at base + r headDim) for the decode attention's
// copies, in boxes of boxRows rows whose 64-value quarters or halves of the row land one after
// another ([headDim / 64][boxRows][64], each 128-byte line swizzled). threeD: one copy takes the
// whole box (a 3-D view whose last dimension steps 128 bytes); else a copy takes a [boxRows][64]
// part at column 64 h. Returns false where the driver refuses the view.
bool bf16CacheTensorMap(const bf16_t* base, int headDim, int boxRows, bool threeD, CUtensorMap* map);

}  // namespace cuda
}  // namespace troupe
