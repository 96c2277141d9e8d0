// gBCE (Petrov & Macdonald, RecSys 2023): binary cross-entropy of the positive and the
// row's own N sampled negatives, the positive's probability raised to beta (which
// calibrates scores learnt from a sample of negatives to the full catalogue; beta = 1 is
// plain binary cross-entropy).  negatives is R x N: row r's ids at r N .. r N + N - 1.
//   s_pos(r) = h_r . E[tgt_r];   s(r, j) = h_r . E[neg(r, j)]; a negative equal to the
//   row's target does not count (its term and gradient are 0)
//   forward : loss(R) = (beta softplus(-s_pos) + sum_j softplus(s(r, j))) / (1 + N)
//             (the mean over the row's 1 + N logits, as gSASRec's BCEWithLogits)
//   backward (grad_scale != 0), g = grad_scale / (1 + N):
//             ds(r, j) = g sigmoid(s(r, j));  ds_pos(r) = -g beta sigmoid(-s_pos)
//             dh_r = ds_pos E[tgt_r] + sum_j ds(r, j) E[neg(r, j)]                 =
//             dE[neg(r, j)] += ds(r, j) h_r;  dE[tgt_r] += ds_pos h_r              +=
// The scatter into dE is split over column blocks (no races, schedule-independent sums).
// workspace (floats): R N negative coefficients and R positive ones.
#include <algorithm>
#include <cmath>

#include "cpu/fast_math.h"
#include "cpu/ops.h"
#include "cpu/parallel.h"

namespace fsr::cpu {

namespace {
inline float softplus(float x) { return std::max(x, 0.f) + std::log1p(std::exp(-std::fabs(x))); }
inline float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }
}  // namespace

size_t loss_gbce_workspace(const Context&, int R, int C, int V, int N) {
  return (size_t)R * N + (size_t)R;
}

void loss_gbce(const Context& ctx, float* loss, float* dh, float* dE, const float* h,
               const float* E, const int32_t* targets, const int32_t* negatives, int R, int C,
               int V, int N, float beta, float grad_scale, float* workspace) {
  const bool grad = grad_scale != 0.f;
  float* coef = workspace;                 // R x N
  float* dpos = coef + (size_t)R * N;      // R
  const float g = grad_scale / (1.f + (float)N);
  parallel_chunks(ctx.threads, R, (long)(N + 1) * C * 2, [&](long a, long b, int) {
    for (long r = a; r < b; ++r) {
      const float* hr = h + (size_t)r * C;
      const int32_t t = targets[r];
      const float* ep = E + (size_t)t * C;
      const int32_t* neg = negatives + (size_t)r * N;
      float* cr = coef + (size_t)r * N;
      const float sp = dot(hr, ep, C);
      // N terms of about log 2 each: summed in double, so that the loss keeps float32's
      // precision (a float sum would lose about sqrt(N) ulps of the total).
      double sum = 0.0;
      for (int j = 0; j < N; ++j) {
        const bool counts = neg[j] != t;
        const float s = counts ? dot(hr, E + (size_t)neg[j] * C, C) : 0.f;
        sum += counts ? softplus(s) : 0.f;
        cr[j] = counts ? g * sigmoid(s) : 0.f;
      }
      loss[r] = (float)(((double)beta * softplus(-sp) + sum) * (1.0 / (1.0 + N)));
      if (!grad) continue;
      dpos[r] = -g * beta * sigmoid(-sp);
      float* d = dh + (size_t)r * C;
      for (int c = 0; c < C; ++c) d[c] = dpos[r] * ep[c];
      for (int j = 0; j < N; ++j) {
        if (cr[j] == 0.f) continue;
        const float* en = E + (size_t)neg[j] * C;
        for (int c = 0; c < C; ++c) d[c] += cr[j] * en[c];
      }
    }
  });
  if (!grad) return;
  const int nt = (long)R * (N + 1) * C < 16384 ? 1 : std::min(ctx.threads, C);
  parallel_for(ctx.threads, nt, [&](int th) {
    const int c0 = C * th / nt, c1 = C * (th + 1) / nt;
    for (int r = 0; r < R; ++r) {
      const float* hr = h + (size_t)r * C;
      float* d = dE + (size_t)targets[r] * C;
      for (int c = c0; c < c1; ++c) d[c] += dpos[r] * hr[c];
      const int32_t* neg = negatives + (size_t)r * N;
      const float* cr = coef + (size_t)r * N;
      for (int j = 0; j < N; ++j) {
        if (cr[j] == 0.f) continue;
        float* dn = dE + (size_t)neg[j] * C;
        for (int c = c0; c < c1; ++c) dn[c] += cr[j] * hr[c];
      }
    }
  });
}

}  // namespace fsr::cpu
