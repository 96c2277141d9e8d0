// LayerNorm on the GPU (twin of cpp/src/cpu/layernorm.cpp).
//   forward : one warp per row: mean, rstd = 1/sqrt(var + eps) saved; out = xhat * g + b;
//             layernorm_residual_forward first forms the row as a + dropout_p(b) (the same
//             counters as dropout_forward over R*C), stores it in sum and normalises that
//   backward: one warp per row for din (= or +=); dg, db (+=) summed over chunks of rows
//             and added atomically (chunk order may vary between runs): in the same kernel
//             while a row fits in registers (C <= 256), else by a second kernel
#include "cuda/common.cuh"
#include "cuda/ops.cuh"
#include "fastsasrec/rng.h"

namespace fsr::cuda {

namespace {
// With res (the residual's second summand) the row is a + dropout(res), written to sum and
// read back by the same lanes; thr == 0 means no dropout.
__global__ void layernorm_forward_kernel(float* out, float* mean, float* rstd, float* sum,
                                         const float* in, const float* res, uint32_t thr,
                                         float inv_keep, uint64_t key, const float* g,
                                         const float* b, int R, int C, float eps) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= R) return;
  const size_t r0 = (size_t)row * C;
  const float* x = in + r0;
  if (res) {
    float* sr = sum + r0;
    for (int c = lane; c < C; c += 32) {
      float v = res[r0 + c];
      if (thr) v *= keep_scale(key, r0 + c, thr, inv_keep);
      sr[c] = x[c] + v;
    }
    x = sr;
  }
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
  float* o = out + r0;
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

// dg, db += column sums over rows of dout * xhat and dout: a block sums kColRows rows of
// 32 columns with 8 row lanes (whole 128-byte row segments per warp), reduces in shared
// memory and adds atomically across blocks.
constexpr int kCols = 32, kLanes = 8, kColRows = 128;
__global__ void __launch_bounds__(kCols * kLanes)
layernorm_param_grad_kernel(float* dg, float* db, const float* dout, const float* in,
                            const float* mean, const float* rstd, int R, int C) {
  __shared__ float pg[kLanes][kCols + 1], pb[kLanes][kCols + 1];
  const int tx = threadIdx.x % kCols, ty = threadIdx.x / kCols;
  const int c = blockIdx.x * kCols + tx;
  const int r0 = blockIdx.y * kColRows, r1 = min(R, r0 + kColRows);
  float sg = 0.f, sb = 0.f;
  if (c < C)
#pragma unroll 4
    for (int r = r0 + ty; r < r1; r += kLanes) {
      const float d = dout[(size_t)r * C + c];
      sg += d * (in[(size_t)r * C + c] - mean[r]) * rstd[r];
      sb += d;
    }
  pg[ty][tx] = sg;
  pb[ty][tx] = sb;
  __syncthreads();
  if (ty == 0 && c < C) {
    float tg = 0.f, tb = 0.f;
#pragma unroll
    for (int k = 0; k < kLanes; ++k) {
      tg += pg[k][tx];
      tb += pb[k][tx];
    }
    atomicAdd(dg + c, tg);
    atomicAdd(db + c, tb);
  }
}

// din and the dg, db partial sums in one pass (C <= 32 * KPL): each warp takes kFusedRows
// consecutive rows, its lanes holding columns lane + 32k in registers; the block's 8
// warps then add their column sums in shared memory and atomically to dg, db.
constexpr int kFusedRows = 4;
template <int KPL>
__global__ void __launch_bounds__(256)
layernorm_backward_fused_kernel(float* din, float* dg, float* db, const float* dout,
                                const float* in, const float* mean, const float* rstd,
                                const float* g, int R, int C, bool accumulate) {
  __shared__ float pg[8][32 * KPL], pb[8][32 * KPL];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float ag[KPL], ab[KPL], gv[KPL];
#pragma unroll
  for (int k = 0; k < KPL; ++k) {
    const int c = lane + 32 * k;
    ag[k] = ab[k] = 0.f;
    gv[k] = c < C ? g[c] : 0.f;
  }
  const int row0 = (blockIdx.x * 8 + warp) * kFusedRows;
  for (int q = 0; q < kFusedRows; ++q) {
    const int row = row0 + q;
    if (row >= R) break;  // warp-uniform
    const float* x = in + (size_t)row * C;
    const float* d = dout + (size_t)row * C;
    const float m = mean[row], rs = rstd[row];
    float xh[KPL], dv[KPL], sg = 0.f, sgx = 0.f;
#pragma unroll
    for (int k = 0; k < KPL; ++k) {
      const int c = lane + 32 * k;
      xh[k] = c < C ? (x[c] - m) * rs : 0.f;
      dv[k] = c < C ? d[c] : 0.f;
      const float gh = dv[k] * gv[k];
      sg += gh;
      sgx += gh * xh[k];
      ag[k] += dv[k] * xh[k];
      ab[k] += dv[k];
    }
    const float mg = warp_sum(sg) / C, mgx = warp_sum(sgx) / C;
    float* o = din + (size_t)row * C;
#pragma unroll
    for (int k = 0; k < KPL; ++k) {
      const int c = lane + 32 * k;
      if (c >= C) continue;
      const float v = rs * (dv[k] * gv[k] - mg - xh[k] * mgx);
      o[c] = accumulate ? o[c] + v : v;
    }
  }
#pragma unroll
  for (int k = 0; k < KPL; ++k) {
    pg[warp][lane + 32 * k] = ag[k];
    pb[warp][lane + 32 * k] = ab[k];
  }
  __syncthreads();
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float tg = 0.f, tb = 0.f;
#pragma unroll
    for (int w = 0; w < 8; ++w) {
      tg += pg[w][c];
      tb += pb[w][c];
    }
    atomicAdd(dg + c, tg);
    atomicAdd(db + c, tb);
  }
}

