// AdamW on the GPU (twin of cpp/src/cpu/adamw.cpp): one thread per parameter, PyTorch's
// torch.optim.AdamW over the flat arena, decay on the first n_decay entries.
//   m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
//   w -= lr * (wd_e * w + (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps))
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/ops.cuh"

namespace fsr::cuda {

namespace {
__global__ void adamw_kernel(float* w, const float* grads, float* m, float* v, size_t n,
                             size_t n_decay, float lr, float beta1, float beta2, float eps,
                             float wd, float step_size, float inv_sqrt_bc2) {
  const size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= n) return;
  const float g = grads[e];
  const float mm = beta1 * m[e] + (1.f - beta1) * g;
  const float vv = beta2 * v[e] + (1.f - beta2) * g * g;
  m[e] = mm;
  v[e] = vv;
  float x = w[e];
  if (e < n_decay) x -= lr * wd * x;
  w[e] = x - step_size * mm / (sqrtf(vv) * inv_sqrt_bc2 + eps);
}
}  // namespace

void adamw_step(const Context& ctx, float* params, const float* grads, float* m, float* v, size_t n, size_t n_decay,
                float lr, float beta1, float beta2, float eps, float weight_decay, int64_t step) {
  const cudaStream_t s = ctx.stream;
  if (n == 0) return;
  const float bc1 = 1.f - (float)std::pow((double)beta1, (double)step);
  const float bc2 = 1.f - (float)std::pow((double)beta2, (double)step);
  adamw_kernel<<<blocks_for(n, 256), 256, 0, s>>>(params, grads, m, v, n, n_decay, lr, beta1, beta2,
                                                  eps, weight_decay, lr / bc1, 1.f / std::sqrt(bc2));
  FSR_CUDA_LAUNCH_CHECK();
}

}  // namespace fsr::cuda
