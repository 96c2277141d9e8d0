// A range check of ids in backend memory (the CPU twin of cuda/find_outside.cu).
//   find_outside: *first = min { e : ids[e] < lo or ids[e] > hi }, or n when there is none
// Used before ids that arrived in backend memory (recommend_resident) index a table.
#include <algorithm>

#include "cpu/ops.h"

namespace fsr::cpu {

void find_outside(const Context& ctx, int64_t* first, const int32_t* ids, size_t n, int lo,
                  int hi) {
  int64_t found = (int64_t)n;
#pragma omp parallel for num_threads(ctx.threads) reduction(min : found) schedule(static)
  for (int64_t e = 0; e < (int64_t)n; ++e)
    if ((ids[e] < lo || ids[e] > hi) && e < found) found = e;
  *first = found;
}

}  // namespace fsr::cpu
