// bf16 matrix products through cuBLAS (f32 accumulation); the only file that includes cuBLAS.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <map>
#include <memory>
#include <tuple>
#include <vector>

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

  // Decode-sized products (up to kTunedMaxRows token rows, alpha 1, adding to Y or not; linear()
  // and batched()) whose kernel was chosen by timing. cublasGemmEx's default is not always the
  // fastest of the kernels cublasLt's heuristic offers for a shape: at 32 tokens on an H200, q/k/v
  // with 8 slots' rank-16 A rows after the weight's took 19.0 us against 17.7 for a 96 x 64 tile,
  // and the LM head 259.5 against 249.3 (bench/results/2026-12-04-h200-gemm-tuned.json). While
  // noting (a step's CUDA graph capture), a product of a shape without a choice yet runs the
  // default and is noted with its operands; takeNoted() hands them over, and tune() then times the
  // default against each candidate on them, keeps the fastest where it is at least 2% faster, and
  // says whether any of their shapes now runs another kernel (the graph should be captured again).
  static constexpr int kTunedMaxRows = 128;
  void noteUntuned(bool on) { noting_ = on; }

  // A product as cuBLAS sees it (column-major, strided over batch): C = op(A) op(B) (+ C), A and
  // B bf16. Its shape (everything but the pointers) keys the kernel chosen for it; align is the
  // smallest of the pointers' alignments, up to 256 bytes (a kernel chosen for one alignment needs
  // at least it). Callers hold noted products only to give them back to tune().
  using Shape =
      std::tuple<bool, bool, int, int, int, int, int, int, int, long long, long long, long long, int, bool, int>;
  struct Product {
    bool transA = true, transB = false;
    int m = 0, n = 0, k = 0, lda = 0, ldb = 0, ldc = 0, batch = 1;
    long long strideA = 0, strideB = 0, strideC = 0;
    ElemType c = ElemType::F32;
    bool adds = false;
    int align = 0;
    const void* A = nullptr;
    const void* B = nullptr;
    void* C = nullptr;
    Shape shape() const {
      return Shape(transA, transB, m, n, k, lda, ldb, ldc, batch, strideA, strideB, strideC, static_cast<int>(c), adds,
                   align);
    }
  };
  std::vector<Product> takeNoted() {
    std::vector<Product> out;
    out.swap(noted_);
    return out;
  }
  // Shapes that another tune() already timed are not timed again.
  bool tune(const std::vector<Product>& noted);

  // Column-major cuBLAS call, strided over `batch`: C = alpha * op(A) op(B) + beta * C with A, B bf16.
  void batched(bool transA, bool transB, int m, int n, int k, float alpha, const void* A, int lda, long long strideA,
               const void* B, int ldb, long long strideB, float beta, void* C, ElemType c, int ldc, long long strideC,
               int batch);

  // The same over `batch` products whose matrices are wherever the device arrays of pointers A, B
  // and C say (every product of the same shape).
  void pointerBatched(bool transA, bool transB, int m, int n, int k, float alpha, const void* const* A, int lda,
                      const void* const* B, int ldb, float beta, void* const* C, ElemType c, int ldc, int batch);

 private:
  struct Choice;  // the kernel chosen for a shape (gemm.cc), or the default
  // Runs p with the kernel chosen for its shape, or cuBLAS's default (noting the product where its
  // shape has no choice yet and noting is on).
  void run(const Product& p);
  // p with cuBLAS's default kernel, its output to C; cuBLAS's status (0: done).
  int runDefault(const Product& p, void* C) const;
  void* handle_ = nullptr;
  void* lt_ = nullptr;
  void* workspace_ = nullptr;
  cudaStream_t stream_;
  bool noting_ = false;
  std::map<Shape, std::shared_ptr<Choice>> choices_;
  std::vector<Product> noted_;
};

}  // namespace cuda
}  // namespace troupe
