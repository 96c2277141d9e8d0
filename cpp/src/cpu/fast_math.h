// exp for the CPU loops, in a form GCC vectorises (glibc's expf is scalar unless the
// whole build uses -ffast-math, which fastsasrec avoids).  Cody-Waite range reduction
// plus Cephes' degree-6 polynomial: relative error below 1e-7 (about 1 ulp) for
// x in [-87.3, 88.3]; x below that gives exactly 0 (so exp(-inf) = 0), above gives +inf,
// NaN stays NaN.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

namespace fsr::cpu {

inline float fast_exp(float x) {
  constexpr float kHi = 88.3762626647949f, kLo = -87.3365447504019f;
  float xc = x < kHi ? x : kHi;
  xc = xc > kLo ? xc : kLo;
  // n = round(xc / ln 2) by the 1.5 * 2^23 trick (exact for |v| < 2^22; std::floor would
  // be a library call that stops vectorisation).
  constexpr float kRound = 12582912.0f;
  const float n = (xc * 1.44269504088896341f + kRound) - kRound;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float out = p * __builtin_bit_cast(float, bits);
  out = x < kLo ? 0.f : out;
  out = x > kHi ? std::numeric_limits<float>::infinity() : out;
  return x != x ? x : out;
}

}  // namespace fsr::cpu

namespace fsr::cpu {

// Row reductions.  With AVX-512 (a build for a CPU that has it): 16 lanes of partial
// results, then a tree across the lanes.  Otherwise OpenMP SIMD reductions, so that they
// vectorise without -ffast-math (a plain float accumulator forbids reordering); GCC ends
// those with the lanes added one at a time, which costs more than the row itself at the
// rows of 64 that layernorm and attention sum.  Either order is fixed by the build, so
// results are deterministic.

#if defined(__AVX512F__)
// The first min(n, 16) lanes (none when n <= 0).
inline __mmask16 head_lanes(int n) {
  return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

// The sum and the max of a vector's 16 lanes, as a tree: halves, quarters, pairs, lanes.
// Every intrinsic here and in the kernels that use them is the masked form with all lanes
// set: the plain forms pass an undefined source that GCC 12 warns of.
inline float lanes_sum(__m512 v) {
  v = _mm512_add_ps(v, _mm512_mask_shuffle_f32x4(v, 0xffff, v, v, 0x4E));
  v = _mm512_add_ps(v, _mm512_mask_shuffle_f32x4(v, 0xffff, v, v, 0xB1));
  v = _mm512_add_ps(v, _mm512_mask_permute_ps(v, 0xffff, v, 0x4E));
  v = _mm512_add_ps(v, _mm512_mask_permute_ps(v, 0xffff, v, 0xB1));
  return _mm512_cvtss_f32(v);
}
// lanes_sum of four vectors at once: 128-bit lane k of the result holds lanes_sum(v_k) in
// each of its 4 floats, added in lanes_sum's order (so bit for bit the same), with a
// quarter of its shuffles.
inline __m512 lanes_sum4(__m512 a, __m512 b, __m512 c, __m512 d) {
  // halves: [a.q0 + a.q2, a.q1 + a.q3, b.q0 + b.q2, b.q1 + b.q3] (q: 128-bit quarters)
  const __m512 ab = _mm512_add_ps(_mm512_mask_shuffle_f32x4(a, 0xffff, a, b, 0x44),
                                  _mm512_mask_shuffle_f32x4(a, 0xffff, a, b, 0xEE));
  const __m512 cd = _mm512_add_ps(_mm512_mask_shuffle_f32x4(c, 0xffff, c, d, 0x44),
                                  _mm512_mask_shuffle_f32x4(c, 0xffff, c, d, 0xEE));
  // quarters: quarter k = row k's first quarter plus its second
  __m512 v = _mm512_add_ps(_mm512_mask_shuffle_f32x4(ab, 0xffff, ab, cd, 0x88),
                           _mm512_mask_shuffle_f32x4(ab, 0xffff, ab, cd, 0xDD));
  v = _mm512_add_ps(v, _mm512_mask_permute_ps(v, 0xffff, v, 0x4E));
  return _mm512_add_ps(v, _mm512_mask_permute_ps(v, 0xffff, v, 0xB1));
}
// Every float of lanes_sum4's quarter k.
template <int k>
inline __m512 quarter(__m512 v) {
  return _mm512_mask_shuffle_f32x4(v, 0xffff, v, v, k * 0x55);
}

// lanes_max of four vectors at once, laid out as lanes_sum4's result (quarter k holds
// lanes_max(v_k)), compared in lanes_max's order.
inline __m512 lanes_max4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m512 ab = _mm512_maskz_max_ps(0xffff, _mm512_mask_shuffle_f32x4(a, 0xffff, a, b, 0x44),
                                        _mm512_mask_shuffle_f32x4(a, 0xffff, a, b, 0xEE));
  const __m512 cd = _mm512_maskz_max_ps(0xffff, _mm512_mask_shuffle_f32x4(c, 0xffff, c, d, 0x44),
                                        _mm512_mask_shuffle_f32x4(c, 0xffff, c, d, 0xEE));
  __m512 v = _mm512_maskz_max_ps(0xffff, _mm512_mask_shuffle_f32x4(ab, 0xffff, ab, cd, 0x88),
                                 _mm512_mask_shuffle_f32x4(ab, 0xffff, ab, cd, 0xDD));
  v = _mm512_maskz_max_ps(0xffff, v, _mm512_mask_permute_ps(v, 0xffff, v, 0x4E));
  return _mm512_maskz_max_ps(0xffff, v, _mm512_mask_permute_ps(v, 0xffff, v, 0xB1));
}

inline float lanes_max(__m512 v) {
  v = _mm512_maskz_max_ps(0xffff, v, _mm512_mask_shuffle_f32x4(v, 0xffff, v, v, 0x4E));
  v = _mm512_maskz_max_ps(0xffff, v, _mm512_mask_shuffle_f32x4(v, 0xffff, v, v, 0xB1));
  v = _mm512_maskz_max_ps(0xffff, v, _mm512_mask_permute_ps(v, 0xffff, v, 0x4E));
  v = _mm512_maskz_max_ps(0xffff, v, _mm512_mask_permute_ps(v, 0xffff, v, 0xB1));
  return _mm512_cvtss_f32(v);
}

inline float row_max(const float* x, int n) {
  __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int j = 0; j < n; j += 16) {
    const __mmask16 k = head_lanes(n - j);
    m = _mm512_mask_max_ps(m, k, _mm512_maskz_loadu_ps(k, x + j), m);  // x > m ? x : m: NaN skipped
  }
  return lanes_max(m);
}

