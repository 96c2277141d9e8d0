// Elementwise ops on the GPU (twins of cpp/src/cpu/dropout.cpp, gather.cpp, adamw.cpp): one
// thread per element, the same counter-based dropout masks.
//   dropout_forward : out = in * keep / (1 - p)                        (out may be in)
//   dropout_backward: din = dout * keep / (1 - p) [* (relu_out > 0)]   (din may be dout)
//   gather_rows     : out(n, C) = in[rows[i]]
//   adamw_step      : PyTorch AdamW over the flat arena, decay on the first n_decay entries
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/ops.cuh"
#include "fastsasrec/rng.h"

namespace fsr::cuda {

namespace {
__global__ void dropout_kernel(float* out, const float* in, const float* relu_out, size_t n,
                               uint32_t thr, float inv_keep, uint64_t key) {
  const size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= n) return;
  float k = keep_scale(key, e, thr, inv_keep);
  if (relu_out) k = relu_out[e] > 0.f ? k : 0.f;
  out[e] = in[e] * k;
}

__global__ void gather_kernel(float* out, const float* in, const int32_t* rows, int n, int C) {
  const size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= (size_t)n * C) return;
  const size_t i = e / C, c = e % C;
  out[e] = in[(size_t)rows[i] * C + c];
}

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

void dropout_forward(float* out, const float* in, size_t n, float p, uint64_t key, cudaStream_t s) {
  if (n == 0) return;
  if (p <= 0.f) {
    if (out != in) FSR_CUDA_CHECK(cudaMemcpyAsync(out, in, n * sizeof(float), cudaMemcpyDeviceToDevice, s));
    return;
  }
  dropout_kernel<<<blocks_for(n, 256), 256, 0, s>>>(out, in, nullptr, n, dropout_threshold(p),
                                                    1.f / (1.f - p), key);
  FSR_CUDA_LAUNCH_CHECK();
}

void dropout_backward(float* din, const float* dout, const float* relu_out, size_t n, float p,
                      uint64_t key, cudaStream_t s) {
  if (n == 0) return;
  if (p <= 0.f && !relu_out) {
    if (din != dout) FSR_CUDA_CHECK(cudaMemcpyAsync(din, dout, n * sizeof(float), cudaMemcpyDeviceToDevice, s));
    return;
  }
  const float inv_keep = p > 0.f ? 1.f / (1.f - p) : 1.f;
  dropout_kernel<<<blocks_for(n, 256), 256, 0, s>>>(din, dout, relu_out, n, dropout_threshold(p),
                                                    inv_keep, key);
  FSR_CUDA_LAUNCH_CHECK();
}

void gather_rows(float* out, const float* in, const int32_t* rows, int n, int C, cudaStream_t s) {
  if (n <= 0) return;
  gather_kernel<<<blocks_for((size_t)n * C, 256), 256, 0, s>>>(out, in, rows, n, C);
  FSR_CUDA_LAUNCH_CHECK();
}

void adamw_step(float* params, const float* grads, float* m, float* v, size_t n, size_t n_decay,
                float lr, float beta1, float beta2, float eps, float weight_decay, int64_t step,
                cudaStream_t s) {
  if (n == 0) return;
  const float bc1 = 1.f - (float)std::pow((double)beta1, (double)step);
  const float bc2 = 1.f - (float)std::pow((double)beta2, (double)step);
  adamw_kernel<<<blocks_for(n, 256), 256, 0, s>>>(params, grads, m, v, n, n_decay, lr, beta1, beta2,
                                                  eps, weight_decay, lr / bc1, 1.f / std::sqrt(bc2));
  FSR_CUDA_LAUNCH_CHECK();
}

}  // namespace fsr::cuda
