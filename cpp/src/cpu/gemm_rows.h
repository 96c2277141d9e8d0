// gemm_rows: the CPU's register-blocked fp32 product for small matrices, on the calling
// thread, in builds for a CPU with AVX-512 (kGemmRows; avx512_kernels() says whether the ops
// use it):
//   C(i, :N) = alpha * sum_{k < K} a(i, k) B(k, :N) + beta * C(i, :N),   i < M
// a(i, k) = A[i * sar + k * sak]: (sar, sak) = (lda, 1) reads A as stored, (1, lda) its
// transpose.  B is row-major (ldb).  beta = 0 never reads C.
// Blocks of RR rows x up to 64 columns: RR x 4 sums of 16 lanes in zmm registers; each row
// of B is loaded once per block and each a(i, k) broadcast, with no packing, which at these
// sizes (width 64 or 128, depth 64 to a few hundred) is what BLAS spends its time on.  Depth
// runs in chunks of kDepthChunk (each chunk's sums added to C), so a long depth's operands
// stay in cache.  Each C(i, j) is one chain of fused multiply-adds in k order within a chunk,
// so a row's result does not depend on how an op splits its rows over threads.
// Users: linear.cpp and the softmax losses (through BlockGemm, gemm.cpp) and attention.cpp's
// causal products.
#pragma once

#include <algorithm>
#include <cstddef>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "cpu/fast_math.h"  // head_lanes

namespace fsr::cpu {

#if defined(__AVX512F__)
constexpr bool kGemmRows = true;
constexpr int kDepthChunk = 256;

namespace rows_detail {
// RR rows x NQ chunks of 16 columns (nw <= 16 NQ of them real).  The loops carry unroll
// pragmas: without them GCC keeps the sums in an array on the stack and stores every one
// of them to it at each k (a store per multiply-add, a third of the speed).
template <int RR, int NQ>
inline void block(float* C, int ldc, const float* A, int sar, int sak, const float* B, int ldb,
                  int K, int nw, float alpha, float beta) {
  __mmask16 m[NQ];
#pragma GCC unroll 4
  for (int q = 0; q < NQ; ++q) m[q] = head_lanes(nw - 16 * q);
  __m512 acc[RR][NQ];
#pragma GCC unroll 8
  for (int r = 0; r < RR; ++r)
#pragma GCC unroll 4
    for (int q = 0; q < NQ; ++q) acc[r][q] = _mm512_setzero_ps();
  for (int k = 0; k < K; ++k) {
    const float* b = B + (size_t)k * ldb;
    __m512 v[NQ];
#pragma GCC unroll 4
    for (int q = 0; q < NQ; ++q) v[q] = _mm512_maskz_loadu_ps(m[q], b + 16 * q);
    const float* a = A + (size_t)k * sak;
#pragma GCC unroll 8
    for (int r = 0; r < RR; ++r) {
      const __m512 ar = _mm512_set1_ps(a[(size_t)r * sar]);
#pragma GCC unroll 4
      for (int q = 0; q < NQ; ++q) acc[r][q] = _mm512_fmadd_ps(ar, v[q], acc[r][q]);
    }
  }
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  if (beta != 0.f) {
#pragma GCC unroll 8
    for (int r = 0; r < RR; ++r)
#pragma GCC unroll 4
      for (int q = 0; q < NQ; ++q) {
        float* c = C + (size_t)r * ldc + 16 * q;
        _mm512_mask_storeu_ps(c, m[q], _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m[q], c), _mm512_mul_ps(va, acc[r][q])));
      }
  } else {
#pragma GCC unroll 8
    for (int r = 0; r < RR; ++r)
#pragma GCC unroll 4
      for (int q = 0; q < NQ; ++q)
        _mm512_mask_storeu_ps(C + (size_t)r * ldc + 16 * q, m[q], _mm512_mul_ps(va, acc[r][q]));
  }
}

template <int RR>
inline void block_r(float* C, int ldc, const float* A, int sar, int sak, const float* B, int ldb,
                    int K, int nw, float alpha, float beta) {
  switch ((nw + 15) / 16) {
    case 4: block<RR, 4>(C, ldc, A, sar, sak, B, ldb, K, nw, alpha, beta); break;
    case 3: block<RR, 3>(C, ldc, A, sar, sak, B, ldb, K, nw, alpha, beta); break;
    case 2: block<RR, 2>(C, ldc, A, sar, sak, B, ldb, K, nw, alpha, beta); break;
    default: block<RR, 1>(C, ldc, A, sar, sak, B, ldb, K, nw, alpha, beta); break;
  }
}

// Rows [0, rr) (rr <= 6) of C, every 64-column strip, depth [0, K).
inline void rows(int rr, int N, int K, float alpha, const float* A, int sar, int sak, const float* B,
                 int ldb, float beta, float* C, int ldc) {
  for (int j0 = 0; j0 < N; j0 += 64) {
    const int nw = std::min(64, N - j0);
    float* c = C + j0;
    const float* b = B + j0;
    switch (rr) {
      case 6: block_r<6>(c, ldc, A, sar, sak, b, ldb, K, nw, alpha, beta); break;
      case 5: block_r<5>(c, ldc, A, sar, sak, b, ldb, K, nw, alpha, beta); break;
      case 4: block_r<4>(c, ldc, A, sar, sak, b, ldb, K, nw, alpha, beta); break;
      case 3: block_r<3>(c, ldc, A, sar, sak, b, ldb, K, nw, alpha, beta); break;
      case 2: block_r<2>(c, ldc, A, sar, sak, b, ldb, K, nw, alpha, beta); break;
      default: block_r<1>(c, ldc, A, sar, sak, b, ldb, K, nw, alpha, beta); break;
    }
  }
}
}  // namespace rows_detail

inline void gemm_rows(int M, int N, int K, float alpha, const float* A, int sar, int sak,
                      const float* B, int ldb, float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  const int kmax = std::max(K, 0);
  for (int k0 = 0; k0 < kmax || k0 == 0; k0 += kDepthChunk) {  // K = 0: C = beta C
    const int kc = std::min(kDepthChunk, kmax - k0);
    const float bt = k0 == 0 ? beta : 1.f;
    const float* a = A + (size_t)k0 * sak;
    const float* b = B + (size_t)k0 * ldb;
    for (int i = 0; i < M; i += 6)
      rows_detail::rows(std::min(6, M - i), N, kc, alpha, a + (size_t)i * sar, sar, sak, b, ldb, bt,
                        C + (size_t)i * ldc, ldc);
  }
}
#else
constexpr bool kGemmRows = false;
inline void gemm_rows(int, int, int, float, const float*, int, int, const float*, int, float, float*, int) {}
#endif

}  // namespace fsr::cpu
