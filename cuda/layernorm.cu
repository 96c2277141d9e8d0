// LayerNorm on the GPU (twin of cpp/src/cpu/layernorm.cpp).
//   forward : one warp per row: mean, rstd = 1/sqrt(var + eps) saved; out = xhat * g + b
//   backward: one warp per row for din (= or +=); dg, db (+=) summed by a second kernel:
//             each thread sums one column over a chunk of kRowsPerBlock rows, then adds
//             its partial sum atomically (chunk order may vary between runs)
#include "cuda/common.cuh"
#include "cuda/ops.cuh"

namespace fsr::cuda {

namespace {
constexpr int kRowsPerBlock = 256;

__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__global__ void layernorm_forward_kernel(float* out, float* mean, float* rstd, const float* in,
                                         const float* g, const float* b, int R, int C, float eps) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= R) return;
  const float* x = in + (size_t)row * C;
  float s = 0.f;
  for (int c = lane; c < C; c += 32) s += x[c];
  const float m = warp_sum(s) / C;
  float v = 0.f;
  for (int c = lane; c < C; c += 32) v += (x[c] - m) * (x[c] - m);
  const float rs = rsqrtf(warp_sum(v) / C + eps);
  if (lane == 0) {
    mean[row] = m;
    rstd[row] = rs;
  }
  float* o = out + (size_t)row * C;
  for (int c = lane; c < C; c += 32) o[c] = (x[c] - m) * rs * g[c] + b[c];
}

__global__ void layernorm_backward_kernel(float* din, const float* dout, const float* in,
                                          const float* mean, const float* rstd, const float* g,
                                          int R, int C, bool accumulate) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= R) return;
  const float* x = in + (size_t)row * C;
  const float* d = dout + (size_t)row * C;
  const float m = mean[row], rs = rstd[row];
  float sg = 0.f, sgx = 0.f;
  for (int c = lane; c < C; c += 32) {
    const float xh = (x[c] - m) * rs, gh = d[c] * g[c];
    sg += gh;
    sgx += gh * xh;
  }
  const float mg = warp_sum(sg) / C, mgx = warp_sum(sgx) / C;
  float* o = din + (size_t)row * C;
  for (int c = lane; c < C; c += 32) {
    const float xh = (x[c] - m) * rs;
    const float v = rs * (d[c] * g[c] - mg - xh * mgx);
    o[c] = accumulate ? o[c] + v : v;
  }
}

__global__ void layernorm_param_grad_kernel(float* dg, float* db, const float* dout,
                                            const float* in, const float* mean,
                                            const float* rstd, int R, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int r0 = blockIdx.y * kRowsPerBlock, r1 = min(R, r0 + kRowsPerBlock);
  float sg = 0.f, sb = 0.f;
  for (int r = r0; r < r1; ++r) {
    const float d = dout[(size_t)r * C + c];
    sg += d * (in[(size_t)r * C + c] - mean[r]) * rstd[r];
    sb += d;
  }
  atomicAdd(dg + c, sg);
  atomicAdd(db + c, sb);
}
}  // namespace

void layernorm_forward(float* out, float* mean, float* rstd, const float* in, const float* g,
                       const float* b, int R, int C, float eps, cudaStream_t s) {
  if (R <= 0) return;
  layernorm_forward_kernel<<<blocks_for(R, 8), 256, 0, s>>>(out, mean, rstd, in, g, b, R, C, eps);
  FSR_CUDA_LAUNCH_CHECK();
}

void layernorm_backward(float* din, float* dg, float* db, const float* dout, const float* in,
                        const float* mean, const float* rstd, const float* g, int R, int C,
                        bool accumulate, cudaStream_t s) {
  if (R <= 0) return;
  layernorm_backward_kernel<<<blocks_for(R, 8), 256, 0, s>>>(din, dout, in, mean, rstd, g, R, C,
                                                             accumulate);
  FSR_CUDA_LAUNCH_CHECK();
  const dim3 grid(blocks_for(C, 64), blocks_for(R, kRowsPerBlock));
  layernorm_param_grad_kernel<<<grid, 64, 0, s>>>(dg, db, dout, in, mean, rstd, R, C);
  FSR_CUDA_LAUNCH_CHECK();
}

}  // namespace fsr::cuda
