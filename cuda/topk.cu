// Top-k scoring on the GPU (twin of cpp/src/cpu/topk.cpp).
//   ids(B,K), scores(B,K) = the K best items 1..V of h(B,C) . E^T, best first (ties: the
//   lower id first), skipping excl[excl_off[b] .. excl_off[b+1]) for row b; slots left when
//   fewer than K items remain get id 0 and score -inf.  NaN scores are never selected.    =
// "Better" is a strict total order on (score, id): higher score, then lower id.  No B x V
// matrix exists: the scores live only as 16 x 64 tiles (rows x items) in shared memory.
//   pass over the catalogue, in two kernels:
//   1. partial: one block per (16 rows, range of item tiles).  Each tile of scores is
//      computed a 32-column chunk of C at a time, excluded items are set to NaN, and the warp
//      owning a row merges the tile's candidates into the row's sorted list of the best
//      kKMax (shared memory).  The list is written to a workspace slot (row, range).
//   2. merge: one warp per row merges the lists of all ranges and writes the output slots.
// K <= kKMax takes one pass.  A larger K takes ceil(K / kKMax) passes: pass p fills slots
// [p kKMax, (p + 1) kKMax) with the best items strictly worse than the last item of pass
// p - 1 (scores are recomputed bit for bit, so the order is consistent across passes).
// Workspace: rows x ranges x kKMax (score, id) pairs, cudaMallocAsync'd on the stream.
#include <algorithm>
#include <stdexcept>

#include "cuda/common.cuh"
#include "cuda/ops.cuh"

