// Full softmax cross-entropy over the catalogue (items 1..V; row 0 is padding).
//   s(r, i) = h_r . E[i] for i = 1..V
//   forward : loss(R) = logsumexp_i s(r, i) - s(r, tgt_r)
//   backward (grad_scale != 0): ds = grad_scale * (softmax(s) - onehot(tgt))
//             dh(R,C) = ds E[1:];   dE[1:] += ds^T h
// Rows are processed in chunks; workspace: loss_softmax_workspace(R, C, V, N) floats (one chunk).
// ctx.precision BF16: the three products by gemm_bf16 (h, E and ds rounded to bfloat16, sums
// in fp32), as the CUDA twin computes them.
#include <algorithm>
#include <cmath>

#include "cpu/fast_math.h"
#include "cpu/ops.h"
#include "cpu/parallel.h"

namespace fsr::cpu {

namespace {
// Rows per chunk: about 1 MiB of logits, so that the logits of a chunk stay in cache
// between their GEMM, the softmax passes and the two backward GEMMs; at least 32 rows so
// that the GEMMs stay efficient on a large catalogue.
constexpr size_t kChunkLogits = size_t(1) << 18;
inline int chunk_rows(int R, int V) {
  const size_t rows = std::max<size_t>(32, kChunkLogits / std::max(V, 1));
  return (int)std::max<size_t>(1, std::min<size_t>((size_t)R, rows));
}
}  // namespace

size_t loss_softmax_workspace(const Context&, int R, int C, int V, int N) {
  return (size_t)chunk_rows(R, V) * V;
}

void loss_softmax(const Context& ctx, float* loss, float* dh, float* dE, const float* h, const float* E,
                  const int32_t* targets, const int32_t* negatives, int R, int C, int V, int N,
                  float grad_scale, float* workspace) {
  const bool grad = grad_scale != 0.f;
  const auto mm = ctx.precision == Precision::BF16 ? gemm_bf16 : gemm;
  const int rc = chunk_rows(R, V);
  const float* E1 = E + C;  // item 1 onwards
  float* logits = workspace;
  for (int r0 = 0; r0 < R; r0 += rc) {
    const int rn = std::min(rc, R - r0);
    mm(ctx.threads, false, true, rn, V, C, 1.f, h + (size_t)r0 * C, C, E1, C, 0.f, logits, V);
    parallel_chunks(ctx.threads, rn, V, [&](long a, long b, int) {
      for (long i = a; i < b; ++i) {
        const long r = r0 + i;
        float* row = logits + (size_t)i * V;
        const float m = row_max(row, V);
        const int t = targets[r] - 1;
        const float st = row[t];
        // keep exp(s - m) when training: the gradient is grad_scale * e / z
        const float z = grad ? exp_sum_inplace(row, V, m) : exp_sum(row, V, m);
        loss[r] = m + std::log(z) - st;
        if (grad) {
          const float c = grad_scale / z;
          for (int j = 0; j < V; ++j) row[j] *= c;
          row[t] -= grad_scale;
        }
      }
    });
    if (!grad) continue;
    mm(ctx.threads, false, false, rn, C, V, 1.f, logits, V, E1, C, 0.f, dh + (size_t)r0 * C, C);
    mm(ctx.threads, true, false, V, C, rn, 1.f, logits, V, h + (size_t)r0 * C, C, 1.f, dE + C, C);
  }
}

}  // namespace fsr::cpu
