// A CPU stand-in for the few cuBLAS calls of cuda/linear.cu (see cuda_runtime.h here):
// column-major GEMMs with float sums, of float or bfloat16 operands (the latter widened
// exactly), and the FAST_16BF compute type by rounding float operands to bfloat16
// (nearest, ties to even) first.
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
enum cudaDataType { CUDA_R_32F = 0, CUDA_R_16BF = 14 };
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
inline float widen(const float* p, size_t i) { return p[i]; }
inline float widen(const uint16_t* p, size_t i) {
  const uint32_t u = (uint32_t)p[i] << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
// Column-major C(m,n) = alpha op(A) op(B) + beta C.
template <typename TA, typename TB>
inline cublasStatus_t gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           float alpha, const TA* A, int lda, const TB* B, int ldb,
                           float beta, float* C, int ldc, bool bf16) {
  auto a = [&](int i, int l) { const float v = widen(A, ta == CUBLAS_OP_N ? i + (size_t)l * lda : l + (size_t)i * lda); return bf16 ? bf16_round(v) : v; };
  auto b = [&](int l, int j) { const float v = widen(B, tb == CUBLAS_OP_N ? l + (size_t)j * ldb : j + (size_t)l * ldb); return bf16 ? bf16_round(v) : v; };
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

inline cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
                                   int n, int k, const void* alpha, const void* A, cudaDataType at,
                                   int lda, const void* B, cudaDataType bt, int ldb, const void* beta,
                                   void* C, cudaDataType ct_c, int ldc, cublasComputeType_t ct,
                                   cublasGemmAlgo_t) {
  // The combinations cuBLAS takes with float output: both float, or both bfloat16 with
  // CUBLAS_COMPUTE_32F.
  if (ct_c != CUDA_R_32F || at != bt || (at == CUDA_R_16BF && ct != CUBLAS_COMPUTE_32F))
    return CUBLAS_STATUS_NOT_SUPPORTED;
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  float* c = static_cast<float*>(C);
  if (at == CUDA_R_16BF)
    return emu::gemm(ta, tb, m, n, k, al, static_cast<const uint16_t*>(A), lda,
                     static_cast<const uint16_t*>(B), ldb, be, c, ldc, false);
  return emu::gemm(ta, tb, m, n, k, al, static_cast<const float*>(A), lda,
                   static_cast<const float*>(B), ldb, be, c, ldc, ct == CUBLAS_COMPUTE_32F_FAST_16BF);
}
