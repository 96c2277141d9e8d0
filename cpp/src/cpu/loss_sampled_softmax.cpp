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
// One parallel region does the chunks (fp32, and bf16 with its kernel), as loss_softmax
// does: each thread owns a contiguous slice of the N negatives (its rows of En and dEn) and,
// chunk after chunk, computes its slice of the logits, its share of each row's max and sum
// (combined with the positive's logit across threads at two barriers, in thread order),
// turns its slice into ds, adds ds^T h into its rows of dEn and ds En into its partial dh,
// summed in thread order, each thread a share of the rows.  Then the positive's terms and
// the scatter into dE, as before.  Results depend only on the thread count.
// workspace (floats): En and dEn (2 N C), one chunk of logits, R coefficients, and the
// threads' row maxima, sums, the chunk's positive logits and partial dh, and each
// negative's logq (N, read by the vectorised pass that masks a row's own target); with
// gemm_rows (fp32 on AVX-512), En transposed too (C N), so that the logits' product reads
// it by rows.
// ctx.precision BF16: every product's operands in bfloat16 with fp32 sums, as the CUDA twin
// computes them: h, E and ds in the three GEMMs (the bf16 kernel, or, where the CPU has
// none, gemm_bf16 a region per product), h_r, E[tgt_r] and ds_pos in s_pos and the
// target's terms.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

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
// The threads that split the negatives: at most one per 64, and one for a small job.
int negative_slices(const Context& ctx, int R, int C, int N) {
  const int nt = usable_threads(ctx.threads);
  if (nt <= 1 || 2.0 * R * N * C < 2.0e5) return 1;
  return std::max(1, std::min(nt, N / 64));
}
// sum_j bf16(a[j]) bf16(b[j]) (round_bf16's rule; each product exact in fp32), in dot's order.
inline float dot_bf16(const float* a, const float* b, int n) {
#if defined(__AVX512F__)
  __m512 s = _mm512_setzero_ps();
  for (int j = 0; j < n; j += 16) {
    const __mmask16 k = head_lanes(n - j);
    s = _mm512_fmadd_ps(round_bf16_lanes(_mm512_maskz_loadu_ps(k, a + j)),
                        round_bf16_lanes(_mm512_maskz_loadu_ps(k, b + j)), s);
  }
  return lanes_sum(s);
#else
  float s = 0.f;
  for (int j = 0; j < n; ++j) s += round_bf16(a[j]) * round_bf16(b[j]);
  return s;
#endif
}
bool fused(const Context& ctx) { return ctx.precision != Precision::BF16 || gemm_bf16_native(); }
size_t extra_floats(const Context& ctx, int R, int C, int N, int slices) {  // beyond the chunk path's
  const size_t rc = chunk_rows(R, N);
  return 2 * (size_t)slices * rc + rc + (size_t)slices * rc * C + (rows_products(ctx) ? (size_t)C * N : 0) +
         (size_t)N;
}

// A row of negatives' logits: row[j] = neg[j] == tg ? -inf : row[j] - lq[j] (lq null: as
// 0), and the row's max (row_max of the result, in its order), in one vectorised pass.
inline float negatives_row(float* row, const int32_t* neg, const float* lq, int n, int32_t tg) {
  const float ninf = -std::numeric_limits<float>::infinity();
#if defined(__AVX512F__)
  const __m512i t = _mm512_set1_epi32(tg);
  const __m512 vinf = _mm512_set1_ps(ninf);
  __m512 m = vinf;
  for (int j = 0; j < n; j += 16) {
    const __mmask16 k = head_lanes(n - j);
    __m512 x = _mm512_maskz_loadu_ps(k, row + j);
    if (lq) x = _mm512_maskz_sub_ps(k, x, _mm512_maskz_loadu_ps(k, lq + j));
    const __mmask16 own = _mm512_mask_cmpeq_epi32_mask(k, _mm512_maskz_loadu_epi32(k, neg + j), t);
    x = _mm512_mask_mov_ps(x, own, vinf);
    _mm512_mask_storeu_ps(row + j, k, x);
    m = _mm512_mask_max_ps(m, k, x, m);  // x > m ? x : m, as row_max
  }
  return lanes_max(m);
#else
  if (lq)
    for (int j = 0; j < n; ++j) row[j] = neg[j] == tg ? ninf : row[j] - lq[j];
  else
    for (int j = 0; j < n; ++j) row[j] = neg[j] == tg ? ninf : row[j];
  return row_max(row, n);
#endif
}
}  // namespace

