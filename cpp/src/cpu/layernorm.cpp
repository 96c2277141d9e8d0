// LayerNorm over the last dimension, and the residual add that precedes it.
//   forward : mean(R), rstd(R) = 1/sqrt(var + eps) saved;  out(R,C) = (in - mean) * rstd * g + b
//   layernorm_residual_forward: sum(R,C) = a + dropout_p(b) (element r*C+c draws counter
//             r*C+c of key, as dropout_forward over the R*C block), then out = layernorm(sum)
//             with sum saved.  Its backward is layernorm_backward's din plus whatever else
//             reaches sum, passed to a unchanged and to b through dropout_backward.
//   backward: xhat = (in - mean) * rstd;  gh = dout * g
//             din  (= or +=) rstd * (gh - mean(gh) - xhat * mean(gh * xhat))
//             dg(C) += sum_r dout * xhat;   db(C) += sum_r dout
// dg and db are summed per thread over contiguous row chunks, then in thread order.
// Each row's sums: with AVX-512, 16 lanes of partial sums and a tree across them (the
// rows are C = 64 wide, where GCC's OpenMP SIMD reductions spent more on adding their
// lanes one at a time than on the row); with AVX2 and FMA, 8 lanes and horizontal adds;
// otherwise OpenMP SIMD reductions (a plain float accumulator may not be reordered
// without -ffast-math).  Each order is fixed by the build, so results stay deterministic.
// With AVX-512 or AVX2 the rows go four at a time, their trees reduced together
// (lanes_sum4, lanes_sum4_8: the same sums bit for bit as one row's): a row's chain of sum,
// mean, variance and square root is long for its 64 floats, and four side by side run
// in about half the time of one after another (a C++ harness, 6,400 rows of 64, one
// thread, AVX-512 on a Zen 4: the residual forward 0.33 -> 0.16 ms, the backward 0.149
// -> 0.111 ms).
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/fast_math.h"

#include "cpu/keep_bits.h"
#include "cpu/ops.h"
#include "cpu/parallel.h"
#include "fastsasrec/rng.h"

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#define FSR_LN_ROWS4 1  // rows four at a time (normalize_rows4, backward_rows4)
#endif

namespace fsr::cpu {

namespace {
#if !defined(FSR_LN_ROWS4)
// One row: o = (x - mean) * rstd * g + b, with mean and rstd stored.
inline void normalize_row(float* o, float* mean, float* rstd, const float* x, const float* g,
                          const float* b, int C, float eps) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int c = 0; c < C; ++c) s += x[c];
  const float m = s / C;
  float v = 0.f;
#pragma omp simd reduction(+ : v)
  for (int c = 0; c < C; ++c) v += (x[c] - m) * (x[c] - m);
  const float rs = 1.f / std::sqrt(v / C + eps);
  for (int c = 0; c < C; ++c) o[c] = (x[c] - m) * rs * g[c] + b[c];
  *mean = m;
  *rstd = rs;
}
#endif

