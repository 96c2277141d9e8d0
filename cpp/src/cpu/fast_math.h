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

// Row reductions as OpenMP SIMD reductions, so that they vectorise without -ffast-math
// (a plain float accumulator forbids reordering).  The vectorised order is fixed by the
// build, so results are deterministic.

inline float row_max(const float* x, int n) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int j = 0; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

// x[j] = exp(x[j] - m) for j < n; returns the sum.
inline float exp_sum_inplace(float* x, int n, float m) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int j = 0; j < n; ++j) {
    const float e = fast_exp(x[j] - m);
    x[j] = e;
    s += e;
  }
  return s;
}

// sum_j exp(x[j] - m), x unchanged.
inline float exp_sum(const float* x, int n, float m) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int j = 0; j < n; ++j) s += fast_exp(x[j] - m);
  return s;
}

// sum_j a[j] * b[j]
inline float dot(const float* a, const float* b, int n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int j = 0; j < n; ++j) s += a[j] * b[j];
  return s;
}

}  // namespace fsr::cpu