size_t loss_sampled_softmax_workspace(const Context& ctx, int R, int C, int V, int N) {
  const size_t base = 2 * (size_t)N * C + (size_t)chunk_rows(R, N) * N + (size_t)R;
  return fused(ctx) ? base + extra_floats(ctx, R, C, N, negative_slices(ctx, R, C, N)) : base;
}

namespace {
// After the negatives' products: dh += ds_pos E[tgt]; then dEn and ds_pos h scattered
// into the item rows of dE, each thread owning a block of columns.
void positive_terms(const Context& ctx, float* dh, float* dE, const float* h, const float* E,
                    const int32_t* targets, const int32_t* negatives, const float* dEn,
                    const float* dpos, int R, int C, int N) {
  const bool bf16 = ctx.precision == Precision::BF16;
  auto op = [bf16](float x) { return bf16 ? round_bf16(x) : x; };  // an operand
  parallel_chunks(ctx.threads, R, C, [&](long a, long b, int) {
    for (long r = a; r < b; ++r) {
      const float* ep = E + (size_t)targets[r] * C;
      float* d = dh + (size_t)r * C;
      for (int c = 0; c < C; ++c) d[c] += dpos[r] * op(ep[c]);
    }
  });
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

// bf16 where the CPU has no kernel: chunk by chunk, a region per product.
void sampled_softmax_regions(const Context& ctx, float* loss, float* dh, float* dE, const float* h,
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
  std::vector<float> lqn(logq ? (size_t)N : 0);  // logq of each negative
  for (int j = 0; j < (int)lqn.size(); ++j) lqn[j] = logq[negatives[j]];

  for (int r0 = 0; r0 < R; r0 += rc) {
    const int rn = std::min(rc, R - r0);
    mm(ctx.threads, false, true, rn, N, C, 1.f, h + (size_t)r0 * C, C, En, C, 0.f, logits, N);
    parallel_chunks(ctx.threads, rn, N + C, [&](long a, long b, int) {
      for (long i = a; i < b; ++i) {
        const long r = r0 + i;
        const float* hr = h + (size_t)r * C;
        const float* ep = E + (size_t)targets[r] * C;
        const int32_t t = targets[r];
        const float d = bf16 ? dot_bf16(hr, ep, C) : dot(hr, ep, C);
        const float sp = d - (logq ? logq[t] : 0.f);
        float* row = logits + (size_t)i * N;
        const float m = std::max(sp, negatives_row(row, negatives, logq ? lqn.data() : nullptr, N, t));
        const float ep_ = fast_exp(sp - m);
        // exp(s - m) is kept: the gradient is grad_scale * e / z
        const float z = ep_ + exp_sum_inplace(row, N, m);
        loss[r] = m + std::log(z) - sp;
        if (grad) {
          const float c = grad_scale / z;
          scale_inplace(row, N, c);
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
  positive_terms(ctx, dh, dE, h, E, targets, negatives, dEn, dpos, R, C, N);
}
}  // namespace

void loss_sampled_softmax(const Context& ctx, float* loss, float* dh, float* dE, const float* h,
                          const float* E, const int32_t* targets, const int32_t* negatives,
                          const float* logq, int R, int C, int V, int N, float grad_scale,
                          float* workspace) {
  if (!fused(ctx)) {
    sampled_softmax_regions(ctx, loss, dh, dE, h, E, targets, negatives, logq, R, C, V, N,
                            grad_scale, workspace);
    return;
  }
  const bool grad = grad_scale != 0.f;
  const bool bf16 = ctx.precision == Precision::BF16;
  auto op = [bf16](float x) { return bf16 ? round_bf16(x) : x; };  // an operand
  const int slices = negative_slices(ctx, R, C, N);
  const BlockGemm mm("loss_sampled_softmax", ctx, slices);
  const int rc = chunk_rows(R, N);
  float* const En = workspace;
  float* const dEn = En + (size_t)N * C;
  float* const logits = dEn + (size_t)N * C;  // rc x N, slice t a contiguous rc x n_t block
  float* const dpos = logits + (size_t)rc * N;  // R
  float* const maxes = dpos + R;  // slices x rc
  float* const sums = maxes + (size_t)slices * rc;  // slices x rc
  float* const spos = sums + (size_t)slices * rc;  // rc
  float* const partial = spos + rc;  // slices x rc x C
  float* const lqn = partial + (size_t)slices * rc * C;  // N: logq of each negative (logq given)
  // En transposed (C x N), for gemm_rows's logits (rows_products): B read by rows
  float* const EnT = rows_products(ctx) ? lqn + N : nullptr;
  auto body = [&](int t, int k) {
    const int j0 = (int)((long)N * t / k), j1 = (int)((long)N * (t + 1) / k), nj = j1 - j0;
    for (int j = j0; j < j1; ++j) {
      const float* e = E + (size_t)negatives[j] * C;
      std::memcpy(En + (size_t)j * C, e, C * sizeof(float));
      if (logq) lqn[j] = logq[negatives[j]];
      if (EnT)
        for (int c = 0; c < C; ++c) EnT[(size_t)c * N + j] = e[c];
    }
    if (grad) std::memset(dEn + (size_t)j0 * C, 0, (size_t)nj * C * sizeof(float));
    for (int r0 = 0; r0 < R; r0 += rc) {
      const int rn = std::min(rc, R - r0);
      const int q0 = (int)((long)rn * t / k), q1 = (int)((long)rn * (t + 1) / k);  // my rows
      float* L = logits + (size_t)rc * j0;  // my slice: rn x nj
      if (EnT)
        mm(t, false, false, rn, nj, C, 1.f, h + (size_t)r0 * C, C, EnT + j0, N, 0.f, L, nj);
      else
        mm(t, false, true, rn, nj, C, 1.f, h + (size_t)r0 * C, C, En + (size_t)j0 * C, C, 0.f, L, nj);
      for (int i = 0; i < rn; ++i) {
        const int32_t tg = targets[r0 + i];
        float* row = L + (size_t)i * nj;
        maxes[(size_t)t * rc + i] = negatives_row(row, negatives + j0, logq ? lqn + j0 : nullptr, nj, tg);
        if (i < q0 || i >= q1) continue;
        const float* hr = h + (size_t)(r0 + i) * C;
        const float* ep = E + (size_t)tg * C;
        const float d = bf16 ? dot_bf16(hr, ep, C) : dot(hr, ep, C);
        spos[i] = d - (logq ? logq[tg] : 0.f);
      }
#pragma omp barrier
      for (int i = 0; i < rn; ++i) {
        float m = spos[i];
        for (int u = 0; u < k; ++u) m = std::max(m, maxes[(size_t)u * rc + i]);
        float* row = L + (size_t)i * nj;
        // exp(s - m) is kept: the gradient is grad_scale * e / z
        sums[(size_t)t * rc + i] = exp_sum_inplace(row, nj, m);
      }
#pragma omp barrier
      for (int i = 0; i < rn; ++i) {
        const float sp = spos[i];
        float m = sp;
        for (int u = 0; u < k; ++u) m = std::max(m, maxes[(size_t)u * rc + i]);
        const float ep_ = fast_exp(sp - m);
        float z = ep_;
        for (int u = 0; u < k; ++u) z += sums[(size_t)u * rc + i];
        if (i >= q0 && i < q1) {
          loss[r0 + i] = m + std::log(z) - sp;
          if (grad) dpos[r0 + i] = op(grad_scale * (ep_ / z - 1.f));
        }
        if (!grad) continue;
        float* row = L + (size_t)i * nj;
        const float c = grad_scale / z;
        scale_inplace(row, nj, c);
      }
      if (!grad) {  // (every thread alike: no barrier is skipped by one alone)
#pragma omp barrier
        continue;  // the next chunk rewrites what the others may still read
      }
      float* P = k == 1 ? dh + (size_t)r0 * C : partial + (size_t)t * rc * C;
      mm(t, false, false, rn, C, nj, 1.f, L, nj, En + (size_t)j0 * C, C, 0.f, P, C);
      mm(t, true, false, nj, C, rn, 1.f, L, nj, h + (size_t)r0 * C, C, 1.f, dEn + (size_t)j0 * C, C);
      if (k == 1) continue;
#pragma omp barrier
      sum_partials(dh + (size_t)r0 * C, partial, k, rc, q0, q1, C);
    }
  };
  parallel_team(slices, body);
  if (!grad) return;
  positive_terms(ctx, dh, dE, h, E, targets, negatives, dEn, dpos, R, C, N);
}

}  // namespace fsr::cpu