#if defined(__AVX512F__)
// nr <= 4 consecutive rows (stride C): o = (x - mean) * rstd * g + b, with mean and rstd
// stored.  Each row's sums are 16 lanes of partial sums and lanes_sum's tree, the four
// rows' trees reduced together (lanes_sum4), so that the row-long dependency chains of
// four rows run side by side.  The rows past nr repeat row 0 and are not stored.
inline void normalize_rows4(float* o, float* mean, float* rstd, const float* x, const float* g,
                            const float* b, int C, float eps, int nr) {
  const float* xr[4];
  for (int k = 0; k < 4; ++k) xr[k] = x + (size_t)(k < nr ? k : 0) * C;
  const __m512 vC = _mm512_set1_ps((float)C);
  __m512 a[4];
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) a[k] = _mm512_setzero_ps();
  for (int c = 0; c < C; c += 16) {
    const __mmask16 h = head_lanes(C - c);
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) a[k] = _mm512_add_ps(a[k], _mm512_maskz_loadu_ps(h, xr[k] + c));
  }
  const __m512 m = _mm512_div_ps(lanes_sum4(a[0], a[1], a[2], a[3]), vC);
  const __m512 mk[4] = {quarter<0>(m), quarter<1>(m), quarter<2>(m), quarter<3>(m)};
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) a[k] = _mm512_setzero_ps();
  for (int c = 0; c < C; c += 16) {
    const __mmask16 h = head_lanes(C - c);
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      const __m512 d = _mm512_maskz_sub_ps(h, _mm512_maskz_loadu_ps(h, xr[k] + c), mk[k]);
      a[k] = _mm512_fmadd_ps(d, d, a[k]);
    }
  }
  const __m512 var = _mm512_add_ps(_mm512_div_ps(lanes_sum4(a[0], a[1], a[2], a[3]), vC), _mm512_set1_ps(eps));
  const __m512 rs = _mm512_div_ps(_mm512_set1_ps(1.f), _mm512_maskz_sqrt_ps(0xffff, var));
  const __m512 rk[4] = {quarter<0>(rs), quarter<1>(rs), quarter<2>(rs), quarter<3>(rs)};
  for (int c = 0; c < C; c += 16) {
    const __mmask16 h = head_lanes(C - c);
    const __m512 gv = _mm512_maskz_loadu_ps(h, g + c), bv = _mm512_maskz_loadu_ps(h, b + c);
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      if (k >= nr) break;
      const __m512 xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(h, xr[k] + c), mk[k]), rk[k]);
      _mm512_mask_storeu_ps(o + (size_t)k * C + c, h, _mm512_fmadd_ps(xh, gv, bv));
    }
  }
  alignas(64) float mv[16], rv[16];
  _mm512_store_ps(mv, m);
  _mm512_store_ps(rv, rs);
  for (int k = 0; k < nr; ++k) {
    mean[k] = mv[4 * k];
    rstd[k] = rv[4 * k];
  }
}
#endif

#if !defined(FSR_LN_ROWS4)
// One row of the backward: din (= or +=), and the row's dout * xhat and dout added to
// the thread's pg and pb.
inline void backward_row(float* o, float* pg, float* pb, const float* x, const float* d, const float* g,
                         float m, float rs, int C, bool accumulate) {
  float sum_gh = 0.f, sum_ghx = 0.f;
#pragma omp simd reduction(+ : sum_gh, sum_ghx)
  for (int c = 0; c < C; ++c) {
    const float xh = (x[c] - m) * rs;
    const float gh = d[c] * g[c];
    sum_gh += gh;
    sum_ghx += gh * xh;
    pg[c] += d[c] * xh;
    pb[c] += d[c];
  }
  const float mg = sum_gh / C, mgx = sum_ghx / C;
  for (int c = 0; c < C; ++c) {
    const float xh = (x[c] - m) * rs;
    const float v = rs * (d[c] * g[c] - mg - xh * mgx);
    o[c] = accumulate ? o[c] + v : v;
  }
}
#endif

