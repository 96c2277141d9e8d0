// CUDA helpers shared by the kernels: checked calls that throw (never exit) with
// file:line, and launch sizing.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
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

inline long long ceil_div(long long a, long long b) { return (a + b - 1) / b; }

// How a loss's second kernel covers the rows: `splits` row ranges of `tiles_per_split`
// row tiles (of rows_per_tile rows) each, so that item groups (of items_per_tile) x splits
// is about target_blocks.
struct RowSplit {
  int splits, tiles_per_split;
};
inline RowSplit row_split(int R, int n_items, int rows_per_tile, int items_per_tile,
                          int target_blocks) {
  const long long row_tiles = ceil_div(R, rows_per_tile), groups = ceil_div(n_items, items_per_tile);
  if (row_tiles <= 0 || groups <= 0) return {1, 1};
  long long splits = std::min(row_tiles, std::max(1LL, ceil_div(target_blocks, groups)));
  const long long tps = ceil_div(row_tiles, splits);
  splits = ceil_div(row_tiles, tps);
  return {(int)splits, (int)tps};
}

// An upper bound of row_split(R', ...).splits over every R' <= R.  Workspaces are sized
// once for the largest batch (the model's arena), and a smaller batch may split into more
// ranges than the largest one does after rounding, so the bound, not the value, sizes them.
inline long long max_splits(int R, int n_items, int rows_per_tile, int items_per_tile,
                            int target_blocks) {
  const long long row_tiles = ceil_div(R, rows_per_tile), groups = ceil_div(n_items, items_per_tile);
  if (row_tiles <= 0 || groups <= 0) return 1;
  return std::min(row_tiles, std::max(1LL, ceil_div(target_blocks, groups)));
}

// Sum / max over the 32 lanes of a warp (all lanes get the result).
// x rounded to the nearest bfloat16 (ties to even; NaN stays a quiet NaN; past bf16's
// largest: inf), as a float: the CPU's round_bf16, bit for bit.
__device__ __forceinline__ float round_bf16(float x) {
  uint32_t u = __float_as_uint(x);
  if ((u & 0x7fffffffu) > 0x7f800000u)
    u |= 0x00400000u;
  else
    u += 0x7fffu + ((u >> 16) & 1u);
  return __uint_as_float(u & 0xffff0000u);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

}  // namespace fsr::cuda
