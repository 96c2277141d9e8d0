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
// lanes one at a time than on the row); otherwise OpenMP SIMD reductions (a plain float
// accumulator may not be reordered without -ffast-math).  Either order is fixed by the
// build, so results stay deterministic.
#include <cmath>
#include <vector>

#include "cpu/fast_math.h"

#include "cpu/ops.h"
#include "cpu/parallel.h"
#include "fastsasrec/rng.h"

namespace fsr::cpu {

namespace {
// One row: o = (x - mean) * rstd * g + b, with mean and rstd stored.
inline void normalize_row(float* o, float* mean, float* rstd, const float* x, const float* g,
                          const float* b, int C, float eps) {
#if defined(__AVX512F__)
  const float m = row_sum(x, C) / C;
  const __m512 vm = _mm512_set1_ps(m);
  __m512 acc = _mm512_setzero_ps();
  for (int c = 0; c < C; c += 16) {
    const __mmask16 k = head_lanes(C - c);
    const __m512 d = _mm512_maskz_sub_ps(k, _mm512_maskz_loadu_ps(k, x + c), vm);
    acc = _mm512_fmadd_ps(d, d, acc);
  }
  const float rs = 1.f / std::sqrt(lanes_sum(acc) / C + eps);
  const __m512 vr = _mm512_set1_ps(rs);
  for (int c = 0; c < C; c += 16) {
    const __mmask16 k = head_lanes(C - c);
    const __m512 xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + c), vm), vr);
    _mm512_mask_storeu_ps(o + c, k, _mm512_fmadd_ps(xh, _mm512_maskz_loadu_ps(k, g + c),
                                                    _mm512_maskz_loadu_ps(k, b + c)));
  }
#else
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int c = 0; c < C; ++c) s += x[c];
  const float m = s / C;
  float v = 0.f;
#pragma omp simd reduction(+ : v)
  for (int c = 0; c < C; ++c) v += (x[c] - m) * (x[c] - m);
  const float rs = 1.f / std::sqrt(v / C + eps);
  for (int c = 0; c < C; ++c) o[c] = (x[c] - m) * rs * g[c] + b[c];
#endif
  *mean = m;
  *rstd = rs;
}

// One row of the backward: din (= or +=), and the row's dout * xhat and dout added to
// the thread's pg and pb.
inline void backward_row(float* o, float* pg, float* pb, const float* x, const float* d, const float* g,
                         float m, float rs, int C, bool accumulate) {
#if defined(__AVX512F__)
  const __m512 vm = _mm512_set1_ps(m), vr = _mm512_set1_ps(rs);
  __m512 s_gh = _mm512_setzero_ps(), s_ghx = _mm512_setzero_ps();
  for (int c = 0; c < C; c += 16) {
    const __mmask16 k = head_lanes(C - c);
    const __m512 xh = _mm512_maskz_mul_ps(k, _mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + c), vm), vr);
    const __m512 dv = _mm512_maskz_loadu_ps(k, d + c);
    const __m512 gh = _mm512_mul_ps(dv, _mm512_maskz_loadu_ps(k, g + c));
    s_gh = _mm512_add_ps(s_gh, gh);
    s_ghx = _mm512_fmadd_ps(gh, xh, s_ghx);
    _mm512_mask_storeu_ps(pg + c, k, _mm512_fmadd_ps(dv, xh, _mm512_maskz_loadu_ps(k, pg + c)));
    _mm512_mask_storeu_ps(pb + c, k, _mm512_add_ps(dv, _mm512_maskz_loadu_ps(k, pb + c)));
  }
  const __m512 mg = _mm512_set1_ps(lanes_sum(s_gh) / C);
  const __m512 mgx = _mm512_set1_ps(lanes_sum(s_ghx) / C);
  for (int c = 0; c < C; c += 16) {
    const __mmask16 k = head_lanes(C - c);
    const __m512 xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + c), vm), vr);
    const __m512 gh = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, d + c), _mm512_maskz_loadu_ps(k, g + c));
    __m512 v = _mm512_mul_ps(vr, _mm512_sub_ps(_mm512_sub_ps(gh, mg), _mm512_mul_ps(xh, mgx)));
    if (accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(k, o + c), v);
    _mm512_mask_storeu_ps(o + c, k, v);
  }
#else
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
#endif
}
}  // namespace

void layernorm_forward(const Context& ctx, float* out, float* mean, float* rstd, const float* in, const float* g,
                       const float* b, int R, int C, float eps) {
  parallel_chunks(ctx.threads, R, C, [&](long r0, long r1, int) {
    for (long r = r0; r < r1; ++r)
      normalize_row(out + (size_t)r * C, mean + r, rstd + r, in + (size_t)r * C, g, b, C, eps);
  });
}

void layernorm_residual_forward(const Context& ctx, float* sum, float* out, float* mean, float* rstd, const float* a,
                                const float* b, float p, uint64_t key, const float* g,
                                const float* beta, int R, int C, float eps) {
  const float inv_keep = p > 0.f ? 1.f / (1.f - p) : 1.f;
  const uint32_t thr = dropout_threshold(p);
  parallel_chunks(ctx.threads, R, C, [&](long r0, long r1, int) {
    for (long r = r0; r < r1; ++r) {
      const size_t o = (size_t)r * C;
      float* s = sum + o;
      if (p > 0.f)
        for (int c = 0; c < C; ++c)
          s[c] = a[o + c] + b[o + c] * keep_scale(key, (uint64_t)(o + c), thr, inv_keep);
      else
        for (int c = 0; c < C; ++c) s[c] = a[o + c] + b[o + c];
      normalize_row(out + o, mean + r, rstd + r, s, g, beta, C, eps);
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
    for (long r = r0; r < r1; ++r)
      backward_row(din + (size_t)r * C, pg, pb, in + (size_t)r * C, dout + (size_t)r * C, g, mean[r],
                   rstd[r], C, accumulate);
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
