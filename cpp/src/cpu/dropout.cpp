// Dropout with a counter-based mask: element e keeps when rng_uniform(key, e) >= p and is
// then scaled by 1 / (1 - p), so the mask is recomputed, never stored.
//   forward : out(n) = in * keep / (1 - p)                         (out may be in)
//   backward: din(n) = dout * keep / (1 - p) [* (relu_out > 0)]    (din may be dout)
// The optional relu_out folds the backward of a preceding ReLU (relu_out is its output).
#include "cpu/ops.h"
#include "cpu/parallel.h"
#include "fastsasrec/rng.h"

namespace fsr::cpu {

void dropout_forward(const Context& ctx, float* out, const float* in, size_t n, float p, uint64_t key) {
  const float inv_keep = p > 0.f ? 1.f / (1.f - p) : 1.f;
  const uint32_t thr = dropout_threshold(p);
  parallel_chunks(ctx.threads, (long)n, 1, [&](long lo, long hi, int) {
    if (p <= 0.f) {
      if (out != in)
        for (long e = lo; e < hi; ++e) out[e] = in[e];
      return;
    }
    for (long e = lo; e < hi; ++e) out[e] = in[e] * keep_scale(key, (uint64_t)e, thr, inv_keep);
  });
}

void dropout_backward(const Context& ctx, float* din, const float* dout, const float* relu_out, size_t n, float p,
                      uint64_t key) {
  const float inv_keep = p > 0.f ? 1.f / (1.f - p) : 1.f;
  const uint32_t thr = dropout_threshold(p);
  // Branch-free loops (one per case) so that they vectorise.
  parallel_chunks(ctx.threads, (long)n, 1, [&](long lo, long hi, int) {
    if (p > 0.f && relu_out) {
      for (long e = lo; e < hi; ++e) {
        const float k = keep_scale(key, (uint64_t)e, thr, inv_keep);
        din[e] = dout[e] * (relu_out[e] > 0.f ? k : 0.f);
      }
    } else if (p > 0.f) {
      for (long e = lo; e < hi; ++e) din[e] = dout[e] * keep_scale(key, (uint64_t)e, thr, inv_keep);
    } else if (relu_out) {
      for (long e = lo; e < hi; ++e) din[e] = dout[e] * (relu_out[e] > 0.f ? 1.f : 0.f);
    } else if (din != dout) {
      for (long e = lo; e < hi; ++e) din[e] = dout[e];
    }
  });
}

}  // namespace fsr::cpu