inline float row_sum(const float* x, int n) {
  __m512 s = _mm512_setzero_ps();
  for (int j = 0; j < n; j += 16) s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(head_lanes(n - j), x + j));
  return lanes_sum(s);
}

// Each lane rounded to the nearest bfloat16, ties to even, as a float (round_bf16's rule,
// ops.h: NaN stays a quiet NaN, past bf16's largest is inf, subnormals round as integers).
inline __m512 round_bf16_lanes(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  const __mmask16 odd = _mm512_test_epi32_mask(u, _mm512_set1_epi32(0x10000));  // bf16's last bit
  __m512i r = _mm512_add_epi32(u, _mm512_set1_epi32(0x7fff));
  r = _mm512_mask_add_epi32(r, odd, r, _mm512_set1_epi32(1));
  r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, _mm512_set1_epi32(0x00400000)));
  return _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32((int)0xffff0000u)));
}

// sum_j a[j] * b[j]
inline float dot(const float* a, const float* b, int n) {
  __m512 s = _mm512_setzero_ps();
  for (int j = 0; j < n; j += 16) {
    const __mmask16 k = head_lanes(n - j);
    s = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a + j), _mm512_maskz_loadu_ps(k, b + j), s);
  }
  return lanes_sum(s);
}
#else
inline float row_max(const float* x, int n) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int j = 0; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

inline float row_sum(const float* x, int n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int j = 0; j < n; ++j) s += x[j];
  return s;
}

// sum_j a[j] * b[j]
inline float dot(const float* a, const float* b, int n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int j = 0; j < n; ++j) s += a[j] * b[j];
  return s;
}
#endif

