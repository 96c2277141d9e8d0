// Full softmax cross-entropy on the GPU (twin of cpp/src/cpu/loss_softmax.cpp), items 1..V.
//   s(r, i) = h_r . E[i] for i = 1..V
//   forward : loss(R) = logsumexp_i s(r, i) - s(r, tgt_r)                            =
//   backward (grad_scale != 0): ds = grad_scale * (softmax(s) - onehot(tgt))
//             dh(R,C) = ds E[1:]                                                     =
//             dE[1:] += ds^T h                                                        +=
// Fused: the logits never exist as an R x V matrix.  Widths C <= 128 take the tiled path
// shared with the sampled softmax (cuda/loss_softmax_tiled.cuh: 64 x 64 logit tiles in
// registers).  Wider ones take the kernels below, whose logits are 32 x 64 tiles in shared
// memory, computed a 32-column chunk of C at a time:
//   kernel 1 (one block per 32 rows): online log-sum-exp over all item tiles -> loss, lse;
//             then, when training, a second pass recomputes each tile, turns it into
//             ds = grad_scale * (exp(s - lse) - onehot) and accumulates dh = ds E.
//   kernel 2 (one block per 64 items x a range of row tiles): recomputes the tiles of its
//             items and accumulates dE[item] += ds^T h; with one row range the block owns
//             its dE rows (plain read-modify-write), with several it sums into a private
//             scratch slice and adds that to dE atomically at the end.
// The logits are recomputed bit for bit (same summation order), so ds matches lse exactly.
// workspace (floats): lse(R), then (C > 128, kernel 2 splitting the rows) splits x V x C
// scratch.
#include <algorithm>
#include <stdexcept>

#include "cuda/common.cuh"
#include "cuda/ops.cuh"
#include "cuda/loss_softmax_tiled.cuh"

