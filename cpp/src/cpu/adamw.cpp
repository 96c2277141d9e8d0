// AdamW, one pass over the flat parameter arena (PyTorch's torch.optim.AdamW semantics).
//   m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
//   w -= lr * (wd_e * w + (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps))
//   wd_e = weight_decay for the first n_decay entries (matrices, embeddings), 0 after
//   (biases, layernorm).  params, m, v updated in place; grads read only.
#include <cmath>

#include "cpu/ops.h"
#include "cpu/parallel.h"

namespace fsr::cpu {

void adamw_step(const Context& ctx, float* params, const float* grads, float* m, float* v, size_t n, size_t n_decay,
                float lr, float beta1, float beta2, float eps, float weight_decay, int64_t step) {
  const float bc1 = 1.f - (float)std::pow((double)beta1, (double)step);
  const float bc2 = 1.f - (float)std::pow((double)beta2, (double)step);
  const float step_size = lr / bc1;
  const float inv_sqrt_bc2 = 1.f / std::sqrt(bc2);
  parallel_chunks(ctx.threads, (long)n, 1, [&](long lo, long hi, int) {
    for (long e = lo; e < hi; ++e) {
      const float g = grads[e];
      const float mm = beta1 * m[e] + (1.f - beta1) * g;
      const float vv = beta2 * v[e] + (1.f - beta2) * g * g;
      m[e] = mm;
      v[e] = vv;
      float w = params[e];
      if ((size_t)e < n_decay) w -= lr * weight_decay * w;
      params[e] = w - step_size * mm / (std::sqrt(vv) * inv_sqrt_bc2 + eps);
    }
  });
}

}  // namespace fsr::cpu