namespace fsr::cuda {

namespace {

constexpr int kThreads = 256;  // 8 warps
constexpr int kWarps = kThreads / 32;
constexpr int kKC = 32;        // columns of C per shared-memory chunk
constexpr int kIT = 64;        // items per tile (= candidates per merge)
constexpr int kRT = 16;        // rows per block in the partial kernel
constexpr int kKMax = 128;     // list length per row and pass
constexpr int kTargetBlocks = 512;
constexpr unsigned kFull = 0xffffffffu;

// a is better than b: higher score, then lower id.  Neither score may be NaN.
__device__ inline bool better(float sa, int32_t ia, float sb, int32_t ib) {
  return sa > sb || (sa == sb && ia < ib);
}

// Merges up to 64 candidates, two per lane ((s0, i0) if v0, (s1, i1) if v1), into the list
// ls/li of cnt entries sorted best first, keeping the best kKMax; returns the new count.
// Called by all 32 lanes of a warp with the same cnt.  Requires every candidate id to
// differ from the other candidates' and the list's, and no NaN score.  bs/bi: 64 entries of
// per-warp scratch.
__device__ int warp_merge(float* ls, int32_t* li, int cnt, float s0, int32_t i0, bool v0,
                          float s1, int32_t i1, bool v1, float* bs, int32_t* bi, int lane) {
  if (cnt == kKMax) {  // full: a candidate must beat the worst kept entry
    const float ws = ls[kKMax - 1];
    const int32_t wi = li[kKMax - 1];
    v0 = v0 && better(s0, i0, ws, wi);
    v1 = v1 && better(s1, i1, ws, wi);
  }
  const unsigned m0 = __ballot_sync(kFull, v0), m1 = __ballot_sync(kFull, v1);
  const int n0 = __popc(m0);
  const int m = n0 + __popc(m1);
  if (m == 0) return cnt;  // warp-uniform
  const unsigned below = (1u << lane) - 1u;
  if (v0) {
    const int p = __popc(m0 & below);
    bs[p] = s0;
    bi[p] = i0;
  }
  if (v1) {
    const int p = n0 + __popc(m1 & below);
    bs[p] = s1;
    bi[p] = i1;
  }
  __syncwarp();
  // Rank in the merged order = number of better entries (the order is strict).
  constexpr int LA = kKMax / 32;
  float as[LA];
  int32_t ai[LA];
  int ar[LA];
#pragma unroll
  for (int t = 0; t < LA; ++t) {
    const int a = lane + 32 * t;
    as[t] = 0.f;
    ai[t] = 0;
    ar[t] = kKMax;  // not written
    if (a < cnt) {
      as[t] = ls[a];
      ai[t] = li[a];
      int rank = a;  // the list is sorted: a entries of it are better
      for (int k = 0; k < m; ++k) rank += better(bs[k], bi[k], as[t], ai[t]) ? 1 : 0;
      ar[t] = rank;
    }
  }
  float cs[2];
  int32_t ci[2];
  int cr[2];
#pragma unroll
  for (int t = 0; t < 2; ++t) {
    const int b = lane + 32 * t;
    cs[t] = 0.f;
    ci[t] = 0;
    cr[t] = kKMax;
    if (b < m) {
      cs[t] = bs[b];
      ci[t] = bi[b];
      int rank = 0;
      for (int a = 0; a < cnt; ++a) rank += better(ls[a], li[a], cs[t], ci[t]) ? 1 : 0;
      for (int k = 0; k < m; ++k) rank += better(bs[k], bi[k], cs[t], ci[t]) ? 1 : 0;
      cr[t] = rank;
    }
  }
  __syncwarp();  // all reads of the old list and of bs/bi are done
#pragma unroll
  for (int t = 0; t < LA; ++t)
    if (ar[t] < kKMax) {
      ls[ar[t]] = as[t];
      li[ar[t]] = ai[t];
    }
#pragma unroll
  for (int t = 0; t < 2; ++t)
    if (cr[t] < kKMax) {
      ls[cr[t]] = cs[t];
      li[cr[t]] = ci[t];
    }
  __syncwarp();
  return min(kKMax, cnt + m);
}

// Ss[r][j] = h[row0 + r] . E[j0 + j + 1] (0 outside).  Each thread sums its 1 x 4 scores
// over c = 0..C-1 in order with fmaf, so a score's bits do not depend on its tile.
// Synchronises on entry and exit.
__device__ void score_tile(float (*Ss)[kIT + 1], float (*Hs)[kKC + 1], float (*Es)[kKC + 1],
                           const float* h, int row0, int B, const float* E, int j0, int V,
                           int C) {
  constexpr int RA = kRT / 16, IB = kIT / 16;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[RA][IB];
#pragma unroll
  for (int a = 0; a < RA; ++a)
#pragma unroll
    for (int b = 0; b < IB; ++b) acc[a][b] = 0.f;
  for (int c0 = 0; c0 < C; c0 += kKC) {
    __syncthreads();  // earlier readers of Hs / Es are done
    for (int idx = threadIdx.x; idx < kRT * kKC; idx += kThreads) {
      const int r = idx / kKC, k = idx % kKC;
      const int row = row0 + r, c = c0 + k;
      Hs[r][k] = (row < B && c < C) ? h[(size_t)row * C + c] : 0.f;
    }
    for (int idx = threadIdx.x; idx < kIT * kKC; idx += kThreads) {
      const int j = idx / kKC, k = idx % kKC;
      const int jj = j0 + j, c = c0 + k;
      Es[j][k] = (jj < V && c < C) ? E[(size_t)(jj + 1) * C + c] : 0.f;
    }
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

// Kernel 1.  Block (x, y): rows blockIdx.x * kRT .. + kRT, item tiles
// [y * tiles_per_split, min(n_tiles, (y + 1) * tiles_per_split)).  Pass k0 > 0 only takes
// items strictly worse than the row's output slot k0 - 1 (none if that slot is empty).
// Writes ws_s/ws_i[(row * splits + y) * kKMax + k], best first, empty slots (-inf, 0).
__global__ void __launch_bounds__(kThreads)
topk_partial_kernel(float* ws_s, int32_t* ws_i, const float* h, const float* E,
                    const int32_t* excl, const int64_t* excl_off, const int32_t* ids,
                    const float* scores, int B, int C, int V, int K, int k0,
                    int tiles_per_split, int splits) {
  __shared__ float Hs[kRT][kKC + 1];
  __shared__ float Es[kIT][kKC + 1];
  __shared__ float Ss[kRT][kIT + 1];
  __shared__ float ls[kRT][kKMax];
  __shared__ int32_t li[kRT][kKMax];
  __shared__ float bs[kWarps][kIT];
  __shared__ int32_t bi[kWarps][kIT];
  __shared__ float bound_s[kRT];
  __shared__ int32_t bound_i[kRT];
  __shared__ int mode[kRT];  // 0: every item, 1: below the bound, 2: nothing left
  __shared__ long long ex0[kRT], ex1[kRT];
  constexpr int RPW = kRT / kWarps;  // rows owned by each warp
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row0 = blockIdx.x * kRT;
  const int split = blockIdx.y;

  if (threadIdx.x < kRT) {
    const int r = threadIdx.x, row = row0 + r;
    int md = 0;
    float s = 0.f;
    int32_t id = 0;
    long long e0 = 0, e1 = 0;
    if (row < B) {
      e0 = excl_off[row];
      e1 = excl_off[row + 1];
      if (k0 > 0) {
        const size_t o = (size_t)row * K + (k0 - 1);
        id = ids[o];
        s = scores[o];
        md = id == 0 ? 2 : 1;
      }
    }
    mode[r] = md;
    bound_s[r] = s;
    bound_i[r] = id;
    ex0[r] = e0;
    ex1[r] = e1;
  }
  __syncthreads();

  int cnt[RPW];
#pragma unroll
  for (int q = 0; q < RPW; ++q) cnt[q] = 0;
  const int n_tiles = (int)(((long long)V + kIT - 1) / kIT);
  const int t0 = split * tiles_per_split;
  const int t1 = min(n_tiles, t0 + tiles_per_split);
  for (int t = t0; t < t1; ++t) {
    const int j0 = t * kIT;
    score_tile(Ss, Hs, Es, h, row0, B, E, j0, V, C);
    // Excluded items of the tile -> NaN (never selected).
    for (int r = 0; r < kRT; ++r)
      for (long long e = ex0[r] + threadIdx.x; e < ex1[r]; e += kThreads) {
        const int32_t x = excl[e];
        if (x >= 1 && x <= V) {
          const int j = x - 1 - j0;
          if (j >= 0 && j < kIT) Ss[r][j] = __int_as_float(0x7fffffff);
        }
      }
    __syncthreads();
#pragma unroll
    for (int q = 0; q < RPW; ++q) {
      const int r = warp * RPW + q;
      if (row0 + r >= B || mode[r] == 2) continue;  // warp-uniform
      const int32_t id0 = j0 + lane + 1, id1 = j0 + lane + 33;
      const float s0 = Ss[r][lane], s1 = Ss[r][lane + 32];
      bool v0 = id0 <= V && !isnan(s0);
      bool v1 = id1 <= V && !isnan(s1);
      if (mode[r] == 1) {
        v0 = v0 && better(bound_s[r], bound_i[r], s0, id0);
        v1 = v1 && better(bound_s[r], bound_i[r], s1, id1);
      }
      cnt[q] = warp_merge(ls[r], li[r], cnt[q], s0, id0, v0, s1, id1, v1, bs[warp], bi[warp],
                          lane);
    }
    // The next score_tile synchronises before it overwrites Ss.
  }
#pragma unroll
  for (int q = 0; q < RPW; ++q) {
    const int r = warp * RPW + q, row = row0 + r;
    if (row >= B) continue;
    for (int k = lane; k < kKMax; k += 32) {
      const size_t o = ((size_t)row * splits + split) * kKMax + k;
      ws_i[o] = k < cnt[q] ? li[r][k] : 0;
      ws_s[o] = k < cnt[q] ? ls[r][k] : -INFINITY;
    }
  }
}

// Kernel 2: one warp per row merges the `splits` lists of kernel 1 and writes output slots
// [k0, min(K, k0 + kKMax)).
__global__ void __launch_bounds__(kThreads)
topk_merge_kernel(int32_t* ids, float* scores, const float* ws_s, const int32_t* ws_i, int B,
                  int K, int k0, int splits) {
  __shared__ float ls[kWarps][kKMax];
  __shared__ int32_t li[kWarps][kKMax];
  __shared__ float bs[kWarps][kIT];
  __shared__ int32_t bi[kWarps][kIT];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const long long row = (long long)blockIdx.x * kWarps + warp;
  if (row >= B) return;  // the whole warp; no block-wide barrier follows
  int cnt = 0;
  for (int sp = 0; sp < splits; ++sp)
    for (int base = 0; base < kKMax; base += kIT) {
      const size_t o = ((size_t)row * splits + sp) * kKMax + base;
      const int32_t i0 = ws_i[o + lane], i1 = ws_i[o + lane + 32];
      const float s0 = ws_s[o + lane], s1 = ws_s[o + lane + 32];
      cnt = warp_merge(ls[warp], li[warp], cnt, s0, i0, i0 != 0, s1, i1, i1 != 0, bs[warp],
                       bi[warp], lane);
    }
  const int n_out = min(kKMax, K - k0);
  for (int k = lane; k < n_out; k += 32) {
    const size_t o = (size_t)row * K + k0 + k;
    ids[o] = k < cnt ? li[warp][k] : 0;
    scores[o] = k < cnt ? ls[warp][k] : -INFINITY;
  }
}

}  // namespace

void topk_forward(int32_t* ids, float* scores, const float* h, const float* E,
                  const int32_t* excl, const int64_t* excl_off, int B, int C, int V, int K,
                  cudaStream_t s) {
  if (B < 0 || C < 0 || V < 0 || K < 0)
    throw std::runtime_error(::fsr::detail::cat("topk_forward: negative size (B=", B, ", C=", C,
                                                ", V=", V, ", K=", K, ")"));
  if (B == 0 || K == 0) return;
  if (excl_off == nullptr) throw std::runtime_error("topk_forward: excl_off is null");
  // Item ranges per row group: about kTargetBlocks blocks in kernel 1.
  const long long row_groups = ceil_div(B, kRT);
  const long long n_tiles = ceil_div(V, kIT);
  long long splits = 1, tiles_per_split = 1;
  if (n_tiles > 0) {
    splits = std::min(n_tiles, std::max(1LL, ceil_div(kTargetBlocks, row_groups)));
    tiles_per_split = ceil_div(n_tiles, splits);
    splits = ceil_div(n_tiles, tiles_per_split);
  }
  const size_t slots = (size_t)B * (size_t)splits * kKMax;
  void* ws = nullptr;
  FSR_CUDA_CHECK(cudaMallocAsync(&ws, slots * (sizeof(float) + sizeof(int32_t)), s));
  float* ws_s = static_cast<float*>(ws);
  int32_t* ws_i = reinterpret_cast<int32_t*>(ws_s + slots);
  try {
    for (int k0 = 0; k0 < K; k0 += kKMax) {
      const dim3 grid1((unsigned)row_groups, (unsigned)splits);
      topk_partial_kernel<<<grid1, kThreads, 0, s>>>(ws_s, ws_i, h, E, excl, excl_off, ids,
                                                    scores, B, C, V, K, k0,
                                                    (int)tiles_per_split, (int)splits);
      FSR_CUDA_LAUNCH_CHECK();
      const unsigned grid2 = (unsigned)ceil_div(B, kWarps);
      topk_merge_kernel<<<grid2, kThreads, 0, s>>>(ids, scores, ws_s, ws_i, B, K, k0,
                                                  (int)splits);
      FSR_CUDA_LAUNCH_CHECK();
      if (K - k0 <= kKMax) break;  // k0 + kKMax would overflow for K near INT_MAX
    }
  } catch (...) {
    cudaFreeAsync(ws, s);
    throw;
  }
  FSR_CUDA_CHECK(cudaFreeAsync(ws, s));
}

}  // namespace fsr::cuda
