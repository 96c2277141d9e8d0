// Sampled softmax on the GPU (twin of cpp/src/cpu/loss_sampled_softmax.cpp): N negatives
// shared by every row of the batch.
//   s_pos(r) = h_r . E[tgt_r];   s(r, j) = h_r . E[neg_j], set to -inf where neg_j == tgt_r
//   forward : loss(R) = logsumexp(s_pos, s(r, :)) - s_pos                              =
//   backward (grad_scale != 0), with softmax probabilities p_pos, p_j over [s_pos, s(r, :)]:
//             ds(r, j) = grad_scale * p_j;  ds_pos = grad_scale * (p_pos - 1)
//             dh(R,C) = ds_pos E[tgt] + ds En        (En = E[neg], N x C)               =
//             dE[neg_j] += (ds^T h)_j;  dE[tgt_r] += ds_pos h_r                         +=
// Fused: the logits never exist as an R x N matrix.  Widths C <= 128 take the tiled path
// shared with the full softmax (cuda/loss_softmax_tiled.cuh: 64 x 64 logit tiles in
// registers).  Wider ones take the kernels below, whose logits are 32 x 64 tiles in shared
// memory, computed a 32-column chunk of C at a time:
//   kernel 1 (one block per 32 rows): s_pos by one warp per row, online log-sum-exp over the
//             negative tiles -> loss, lse; when training, a second pass recomputes each tile,
//             turns it into ds = grad_scale * exp(s - lse) (0 where masked), accumulates
//             dh = ds En, then adds ds_pos E[tgt] to dh and ds_pos h_r to dE[tgt] (atomicAdd).
//   kernel 2 (one block per 64 negatives x a range of row tiles): recomputes the tiles of its
//             negatives and sums ds^T h into a private scratch slice, then adds the slice to
//             dE[neg_j] with atomicAdd (negatives may repeat).
// The logits are recomputed bit for bit (same summation order), so ds matches lse exactly.
// workspace (floats): lse(R), then (C > 128) splits x N x C scratch for kernel 2.
#include <algorithm>
#include <stdexcept>

#include "cuda/common.cuh"
#include "cuda/ops.cuh"
#include "cuda/loss_softmax_tiled.cuh"

