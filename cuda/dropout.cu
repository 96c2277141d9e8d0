// Dropout on the GPU (twin of cpp/src/cpu/dropout.cpp): one thread per element, the same
// counter-based masks (element e keeps when dropout_uniform(key, e) >= p, fastsasrec/rng.h).
//   dropout_forward : out(n) = in * keep / (1 - p)                        (out may be in)
//   dropout_backward: din(n) = dout * keep / (1 - p) [* (relu_out > 0)]   (din may be dout)
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
}  // namespace

void dropout_forward(const Context& ctx, float* out, const float* in, size_t n, float p, uint64_t key) {
  const cudaStream_t s = ctx.stream;
  if (n == 0) return;
  if (p <= 0.f) {
    if (out != in) FSR_CUDA_CHECK(cudaMemcpyAsync(out, in, n * sizeof(float), cudaMemcpyDeviceToDevice, s));
    return;
  }
  dropout_kernel<<<blocks_for(n, 256), 256, 0, s>>>(out, in, nullptr, n, dropout_threshold(p),
                                                    1.f / (1.f - p), key);
  FSR_CUDA_LAUNCH_CHECK();
}

void dropout_backward(const Context& ctx, float* din, const float* dout, const float* relu_out, size_t n, float p,
                      uint64_t key) {
  const cudaStream_t s = ctx.stream;
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

}  // namespace fsr::cuda