template <int KPL>
void backward_fused(float* din, float* dg, float* db, const float* dout, const float* in,
                    const float* mean, const float* rstd, const float* g, int R, int C,
                    bool accumulate, cudaStream_t s) {
  layernorm_backward_fused_kernel<KPL><<<blocks_for(R, 8 * kFusedRows), 256, 0, s>>>(
      din, dg, db, dout, in, mean, rstd, g, R, C, accumulate);
  FSR_CUDA_LAUNCH_CHECK();
}
}  // namespace

void layernorm_forward(const Context& ctx, float* out, float* mean, float* rstd, const float* in, const float* g,
                       const float* b, int R, int C, float eps) {
  const cudaStream_t s = ctx.stream;
  if (R <= 0) return;
  layernorm_forward_kernel<<<blocks_for(R, 8), 256, 0, s>>>(out, mean, rstd, nullptr, in, nullptr,
                                                             0u, 1.f, 0, g, b, R, C, eps);
  FSR_CUDA_LAUNCH_CHECK();
}

void layernorm_residual_forward(const Context& ctx, float* sum, float* out, float* mean, float* rstd, const float* a,
                                const float* b, float p, uint64_t key, const float* g,
                                const float* beta, int R, int C, float eps) {
  const cudaStream_t s = ctx.stream;
  if (R <= 0) return;
  const float inv_keep = p > 0.f ? 1.f / (1.f - p) : 1.f;
  layernorm_forward_kernel<<<blocks_for(R, 8), 256, 0, s>>>(
      out, mean, rstd, sum, a, b, dropout_threshold(p), inv_keep, key, g, beta, R, C, eps);
  FSR_CUDA_LAUNCH_CHECK();
}

void layernorm_backward(const Context& ctx, float* din, float* dg, float* db, const float* dout, const float* in,
                        const float* mean, const float* rstd, const float* g, int R, int C,
                        bool accumulate) {
  const cudaStream_t s = ctx.stream;
  if (R <= 0) return;
  if (C <= 32) return backward_fused<1>(din, dg, db, dout, in, mean, rstd, g, R, C, accumulate, s);
  if (C <= 64) return backward_fused<2>(din, dg, db, dout, in, mean, rstd, g, R, C, accumulate, s);
  if (C <= 128) return backward_fused<4>(din, dg, db, dout, in, mean, rstd, g, R, C, accumulate, s);
  if (C <= 256) return backward_fused<8>(din, dg, db, dout, in, mean, rstd, g, R, C, accumulate, s);
  layernorm_backward_kernel<<<blocks_for(R, 8), 256, 0, s>>>(din, dout, in, mean, rstd, g, R, C,
                                                             accumulate);
  FSR_CUDA_LAUNCH_CHECK();
  const dim3 grid(blocks_for(C, kCols), blocks_for(R, kColRows));
  layernorm_param_grad_kernel<<<grid, kCols * kLanes, 0, s>>>(dg, db, dout, in, mean, rstd, R, C);
  FSR_CUDA_LAUNCH_CHECK();
}

}  // namespace fsr::cuda
