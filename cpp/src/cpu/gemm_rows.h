// gemm_rows: the CPU's register-blocked fp32 product for small matrices, on the calling
// thread, in builds for a CPU with AVX-512 or with AVX2 and FMA (kGemmRows; rows_kernels()
// says whether the ops use it):
//   C(i, :N) = alpha * sum_{k < K} a(i, k) B(k, :N) + beta * C(i, :N),   i < M
// a(i, k) = A[i * sar + k * sak]: (sar, sak) = (lda, 1) reads A as stored, (1, lda) its
// transpose.  B is row-major (ldb).  beta = 0 never reads C.
// Blocks of RR rows x up to W columns (AVX-512: W = 64, RR x 4 sums of 16 lanes in zmm
// registers; AVX2, with half the registers: W = 16, RR x 2 sums of 8 lanes in ymm); each row
// of B is loaded once per block and each a(i, k) broadcast, with no packing, which at these
// sizes (width 64 or 128, depth 64 to a few hundred) is what BLAS spends its time on.  Depth
// runs in chunks of kDepthChunk (each chunk's sums added to C), so a long depth's operands
// stay in cache.  Each C(i, j) is one chain of fused multiply-adds in k order within a chunk,
// then alpha * sum (+ beta * C by one more fused multiply-add), so a row's result does not
// depend on how an op splits its rows over threads, nor on the vector width: the AVX-512 and
// the AVX2 kernels give the same bits.
// Users: linear.cpp and the softmax losses (through BlockGemm, gemm.cpp) and attention.cpp's
// causal products.
#pragma once

#include <algorithm>
#include <cstddef>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

#include "cpu/fast_math.h"  // head_lanes

namespace fsr::cpu {

#if defined(__AVX512F__)
constexpr bool kGemmRows = true;
constexpr bool kGemmRowsAvx512 = true;
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

constexpr int kStrip = 64;  // columns a block reads
// A as given: a block's 6 x 64 sums amortise its loads of A.
inline const float* block_of_a(const float* A, int, int, int&, int&, int, float*) { return A; }
}  // namespace rows_detail

#elif defined(__AVX2__) && defined(__FMA__)
constexpr bool kGemmRows = true;
constexpr bool kGemmRowsAvx512 = false;
constexpr int kDepthChunk = 256;

namespace rows_detail {
// Lanes [0, n) of 8 selected (the sign bit set), for maskload and maskstore.
inline __m256i head8(int n) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane);
}

// RR rows x NQ chunks of 8 columns (nw <= 8 NQ of them real; FULL: nw == 8 NQ, plain loads
// and stores).  RR x NQ sums, NQ rows of B and one broadcast: at most 15 of the 16 ymm.
template <int RR, int NQ, bool FULL>
inline void block(float* C, int ldc, const float* A, int sar, int sak, const float* B, int ldb,
                  int K, int nw, float alpha, float beta) {
  __m256i m[NQ];
#pragma GCC unroll 2
  for (int q = 0; q < NQ; ++q) m[q] = head8(nw - 8 * q);
  __m256 acc[RR][NQ];
#pragma GCC unroll 8
  for (int r = 0; r < RR; ++r)
#pragma GCC unroll 2
    for (int q = 0; q < NQ; ++q) acc[r][q] = _mm256_setzero_ps();
  for (int k = 0; k < K; ++k) {
    const float* b = B + (size_t)k * ldb;
    __m256 v[NQ];
#pragma GCC unroll 2
    for (int q = 0; q < NQ; ++q) v[q] = FULL ? _mm256_loadu_ps(b + 8 * q) : _mm256_maskload_ps(b + 8 * q, m[q]);
    const float* a = A + (size_t)k * sak;
#pragma GCC unroll 8
    for (int r = 0; r < RR; ++r) {
      const __m256 ar = _mm256_broadcast_ss(a + (size_t)r * sar);
#pragma GCC unroll 2
      for (int q = 0; q < NQ; ++q) acc[r][q] = _mm256_fmadd_ps(ar, v[q], acc[r][q]);
    }
  }
  const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
#pragma GCC unroll 8
  for (int r = 0; r < RR; ++r)
#pragma GCC unroll 2
    for (int q = 0; q < NQ; ++q) {
      float* c = C + (size_t)r * ldc + 8 * q;
      __m256 out = _mm256_mul_ps(va, acc[r][q]);
      if (beta != 0.f)
        out = _mm256_fmadd_ps(vb, FULL ? _mm256_loadu_ps(c) : _mm256_maskload_ps(c, m[q]), out);
      if (FULL)
        _mm256_storeu_ps(c, out);
      else
        _mm256_maskstore_ps(c, m[q], out);
    }
}

