// LayerNorm over the last dimension.
//   forward : mean(R), rstd(R) = 1/sqrt(var + eps) saved;  out(R,C) = (in - mean) * rstd * g + b
//   backward: xhat = (in - mean) * rstd;  gh = dout * g
//             din  (= or +=) rstd * (gh - mean(gh) - xhat * mean(gh * xhat))
//             dg(C) += sum_r dout * xhat;   db(C) += sum_r dout
// dg and db are summed per thread over contiguous row chunks, then in thread order.
#include <cmath>
#include <vector>

#include "cpu/ops.h"
#include "cpu/parallel.h"

namespace fsr::cpu {

void layernorm_forward(float* out, float* mean, float* rstd, const float* in, const float* g,
                       const float* b, int R, int C, float eps) {
  parallel_chunks(R, C, [&](long r0, long r1, int) {
    for (long r = r0; r < r1; ++r) {
      const float* x = in + (size_t)r * C;
      float s = 0.f;
      for (int c = 0; c < C; ++c) s += x[c];
      const float m = s / C;
      float v = 0.f;
      for (int c = 0; c < C; ++c) v += (x[c] - m) * (x[c] - m);
      const float rs = 1.f / std::sqrt(v / C + eps);
      mean[r] = m;
      rstd[r] = rs;
      float* o = out + (size_t)r * C;
      for (int c = 0; c < C; ++c) o[c] = (x[c] - m) * rs * g[c] + b[c];
    }
  });
}

void layernorm_backward(float* din, float* dg, float* db, const float* dout, const float* in,
                        const float* mean, const float* rstd, const float* g, int R, int C,
                        bool accumulate) {
  const int nt = max_threads();
  std::vector<float> part((size_t)nt * 2 * C, 0.f);
  parallel_chunks(R, C, [&](long r0, long r1, int t) {
    float* pg = part.data() + (size_t)t * 2 * C;
    float* pb = pg + C;
    for (long r = r0; r < r1; ++r) {
      const float* x = in + (size_t)r * C;
      const float* d = dout + (size_t)r * C;
      const float m = mean[r], rs = rstd[r];
      float sum_gh = 0.f, sum_ghx = 0.f;
      for (int c = 0; c < C; ++c) {
        const float xh = (x[c] - m) * rs;
        const float gh = d[c] * g[c];
        sum_gh += gh;
        sum_ghx += gh * xh;
        pg[c] += d[c] * xh;
        pb[c] += d[c];
      }
      const float mg = sum_gh / C, mgx = sum_ghx / C;
      float* o = din + (size_t)r * C;
      for (int c = 0; c < C; ++c) {
        const float xh = (x[c] - m) * rs;
        const float v = rs * (d[c] * g[c] - mg - xh * mgx);
        o[c] = accumulate ? o[c] + v : v;
      }
    }
  });
  for (int t = 0; t < nt; ++t) {
    const float* pg = part.data() + (size_t)t * 2 * C;
    for (int c = 0; c < C; ++c) {
      dg[c] += pg[c];
      db[c] += pg[C + c];
    }
  }
}

}  // namespace fsr::cpu
