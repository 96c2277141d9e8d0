// Multi-head causal self-attention over packed sequences (no padding anywhere).
//   S = Q_h K_h^T / sqrt(D) for the rows of one sequence, causal: row i sees rows <= i
//   forward : P = softmax(S) per row, lse(R,H) = logsumexp of each row saved,
//             O_h = dropout_p(P) V_h                             O(R, H*D) =
//   backward: P recomputed from lse;  Pd = dropout_p(P)
//             dV_h = Pd^T dO_h;  dP = dropout_p'(dO_h V_h^T);  delta_i = sum_j P_ij dP_ij
//             dS = P * (dP - delta);  dQ_h = dS K_h / sqrt(D);  dK_h = dS^T Q_h / sqrt(D)
//             dQ(R, ldq) =, dK, dV(R, ldkv) =
//   attention_last_forward: inference, one query per sequence (its last row), no dropout
// Dropout counter of (query row i, head h, key row j) is (i * H + h) * T + (j - start).
// ctx.precision BF16 leaves these products in fp32: per (sequence, head) they are small
// (n x n x D, about 4% of a step's work at width 64), too small for the bf16 GEMM to gain.
// One task per (sequence, head): each task owns its output rows, so any schedule gives
// the same result.  Only an n_max x n_max score tile per thread exists, never R x R,
// allocated before the parallel region (a failed allocation is a MemoryError, never an
// exception inside the region).
// n_max (the longest sequence, by which the GPU sizes its launch) and the backward's O
// (from which the GPU takes delta) are not needed here.
#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu/fast_math.h"
#include "cpu/ops.h"
#include "cpu/parallel.h"
#include "fastsasrec/rng.h"

