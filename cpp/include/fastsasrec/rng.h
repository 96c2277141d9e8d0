// Counter-based random numbers: every draw is a pure function of
// (seed, stream, counter), so the CPU and CUDA backends draw the same dropout masks
// and negatives with no RNG state to carry between threads or kernels.
#pragma once

#include <cmath>
#include <cstdint>

#include "fastsasrec/common.h"

namespace fsr {

// SplitMix64's finalizer: a bijective 64-bit mix with full avalanche.
FSR_HD inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Key of a stream: hash of the seed and the stream id, computed once per op call.
FSR_HD inline uint64_t rng_key(uint64_t seed, uint64_t stream) {
  return mix64(seed * 0x9E3779B97F4A7C15ULL + mix64(stream + 0x632BE59BD9B4E019ULL));
}

// MurmurHash3's 32-bit finalizer: bijective, full avalanche, and 32-bit only, so the
// CPU loops that draw one number per element vectorise (AVX2 has 32-bit multiplies).
FSR_HD inline uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

// Draw `counter` of stream `key`: two finalizer rounds keyed by the two halves of the
// key (for a fixed key, a bijection of the low 32 counter bits).
FSR_HD inline uint32_t rng_u32(uint64_t key, uint64_t counter) {
  const uint32_t lo = static_cast<uint32_t>(counter), hi = static_cast<uint32_t>(counter >> 32);
  const uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  return fmix32(fmix32(lo ^ k0) ^ (k1 + hi * 0x9E3779B9u));
}

// Uniform in [0, 1) with 24 random bits (exact in float32).
FSR_HD inline float rng_uniform(uint64_t key, uint64_t counter) {
  return static_cast<float>(rng_u32(key, counter) >> 8) * (1.0f / 16777216.0f);
}

// Dropout's draws are 16 bits, two to a 32-bit draw: counter e takes the low half of
// rng_u32(key, e / 2) when e is even and the high half when it is odd, so that a vector loop
// hashes once for two neighbouring elements (cpu/keep_bits.h).  As a uniform in [0, 1):
// dropout_draw / 2^16.
FSR_HD inline uint32_t dropout_draw(uint64_t key, uint64_t counter) {
  return (rng_u32(key, counter >> 1) >> (static_cast<uint32_t>(counter & 1) * 16u)) & 0xFFFFu;
}
FSR_HD inline float dropout_uniform(uint64_t key, uint64_t counter) {
  return static_cast<float>(dropout_draw(key, counter)) * (1.0f / 65536.0f);
}

// Dropout keeps an element when its uniform is >= p, i.e. when its 16-bit draw is
// >= ceil(p * 2^16) (exact in float32): compared as integers, so that the loops vectorise.
// The rate kept is 1 - ceil(p * 2^16) / 2^16, within 2^-16 of 1 - p.
FSR_HD inline uint32_t dropout_threshold(float p) {
  return p <= 0.f ? 0u : static_cast<uint32_t>(ceilf(p * 65536.0f));
}
FSR_HD inline bool dropout_keep(uint64_t key, uint64_t counter, uint32_t threshold) {
  return dropout_draw(key, counter) >= threshold;
}

// Id dropout (feature_bag): item row i keeps its id embedding in the step of `key` when
// its draw (counter i) passes the threshold; no rescaling (m_i is 0 or 1).  The one
// definition of the mask, for both backends.
FSR_HD inline bool id_kept(uint64_t key, int64_t item, uint32_t threshold) {
  return dropout_keep(key, static_cast<uint64_t>(item), threshold);
}

// The dropout multiplier of one element: 1 / (1 - p) when kept, 0 when dropped.
FSR_HD inline float keep_scale(uint64_t key, uint64_t counter, uint32_t threshold, float inv_keep) {
  return dropout_keep(key, counter, threshold) ? inv_keep : 0.f;
}

// Uniform integer in [lo, hi] (inclusive), by Lemire's multiply-shift (bias < 2^-32 * range).
FSR_HD inline int32_t rng_int(uint64_t key, uint64_t counter, int32_t lo, int32_t hi) {
  uint64_t range = static_cast<uint64_t>(hi - lo) + 1;
  return lo + static_cast<int32_t>((static_cast<uint64_t>(rng_u32(key, counter)) * range) >> 32);
}

// Stream ids: one per random site, so no two sites ever share draws.
//   dropout at site s of training step k:  stream = k * kStreamsPerStep + s
//   s = 0 embedding; s = 1 + 3 * layer + {0 attention, 1 ffn hidden, 2 ffn output};
//   s = kStreamsPerStep - 1 the item table's id dropout (feature_bag; above every layer's)
// Samplers use their own seeds (seed ^ kSamplerSalt) so they never collide with dropout.
constexpr uint64_t kStreamsPerStep = 1024;
constexpr uint64_t kSamplerSalt = 0xA5A5F00DCAFEBEEFULL;
constexpr uint64_t kInitSalt = 0x1234ABCD5678EF01ULL;
inline uint64_t dropout_stream(uint64_t step, int site) { return step * kStreamsPerStep + site; }
inline int site_embedding() { return 0; }
inline int site_attention(int layer) { return 1 + 3 * layer; }
inline int site_ffn_hidden(int layer) { return 2 + 3 * layer; }
inline int site_ffn_out(int layer) { return 3 + 3 * layer; }
inline int site_id_dropout() { return (int)kStreamsPerStep - 1; }

}  // namespace fsr
