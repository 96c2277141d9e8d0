// Dropout with a counter-based mask: element e keeps when dropout_uniform(key, e) >= p
// (fastsasrec/rng.h) and is then scaled by 1 / (1 - p), so the mask is recomputed, never
// stored.  The masks are drawn 32 elements at a time where the CPU has AVX-512 BW
// (keep_bits.h), element by element otherwise: the same decisions.
//   forward : out(n) = in * keep / (1 - p)                         (out may be in)
//   backward: din(n) = dout * keep / (1 - p) [* (relu_out > 0)]    (din may be dout)
// The optional relu_out folds the backward of a preceding ReLU (relu_out is its output).
#include "cpu/keep_bits.h"
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
    scale_kept(out + lo, in + lo, (size_t)(hi - lo), key, thr, (uint64_t)lo, inv_keep);
  });
}

void dropout_backward(const Context& ctx, float* din, const float* dout, const float* relu_out, size_t n, float p,
                      uint64_t key) {
  const float inv_keep = p > 0.f ? 1.f / (1.f - p) : 1.f;
  const uint32_t thr = dropout_threshold(p);
  // Branch-free loops (one per case) so that they vectorise.
  parallel_chunks(ctx.threads, (long)n, 1, [&](long lo, long hi, int) {
    if (p > 0.f && relu_out) {
#if FSR_KEEP_BITS
      const __m512 vs = _mm512_set1_ps(inv_keep), zero = _mm512_setzero_ps();
      keep_blocks((size_t)(hi - lo), key, thr, (uint64_t)lo, [&](size_t i, __mmask16 keep, __mmask16 valid) {
        const size_t e = (size_t)lo + i;
        const __mmask16 pass = _mm512_mask_cmp_ps_mask(valid, _mm512_maskz_loadu_ps(valid, relu_out + e), zero, _CMP_GT_OQ);
        _mm512_mask_storeu_ps(din + e, valid, _mm512_mul_ps(_mm512_maskz_loadu_ps(valid, dout + e), keep_mult(keep & pass, vs)));
      });
#else
      for (long e = lo; e < hi; ++e) {
        const float k = keep_scale(key, (uint64_t)e, thr, inv_keep);
        din[e] = dout[e] * (relu_out[e] > 0.f ? k : 0.f);
      }
#endif
    } else if (p > 0.f) {
      scale_kept(din + lo, dout + lo, (size_t)(hi - lo), key, thr, (uint64_t)lo, inv_keep);
    } else if (relu_out) {
      for (long e = lo; e < hi; ++e) din[e] = dout[e] * (relu_out[e] > 0.f ? 1.f : 0.f);
    } else if (din != dout) {
      for (long e = lo; e < hi; ++e) din[e] = dout[e];
    }
  });
}

}  // namespace fsr::cpu
