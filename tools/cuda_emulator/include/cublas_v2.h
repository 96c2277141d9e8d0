// A CPU stand-in for the few cuBLAS calls of cuda/linear.cu (see cuda_runtime.h here):
// column-major GEMMs in float, and the bf16 compute type by rounding both operands to
// bfloat16 (nearest, ties to even) before the same float sums.
#pragma once

#include <cstdint>
#include <cstring>

#include "cuda_runtime.h"

using cublasHandle_t = struct emu_blas*;
enum cublasStatus_t { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_NOT_INITIALIZED = 1,
                      CUBLAS_STATUS_ALLOC_FAILED = 3, CUBLAS_STATUS_INVALID_VALUE = 7,
                      CUBLAS_STATUS_ARCH_MISMATCH = 8, CUBLAS_STATUS_EXECUTION_FAILED = 13,
                      CUBLAS_STATUS_NOT_SUPPORTED = 15 };
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cublasMath_t { CUBLAS_DEFAULT_MATH = 0, CUBLAS_PEDANTIC_MATH = 2 };
enum cudaDataType { CUDA_R_32F = 0 };
enum cublasComputeType_t { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_FAST_16BF = 75 };
enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT = -1 };

inline cublasStatus_t cublasCreate(cublasHandle_t* h) {
  *h = reinterpret_cast<cublasHandle_t>(new char);
  return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasDestroy(cublasHandle_t h) { delete reinterpret_cast<char*>(h); return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }

namespace emu {
inline float bf16_round(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  std::memcpy(&x, &u, 4);
  return x;
}
// Column-major C(m,n) = alpha op(A) op(B) + beta C.
inline cublasStatus_t gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           float alpha, const float* A, int lda, const float* B, int ldb,
                           float beta, float* C, int ldc, bool bf16) {
  auto a = [&](int i, int l) { const float v = ta == CUBLAS_OP_N ? A[i + (size_t)l * lda] : A[l + (size_t)i * lda]; return bf16 ? bf16_round(v) : v; };
  auto b = [&](int l, int j) { const float v = tb == CUBLAS_OP_N ? B[l + (size_t)j * ldb] : B[j + (size_t)l * ldb]; return bf16 ? bf16_round(v) : v; };
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) {
      float acc = 0.f;
      for (int l = 0; l < k; ++l) acc = std::fma(a(i, l), b(l, j), acc);
      float& c = C[i + (size_t)j * ldc];
      c = beta == 0.f ? alpha * acc : alpha * acc + beta * c;
    }
  return CUBLAS_STATUS_SUCCESS;
}
}  // namespace emu

inline cublasStatus_t cublasSgemm(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
                                  int n, int k, const float* alpha, const float* A, int lda,
                                  const float* B, int ldb, const float* beta, float* C, int ldc) {
  return emu::gemm(ta, tb, m, n, k, *alpha, A, lda, B, ldb, *beta, C, ldc, false);
}
inline cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
                                   int n, int k, const void* alpha, const void* A, cudaDataType,
                                   int lda, const void* B, cudaDataType, int ldb, const void* beta,
                                   void* C, cudaDataType, int ldc, cublasComputeType_t ct,
                                   cublasGemmAlgo_t) {
  return emu::gemm(ta, tb, m, n, k, *static_cast<const float*>(alpha),
                   static_cast<const float*>(A), lda, static_cast<const float*>(B), ldb,
                   *static_cast<const float*>(beta), static_cast<float*>(C), ldc,
                   ct == CUBLAS_COMPUTE_32F_FAST_16BF);
}
