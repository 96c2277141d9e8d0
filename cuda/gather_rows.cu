// Row gather on the GPU (twin of cpp/src/cpu/gather_rows.cpp), one thread per element.
//   gather_rows: out(n, C) = in[rows[i]]      (no backward: inference only)
#include "cuda/common.cuh"
#include "cuda/ops.cuh"

namespace fsr::cuda {

namespace {
__global__ void gather_kernel(float* out, const float* in, const int32_t* rows, int n, int C) {
  const size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= (size_t)n * C) return;
  const size_t i = e / C, c = e % C;
  out[e] = in[(size_t)rows[i] * C + c];
}
}  // namespace

void gather_rows(const Context& ctx, float* out, const float* in, const int32_t* rows, int n, int C) {
  const cudaStream_t s = ctx.stream;
  if (n <= 0) return;
  gather_kernel<<<blocks_for((size_t)n * C, 256), 256, 0, s>>>(out, in, rows, n, C);
  FSR_CUDA_LAUNCH_CHECK();
}

}  // namespace fsr::cuda
