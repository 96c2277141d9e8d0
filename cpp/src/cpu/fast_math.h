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
  const float n = std::floor(xc * 1.44269504088896341f + 0.5f);
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
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  float out = p * scale;
  out = x < kLo ? 0.f : out;
  out = x > kHi ? std::numeric_limits<float>::infinity() : out;
  return x != x ? x : out;
}

}  // namespace fsr::cpu
