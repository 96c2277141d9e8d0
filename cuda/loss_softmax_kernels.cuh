// The fused kernels of the two softmax losses (loss_softmax.cu, loss_sampled_softmax.cu):
// the logits never exist as an R x N matrix.  Candidates are the columns of the softmax:
//   sampled (kSampled): the N shared negatives, item neg[j]; a negative equal to the row's
//            target is masked out of that row, and the target enters as an extra logit
//            s_pos = h_r . E[tgt_r] - lq(tgt_r) (lse starts from it; its gradient
//            ds_pos = gs (exp(s_pos - lse) - 1) goes to dh and, atomically, to dE[tgt_r]);
//            with the logQ correction (logq non-null, V + 1 floats) every logit is the
//            product less lq(item) = logq[item] (lq = 0 when logq is null), subtracted
//            once after the product, the same way in every kernel and pass (candidates'
//            values loaded next to their ids: lq_t in the tiled layout, lq_of in the
//            chunked one);
//   full:    the N = V items, item j + 1, the target among them: ds = gs (p - onehot(tgt)),
//            and the loss takes the target's logit as s_pos (no logq: it must be null).
// Two kernels either way:
//   rows  (a block per 64, or 32, rows): s_pos; online log-sum-exp over the candidate
//         tiles -> loss, lse; when training, a second pass recomputes each tile (the same
//         products in the same order, so the logits are bit for bit those of the first
//         pass), turns it into ds and accumulates dh = ds E[cand].
//   items (a block per 64 candidates x a range of row tiles): recomputes its tiles and
//         accumulates dE[cand] += ds^T h, added to dE plainly when the block owns its item
//         rows (full softmax, one row range), atomically otherwise (negatives may repeat).
// Two layouts: C <= 128 (tiled): rows and candidates resident for the whole of C, 64 x 64
// logit tiles in registers (cuda/tile.cuh), dE summed in registers; wider C (chunked): C
// in 32-column chunks through shared memory (tile::chunk), 32 x 64 logit tiles in shared
// memory, and item sums through a global scratch slice when the rows are split.
// workspace: workspace<kSampled>(R, C, N) floats: lse (R), then the chunked items
// kernel's scratch.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/tile.cuh"

