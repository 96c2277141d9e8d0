// Embedding: gather item rows, scale by sqrt(C), add learned positions, dropout.
//   forward : x(R,C) = dropout_p(E[items] * scale + P[pos])
//   backward: g = dropout_p'(dx);  dE[items] += scale * g;  dP[pos] += g
// Element (r, c) draws dropout counter r * C + c.  Row 0 of E (padding) is never an input,
// so it is never written.  The scatter is split over column blocks: every thread owns
// whole columns, so there are no races and the sums do not depend on the schedule.
#include <algorithm>

#include "cpu/keep_bits.h"
#include "cpu/ops.h"
#include "cpu/parallel.h"
#include "fastsasrec/rng.h"

namespace fsr::cpu {

void embedding_forward(const Context& ctx, float* x, const int32_t* items, const int32_t* pos, const float* E,
                       const float* P, int R, int C, float scale, float p, uint64_t key) {
  const float inv_keep = p > 0.f ? 1.f / (1.f - p) : 1.f;
  const uint32_t thr = dropout_threshold(p);
  parallel_chunks(ctx.threads, R, C, [&](long r0, long r1, int) {
    for (long r = r0; r < r1; ++r) {
      const float* e = E + (size_t)items[r] * C;
      const float* q = P + (size_t)pos[r] * C;
      float* xr = x + (size_t)r * C;
      const uint64_t base = (uint64_t)r * C;
      if (p > 0.f) {
#if FSR_KEEP_BITS
        const __m512 vs = _mm512_set1_ps(inv_keep), vsc = _mm512_set1_ps(scale);
        keep_blocks((size_t)C, key, thr, base, [&](size_t c, __mmask16 keep, __mmask16 valid) {
          const __m512 v = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(valid, e + c), vsc, _mm512_maskz_loadu_ps(valid, q + c));
          _mm512_mask_storeu_ps(xr + c, valid, _mm512_mul_ps(v, keep_mult(keep, vs)));
        });
#else
        for (int c = 0; c < C; ++c) xr[c] = (e[c] * scale + q[c]) * keep_scale(key, base + c, thr, inv_keep);
#endif
      } else
        for (int c = 0; c < C; ++c) xr[c] = e[c] * scale + q[c];
    }
  });
}

namespace {
constexpr int kMaxBlock = 256;
}

void embedding_backward(const Context& ctx, float* dE, float* dP, const float* dx, const int32_t* items,
                        const int32_t* pos, int R, int C, float scale, float p, uint64_t key) {
  const float inv_keep = p > 0.f ? 1.f / (1.f - p) : 1.f;
  const uint32_t thr = dropout_threshold(p);
  const int nt = (long)R * C < 4096 ? 1 : ctx.threads;
  const int nblocks = std::min(nt, C);
  parallel_for(ctx.threads, nblocks, [&](int t) {
    const int c0 = C * t / nblocks, c1 = C * (t + 1) / nblocks;
    for (int r = 0; r < R; ++r) {
      const float* g = dx + (size_t)r * C;
      float* de = dE + (size_t)items[r] * C;
      float* dq = dP + (size_t)pos[r] * C;
      const uint64_t base = (uint64_t)r * C;
      float v[kMaxBlock];
      for (int c0b = c0; c0b < c1; c0b += kMaxBlock) {
        const int nb = std::min(kMaxBlock, c1 - c0b);
        scale_kept(v, g + c0b, (size_t)nb, key, thr, base + c0b, inv_keep);
        for (int c = 0; c < nb; ++c) de[c0b + c] += scale * v[c];
        for (int c = 0; c < nb; ++c) dq[c0b + c] += v[c];
      }
    }
  });
}

}  // namespace fsr::cpu
