// Register-tiled products shared by the fused kernels (attention, the softmax losses).
// A block is 256 threads as 16 x 16: thread (ty, tx) = (threadIdx.x / 16, threadIdx.x % 16).
//   row tile   : BM rows of a matrix's first D <= 16*NC columns in shared memory, row-major
//                with the odd stride 16*NC + 1 (zero beyond D and in missing rows), so the
//                16 lanes reading column d of rows tx, tx + 16, .. hit 16 different banks;
//   score tile : BM x BM (BM = 16*RA), thread (ty, tx) holding rows ty + 16a and columns
//                tx + 16b (a, b < RA) in registers, or in shared memory with stride BM + 1;
//   output     : thread (ty, tx) holding rows ty + 16a, columns tx + 16c (c < NC).
// dot() reads 2*RA shared values per RA*RA multiply-adds, mul() RA + NC per RA*NC: far
// fewer loads and no shuffles per product, against one shuffle and two loads per
// multiply-add for a warp that owns a row.
#pragma once

#include <map>
#include <mutex>
#include <utility>

#include "cuda/common.cuh"

namespace fsr::cuda::tile {

constexpr int kThreads = 256;

template <int NC>
__host__ __device__ constexpr int row_ld() { return 16 * NC + 1; }
template <int RA>
__host__ __device__ constexpr int score_ld() { return 16 * RA + 1; }

// Columns per thread for a width D (1, 2, 4 or 8; D <= 128).
inline int nc_for(int D) { return D <= 16 ? 1 : D <= 32 ? 2 : D <= 64 ? 4 : 8; }

// dst = `rows` rows whose r-th starts at row(r) (nullptr: a zero row), first D columns.
// Whole block.
template <int NC, class RowPtr>
__device__ __forceinline__ void load(float* dst, int rows, int D, RowPtr row) {
  constexpr int W = 16 * NC, ld = row_ld<NC>();
  for (int idx = threadIdx.x; idx < rows * W; idx += kThreads) {
    const int r = idx / W, d = idx - r * W;
    const float* src = row(r);
    dst[r * ld + d] = (src != nullptr && d < D) ? src[d] : 0.f;
  }
}

// acc[a][b] += A[ty + 16a] . B[tx + 16b] over the first D columns (two row tiles).
template <int RA, int NC>
__device__ __forceinline__ void dot(float (&acc)[RA][RA], const float* A, const float* B, int D) {
  constexpr int ld = row_ld<NC>();
  const float* a0 = A + (threadIdx.x >> 4) * ld;
  const float* b0 = B + (threadIdx.x & 15) * ld;
#pragma unroll 4
  for (int d = 0; d < D; ++d) {
    float av[RA], bv[RA];
#pragma unroll
    for (int a = 0; a < RA; ++a) av[a] = a0[16 * a * ld + d];
#pragma unroll
    for (int b = 0; b < RA; ++b) bv[b] = b0[16 * b * ld + d];
#pragma unroll
    for (int a = 0; a < RA; ++a)
#pragma unroll
      for (int b = 0; b < RA; ++b) acc[a][b] = fmaf(av[a], bv[b], acc[a][b]);
  }
}

// acc[a][c] += sum_{k < kn} P[ty + 16a][k] * X[k][tx + 16c]  (P a score tile in shared
// memory, X a row tile).
template <int RA, int NC>
__device__ __forceinline__ void mul(float (&acc)[RA][NC], const float* P, const float* X, int kn) {
  constexpr int ldp = score_ld<RA>(), ld = row_ld<NC>();
  const float* p0 = P + (threadIdx.x >> 4) * ldp;
  const float* x0 = X + (threadIdx.x & 15);
#pragma unroll 4
  for (int k = 0; k < kn; ++k) {
    float pv[RA], xv[NC];
#pragma unroll
    for (int a = 0; a < RA; ++a) pv[a] = p0[16 * a * ldp + k];
#pragma unroll
    for (int c = 0; c < NC; ++c) xv[c] = x0[k * ld + 16 * c];
#pragma unroll
    for (int a = 0; a < RA; ++a)
#pragma unroll
      for (int c = 0; c < NC; ++c) acc[a][c] = fmaf(pv[a], xv[c], acc[a][c]);
  }
}

template <int RA, int B>
__device__ __forceinline__ void zero(float (&acc)[RA][B]) {
#pragma unroll
  for (int a = 0; a < RA; ++a)
#pragma unroll
    for (int b = 0; b < B; ++b) acc[a][b] = 0.f;
}

// Max / sum over the 16 lanes that share a tile row (lanes 0-15 or 16-31 of a warp); every
// lane of the warp must call them.
__device__ __forceinline__ float row_max(float v) {
  for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float row_sum(float v) {
  for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// visit(a, c, i, d) for each of this thread's tile elements in bounds: row i = r0 + ty + 16a
// < n, column d = c0 + tx + 16c < D (the epilogue of every register tile).
template <int RA, int NC, class Visit>
__device__ __forceinline__ void for_each(int r0, int n, int c0, int D, Visit visit) {
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
#pragma unroll
  for (int a = 0; a < RA; ++a) {
    const int i = r0 + ty + 16 * a;
    if (i >= n) continue;
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const int d = c0 + tx + 16 * c;
      if (d < D) visit(a, c, i, d);
    }
  }
}

// out[(r0 + ty + 16a) * ld_out + tx + 16c] = acc[a][c] * f[a] for rows r0 + .. < n, columns < D.
template <int RA, int NC>
__device__ __forceinline__ void store(float* out, size_t ld_out, const float (&acc)[RA][NC],
                                      const float (&f)[RA], int r0, int n, int D) {
  for_each<RA, NC>(r0, n, 0, D, [&](int a, int c, int i, int d) {
    out[(size_t)i * ld_out + d] = acc[a][c] * f[a];
  });
}

// The current device's multiprocessors and the shared memory a block may opt in to, asked
// of the runtime once per device (kernel launches read them on every call).
struct DeviceLimits {
  int sms = 0, smem_optin = 0;
};
inline DeviceLimits device_limits() {
  int dev = 0;
  FSR_CUDA_CHECK(cudaGetDevice(&dev));
  static std::mutex mu;
  static std::map<int, DeviceLimits> known;
  std::lock_guard<std::mutex> lock(mu);
  auto it = known.find(dev);
  if (it != known.end()) return it->second;
  DeviceLimits d;
  FSR_CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev));
  FSR_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  known.emplace(dev, d);
  return d;
}
inline int smem_optin() { return device_limits().smem_optin; }
inline int sm_count() { return device_limits().sms; }

