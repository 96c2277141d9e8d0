// Sampled softmax: N negatives shared by every row of the batch, with the logQ correction
// (Yi et al., RecSys 2019) when logq is given: each logit less the log of its item's
// sampling probability, lq(i) = logq[i] (0 for every item when logq is null).
//   s_pos(r) = h_r . E[tgt_r] - lq(tgt_r);   s(r, j) = h_r . E[neg_j] - lq(neg_j), set to
//   -inf where neg_j == tgt_r (a row's own target is never its negative)
//   forward : loss(R) = logsumexp(s_pos, s(r, :)) - s_pos
//   backward (grad_scale != 0), with softmax probabilities p_pos, p_j over [s_pos, s(r, :)]:
//             ds(r, j) = grad_scale * p_j;  ds_pos = grad_scale * (p_pos - 1)
//             dh(R,C) = ds_pos E[tgt] + ds En        (En = E[neg], N x C)
//             dE[neg_j] += (ds^T h)_j;  dE[tgt_r] += ds_pos h_r
// Rows are processed in chunks, so at most chunk x N logits exist at once.
// workspace (floats): En and dEn (2 N C), one chunk of logits, and R coefficients.
// ctx.precision BF16: every product's operands in bfloat16 with fp32 sums, as the CUDA twin
// computes them: h, E and ds in the three GEMMs (gemm_bf16), h_r, E[tgt_r] and ds_pos in
// s_pos and the target's terms.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "cpu/fast_math.h"
#include "cpu/ops.h"
#include "cpu/parallel.h"

namespace fsr::cpu {

namespace {
// Rows per chunk: about 1 MiB of logits, so that the logits of a chunk stay in cache
// between their GEMM, the softmax passes and the two backward GEMMs; at least 32 rows so
// that the GEMMs stay efficient on a large catalogue.
constexpr size_t kChunkLogits = size_t(1) << 18;
inline int chunk_rows(int R, int N) {
  const size_t rows = std::max<size_t>(32, kChunkLogits / std::max(N, 1));
  return (int)std::max<size_t>(1, std::min<size_t>((size_t)R, rows));
}
}  // namespace

size_t loss_sampled_softmax_workspace(const Context&, int R, int C, int V, int N) {
  return 2 * (size_t)N * C + (size_t)chunk_rows(R, N) * N + (size_t)R;
}

void loss_sampled_softmax(const Context& ctx, float* loss, float* dh, float* dE, const float* h,
                          const float* E, const int32_t* targets, const int32_t* negatives,
                          const float* logq, int R, int C, int V, int N, float grad_scale,
                          float* workspace) {
  const bool grad = grad_scale != 0.f;
  const bool bf16 = ctx.precision == Precision::BF16;
  const auto mm = bf16 ? gemm_bf16 : gemm;
  auto op = [bf16](float x) { return bf16 ? round_bf16(x) : x; };  // an operand
  const int rc = chunk_rows(R, N);
  float* En = workspace;
  float* dEn = En + (size_t)N * C;
  float* logits = dEn + (size_t)N * C;
  float* dpos = logits + (size_t)rc * N;
  for (int j = 0; j < N; ++j) std::memcpy(En + (size_t)j * C, E + (size_t)negatives[j] * C, C * sizeof(float));
  if (grad) std::memset(dEn, 0, (size_t)N * C * sizeof(float));
  const float ninf = -std::numeric_limits<float>::infinity();

  for (int r0 = 0; r0 < R; r0 += rc) {
    const int rn = std::min(rc, R - r0);
    mm(ctx.threads, false, true, rn, N, C, 1.f, h + (size_t)r0 * C, C, En, C, 0.f, logits, N);
    parallel_chunks(ctx.threads, rn, N + C, [&](long a, long b, int) {
      for (long i = a; i < b; ++i) {
        const long r = r0 + i;
        const float* hr = h + (size_t)r * C;
        const float* ep = E + (size_t)targets[r] * C;
        const int32_t t = targets[r];
        float d = 0.f;
        if (bf16)
          for (int c = 0; c < C; ++c) d += op(hr[c]) * op(ep[c]);
        else
          d = dot(hr, ep, C);
        const float sp = d - (logq ? logq[t] : 0.f);
        float* row = logits + (size_t)i * N;
        if (logq)
          for (int j = 0; j < N; ++j) row[j] = negatives[j] == t ? ninf : row[j] - logq[negatives[j]];
        else
          for (int j = 0; j < N; ++j) row[j] = negatives[j] == t ? ninf : row[j];
        const float m = std::max(sp, row_max(row, N));
        const float ep_ = fast_exp(sp - m);
        // exp(s - m) is kept: the gradient is grad_scale * e / z
        const float z = ep_ + exp_sum_inplace(row, N, m);
        loss[r] = m + std::log(z) - sp;
        if (grad) {
          const float c = grad_scale / z;
          for (int j = 0; j < N; ++j) row[j] *= c;
          dpos[r] = op(grad_scale * (ep_ / z - 1.f));
        }
      }
    });
    if (!grad) continue;
    float* dhc = dh + (size_t)r0 * C;
    mm(ctx.threads, false, false, rn, C, N, 1.f, logits, N, En, C, 0.f, dhc, C);
    mm(ctx.threads, true, false, N, C, rn, 1.f, logits, N, h + (size_t)r0 * C, C, 1.f, dEn, C);
  }
  if (!grad) return;
  // dh += ds_pos E[tgt]
  parallel_chunks(ctx.threads, R, C, [&](long a, long b, int) {
    for (long r = a; r < b; ++r) {
      const float* ep = E + (size_t)targets[r] * C;
      float* d = dh + (size_t)r * C;
      for (int c = 0; c < C; ++c) d[c] += dpos[r] * op(ep[c]);
    }
  });
  // Scatter into item rows, each thread owning a block of columns.
  const int nt = (long)(R + N) * C < 16384 ? 1 : std::min(ctx.threads, C);
  parallel_for(ctx.threads, nt, [&](int t) {
    const int c0 = C * t / nt, c1 = C * (t + 1) / nt;
    for (int j = 0; j < N; ++j) {
      float* d = dE + (size_t)negatives[j] * C;
      const float* g = dEn + (size_t)j * C;
      for (int c = c0; c < c1; ++c) d[c] += g[c];
    }
    for (int r = 0; r < R; ++r) {
      float* d = dE + (size_t)targets[r] * C;
      const float* hr = h + (size_t)r * C;
      for (int c = c0; c < c1; ++c) d[c] += dpos[r] * op(hr[c]);
    }
  });
}

}  // namespace fsr::cpu
