// gemm_bf16_kernel: C(M,N) = alpha * op(A) op(B) + beta * C on bfloat16 operands with fp32
// sums, by AVX-512 BF16's vdpbf16ps (two products of bf16 pairs added to an fp32 lane).
// A and B are fp32 as gemm takes them (row-major, the same transpose flags and leading
// dimensions); packing rounds them to bf16 to nearest, ties to even, bit for bit as
// round_bf16 does (NaN stays NaN, a value past bf16's largest rounds to inf).  The product
// of two bf16 numbers is exact in fp32, so this computes what round_bf16 + sgemm computes,
// in another summation order; vdpbf16ps also treats subnormal operands and sums as zero.
// This file alone is compiled with -mavx512bf16 (CMakeLists.txt); its kernel runs only
// where gemm_bf16 (gemm.cpp, the dispatch and the fallback) has found the instructions.
//
// Blocking (one thread, C's block): for NC columns at a time, for KC depths at a time, B's
// block is packed as panels of NR = 32 columns, each depth pair (k, k+1) one row of 32 bf16
// pairs (two zmm registers); then for each MR = 8 rows of A, its MR x KC block is packed as
// bf16 pairs, and an 8 x 32 tile of C is summed in 16 zmm registers per panel.  Depth past K
// and rows or columns past the block are zero in the packs and never stored.  Packing
// rounds 32 floats an instruction (vcvtne2ps2bf16; see round32 for its one difference from
// round_bf16, and how it is kept out) and puts pairs side by side with word permutes; a
// transposed B is rounded a column at a time and transposed in registers, 16 x 16 words.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu/fast_math.h"  // head_lanes, round_bf16_lanes
#include "cpu/ops.h"

#if defined(__AVX512F__) && defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__)
#include <immintrin.h>
#define FSR_HAVE_BF16_KERNEL 1
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 warns of the "undefined" source operand of its own AVX-512 shift intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#endif

