// Feature bag: an item's vector is its id embedding plus the pool (sum or mean) of the
// embeddings of its feature values.
//   forward : out(V1, C) = E(V1, C) + pool(F[values[offsets[i] .. offsets[i+1])])     (=)
//             pool: the sum, or the mean when `mean`; an item with no values: out[i] = E[i]
//   backward: dF(n_values, C) += sum over the items i of inv_items[inv_offsets[v] ..
//             inv_offsets[v+1]) of dout(V1, C)[i], times 1 / n_i when `mean`, with
//             n_i = offsets[i+1] - offsets[i]                                          (+=)
// values, offsets (V1 + 1): each item's feature values (CSR); inv_items, inv_offsets
// (n_values + 1): the inverse, each value's items in ascending order (an item listed once
// per time it lists the value).  The id part's gradient is dout itself.
// Every output row has one writer and sums its terms in list order, so the results do not
// depend on the threads.
#include "cpu/ops.h"
#include "cpu/parallel.h"

namespace fsr::cpu {

void feature_bag_forward(const Context& ctx, float* out, const float* E, const float* F,
                         const int32_t* values, const int32_t* offsets, int V1, int C, bool mean) {
  const long per_row = (long)C * (1 + (V1 > 0 ? (long)offsets[V1] / V1 : 0));
  parallel_chunks(ctx.threads, V1, per_row, [&](long i0, long i1, int) {
    for (long i = i0; i < i1; ++i) {
      const float* e = E + (size_t)i * C;
      float* o = out + (size_t)i * C;
      const int32_t j0 = offsets[i], j1 = offsets[i + 1];
      if (j1 == j0) {
        for (int c = 0; c < C; ++c) o[c] = e[c];
        continue;
      }
      const float w = mean ? 1.f / (float)(j1 - j0) : 1.f;
      for (int c = 0; c < C; ++c) {
        float acc = 0.f;
        for (int32_t j = j0; j < j1; ++j) acc += F[(size_t)values[j] * C + c];
        o[c] = e[c] + acc * w;
      }
    }
  });
}

void feature_bag_backward(const Context& ctx, float* dF, const float* dout,
                          const int32_t* inv_items, const int32_t* inv_offsets,
                          const int32_t* offsets, int n_values, int C, bool mean) {
  const long per_row = (long)C * (1 + (n_values > 0 ? (long)inv_offsets[n_values] / n_values : 0));
  parallel_chunks(ctx.threads, n_values, per_row, [&](long v0, long v1, int) {
    for (long v = v0; v < v1; ++v) {
      float* d = dF + (size_t)v * C;
      const int32_t k0 = inv_offsets[v], k1 = inv_offsets[v + 1];
      for (int c = 0; c < C; ++c) {
        float acc = 0.f;
        for (int32_t k = k0; k < k1; ++k) {
          const int32_t i = inv_items[k];
          const float g = dout[(size_t)i * C + c];
          acc += mean ? g * (1.f / (float)(offsets[i + 1] - offsets[i])) : g;
        }
        d[c] += acc;
      }
    }
  });
}

}  // namespace fsr::cpu
