// Feature bag on the GPU (twin of cpp/src/cpu/feature_bag.cpp), one thread per element.
//   forward : out(V1, C) = m_i E(V1, C) + pool(F[values[offsets[i] .. offsets[i+1])])  (=)
//             pool: the sum, or the mean when `mean`; an item with no values: m_i E[i]
//   backward: dF(n_values, C) += sum over the items i of inv_items[inv_offsets[v] ..
//             inv_offsets[v+1]) of dE(V1, C)[i], times 1 / n_i when `mean`         (+=)
//             then dE[i] = m_i dE[i] in place (a second kernel, once dF has read dE)   (=)
// m_i = id_kept(key, i, dropout_threshold(p)) (fastsasrec/rng.h, shared with the CPU), 0 or
// 1, no rescaling; p = 0: every m_i = 1 and dE is left as it came.
// The same terms in the same order as the CPU's (each element has one writer: no atomics),
// so both backends agree to rounding and repeat themselves bit for bit.
#include "cuda/common.cuh"
#include "cuda/ops.cuh"
#include "fastsasrec/rng.h"

namespace fsr::cuda {

namespace {
__global__ void feature_bag_forward_kernel(float* out, const float* E, const float* F,
                                           const int32_t* values, const int32_t* offsets, int V1,
                                           int C, bool mean, uint32_t thr, uint64_t key) {
  const size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= (size_t)V1 * C) return;
  const size_t i = e / C, c = e % C;
  const bool kept = id_kept(key, (int64_t)i, thr);
  const int32_t j0 = offsets[i], j1 = offsets[i + 1];
  if (j1 == j0) {
    out[e] = kept ? E[e] : 0.f;
    return;
  }
  const float w = mean ? 1.f / (float)(j1 - j0) : 1.f;
  float acc = 0.f;
  for (int32_t j = j0; j < j1; ++j) acc += F[(size_t)values[j] * C + c];
  out[e] = kept ? E[e] + acc * w : acc * w;
}

__global__ void feature_bag_backward_kernel(float* dF, const float* dE, const int32_t* inv_items,
                                            const int32_t* inv_offsets, const int32_t* offsets,
                                            int n_values, int C, bool mean) {
  const size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= (size_t)n_values * C) return;
  const size_t v = e / C, c = e % C;
  float acc = 0.f;
  for (int32_t k = inv_offsets[v]; k < inv_offsets[v + 1]; ++k) {
    const int32_t i = inv_items[k];
    const float g = dE[(size_t)i * C + c];
    acc += mean ? g * (1.f / (float)(offsets[i + 1] - offsets[i])) : g;
  }
  dF[e] += acc;
}

__global__ void feature_bag_mask_kernel(float* dE, int V1, int C, uint32_t thr, uint64_t key) {
  const size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= (size_t)V1 * C) return;
  if (!id_kept(key, (int64_t)(e / C), thr)) dE[e] = 0.f;
}
}  // namespace

void feature_bag_forward(const Context& ctx, float* out, const float* E, const float* F,
                         const int32_t* values, const int32_t* offsets, int V1, int C, bool mean,
                         float p, uint64_t key) {
  const size_t n = (size_t)V1 * C;
  if (n == 0) return;
  feature_bag_forward_kernel<<<blocks_for(n, 256), 256, 0, ctx.stream>>>(
      out, E, F, values, offsets, V1, C, mean, dropout_threshold(p), key);
  FSR_CUDA_LAUNCH_CHECK();
}

void feature_bag_backward(const Context& ctx, float* dF, float* dE, const int32_t* inv_items,
                          const int32_t* inv_offsets, const int32_t* offsets, int n_values,
                          int V1, int C, bool mean, float p, uint64_t key) {
  const size_t n = (size_t)n_values * C;
  if (n > 0) {
    feature_bag_backward_kernel<<<blocks_for(n, 256), 256, 0, ctx.stream>>>(
        dF, dE, inv_items, inv_offsets, offsets, n_values, C, mean);
    FSR_CUDA_LAUNCH_CHECK();
  }
  const size_t m = (size_t)V1 * C;
  if (p <= 0.f || m == 0) return;
  feature_bag_mask_kernel<<<blocks_for(m, 256), 256, 0, ctx.stream>>>(dE, V1, C,
                                                                       dropout_threshold(p), key);
  FSR_CUDA_LAUNCH_CHECK();
}

}  // namespace fsr::cuda
