// Multi-head causal self-attention over packed sequences, the CUDA twin of
// cpp/src/cpu/attention.cpp (same arguments, shapes, dropout masks and "=" outputs).
//   S = Q_h K_h^T / sqrt(D) for the rows of one sequence, causal: row i sees rows <= i
//   forward : P = softmax(S) per row (online: running max and sum over key tiles),
//             lse(R,H) = logsumexp of each row,  O_h = dropout_p(P) V_h     O(R, H*D) =
//   backward: P recomputed from lse, three kernels on the stream:
//             1. delta_i = sum_j P_ij dP_ij = dO_i . O_i (O the forward's output: the same
//                sum, since O_i = sum_j Pd_ij V_j), kept in dQ(i, h*D) as scratch
//             2. key side:   dV_h = Pd^T dO_h;  dK_h = dS^T Q_h / sqrt(D)   dK, dV(R, ldkv) =
//             3. query side: dQ_h = dS K_h / sqrt(D)                        dQ(R, ldq) =
//             with Pd = dropout_p(P), dP = dropout_p'(dO_h V_h^T), dS = P * (dP - delta)
//   attention_last_forward: inference, one query per sequence (its last row), no dropout
// Dropout counter of (query row i, head h, key row j) is (i * H + h) * T + (j - start).
// Blocks: grid (B*H, ceil(T / 8)), 256 threads; block (s*H + h, y) owns the 8 rows
// 8y .. 8y+7 of sequence s (one row per warp) and streams the other side through shared
// memory in 32-row tiles (one row per lane).  Every output row has exactly one owning warp:
// no atomics, no T x T matrix in global memory, results independent of the schedule.
// Limits: D <= 128 (each lane holds 4 of a row's D columns), T <= 512.
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/ops.cuh"
#include "fastsasrec/common.h"
#include "fastsasrec/rng.h"

