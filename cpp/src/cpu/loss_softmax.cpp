// Full softmax cross-entropy over the catalogue (items 1..V; row 0 is padding).
//   s(r, i) = h_r . E[i] for i = 1..V
//   forward : loss(R) = logsumexp_i s(r, i) - s(r, tgt_r)
//   backward (grad_scale != 0): ds = grad_scale * (softmax(s) - onehot(tgt))
//             dh(R,C) = ds E[1:];   dE[1:] += ds^T h
// Rows are processed in chunks; workspace: loss_softmax_workspace(R, C, V, N) floats (with
// gemm_rows, fp32 on AVX-512, E[1:] transposed among them, so that the logits' product
// reads it by rows).
// One parallel region for the whole op (fp32, and bf16 with its kernel).  Each thread owns
// a contiguous slice of the catalogue and, chunk after chunk of rows, computes its slice of
// the logits, its share of each row's max and sum (combined across threads at two
// barriers, in thread order), turns its slice into ds, and adds ds^T h into its own rows of
// dE and ds E into its own partial dh, all while its slice of the chunk is in its cache;
// the partial dh are then summed in thread order, each thread a share of the rows.  No
// thread ever writes another's rows of dE, and results depend only on the thread count.
// ctx.precision BF16: the three products on bfloat16 operands (h, E and ds rounded, sums in
// fp32), as the CUDA twin computes them: in the same region by the AVX-512 BF16 kernel
// (BlockGemm), or, where the CPU has none, chunk by chunk through gemm_bf16 (its rounded
// copies, then sgemm), a region per product.
#include <algorithm>
#include <cmath>

#include "cpu/fast_math.h"
#include "cpu/ops.h"
#include "cpu/parallel.h"