#if defined(__AVX512F__)
// The backward of nr <= 4 consecutive rows (stride C): din (= or +=), and each row's
// dout * xhat and dout added to the thread's pg and pb, row after row.  Each row's two sums
// as in normalize_rows4, the rows' trees reduced together.  The rows past nr repeat row 0
// and touch nothing.
inline void backward_rows4(float* o, float* pg, float* pb, const float* x, const float* d, const float* g,
                           const float* mean, const float* rstd, int C, bool accumulate, int nr) {
  const float *xr[4], *dr[4];
  __m512 vm[4], vr[4], s_gh[4], s_ghx[4];
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) {
    const int q = k < nr ? k : 0;
    xr[k] = x + (size_t)q * C;
    dr[k] = d + (size_t)q * C;
    vm[k] = _mm512_set1_ps(mean[q]);
    vr[k] = _mm512_set1_ps(rstd[q]);
    s_gh[k] = s_ghx[k] = _mm512_setzero_ps();
  }
  for (int c = 0; c < C; c += 16) {
    const __mmask16 h = head_lanes(C - c);
    const __m512 gv = _mm512_maskz_loadu_ps(h, g + c);
    __m512 pgv = _mm512_maskz_loadu_ps(h, pg + c), pbv = _mm512_maskz_loadu_ps(h, pb + c);
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      const __m512 xh = _mm512_maskz_mul_ps(h, _mm512_sub_ps(_mm512_maskz_loadu_ps(h, xr[k] + c), vm[k]), vr[k]);
      const __m512 dv = _mm512_maskz_loadu_ps(h, dr[k] + c);
      const __m512 gh = _mm512_mul_ps(dv, gv);
      s_gh[k] = _mm512_add_ps(s_gh[k], gh);
      s_ghx[k] = _mm512_fmadd_ps(gh, xh, s_ghx[k]);
      if (k < nr) {
        pgv = _mm512_fmadd_ps(dv, xh, pgv);
        pbv = _mm512_add_ps(dv, pbv);
      }
    }
    _mm512_mask_storeu_ps(pg + c, h, pgv);
    _mm512_mask_storeu_ps(pb + c, h, pbv);
  }
  const __m512 vC = _mm512_set1_ps((float)C);
  const __m512 mg = _mm512_div_ps(lanes_sum4(s_gh[0], s_gh[1], s_gh[2], s_gh[3]), vC);
  const __m512 mgx = _mm512_div_ps(lanes_sum4(s_ghx[0], s_ghx[1], s_ghx[2], s_ghx[3]), vC);
  const __m512 mgk[4] = {quarter<0>(mg), quarter<1>(mg), quarter<2>(mg), quarter<3>(mg)};
  const __m512 mgxk[4] = {quarter<0>(mgx), quarter<1>(mgx), quarter<2>(mgx), quarter<3>(mgx)};
  for (int c = 0; c < C; c += 16) {
    const __mmask16 h = head_lanes(C - c);
    const __m512 gv = _mm512_maskz_loadu_ps(h, g + c);
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      if (k >= nr) break;
      const __m512 xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(h, xr[k] + c), vm[k]), vr[k]);
      const __m512 gh = _mm512_mul_ps(_mm512_maskz_loadu_ps(h, dr[k] + c), gv);
      __m512 v = _mm512_mul_ps(vr[k], _mm512_sub_ps(_mm512_sub_ps(gh, mgk[k]), _mm512_mul_ps(xh, mgxk[k])));
      float* ok = o + (size_t)k * C + c;
      if (accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(h, ok), v);
      _mm512_mask_storeu_ps(ok, h, v);
    }
  }
}
#elif defined(FSR_LN_ROWS4)
// AVX2: the same two functions on 8 lanes, the four rows' sums reduced together by
// horizontal adds (a row's own lanes in the order hadd pairs them).
inline __m256i lanes8(int n) {  // lanes [0, n) selected (the sign bit set)
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline __m256 load8(const float* p, int left) {  // lanes past `left` read as zero
  return left >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lanes8(left));
}
inline void store8(float* p, int left, __m256 v) {
  if (left >= 8)
    _mm256_storeu_ps(p, v);
  else
    _mm256_maskstore_ps(p, lanes8(left), v);
}
// [sum of a's lanes, b's, c's, d's]
inline __m128 lanes_sum4_8(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

inline void normalize_rows4(float* o, float* mean, float* rstd, const float* x, const float* g,
                            const float* b, int C, float eps, int nr) {
  const float* xr[4];
  for (int k = 0; k < 4; ++k) xr[k] = x + (size_t)(k < nr ? k : 0) * C;
  __m256 a[4];
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) a[k] = _mm256_setzero_ps();
  for (int c = 0; c < C; c += 8)
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) a[k] = _mm256_add_ps(a[k], load8(xr[k] + c, C - c));
  const __m128 vC = _mm_set1_ps((float)C);
  alignas(16) float mv[4], rv[4];
  _mm_store_ps(mv, _mm_div_ps(lanes_sum4_8(a[0], a[1], a[2], a[3]), vC));
  const __m256 mk[4] = {_mm256_set1_ps(mv[0]), _mm256_set1_ps(mv[1]), _mm256_set1_ps(mv[2]), _mm256_set1_ps(mv[3])};
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) a[k] = _mm256_setzero_ps();
  for (int c = 0; c < C; c += 8) {
    const __m256 live = _mm256_castsi256_ps(lanes8(C - c));
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      const __m256 d = _mm256_and_ps(_mm256_sub_ps(load8(xr[k] + c, C - c), mk[k]), live);
      a[k] = _mm256_fmadd_ps(d, d, a[k]);
    }
  }
  const __m128 var = _mm_add_ps(_mm_div_ps(lanes_sum4_8(a[0], a[1], a[2], a[3]), vC), _mm_set1_ps(eps));
  _mm_store_ps(rv, _mm_div_ps(_mm_set1_ps(1.f), _mm_sqrt_ps(var)));
  const __m256 rk[4] = {_mm256_set1_ps(rv[0]), _mm256_set1_ps(rv[1]), _mm256_set1_ps(rv[2]), _mm256_set1_ps(rv[3])};
  for (int c = 0; c < C; c += 8) {
    const __m256 gv = load8(g + c, C - c), bv = load8(b + c, C - c);
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      if (k >= nr) break;
      const __m256 xh = _mm256_mul_ps(_mm256_sub_ps(load8(xr[k] + c, C - c), mk[k]), rk[k]);
      store8(o + (size_t)k * C + c, C - c, _mm256_fmadd_ps(xh, gv, bv));
    }
  }
  for (int k = 0; k < nr; ++k) {
    mean[k] = mv[k];
    rstd[k] = rv[k];
  }
}