namespace fsr::cuda {

namespace {

constexpr int kMaxT = 512;                  // longest sequence supported
constexpr int kMaxD = 128;                  // widest head supported
constexpr int kWarps = 8;                   // rows owned per block, one per warp
constexpr int kThreads = kWarps * 32;
constexpr int kTile = 32;                   // rows per staged tile, one per lane
constexpr int kDimsPerLane = kMaxD / 32;    // lane l holds columns l, l+32, l+64, l+96
constexpr unsigned kFull = 0xffffffffu;

// Row stride of a tile read one row per lane: odd, so that the 32 lanes reading column d
// of 32 consecutive rows hit 32 different banks.
__host__ __device__ inline int padded(int D) { return D | 1; }

__device__ __forceinline__ float dot(const float* a, const float* b, int D) {
  float acc = 0.f;
  for (int d = 0; d < D; ++d) acc = fmaf(a[d], b[d], acc);
  return acc;
}

// dst[r * ld_dst + d] = src[(r0 + r) * ld_src + d] for r < rows, d < D; rows r0 + r >= end
// are zero-filled (so that masked products never meet uninitialised memory).  src already
// points at the sequence's first row and the head's first column.  Whole block.
__device__ __forceinline__ void load_rows(float* dst, int ld_dst, const float* src, int ld_src,
                                          int r0, int rows, int end, int D) {
  for (int idx = threadIdx.x; idx < rows * D; idx += blockDim.x) {
    const int r = idx / D, d = idx - r * D;
    const int row = r0 + r;
    dst[r * ld_dst + d] = row < end ? src[(size_t)row * ld_src + d] : 0.f;
  }
}

// ---------------------------------------------------------------------------------------
// Forward.  kLast = false (attention_forward): grid (B*H, ceil(T / kWarps)), kThreads
// threads.  Warp w of block (s*H + h, y) owns query row i = y*kWarps + w of sequence s
// (local index); lane l scores key j0 + l of each 32-row K/V tile with j0 <= i, online
// softmax across tiles.   O(R, H*D) =,  lse(R, H) =.
// kLast = true (attention_last_forward): grid (B*H, 1), 32 threads.  The one query, row s
// of Q(B, ldq), attends to all n rows of sequence s (i = n - 1).  O(B, H*D) =, no lse,
// no dropout.
// Shared: Qs[nw * D] | Ks[kTile * padded(D)] | Vs[kTile * D]   (nw = warps per block)
template <bool kLast>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(float* O, float* lse, const float* Q, int ldq, const float* K,
                             const float* V, int ldkv, const int32_t* cu, int H, int D, int T,
                             float scale, bool dropout, uint32_t thr, float inv_keep,
                             uint64_t key) {
  extern __shared__ float smem[];
  const int task = blockIdx.x;
  const int s = task / H, h = task - s * H;
  const int st = cu[s], n = cu[s + 1] - st;
  const int nw = blockDim.x >> 5;
  int q0, nq;  // this block's query rows: q0 .. q0 + nq - 1 (local indices)
  if (kLast) {
    if (n <= 0) return;
    q0 = n - 1;
    nq = 1;
  } else {
    q0 = blockIdx.y * nw;
    if (q0 >= n) return;  // whole block
    nq = min(nw, n - q0);
  }
  const int sp = padded(D), hD = h * D, ldo = H * D;
  float* Qs = smem;
  float* Ks = Qs + nw * D;
  float* Vs = Ks + kTile * sp;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

  if (kLast)
    load_rows(Qs, D, Q + (size_t)s * ldq + hD, ldq, 0, 1, 1, D);
  else
    load_rows(Qs, D, Q + (size_t)st * ldq + hD, ldq, q0, nw, n, D);

  const float* Kb = K + (size_t)st * ldkv + hD;
  const float* Vb = V + (size_t)st * ldkv + hD;
  const int i = q0 + warp;            // this warp's query row
  const bool active = warp < nq;      // warp-uniform
  const int kv_end = q0 + nq;         // keys 0 .. kv_end - 1 are seen by this block
  const uint64_t base = ((uint64_t)(st + i) * H + h) * (uint64_t)T;
  float m = -INFINITY, l = 0.f;
  float acc[kDimsPerLane];
#pragma unroll
  for (int k = 0; k < kDimsPerLane; ++k) acc[k] = 0.f;

  for (int j0 = 0; j0 < kv_end; j0 += kTile) {
    __syncthreads();  // the previous tile is consumed (and Qs is written)
    load_rows(Ks, sp, Kb, ldkv, j0, kTile, kv_end, D);
    load_rows(Vs, D, Vb, ldkv, j0, kTile, kv_end, D);
    __syncthreads();
    if (active && j0 <= i) {  // warp-uniform; key j0 is visible, so the tile max is finite
      const int j = j0 + lane;
      const bool vis = j <= i;  // i < n, so j < n too
      const float sc = vis ? dot(Qs + warp * D, Ks + lane * sp, D) * scale : -INFINITY;
      const float m_new = fmaxf(m, warp_max(sc));
      const float corr = expf(m - m_new);  // 0 on the first tile (m = -inf)
      float e = vis ? expf(sc - m_new) : 0.f;
      l = l * corr + warp_sum(e);
      if (dropout && vis) e *= keep_scale(key, base + (uint64_t)j, thr, inv_keep);
      m = m_new;
#pragma unroll
      for (int k = 0; k < kDimsPerLane; ++k) acc[k] *= corr;
      const int jn = min(kTile, i - j0 + 1);  // visible keys of this tile
      for (int jj = 0; jj < jn; ++jj) {
        const float pj = __shfl_sync(kFull, e, jj);
        const float* vrow = Vs + jj * D;
#pragma unroll
        for (int k = 0; k < kDimsPerLane; ++k) {
          const int d = lane + 32 * k;
          if (d < D) acc[k] = fmaf(pj, vrow[d], acc[k]);
        }
      }
    }
  }

  if (active) {
    const float inv_l = 1.f / l;
    float* orow = kLast ? O + (size_t)s * ldo + hD : O + (size_t)(st + i) * ldo + hD;
#pragma unroll
    for (int k = 0; k < kDimsPerLane; ++k) {
      const int d = lane + 32 * k;
      if (d < D) orow[d] = acc[k] * inv_l;
    }
    if (!kLast && lane == 0) lse[(size_t)(st + i) * H + h] = m + logf(l);
  }
}

// ---------------------------------------------------------------------------------------
// Backward, query side: grid (B*H, ceil(T / kWarps)), kThreads threads.  Warp w of block
// (s*H + h, y) owns query row i = y*kWarps + w of sequence s; lane l takes key j0 + l of
// each 32-row K/V tile with j0 <= i.  P_ij = exp(scale Q_i.K_j - lse_i),
// dP_ij = mask_ij * (dO_i . V_j).
//   dQ_i = scale * sum_{j<=i} P_ij (dP_ij - delta_i) K_j, delta_i read back from
//   dQ(i, h*D) where kernel 1 left it;   dQ(R, ldq) =
// Shared: Qs[nw * D] | dOs[nw * D] | Ks[kTile * padded(D)] | Vs[kTile * padded(D)]
__global__ void __launch_bounds__(kThreads)
    attention_backward_query_kernel(float* dQ, const float* dO, const float* Q, int ldq,
                                    const float* K, const float* V, int ldkv, const float* lse,
                                    const int32_t* cu, int H, int D, int T, float scale,
                                    bool dropout, uint32_t thr, float inv_keep, uint64_t key) {
  extern __shared__ float smem[];
  const int task = blockIdx.x;
  const int s = task / H, h = task - s * H;
  const int st = cu[s], n = cu[s + 1] - st;
  const int nw = blockDim.x >> 5;
  const int q0 = blockIdx.y * nw;
  if (q0 >= n) return;  // whole block
  const int nq = min(nw, n - q0);
  const int sp = padded(D), hD = h * D, ldo = H * D;
  float* Qs = smem;
  float* dOs = Qs + nw * D;
  float* Ks = dOs + nw * D;
  float* Vs = Ks + kTile * sp;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

  load_rows(Qs, D, Q + (size_t)st * ldq + hD, ldq, q0, nw, n, D);
  load_rows(dOs, D, dO + (size_t)st * ldo + hD, ldo, q0, nw, n, D);

  const float* Kb = K + (size_t)st * ldkv + hD;
  const float* Vb = V + (size_t)st * ldkv + hD;
  const int i = q0 + warp;
  const bool active = warp < nq;  // warp-uniform
  const int kv_end = q0 + nq;
  const uint64_t base = ((uint64_t)(st + i) * H + h) * (uint64_t)T;
  float lse_i = 0.f, delta = 0.f;
  if (active) {
    lse_i = lse[(size_t)(st + i) * H + h];
    // Only lane 0 reads the scratch element, and lane 0 is also the one that overwrites it
    // at the end, so the read precedes the write in program order.
    delta = __shfl_sync(kFull, lane == 0 ? dQ[(size_t)(st + i) * ldq + hD] : 0.f, 0);
  }
  float acc[kDimsPerLane];
#pragma unroll
  for (int k = 0; k < kDimsPerLane; ++k) acc[k] = 0.f;

  for (int j0 = 0; j0 < kv_end; j0 += kTile) {
    __syncthreads();
    load_rows(Ks, sp, Kb, ldkv, j0, kTile, kv_end, D);
    load_rows(Vs, sp, Vb, ldkv, j0, kTile, kv_end, D);
    __syncthreads();
    if (active && j0 <= i) {  // warp-uniform
      const int j = j0 + lane;
      float g = 0.f;  // dS
      if (j <= i) {
        const float pr = expf(dot(Qs + warp * D, Ks + lane * sp, D) * scale - lse_i);
        float dp = dot(dOs + warp * D, Vs + lane * sp, D);
        if (dropout) dp *= keep_scale(key, base + (uint64_t)j, thr, inv_keep);
        g = pr * (dp - delta);
      }
      const int jn = min(kTile, i - j0 + 1);
      for (int jj = 0; jj < jn; ++jj) {
        const float gj = __shfl_sync(kFull, g, jj);
        const float* krow = Ks + jj * sp;
#pragma unroll
        for (int k = 0; k < kDimsPerLane; ++k) {
          const int d = lane + 32 * k;
          if (d < D) acc[k] = fmaf(gj, krow[d], acc[k]);
        }
      }
    }
  }

  if (active) {
    float* qrow = dQ + (size_t)(st + i) * ldq + hD;
#pragma unroll
    for (int k = 0; k < kDimsPerLane; ++k) {
      const int d = lane + 32 * k;
      if (d < D) qrow[d] = acc[k] * scale;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Backward, kernel 1: delta_i = dO_i . O_i for head h, one warp per (row, head) on the
// grid of the other kernels; written to dQ(i, h*D) as scratch for kernels 2 and 3.
__global__ void __launch_bounds__(kThreads)
    attention_delta_kernel(float* dQ, int ldq, const float* dO, const float* O,
                           const int32_t* cu, int H, int D) {
  const int task = blockIdx.x;
  const int s = task / H, h = task - s * H;
  const int st = cu[s], n = cu[s + 1] - st;
  const int i = blockIdx.y * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (i >= n) return;  // whole warp; no barrier in this kernel
  const int ldo = H * D;
  const float* a = dO + (size_t)(st + i) * ldo + h * D;
  const float* b = O + (size_t)(st + i) * ldo + h * D;
  float part = 0.f;
  for (int d = lane; d < D; d += 32) part = fmaf(a[d], b[d], part);
  const float delta = warp_sum(part);
  if (lane == 0) dQ[(size_t)(st + i) * ldq + h * D] = delta;
}

// ---------------------------------------------------------------------------------------
// Backward, key side (pass 2): grid (B*H, ceil(T / kWarps)), kThreads threads.  Warp w of
// block (s*H + h, y) owns key row j = y*kWarps + w of sequence s; lane l takes query
// i0 + l of each 32-row Q/dO tile, i0 = k0, k0 + 32, .. (k0 = y*kWarps), queries i >= j.
//   mask_ij = dropout multiplier of counter ((st + i) * H + h) * T + j
//   Pd_ij = mask_ij P_ij;  dS_ij = P_ij (mask_ij (dO_i . V_j) - delta_i)
//   dV_j = sum_{i>=j} Pd_ij dO_i;  dK_j = scale * sum_{i>=j} dS_ij Q_i    dK, dV(R, ldkv) =
// delta_i is read from dQ(i, h*D), where kernel 1 left it.
// Shared: Ks[nw * D] | Vs[nw * D] | Qs[kTile * padded(D)] | dOs[kTile * padded(D)]
//         | lse_t[kTile] | delta_t[kTile]
__global__ void __launch_bounds__(kThreads)
    attention_backward_key_kernel(float* dK, float* dV, const float* delta_src, const float* dO,
                                  const float* Q, int ldq, const float* K, const float* V,
                                  int ldkv, const float* lse, const int32_t* cu, int H, int D,
                                  int T, float scale, bool dropout, uint32_t thr, float inv_keep,
                                  uint64_t key) {
  extern __shared__ float smem[];
  const int task = blockIdx.x;
  const int s = task / H, h = task - s * H;
  const int st = cu[s], n = cu[s + 1] - st;
  const int nw = blockDim.x >> 5;
  const int k0 = blockIdx.y * nw;
  if (k0 >= n) return;  // whole block
  const int nk = min(nw, n - k0);
  const int sp = padded(D), hD = h * D, ldo = H * D;
  float* Ks = smem;
  float* Vs = Ks + nw * D;
  float* Qs = Vs + nw * D;
  float* dOs = Qs + kTile * sp;
  float* lse_t = dOs + kTile * sp;
  float* delta_t = lse_t + kTile;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

  load_rows(Ks, D, K + (size_t)st * ldkv + hD, ldkv, k0, nw, n, D);
  load_rows(Vs, D, V + (size_t)st * ldkv + hD, ldkv, k0, nw, n, D);

  const float* Qb = Q + (size_t)st * ldq + hD;
  const float* dOb = dO + (size_t)st * ldo + hD;
  const int j = k0 + warp;
  const bool active = warp < nk;  // warp-uniform
  float accK[kDimsPerLane], accV[kDimsPerLane];
#pragma unroll
  for (int k = 0; k < kDimsPerLane; ++k) accK[k] = accV[k] = 0.f;

  for (int i0 = k0; i0 < n; i0 += kTile) {
    __syncthreads();
    load_rows(Qs, sp, Qb, ldq, i0, kTile, n, D);
    load_rows(dOs, sp, dOb, ldo, i0, kTile, n, D);
    if (threadIdx.x < kTile) {
      const int i = i0 + (int)threadIdx.x;
      lse_t[threadIdx.x] = i < n ? lse[(size_t)(st + i) * H + h] : 0.f;
      delta_t[threadIdx.x] = i < n ? delta_src[(size_t)(st + i) * ldq + hD] : 0.f;
    }
    __syncthreads();
    if (active) {
      const int i = i0 + lane;
      float pd = 0.f, ds = 0.f;
      if (i >= j && i < n) {
        const float pr = expf(dot(Qs + lane * sp, Ks + warp * D, D) * scale - lse_t[lane]);
        const float dpv = dot(dOs + lane * sp, Vs + warp * D, D);
        const float mk =
            dropout ? keep_scale(key, ((uint64_t)(st + i) * H + h) * (uint64_t)T + (uint64_t)j,
                                 thr, inv_keep)
                    : 1.f;
        pd = pr * mk;
        ds = pr * (dpv * mk - delta_t[lane]);
      }
      const int ii0 = max(0, j - i0), iin = min(kTile, n - i0);  // queries j .. n-1 of the tile
      for (int ii = ii0; ii < iin; ++ii) {
        const float a = __shfl_sync(kFull, pd, ii);
        const float b = __shfl_sync(kFull, ds, ii);
        const float* orow = dOs + ii * sp;
        const float* qrow = Qs + ii * sp;
#pragma unroll
        for (int k = 0; k < kDimsPerLane; ++k) {
          const int d = lane + 32 * k;
          if (d < D) {
            accV[k] = fmaf(a, orow[d], accV[k]);
            accK[k] = fmaf(b, qrow[d], accK[k]);
          }
        }
      }
    }
  }

  if (active) {
    float* krow = dK + (size_t)(st + j) * ldkv + hD;
    float* vrow = dV + (size_t)(st + j) * ldkv + hD;
#pragma unroll
    for (int k = 0; k < kDimsPerLane; ++k) {
      const int d = lane + 32 * k;
      if (d < D) {
        krow[d] = accK[k] * scale;
        vrow[d] = accV[k];
      }
    }
  }
}

size_t forward_smem(int warps, int D) {
  return sizeof(float) * ((size_t)warps * D + (size_t)kTile * padded(D) + (size_t)kTile * D);
}
size_t backward_query_smem(int D) {
  return sizeof(float) * (2 * (size_t)kWarps * D + 2 * (size_t)kTile * padded(D));
}
size_t backward_key_smem(int D) {
  return sizeof(float) * (2 * (size_t)kWarps * D + 2 * (size_t)kTile * padded(D) + 2 * kTile);
}

void check_shapes(const char* op, int B, int H, int D, int ldq, int ldkv) {
  FSR_REQUIRE(B >= 0, op, ": B must be >= 0, got ", B);
  FSR_REQUIRE(H >= 1, op, ": H must be >= 1, got ", H);
  FSR_REQUIRE(D >= 1 && D <= kMaxD, op, ": the CUDA attention supports head widths D = 1..",
              kMaxD, ", got D = ", D);
  FSR_REQUIRE((int64_t)B * H <= 0x7fffffff, op, ": B * H = ", (int64_t)B * H, " is too large");
  FSR_REQUIRE((int64_t)ldq >= (int64_t)H * D && (int64_t)ldkv >= (int64_t)H * D, op,
              ": leading dimensions ldq = ", ldq, ", ldkv = ", ldkv, " must be >= H * D = ",
              (int64_t)H * D);
}

void check_T(const char* op, int T) {
  FSR_REQUIRE(T >= 1 && T <= kMaxT, op,
              ": the CUDA attention supports sequences of T = 1..", kMaxT,
              " positions, got T = ", T);
}

}  // namespace

void attention_forward(float* O, float* lse, const float* Q, int ldq, const float* K,
                       const float* V, int ldkv, const int32_t* cu, int B, int H, int D, int T,
                       float p, uint64_t key, cudaStream_t stream) {
  check_shapes("attention_forward", B, H, D, ldq, ldkv);
  check_T("attention_forward", T);
  if (B == 0) return;
  const float scale = 1.f / std::sqrt((float)D);
  const bool dropout = p > 0.f;
  const float inv_keep = dropout ? 1.f / (1.f - p) : 1.f;
  const uint32_t thr = dropout_threshold(p);
  const dim3 grid((unsigned)(B * H), (unsigned)((T + kWarps - 1) / kWarps));
  attention_forward_kernel<false><<<grid, kThreads, forward_smem(kWarps, D), stream>>>(
      O, lse, Q, ldq, K, V, ldkv, cu, H, D, T, scale, dropout, thr, inv_keep, key);
  FSR_CUDA_LAUNCH_CHECK();
}

void attention_backward(float* dQ, float* dK, float* dV, const float* dO, const float* O,
                        const float* Q, int ldq, const float* K, const float* V, int ldkv,
                        const float* lse, const int32_t* cu, int B, int H, int D, int T, float p,
                        uint64_t key, cudaStream_t stream) {
  check_shapes("attention_backward", B, H, D, ldq, ldkv);
  check_T("attention_backward", T);
  if (B == 0) return;
  const float scale = 1.f / std::sqrt((float)D);
  const bool dropout = p > 0.f;
  const float inv_keep = dropout ? 1.f / (1.f - p) : 1.f;
  const uint32_t thr = dropout_threshold(p);
  const dim3 grid((unsigned)(B * H), (unsigned)((T + kWarps - 1) / kWarps));
  // 1. delta into dQ(i, h*D)
  attention_delta_kernel<<<grid, kThreads, 0, stream>>>(dQ, ldq, dO, O, cu, H, D);
  FSR_CUDA_LAUNCH_CHECK();
  // 2. dK, dV (reads delta from dQ)
  attention_backward_key_kernel<<<grid, kThreads, backward_key_smem(D), stream>>>(
      dK, dV, dQ, dO, Q, ldq, K, V, ldkv, lse, cu, H, D, T, scale, dropout, thr, inv_keep, key);
  FSR_CUDA_LAUNCH_CHECK();
  // 3. dQ (overwrites delta)
  attention_backward_query_kernel<<<grid, kThreads, backward_query_smem(D), stream>>>(
      dQ, dO, Q, ldq, K, V, ldkv, lse, cu, H, D, T, scale, dropout, thr, inv_keep, key);
  FSR_CUDA_LAUNCH_CHECK();
}

void attention_last_forward(float* O, const float* Q, int ldq, const float* K, const float* V,
                            int ldkv, const int32_t* cu, int B, int H, int D,
                            cudaStream_t stream) {
  check_shapes("attention_last_forward", B, H, D, ldq, ldkv);
  if (B == 0) return;
  const float scale = 1.f / std::sqrt((float)D);
  attention_forward_kernel<true><<<(unsigned)(B * H), 32, forward_smem(1, D), stream>>>(
      O, nullptr, Q, ldq, K, V, ldkv, cu, H, D, /*T=*/1, scale, /*dropout=*/false, 0u, 1.f,
      0ull);
  FSR_CUDA_LAUNCH_CHECK();
}

}  // namespace fsr::cuda