#if defined(__AVX512F__)
// fast_exp of 16 lanes, bit for bit: the same operations in the same order, with the
// contractions GCC makes of fast_exp's expressions (xc * log2e + kRound and the
// polynomial's steps as fused multiply-adds, r - n * c as a fused negated one).  A loop
// over fast_exp vectorises only in whole vectors and leaves the rest of a row (up to 15
// elements) to scalar code; rows as short as attention's (a causal row of a 50-long
// sequence averages 25) spent half their exponentials there.
inline __m512 fast_exp16(__m512 x) {
  const __m512 hi = _mm512_set1_ps(88.3762626647949f), lo = _mm512_set1_ps(-87.3365447504019f);
  const __m512 round = _mm512_set1_ps(12582912.0f);
  const __m512 xc = _mm512_maskz_max_ps(0xffff, _mm512_maskz_min_ps(0xffff, x, hi), lo);
  const __m512 n = _mm512_sub_ps(_mm512_fmadd_ps(xc, _mm512_set1_ps(1.44269504088896341f), round), round);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500E-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
  p = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
  const __m512i bits = _mm512_maskz_slli_epi32(
      0xffff, _mm512_add_epi32(_mm512_maskz_cvttps_epi32(0xffff, n), _mm512_set1_epi32(127)), 23);
  __m512 out = _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
  out = _mm512_mask_mov_ps(out, _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ), _mm512_setzero_ps());
  out = _mm512_mask_mov_ps(out, _mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ),
                           _mm512_set1_ps(std::numeric_limits<float>::infinity()));
  return _mm512_mask_mov_ps(out, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
}

// x[j] = exp(x[j] - m) for j < n; returns the sum, added as row_sum adds.
inline float exp_sum_inplace(float* x, int n, float m) {
  const __m512 vm = _mm512_set1_ps(m);
  __m512 s = _mm512_setzero_ps();
  for (int j = 0; j < n; j += 16) {
    const __mmask16 k = head_lanes(n - j);
    const __m512 e = fast_exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), vm));
    _mm512_mask_storeu_ps(x + j, k, e);
    s = _mm512_add_ps(s, _mm512_maskz_mov_ps(k, e));
  }
  return lanes_sum(s);
}

// x[j] *= a for j < n
inline void scale_inplace(float* x, int n, float a) {
  const __m512 va = _mm512_set1_ps(a);
  for (int j = 0; j < n; j += 16) {
    const __mmask16 k = head_lanes(n - j);
    _mm512_mask_storeu_ps(x + j, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + j), va));
  }
}
#else
#if defined(__AVX2__) && defined(__FMA__)
// fast_exp of 8 lanes, bit for bit: fast_exp16's operations (above) on AVX2. GCC does not
// vectorise a loop that stores fast_exp (its selects stay branches there), so without this
// every exponential of the softmax losses and attention ran one float at a time on CPUs
// without AVX-512.
inline __m256 fast_exp8(__m256 x) {
  const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-87.3365447504019f);
  const __m256 round = _mm256_set1_ps(12582912.0f);
  const __m256 xc = _mm256_max_ps(_mm256_min_ps(x, hi), lo);  // NaN: hi, as fast_exp's select
  const __m256 n = _mm256_sub_ps(_mm256_fmadd_ps(xc, _mm256_set1_ps(1.44269504088896341f), round), round);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
  p = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
  __m256 out = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
  out = _mm256_blendv_ps(out, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
  out = _mm256_blendv_ps(out, _mm256_set1_ps(std::numeric_limits<float>::infinity()),
                         _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
  return _mm256_blendv_ps(out, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

// x[j] = exp(x[j] - m) for j < n; returns the sum (row_sum's).
inline float exp_sum_inplace(float* x, int n, float m) {
  const __m256 vm = _mm256_set1_ps(m);
  int j = 0;
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(x + j, fast_exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm)));
  for (; j < n; ++j) x[j] = fast_exp(x[j] - m);
  return row_sum(x, n);
}
#else
// x[j] = exp(x[j] - m) for j < n; returns the sum.
inline float exp_sum_inplace(float* x, int n, float m) {
#pragma omp simd
  for (int j = 0; j < n; ++j) x[j] = fast_exp(x[j] - m);
  return row_sum(x, n);
}
#endif

// x[j] *= a for j < n
inline void scale_inplace(float* x, int n, float a) {
#pragma omp simd
  for (int j = 0; j < n; ++j) x[j] *= a;
}
#endif

// sum_j exp(x[j] - m), x unchanged.
inline float exp_sum(const float* x, int n, float m) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int j = 0; j < n; ++j) s += fast_exp(x[j] - m);
  return s;
}

}  // namespace fsr::cpu
