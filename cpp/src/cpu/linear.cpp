// Linear layer (projections and the feed-forward layers), W stored (in, out).
//   forward : out(R,O) = in(R,I) W(I,O) + b(O), then ReLU when relu
//   backward: din(R,I) (= or +=, skipped when null) = dout W^T
//             dW(I,O) += in^T dout;   db(O) += column sums of dout
// The ReLU's own backward is applied by the caller (dropout_backward with relu_out).
#include <algorithm>

#include "cpu/ops.h"
#include "cpu/parallel.h"

namespace fsr::cpu {

// One parallel region per product: each thread fills its block of rows with the bias,
// accumulates its GEMM onto it (beta = 1) and applies the ReLU while the block is in cache.
void linear_forward(float* out, const float* in, const float* W, const float* b, int R, int I,
                    int O, bool relu) {
  const int nb = gemm_blocks(R, 2.0 * R * I * O);
  parallel_for(nb, [&](int t) {
    const int r0 = (int)((long)R * t / nb), r1 = (int)((long)R * (t + 1) / nb);
    float* o = out + (size_t)r0 * O;
    for (int r = r0; r < r1; ++r)
      for (int c = 0; c < O; ++c) out[(size_t)r * O + c] = b[c];
    gemm_serial(false, false, r1 - r0, O, I, 1.f, in + (size_t)r0 * I, I, W, O, 1.f, o, O);
    if (relu)
      for (size_t e = 0; e < (size_t)(r1 - r0) * O; ++e) o[e] = std::max(o[e], 0.f);
  });
}

// din in one region (rows split); dW and db in another (columns of dout split: each
// thread owns whole columns of dW and db, summing over all rows in order).
void linear_backward(float* din, float* dW, float* db, const float* dout, const float* in,
                     const float* W, int R, int I, int O, bool accumulate) {
  if (din) gemm(false, true, R, I, O, 1.f, dout, O, W, O, accumulate ? 1.f : 0.f, din, I);
  const int nb = gemm_blocks(O, 2.0 * R * I * O);
  parallel_for(nb, [&](int t) {
    const int c0 = (int)((long)O * t / nb), c1 = (int)((long)O * (t + 1) / nb);
    gemm_serial(true, false, I, c1 - c0, R, 1.f, in, I, dout + c0, O, 1.f, dW + c0, O);
    for (int r = 0; r < R; ++r) {
      const float* d = dout + (size_t)r * O;
      for (int c = c0; c < c1; ++c) db[c] += d[c];
    }
  });
}

}  // namespace fsr::cpu