template <int RR>
inline void block_r(float* C, int ldc, const float* A, int sar, int sak, const float* B, int ldb,
                    int K, int nw, float alpha, float beta) {
  if (nw == 16)
    block<RR, 2, true>(C, ldc, A, sar, sak, B, ldb, K, nw, alpha, beta);
  else if (nw > 8)
    block<RR, 2, false>(C, ldc, A, sar, sak, B, ldb, K, nw, alpha, beta);
  else if (nw == 8)
    block<RR, 1, true>(C, ldc, A, sar, sak, B, ldb, K, nw, alpha, beta);
  else
    block<RR, 1, false>(C, ldc, A, sar, sak, B, ldb, K, nw, alpha, beta);
}

constexpr int kStrip = 16;  // columns a block reads
// A transposed A (sar = 1) read by more than one strip is first copied as a(r, k) at
// [k * 8 + r] (into `room`, 8 kDepthChunk floats), so that each strip reads 32 bytes a depth
// step from one small block instead of a cache line of A a step (the dW products, depth
// 2,450). The copy changes no operand, so no bit.
inline const float* block_of_a(const float* A, int rr, int K, int& sar, int& sak, int N, float* room) {
  if (sar != 1 || N <= kStrip) return A;
  const __m256i m = head8(rr);
  for (int k = 0; k < K; ++k) _mm256_store_ps(room + 8 * k, _mm256_maskload_ps(A + (size_t)k * sak, m));
  sak = 8;
  return room;
}
}  // namespace rows_detail
#endif

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
namespace rows_detail {
// Rows [0, rr) (rr <= 6) of C, every kStrip-column strip, depth [0, K <= kDepthChunk).
inline void rows(int rr, int N, int K, float alpha, const float* A, int sar, int sak, const float* B,
                 int ldb, float beta, float* C, int ldc) {
  alignas(32) float room[8 * kDepthChunk];
  A = block_of_a(A, rr, K, sar, sak, N, room);
  for (int j0 = 0; j0 < N; j0 += kStrip) {
    const int nw = std::min(kStrip, N - j0);
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

constexpr int kPanelFloats = 32768;  // a panel of B's depth chunk: 128 KiB

inline void gemm_rows(int M, int N, int K, float alpha, const float* A, int sar, int sak,
                      const float* B, int ldb, float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  const int kmax = std::max(K, 0);
  for (int k0 = 0; k0 < kmax || k0 == 0; k0 += kDepthChunk) {  // K = 0: C = beta C
    const int kc = std::min(kDepthChunk, kmax - k0);
    const float bt = k0 == 0 ? beta : 1.f;
    const float* a = A + (size_t)k0 * sak;
    const float* b = B + (size_t)k0 * ldb;
    // B's depth chunk in panels of columns of about 128 KiB, each read by every block of rows
    // while it is in cache: a wide B (the softmax's slice of the catalogue) was read from
    // memory once per six rows.  Panels change no element's sum.
    const int panel = std::max(rows_detail::kStrip,
                               kPanelFloats / std::max(kc, 1) / rows_detail::kStrip * rows_detail::kStrip);
    for (int j0 = 0; j0 < N; j0 += panel) {
      const int nj = std::min(panel, N - j0);
      for (int i = 0; i < M; i += 6)
        rows_detail::rows(std::min(6, M - i), nj, kc, alpha, a + (size_t)i * sar, sar, sak, b + j0, ldb,
                          bt, C + (size_t)i * ldc + j0, ldc);
    }
  }
}
#else
constexpr bool kGemmRows = false;
constexpr bool kGemmRowsAvx512 = false;
inline void gemm_rows(int, int, int, float, const float*, int, int, const float*, int, float, float*, int) {}
#endif

}  // namespace fsr::cpu
