// gBCE on the GPU (twin of cpp/src/cpu/loss_gbce.cpp): binary cross-entropy over the
// positive and N negatives shared by every row, the positive's probability raised to beta.
//   s_pos(r) = h_r . E[tgt_r];   s(r, j) = h_r . E[neg_j]; a negative equal to the row's
//   target does not count
//   forward : loss(R) = (beta softplus(-s_pos) + sum_j softplus(s(r, j))) / (1 + N)      =
//   backward (grad_scale != 0), g = grad_scale / (1 + N):
//             ds(r, j) = g sigmoid(s(r, j)) (0 where neg_j == tgt_r); ds_pos = -g beta sigmoid(-s_pos)
//             dh(R,C) = ds_pos E[tgt] + ds En        (En = E[neg], N x C)                  =
//             dE[neg_j] += (ds^T h)_j;  dE[tgt_r] += ds_pos h_r                            +=
// The products are cuBLAS fp32 GEMMs (the handle is in pedantic math: no reduced
// precision) over chunks of rows, so at most chunk x N logits exist at once; a kernel per
// row turns a chunk's logits into the loss and the coefficients in place.
// workspace (floats): En and dEn (2 N C), one chunk of logits, and R coefficients.
#include <cublas_v2.h>

#include <stdexcept>

#include "cuda/common.cuh"
#include "cuda/ops.cuh"

