#include "cuda/gemm.h"

#include <cublas_v2.h>

#include <stdexcept>
#include <string>

namespace troupe {
namespace cuda {

namespace {

// A fixed workspace keeps cuBLAS from allocating during graph capture.
constexpr size_t kWorkspaceBytes = 32u << 20;

void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) {
    throw std::runtime_error(std::string("cuBLAS ") + what + " failed: " + cublasGetStatusString(s));
  }
}

cudaDataType_t dataType(ElemType t) { return t == ElemType::F32 ? CUDA_R_32F : CUDA_R_16BF; }

cublasHandle_t h(void* p) { return static_cast<cublasHandle_t>(p); }

}  // namespace

Gemm::Gemm(cudaStream_t stream) {
  cublasHandle_t handle;
  check(cublasCreate(&handle), "cublasCreate");
  handle_ = handle;
  check(cublasSetStream(handle, stream), "cublasSetStream");
  if (cudaMalloc(&workspace_, kWorkspaceBytes) != cudaSuccess)
    throw std::runtime_error("cuBLAS workspace: out of GPU memory");
  check(cublasSetWorkspace(handle, workspace_, kWorkspaceBytes), "cublasSetWorkspace");
  check(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
}

Gemm::~Gemm() {
  if (handle_) cublasDestroy(h(handle_));
  if (workspace_) cudaFree(workspace_);
}

void Gemm::linear(int M, int N, int K, const void* W, int ldw, const void* X, int ldx, void* Y, ElemType y, float alpha,
                  float beta) {
  check(cublasGemmEx(h(handle_), CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &alpha, W, CUDA_R_16BF, ldw, X, CUDA_R_16BF, ldx,
                     &beta, Y, dataType(y), N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "cublasGemmEx");
}

void Gemm::batched(bool transA, bool transB, int m, int n, int k, float alpha, const void* A, int lda,
                   long long strideA, const void* B, int ldb, long long strideB, float beta, void* C, ElemType c,
                   int ldc, long long strideC, int batch) {
  check(cublasGemmStridedBatchedEx(h(handle_), transA ? CUBLAS_OP_T : CUBLAS_OP_N, transB ? CUBLAS_OP_T : CUBLAS_OP_N,
                                   m, n, k, &alpha, A, CUDA_R_16BF, lda, strideA, B, CUDA_R_16BF, ldb, strideB, &beta,
                                   C, dataType(c), ldc, strideC, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "cublasGemmStridedBatchedEx");
}

void Gemm::pointerBatched(bool transA, bool transB, int m, int n, int k, float alpha, const void* const* A, int lda,
                          const void* const* B, int ldb, float beta, void* const* C, ElemType c, int ldc, int batch) {
  check(cublasGemmBatchedEx(h(handle_), transA ? CUBLAS_OP_T : CUBLAS_OP_N, transB ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k,
                            &alpha, A, CUDA_R_16BF, lda, B, CUDA_R_16BF, ldb, &beta, C, dataType(c), ldc, batch,
                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "cublasGemmBatchedEx");
}

}  // namespace cuda
}  // namespace troupe