namespace fsr::cpu {

namespace {
// The threads that split the catalogue: at most one per 64 items, and one for a small job.
int item_slices(const Context& ctx, int R, int C, int V) {
  const int nt = usable_threads(ctx.threads);
  if (nt <= 1 || 2.0 * R * V * C < 2.0e5) return 1;
  return std::max(1, std::min(nt, V / 64));
}
// Rows per chunk: about 512 KiB of logits per thread (so that a thread's slice of a chunk
// stays in its cache between its GEMM, the softmax passes and the two backward GEMMs), at
// least 32 rows so that the GEMMs stay efficient on a large catalogue.
constexpr size_t kSliceLogits = size_t(1) << 17;
inline int chunk_rows(int R, int V, int slices) {
  const size_t rows = std::max<size_t>(32, kSliceLogits * slices / std::max(V, 1));
  return (int)std::max<size_t>(1, std::min<size_t>((size_t)R, rows));
}
// Workspace: the chunk's logits (rc x V, slice t a contiguous rc x n_t block), each
// thread's row maxima and sums (2 x slices x rc), the target logits (rc), each thread's
// partial dh (slices x rc x C), and with gemm_rows (rows_products) E[1:] transposed (C x V).
size_t workspace_floats(const Context& ctx, int R, int C, int V, int slices) {
  const size_t rc = chunk_rows(R, V, slices);
  return rc * V + 2 * (size_t)slices * rc + rc + (size_t)slices * rc * C + (rows_products(ctx) ? (size_t)C * V : 0);
}

// bf16 where the CPU has no kernel: chunk by chunk, a region per product.
void loss_softmax_bf16(const Context& ctx, float* loss, float* dh, float* dE, const float* h,
                       const float* E, const int32_t* targets, int R, int C, int V,
                       float grad_scale, float* logits) {
  const bool grad = grad_scale != 0.f;
  const int rc = chunk_rows(R, V, 2);
  const float* E1 = E + C;  // item 1 onwards
  for (int r0 = 0; r0 < R; r0 += rc) {
    const int rn = std::min(rc, R - r0);
    gemm_bf16(ctx.threads, false, true, rn, V, C, 1.f, h + (size_t)r0 * C, C, E1, C, 0.f, logits, V);
    parallel_chunks(ctx.threads, rn, V, [&](long a, long b, int) {
      for (long i = a; i < b; ++i) {
        const long r = r0 + i;
        float* row = logits + (size_t)i * V;
        const float m = row_max(row, V);
        const int t = targets[r] - 1;
        const float st = row[t];
        const float z = grad ? exp_sum_inplace(row, V, m) : exp_sum(row, V, m);
        loss[r] = m + std::log(z) - st;
        if (grad) {
          const float c = grad_scale / z;
          scale_inplace(row, V, c);
          row[t] -= grad_scale;
        }
      }
    });
    if (!grad) continue;
    gemm_bf16(ctx.threads, false, false, rn, C, V, 1.f, logits, V, E1, C, 0.f, dh + (size_t)r0 * C, C);
    gemm_bf16(ctx.threads, true, false, V, C, rn, 1.f, logits, V, h + (size_t)r0 * C, C, 1.f, dE + C, C);
  }
}
}  // namespace

size_t loss_softmax_workspace(const Context& ctx, int R, int C, int V, int N) {
  if (ctx.precision == Precision::BF16 && !gemm_bf16_native()) return (size_t)chunk_rows(R, V, 2) * V;
  return workspace_floats(ctx, R, C, V, item_slices(ctx, R, C, V));
}

void loss_softmax(const Context& ctx, float* loss, float* dh, float* dE, const float* h, const float* E,
                  const int32_t* targets, const int32_t* negatives, int R, int C, int V, int N,
                  float grad_scale, float* workspace) {
  const int slices = item_slices(ctx, R, C, V);
  const BlockGemm mm("loss_softmax", ctx, slices);
  if (!mm.usable()) {
    loss_softmax_bf16(ctx, loss, dh, dE, h, E, targets, R, C, V, grad_scale, workspace);
    return;
  }
  const bool grad = grad_scale != 0.f;
  const int rc = chunk_rows(R, V, slices);
  const float* E1 = E + C;  // item 1 onwards
  float* const logits = workspace;
  float* const maxes = logits + (size_t)rc * V;   // slices x rc
  float* const sums = maxes + (size_t)slices * rc;  // slices x rc
  float* const target_logit = sums + (size_t)slices * rc;  // rc
  float* const partial = target_logit + rc;  // slices x rc x C
  // E[1:] transposed (C x V), for gemm_rows's logits (rows_products): B read by rows
  float* const Et = rows_products(ctx) ? partial + (size_t)slices * rc * C : nullptr;
  auto body = [&](int t, int k) {
    const int v0 = (int)((long)V * t / k), v1 = (int)((long)V * (t + 1) / k), nv = v1 - v0;
    if (Et)  // my slice of the items, transposed once for every chunk
      for (int v = v0; v < v1; ++v)
        for (int c = 0; c < C; ++c) Et[(size_t)c * V + v] = E1[(size_t)v * C + c];
    for (int r0 = 0; r0 < R; r0 += rc) {
      const int rn = std::min(rc, R - r0);
      const int q0 = (int)((long)rn * t / k), q1 = (int)((long)rn * (t + 1) / k);  // my rows
      float* L = logits + (size_t)rc * v0;  // my slice: rn x nv
      if (Et)
        mm(t, false, false, rn, nv, C, 1.f, h + (size_t)r0 * C, C, Et + v0, V, 0.f, L, nv);
      else
        mm(t, false, true, rn, nv, C, 1.f, h + (size_t)r0 * C, C, E1 + (size_t)v0 * C, C, 0.f, L, nv);
      for (int i = 0; i < rn; ++i) {
        const float* row = L + (size_t)i * nv;
        maxes[(size_t)t * rc + i] = row_max(row, nv);
        const int tg = targets[r0 + i] - 1;
        if (tg >= v0 && tg < v1) target_logit[i] = row[tg - v0];
      }
#pragma omp barrier
      for (int i = 0; i < rn; ++i) {
        float m = maxes[i];
        for (int u = 1; u < k; ++u) m = std::max(m, maxes[(size_t)u * rc + i]);
        float* row = L + (size_t)i * nv;
        sums[(size_t)t * rc + i] = grad ? exp_sum_inplace(row, nv, m) : exp_sum(row, nv, m);
      }
#pragma omp barrier
      for (int i = 0; i < rn; ++i) {
        float m = maxes[i], z = sums[i];
        for (int u = 1; u < k; ++u) {
          m = std::max(m, maxes[(size_t)u * rc + i]);
          z += sums[(size_t)u * rc + i];
        }
        if (i >= q0 && i < q1) loss[r0 + i] = m + std::log(z) - target_logit[i];
        if (!grad) continue;
        float* row = L + (size_t)i * nv;
        const float c = grad_scale / z;
        scale_inplace(row, nv, c);
        const int tg = targets[r0 + i] - 1;
        if (tg >= v0 && tg < v1) row[tg - v0] -= grad_scale;
      }
      if (!grad) {  // (every thread alike: no barrier is skipped by one alone)
#pragma omp barrier
        continue;  // the next chunk rewrites what the others may still read
      }
      float* P = k == 1 ? dh + (size_t)r0 * C : partial + (size_t)t * rc * C;
      mm(t, false, false, rn, C, nv, 1.f, L, nv, E1 + (size_t)v0 * C, C, 0.f, P, C);
      mm(t, true, false, nv, C, rn, 1.f, L, nv, h + (size_t)r0 * C, C, 1.f, dE + C + (size_t)v0 * C, C);
      if (k == 1) continue;
#pragma omp barrier
      sum_partials(dh + (size_t)r0 * C, partial, k, rc, q0, q1, C);
    }
  };
  parallel_team(slices, body);
}

}  // namespace fsr::cpu
