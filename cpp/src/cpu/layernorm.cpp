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
// Each row's sums are OpenMP SIMD reductions (a plain float accumulator may not be
// reordered without -ffast-math, so it would add one element at a time, each add waiting
// for the last): the order is the build's vector order, fixed, so results stay
// deterministic.
#include <cmath>
#include <vector>

#include "cpu/ops.h"
#include "cpu/parallel.h"
#include "fastsasrec/rng.h"

namespace fsr::cpu {

namespace {
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
  *mean = m;
  *rstd = rs;
  for (int c = 0; c < C; ++c) o[c] = (x[c] - m) * rs * g[c] + b[c];
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
    for (long r = r0; r < r1; ++r) {
      const float* x = in + (size_t)r * C;
      const float* d = dout + (size_t)r * C;
      const float m = mean[r], rs = rstd[r];
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
      float* o = din + (size_t)r * C;
      for (int c = 0; c < C; ++c) {
        const float xh = (x[c] - m) * rs;
        const float v = rs * (d[c] * g[c] - mg - xh * mgx);
        o[c] = accumulate ? o[c] + v : v;
      }
    }
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
