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
//
// Training kernels: grid (B*H, ceil(n_max / BM)), 256 threads, n_max the longest sequence.
// Block (s*H + h, y) owns the BM rows BM*y .. BM*y + BM-1 of sequence s (queries for the
// forward and the query side, keys for the key side) and streams the other side through
// shared memory in BM-row tiles; each BM x BM score tile is computed in registers and the
// probabilities pass through shared memory once, on their way to the P.V-style product
// (cuda/tile.cuh).  BM is 64, or 32 when no sequence is longer than 32 or where 64 rows do
// not fit the card's shared memory (D > 64 below 160 KB a block).  Every output row has
// one owning block: no atomics, no T x T matrix in global memory, results independent of
// the schedule.  Limits: D <= 128, T <= 512.
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/ops.cuh"
#include "cuda/tile.cuh"
#include "fastsasrec/common.h"
#include "fastsasrec/rng.h"

namespace fsr::cuda {

namespace {

constexpr int kMaxT = 512;      // longest sequence supported
constexpr int kMaxD = 128;      // widest head supported
constexpr int kThreads = tile::kThreads;  // 16 x 16
constexpr unsigned kFull = 0xffffffffu;

// dst = rows r0 .. r0 + BM - 1 of one head (src at the sequence's first row and the head's
// first column, row stride ld_src); rows >= end are zero.
template <int NC, int BM>
__device__ __forceinline__ void load_rows(float* dst, const float* src, int ld_src, int r0,
                                          int end, int D) {
  tile::load<NC>(dst, BM, D, [&](int r) {
    return r0 + r < end ? src + (size_t)(r0 + r) * ld_src : nullptr;
  });
}

// lse_t[r] and delta_t[r] of rows r0 + r of the sequence (0 past its end); delta is read
// from dQ(i, h*D), where the delta kernel left it.
template <int BM>
__device__ __forceinline__ void load_row_stats(float* lse_t, float* delta_t, const float* lse,
                                               const float* delta, int ldq, int st, int r0,
                                               int n, int H, int h, int hD) {
  for (int r = threadIdx.x; r < BM; r += kThreads) {
    const int i = r0 + r;
    lse_t[r] = i < n ? lse[(size_t)(st + i) * H + h] : 0.f;
    delta_t[r] = i < n ? delta[(size_t)(st + i) * ldq + hD] : 0.f;
  }
}

// ---------------------------------------------------------------------------------------
// Forward: block (s*H + h, y) owns query rows q0 = BM*y .. q0 + BM - 1 and walks the key
// tiles j0 = 0, BM, .. up to its last row, keeping each row's running max m and sum l.
//   O(R, H*D) =,  lse(R, H) =
// Shared: Qs | Ks | Vs (row tiles) | Ps (score tile)
template <int RA, int NC>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(float* O, float* lse, const float* Q, int ldq, const float* K,
                             const float* V, int ldkv, const int32_t* cu, int H, int D, int T,
                             float scale, bool dropout, uint32_t thr, float inv_keep,
                             uint64_t key) {
  constexpr int BM = 16 * RA, ld = tile::row_ld<NC>(), lds = tile::score_ld<RA>();
  extern __shared__ float smem[];
  const int s = blockIdx.x / H, h = blockIdx.x - s * H;
  const int st = cu[s], n = cu[s + 1] - st;
  const int q0 = blockIdx.y * BM;
  if (q0 >= n) return;  // whole block
  float* Qs = smem;
  float* Ks = Qs + BM * ld;
  float* Vs = Ks + BM * ld;
  float* Ps = Vs + BM * ld;
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int hD = h * D, ldo = H * D;
  load_rows<NC, BM>(Qs, Q + (size_t)st * ldq + hD, ldq, q0, n, D);

  float m[RA], l[RA], o[RA][NC];
#pragma unroll
  for (int a = 0; a < RA; ++a) {
    m[a] = -INFINITY;
    l[a] = 0.f;
#pragma unroll
    for (int c = 0; c < NC; ++c) o[a][c] = 0.f;
  }
  const int kv_end = min(q0 + BM, n);  // keys this block's rows can see
  for (int j0 = 0; j0 < kv_end; j0 += BM) {
    __syncthreads();  // the previous tile's readers are done (and Qs is written)
    load_rows<NC, BM>(Ks, K + (size_t)st * ldkv + hD, ldkv, j0, n, D);
    load_rows<NC, BM>(Vs, V + (size_t)st * ldkv + hD, ldkv, j0, n, D);
    __syncthreads();
    float sc[RA][RA];
#pragma unroll
    for (int a = 0; a < RA; ++a)
#pragma unroll
      for (int b = 0; b < RA; ++b) sc[a][b] = 0.f;
    tile::dot<RA, NC>(sc, Qs, Ks, D);
#pragma unroll
    for (int a = 0; a < RA; ++a) {
      const int i = q0 + ty + 16 * a;  // rows i >= n are computed and never stored
      float mx = -INFINITY;
#pragma unroll
      for (int b = 0; b < RA; ++b) {
        const int j = j0 + tx + 16 * b;
        sc[a][b] = (j <= i && j < n) ? sc[a][b] * scale : -INFINITY;
        mx = fmaxf(mx, sc[a][b]);
      }
      // Key j0 <= q0 <= i (and j0 < n) is visible to every row, so m_new is finite.
      const float m_new = fmaxf(m[a], tile::row_max(mx));
      const float corr = expf(m[a] - m_new);  // 0 on the first tile (m = -inf)
      const uint64_t base = ((uint64_t)(st + i) * H + h) * (uint64_t)T;
      float sum = 0.f;
#pragma unroll
      for (int b = 0; b < RA; ++b) {
        const int j = j0 + tx + 16 * b;
        float e = expf(sc[a][b] - m_new);  // 0 where masked
        sum += e;
        if (dropout) e *= keep_scale(key, base + (uint64_t)j, thr, inv_keep);
        Ps[(ty + 16 * a) * lds + tx + 16 * b] = e;
      }
      l[a] = l[a] * corr + tile::row_sum(sum);
      m[a] = m_new;
#pragma unroll
      for (int c = 0; c < NC; ++c) o[a][c] *= corr;
    }
    __syncthreads();
    tile::mul<RA, NC>(o, Ps, Vs, min(BM, n - j0));
  }

  float inv_l[RA];
#pragma unroll
  for (int a = 0; a < RA; ++a) inv_l[a] = 1.f / l[a];
  tile::store<RA, NC>(O + (size_t)st * ldo + hD, ldo, o, inv_l, q0, n, D);
  if (tx == 0)
#pragma unroll
    for (int a = 0; a < RA; ++a) {
      const int i = q0 + ty + 16 * a;
      if (i < n) lse[(size_t)(st + i) * H + h] = m[a] + logf(l[a]);
    }
}

// ---------------------------------------------------------------------------------------
// Backward, kernel 1: delta_i = dO_i . O_i for head h, one warp per (row, head); written
// to dQ(i, h*D) as scratch for kernels 2 and 3.  Grid (B*H, ceil(n_max / 8)), 256 threads.
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
// Backward, key side (kernel 2): block (s*H + h, y) owns key rows k0 = BM*y .. k0 + BM - 1
// and walks the query tiles i0 = k0, k0 + BM, .. (queries i >= j).  Score tiles are
// transposed: rows are keys, columns queries.
//   mask_ij = dropout multiplier of counter ((st + i) * H + h) * T + j
//   Pd_ij = mask_ij P_ij;  dS_ij = P_ij (mask_ij (dO_i . V_j) - delta_i)
//   dV_j = sum_{i>=j} Pd_ij dO_i;  dK_j = scale * sum_{i>=j} dS_ij Q_i    dK, dV(R, ldkv) =
// delta_i is read from dQ(i, h*D), where kernel 1 left it.
// Shared: Ks | Vs | Qs | dOs (row tiles) | Pds | dSs (score tiles) | lse_t | delta_t
template <int RA, int NC>
__global__ void __launch_bounds__(kThreads)
    attention_backward_key_kernel(float* dK, float* dV, const float* delta_src, const float* dO,
                                  const float* Q, int ldq, const float* K, const float* V,
                                  int ldkv, const float* lse, const int32_t* cu, int H, int D,
                                  int T, float scale, bool dropout, uint32_t thr, float inv_keep,
                                  uint64_t key) {
  constexpr int BM = 16 * RA, ld = tile::row_ld<NC>(), lds = tile::score_ld<RA>();
  extern __shared__ float smem[];
  const int s = blockIdx.x / H, h = blockIdx.x - s * H;
  const int st = cu[s], n = cu[s + 1] - st;
  const int k0 = blockIdx.y * BM;
  if (k0 >= n) return;  // whole block
  float* Ks = smem;
  float* Vs = Ks + BM * ld;
  float* Qs = Vs + BM * ld;
  float* dOs = Qs + BM * ld;
  float* Pds = dOs + BM * ld;
  float* dSs = Pds + BM * lds;
  float* lse_t = dSs + BM * lds;
  float* delta_t = lse_t + BM;
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int hD = h * D, ldo = H * D;
  load_rows<NC, BM>(Ks, K + (size_t)st * ldkv + hD, ldkv, k0, n, D);
  load_rows<NC, BM>(Vs, V + (size_t)st * ldkv + hD, ldkv, k0, n, D);

  float accK[RA][NC], accV[RA][NC];
#pragma unroll
  for (int a = 0; a < RA; ++a)
#pragma unroll
    for (int c = 0; c < NC; ++c) accK[a][c] = accV[a][c] = 0.f;

  for (int i0 = k0; i0 < n; i0 += BM) {
    __syncthreads();  // the previous tile's readers are done
    load_rows<NC, BM>(Qs, Q + (size_t)st * ldq + hD, ldq, i0, n, D);
    load_rows<NC, BM>(dOs, dO + (size_t)st * ldo + hD, ldo, i0, n, D);
    load_row_stats<BM>(lse_t, delta_t, lse, delta_src, ldq, st, i0, n, H, h, hD);
    __syncthreads();
    float sc[RA][RA], dp[RA][RA];
#pragma unroll
    for (int a = 0; a < RA; ++a)
#pragma unroll
      for (int b = 0; b < RA; ++b) sc[a][b] = dp[a][b] = 0.f;
    tile::dot<RA, NC>(sc, Ks, Qs, D);
    tile::dot<RA, NC>(dp, Vs, dOs, D);
#pragma unroll
    for (int a = 0; a < RA; ++a) {
      const int j = k0 + ty + 16 * a;
#pragma unroll
      for (int b = 0; b < RA; ++b) {
        const int c = tx + 16 * b, i = i0 + c;
        float pd = 0.f, ds = 0.f;
        if (i >= j && i < n && j < n) {
          const float pr = expf(sc[a][b] * scale - lse_t[c]);
          const float mk =
              dropout ? keep_scale(key, ((uint64_t)(st + i) * H + h) * (uint64_t)T + (uint64_t)j,
                                   thr, inv_keep)
                      : 1.f;
          pd = pr * mk;
          ds = pr * (dp[a][b] * mk - delta_t[c]);
        }
        Pds[(ty + 16 * a) * lds + c] = pd;
        dSs[(ty + 16 * a) * lds + c] = ds;
      }
    }
    __syncthreads();
    const int kn = min(BM, n - i0);
    tile::mul<RA, NC>(accV, Pds, dOs, kn);
    tile::mul<RA, NC>(accK, dSs, Qs, kn);
  }

  float one[RA], sc_f[RA];
#pragma unroll
  for (int a = 0; a < RA; ++a) {
    one[a] = 1.f;
    sc_f[a] = scale;
  }
  tile::store<RA, NC>(dK + (size_t)st * ldkv + hD, ldkv, accK, sc_f, k0, n, D);
  tile::store<RA, NC>(dV + (size_t)st * ldkv + hD, ldkv, accV, one, k0, n, D);
}

// ---------------------------------------------------------------------------------------
// Backward, query side (kernel 3): block (s*H + h, y) owns query rows q0 = BM*y ..
// q0 + BM - 1 and walks the key tiles up to its last row.  P_ij = exp(scale Q_i.K_j - lse_i),
// dP_ij = mask_ij * (dO_i . V_j).
//   dQ_i = scale * sum_{j<=i} P_ij (dP_ij - delta_i) K_j, delta_i read from dQ(i, h*D)
//   where kernel 1 left it (this block reads its rows' delta before it writes them);
//   dQ(R, ldq) =
// Shared: Qs | dOs | Ks | Vs (row tiles) | dSs (score tile) | lse_t | delta_t
template <int RA, int NC>
__global__ void __launch_bounds__(kThreads)
    attention_backward_query_kernel(float* dQ, const float* dO, const float* Q, int ldq,
                                    const float* K, const float* V, int ldkv, const float* lse,
                                    const int32_t* cu, int H, int D, int T, float scale,
                                    bool dropout, uint32_t thr, float inv_keep, uint64_t key) {
  constexpr int BM = 16 * RA, ld = tile::row_ld<NC>(), lds = tile::score_ld<RA>();
  extern __shared__ float smem[];
  const int s = blockIdx.x / H, h = blockIdx.x - s * H;
  const int st = cu[s], n = cu[s + 1] - st;
  const int q0 = blockIdx.y * BM;
  if (q0 >= n) return;  // whole block
  float* Qs = smem;
  float* dOs = Qs + BM * ld;
  float* Ks = dOs + BM * ld;
  float* Vs = Ks + BM * ld;
  float* dSs = Vs + BM * ld;
  float* lse_t = dSs + BM * lds;
  float* delta_t = lse_t + BM;
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int hD = h * D, ldo = H * D;
  load_rows<NC, BM>(Qs, Q + (size_t)st * ldq + hD, ldq, q0, n, D);
  load_rows<NC, BM>(dOs, dO + (size_t)st * ldo + hD, ldo, q0, n, D);
  load_row_stats<BM>(lse_t, delta_t, lse, dQ, ldq, st, q0, n, H, h, hD);

  float acc[RA][NC];
#pragma unroll
  for (int a = 0; a < RA; ++a)
#pragma unroll
    for (int c = 0; c < NC; ++c) acc[a][c] = 0.f;
  const int kv_end = min(q0 + BM, n);
  for (int j0 = 0; j0 < kv_end; j0 += BM) {
    __syncthreads();  // the previous tile's readers are done (and Qs, dOs, lse_t, delta_t written)
    load_rows<NC, BM>(Ks, K + (size_t)st * ldkv + hD, ldkv, j0, n, D);
    load_rows<NC, BM>(Vs, V + (size_t)st * ldkv + hD, ldkv, j0, n, D);
    __syncthreads();
    float sc[RA][RA], dp[RA][RA];
#pragma unroll
    for (int a = 0; a < RA; ++a)
#pragma unroll
      for (int b = 0; b < RA; ++b) sc[a][b] = dp[a][b] = 0.f;
    tile::dot<RA, NC>(sc, Qs, Ks, D);
    tile::dot<RA, NC>(dp, dOs, Vs, D);
#pragma unroll
    for (int a = 0; a < RA; ++a) {
      const int r = ty + 16 * a, i = q0 + r;
      const uint64_t base = ((uint64_t)(st + i) * H + h) * (uint64_t)T;
#pragma unroll
      for (int b = 0; b < RA; ++b) {
        const int j = j0 + tx + 16 * b;
        float g = 0.f;  // dS
        if (j <= i && i < n) {  // i < n, so j < n too
          const float pr = expf(sc[a][b] * scale - lse_t[r]);
          float dpv = dp[a][b];
          if (dropout) dpv *= keep_scale(key, base + (uint64_t)j, thr, inv_keep);
          g = pr * (dpv - delta_t[r]);
        }
        dSs[r * lds + tx + 16 * b] = g;
      }
    }
    __syncthreads();
    tile::mul<RA, NC>(acc, dSs, Ks, min(BM, n - j0));
  }

  float f[RA];
#pragma unroll
  for (int a = 0; a < RA; ++a) f[a] = scale;
  tile::store<RA, NC>(dQ + (size_t)st * ldq + hD, ldq, acc, f, q0, n, D);
}

// ---------------------------------------------------------------------------------------
// Inference (attention_last_forward): one query per sequence, so one warp per (sequence,
// head): grid B*H, 32 threads.  The query, row s of Q(B, ldq), attends to all n rows of
// sequence s; lane l scores key j0 + l of each 32-row K/V tile (online softmax across
// tiles) and holds columns l, l+32, l+64, l+96 of the output.  O(B, H*D) =
// Shared: Qs[D] | Ks[32 * (D | 1)] | Vs[32 * D]
constexpr int kLastTile = 32;
__host__ __device__ inline int padded(int D) { return D | 1; }

__global__ void __launch_bounds__(32)
    attention_last_kernel(float* O, const float* Q, int ldq, const float* K, const float* V,
                          int ldkv, const int32_t* cu, int H, int D, float scale) {
  extern __shared__ float smem[];
  const int s = blockIdx.x / H, h = blockIdx.x - s * H;
  const int st = cu[s], n = cu[s + 1] - st;
  if (n <= 0) return;
  const int sp = padded(D), hD = h * D, lane = threadIdx.x;
  float* Qs = smem;
  float* Ks = Qs + D;
  float* Vs = Ks + kLastTile * sp;
  for (int d = lane; d < D; d += 32) Qs[d] = Q[(size_t)s * ldq + hD + d];
  const float* Kb = K + (size_t)st * ldkv + hD;
  const float* Vb = V + (size_t)st * ldkv + hD;
  constexpr int kDims = kMaxD / 32;
  float m = -INFINITY, l = 0.f, acc[kDims];
#pragma unroll
  for (int k = 0; k < kDims; ++k) acc[k] = 0.f;
  for (int j0 = 0; j0 < n; j0 += kLastTile) {
    __syncwarp();  // the previous tile is consumed (and Qs is written)
    for (int idx = lane; idx < kLastTile * D; idx += 32) {
      const int r = idx / D, d = idx - r * D, row = j0 + r;
      Ks[r * sp + d] = row < n ? Kb[(size_t)row * ldkv + d] : 0.f;
      Vs[r * D + d] = row < n ? Vb[(size_t)row * ldkv + d] : 0.f;
    }
    __syncwarp();
    const int j = j0 + lane;
    float sc = -INFINITY;
    if (j < n) {
      float dot = 0.f;
      for (int d = 0; d < D; ++d) dot = fmaf(Qs[d], Ks[lane * sp + d], dot);
      sc = dot * scale;
    }
    const float m_new = fmaxf(m, warp_max(sc));  // key j0 < n is visible: finite
    const float corr = expf(m - m_new);
    const float e = expf(sc - m_new);
    l = l * corr + warp_sum(e);
    m = m_new;
#pragma unroll
    for (int k = 0; k < kDims; ++k) acc[k] *= corr;
    const int jn = min(kLastTile, n - j0);
    for (int jj = 0; jj < jn; ++jj) {
      const float pj = __shfl_sync(kFull, e, jj);
#pragma unroll
      for (int k = 0; k < kDims; ++k) {
        const int d = lane + 32 * k;
        if (d < D) acc[k] = fmaf(pj, Vs[jj * D + d], acc[k]);
      }
    }
  }
  const float inv_l = 1.f / l;
#pragma unroll
  for (int k = 0; k < kDims; ++k) {
    const int d = lane + 32 * k;
    if (d < D) O[(size_t)s * H * D + hD + d] = acc[k] * inv_l;
  }
}

// ---------------------------------------------------------------------------------------
// Launch: NC = columns per thread (D <= 16 NC), RA = tile rows per thread (BM = 16 RA).

enum class Kernel { forward, key, query };

template <int RA, int NC>
size_t smem_bytes(Kernel k) {
  constexpr size_t BM = 16 * RA, rows = BM * tile::row_ld<NC>(), score = BM * tile::score_ld<RA>();
  switch (k) {
    case Kernel::forward: return sizeof(float) * (3 * rows + score);
    case Kernel::key: return sizeof(float) * (4 * rows + 2 * score + 2 * BM);
    default: return sizeof(float) * (4 * rows + score + 2 * BM);
  }
}

struct Args {
  float *O, *lse, *dQ, *dK, *dV;
  const float *dO, *Q, *K, *V, *lse_in;
  int ldq, ldkv;
  const int32_t* cu;
  int B, H, D, T, n_max;
  float scale;
  bool dropout;
  uint32_t thr;
  float inv_keep;
  uint64_t key;
};

template <int RA, int NC>
void launch(Kernel k, const Args& a, cudaStream_t stream) {
  const size_t smem = smem_bytes<RA, NC>(k);
  const dim3 grid((unsigned)(a.B * a.H), (unsigned)((a.n_max + 16 * RA - 1) / (16 * RA)));
  switch (k) {
    case Kernel::forward:
      tile::allow_smem(attention_forward_kernel<RA, NC>, smem);
      attention_forward_kernel<RA, NC><<<grid, kThreads, smem, stream>>>(
          a.O, a.lse, a.Q, a.ldq, a.K, a.V, a.ldkv, a.cu, a.H, a.D, a.T, a.scale, a.dropout,
          a.thr, a.inv_keep, a.key);
      break;
    case Kernel::key:
      tile::allow_smem(attention_backward_key_kernel<RA, NC>, smem);
      attention_backward_key_kernel<RA, NC><<<grid, kThreads, smem, stream>>>(
          a.dK, a.dV, a.dQ, a.dO, a.Q, a.ldq, a.K, a.V, a.ldkv, a.lse_in, a.cu, a.H, a.D, a.T,
          a.scale, a.dropout, a.thr, a.inv_keep, a.key);
      break;
    case Kernel::query:
      tile::allow_smem(attention_backward_query_kernel<RA, NC>, smem);
      attention_backward_query_kernel<RA, NC><<<grid, kThreads, smem, stream>>>(
          a.dQ, a.dO, a.Q, a.ldq, a.K, a.V, a.ldkv, a.lse_in, a.cu, a.H, a.D, a.T, a.scale,
          a.dropout, a.thr, a.inv_keep, a.key);
      break;
  }
  FSR_CUDA_LAUNCH_CHECK();
}

// 64-row tiles, or 32-row tiles when no sequence of the call is longer (a short session
// would fill a corner of a 64-row tile) or when 64 rows do not fit the device's shared
// memory (only D > 64 can need that: 64-row tiles take at most 100,352 bytes for D <= 64).
template <int NC>
void launch_nc(Kernel k, const Args& a, int optin, cudaStream_t stream) {
  if (a.n_max > 32 && smem_bytes<4, NC>(k) <= (size_t)optin) return launch<4, NC>(k, a, stream);
  const size_t small = smem_bytes<2, NC>(k);
  FSR_REQUIRE(small <= (size_t)optin, "attention: head width D = ", a.D, " needs ", small,
              " bytes of shared memory a block; this GPU offers ", optin);
  launch<2, NC>(k, a, stream);
}

void run(Kernel k, const Args& a, cudaStream_t stream) {
  const int optin = tile::smem_optin();
  if (a.D <= 16) return launch_nc<1>(k, a, optin, stream);
  if (a.D <= 32) return launch_nc<2>(k, a, optin, stream);
  if (a.D <= 64) return launch_nc<4>(k, a, optin, stream);
  launch_nc<8>(k, a, optin, stream);
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

void check_n_max(const char* op, int T, int n_max) {
  FSR_REQUIRE(n_max >= 1 && n_max <= T, op, ": n_max (the longest sequence) must be in 1..T = ",
              T, ", got ", n_max);
}

Args make_args(int ldq, int ldkv, const int32_t* cu, int B, int H, int D, int T, int n_max,
               float p, uint64_t key) {
  Args a{};
  a.ldq = ldq;
  a.ldkv = ldkv;
  a.cu = cu;
  a.B = B;
  a.H = H;
  a.D = D;
  a.T = T;
  a.n_max = n_max;
  a.scale = 1.f / std::sqrt((float)D);
  a.dropout = p > 0.f;
  a.inv_keep = a.dropout ? 1.f / (1.f - p) : 1.f;
  a.thr = dropout_threshold(p);
  a.key = key;
  return a;
}

}  // namespace

std::string attention_unsupported(int T, int D) {
  if (T > kMaxT)
    return ::fsr::detail::cat("the CUDA attention supports max_seq up to ", kMaxT, ", got ", T);
  if (D > kMaxD)
    return ::fsr::detail::cat("the CUDA attention supports heads up to ", kMaxD,
                              " wide (factors / n_heads), got ", D);
  return {};
}

// The fused kernels keep nothing between the passes: the backward recomputes the
// probabilities from lse, so attention_forward's `saved` is always null here.
size_t attention_saved_workspace(const Context&, int, int, int, float) { return 0; }

void attention_forward(const Context& ctx, float* O, float* lse, const float* Q, int ldq, const float* K,
                       const float* V, int ldkv, const int32_t* cu, int B, int H, int D, int T,
                       int n_max, float p, uint64_t key, float* /*saved*/) {
  const cudaStream_t stream = ctx.stream;
  check_shapes("attention_forward", B, H, D, ldq, ldkv);
  check_T("attention_forward", T);
  if (B == 0) return;
  check_n_max("attention_forward", T, n_max);
  Args a = make_args(ldq, ldkv, cu, B, H, D, T, n_max, p, key);
  a.O = O;
  a.lse = lse;
  a.Q = Q;
  a.K = K;
  a.V = V;
  run(Kernel::forward, a, stream);
}

void attention_backward(const Context& ctx, float* dQ, float* dK, float* dV, const float* dO, const float* O,
                        const float* Q, int ldq, const float* K, const float* V, int ldkv,
                        const float* lse, const int32_t* cu, int B, int H, int D, int T,
                        int n_max, float p, uint64_t key, const float* /*saved*/) {
  const cudaStream_t stream = ctx.stream;
  check_shapes("attention_backward", B, H, D, ldq, ldkv);
  check_T("attention_backward", T);
  if (B == 0) return;
  check_n_max("attention_backward", T, n_max);
  Args a = make_args(ldq, ldkv, cu, B, H, D, T, n_max, p, key);
  a.dQ = dQ;
  a.dK = dK;
  a.dV = dV;
  a.dO = dO;
  a.Q = Q;
  a.K = K;
  a.V = V;
  a.lse_in = lse;
  // 1. delta into dQ(i, h*D)
  const dim3 grid((unsigned)(B * H), (unsigned)((n_max + 7) / 8));
  attention_delta_kernel<<<grid, kThreads, 0, stream>>>(dQ, ldq, dO, O, cu, H, D);
  FSR_CUDA_LAUNCH_CHECK();
  run(Kernel::key, a, stream);    // 2. dK, dV (reads delta from dQ)
  run(Kernel::query, a, stream);  // 3. dQ (overwrites delta)
}

void attention_last_forward(const Context& ctx, float* O, const float* Q, int ldq, const float* K, const float* V,
                            int ldkv, const int32_t* cu, int B, int H, int D) {
  const cudaStream_t stream = ctx.stream;
  check_shapes("attention_last_forward", B, H, D, ldq, ldkv);
  if (B == 0) return;
  const float scale = 1.f / std::sqrt((float)D);
  const size_t smem = sizeof(float) * ((size_t)D + (size_t)kLastTile * padded(D) +
                                       (size_t)kLastTile * D);
  attention_last_kernel<<<(unsigned)(B * H), 32, smem, stream>>>(O, Q, ldq, K, V, ldkv, cu, H,
                                                                 D, scale);
  FSR_CUDA_LAUNCH_CHECK();
}

}  // namespace fsr::cuda
