// Dropout's keep decisions (fastsasrec/rng.h: dropout_keep) 32 counters at a time, for the
// CPU loops that apply a mask: 16 hashes of rng_u32 give 32 draws of 16 bits, the low half
// of hash l being counter 2l's draw and the high half counter 2l+1's, which is the order of
// the 32 16-bit lanes of the hashes' register; one unsigned compare makes the 32 keep bits.
// The same decisions as dropout_keep, bit for bit (tests/test_ops.py checks every masked op
// against tests/reference's draws).  scale_kept, the common case, exists in every build
// (element by element without AVX-512 BW); the ops' own masked loops (FSR_KEEP_BITS) keep a
// scalar twin for such builds.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu/fast_math.h"  // head_lanes
#include "fastsasrec/rng.h"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define FSR_KEEP_BITS 1

namespace fsr::cpu {

// The keep bits of counters c, c + 1, ... in order, 32 a call.
class KeepBits {
 public:
  KeepBits(uint64_t key, uint32_t threshold, uint64_t counter)
      : k0_(_mm512_set1_epi32((int)(uint32_t)key)), k1_((uint32_t)(key >> 32)),
        thr_(_mm512_set1_epi16((short)(uint16_t)threshold)), some_(threshold > 0xFFFFu ? 0u : ~0u),
        q_(counter >> 1), odd_(counter & 1) {
    if (odd_) cur_ = pairs(q_);
  }
  // Bit i: whether counter c + i keeps, c the first counter not yet returned.
  uint32_t next() {
    if (!odd_) {
      const uint32_t r = pairs(q_);
      q_ += 16;
      return r;
    }
    q_ += 16;
    const uint32_t nxt = pairs(q_);  // counters 2 q_ .. 2 q_ + 31
    const uint32_t r = (cur_ >> 1) | (nxt << 31);
    cur_ = nxt;
    return r;
  }

 private:
  // The keep bits of counters 2q .. 2q + 31: draws rng_u32(key, q + l), l < 16.
  uint32_t pairs(uint64_t q) const {
    const uint32_t lo0 = (uint32_t)q, hi0 = (uint32_t)(q >> 32);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i lo = _mm512_add_epi32(_mm512_set1_epi32((int)lo0), lane);
    __m512i kh = _mm512_set1_epi32((int)(k1_ + hi0 * 0x9E3779B9u));
    if (lo0 > 0xFFFFFFF0u) {  // lo wraps past 2^32 in some lane: there the high half is one more
      const __mmask16 wrapped = _mm512_cmplt_epu32_mask(lo, _mm512_set1_epi32((int)lo0));
      kh = _mm512_mask_add_epi32(kh, wrapped, kh, _mm512_set1_epi32((int)0x9E3779B9u));
    }
    const __m512i h = fmix(_mm512_xor_si512(fmix(_mm512_xor_si512(lo, k0_)), kh));
    return (uint32_t)_mm512_cmpge_epu16_mask(h, thr_) & some_;
  }
  // rng.h's fmix32, 16 lanes (the shifts in their masked form, all lanes set: the plain
  // form passes an undefined source that GCC 12 warns of)
  static __m512i fmix(__m512i h) {
    const __mmask16 all = 0xFFFF;
    h = _mm512_xor_si512(h, _mm512_maskz_srli_epi32(all, h, 16));
    h = _mm512_mullo_epi32(h, _mm512_set1_epi32((int)0x85EBCA6Bu));
    h = _mm512_xor_si512(h, _mm512_maskz_srli_epi32(all, h, 13));
    h = _mm512_mullo_epi32(h, _mm512_set1_epi32((int)0xC2B2AE35u));
    return _mm512_xor_si512(h, _mm512_maskz_srli_epi32(all, h, 16));
  }
  __m512i k0_;
  uint32_t k1_;
  __m512i thr_;
  uint32_t some_;  // 0 at threshold 2^16, where nothing keeps
  uint64_t q_;
  bool odd_;
  uint32_t cur_ = 0;
};

// Calls body(i, keep, valid) for i = 0, 16, 32, ... < n: keep holds the keep bits of counters
// c + i .. c + i + 15, valid the lanes below n (all 16 but in the last block or two).
template <class Body>
inline void keep_blocks(size_t n, uint64_t key, uint32_t threshold, uint64_t c, Body&& body) {
  KeepBits kb(key, threshold, c);
  const __mmask16 all = 0xFFFF;
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const uint32_t bits = kb.next();
    body(i, (__mmask16)bits, all);
    body(i + 16, (__mmask16)(bits >> 16), all);
  }
  if (i < n) {
    const uint32_t bits = kb.next();
    const int left = (int)(n - i);  // 1..31
    body(i, (__mmask16)bits, head_lanes(left));
    if (left > 16) body(i + 16, (__mmask16)(bits >> 16), head_lanes(left - 16));
  }
}

// The multipliers of 16 lanes: s where kept, 0 where dropped (x * it is x * keep_scale).
inline __m512 keep_mult(__mmask16 keep, __m512 s) { return _mm512_maskz_mov_ps(keep, s); }

// x[i] = y[i] * keep_scale(key, c + i, threshold, s), i < n (x may be y).
inline void scale_kept(float* x, const float* y, size_t n, uint64_t key, uint32_t threshold,
                       uint64_t c, float s) {
  const __m512 vs = _mm512_set1_ps(s);
  keep_blocks(n, key, threshold, c, [&](size_t i, __mmask16 keep, __mmask16 valid) {
    _mm512_mask_storeu_ps(x + i, valid, _mm512_mul_ps(_mm512_maskz_loadu_ps(valid, y + i), keep_mult(keep, vs)));
  });
}

}  // namespace fsr::cpu
#else
namespace fsr::cpu {
// x[i] = y[i] * keep_scale(key, c + i, threshold, s), i < n (x may be y), element by element.
inline void scale_kept(float* x, const float* y, size_t n, uint64_t key, uint32_t threshold,
                       uint64_t c, float s) {
  for (size_t i = 0; i < n; ++i) x[i] = y[i] * keep_scale(key, c + i, threshold, s);
}
}  // namespace fsr::cpu
#endif