namespace fsr::cuda::softmax_kernels {

constexpr int kMaxC = 128;  // widest C of the tiled layout (8 columns a thread)
constexpr int RA = 4;       // 4 x 4 logits a thread
constexpr int kBM = 16 * RA;  // rows and candidates per tile

template <bool kSampled>
__device__ __forceinline__ int item_of(const int32_t* neg, int j) {
  return kSampled ? neg[j] : j + 1;
}

// The logQ correction of candidate j (index < N): logq[neg[j]] for the sampled loss with a
// table, 0 otherwise (the full softmax never reads it).
template <bool kSampled>
__device__ __forceinline__ float lq_of(const float* logq, const int32_t* neg, int j) {
  return kSampled && logq != nullptr ? logq[neg[j]] : 0.f;
}

// A logit from its product and its item's correction: the one place the correction is
// applied, so that every pass and kernel recomputes the same bits (the full softmax's
// logits are the products themselves).
template <bool kSampled>
__device__ __forceinline__ float corrected(float dot, float lq) { return kSampled ? dot - lq : dot; }

// Shared: A | B (row tiles) | Ps (score tile) | lse_t[kBM] | lq_t[kBM] |
//         ints: tgt_t[kBM] | id_t[kBM]
template <int NC>
size_t smem_bytes() {
  return sizeof(float) * (2 * (size_t)kBM * tile::row_ld<NC>() +
                          (size_t)kBM * tile::score_ld<RA>() + 2 * kBM) +
         sizeof(int32_t) * 2 * kBM;
}

// Loads the candidate tile j0 .. j0 + kBM - 1 (rows of E; zero past N), their item ids and
// (sampled loss) their logQ corrections.
template <bool kSampled, int NC>
__device__ __forceinline__ void load_cands(float* Es, int32_t* id_t, float* lq_t, const float* E,
                                           const int32_t* neg, const float* logq, int j0, int N,
                                           int C) {
  tile::load<NC>(Es, kBM, C, [&](int j) {
    return j0 + j < N ? E + (size_t)item_of<kSampled>(neg, j0 + j) * C : nullptr;
  });
  for (int j = threadIdx.x; j < kBM; j += tile::kThreads) {
    id_t[j] = j0 + j < N ? item_of<kSampled>(neg, j0 + j) : -1;
    if (kSampled) lq_t[j] = j0 + j < N ? lq_of<kSampled>(logq, neg, j0 + j) : 0.f;
  }
}

// Loads the row tile r0 .. r0 + kBM - 1 of h (zero past R) and the rows' targets.
template <int NC>
__device__ __forceinline__ void load_rows(float* Hs, int32_t* tgt_t, const float* h,
                                          const int32_t* targets, int r0, int R, int C) {
  tile::load<NC>(Hs, kBM, C, [&](int r) {
    return r0 + r < R ? h + (size_t)(r0 + r) * C : nullptr;
  });
  for (int r = threadIdx.x; r < kBM; r += tile::kThreads)
    tgt_t[r] = r0 + r < R ? targets[r0 + r] : 0;
}

// ds of logit s for candidate `id` (index jj < N when `in`) and a row with target `tgt`,
// log-sum-exp `lse` (row inside the batch when `in`): 0 for masked and missing entries;
// rounded to bfloat16 when bf16 (an operand of the backward products).
template <bool kSampled>
__device__ __forceinline__ float grad_of(float s, bool in, int id, int tgt, float lse, float gs,
                                         bool bf16) {
  if (!in || (kSampled && id == tgt)) return 0.f;
  float p = gs * expf(s - lse);
  if (!kSampled && id == tgt) p -= gs;
  return bf16 ? round_bf16(p) : p;
}

template <bool kSampled, int NC>
__global__ void __launch_bounds__(tile::kThreads)
    tiled_rows_kernel(float* loss, float* dh, float* dE, float* lse_out, const float* h, const float* E,
                const int32_t* targets, const int32_t* neg, const float* logq, int R, int C, int N,
                float gs, bool bf16) {
  constexpr int ld = tile::row_ld<NC>(), lds = tile::score_ld<RA>();
  extern __shared__ float smem[];
  float* Hs = smem;
  float* Es = Hs + kBM * ld;
  float* Ps = Es + kBM * ld;
  float* lq_t = Ps + kBM * lds + kBM;  // (the lse_t slot of the items kernel is unused here)
  int32_t* tgt_t = reinterpret_cast<int32_t*>(lq_t + kBM);
  int32_t* id_t = tgt_t + kBM;
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int row0 = blockIdx.x * kBM;
  load_rows<NC>(Hs, tgt_t, h, targets, row0, R, C);
  __syncthreads();

  // s_pos: the 16 lanes of a tile row split the columns.  The full softmax's target must be
  // an item 1..N (the loss is NaN otherwise, as on the CPU).
  float sp[RA], m[RA], l[RA];
#pragma unroll
  for (int a = 0; a < RA; ++a) {
    const int r = ty + 16 * a, t = tgt_t[r];
    const bool ok = row0 + r < R && (kSampled || (t >= 1 && t <= N));
    const float lq = kSampled && ok && logq != nullptr ? logq[t] : 0.f;
    float part = 0.f;
    if (ok)
      for (int d = tx; d < C; d += 16) part = fmaf(Hs[r * ld + d], E[(size_t)t * C + d], part);
    part = tile::row_sum(part);  // every lane: the reduction shuffles
    sp[a] = ok ? corrected<kSampled>(part, lq) : __int_as_float(0x7fffffff);
    m[a] = kSampled ? sp[a] : -INFINITY;
    l[a] = kSampled ? 1.f : 0.f;
  }

  // Pass 1: online log-sum-exp over the candidate tiles.
  for (int j0 = 0; j0 < N; j0 += kBM) {
    __syncthreads();  // the previous tile's readers are done
    load_cands<kSampled, NC>(Es, id_t, lq_t, E, neg, logq, j0, N, C);
    __syncthreads();
    float sc[RA][RA];
    tile::zero(sc);
    tile::dot<RA, NC>(sc, Hs, Es, C);
#pragma unroll
    for (int a = 0; a < RA; ++a) {
      const int t = tgt_t[ty + 16 * a];
      float mx = -INFINITY;
#pragma unroll
      for (int b = 0; b < RA; ++b) {
        const int j = tx + 16 * b;
        const bool in = j0 + j < N && !(kSampled && id_t[j] == t);
        sc[a][b] = in ? corrected<kSampled>(sc[a][b], kSampled ? lq_t[j] : 0.f) : -INFINITY;
        mx = fmaxf(mx, sc[a][b]);
      }
      const float m_new = fmaxf(m[a], tile::row_max(mx));
      const bool any = m_new != -INFINITY;  // same on the row's 16 lanes
      const float base = any ? m_new : 0.f;
      float sum = 0.f;
#pragma unroll
      for (int b = 0; b < RA; ++b) sum += expf(sc[a][b] - base);
      sum = tile::row_sum(sum);
      if (any) {
        l[a] = l[a] * expf(m[a] - m_new) + sum;
        m[a] = m_new;
      }
    }
  }
  float lse[RA];
#pragma unroll
  for (int a = 0; a < RA; ++a) {
    const int row = row0 + ty + 16 * a;
    lse[a] = m[a] + logf(l[a]);
    if (tx == 0 && row < R) {
      lse_out[row] = lse[a];
      loss[row] = lse[a] - sp[a];
    }
  }
  if (gs == 0.f) return;  // uniform over the block

  // Pass 2: dh = ds E[cand] (+ ds_pos E[tgt] for the sampled loss).
  float acc[RA][NC];
  tile::zero(acc);
  for (int j0 = 0; j0 < N; j0 += kBM) {
    __syncthreads();
    load_cands<kSampled, NC>(Es, id_t, lq_t, E, neg, logq, j0, N, C);
    __syncthreads();
    float sc[RA][RA];
    tile::zero(sc);
    tile::dot<RA, NC>(sc, Hs, Es, C);
#pragma unroll
    for (int a = 0; a < RA; ++a) {
      const int r = ty + 16 * a;
      const bool row_in = row0 + r < R;
#pragma unroll
      for (int b = 0; b < RA; ++b) {
        const int j = tx + 16 * b;
        const float s = corrected<kSampled>(sc[a][b], kSampled ? lq_t[j] : 0.f);
        Ps[r * lds + j] = grad_of<kSampled>(s, row_in && j0 + j < N, id_t[j], tgt_t[r],
                                            lse[a], gs, bf16);
      }
    }
    __syncthreads();
    tile::mul<RA, NC>(acc, Ps, Es, min(kBM, N - j0));
  }
  if (kSampled)
#pragma unroll
    for (int a = 0; a < RA; ++a) {
      const int r = ty + 16 * a;
      if (row0 + r >= R) continue;
      float dpos = gs * (expf(sp[a] - lse[a]) - 1.f);
      if (bf16) dpos = round_bf16(dpos);
      const size_t t = (size_t)tgt_t[r] * C;
#pragma unroll
      for (int c = 0; c < NC; ++c) {
        const int d = tx + 16 * c;
        if (d < C) {
          acc[a][c] = fmaf(dpos, E[t + d], acc[a][c]);
          atomicAdd(&dE[t + d], dpos * Hs[r * ld + d]);
        }
      }
    }
  float one[RA];
#pragma unroll
  for (int a = 0; a < RA; ++a) one[a] = 1.f;
  tile::store<RA, NC>(dh, C, acc, one, row0, R, C);
}

template <bool kSampled, int NC>
__global__ void __launch_bounds__(tile::kThreads)
    tiled_items_kernel(float* dE, const float* h, const float* E, const int32_t* targets,
                 const int32_t* neg, const float* logq, const float* lse, int R, int C, int N,
                 float gs, int tiles_per_split, bool atomic, bool bf16) {
  constexpr int ld = tile::row_ld<NC>(), lds = tile::score_ld<RA>();
  extern __shared__ float smem[];
  float* Es = smem;
  float* Hs = Es + kBM * ld;
  float* Ps = Hs + kBM * ld;
  float* lse_t = Ps + kBM * lds;
  float* lq_t = lse_t + kBM;
  int32_t* tgt_t = reinterpret_cast<int32_t*>(lq_t + kBM);
  int32_t* id_t = tgt_t + kBM;
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int j0 = blockIdx.x * kBM;
  const int row_tiles = (int)(((long long)R + kBM - 1) / kBM);
  const int t0 = blockIdx.y * tiles_per_split;
  const int t1 = min(row_tiles, t0 + tiles_per_split);
  load_cands<kSampled, NC>(Es, id_t, lq_t, E, neg, logq, j0, N, C);

  float acc[RA][NC];
  tile::zero(acc);
  for (int t = t0; t < t1; ++t) {
    const int r0 = t * kBM;
    __syncthreads();  // the previous tile's readers are done (and Es, id_t, lq_t written)
    load_rows<NC>(Hs, tgt_t, h, targets, r0, R, C);
    for (int r = threadIdx.x; r < kBM; r += tile::kThreads)
      lse_t[r] = r0 + r < R ? lse[r0 + r] : 0.f;
    __syncthreads();
    float sc[RA][RA];  // rows: candidates ty + 16a; columns: rows tx + 16b
    tile::zero(sc);
    tile::dot<RA, NC>(sc, Es, Hs, C);
#pragma unroll
    for (int a = 0; a < RA; ++a) {
      const int j = ty + 16 * a;
      const bool cand_in = j0 + j < N;
#pragma unroll
      for (int b = 0; b < RA; ++b) {
        const int r = tx + 16 * b;
        const float s = corrected<kSampled>(sc[a][b], kSampled ? lq_t[j] : 0.f);
        Ps[j * lds + r] = grad_of<kSampled>(s, cand_in && r0 + r < R, id_t[j], tgt_t[r],
                                            lse_t[r], gs, bf16);
      }
    }
    __syncthreads();
    tile::mul<RA, NC>(acc, Ps, Hs, min(kBM, R - r0));
  }
  __syncthreads();  // id_t visible even to a block with no row tile
#pragma unroll
  for (int a = 0; a < RA; ++a) {
    const int j = ty + 16 * a;
    if (j0 + j >= N) continue;
    const size_t row = (size_t)id_t[j] * C;
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const int d = tx + 16 * c;
      if (d >= C) continue;
      if (atomic)
        atomicAdd(&dE[row + d], acc[a][c]);
      else
        dE[row + d] += acc[a][c];
    }
  }
}

