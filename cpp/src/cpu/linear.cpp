// Linear layer (projections and the feed-forward layers), W stored (in, out).
//   forward : out(R,O) = in(R,I) W(I,O) + b(O), then ReLU when relu
//   backward: din(R,I) (= or +=, skipped when null) = dout W^T
//             dW(I,O) += in^T dout;   db(O) += column sums of dout
// The ReLU's own backward is applied by the caller (dropout_backward with relu_out).
#include <algorithm>

#include "cpu/ops.h"
#include "cpu/parallel.h"

namespace fsr::cpu {

void linear_forward(float* out, const float* in, const float* W, const float* b, int R, int I,
                    int O, bool relu) {
  gemm(false, false, R, O, I, 1.f, in, I, W, O, 0.f, out, O);
  parallel_chunks(R, O, [&](long r0, long r1, int) {
    for (long r = r0; r < r1; ++r) {
      float* o = out + (size_t)r * O;
      if (relu)
        for (int c = 0; c < O; ++c) o[c] = std::max(o[c] + b[c], 0.f);
      else
        for (int c = 0; c < O; ++c) o[c] += b[c];
    }
  });
}

void linear_backward(float* din, float* dW, float* db, const float* dout, const float* in,
                     const float* W, int R, int I, int O, bool accumulate) {
  if (din) gemm(false, true, R, I, O, 1.f, dout, O, W, O, accumulate ? 1.f : 0.f, din, I);
  gemm(true, false, I, O, R, 1.f, in, I, dout, O, 1.f, dW, O);
  // Column sums: each thread owns a block of columns and walks the rows in order.
  const int nt = (long)R * O < 16384 ? 1 : std::min(max_threads(), std::max(1, O / 8));
  parallel_for(nt, [&](int t) {
    const int c0 = O * t / nt, c1 = O * (t + 1) / nt;
    for (int r = 0; r < R; ++r) {
      const float* d = dout + (size_t)r * O;
      for (int c = c0; c < c1; ++c) db[c] += d[c];
    }
  });
}

}  // namespace fsr::cpu