// Lets `kernel` take `bytes` of dynamic shared memory (above the default 48 KB): set once
// per kernel and device, to the most any launch asked for.
template <class F>
inline void allow_smem(F kernel, size_t bytes) {
  int dev = 0;
  FSR_CUDA_CHECK(cudaGetDevice(&dev));
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, size_t> set;
  std::lock_guard<std::mutex> lock(mu);
  size_t& have = set[{reinterpret_cast<const void*>(kernel), dev}];
  if (bytes <= have) return;
  FSR_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
  have = bytes;
}

// ---------------------------------------------------------------------------------------
// Chunked tiles, for rows too wide to keep in shared memory (the softmax losses above
// C = 128, top-k's general kernel): C passes through shared memory kKC columns at a time.
namespace chunk {

constexpr int kKC = 32;  // columns of C per chunk
constexpr int kIT = 64;  // items per tile

// dst[r][k] = src(r)[c0 + k] for r < rows (0 where src(r) is null or c0 + k >= C).
template <class Ptr>
__device__ __forceinline__ void load(float (*dst)[kKC + 1], int rows, int C, int c0, Ptr src) {
  for (int idx = threadIdx.x; idx < rows * kKC; idx += kThreads) {
    const int r = idx / kKC, k = idx - r * kKC;
    const float* p = src(r);
    dst[r][k] = (p != nullptr && c0 + k < C) ? p[c0 + k] : 0.f;
  }
}

// Ss[r][j] = row(r) . item(j) for RT rows (a multiple of 16) and kIT items (0 where either
// pointer is null).  Thread (ty, tx) sums its RT/16 x 4 scores over c = 0..C-1 in order
// with fmaf, so a score's bits do not depend on its tile.  Synchronises on entry and exit.
template <int RT, class RowPtr, class ItemPtr>
__device__ void score(float (*Ss)[kIT + 1], float (*Hs)[kKC + 1], float (*Es)[kKC + 1], int C,
                      RowPtr row, ItemPtr item) {
  constexpr int RA = RT / 16, IB = kIT / 16;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[RA][IB];
  zero(acc);
  for (int c0 = 0; c0 < C; c0 += kKC) {
    __syncthreads();  // earlier readers of Hs / Es are done
    load(Hs, RT, C, c0, row);
    load(Es, kIT, C, c0, item);
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < kKC; ++k) {
      float av[RA], bv[IB];
#pragma unroll
      for (int a = 0; a < RA; ++a) av[a] = Hs[ty + 16 * a][k];
#pragma unroll
      for (int b = 0; b < IB; ++b) bv[b] = Es[tx + 16 * b][k];
#pragma unroll
      for (int a = 0; a < RA; ++a)
#pragma unroll
        for (int b = 0; b < IB; ++b) acc[a][b] = fmaf(av[a], bv[b], acc[a][b]);
    }
  }
  __syncthreads();  // earlier readers of Ss (and of the last chunk) are done
#pragma unroll
  for (int a = 0; a < RA; ++a)
#pragma unroll
    for (int b = 0; b < IB; ++b) Ss[ty + 16 * a][tx + 16 * b] = acc[a][b];
  __syncthreads();
}

}  // namespace chunk

}  // namespace fsr::cuda::tile
