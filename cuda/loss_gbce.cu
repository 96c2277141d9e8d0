// gBCE on the GPU (twin of cpp/src/cpu/loss_gbce.cpp; Petrov & Macdonald, RecSys 2023):
// binary cross-entropy of the positive and the row's own N sampled negatives, the
// positive's probability raised to beta.  negatives is R x N: row r's ids at r N .. r N + N - 1.
//   s_pos(r) = h_r . E[tgt_r];   s(r, j) = h_r . E[neg(r, j)]; a negative equal to the
//   row's target does not count (its term and gradient are 0)
//   forward : loss(R) = (beta softplus(-s_pos) + sum_j softplus(s(r, j))) / (1 + N)      =
//   backward (grad_scale != 0), g = grad_scale / (1 + N):
//             ds(r, j) = g sigmoid(s(r, j));  ds_pos(r) = -g beta sigmoid(-s_pos)
//             dh_r = ds_pos E[tgt_r] + sum_j ds(r, j) E[neg(r, j)]                        =
//             dE[neg(r, j)] += ds(r, j) h_r;  dE[tgt_r] += ds_pos h_r                     += (atomicAdd)
// One warp per row (8 rows a block), its lanes splitting C:
//   pass 1: s_pos, then the N logits kG negatives at a time (products over the lane's
//           columns, then warp sums); lane j % 32 keeps s(r, j), adds its softplus to the
//           lane's partial in double and writes ds(r, j) to the workspace, and the partials'
//           warp sum gives the loss (the N softplus terms summed in double, as on the CPU);
//   pass 2 (grad_scale != 0), after __syncwarp: each lane, a column c at a time, sums
//           dh_r[c] in a register (written once) and scatters ds h_r[c] into dE[tgt_r] and
//           dE[neg(r, j)] atomically (ids repeat across rows and within one).
// Each logit is computed once (its coefficient kept), so nothing depends on recomputation.
// workspace (floats): R N negative coefficients and R positive ones, as on the CPU.
#include <algorithm>
#include <stdexcept>

#include "cuda/common.cuh"
#include "cuda/ops.cuh"

namespace fsr::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / 32;
constexpr int kG = 4;  // negatives whose products a lane sums at once (independent chains)

__device__ inline float softplus(float x) { return fmaxf(x, 0.f) + log1pf(expf(-fabsf(x))); }
__device__ inline float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

__device__ __forceinline__ double warp_sum_d(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__global__ void __launch_bounds__(kThreads)
gbce_kernel(float* loss, float* dh, float* dE, float* coef, float* dpos_out, const float* h,
            const float* E, const int32_t* targets, const int32_t* negatives, int R, int C, int N,
            float beta, float g, bool grad) {
  const int lane = threadIdx.x & 31;
  const long long r = (long long)blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5);
  if (r >= R) return;  // the whole warp
  const float* hr = h + (size_t)r * C;
  const int32_t t = targets[r];
  const float* ep = E + (size_t)t * C;
  const int32_t* neg = negatives + (size_t)r * N;
  float* cr = coef + (size_t)r * N;

  float p = 0.f;
  for (int c = lane; c < C; c += 32) p = fmaf(hr[c], ep[c], p);
  const float sp = warp_sum(p);

  // Pass 1: the logits, 32 at a time, kG negatives' products at once (every lane takes part
  // in every warp sum); lane l keeps the logit of negative jb + l, then turns it into its
  // softplus and coefficient (all 32 lanes at work).
  double sum = 0.0;
  for (int jb = 0; jb < N; jb += 32) {
    float mine = 0.f;
    bool mine_counts = false;
    for (int j0 = jb; j0 < min(N, jb + 32); j0 += kG) {
      bool counts[kG];
      const float* en[kG];
      float d[kG];
#pragma unroll
      for (int k = 0; k < kG; ++k) {
        const int j = j0 + k;
        const int32_t id = j < N ? neg[j] : t;
        counts[k] = id != t;  // warp-uniform
        en[k] = E + (size_t)(counts[k] ? id : 0) * C;
        d[k] = 0.f;
      }
      for (int c = lane; c < C; c += 32) {
        const float x = hr[c];
#pragma unroll
        for (int k = 0; k < kG; ++k)
          if (counts[k]) d[k] = fmaf(x, en[k][c], d[k]);
      }
#pragma unroll
      for (int k = 0; k < kG; ++k) {
        d[k] = warp_sum(d[k]);
        if (j0 + k == jb + lane) {
          mine = d[k];
          mine_counts = counts[k];
        }
      }
    }
    const int j = jb + lane;
    if (j < N) {
      sum += mine_counts ? softplus(mine) : 0.f;
      if (grad) cr[j] = mine_counts ? g * sigmoid(mine) : 0.f;
    }
  }
  sum = warp_sum_d(sum);
  if (lane == 0) loss[r] = (float)(((double)beta * softplus(-sp) + sum) * (1.0 / (1.0 + N)));
  if (!grad) return;  // uniform over the kernel

  // Pass 2: dh_r =, dE +=.  The coefficients were written by the warp's lanes.
  const float dpos = -g * beta * sigmoid(-sp);
  if (lane == 0) dpos_out[r] = dpos;
  __syncwarp();
  float* d = dh + (size_t)r * C;
  float* dEt = dE + (size_t)t * C;
  for (int c = lane; c < C; c += 32) {
    const float x = hr[c];
    float acc = dpos * ep[c];
    atomicAdd(&dEt[c], dpos * x);
    for (int j = 0; j < N; ++j) {
      const float cj = cr[j];
      if (cj == 0.f) continue;  // the row's own target among its negatives (or no weight)
      const size_t row = (size_t)neg[j] * C;
      acc = fmaf(cj, E[row + c], acc);
      atomicAdd(&dE[row + c], cj * x);
    }
    d[c] = acc;
  }
}

}  // namespace

size_t loss_gbce_workspace(const Context&, int R, int C, int V, int N) {
  if (R <= 0) return 0;
  return (size_t)R * (size_t)std::max(N, 0) + (size_t)R;
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
  if (N > 0 && negatives == nullptr)
    throw std::runtime_error(
        ::fsr::detail::cat("loss_gbce: negatives is null (R x N = ", R, " x ", N, " ids needed)"));
  float* coef = workspace;                   // R x N
  float* dpos = coef + (size_t)R * N;        // R
  const float g = grad_scale / (1.f + (float)N);
  const unsigned blocks = (unsigned)cuda::ceil_div(R, kRowsPerBlock);
  gbce_kernel<<<blocks, kThreads, 0, s>>>(loss, dh, dE, coef, dpos, h, E, targets, negatives, R,
                                          C, N, beta, g, grad);
  FSR_CUDA_LAUNCH_CHECK();
}

}  // namespace fsr::cuda