namespace fsr::cuda {

namespace {
constexpr size_t kChunkLogits = size_t(1) << 22;  // 16 MiB of logits a chunk
constexpr int kThreads = 256;

int chunk_rows(int R, int N) {
  const size_t rows = std::max<size_t>(32, kChunkLogits / std::max(N, 1));
  return (int)std::max<size_t>(1, std::min<size_t>((size_t)R, rows));
}

void check(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(::fsr::detail::cat("loss_gbce: cuBLAS error ", (int)st, " in ", what));
}

// Row-major C(M,N) = op(A) op(B) + beta C in fp32: column-major C^T = op(B)^T op(A)^T.
void gemm_f32(cublasHandle_t h, bool ta, bool tb, int M, int N, int K, const float* A, int lda,
              const float* B, int ldb, float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  const float alpha = 1.f;
  check(cublasGemmEx(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K,
                     &alpha, B, CUDA_R_32F, ldb, A, CUDA_R_32F, lda, &beta, C, CUDA_R_32F, ldc,
                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "cublasGemmEx");
}

__device__ __forceinline__ float softplus(float x) { return fmaxf(x, 0.f) + log1pf(expf(-fabsf(x))); }
__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

// Sum over the block's threads (kThreads, a power of two); every thread gets it.
__device__ float block_sum(float v, float* red) {
  red[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  const float out = red[0];
  __syncthreads();
  return out;
}

// One block per row of the chunk: the loss, and in place of the logits their coefficients.
__global__ void gbce_rows_kernel(float* loss, float* logits, float* dpos, const float* h,
                                 const float* E, const int32_t* targets,
                                 const int32_t* negatives, int r0, int C, int N, float beta,
                                 float g, bool grad) {
  __shared__ float red[kThreads];
  const int i = blockIdx.x;
  const long long r = (long long)r0 + i;
  const float* hr = h + r * C;
  const int32_t t = targets[r];
  const float* ep = E + (size_t)t * C;
  float part = 0.f;
  for (int c = threadIdx.x; c < C; c += kThreads) part += hr[c] * ep[c];
  const float sp = block_sum(part, red);
  float* row = logits + (size_t)i * N;
  float sum = 0.f;
  for (int j = threadIdx.x; j < N; j += kThreads) {
    const bool counts = negatives[j] != t;
    const float s = row[j];
    sum += counts ? softplus(s) : 0.f;
    if (grad) row[j] = counts ? g * sigmoid(s) : 0.f;
  }
  sum = block_sum(sum, red);
  if (threadIdx.x == 0) {
    loss[r] = (beta * softplus(-sp) + sum) / (1.f + (float)N);
    if (grad) dpos[r] = -g * beta * sigmoid(-sp);
  }
}

// dh[r] += ds_pos(r) E[tgt_r]
__global__ void add_pos_kernel(float* dh, const float* dpos, const float* E,
                               const int32_t* targets, int R, int C) {
  const size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= (size_t)R * C) return;
  const size_t r = e / C, c = e % C;
  dh[e] += dpos[r] * E[(size_t)targets[r] * C + c];
}

// dE[neg_j] += dEn[j]; dE[tgt_r] += ds_pos(r) h_r (repeated ids: atomics)
__global__ void scatter_kernel(float* dE, const float* dEn, const int32_t* negatives, int N,
                               const float* dpos, const float* h, const int32_t* targets, int R,
                               int C) {
  const size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  const size_t nn = (size_t)N * C;
  if (e < nn) {
    const size_t j = e / C, c = e % C;
    atomicAdd(dE + (size_t)negatives[j] * C + c, dEn[e]);
  } else if (e < nn + (size_t)R * C) {
    const size_t f = e - nn, r = f / C, c = f % C;
    atomicAdd(dE + (size_t)targets[r] * C + c, dpos[r] * h[f]);
  }
}
}  // namespace

size_t loss_gbce_workspace(const Context&, int R, int C, int V, int N) {
  return 2 * (size_t)N * C + (size_t)chunk_rows(R, N) * N + (size_t)R;
}

void loss_gbce(const Context& ctx, float* loss, float* dh, float* dE, const float* h,
               const float* E, const int32_t* targets, const int32_t* negatives, int R, int C,
               int V, int N, float beta, float grad_scale, float* workspace) {
  const cudaStream_t s = ctx.stream;
  if (R < 0 || C < 0 || N < 0)
    throw std::runtime_error(::fsr::detail::cat("loss_gbce: negative size (R=", R, ", C=", C,
                                                ", N=", N, ")"));
  if (R == 0) return;
  if (workspace == nullptr)
    throw std::runtime_error("loss_gbce: workspace is null (loss_gbce_workspace floats needed)");
  const bool grad = grad_scale != 0.f;
  if (grad && (dh == nullptr || dE == nullptr))
    throw std::runtime_error("loss_gbce: dh and dE are needed when grad_scale != 0");
  const int rc = chunk_rows(R, N);
  float* En = workspace;
  float* dEn = En + (size_t)N * C;
  float* logits = dEn + (size_t)N * C;
  float* dpos = logits + (size_t)rc * N;
  if (N > 0) gather_rows(ctx, En, E, negatives, N, C);
  if (grad) FSR_CUDA_CHECK(cudaMemsetAsync(dEn, 0, (size_t)N * C * sizeof(float), s));
  const float g = grad_scale / (1.f + (float)N);
  for (int r0 = 0; r0 < R; r0 += rc) {
    const int rn = std::min(rc, R - r0);
    if (N > 0) gemm_f32(ctx.blas, false, true, rn, N, C, h + (size_t)r0 * C, C, En, C, 0.f, logits, N);
    gbce_rows_kernel<<<rn, kThreads, 0, s>>>(loss, logits, dpos, h, E, targets, negatives, r0, C,
                                              N, beta, g, grad);
    FSR_CUDA_LAUNCH_CHECK();
    if (!grad) continue;
    float* dhc = dh + (size_t)r0 * C;
    if (N > 0) {
      gemm_f32(ctx.blas, false, false, rn, C, N, logits, N, En, C, 0.f, dhc, C);
      gemm_f32(ctx.blas, true, false, N, C, rn, logits, N, h + (size_t)r0 * C, C, 1.f, dEn, C);
    } else {
      FSR_CUDA_CHECK(cudaMemsetAsync(dhc, 0, (size_t)rn * C * sizeof(float), s));
    }
  }
  if (!grad) return;
  add_pos_kernel<<<blocks_for((size_t)R * C, 256), 256, 0, s>>>(dh, dpos, E, targets, R, C);
  FSR_CUDA_LAUNCH_CHECK();
  scatter_kernel<<<blocks_for((size_t)(N + R) * C, 256), 256, 0, s>>>(dE, dEn, negatives, N, dpos,
                                                                      h, targets, R, C);
  FSR_CUDA_LAUNCH_CHECK();
}

}  // namespace fsr::cuda
