// Top-k scoring on the GPU (twin of cpp/src/cpu/topk.cpp).
//   ids(B,K), scores(B,K) = the K best items 1..V of h(B,C) . E^T, best first (ties: the
//   lower id first), skipping excl[excl_off[b] .. excl_off[b+1]) for row b; slots left when
//   fewer than K items remain get id 0 and score -inf.  NaN scores are never selected.
// "Better" is a strict total order on (score, id): higher score, then lower id.  No B x V
// matrix exists: scores live only as tiles in shared memory.  Two kernels per pass:
//   1. partial: one block per (row group, range of item tiles) keeps each row's best
//      items of its range in a sorted list and writes it to a workspace slot (row, range);
//   2. merge: one warp per row merges the lists of all ranges and writes the output slots.
// Two partial kernels:
//   - tiled (namespace tiled, below): 128 rows x 128 items per tile, 8 x 8 register tiles,
//     a list of 16 (K <= 16) or 64 per row; used whenever its shared memory fits (C up to
//     about 300 on sm_90 with K <= 16);
//   - general (topk_partial_kernel): 16 rows x 64 items, lists of kKMax, any C.
// A list of length L gives ceil(K / L) passes: pass p fills slots [p L, (p + 1) L) with the
// best items strictly worse than the last item of pass p - 1 (each score is a sum over c in
// order with fmaf, recomputed bit for bit, so the order is consistent across passes).
// Workspace: rows x ranges x L (score, id) pairs, topk_workspace(B, C, V, K) floats, given by
// the caller (the model's inference scratch).
#include <algorithm>
#include <stdexcept>

#include "cuda/common.cuh"
#include "cuda/ops.cuh"
#include "cuda/tile.cuh"

