// Sampled softmax on the GPU (twin of cpp/src/cpu/loss_sampled_softmax.cpp): N negatives
// shared by every row of the batch, with the logQ correction (Yi et al., RecSys 2019) when
// logq is given: each logit less the log of its item's sampling probability,
// lq(i) = logq[i] (logq: V + 1 floats; 0 for every item when logq is null).
//   s_pos(r) = h_r . E[tgt_r] - lq(tgt_r);   s(r, j) = h_r . E[neg_j] - lq(neg_j), set to
//   -inf where neg_j == tgt_r (a row's own target is never its negative)
//   forward : loss(R) = logsumexp(s_pos, s(r, :)) - s_pos                              =
//   backward (grad_scale != 0), with softmax probabilities p_pos, p_j over [s_pos, s(r, :)]:
//             ds(r, j) = grad_scale * p_j;  ds_pos = grad_scale * (p_pos - 1)
//             dh(R,C) = ds_pos E[tgt] + ds En        (En = E[neg], N x C)               =
//             dE[neg_j] += (ds^T h)_j;  dE[tgt_r] += ds_pos h_r                         +=
// Fused (cuda/loss_softmax_kernels.cuh, shared with the full softmax): the logits never exist
// as an R x N matrix; the correction is subtracted from each product as it is (re)computed.
// ctx.precision BF16: h, E, ds and ds_pos rounded to bfloat16 before the products, fp32
// sums, as the CPU twin computes them (bf16_copies and run's bf16).
#include <stdexcept>

#include "cuda/common.cuh"
#include "cuda/ops.cuh"
#include "cuda/loss_softmax_kernels.cuh"

namespace fsr::cuda {

size_t loss_sampled_softmax_workspace(const Context&, int R, int C, int V, int N) {
  return softmax_kernels::workspace<true>(R, C, N);
}

void loss_sampled_softmax(const Context& ctx, float* loss, float* dh, float* dE, const float* h,
                          const float* E, const int32_t* targets, const int32_t* negatives,
                          const float* logq, int R, int C, int V, int N, float grad_scale,
                          float* workspace) {
  const cudaStream_t s = ctx.stream;
  if (R < 0 || C < 0 || N < 0)
    throw std::runtime_error(::fsr::detail::cat("loss_sampled_softmax: negative size (R=", R,
                                                ", C=", C, ", N=", N, ")"));
  if (R == 0) return;
  if (workspace == nullptr)
    throw std::runtime_error(
        "loss_sampled_softmax: workspace is null (loss_sampled_softmax_workspace floats needed)");
  if (grad_scale != 0.f && (dh == nullptr || dE == nullptr))
    throw std::runtime_error("loss_sampled_softmax: dh and dE are needed when grad_scale != 0");
  // bf16: h and E rounded to bfloat16 (copies in the context's scratch); fp32: null
  const float* b = bf16_copies(ctx, h, (size_t)R * C, E, (size_t)(V + 1) * C);
  const float* hx = b ? b : h;
  const float* Ex = b ? b + (size_t)R * C : E;
  softmax_kernels::run<true>(loss, dh, dE, workspace, hx, Ex, targets, negatives, logq, R, C, N,
                             grad_scale, b != nullptr, s);
}

}  // namespace fsr::cuda
