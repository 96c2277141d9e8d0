// Row gather (inference: the last row of each session).
//   forward : out(n, C) = in[rows[i]]      (no backward: inference only)
#include <cstring>

#include "cpu/ops.h"

namespace fsr::cpu {

void gather_rows(const Context& ctx, float* out, const float* in, const int32_t* rows, int n, int C) {
  for (int i = 0; i < n; ++i)
    std::memcpy(out + (size_t)i * C, in + (size_t)rows[i] * C, (size_t)C * sizeof(float));
}

}  // namespace fsr::cpu