namespace fsr::cpu {

#ifdef FSR_HAVE_BF16_KERNEL

namespace {
constexpr int MR = 8, NR = 32;
constexpr int KC = 512, NC = 256;  // a B block of KC x NC bf16 = 256 KiB (L2)
constexpr int KP = KC / 2;         // depth pairs of a block

// Each lane's float rounded to bf16 (round_bf16's rule), in the lane's high 16 bits.
inline __m512i round_hi(__m512 x) { return _mm512_castps_si512(round_bf16_lanes(x)); }

// Floats rounded by the instruction (vcvtne2ps2bf16, 32 at a time), which rounds to nearest even
// as round_bf16 does but takes subnormal inputs as zero; round_bf16 may round the largest
// of them up to FLT_MIN, a normal operand.  A vector holding any subnormal therefore takes
// round_hi, so the packs equal round_bf16's bit for bit; real data almost never does.
inline bool any_subnormal(__m512 x) { return _mm512_fpclass_ps_mask(x, 0x20) != 0; }

// 32 floats (lo: the first 16) as 32 bf16 in order, round_bf16's rule.
inline __m512i round32(__m512 lo, __m512 hi) {
  if (__builtin_expect(any_subnormal(lo) || any_subnormal(hi), 0)) {
    const __m512i l = _mm512_srli_epi32(round_hi(lo), 16), h = _mm512_srli_epi32(round_hi(hi), 16);
    return _mm512_permutex2var_epi16(l, _mm512_set_epi16(62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34, 32,
                                                         30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0),
                                     h);
  }
  return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

// Interleaves the halves of v (bf16 lanes 0-15 and 16-31): lane j of the result is the
// pair (v[j], v[16 + j]) as one 32-bit word.
inline __m512i interleave_halves(__m512i v) {
  return _mm512_permutexvar_epi16(_mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                                   23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0),
                                  v);
}

// Lane j: the pair (lo[j], hi[j]) rounded, lo in the low half (the depth k, hi k + 1).
inline __m512i pair(__m512 lo, __m512 hi) { return interleave_halves(round32(lo, hi)); }

// kc contiguous floats rounded to bf16 into dst's 2 * kp halves (the depth past kc zero).
inline void round_row(uint16_t* dst, const float* src, int kc, int kp) {
  for (int k = 0; k < 2 * kp; k += 32) {
    const __m512 lo = _mm512_maskz_loadu_ps(head_lanes(kc - k), src + k);
    const __m512 hi = _mm512_maskz_loadu_ps(head_lanes(kc - k - 16), src + k + 16);
    const __mmask32 m = (__mmask32)head_lanes(2 * kp - k) | ((__mmask32)head_lanes(2 * kp - k - 16) << 16);
    _mm512_mask_storeu_epi16(dst + k, m, round32(lo, hi));
  }
}

// A's rows i0..i0+mr-1 (of op(A)), depths k0..k0+kc-1, as pairs.  Not transposed: row i's
// pairs consecutive (Ap[i * kp + p]); transposed: each pair's 8 rows consecutive (Ap[p * 8 + i]).
void pack_a(uint32_t* Ap, bool ta, const float* A, int lda, int i0, int mr, int k0, int kc) {
  const int kp = (kc + 1) / 2;
  if (!ta) {
    for (int i = 0; i < MR; ++i) {
      uint16_t* dst = reinterpret_cast<uint16_t*>(Ap + (size_t)i * kp);
      if (i >= mr) {
        std::memset(dst, 0, (size_t)kp * 4);
        continue;
      }
      round_row(dst, A + (size_t)(i0 + i) * lda + k0, kc, kp);
    }
    return;
  }
  // Two pairs at a time: depths k, k + 2 in one vector and k + 1, k + 3 in the other (eight
  // rows each), rounded together, their halves interleaved into pairs p and p + 1.
  const __mmask16 rows = head_lanes(mr);
  auto row = [&](int d) {  // A's depth k0 + d, rows i0.. (zero past kc)
    return d < kc ? _mm256_maskz_loadu_ps((__mmask8)rows, A + (size_t)(k0 + d) * lda + i0) : _mm256_setzero_ps();
  };
  for (int p = 0; p < kp; p += 2) {
    const int d = 2 * p;
    const __m512 lo = _mm512_insertf32x8(_mm512_castps256_ps512(row(d)), row(d + 2), 1);
    const __m512 hi = _mm512_insertf32x8(_mm512_castps256_ps512(row(d + 1)), row(d + 3), 1);
    const __m512i v = interleave_halves(round32(lo, hi));
    if (p + 1 < kp)
      _mm512_storeu_si512(Ap + (size_t)p * MR, v);
    else
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(Ap + (size_t)p * MR), _mm512_castsi512_si256(v));
  }
}

// v[r] (16 words each) transposed in place: word c of v[r] becomes word r of v[c].
inline void transpose16(__m512i v[16]) {
  __m512i t[16];
  for (int r = 0; r < 16; r += 2) {
    t[r] = _mm512_unpacklo_epi32(v[r], v[r + 1]);
    t[r + 1] = _mm512_unpackhi_epi32(v[r], v[r + 1]);
  }
  for (int r = 0; r < 16; r += 4) {
    v[r] = _mm512_unpacklo_epi64(t[r], t[r + 2]);
    v[r + 1] = _mm512_unpackhi_epi64(t[r], t[r + 2]);
    v[r + 2] = _mm512_unpacklo_epi64(t[r + 1], t[r + 3]);
    v[r + 3] = _mm512_unpackhi_epi64(t[r + 1], t[r + 3]);
  }
  for (int h = 0; h < 16; h += 8)
    for (int r = 0; r < 4; ++r) {
      t[h + r] = _mm512_shuffle_i32x4(v[h + r], v[h + r + 4], 0x88);
      t[h + r + 4] = _mm512_shuffle_i32x4(v[h + r], v[h + r + 4], 0xdd);
    }
  for (int r = 0; r < 8; ++r) {
    v[r] = _mm512_shuffle_i32x4(t[r], t[r + 8], 0x88);
    v[r + 8] = _mm512_shuffle_i32x4(t[r], t[r + 8], 0xdd);
  }
}

// B's depths k0..k0+kc-1 and columns j0..j0+nc-1 (of op(B)) as panels of NR columns:
// panel q, pair p at Bp[(q * kp + p) * NR].
void pack_b(uint32_t* Bp, bool tb, const float* B, int ldb, int k0, int kc, int j0, int nc) {
  const int kp = (kc + 1) / 2;
  for (int q = 0; q * NR < nc; ++q) {
    const int jq = j0 + q * NR, w = std::min(NR, nc - q * NR);
    uint32_t* P = Bp + (size_t)q * kp * NR;
    if (!tb) {
      const __mmask16 m0 = head_lanes(w), m1 = head_lanes(w - 16);
      for (int p = 0; p < kp; ++p) {
        const float* r0 = B + (size_t)(k0 + 2 * p) * ldb + jq;
        const bool has1 = 2 * p + 1 < kc;
        const float* r1 = r0 + ldb;
        const __m512 z = _mm512_setzero_ps();
        _mm512_storeu_si512(P + (size_t)p * NR,
                            pair(_mm512_maskz_loadu_ps(m0, r0), has1 ? _mm512_maskz_loadu_ps(m0, r1) : z));
        _mm512_storeu_si512(P + (size_t)p * NR + 16,
                            pair(_mm512_maskz_loadu_ps(m1, r0 + 16), has1 ? _mm512_maskz_loadu_ps(m1, r1 + 16) : z));
      }
      continue;
    }
    // Transposed: column j of op(B) is row j of B, contiguous in depth.  Sixteen columns by
    // sixteen pairs at a time: each column's 32 depths rounded into one vector of 16 pairs,
    // then the 16 x 16 words transposed in registers, a vector per pair.
    for (int j0 = 0; j0 < NR; j0 += 16)
      for (int p0 = 0; p0 < kp; p0 += 16) {
        const int d = 2 * p0;
        __m512i v[16];
        for (int r = 0; r < 16; ++r) {
          if (j0 + r >= w) {
            v[r] = _mm512_setzero_si512();
            continue;
          }
          const float* src = B + (size_t)(jq + j0 + r) * ldb + k0 + d;
          v[r] = round32(_mm512_maskz_loadu_ps(head_lanes(kc - d), src), _mm512_maskz_loadu_ps(head_lanes(kc - d - 16), src + 16));
        }
        transpose16(v);
        for (int p = 0; p < 16 && p0 + p < kp; ++p) _mm512_storeu_si512(P + (size_t)(p0 + p) * NR + j0, v[p]);
      }
  }
}

// The 8 x 32 tile: acc = sum over kp pairs of A's pairs (by rows) times the panel's.
template <bool kTransA>
inline void tile(__m512 acc[MR][2], const uint32_t* Ap, int kp, const uint32_t* P) {
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int p = 0; p < kp; ++p) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(P + (size_t)p * NR);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(P + (size_t)p * NR + 16);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const uint32_t a = kTransA ? Ap[(size_t)p * MR + i] : Ap[(size_t)i * kp + p];
      const __m512bh av = (__m512bh)_mm512_set1_epi32((int)a);
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], av, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], av, b1);
    }
  }
}