inline void backward_rows4(float* o, float* pg, float* pb, const float* x, const float* d, const float* g,
                           const float* mean, const float* rstd, int C, bool accumulate, int nr) {
  const float *xr[4], *dr[4];
  __m256 vm[4], vr[4], s_gh[4], s_ghx[4];
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) {
    const int q = k < nr ? k : 0;
    xr[k] = x + (size_t)q * C;
    dr[k] = d + (size_t)q * C;
    vm[k] = _mm256_set1_ps(mean[q]);
    vr[k] = _mm256_set1_ps(rstd[q]);
    s_gh[k] = s_ghx[k] = _mm256_setzero_ps();
  }
  for (int c = 0; c < C; c += 8) {
    const int left = C - c;
    const __m256 live = _mm256_castsi256_ps(lanes8(left));
    const __m256 gv = load8(g + c, left);
    __m256 pgv = load8(pg + c, left), pbv = load8(pb + c, left);
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      const __m256 xh = _mm256_and_ps(_mm256_mul_ps(_mm256_sub_ps(load8(xr[k] + c, left), vm[k]), vr[k]), live);
      const __m256 dv = load8(dr[k] + c, left);
      const __m256 gh = _mm256_mul_ps(dv, gv);
      s_gh[k] = _mm256_add_ps(s_gh[k], gh);
      s_ghx[k] = _mm256_fmadd_ps(gh, xh, s_ghx[k]);
      if (k < nr) {
        pgv = _mm256_fmadd_ps(dv, xh, pgv);
        pbv = _mm256_add_ps(dv, pbv);
      }
    }
    store8(pg + c, left, pgv);
    store8(pb + c, left, pbv);
  }
  const __m128 vC = _mm_set1_ps((float)C);
  alignas(16) float mgv[4], mgxv[4];
  _mm_store_ps(mgv, _mm_div_ps(lanes_sum4_8(s_gh[0], s_gh[1], s_gh[2], s_gh[3]), vC));
  _mm_store_ps(mgxv, _mm_div_ps(lanes_sum4_8(s_ghx[0], s_ghx[1], s_ghx[2], s_ghx[3]), vC));
  for (int c = 0; c < C; c += 8) {
    const int left = C - c;
    const __m256 gv = load8(g + c, left);
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      if (k >= nr) break;
      const __m256 xh = _mm256_mul_ps(_mm256_sub_ps(load8(xr[k] + c, left), vm[k]), vr[k]);
      const __m256 gh = _mm256_mul_ps(load8(dr[k] + c, left), gv);
      __m256 v = _mm256_mul_ps(vr[k], _mm256_sub_ps(_mm256_sub_ps(gh, _mm256_set1_ps(mgv[k])),
                                                    _mm256_mul_ps(xh, _mm256_set1_ps(mgxv[k]))));
      float* ok = o + (size_t)k * C + c;
      if (accumulate) v = _mm256_add_ps(load8(ok, left), v);
      store8(ok, left, v);
    }
  }
}
#endif
}  // namespace

