// Embedding on the GPU (twin of cpp/src/cpu/embedding.cpp).
//   forward : x(R,C) = dropout_p(E[items] * scale + P[pos])        one thread per element
//   backward: g = dropout_p'(dx);  dE[items] += scale * g;  dP[pos] += g   (atomicAdd)
// Element (r, c) draws dropout counter r * C + c, as on the CPU.
#include "cuda/common.cuh"
#include "cuda/ops.cuh"
#include "fastsasrec/rng.h"

namespace fsr::cuda {

namespace {
__global__ void embedding_forward_kernel(float* x, const int32_t* items, const int32_t* pos,
                                         const float* E, const float* P, int R, int C, float scale,
                                         uint32_t thr, float inv_keep, uint64_t key) {
  const size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= (size_t)R * C) return;
  const size_t r = e / C, c = e % C;
  const float v = E[(size_t)items[r] * C + c] * scale + P[(size_t)pos[r] * C + c];
  x[e] = v * keep_scale(key, e, thr, inv_keep);
}

__global__ void embedding_backward_kernel(float* dE, float* dP, const float* dx,
                                          const int32_t* items, const int32_t* pos, int R, int C,
                                          float scale, uint32_t thr, float inv_keep, uint64_t key) {
  const size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= (size_t)R * C) return;
  const size_t r = e / C, c = e % C;
  const float g = dx[e] * keep_scale(key, e, thr, inv_keep);
  atomicAdd(dE + (size_t)items[r] * C + c, scale * g);
  atomicAdd(dP + (size_t)pos[r] * C + c, g);
}
}  // namespace

void embedding_forward(const Context& ctx, float* x, const int32_t* items, const int32_t* pos, const float* E,
                       const float* P, int R, int C, float scale, float p, uint64_t key) {
  const cudaStream_t s = ctx.stream;
  const size_t n = (size_t)R * C;
  if (n == 0) return;
  const float inv_keep = p > 0.f ? 1.f / (1.f - p) : 1.f;
  embedding_forward_kernel<<<blocks_for(n, 256), 256, 0, s>>>(x, items, pos, E, P, R, C, scale,
                                                              dropout_threshold(p), inv_keep, key);
  FSR_CUDA_LAUNCH_CHECK();
}

void embedding_backward(const Context& ctx, float* dE, float* dP, const float* dx, const int32_t* items,
                        const int32_t* pos, int R, int C, float scale, float p, uint64_t key) {
  const cudaStream_t s = ctx.stream;
  const size_t n = (size_t)R * C;
  if (n == 0) return;
  const float inv_keep = p > 0.f ? 1.f / (1.f - p) : 1.f;
  embedding_backward_kernel<<<blocks_for(n, 256), 256, 0, s>>>(
      dE, dP, dx, items, pos, R, C, scale, dropout_threshold(p), inv_keep, key);
  FSR_CUDA_LAUNCH_CHECK();
}

}  // namespace fsr::cuda
