// gBCE (Petrov & Macdonald, RecSys 2023): binary cross-entropy over the positive and N
// negatives shared by every row of the batch, the positive's probability raised to beta
// (which calibrates scores learnt from a sample of negatives to the full catalogue).
//   s_pos(r) = h_r . E[tgt_r];   s(r, j) = h_r . E[neg_j]; a negative equal to the row's
//   target does not count (its term is 0)
//   forward : loss(R) = (beta softplus(-s_pos) + sum_j softplus(s(r, j))) / (1 + N)
//             (the mean over the row's 1 + N logits, as gSASRec's BCEWithLogits)
//   backward (grad_scale != 0), g = grad_scale / (1 + N):
//             ds(r, j) = g sigmoid(s(r, j)) (0 where neg_j == tgt_r)
//             ds_pos   = -g beta sigmoid(-s_pos)
//             dh(R,C) = ds_pos E[tgt] + ds En        (En = E[neg], N x C)            =
//             dE[neg_j] += (ds^T h)_j;  dE[tgt_r] += ds_pos h_r                      +=
// Rows are processed in chunks, so at most chunk x N logits exist at once.
// workspace (floats): En and dEn (2 N C), one chunk of logits, and R coefficients.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/ops.h"
#include "cpu/parallel.h"

namespace fsr::cpu {

namespace {
constexpr size_t kChunkLogits = size_t(1) << 18;  // about 1 MiB of logits a chunk
inline int chunk_rows(int R, int N) {
  const size_t rows = std::max<size_t>(32, kChunkLogits / std::max(N, 1));
  return (int)std::max<size_t>(1, std::min<size_t>((size_t)R, rows));
}
inline float softplus(float x) { return std::max(x, 0.f) + std::log1p(std::exp(-std::fabs(x))); }
inline float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }
}  // namespace

size_t loss_gbce_workspace(const Context&, int R, int C, int V, int N) {
  return 2 * (size_t)N * C + (size_t)chunk_rows(R, N) * N + (size_t)R;
}

void loss_gbce(const Context& ctx, float* loss, float* dh, float* dE, const float* h,
               const float* E, const int32_t* targets, const int32_t* negatives, int R, int C,
               int V, int N, float beta, float grad_scale, float* workspace) {
  const bool grad = grad_scale != 0.f;
  const int rc = chunk_rows(R, N);
  float* En = workspace;
  float* dEn = En + (size_t)N * C;
  float* logits = dEn + (size_t)N * C;
  float* dpos = logits + (size_t)rc * N;
  for (int j = 0; j < N; ++j) std::memcpy(En + (size_t)j * C, E + (size_t)negatives[j] * C, C * sizeof(float));
  if (grad) std::memset(dEn, 0, (size_t)N * C * sizeof(float));
  const float inv = 1.f / (1.f + (float)N);
  const float g = grad_scale * inv;

  for (int r0 = 0; r0 < R; r0 += rc) {
    const int rn = std::min(rc, R - r0);
    gemm(ctx.threads, false, true, rn, N, C, 1.f, h + (size_t)r0 * C, C, En, C, 0.f, logits, N);
    parallel_chunks(ctx.threads, rn, N + C, [&](long a, long b, int) {
      for (long i = a; i < b; ++i) {
        const long r = r0 + i;
        const float* hr = h + (size_t)r * C;
        const float* ep = E + (size_t)targets[r] * C;
        float sp = 0.f;
        for (int c = 0; c < C; ++c) sp += hr[c] * ep[c];
        float* row = logits + (size_t)i * N;
        const int32_t t = targets[r];
        // N terms of about log 2 each: summed in double, so that the loss keeps float32's
        // precision (a float sum would lose about sqrt(N) ulps of the total).
        double sum = 0.0;
        for (int j = 0; j < N; ++j) {
          const bool counts = negatives[j] != t;
          sum += counts ? softplus(row[j]) : 0.f;
          if (grad) row[j] = counts ? g * sigmoid(row[j]) : 0.f;
        }
        loss[r] = (float)(((double)beta * softplus(-sp) + sum) * (1.0 / (1.0 + N)));
        if (grad) dpos[r] = -g * beta * sigmoid(-sp);
      }
    });
    if (!grad) continue;
    float* dhc = dh + (size_t)r0 * C;
    gemm(ctx.threads, false, false, rn, C, N, 1.f, logits, N, En, C, 0.f, dhc, C);
    gemm(ctx.threads, true, false, N, C, rn, 1.f, logits, N, h + (size_t)r0 * C, C, 1.f, dEn, C);
  }
  if (!grad) return;
  // dh += ds_pos E[tgt]
  parallel_chunks(ctx.threads, R, C, [&](long a, long b, int) {
    for (long r = a; r < b; ++r) {
      const float* ep = E + (size_t)targets[r] * C;
      float* d = dh + (size_t)r * C;
      for (int c = 0; c < C; ++c) d[c] += dpos[r] * ep[c];
    }
  });
  // Scatter into item rows, each thread owning a block of columns.
  const int nt = (long)(R + N) * C < 16384 ? 1 : std::min(ctx.threads, C);
  parallel_for(ctx.threads, nt, [&](int t) {
    const int c0 = C * t / nt, c1 = C * (t + 1) / nt;
    for (int j = 0; j < N; ++j) {
      float* d = dE + (size_t)negatives[j] * C;
      const float* gr = dEn + (size_t)j * C;
      for (int c = c0; c < c1; ++c) d[c] += gr[c];
    }
    for (int r = 0; r < R; ++r) {
      float* d = dE + (size_t)targets[r] * C;
      const float* hr = h + (size_t)r * C;
      for (int c = c0; c < c1; ++c) d[c] += dpos[r] * hr[c];
    }
  });
}

}  // namespace fsr::cpu
