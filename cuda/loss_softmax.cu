// Full softmax cross-entropy on the GPU (twin of cpp/src/cpu/loss_softmax.cpp), items 1..V.
//   s(r, i) = h_r . E[i] for i = 1..V
//   forward : loss(R) = logsumexp_i s(r, i) - s(r, tgt_r)                            =
//   backward (grad_scale != 0): ds = grad_scale * (softmax(s) - onehot(tgt))
//             dh(R,C) = ds E[1:]                                                     =
//             dE[1:] += ds^T h                                                        +=
// Fused (cuda/loss_softmax_kernels.cuh, shared with the sampled softmax): the logits never exist
// as an R x V matrix.
// ctx.precision BF16: h, E and ds rounded to bfloat16 before the products, fp32 sums, as the
// CPU twin computes them (bf16_copies and run's bf16).
#include <stdexcept>

#include "cuda/common.cuh"
#include "cuda/ops.cuh"
#include "cuda/loss_softmax_kernels.cuh"

namespace fsr::cuda {

size_t loss_softmax_workspace(const Context&, int R, int C, int V, int N) {
  return softmax_kernels::workspace<false>(R, C, V);
}

void loss_softmax(const Context& ctx, float* loss, float* dh, float* dE, const float* h, const float* E,
                  const int32_t* targets, const int32_t* /*negatives*/, int R, int C, int V,
                  int /*N*/, float grad_scale, float* workspace) {
  const cudaStream_t s = ctx.stream;
  if (R < 0 || C < 0 || V < 0)
    throw std::runtime_error(::fsr::detail::cat("loss_softmax: negative size (R=", R, ", C=", C,
                                                ", V=", V, ")"));
  if (R == 0) return;
  if (V < 1) throw std::runtime_error("loss_softmax: needs at least one item (V >= 1)");
  if (workspace == nullptr)
    throw std::runtime_error("loss_softmax: workspace is null (loss_softmax_workspace floats needed)");
  if (grad_scale != 0.f && (dh == nullptr || dE == nullptr))
    throw std::runtime_error("loss_softmax: dh and dE are needed when grad_scale != 0");
  // bf16: h and E rounded to bfloat16 (copies in the context's scratch); fp32: null
  const float* b = bf16_copies(ctx, h, (size_t)R * C, E, (size_t)(V + 1) * C);
  const float* hx = b ? b : h;
  const float* Ex = b ? b + (size_t)R * C : E;
  softmax_kernels::run<false>(loss, dh, dE, workspace, hx, Ex, targets, nullptr, nullptr, R, C, V,
                              grad_scale, b != nullptr, s);
}

}  // namespace fsr::cuda