namespace fsr::cpu {

namespace {
// The longest sequence of cu (the CPU does not trust a caller's n_max with its memory).
int longest(const int32_t* cu, int B) {
  int n = 0;
  for (int s = 0; s < B; ++s) n = std::max(n, cu[s + 1] - cu[s]);
  return n;
}
// `floats` of scratch for each thread the op's region may run.
ThreadScratch tiles(const char* op, const Context& ctx, size_t floats) {
  return ThreadScratch(op, usable_threads(ctx.threads), floats);
}
}  // namespace

void attention_forward(const Context& ctx, float* O, float* lse, const float* Q, int ldq, const float* K,
                       const float* V, int ldkv, const int32_t* cu, int B, int H, int D, int T,
                       int n_max, float p, uint64_t key) {
  const float scale = 1.f / std::sqrt((float)D);
  const float inv_keep = p > 0.f ? 1.f / (1.f - p) : 1.f;
  const uint32_t thr = dropout_threshold(p);
  const int ldo = H * D;
  const size_t nn = (size_t)longest(cu, B) * longest(cu, B);
  const ThreadScratch scratch = tiles("attention_forward", ctx, nn);
  parallel_for_dynamic(ctx.threads, B * H, [&](int task) {
    const int s = task / H, h = task % H;
    const int st = cu[s], n = cu[s + 1] - cu[s];
    if (n <= 0) return;
    float* S = scratch.slot();
    const float* Qh = Q + (size_t)st * ldq + h * D;
    const float* Kh = K + (size_t)st * ldkv + h * D;
    const float* Vh = V + (size_t)st * ldkv + h * D;
    gemm(ctx.threads, false, true, n, n, D, scale, Qh, ldq, Kh, ldkv, 0.f, S, n);
    for (int i = 0; i < n; ++i) {
      float* row = S + (size_t)i * n;
      const float m = row_max(row, i + 1);
      const float l = exp_sum_inplace(row, i + 1, m);
      lse[(size_t)(st + i) * H + h] = m + std::log(l);
      const float inv_l = 1.f / l;
      const uint64_t base = ((uint64_t)(st + i) * H + h) * T;
      if (p > 0.f)
        for (int j = 0; j <= i; ++j) row[j] *= inv_l * keep_scale(key, base + j, thr, inv_keep);
      else
        for (int j = 0; j <= i; ++j) row[j] *= inv_l;
      for (int j = i + 1; j < n; ++j) row[j] = 0.f;
    }
    gemm(ctx.threads, false, false, n, D, n, 1.f, S, n, Vh, ldkv, 0.f, O + (size_t)st * ldo + h * D, ldo);
  });
}

void attention_backward(const Context& ctx, float* dQ, float* dK, float* dV, const float* dO,
                        const float* O, const float* Q, int ldq,
                        const float* K, const float* V, int ldkv, const float* lse,
                        const int32_t* cu, int B, int H, int D, int T, int n_max, float p,
                        uint64_t key) {
  const float scale = 1.f / std::sqrt((float)D);
  const float inv_keep = p > 0.f ? 1.f / (1.f - p) : 1.f;
  const uint32_t thr = dropout_threshold(p);
  const int ldo = H * D;
  const size_t nn = (size_t)longest(cu, B) * longest(cu, B);
  const ThreadScratch scratch = tiles("attention_backward", ctx, 2 * nn);
  parallel_for_dynamic(ctx.threads, B * H, [&](int task) {
    const int s = task / H, h = task % H;
    const int st = cu[s], n = cu[s + 1] - cu[s];
    if (n <= 0) return;
    float* P = scratch.slot();           // probabilities, then dS
    float* G = P + nn;                   // dropped probabilities, then dP
    const float* Qh = Q + (size_t)st * ldq + h * D;
    const float* Kh = K + (size_t)st * ldkv + h * D;
    const float* Vh = V + (size_t)st * ldkv + h * D;
    const float* dOh = dO + (size_t)st * ldo + h * D;
    gemm(ctx.threads, false, true, n, n, D, scale, Qh, ldq, Kh, ldkv, 0.f, P, n);
    for (int i = 0; i < n; ++i) {
      float* row = P + (size_t)i * n;
      float* grow = G + (size_t)i * n;
      const float l = lse[(size_t)(st + i) * H + h];
      const uint64_t base = ((uint64_t)(st + i) * H + h) * T;
      for (int j = 0; j <= i; ++j) row[j] = fast_exp(row[j] - l);
      if (p > 0.f)
        for (int j = 0; j <= i; ++j) grow[j] = row[j] * keep_scale(key, base + j, thr, inv_keep);
      else
        for (int j = 0; j <= i; ++j) grow[j] = row[j];
      for (int j = i + 1; j < n; ++j) row[j] = grow[j] = 0.f;
    }
    // dV_h = Pd^T dO_h
    gemm(ctx.threads, true, false, n, D, n, 1.f, G, n, dOh, ldo, 0.f, dV + (size_t)st * ldkv + h * D, ldkv);
    // G = dO_h V_h^T (gradient of the dropped probabilities)
    gemm(ctx.threads, false, true, n, n, D, 1.f, dOh, ldo, Vh, ldkv, 0.f, G, n);
    for (int i = 0; i < n; ++i) {
      float* row = P + (size_t)i * n;
      float* grow = G + (size_t)i * n;
      const uint64_t base = ((uint64_t)(st + i) * H + h) * T;
      if (p > 0.f)
        for (int j = 0; j <= i; ++j) grow[j] *= keep_scale(key, base + j, thr, inv_keep);
      const float delta = dot(row, grow, i + 1);
      for (int j = 0; j <= i; ++j) row[j] = row[j] * (grow[j] - delta);
      for (int j = i + 1; j < n; ++j) row[j] = 0.f;
    }
    // dQ_h = scale * dS K_h;  dK_h = scale * dS^T Q_h
    gemm(ctx.threads, false, false, n, D, n, scale, P, n, Kh, ldkv, 0.f, dQ + (size_t)st * ldq + h * D, ldq);
    gemm(ctx.threads, true, false, n, D, n, scale, P, n, Qh, ldq, 0.f, dK + (size_t)st * ldkv + h * D, ldkv);
  });
}

void attention_last_forward(const Context& ctx, float* O, const float* Q, int ldq, const float* K, const float* V,
                            int ldkv, const int32_t* cu, int B, int H, int D) {
  const float scale = 1.f / std::sqrt((float)D);
  const int ldo = H * D;
  const ThreadScratch scratch = tiles("attention_last_forward", ctx, longest(cu, B));
  parallel_for_dynamic(ctx.threads, B * H, [&](int task) {
    const int s = task / H, h = task % H;
    const int st = cu[s], n = cu[s + 1] - cu[s];
    if (n <= 0) return;
    float* S = scratch.slot();
    const float* Kh = K + (size_t)st * ldkv + h * D;
    const float* Vh = V + (size_t)st * ldkv + h * D;
    gemm(ctx.threads, false, true, 1, n, D, scale, Q + (size_t)s * ldq + h * D, ldq, Kh, ldkv, 0.f, S, n);
    const float m = row_max(S, n);
    const float inv_l = 1.f / exp_sum_inplace(S, n, m);
    for (int j = 0; j < n; ++j) S[j] *= inv_l;
    gemm(ctx.threads, false, false, 1, D, n, 1.f, S, n, Vh, ldkv, 0.f, O + (size_t)s * ldo + h * D, ldo);
  });
}

}  // namespace fsr::cpu
