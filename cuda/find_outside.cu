// A range check of ids in device memory (twin of cpp/src/cpu/find_outside.cpp).
//   find_outside: *first = min { e : ids[e] < lo or ids[e] > hi }, or n when there is none
// A grid-stride loop: each thread keeps the first bad index it meets, then one atomicMin.
#include "cuda/common.cuh"
#include "cuda/ops.cuh"

namespace fsr::cuda {

namespace {
__global__ void find_outside_kernel(unsigned long long* first, const int32_t* ids, size_t n,
                                    int lo, int hi) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
    const int32_t x = ids[e];
    if (x < lo || x > hi) {
      atomicMin(first, (unsigned long long)e);
      return;  // later indices of this thread are larger
    }
  }
}
}  // namespace

void find_outside(const Context& ctx, int64_t* first, const int32_t* ids, size_t n, int lo,
                  int hi) {
  const cudaStream_t s = ctx.stream;
  static_assert(sizeof(unsigned long long) == sizeof(int64_t), "64-bit index");
  const unsigned long long none = (unsigned long long)n;
  FSR_CUDA_CHECK(cudaMemcpyAsync(first, &none, sizeof(none), cudaMemcpyHostToDevice, s));
  FSR_CUDA_CHECK(cudaStreamSynchronize(s));  // `none` lives on this stack frame
  if (n == 0) return;
  const unsigned blocks = (unsigned)std::min<size_t>((n + 255) / 256, 4096);
  find_outside_kernel<<<blocks, 256, 0, s>>>(reinterpret_cast<unsigned long long*>(first), ids,
                                             n, lo, hi);
  FSR_CUDA_LAUNCH_CHECK();
}

}  // namespace fsr::cuda