template <bool kSampled, int NC>
void launch_tiled(float* loss, float* dh, float* dE, float* lse, const float* h, const float* E,
            const int32_t* targets, const int32_t* neg, const float* logq, int R, int C, int N,
            float gs, bool bf16, cudaStream_t s) {
  const size_t smem = smem_bytes<NC>();
  const int optin = tile::smem_optin();
  FSR_REQUIRE(smem <= (size_t)optin, "softmax loss: C = ", C, " needs ", smem,
              " bytes of shared memory a block; this GPU offers ", optin);
  tile::allow_smem(tiled_rows_kernel<kSampled, NC>, smem);
  tiled_rows_kernel<kSampled, NC><<<(unsigned)cuda::ceil_div(R, kBM), tile::kThreads, smem, s>>>(
      loss, dh, dE, lse, h, E, targets, neg, logq, R, C, N, gs, bf16);
  FSR_CUDA_LAUNCH_CHECK();
  if (gs == 0.f || N == 0) return;
  // Row ranges: about two blocks per multiprocessor in all.
  const RowSplit sp = cuda::row_split(R, N, kBM, kBM, 2 * tile::sm_count());
  tile::allow_smem(tiled_items_kernel<kSampled, NC>, smem);
  const dim3 grid((unsigned)cuda::ceil_div(N, kBM), (unsigned)sp.splits);
  tiled_items_kernel<kSampled, NC><<<grid, tile::kThreads, smem, s>>>(
      dE, h, E, targets, neg, logq, lse, R, C, N, gs, sp.tiles_per_split,
      kSampled || sp.splits > 1, bf16);
  FSR_CUDA_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------------------
// Chunked layout (C > kMaxC): 32 rows x 64 candidates a tile, C a 32-column chunk at a time.
constexpr int kRT = 32;             // rows per tile
constexpr int kIT = tile::chunk::kIT;
constexpr int kKC = tile::chunk::kKC;
constexpr int kChunkedBlocks = 256;  // about this many items-kernel blocks

// Ss[r][j] <- ds of row row0 + r and candidate j0 + j (0 where masked or outside).
template <bool kSampled>
__device__ void chunked_to_grad(float (*Ss)[kIT + 1], int row0, int R, int j0, int N,
                                const int32_t* targets, const int32_t* neg, const float* logq,
                                const float* lse, float gs, bool bf16) {
  for (int idx = threadIdx.x; idx < kRT * kIT; idx += tile::kThreads) {
    const int r = idx / kIT, j = idx % kIT;
    const int row = row0 + r, jj = j0 + j;
    const bool in = row < R && jj < N;
    const float s = corrected<kSampled>(Ss[r][j], in ? lq_of<kSampled>(logq, neg, jj) : 0.f);
    Ss[r][j] = grad_of<kSampled>(s, in, in ? item_of<kSampled>(neg, jj) : -1,
                                 in ? targets[row] : 0, in ? lse[row] : 0.f, gs, bf16);
  }
  __syncthreads();
}

template <bool kSampled>
__global__ void __launch_bounds__(tile::kThreads)
    chunked_rows_kernel(float* loss, float* dh, float* dE, float* lse, const float* h,
                        const float* E, const int32_t* targets, const int32_t* neg,
                        const float* logq, int R, int C, int N, float gs, bool bf16) {
  __shared__ float Hs[kRT][kKC + 1];
  __shared__ float Es[kIT][kKC + 1];
  __shared__ float Ss[kRT][kIT + 1];
  __shared__ float dpos[kRT];
  __shared__ int32_t tgt[kRT];
  constexpr int RPW = kRT / 8;  // rows owned by each warp in the log-sum-exp pass
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row0 = blockIdx.x * kRT;
  auto rows = [&](int r) { return row0 + r < R ? h + (size_t)(row0 + r) * C : nullptr; };
  auto cands = [&](int j0) {
    return [=](int j) {
      return j0 + j < N ? E + (size_t)item_of<kSampled>(neg, j0 + j) * C : nullptr;
    };
  };

  // Pass 1: s_pos, then the online log-sum-exp (from [s_pos] for the sampled loss: m = s_pos,
  // z = 1).  Every lane of the owning warp holds the same m, z, sp.
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
      const bool ok = kSampled || (t >= 1 && t <= N);  // the full softmax's target: an item
      float d = 0.f;
      if (ok)
        for (int c = lane; c < C; c += 32)
          d = fmaf(h[(size_t)row * C + c], E[(size_t)t * C + c], d);
      tg[q] = t;
      d = warp_sum(d);
      if (kSampled && logq != nullptr) d = corrected<kSampled>(d, logq[t]);
      sp[q] = ok ? d : __int_as_float(0x7fffffff);
      if (kSampled) {
        m[q] = sp[q];
        z[q] = 1.f;
      }
    }
  }
  for (int j0 = 0; j0 < N; j0 += kIT) {
    tile::chunk::score<kRT>(Ss, Hs, Es, C, rows, cands(j0));
#pragma unroll
    for (int q = 0; q < RPW; ++q) {
      const int r = warp * RPW + q;
      if (row0 + r >= R) continue;  // warp-uniform
      const int jj0 = j0 + lane, jj1 = j0 + lane + 32;
      const bool in0 = jj0 < N && !(kSampled && item_of<kSampled>(neg, jj0) == tg[q]);
      const bool in1 = jj1 < N && !(kSampled && item_of<kSampled>(neg, jj1) == tg[q]);
      const float v0 =
          in0 ? corrected<kSampled>(Ss[r][lane], lq_of<kSampled>(logq, neg, jj0)) : -INFINITY;
      const float v1 =
          in1 ? corrected<kSampled>(Ss[r][lane + 32], lq_of<kSampled>(logq, neg, jj1)) : -INFINITY;
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
        if (kSampled) d = gs * (expf(sp[q] - l) - 1.f);
        if (bf16) d = round_bf16(d);
      }
      dpos[r] = d;
      tgt[r] = tg[q];
    }
  }
  if (gs == 0.f) return;  // uniform over the block
  __syncthreads();        // lse, dpos, tgt visible to all the block's threads

  // Pass 2: dh = ds E[cand] (+ ds_pos E[tgt]).  Thread (ty8, tx32) owns
  // dh[row0 + ty8 + 8a][c0 + tx32].
  constexpr int RA = kRT / 8;
  const int tx32 = lane, ty8 = warp;
  for (int c0 = 0; c0 < C; c0 += kKC)
