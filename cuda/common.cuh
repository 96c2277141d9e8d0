// CUDA helpers shared by the kernels: checked calls that throw (never exit) with
// file:line, and launch sizing.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "fastsasrec/common.h"

#define FSR_CUDA_CHECK(call)                                                             \
  do {                                                                                   \
    cudaError_t err_ = (call);                                                           \
    if (err_ != cudaSuccess)                                                             \
      throw std::runtime_error(::fsr::detail::cat(__FILE__, ":", __LINE__, ": CUDA error ", \
                                                  cudaGetErrorName(err_), ": ",          \
                                                  cudaGetErrorString(err_), " in " #call)); \
  } while (0)

// Checks the launch just made (configuration errors surface here, faults at the next sync).
#define FSR_CUDA_LAUNCH_CHECK() FSR_CUDA_CHECK(cudaGetLastError())

namespace fsr::cuda {

inline unsigned blocks_for(size_t n, unsigned threads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

// Block-wide sum of one float per thread (blockDim.x a multiple of 32, <= 1024).
__device__ inline float block_sum(float v, float* shared32) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) shared32[warp] = v;
  __syncthreads();
  const int nw = (blockDim.x + 31) >> 5;
  v = threadIdx.x < nw ? shared32[threadIdx.x] : 0.f;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x == 0) shared32[0] = v;
  __syncthreads();
  return shared32[0];
}

__device__ inline float block_max(float v, float* shared32) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) shared32[warp] = v;
  __syncthreads();
  const int nw = (blockDim.x + 31) >> 5;
  v = threadIdx.x < nw ? shared32[threadIdx.x] : -INFINITY;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (threadIdx.x == 0) shared32[0] = v;
  __syncthreads();
  return shared32[0];
}

}  // namespace fsr::cuda
