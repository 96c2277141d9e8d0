// Residual add.
//   forward : out(n) = a + b
//   backward: da(n) += dout;  db(n) += dout   (either may be null)
#include "cpu/ops.h"
#include "cpu/parallel.h"

namespace fsr::cpu {

void residual_forward(float* out, const float* a, const float* b, size_t n) {
  parallel_chunks((long)n, 1, [&](long lo, long hi, int) {
    for (long e = lo; e < hi; ++e) out[e] = a[e] + b[e];
  });
}

void residual_backward(float* da, float* db, const float* dout, size_t n) {
  parallel_chunks((long)n, 1, [&](long lo, long hi, int) {
    if (da)
      for (long e = lo; e < hi; ++e) da[e] += dout[e];
    if (db)
      for (long e = lo; e < hi; ++e) db[e] += dout[e];
  });
}

}  // namespace fsr::cpu