#pragma unroll
    for (int a = 0; a < RA; ++a) {
      const int row = row0 + ty8 + 8 * a, c = c0 + tx32;
      if (row < R && c < C) dh[(size_t)row * C + c] = 0.f;
    }
  for (int j0 = 0; j0 < N; j0 += kIT) {
    tile::chunk::score<kRT>(Ss, Hs, Es, C, rows, cands(j0));
    chunked_to_grad<kSampled>(Ss, row0, R, j0, N, targets, neg, logq, lse, gs, bf16);
    for (int c0 = 0; c0 < C; c0 += kKC) {
      __syncthreads();  // earlier readers of Es are done
      tile::chunk::load(Es, kIT, C, c0, cands(j0));
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
  if (kSampled)
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

// One block per (kIT candidates, range of row tiles): dE[cand] += ds^T h.  Thread
// (ty8, tx32) owns candidate j0 + ty8 + 8a, column c0 + tx32.  scratch == nullptr: a single
// row range over distinct items, so the block owns its dE rows.  Otherwise it sums into
// scratch[split][cand][c] and adds that to dE atomically at the end.
template <bool kSampled>
__global__ void __launch_bounds__(tile::kThreads)
    chunked_items_kernel(float* dE, float* scratch, const float* h, const float* E,
                         const int32_t* targets, const int32_t* neg, const float* logq,
                         const float* lse, int R, int C, int N, float gs, int tiles_per_split,
                         bool bf16) {
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
  float* slice = scratch ? scratch + (size_t)split * N * C : nullptr;
  auto cands = [&](int j) {
    return j0 + j < N ? E + (size_t)item_of<kSampled>(neg, j0 + j) * C : nullptr;
  };
  if (slice)
    for (int c0 = 0; c0 < C; c0 += kKC)
#pragma unroll
      for (int a = 0; a < IA; ++a) {
        const int jj = j0 + ty8 + 8 * a, c = c0 + tx32;
        if (jj < N && c < C) slice[(size_t)jj * C + c] = 0.f;
      }
  for (int t = t0; t < t1; ++t) {
    const int r0 = t * kRT;
    auto rows = [&](int r) { return r0 + r < R ? h + (size_t)(r0 + r) * C : nullptr; };
    tile::chunk::score<kRT>(Ss, Hs, Es, C, rows, cands);
    chunked_to_grad<kSampled>(Ss, r0, R, j0, N, targets, neg, logq, lse, gs, bf16);
    for (int c0 = 0; c0 < C; c0 += kKC) {
      __syncthreads();  // earlier readers of Hs are done
      tile::chunk::load(Hs, kRT, C, c0, rows);
      __syncthreads();
#pragma unroll
      for (int a = 0; a < IA; ++a) {
        const int j = ty8 + 8 * a;
        float acc = 0.f;
#pragma unroll 8
        for (int r = 0; r < kRT; ++r) acc = fmaf(Ss[r][j], Hs[r][tx32], acc);
        const int jj = j0 + j, c = c0 + tx32;
        if (jj < N && c < C) {
          if (slice) slice[(size_t)jj * C + c] += acc;
          else dE[(size_t)item_of<kSampled>(neg, jj) * C + c] += acc;
        }
      }
    }
  }
  if (slice)
    for (int c0 = 0; c0 < C; c0 += kKC)
#pragma unroll
      for (int a = 0; a < IA; ++a) {
        const int jj = j0 + ty8 + 8 * a, c = c0 + tx32;
        if (jj < N && c < C)
          atomicAdd(&dE[(size_t)item_of<kSampled>(neg, jj) * C + c], slice[(size_t)jj * C + c]);
      }
}

template <bool kSampled>
void launch_chunked(float* loss, float* dh, float* dE, float* workspace, const float* h,
                    const float* E, const int32_t* targets, const int32_t* neg,
                    const float* logq, int R, int C, int N, float gs, bool bf16, cudaStream_t s) {
  float* lse = workspace;
  chunked_rows_kernel<kSampled><<<(unsigned)cuda::ceil_div(R, kRT), tile::kThreads, 0, s>>>(
      loss, dh, dE, lse, h, E, targets, neg, logq, R, C, N, gs, bf16);
  FSR_CUDA_LAUNCH_CHECK();
  if (gs == 0.f || N == 0) return;
  const RowSplit sp = cuda::row_split(R, N, kRT, kIT, kChunkedBlocks);
  // The sampled loss always sums through the scratch (negatives may repeat); the full
  // softmax only when it splits the rows.
  float* scratch = kSampled || sp.splits > 1 ? workspace + R : nullptr;
  const dim3 grid((unsigned)cuda::ceil_div(N, kIT), (unsigned)sp.splits);
  chunked_items_kernel<kSampled><<<grid, tile::kThreads, 0, s>>>(
      dE, scratch, h, E, targets, neg, logq, lse, R, C, N, gs, sp.tiles_per_split, bf16);
  FSR_CUDA_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------------------
// Floats of workspace for R rows and every smaller batch (it is sized once, for the largest):
// lse, then the chunked layout's scratch, for the most row ranges any R' <= R splits into.
template <bool kSampled>
size_t workspace(int R, int C, int N) {
  if (R <= 0) return 0;
  if (C <= kMaxC) return (size_t)R;
  const long long splits = cuda::max_splits(R, N, kRT, kIT, kChunkedBlocks);
  const bool scratch = kSampled || splits > 1;
  return (size_t)R + (scratch ? (size_t)splits * std::max(N, 0) * std::max(C, 0) : 0);
}

// The loss of R rows over N candidates; workspace: workspace<kSampled>(R, C, N) floats.
// logq: the sampled loss's logQ table (V + 1 floats) or null; null for the full softmax.
// bf16: h and E arrive rounded to bfloat16 (bf16_copies), and ds and ds_pos are rounded
// before they enter the backward products.
template <bool kSampled>
void run(float* loss, float* dh, float* dE, float* workspace, const float* h, const float* E,
         const int32_t* targets, const int32_t* neg, const float* logq, int R, int C, int N,
         float gs, bool bf16, cudaStream_t s) {
  if (!kSampled) logq = nullptr;
  if (C > kMaxC)
    return launch_chunked<kSampled>(loss, dh, dE, workspace, h, E, targets, neg, logq, R, C, N,
                                    gs, bf16, s);
  float* lse = workspace;
  switch (tile::nc_for(C)) {
    case 1:
      return launch_tiled<kSampled, 1>(loss, dh, dE, lse, h, E, targets, neg, logq, R, C, N, gs, bf16, s);
    case 2:
      return launch_tiled<kSampled, 2>(loss, dh, dE, lse, h, E, targets, neg, logq, R, C, N, gs, bf16, s);
    case 4:
      return launch_tiled<kSampled, 4>(loss, dh, dE, lse, h, E, targets, neg, logq, R, C, N, gs, bf16, s);
    default:
      return launch_tiled<kSampled, 8>(loss, dh, dE, lse, h, E, targets, neg, logq, R, C, N, gs, bf16, s);
  }
}

}  // namespace fsr::cuda::softmax_kernels