void layernorm_forward(const Context& ctx, float* out, float* mean, float* rstd, const float* in, const float* g,
                       const float* b, int R, int C, float eps) {
  parallel_chunks(ctx.threads, R, C, [&](long r0, long r1, int) {
#if defined(FSR_LN_ROWS4)
    for (long r = r0; r < r1; r += 4)
      normalize_rows4(out + (size_t)r * C, mean + r, rstd + r, in + (size_t)r * C, g, b, C, eps,
                      (int)std::min<long>(4, r1 - r));
#else
    for (long r = r0; r < r1; ++r)
      normalize_row(out + (size_t)r * C, mean + r, rstd + r, in + (size_t)r * C, g, b, C, eps);
#endif
  });
}

#if FSR_KEEP_BITS
namespace {
// s = a + b * keep_scale(key, c + e), e < n.
inline void dropped_sum(float* s, const float* a, const float* b, size_t n, uint64_t key,
                                           uint32_t thr, uint64_t c, float inv_keep) {
  const __m512 vs = _mm512_set1_ps(inv_keep);
  keep_blocks(n, key, thr, c, [&](size_t i, __mmask16 keep, __mmask16 valid) {
    _mm512_mask_storeu_ps(s + i, valid, _mm512_fmadd_ps(_mm512_maskz_loadu_ps(valid, b + i), keep_mult(keep, vs),
                                                        _mm512_maskz_loadu_ps(valid, a + i)));
  });
}
}  // namespace
#endif

void layernorm_residual_forward(const Context& ctx, float* sum, float* out, float* mean, float* rstd, const float* a,
                                const float* b, float p, uint64_t key, const float* g,
                                const float* beta, int R, int C, float eps) {
  const float inv_keep = p > 0.f ? 1.f / (1.f - p) : 1.f;
  const uint32_t thr = dropout_threshold(p);
  parallel_chunks(ctx.threads, R, C, [&](long r0, long r1, int) {
#if defined(FSR_LN_ROWS4)
    constexpr long kRows = 4;  // rows summed, then normalised together
#else
    constexpr long kRows = 1;
#endif
    for (long r = r0; r < r1; r += kRows) {
      const long nr = std::min(kRows, r1 - r);
      const size_t o = (size_t)r * C, n = (size_t)nr * C;
      float* s = sum + o;
      if (p > 0.f) {
#if FSR_KEEP_BITS
        dropped_sum(s, a + o, b + o, n, key, thr, (uint64_t)o, inv_keep);
#else
        for (size_t e = 0; e < n; ++e)
          s[e] = a[o + e] + b[o + e] * keep_scale(key, (uint64_t)(o + e), thr, inv_keep);
#endif
      } else
        for (size_t e = 0; e < n; ++e) s[e] = a[o + e] + b[o + e];
#if defined(FSR_LN_ROWS4)
      normalize_rows4(out + o, mean + r, rstd + r, s, g, beta, C, eps, (int)nr);
#else
      normalize_row(out + o, mean + r, rstd + r, s, g, beta, C, eps);
#endif
    }
  });
}

void layernorm_backward(const Context& ctx, float* din, float* dg, float* db, const float* dout, const float* in,
                        const float* mean, const float* rstd, const float* g, int R, int C,
                        bool accumulate) {
  const int nt = ctx.threads;
  std::vector<float> part((size_t)nt * 2 * C, 0.f);
  parallel_chunks(ctx.threads, R, C, [&](long r0, long r1, int t) {
    float* pg = part.data() + (size_t)t * 2 * C;
    float* pb = pg + C;
#if defined(FSR_LN_ROWS4)
    for (long r = r0; r < r1; r += 4)
      backward_rows4(din + (size_t)r * C, pg, pb, in + (size_t)r * C, dout + (size_t)r * C, g, mean + r,
                     rstd + r, C, accumulate, (int)std::min<long>(4, r1 - r));
#else
    for (long r = r0; r < r1; ++r)
      backward_row(din + (size_t)r * C, pg, pb, in + (size_t)r * C, dout + (size_t)r * C, g, mean[r],
                   rstd[r], C, accumulate);
#endif
  });
  for (int t = 0; t < nt; ++t) {
    const float* pg = part.data() + (size_t)t * 2 * C;
    for (int c = 0; c < C; ++c) {
      dg[c] += pg[c];
      db[c] += pg[C + c];
    }
  }
}

}  // namespace fsr::cpu