// C's tile rows i < mr, columns < w: = alpha acc + beta C (first depth block; beta 0 never
// reads C), or += alpha acc (later blocks).
inline void store(float* C, int ldc, const __m512 acc[MR][2], int mr, int w, float alpha, float beta,
                  bool first_block) {
  const __mmask16 m[2] = {head_lanes(w), head_lanes(w - 16)};
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(first_block ? beta : 1.f);
  const bool read = !first_block || beta != 0.f;
  for (int i = 0; i < mr; ++i)
    for (int h = 0; h < 2; ++h) {
      if (!m[h]) continue;
      float* c = C + (size_t)i * ldc + 16 * h;
      __m512 v = alpha == 1.f ? acc[i][h] : _mm512_mul_ps(va, acc[i][h]);  // (the same: 1 x is exact)
      if (read) v = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m[h], c), v);
      _mm512_mask_storeu_ps(c, m[h], v);
    }
}
}  // namespace

bool gemm_bf16_kernel_compiled() { return true; }

size_t gemm_bf16_kernel_scratch() {  // uint32 words: A's pack, B's packs
  return (size_t)MR * KP + (size_t)KP * NC + 16;
}

void gemm_bf16_kernel(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
                      const float* B, int ldb, float beta, float* C, int ldc, uint32_t* scratch) {
  if (M <= 0 || N <= 0) return;
  uint32_t* const base = reinterpret_cast<uint32_t*>(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
  uint32_t* const Ap = base;
  uint32_t* const Bp = Ap + (size_t)MR * KP;
  __m512 acc[MR][2];
  for (int j0 = 0; j0 < N; j0 += NC) {
    const int nc = std::min(NC, N - j0);
    for (int k0 = 0; k0 < K; k0 += KC) {
      const int kc = std::min(KC, K - k0), kp = (kc + 1) / 2;
      pack_b(Bp, tb, B, ldb, k0, kc, j0, nc);
      for (int i0 = 0; i0 < M; i0 += MR) {
        const int mr = std::min(MR, M - i0);
        pack_a(Ap, ta, A, lda, i0, mr, k0, kc);
        for (int q = 0; q * NR < nc; ++q) {
          const uint32_t* P = Bp + (size_t)q * kp * NR;
          if (ta)
            tile<true>(acc, Ap, kp, P);
          else
            tile<false>(acc, Ap, kp, P);
          store(C + (size_t)i0 * ldc + j0 + q * NR, ldc, acc, mr, std::min(NR, nc - q * NR), alpha,
                beta, k0 == 0);
        }
      }
    }
  }
}

#else  // the compiler lacks AVX-512 BF16: gemm_bf16 always takes its fallback

bool gemm_bf16_kernel_compiled() { return false; }
size_t gemm_bf16_kernel_scratch() { return 0; }
void gemm_bf16_kernel(bool, bool, int, int, int, float, const float*, int, const float*, int, float,
                      float*, int, uint32_t*) {}

#endif

}  // namespace fsr::cpu
