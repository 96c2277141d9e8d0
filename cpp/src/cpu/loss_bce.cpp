// Binary cross-entropy with one sampled negative per row (the SASRec paper's loss).
//   s_pos = h . E[tgt],  s_neg = h . E[neg]
//   forward : loss(R) = softplus(-s_pos) + softplus(s_neg)
//   backward (grad_scale != 0): a = sigmoid(s_pos) - 1,  b = sigmoid(s_neg)
//             dh(R,C) = grad_scale * (a E[tgt] + b E[neg])
//             dE[tgt] += grad_scale * a h;  dE[neg] += grad_scale * b h
// The scatter into dE is split over column blocks (no races, schedule-independent sums).
// workspace: loss_bce_workspace(R, C, V, N) = 2 R floats (the rows' two coefficients).
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

size_t loss_bce_workspace(const Context&, int R, int C, int V, int N) { return 2 * (size_t)R; }

void loss_bce(const Context& ctx, float* loss, float* dh, float* dE, const float* h, const float* E,
              const int32_t* targets, const int32_t* negatives, int R, int C, int V, int N,
              float grad_scale, float* workspace) {
  float* a = workspace;
  float* b = a + R;
  parallel_chunks(ctx.threads, R, 2 * C, [&](long r0, long r1, int) {
    for (long r = r0; r < r1; ++r) {
      const float* hr = h + (size_t)r * C;
      const float* ep = E + (size_t)targets[r] * C;
      const float* en = E + (size_t)negatives[r] * C;
      const float sp = dot(hr, ep, C), sn = dot(hr, en, C);
      loss[r] = softplus(-sp) + softplus(sn);
      if (grad_scale != 0.f) {
        a[r] = grad_scale * (sigmoid(sp) - 1.f);
        b[r] = grad_scale * sigmoid(sn);
        float* d = dh + (size_t)r * C;
        for (int c = 0; c < C; ++c) d[c] = a[r] * ep[c] + b[r] * en[c];
      }
    }
  });
  if (grad_scale == 0.f) return;
  const int nt = (long)R * C < 16384 ? 1 : std::min(ctx.threads, C);
  parallel_for(ctx.threads, nt, [&](int t) {
    const int c0 = C * t / nt, c1 = C * (t + 1) / nt;
    for (int r = 0; r < R; ++r) {
      const float* hr = h + (size_t)r * C;
      float* dp = dE + (size_t)targets[r] * C;
      float* dn = dE + (size_t)negatives[r] * C;
      for (int c = c0; c < c1; ++c) dp[c] += a[r] * hr[c];
      for (int c = c0; c < c1; ++c) dn[c] += b[r] * hr[c];
    }
  });
}

}  // namespace fsr::cpu
