// Binary cross-entropy with one sampled negative per row on the GPU (twin of
// cpp/src/cpu/loss_bce.cpp).
//   s_pos = h . E[tgt],  s_neg = h . E[neg]
//   forward : loss(R) = softplus(-s_pos) + softplus(s_neg)                          =
//   backward (grad_scale != 0): a = sigmoid(s_pos) - 1,  b = sigmoid(s_neg)
//             dh(R,C) = grad_scale * (a E[tgt] + b E[neg])                           =
//             dE[tgt] += grad_scale * a h;  dE[neg] += grad_scale * b h              += (atomicAdd)
// One warp per row: the two dot products are warp reductions, then the warp writes dh and
// scatters into dE.  workspace: none (loss_bce_workspace is 0).
#include <stdexcept>

#include "cuda/common.cuh"
#include "cuda/ops.cuh"

namespace fsr::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / 32;

__device__ inline float softplus(float x) { return fmaxf(x, 0.f) + log1pf(expf(-fabsf(x))); }
__device__ inline float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

__global__ void __launch_bounds__(kThreads)
bce_kernel(float* loss, float* dh, float* dE, const float* h, const float* E,
           const int32_t* targets, const int32_t* negatives, int R, int C, float gs) {
  const int lane = threadIdx.x & 31;
  const long long r = (long long)blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5);
  if (r >= R) return;  // the whole warp
  const float* hr = h + (size_t)r * C;
  const float* ep = E + (size_t)targets[r] * C;
  const float* en = E + (size_t)negatives[r] * C;
  float dp = 0.f, dn = 0.f;
  for (int c = lane; c < C; c += 32) {
    dp = fmaf(hr[c], ep[c], dp);
    dn = fmaf(hr[c], en[c], dn);
  }
  const float sp = warp_sum(dp), sn = warp_sum(dn);
  if (lane == 0) loss[r] = softplus(-sp) + softplus(sn);
  if (gs == 0.f) return;
  const float a = gs * (sigmoid(sp) - 1.f);
  const float b = gs * sigmoid(sn);
  float* d = dh + (size_t)r * C;
  float* dep = dE + (size_t)targets[r] * C;
  float* den = dE + (size_t)negatives[r] * C;
  for (int c = lane; c < C; c += 32) {
    d[c] = a * ep[c] + b * en[c];
    atomicAdd(&dep[c], a * hr[c]);
    atomicAdd(&den[c], b * hr[c]);
  }
}

}  // namespace

size_t loss_bce_workspace(const Context&, int, int, int, int) { return 0; }

void loss_bce(const Context& ctx, float* loss, float* dh, float* dE, const float* h, const float* E,
              const int32_t* targets, const int32_t* negatives, int R, int C, int V, int N,
              float grad_scale, float* /*workspace*/) {
  const cudaStream_t s = ctx.stream;
  if (R < 0 || C < 0)
    throw std::runtime_error(
        ::fsr::detail::cat("loss_bce: negative size (R=", R, ", C=", C, ")"));
  if (R == 0) return;
  if (grad_scale != 0.f && (dh == nullptr || dE == nullptr))
    throw std::runtime_error("loss_bce: dh and dE are needed when grad_scale != 0");
  const unsigned blocks = (unsigned)(((long long)R + kRowsPerBlock - 1) / kRowsPerBlock);
  bce_kernel<<<blocks, kThreads, 0, s>>>(loss, dh, dE, h, E, targets, negatives, R, C,
                                         grad_scale);
  FSR_CUDA_LAUNCH_CHECK();
}

}  // namespace fsr::cuda
