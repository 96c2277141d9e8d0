// The scoring table on the GPU (twin of cpp/src/cpu/score_table.cpp): none.  The GPU's
// topk reads E itself, so the table has no floats and packing writes nothing.
//   score_table_size = 0;  score_table_pack: no-op
#include "cuda/ops.cuh"

namespace fsr::cuda {

size_t score_table_size(const Context&, int, int) { return 0; }
void score_table_pack(const Context&, float*, const float*, int, int) {}

}  // namespace fsr::cuda
