// Dropout with a counter-based mask: element e keeps when rng_uniform(key, e) >= p and is
// then scaled by 1 / (1 - p), so the mask is recomputed, never stored.
//   forward : out(n) = in * keep / (1 - p)                         (out may be in)
//   backward: din(n) = dout * keep / (1 - p) [* (relu_out > 0)]    (din may be dout)
// The optional relu_out folds the backward of a preceding ReLU (relu_out is its output).
#include "cpu/ops.h"
#include "cpu/parallel.h"
#include "fastsasrec/rng.h"

namespace fsr::cpu {

void dropout_forward(float* out, const float* in, size_t n, float p, uint64_t key) {
  const float inv_keep = p > 0.f ? 1.f / (1.f - p) : 1.f;
  parallel_chunks((long)n, 1, [&](long lo, long hi, int) {
    if (p <= 0.f) {
      if (out != in)
        for (long e = lo; e < hi; ++e) out[e] = in[e];
      return;
    }
    for (long e = lo; e < hi; ++e) out[e] = dropout_keep(key, (uint64_t)e, p) ? in[e] * inv_keep : 0.f;
  });
}

void dropout_backward(float* din, const float* dout, const float* relu_out, size_t n, float p,
                      uint64_t key) {
  const float inv_keep = p > 0.f ? 1.f / (1.f - p) : 1.f;
  parallel_chunks((long)n, 1, [&](long lo, long hi, int) {
    for (long e = lo; e < hi; ++e) {
      float v = dout[e];
      if (p > 0.f) v = dropout_keep(key, (uint64_t)e, p) ? v * inv_keep : 0.f;
      if (relu_out && !(relu_out[e] > 0.f)) v = 0.f;
      din[e] = v;
    }
  });
}

}  // namespace fsr::cpu