namespace fsr::cuda {

namespace {

constexpr int kThreads = 256;  // 8 warps
constexpr int kWarps = kThreads / 32;
constexpr int kKC = tile::chunk::kKC;  // columns of C per shared-memory chunk
constexpr int kIT = tile::chunk::kIT;  // items per tile (= candidates per merge)
constexpr int kRT = 16;        // rows per block in the partial kernel
constexpr int kKMax = 128;     // list length per row and pass
constexpr int kTargetBlocks = 512;
constexpr unsigned kFull = 0xffffffffu;

// a is better than b: higher score, then lower id.  Neither score may be NaN.
__device__ inline bool better(float sa, int32_t ia, float sb, int32_t ib) {
  return sa > sb || (sa == sb && ia < ib);
}

// Where pass k0 of row `row` starts: 0 takes every item (the first pass), 1 only items
// strictly worse than output slot k0 - 1 (returned in s, id), 2 none (that slot is empty:
// the row ran out of items).
__device__ inline int pass_bound(const int32_t* ids, const float* scores, int row, int K, int k0,
                                 float& s, int32_t& id) {
  s = 0.f;
  id = 0;
  if (k0 == 0) return 0;
  const size_t o = (size_t)row * K + (k0 - 1);
  id = ids[o];
  s = scores[o];
  return id == 0 ? 2 : 1;
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

// Ss[r][j] = h[row0 + r] . E[j0 + j + 1] (0 outside), by tile::chunk::score: each thread
// sums its 1 x 4 scores over c = 0..C-1 in order with fmaf, so a score's bits do not
// depend on its tile.  Synchronises on entry and exit.
__device__ void score_tile(float (*Ss)[kIT + 1], float (*Hs)[kKC + 1], float (*Es)[kKC + 1],
                           const float* h, int row0, int B, const float* E, int j0, int V,
                           int C) {
  tile::chunk::score<kRT>(
      Ss, Hs, Es, C, [&](int r) { return row0 + r < B ? h + (size_t)(row0 + r) * C : nullptr; },
      [&](int j) { return j0 + j < V ? E + (size_t)(j0 + j + 1) * C : nullptr; });
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
      md = pass_bound(ids, scores, row, K, k0, s, id);
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

// Kernel 2: one warp per row merges its `n_cand` candidates (the per-range lists of a
// partial kernel, `n_cand` = ranges x list length, empty slots id 0) and writes output
// slots [k0, min(K, k0 + pass_len)).
__global__ void __launch_bounds__(kThreads)
topk_merge_kernel(int32_t* ids, float* scores, const float* ws_s, const int32_t* ws_i, int B,
                  int K, int k0, int n_cand, int pass_len) {
  __shared__ float ls[kWarps][kKMax];
  __shared__ int32_t li[kWarps][kKMax];
  __shared__ float bs[kWarps][kIT];
  __shared__ int32_t bi[kWarps][kIT];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const long long row = (long long)blockIdx.x * kWarps + warp;
  if (row >= B) return;  // the whole warp; no block-wide barrier follows
  int cnt = 0;
  const size_t o = (size_t)row * n_cand;
  for (int base = 0; base < n_cand; base += kIT) {
    const int a = base + lane, b = base + lane + 32;
    const int32_t i0 = a < n_cand ? ws_i[o + a] : 0, i1 = b < n_cand ? ws_i[o + b] : 0;
    const float s0 = a < n_cand ? ws_s[o + a] : 0.f, s1 = b < n_cand ? ws_s[o + b] : 0.f;
    cnt = warp_merge(ls[warp], li[warp], cnt, s0, i0, i0 != 0, s1, i1, i1 != 0, bs[warp],
                     bi[warp], lane);
  }
  const int n_out = min(pass_len, K - k0);
  for (int k = lane; k < n_out; k += 32) {
    const size_t out = (size_t)row * K + k0 + k;
    ids[out] = k < cnt ? li[warp][k] : 0;
    scores[out] = k < cnt ? ls[warp][k] : -INFINITY;
  }
}

// The passes of pass_len output slots each: launch(ws_s, ws_i, k0) runs a partial kernel
// that fills each row's n_cand workspace slots, then the merge writes the pass's slots.
// The workspace holds B x n_cand (score, id) pairs: 2 B n_cand floats.
template <typename Launch>
void run_passes(int32_t* ids, float* scores, int B, int K, int pass_len, int n_cand,
                float* workspace, cudaStream_t s, Launch launch) {
  const size_t slots = (size_t)B * (size_t)n_cand;
  float* ws_s = workspace;
  int32_t* ws_i = reinterpret_cast<int32_t*>(ws_s + slots);
  for (int k0 = 0; k0 < K; k0 += pass_len) {
    launch(ws_s, ws_i, k0);
    FSR_CUDA_LAUNCH_CHECK();
    const unsigned grid2 = (unsigned)ceil_div(B, kWarps);
    topk_merge_kernel<<<grid2, kThreads, 0, s>>>(ids, scores, ws_s, ws_i, B, K, k0, n_cand,
                                                pass_len);
    FSR_CUDA_LAUNCH_CHECK();
    if (K - k0 <= pass_len) break;  // k0 + pass_len would overflow for K near INT_MAX
  }
}

// ---------------------------------------------------------------- the tiled path
// The fast path (C <= a few hundred, any K): one block of 256 threads per (128 rows,
// range of item tiles).  The block's rows of h stay in shared memory (transposed, C padded
// to kTC with zeros); each tile of 128 items is a 128 x 128 product in which every thread
// accumulates an 8 x 8 register tile over c = 0..C-1 in order with fmaf (so a score's bits
// never depend on its tile, range or pass), the items' C columns streamed through a
// double-buffered chunk of kTC columns, the next chunk's loads in flight while this one
// computes.  The tile of scores goes to shared memory, where one thread per row keeps the
// row's best `KL` in a sorted list: a score enters only if it beats the list's worst, so
// after the first tiles almost nothing does, and exclusions are looked up only for the
// few that would enter.  Shared memory: C x 512 B + 115 KB + KL x 1 KB (224 KB max on
// sm_90); a C too wide for the device falls back to the kernel above.
namespace tiled {
constexpr int kBM = 128, kBN = 128, kTC = 32;  // rows, items, C-columns per chunk
constexpr int kESP = kBN + 4;  // row stride of the E chunk (k-major): float4-aligned
constexpr int kSSP = kBN + 4;  // row stride of the score tile: conflict-free row scans

inline size_t smem_bytes(int C, int KL) {
  const size_t CP = (size_t)ceil_div(std::max(C, 1), kTC) * kTC;
  return (CP * kBM + 2 * kTC * kESP + (size_t)kBM * kSSP + (size_t)KL * kBM) * sizeof(float) +
         (size_t)KL * kBM * sizeof(int32_t);
}

template <int KL>
__global__ void __launch_bounds__(kThreads, 1)
partial_kernel(float* __restrict__ ws_s, int32_t* __restrict__ ws_i, const float* __restrict__ h,
               const float* __restrict__ E, const int32_t* __restrict__ excl,
               const int64_t* __restrict__ excl_off, const int32_t* __restrict__ ids,
               const float* __restrict__ scores, int B, int C, int V, int K, int k0,
               int tiles_per_split, int splits, bool vec4) {
  extern __shared__ __align__(16) float sm[];
  const int CP = (max(C, 1) + kTC - 1) / kTC * kTC, nq = CP / kTC;
  float* Hs = sm;                        // [CP][kBM]
  float* Es = Hs + (size_t)CP * kBM;     // [2][kTC][kESP]
  float* Ss = Es + 2 * kTC * kESP;       // [kBM][kSSP]
  float* ls = Ss + kBM * kSSP;           // [KL][kBM]
  int32_t* li = reinterpret_cast<int32_t*>(ls + KL * kBM);  // [KL][kBM]
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int row0 = blockIdx.x * kBM, split = blockIdx.y;

  for (int idx = tid; idx < kBM * CP; idx += kThreads) {
    const int r = idx / CP, k = idx - r * CP, row = row0 + r;
    Hs[(size_t)k * kBM + r] = (row < B && k < C) ? h[(size_t)row * C + k] : 0.f;
  }
  // The state of row tid (threads 0..kBM-1): list length, entry bar, pass bound, exclusions.
  const bool owner = tid < kBM && row0 + tid < B;
  int cnt = 0, mode = 0;  // mode 0: every item, 1: strictly below the bound, 2: none left
  float thr = -INFINITY, bnd_s = 0.f;
  int32_t bnd_i = 0;
  long long e0 = 0, e1 = 0;
  if (owner) {
    const int row = row0 + tid;
    e0 = excl_off[row];
    e1 = excl_off[row + 1];
    mode = pass_bound(ids, scores, row, K, k0, bnd_s, bnd_i);
  }

  const int n_tiles = (V + kBN - 1) / kBN;
  const int t0 = split * tiles_per_split, t1 = min(n_tiles, t0 + tiles_per_split);
  const long long G = (long long)max(0, t1 - t0) * nq;  // chunks to compute
  // Chunk g: tile t0 + g / nq, columns (g % nq) kTC ..  Thread tid loads item
  // (tid >> 3) + 32 i, columns 4 (tid & 7) .. + 3 (one 16-byte load when rows are aligned).
  float4 pf[4];
  auto load = [&](long long g) {
    const int j0 = (t0 + (int)(g / nq)) * kBN;
    const int c = (int)(g % nq) * kTC + 4 * (tid & 7);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int jj = j0 + (tid >> 3) + 32 * i;
      float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
      if (jj < V && c < C) {
        const float* src = E + (size_t)(jj + 1) * C + c;
        if (vec4) {
          v = __ldg(reinterpret_cast<const float4*>(src));
        } else {
          v.x = __ldg(src);
          if (c + 1 < C) v.y = __ldg(src + 1);
          if (c + 2 < C) v.z = __ldg(src + 2);
          if (c + 3 < C) v.w = __ldg(src + 3);
        }
      }
      pf[i] = v;
    }
  };
  auto store = [&](int buf) {
    float* dst = Es + buf * kTC * kESP;
    const int k = 4 * (tid & 7);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int n = (tid >> 3) + 32 * i;
      dst[(k + 0) * kESP + n] = pf[i].x;
      dst[(k + 1) * kESP + n] = pf[i].y;
      dst[(k + 2) * kESP + n] = pf[i].z;
      dst[(k + 3) * kESP + n] = pf[i].w;
    }
  };

  float acc[8][8];
  if (G > 0) {
    load(0);
    store(0);
  }
  __syncthreads();  // Hs and the first chunk are in place
  for (long long g = 0; g < G; ++g) {
    const int q = (int)(g % nq), buf = (int)(g & 1);
    if (g + 1 < G) load(g + 1);  // in flight during this chunk's products
    if (q == 0) {
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;
    }
    const float* Hb = Hs + (size_t)q * kTC * kBM;
    const float* Eb = Es + buf * kTC * kESP;
#pragma unroll
    for (int k = 0; k < kTC; ++k) {
      const float4 a0 = *reinterpret_cast<const float4*>(Hb + k * kBM + 4 * ty);
      const float4 a1 = *reinterpret_cast<const float4*>(Hb + k * kBM + 64 + 4 * ty);
      const float4 b0 = *reinterpret_cast<const float4*>(Eb + k * kESP + 4 * tx);
      const float4 b1 = *reinterpret_cast<const float4*>(Eb + k * kESP + 64 + 4 * tx);
      const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    if (g + 1 < G) store(buf ^ 1);  // its readers (chunk g - 1) passed the last barrier
    if (q == nq - 1) {
      // Thread (ty, tx) holds rows 4 ty + i, 64 + 4 ty + i and items 4 tx + j, 64 + 4 tx + j.
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int r = (i < 4 ? 0 : 64) + 4 * ty + (i & 3);
        *reinterpret_cast<float4*>(Ss + r * kSSP + 4 * tx) =
            make_float4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
        *reinterpret_cast<float4*>(Ss + r * kSSP + 64 + 4 * tx) =
            make_float4(acc[i][4], acc[i][5], acc[i][6], acc[i][7]);
      }
      __syncthreads();
      if (owner && mode != 2) {
        const int j0 = (t0 + (int)(g / nq)) * kBN;
        const float* srow = Ss + tid * kSSP;
        // Groups of 16 scores, their four loads issued together (the list writes below
        // never touch Ss, but the compiler cannot know that).
        for (int q16 = 0; q16 < kBN / 16; ++q16) {
          float4 grp[4];
#pragma unroll
          for (int u = 0; u < 4; ++u)
            grp[u] = *reinterpret_cast<const float4*>(srow + 16 * q16 + 4 * u);
#pragma unroll
          for (int u = 0; u < 4; ++u) {
            const float4 v = grp[u];
            const int q4 = 4 * q16 + u;
            if (cnt == KL && !(fmaxf(fmaxf(v.x, v.y), fmaxf(v.z, v.w)) > thr)) continue;
            const float vs[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const float s = vs[e];
              const int32_t id = j0 + 4 * q4 + e + 1;
              if (id > V || isnan(s) || (cnt == KL && !(s > thr))) continue;
              if (mode == 1 && !(s < bnd_s || (s == bnd_s && id > bnd_i))) continue;
              bool excluded = false;
              for (long long x = e0; x < e1 && !excluded; ++x) excluded = excl[x] == id;
              if (excluded) continue;
              // Insert: ids rise through the scan, so an equal score already kept is better.
              int p = cnt < KL ? cnt : KL - 1;
              while (p > 0) {
                const float ps = ls[(p - 1) * kBM + tid];
                if (!(s > ps)) break;
                ls[p * kBM + tid] = ps;
                li[p * kBM + tid] = li[(p - 1) * kBM + tid];
                --p;
              }
              ls[p * kBM + tid] = s;
              li[p * kBM + tid] = id;
              if (cnt < KL) ++cnt;
              if (cnt == KL) thr = ls[(KL - 1) * kBM + tid];
            }
          }
        }
      }
    }
    __syncthreads();
  }
  if (owner) {
    const size_t o = ((size_t)(row0 + tid) * splits + split) * KL;
    for (int k = 0; k < KL; ++k) {
      ws_i[o + k] = k < cnt ? li[k * kBM + tid] : 0;
      ws_s[o + k] = k < cnt ? ls[k * kBM + tid] : -INFINITY;
    }
  }
}


// Ranges of item tiles per row group: one block per SM at a time (the shared memory
// allows no more), so pick the split that wastes the least of the last wave, preferring
// fewer ranges (each costs a warm-up tile and merge work).
int choose_splits(long long row_groups, long long n_tiles, int sms) {
  int best = 1;
  double best_eff = -1.0;
  for (int s = 1; s <= 64 && s <= n_tiles; ++s) {
    const long long tps = ceil_div(n_tiles, s), se = ceil_div(n_tiles, tps);
    const long long blocks = row_groups * se, waves = ceil_div(blocks, sms);
    const double eff = (double)(row_groups * n_tiles) / ((double)waves * sms * tps) - 0.002 * s;
    if (eff > best_eff + 1e-9) {
      best_eff = eff;
      best = (int)se;
    }
  }
  return best;
}

template <int KL>
void run(int32_t* ids, float* scores, const float* h, const float* E, const int32_t* excl,
         const int64_t* excl_off, int B, int C, int V, int K, size_t smem, int splits, int tps,
         float* workspace, cudaStream_t s) {
  tile::allow_smem(partial_kernel<KL>, smem);
  const long long row_groups = ceil_div(B, kBM);
  const bool vec4 = C % 4 == 0 && reinterpret_cast<uintptr_t>(E) % 16 == 0;
  const dim3 grid1((unsigned)row_groups, (unsigned)splits);
  run_passes(ids, scores, B, K, KL, splits * KL, workspace, s,
             [&](float* ws_s, int32_t* ws_i, int k0) {
               partial_kernel<KL><<<grid1, kThreads, smem, s>>>(
                   ws_s, ws_i, h, E, excl, excl_off, ids, scores, B, C, V, K, k0, tps, splits,
                   vec4);
             });
}
}  // namespace tiled

// How a call of (B, C, V, K) runs: the partial kernel, its splits of the item tiles, and
// the candidates each row keeps per pass (the workspace holds B x n_cand pairs).
struct Plan {
  int KL = 0;          // the tiled kernel's list length (16 or 64); 0: the general kernel
  size_t smem = 0;     // the tiled kernel's shared memory
  long long splits = 1, tiles_per_split = 1;
  int n_cand = 0;
};

Plan plan(int B, int C, int V, int K) {
  Plan p;
  const tile::DeviceLimits dev = tile::device_limits();
  const int KL = K <= 16 ? 16 : 64;  // a list long enough for K in one or few passes
  const size_t smem = tiled::smem_bytes(C, KL);
  if (smem <= (size_t)dev.smem_optin) {
    const long long row_groups = ceil_div(B, tiled::kBM), n_tiles = ceil_div(V, tiled::kBN);
    p.KL = KL;
    p.smem = smem;
    p.splits = n_tiles > 0 ? tiled::choose_splits(row_groups, n_tiles, dev.sms) : 1;
    p.tiles_per_split = n_tiles > 0 ? ceil_div(n_tiles, p.splits) : 1;
    p.n_cand = (int)p.splits * KL;
    return p;
  }
  // The general path (C too wide for the tiled kernel's shared memory).
  // Item ranges per row group: about kTargetBlocks blocks in kernel 1.
  const long long row_groups = ceil_div(B, kRT);
  const long long n_tiles = ceil_div(V, kIT);
  if (n_tiles > 0) {
    p.splits = std::min(n_tiles, std::max(1LL, ceil_div(kTargetBlocks, row_groups)));
    p.tiles_per_split = ceil_div(n_tiles, p.splits);
    p.splits = ceil_div(n_tiles, p.tiles_per_split);
  }
  p.n_cand = (int)p.splits * kKMax;
  return p;
}

}  // namespace

size_t topk_workspace(const Context&, int B, int C, int V, int K) {
  if (B <= 0 || K <= 0) return 0;
  return 2 * (size_t)B * (size_t)plan(B, C, V, K).n_cand;
}

void topk(const Context& ctx, int32_t* ids, float* scores, const float* h, const float* E,
          const float* /*table*/, int /*screen*/, const int32_t* excl, const int64_t* excl_off,
          int B, int C, int V, int K, float* workspace) {
  const cudaStream_t s = ctx.stream;
  if (B < 0 || C < 0 || V < 0 || K < 0)
    throw std::runtime_error(::fsr::detail::cat("topk: negative size (B=", B, ", C=", C,
                                                ", V=", V, ", K=", K, ")"));
  if (B == 0 || K == 0) return;
  if (excl_off == nullptr) throw std::runtime_error("topk: excl_off is null");
  if (workspace == nullptr) throw std::runtime_error("topk: workspace is null (topk_workspace floats needed)");
  const Plan p = plan(B, C, V, K);
  if (p.KL == 16)
    return tiled::run<16>(ids, scores, h, E, excl, excl_off, B, C, V, K, p.smem, (int)p.splits,
                          (int)p.tiles_per_split, workspace, s);
  if (p.KL == 64)
    return tiled::run<64>(ids, scores, h, E, excl, excl_off, B, C, V, K, p.smem, (int)p.splits,
                          (int)p.tiles_per_split, workspace, s);
  const dim3 grid1((unsigned)ceil_div(B, kRT), (unsigned)p.splits);
  run_passes(ids, scores, B, K, kKMax, p.n_cand, workspace, s,
             [&](float* ws_s, int32_t* ws_i, int k0) {
               topk_partial_kernel<<<grid1, kThreads, 0, s>>>(
                   ws_s, ws_i, h, E, excl, excl_off, ids, scores, B, C, V, K, k0,
                   (int)p.tiles_per_split, (int)p.splits);
             });
}

}  // namespace fsr::cuda