namespace fsr::cuda {

namespace {

constexpr int kThreads = 256;  // 8 warps
constexpr int kKC = 32;        // columns of C per shared-memory chunk
constexpr int kIT = 64;        // items per tile
constexpr int kRT = 32;        // rows per tile
constexpr int kTargetBlocks = 256;


// Hs[r][k] = h[row0 + r][c0 + k], 0 outside the matrix.
__device__ inline void load_rows_chunk(float (*Hs)[kKC + 1], const float* h, int row0, int R,
                                       int C, int c0) {
  for (int idx = threadIdx.x; idx < kRT * kKC; idx += kThreads) {
    const int r = idx / kKC, k = idx % kKC;
    const int row = row0 + r, c = c0 + k;
    Hs[r][k] = (row < R && c < C) ? h[(size_t)row * C + c] : 0.f;
  }
}

// Es[j][k] = E[item j0 + j][c0 + k] with item index jj = j0 + j (id jj + 1), 0 outside.
__device__ inline void load_items_chunk(float (*Es)[kKC + 1], const float* E, int j0, int V,
                                        int C, int c0) {
  for (int idx = threadIdx.x; idx < kIT * kKC; idx += kThreads) {
    const int j = idx / kKC, k = idx % kKC;
    const int jj = j0 + j, c = c0 + k;
    Es[j][k] = (jj < V && c < C) ? E[(size_t)(jj + 1) * C + c] : 0.f;
  }
}

// Ss[r][j] = h[row0 + r] . E[j0 + j + 1] (0 outside).  Each thread sums its 2 x 4 logits
// over c = 0..C-1 in order with fmaf, so a logit's bits do not depend on its tile.
// Synchronises on entry and exit.
__device__ void score_tile(float (*Ss)[kIT + 1], float (*Hs)[kKC + 1], float (*Es)[kKC + 1],
                           const float* h, int row0, int R, const float* E, int j0, int V,
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
    load_rows_chunk(Hs, h, row0, R, C, c0);
    load_items_chunk(Es, E, j0, V, C, c0);
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

// Ss[r][j] <- grad_scale * (exp(s - lse[row]) - [item == target]), 0 outside.
__device__ void to_grad(float (*Ss)[kIT + 1], int row0, int R, int j0, int V,
                        const int32_t* targets, const float* lse, float gs) {
  for (int idx = threadIdx.x; idx < kRT * kIT; idx += kThreads) {
    const int r = idx / kIT, j = idx % kIT;
    const int row = row0 + r, jj = j0 + j;
    float p = 0.f;
    if (row < R && jj < V) {
      p = expf(Ss[r][j] - lse[row]) * gs;
      if (targets[row] == jj + 1) p -= gs;
    }
    Ss[r][j] = p;
  }
  __syncthreads();
}

// One block per kRT rows: loss, lse; when gs != 0, dh.
__global__ void __launch_bounds__(kThreads)
softmax_rows_kernel(float* loss, float* dh, float* lse, const float* h, const float* E,
                    const int32_t* targets, int R, int C, int V, float gs) {
  __shared__ float Hs[kRT][kKC + 1];
  __shared__ float Es[kIT][kKC + 1];
  __shared__ float Ss[kRT][kIT + 1];
  constexpr int RPW = kRT / 8;  // rows owned by each warp in the log-sum-exp pass
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row0 = blockIdx.x * kRT;

  // Pass 1: online log-sum-exp.  Every lane of the owning warp holds the same m, z, st.
  float m[RPW], z[RPW], st[RPW];
  int tg[RPW];
#pragma unroll
  for (int q = 0; q < RPW; ++q) {
    const int row = row0 + warp * RPW + q;
    m[q] = -INFINITY;
    z[q] = 0.f;
    st[q] = __int_as_float(0x7fffffff);  // NaN unless the target is seen (ids 1..V)
    tg[q] = row < R ? targets[row] : 0;
  }
  for (int j0 = 0; j0 < V; j0 += kIT) {
    score_tile(Ss, Hs, Es, h, row0, R, E, j0, V, C);
#pragma unroll
    for (int q = 0; q < RPW; ++q) {
      const int r = warp * RPW + q;
      if (row0 + r >= R) continue;  // warp-uniform
      const float v0 = j0 + lane < V ? Ss[r][lane] : -INFINITY;
      const float v1 = j0 + lane + 32 < V ? Ss[r][lane + 32] : -INFINITY;
      const float mn = fmaxf(m[q], warp_max(fmaxf(v0, v1)));
      const bool any = mn != -INFINITY;
      const float e = warp_sum(any ? expf(v0 - mn) + expf(v1 - mn) : 0.f);
      if (any) {
        z[q] = z[q] * expf(m[q] - mn) + e;
        m[q] = mn;
      }
      const int jt = tg[q] - 1 - j0;
      if (jt >= 0 && jt < kIT && tg[q] - 1 < V) st[q] = Ss[r][jt];
    }
  }
#pragma unroll
  for (int q = 0; q < RPW; ++q) {
    const int row = row0 + warp * RPW + q;
    if (row < R && lane == 0) {
      const float l = m[q] + logf(z[q]);
      lse[row] = l;
      loss[row] = l - st[q];
    }
  }
  if (gs == 0.f) return;  // uniform over the block
  __syncthreads();        // lse of the block's rows visible to all its threads

  // Pass 2: dh = ds E.  Thread (ty8, tx32) owns dh[row0 + ty8 + 8a][c0 + tx32].
  constexpr int RA = kRT / 8;
  const int tx32 = lane, ty8 = warp;
  for (int c0 = 0; c0 < C; c0 += kKC)
#pragma unroll
    for (int a = 0; a < RA; ++a) {
      const int row = row0 + ty8 + 8 * a, c = c0 + tx32;
      if (row < R && c < C) dh[(size_t)row * C + c] = 0.f;
    }
  for (int j0 = 0; j0 < V; j0 += kIT) {
    score_tile(Ss, Hs, Es, h, row0, R, E, j0, V, C);
    to_grad(Ss, row0, R, j0, V, targets, lse, gs);
    for (int c0 = 0; c0 < C; c0 += kKC) {
      __syncthreads();  // earlier readers of Es are done
      load_items_chunk(Es, E, j0, V, C, c0);
      __syncthreads();
#pragma unroll
      for (int a = 0; a < RA; ++a) {
        const int r = ty8 + 8 * a;
        float acc = 0.f;
#pragma unroll 8
        for (int j = 0; j < kIT; ++j) acc = fmaf(Ss[r][j], Es[j][tx32], acc);
        const int row = row0 + r, c = c0 + tx32;
        if (row < R && c < C) dh[(size_t)row * C + c] += acc;
      }
    }
  }
}

// One block per (kIT items, range of row tiles): dE[1:] += ds^T h.  Thread (ty8, tx32) owns
// item j0 + ty8 + 8a, column c0 + tx32.  scratch == nullptr: a single row range, the block
// owns its dE rows.  Otherwise it sums into scratch[split][item][c] and adds that to dE.
__global__ void __launch_bounds__(kThreads)
softmax_items_kernel(float* dE, float* scratch, const float* h, const float* E,
                     const int32_t* targets, const float* lse, int R, int C, int V, float gs,
                     int tiles_per_split) {
  __shared__ float Hs[kRT][kKC + 1];
  __shared__ float Es[kIT][kKC + 1];
  __shared__ float Ss[kRT][kIT + 1];
  constexpr int IA = kIT / 8;
  const int tx32 = threadIdx.x & 31, ty8 = threadIdx.x >> 5;
  const int j0 = blockIdx.x * kIT;
  const int split = blockIdx.y;
  const int row_tiles = (int)(((long long)R + kRT - 1) / kRT);
  const int t0 = split * tiles_per_split;
  const int t1 = min(row_tiles, t0 + tiles_per_split);
  float* slice = scratch ? scratch + (size_t)split * V * C : nullptr;
  if (slice)
    for (int c0 = 0; c0 < C; c0 += kKC)
#pragma unroll
      for (int a = 0; a < IA; ++a) {
        const int jj = j0 + ty8 + 8 * a, c = c0 + tx32;
        if (jj < V && c < C) slice[(size_t)jj * C + c] = 0.f;
      }
  for (int t = t0; t < t1; ++t) {
    const int r0 = t * kRT;
    score_tile(Ss, Hs, Es, h, r0, R, E, j0, V, C);
    to_grad(Ss, r0, R, j0, V, targets, lse, gs);
    for (int c0 = 0; c0 < C; c0 += kKC) {
      __syncthreads();  // earlier readers of Hs are done
      load_rows_chunk(Hs, h, r0, R, C, c0);
      __syncthreads();
#pragma unroll
      for (int a = 0; a < IA; ++a) {
        const int j = ty8 + 8 * a;
        float acc = 0.f;
#pragma unroll 8
        for (int r = 0; r < kRT; ++r) acc = fmaf(Ss[r][j], Hs[r][tx32], acc);
        const int jj = j0 + j, c = c0 + tx32;
        if (jj < V && c < C) {
          if (slice) slice[(size_t)jj * C + c] += acc;
          else dE[(size_t)(jj + 1) * C + c] += acc;
        }
      }
    }
  }
  if (slice)
    for (int c0 = 0; c0 < C; c0 += kKC)
#pragma unroll
      for (int a = 0; a < IA; ++a) {
        const int jj = j0 + ty8 + 8 * a, c = c0 + tx32;
        if (jj < V && c < C) atomicAdd(&dE[(size_t)(jj + 1) * C + c], slice[(size_t)jj * C + c]);
      }
}

RowSplit row_split(int R, int V) { return cuda::row_split(R, V, kRT, kIT, kTargetBlocks); }
long long max_splits(int R, int V) { return cuda::max_splits(R, V, kRT, kIT, kTargetBlocks); }

}  // namespace

size_t softmax_workspace(int R, int C, int V) {
  if (R <= 0) return 0;
  if (C <= softmax_tiled::kMaxC) return (size_t)R;
  const long long splits = max_splits(R, V);
  const size_t scratch = splits > 1 ? (size_t)splits * std::max(V, 0) * std::max(C, 0) : 0;
  return (size_t)R + scratch;
}

void softmax_loss(float* loss, float* dh, float* dE, const float* h, const float* E,
                  const int32_t* targets, int R, int C, int V, float grad_scale, float* workspace,
                  cudaStream_t s) {
  if (R < 0 || C < 0 || V < 0)
    throw std::runtime_error(::fsr::detail::cat("softmax_loss: negative size (R=", R, ", C=", C,
                                                ", V=", V, ")"));
  if (R == 0) return;
  if (V < 1) throw std::runtime_error("softmax_loss: needs at least one item (V >= 1)");
  if (workspace == nullptr)
    throw std::runtime_error("softmax_loss: workspace is null (softmax_workspace floats needed)");
  const bool grad = grad_scale != 0.f;
  if (grad && (dh == nullptr || dE == nullptr))
    throw std::runtime_error("softmax_loss: dh and dE are needed when grad_scale != 0");
  float* lse = workspace;
  if (C <= softmax_tiled::kMaxC)
    return softmax_tiled::run<false>(loss, dh, dE, lse, h, E, targets, nullptr, R, C, V,
                                     grad_scale, s);
  const unsigned row_blocks = (unsigned)ceil_div(R, kRT);
  softmax_rows_kernel<<<row_blocks, kThreads, 0, s>>>(loss, dh, lse, h, E, targets, R, C, V,
                                                     grad_scale);
  FSR_CUDA_LAUNCH_CHECK();
  if (!grad) return;
  const RowSplit sp = row_split(R, V);
  float* scratch = sp.splits > 1 ? workspace + R : nullptr;
  const dim3 grid((unsigned)ceil_div(V, kIT), (unsigned)sp.splits);
  softmax_items_kernel<<<grid, kThreads, 0, s>>>(dE, scratch, h, E, targets, lse, R, C, V,
                                                grad_scale, sp.tiles_per_split);
  FSR_CUDA_LAUNCH_CHECK();
}

}  // namespace fsr::cuda