namespace fsr::cuda {

namespace {

constexpr int kThreads = 256;  // 8 warps
constexpr int kKC = 32;        // columns of C per shared-memory chunk
constexpr int kIT = 64;        // negatives per tile
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

// Es[j][k] = E[neg[j0 + j]][c0 + k], 0 outside.
__device__ inline void load_items_chunk(float (*Es)[kKC + 1], const float* E, const int32_t* neg,
                                        int j0, int N, int C, int c0) {
  for (int idx = threadIdx.x; idx < kIT * kKC; idx += kThreads) {
    const int j = idx / kKC, k = idx % kKC;
    const int jj = j0 + j, c = c0 + k;
    Es[j][k] = (jj < N && c < C) ? E[(size_t)neg[jj] * C + c] : 0.f;
  }
}

// Ss[r][j] = h[row0 + r] . E[neg[j0 + j]] (0 outside; the target mask is applied by the
// callers).  Each thread sums its 2 x 4 logits over c = 0..C-1 in order with fmaf, so a
// logit's bits do not depend on its tile.  Synchronises on entry and exit.
__device__ void score_tile(float (*Ss)[kIT + 1], float (*Hs)[kKC + 1], float (*Es)[kKC + 1],
                           const float* h, int row0, int R, const float* E, const int32_t* neg,
                           int j0, int N, int C) {
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
    load_items_chunk(Es, E, neg, j0, N, C, c0);
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

// Ss[r][j] <- grad_scale * exp(s - lse[row]); 0 where neg_j == tgt_row and outside.
__device__ void to_grad(float (*Ss)[kIT + 1], int row0, int R, int j0, int N,
                        const int32_t* targets, const int32_t* neg, const float* lse, float gs) {
  for (int idx = threadIdx.x; idx < kRT * kIT; idx += kThreads) {
    const int r = idx / kIT, j = idx % kIT;
    const int row = row0 + r, jj = j0 + j;
    float p = 0.f;
    if (row < R && jj < N && neg[jj] != targets[row]) p = expf(Ss[r][j] - lse[row]) * gs;
    Ss[r][j] = p;
  }
  __syncthreads();
}

// One block per kRT rows: loss, lse; when gs != 0, dh and the target rows of dE.
__global__ void __launch_bounds__(kThreads)
sampled_rows_kernel(float* loss, float* dh, float* dE, float* lse, const float* h,
                    const float* E, const int32_t* targets, const int32_t* neg, int R, int C,
                    int N, float gs) {
  __shared__ float Hs[kRT][kKC + 1];
  __shared__ float Es[kIT][kKC + 1];
  __shared__ float Ss[kRT][kIT + 1];
  __shared__ float dpos[kRT];
  __shared__ int32_t tgt[kRT];
  constexpr int RPW = kRT / 8;  // rows owned by each warp in the log-sum-exp pass
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row0 = blockIdx.x * kRT;

  // Pass 1: s_pos, then the online log-sum-exp started from [s_pos] (m = s_pos, z = 1).
  // Every lane of the owning warp holds the same m, z, sp.
  float m[RPW], z[RPW], sp[RPW];
  int tg[RPW];
#pragma unroll
  for (int q = 0; q < RPW; ++q) {
    const int row = row0 + warp * RPW + q;
    tg[q] = 0;
    sp[q] = 0.f;
    m[q] = -INFINITY;
    z[q] = 0.f;
    if (row < R) {  // warp-uniform
      const int t = targets[row];
      float d = 0.f;
      for (int c = lane; c < C; c += 32)
        d = fmaf(h[(size_t)row * C + c], E[(size_t)t * C + c], d);
      tg[q] = t;
      sp[q] = warp_sum(d);
      m[q] = sp[q];
      z[q] = 1.f;
    }
  }
  for (int j0 = 0; j0 < N; j0 += kIT) {
    score_tile(Ss, Hs, Es, h, row0, R, E, neg, j0, N, C);
#pragma unroll
    for (int q = 0; q < RPW; ++q) {
      const int r = warp * RPW + q;
      if (row0 + r >= R) continue;  // warp-uniform
      const int jj0 = j0 + lane, jj1 = j0 + lane + 32;
      const float v0 = (jj0 < N && neg[jj0] != tg[q]) ? Ss[r][lane] : -INFINITY;
      const float v1 = (jj1 < N && neg[jj1] != tg[q]) ? Ss[r][lane + 32] : -INFINITY;
      const float mn = fmaxf(m[q], warp_max(fmaxf(v0, v1)));
      const bool any = mn != -INFINITY;
      const float e = warp_sum(any ? expf(v0 - mn) + expf(v1 - mn) : 0.f);
      if (any) {
        z[q] = z[q] * expf(m[q] - mn) + e;
        m[q] = mn;
      }
    }
  }
#pragma unroll
  for (int q = 0; q < RPW; ++q) {
    const int r = warp * RPW + q, row = row0 + r;
    if (lane == 0) {
      float d = 0.f;
      if (row < R) {
        const float l = m[q] + logf(z[q]);
        lse[row] = l;
        loss[row] = l - sp[q];
        d = gs * (expf(sp[q] - l) - 1.f);
      }
      dpos[r] = d;
      tgt[r] = tg[q];
    }
  }
  if (gs == 0.f) return;  // uniform over the block
  __syncthreads();        // lse, dpos, tgt visible to all the block's threads

  // Pass 2: dh = ds En + ds_pos E[tgt].  Thread (ty8, tx32) owns dh[row0 + ty8 + 8a][c0 + tx32].
  constexpr int RA = kRT / 8;
  const int tx32 = lane, ty8 = warp;
  for (int c0 = 0; c0 < C; c0 += kKC)
#pragma unroll
    for (int a = 0; a < RA; ++a) {
      const int row = row0 + ty8 + 8 * a, c = c0 + tx32;
      if (row < R && c < C) dh[(size_t)row * C + c] = 0.f;
    }
  for (int j0 = 0; j0 < N; j0 += kIT) {
    score_tile(Ss, Hs, Es, h, row0, R, E, neg, j0, N, C);
    to_grad(Ss, row0, R, j0, N, targets, neg, lse, gs);
    for (int c0 = 0; c0 < C; c0 += kKC) {
      __syncthreads();  // earlier readers of Es are done
      load_items_chunk(Es, E, neg, j0, N, C, c0);
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
  for (int c0 = 0; c0 < C; c0 += kKC)
#pragma unroll
    for (int a = 0; a < RA; ++a) {
      const int r = ty8 + 8 * a, row = row0 + r, c = c0 + tx32;
      if (row < R && c < C) {
        const float d = dpos[r];
        const size_t t = (size_t)tgt[r] * C + c;
        dh[(size_t)row * C + c] += d * E[t];
        atomicAdd(&dE[t], d * h[(size_t)row * C + c]);
      }
    }
}

// One block per (kIT negatives, range of row tiles): slice[j][c] = sum over its rows of
// ds(r, j) h[r][c], then dE[neg_j] += slice[j] (atomicAdd).  Thread (ty8, tx32) owns
// negative j0 + ty8 + 8a, column c0 + tx32 of the block's private slice.
__global__ void __launch_bounds__(kThreads)
sampled_items_kernel(float* dE, float* scratch, const float* h, const float* E,
                     const int32_t* targets, const int32_t* neg, const float* lse, int R, int C,
                     int N, float gs, int tiles_per_split) {
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
  float* slice = scratch + (size_t)split * N * C;
  for (int c0 = 0; c0 < C; c0 += kKC)
#pragma unroll
    for (int a = 0; a < IA; ++a) {
      const int jj = j0 + ty8 + 8 * a, c = c0 + tx32;
      if (jj < N && c < C) slice[(size_t)jj * C + c] = 0.f;
    }
  for (int t = t0; t < t1; ++t) {
    const int r0 = t * kRT;
    score_tile(Ss, Hs, Es, h, r0, R, E, neg, j0, N, C);
    to_grad(Ss, r0, R, j0, N, targets, neg, lse, gs);
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
        if (jj < N && c < C) slice[(size_t)jj * C + c] += acc;
      }
    }
  }
  for (int c0 = 0; c0 < C; c0 += kKC)
#pragma unroll
    for (int a = 0; a < IA; ++a) {
      const int jj = j0 + ty8 + 8 * a, c = c0 + tx32;
      if (jj < N && c < C) atomicAdd(&dE[(size_t)neg[jj] * C + c], slice[(size_t)jj * C + c]);
    }
}

RowSplit row_split(int R, int N) { return cuda::row_split(R, N, kRT, kIT, kTargetBlocks); }
long long max_splits(int R, int N) { return cuda::max_splits(R, N, kRT, kIT, kTargetBlocks); }

}  // namespace

size_t sampled_softmax_workspace(int R, int C, int N) {
  if (R <= 0) return 0;
  if (C <= softmax_tiled::kMaxC) return (size_t)R;
  return (size_t)R + (size_t)max_splits(R, N) * std::max(N, 0) * std::max(C, 0);
}

void sampled_softmax_loss(float* loss, float* dh, float* dE, const float* h, const float* E,
                          const int32_t* targets, const int32_t* negatives, int R, int C, int N,
                          float grad_scale, float* workspace, cudaStream_t s) {
  if (R < 0 || C < 0 || N < 0)
    throw std::runtime_error(::fsr::detail::cat("sampled_softmax_loss: negative size (R=", R,
                                                ", C=", C, ", N=", N, ")"));
  if (R == 0) return;
  if (workspace == nullptr)
    throw std::runtime_error(
        "sampled_softmax_loss: workspace is null (sampled_softmax_workspace floats needed)");
  const bool grad = grad_scale != 0.f;
  if (grad && (dh == nullptr || dE == nullptr))
    throw std::runtime_error("sampled_softmax_loss: dh and dE are needed when grad_scale != 0");
  float* lse = workspace;
  if (C <= softmax_tiled::kMaxC)
    return softmax_tiled::run<true>(loss, dh, dE, lse, h, E, targets, negatives, R, C, N,
                                    grad_scale, s);
  const unsigned row_blocks = (unsigned)ceil_div(R, kRT);
  sampled_rows_kernel<<<row_blocks, kThreads, 0, s>>>(loss, dh, dE, lse, h, E, targets,
                                                      negatives, R, C, N, grad_scale);
  FSR_CUDA_LAUNCH_CHECK();
  if (!grad || N == 0) return;
  const RowSplit sp = row_split(R, N);
  const dim3 grid((unsigned)ceil_div(N, kIT), (unsigned)sp.splits);
  sampled_items_kernel<<<grid, kThreads, 0, s>>>(dE, workspace + R, h, E, targets, negatives,
                                                lse, R, C, N, grad_scale, sp.tiles_per_split);
  FSR_CUDA_LAUNCH_CHECK();
}

}  // namespace fsr::cuda
