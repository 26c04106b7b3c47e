// bf16 matrix products through cuBLAS (f32 accumulation); the only file that includes cuBLAS.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

namespace troupe {
namespace cuda {

enum class ElemType { F32, BF16 };

class Gemm {
 public:
  explicit Gemm(cudaStream_t stream);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // Y[M][N] = alpha * X[M][K] . W[N][K]^T + beta * Y (row-major; W and X bf16, their rows ldw and
  // ldx elements apart).
  void linear(int M, int N, int K, const void* W, int ldw, const void* X, int ldx, void* Y, ElemType y, float alpha,
              float beta);

  // Column-major cuBLAS call, strided over `batch`: C = alpha * op(A) op(B) + beta * C with A, B bf16.
  void batched(bool transA, bool transB, int m, int n, int k, float alpha, const void* A, int lda, long long strideA,
               const void* B, int ldb, long long strideB, float beta, void* C, ElemType c, int ldc, long long strideC,
               int batch);

  // The same over `batch` products whose matrices are wherever the device arrays of pointers A, B
  // and C say (every product of the same shape).
  void pointerBatched(bool transA, bool transB, int m, int n, int k, float alpha, const void* const* A, int lda,
                      const void* const* B, int ldb, float beta, void* const* C, ElemType c, int ldc, int batch);

 private:
  void* handle_ = nullptr;
  void* workspace_ = nullptr;
};

}  // namespace cuda
}  // namespace troupe
