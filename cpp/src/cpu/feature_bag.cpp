// Feature bag: an item's vector is its id embedding plus the pool (sum or mean) of the
// embeddings of its feature values, the id part dropped for a training step with
// probability p (id dropout; p = 0 at inference and when not asked).
//   forward : out(V1, C) = m_i E(V1, C) + pool(F[values[offsets[i] .. offsets[i+1])])  (=)
//             pool: the sum, or the mean when `mean`; an item with no values: m_i E[i]
//   backward: dF(n_values, C) += sum over the items i of inv_items[inv_offsets[v] ..
//             inv_offsets[v+1]) of dE(V1, C)[i], times 1 / n_i when `mean`, with
//             n_i = offsets[i+1] - offsets[i]                                          (+=)
//             then dE[i] = m_i dE[i] in place: dE comes in as the fused table's gradient
//             and leaves as the id part's                                             (=)
// m_i = id_kept(key, i, dropout_threshold(p)) (fastsasrec/rng.h), 0 or 1, no rescaling;
// p = 0: every m_i = 1, and dE is left as it came.
// values, offsets (V1 + 1): each item's feature values (CSR); inv_items, inv_offsets
// (n_values + 1): the inverse, each value's items in ascending order (an item listed once
// per time it lists the value).
// Every output row has one writer and sums its terms in list order, so the results do not
// depend on the threads.
#include "cpu/ops.h"
#include "cpu/parallel.h"
#include "fastsasrec/rng.h"

namespace fsr::cpu {

void feature_bag_forward(const Context& ctx, float* out, const float* E, const float* F,
                         const int32_t* values, const int32_t* offsets, int V1, int C, bool mean,
                         float p, uint64_t key) {
  const uint32_t thr = dropout_threshold(p);
  const long per_row = (long)C * (1 + (V1 > 0 ? (long)offsets[V1] / V1 : 0));
  parallel_chunks(ctx.threads, V1, per_row, [&](long i0, long i1, int) {
    for (long i = i0; i < i1; ++i) {
      const float* e = E + (size_t)i * C;
      float* o = out + (size_t)i * C;
      const bool kept = id_kept(key, i, thr);
      const int32_t j0 = offsets[i], j1 = offsets[i + 1];
      if (j1 == j0) {
        for (int c = 0; c < C; ++c) o[c] = kept ? e[c] : 0.f;
        continue;
      }
      const float w = mean ? 1.f / (float)(j1 - j0) : 1.f;
      auto pool = [&](int c) {
        float acc = 0.f;
        for (int32_t j = j0; j < j1; ++j) acc += F[(size_t)values[j] * C + c];
        return acc;
      };
      if (kept)  // e + acc * w, one expression (the compiler may fuse it, as CUDA does)
        for (int c = 0; c < C; ++c) o[c] = e[c] + pool(c) * w;
      else
        for (int c = 0; c < C; ++c) o[c] = pool(c) * w;
    }
  });
}

void feature_bag_backward(const Context& ctx, float* dF, float* dE, const int32_t* inv_items,
                          const int32_t* inv_offsets, const int32_t* offsets, int n_values,
                          int V1, int C, bool mean, float p, uint64_t key) {
  const long per_row = (long)C * (1 + (n_values > 0 ? (long)inv_offsets[n_values] / n_values : 0));
  parallel_chunks(ctx.threads, n_values, per_row, [&](long v0, long v1, int) {
    for (long v = v0; v < v1; ++v) {
      float* d = dF + (size_t)v * C;
      const int32_t k0 = inv_offsets[v], k1 = inv_offsets[v + 1];
      for (int c = 0; c < C; ++c) {
        float acc = 0.f;
        for (int32_t k = k0; k < k1; ++k) {
          const int32_t i = inv_items[k];
          const float g = dE[(size_t)i * C + c];
          acc += mean ? g * (1.f / (float)(offsets[i + 1] - offsets[i])) : g;
        }
        d[c] += acc;
      }
    }
  });
  if (p <= 0.f) return;
  // dF has read every row of dE: now the id part's gradient, row by row.
  const uint32_t thr = dropout_threshold(p);
  parallel_chunks(ctx.threads, V1, C, [&](long i0, long i1, int) {
    for (long i = i0; i < i1; ++i)
      if (!id_kept(key, i, thr))
        for (int c = 0; c < C; ++c) dE[(size_t)i * C + c] = 0.f;
  });
}

}  // namespace fsr::cpu
