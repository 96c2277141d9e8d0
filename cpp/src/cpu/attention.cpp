// Multi-head causal self-attention over packed sequences (no padding anywhere).
//   S = Q_h K_h^T / sqrt(D) for the rows of one sequence, causal: row i sees rows <= i
//   forward : P = softmax(S) per row, lse(R,H) = logsumexp of each row saved,
//             O_h = dropout_p(P) V_h                             O(R, H*D) =
//   backward: P and Pd = dropout_p(P) read from `saved`, or recomputed from lse
//             dV_h = Pd^T dO_h;  dP = dropout_p'(dO_h V_h^T);  delta_i = sum_j P_ij dP_ij
//             dS = P * (dP - delta);  dQ_h = dS K_h / sqrt(D);  dK_h = dS^T Q_h / sqrt(D)
//             dQ(R, ldq) =, dK, dV(R, ldkv) =
//             computed as: with m the dropout multipliers, Pd = P m and dP = m G for
//             G = dO_h V_h^T, so delta_i = sum_j Pd_ij G_ij and dS = Pd G - P delta (no
//             multiplier needed once Pd is formed)
//   attention_last_forward: inference, one query per sequence (its last row), no dropout
// saved (attention_saved_workspace(R, H, T, p) floats, or null): the forward writes each
// (sequence s, head h)'s P, an n_s x n_s tile at H * sum_{t<s} n_t^2 + h * n_s^2; the
// backward then skips the scores' product and the exponentials (-40% in a C++ harness of
// the op at the training shape, BENCHMARKS.md).  With dropout it draws Pd from P again, in
// a tile of its own: the same products as the forward's, so the same bits, for a pass of
// hashes instead of a second n x n tile written to memory and read back (on a CPU whose L2
// holds a tile or two but not the batch's, that traffic cost more than the hashes).  Null
// (inference, or a model whose probabilities would cost more memory than the rest of its
// layer) recomputes them.
// Dropout counter of (query row i, head h, key row j) is (i * H + h) * T + (j - start).
// ctx.precision BF16 leaves these products in fp32: per (sequence, head) they are small
// (n x n x D, about 4% of a step's work at width 64), too small for the bf16 GEMM to gain.
// One task per (sequence, head): each task owns its output rows, so any schedule gives
// the same result.  Besides `saved`, only an n_max x n_max score tile per thread exists,
// allocated before the parallel region (a failed allocation is a MemoryError, never an
// exception inside the region).
// n_max (the longest sequence, by which the GPU sizes its launch) and the backward's O
// (from which the GPU takes delta) are not needed here.
// Products: where gemm_rows has a kernel (a build for a CPU with AVX-512, or with AVX2 and
// FMA, and FASTSASREC_NO_AVX512 unset: rows_kernels()) each (sequence, head)'s products run
// in it (gemm_rows.h), called block by block below so as to compute only the causal half
// (the rows' j <= i, plus the small triangle inside a block of NR rows), with no packing;
// otherwise one sgemm per product, the full n x n square.  With AVX-512 the rows' softmax,
// the keys' transposed copy and dS are whole-vector code too (FSR_ATTENTION_KERNELS).
// The scores' kernel reads the keys (or values) transposed, a D x n copy per task.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "cpu/fast_math.h"
#include "cpu/gemm_rows.h"
#include "cpu/keep_bits.h"
#include "cpu/op_profile.h"
#include "cpu/ops.h"
#include "cpu/parallel.h"
#include "fastsasrec/rng.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#define FSR_ATTENTION_KERNELS 1
#endif

namespace fsr::cpu {

namespace {
// The longest sequence of cu (the CPU does not trust a caller's n_max with its memory).
int longest(const int32_t* cu, int B) {
  int n = 0;
  for (int s = 0; s < B; ++s) n = std::max(n, cu[s + 1] - cu[s]);
  return n;
}
// `floats` of scratch for each thread the op's region may run.
ThreadScratch tiles(const char* op, const Context& ctx, size_t floats) {
  return ThreadScratch(op, usable_threads(ctx.threads), floats);
}

// Rows of a kernel's block: with AVX-512, causal_softmax4's 4; with AVX2, gemm_rows's 6,
// whose 12 sums hide the multiply-adds' latency where 4 rows' 8 do not (attention's
// backward -20% on a Zen 3, BENCHMARKS.md).  Any block gives the same bits.
constexpr int NR = kGemmRowsAvx512 ? 4 : 6;

// Where row i of a probability tile must be zero up to (from i + 1): the kernels read only
// the columns up to the end of row i's block of NR rows; an sgemm reads the whole row.
inline int zero_end(bool kern, int i, int n) { return kern ? std::min(n, (i / NR + 1) * NR) : n; }

// out(r, :D) = alpha * sum_{k in [k0, k1)} c(r, k) in(k, :D) for the rows r < nr (<= NR) of a
// block, c(r, k) = coef[r * csr + k * csk]: gemm_rows's register-blocked sums.
void combine_rows(float* out, int ldo, int nr, const float* in, int ldi, const float* coef,
                  int csr, int csk, int k0, int k1, int D, float alpha) {
  gemm_rows(nr, D, k1 - k0, alpha, coef + (size_t)k0 * csk, csr, csk, in + (size_t)k0 * ldi, ldi, 0.f, out, ldo);
  op_profile_count(nr, k1 - k0, D);
}

// S(r, j) = alpha * A(r, :D) . B(j, :D) for r < nr (<= NR) and j < jn, from Bt (B
// transposed, D x ldbt): gemm_rows again, Bt's rows as the product's right operand.
void scores_rows(float* S, int lds, int nr, const float* A, int lda, const float* Bt, int ldbt,
                 int jn, int D, float alpha) {
  gemm_rows(nr, jn, D, alpha, A, lda, 1, Bt, ldbt, 0.f, S, lds);
  op_profile_count(nr, jn, D);
}

#ifdef FSR_ATTENTION_KERNELS
// Bt(c, r) = B(r, c) for r < 16 and c < cols (<= 16): 16 lanes written to each of Bt's
// first `cols` rows, the rows r >= `rows` of B read as zero.  In registers: pairs of rows
// interleaved by 32 bits, then by 64, then the 128-bit lanes gathered.
inline void transpose16(float* Bt, int ldbt, const float* B, int ldb, int rows, int cols) {
  const __mmask16 m = head_lanes(cols);
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i)
    r[i] = i < rows ? _mm512_maskz_loadu_ps(m, B + (size_t)i * ldb) : _mm512_setzero_ps();
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_maskz_unpacklo_ps(0xffff, r[i], r[i + 1]);      // row i, i+1: columns 0, 1 of each lane
    t[i + 1] = _mm512_maskz_unpackhi_ps(0xffff, r[i], r[i + 1]);  // columns 2, 3 of each lane
  }
  for (int g = 0; g < 16; g += 4) {  // rows g..g+3: r[g + c] holds column c of each lane
    const __m512d a = _mm512_castps_pd(t[g]), b = _mm512_castps_pd(t[g + 1]);
    const __m512d c = _mm512_castps_pd(t[g + 2]), d = _mm512_castps_pd(t[g + 3]);
    r[g] = _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(0xff, a, c));
    r[g + 1] = _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(0xff, a, c));
    r[g + 2] = _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(0xff, b, d));
    r[g + 3] = _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(0xff, b, d));
  }
  for (int c = 0; c < 4; ++c) {  // r[c], r[4 + c], r[8 + c], r[12 + c]: columns c, c+4, c+8, c+12
    const __m512 v0 = _mm512_mask_shuffle_f32x4(r[c], 0xffff, r[c], r[4 + c], 0x88);
    const __m512 v1 = _mm512_mask_shuffle_f32x4(r[8 + c], 0xffff, r[8 + c], r[12 + c], 0x88);
    const __m512 w0 = _mm512_mask_shuffle_f32x4(r[c], 0xffff, r[c], r[4 + c], 0xDD);
    const __m512 w1 = _mm512_mask_shuffle_f32x4(r[8 + c], 0xffff, r[8 + c], r[12 + c], 0xDD);
    t[c] = _mm512_mask_shuffle_f32x4(v0, 0xffff, v0, v1, 0x88);
    t[c + 8] = _mm512_mask_shuffle_f32x4(v0, 0xffff, v0, v1, 0xDD);
    t[c + 4] = _mm512_mask_shuffle_f32x4(w0, 0xffff, w0, w1, 0x88);
    t[c + 12] = _mm512_mask_shuffle_f32x4(w0, 0xffff, w0, w1, 0xDD);
  }
  for (int c = 0; c < cols; ++c) _mm512_storeu_ps(Bt + (size_t)c * ldbt, t[c]);
}
#endif

// Bt(d, j) = B(j, d) for j < n, d < D, in whole 16-lane chunks (the lanes of the last
// chunk past n zero); Bt's rows are ldbt >= n long.  Only this sequence's chunks: the
// scores' kernel reads no column past n, and a tile sized for the batch's longest
// sequence would cost a short one as much as the longest.
inline void transpose_into(float* Bt, int ldbt, const float* B, int ldb, int n, int D) {
#ifdef FSR_ATTENTION_KERNELS
  for (int j0 = 0; j0 < n; j0 += 16)
    for (int d0 = 0; d0 < D; d0 += 16)
      transpose16(Bt + (size_t)d0 * ldbt + j0, ldbt, B + (size_t)j0 * ldb + d0, ldb,
                  std::min(16, n - j0), std::min(16, D - d0));
#else
  for (int d = 0; d < D; ++d)
    for (int j = 0; j < n; ++j) Bt[(size_t)d * ldbt + j] = B[(size_t)j * ldb + d];
#endif
}

// Rows i0 .. i0 + nr - 1 (nr <= 4) of a causal score tile S (n wide; row i holds i + 1
// scores): each row's max m and, with its scores replaced by exp(s - m), their sum l.
// What row_max and exp_sum_inplace give row by row, bit for bit (the same vectors in the
// same order, the four rows' trees reduced together: lanes_max4, lanes_sum4), with the
// four rows' chains interleaved where one row alone waits on its reductions.
#ifdef FSR_ATTENTION_KERNELS
inline void causal_softmax4(float* S, int n, int i0, int nr, float* m, float* l) {
  float* row[4];
  int len[4];
  for (int r = 0; r < 4; ++r) {
    row[r] = S + (size_t)(i0 + std::min(r, nr - 1)) * n;
    len[r] = r < nr ? i0 + r + 1 : 0;
  }
  const int end = i0 + nr;
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 mv[4] = {ninf, ninf, ninf, ninf};
  for (int j = 0; j < end; j += 16)
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      const __mmask16 k = head_lanes(len[r] - j);
      mv[r] = _mm512_mask_max_ps(mv[r], k, _mm512_maskz_loadu_ps(k, row[r] + j), mv[r]);
    }
  alignas(64) float out[16];
  _mm512_store_ps(out, lanes_max4(mv[0], mv[1], mv[2], mv[3]));
  const __m512 mk[4] = {_mm512_set1_ps(out[0]), _mm512_set1_ps(out[4]), _mm512_set1_ps(out[8]),
                        _mm512_set1_ps(out[12])};
  __m512 sv[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  for (int j = 0; j < end; j += 16)
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      const __mmask16 k = head_lanes(len[r] - j);
      if (!k) continue;
      const __m512 e = fast_exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, row[r] + j), mk[r]));
      _mm512_mask_storeu_ps(row[r] + j, k, e);
      sv[r] = _mm512_add_ps(sv[r], _mm512_maskz_mov_ps(k, e));
    }
  for (int r = 0; r < nr; ++r) m[r] = out[4 * r];
  _mm512_store_ps(out, lanes_sum4(sv[0], sv[1], sv[2], sv[3]));
  for (int r = 0; r < nr; ++r) l[r] = out[4 * r];
}
#endif

// g[j] = d[j] g[j] - p[j] delta for j < n: one row of dS = Pd G - P delta, rounded as GCC
// contracts the scalar expression (p delta, then d g minus it fused), in whole vectors
// and one masked one (the compiler's loop ends a row with up to 15 scalar steps).
inline void ds_row(float* g, const float* d, const float* pr, int n, float delta) {
#ifdef FSR_ATTENTION_KERNELS
  const __m512 vd = _mm512_set1_ps(delta);
  for (int j = 0; j < n; j += 16) {
    const __mmask16 k = head_lanes(n - j);
    const __m512 t = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, pr + j), vd);
    _mm512_mask_storeu_ps(g + j, k, _mm512_fmsub_ps(_mm512_maskz_loadu_ps(k, d + j), _mm512_maskz_loadu_ps(k, g + j), t));
  }
#else
  for (int j = 0; j < n; ++j) g[j] = d[j] * g[j] - pr[j] * delta;
#endif
}

// S = alpha * A B^T over D columns, causal.  With the kernels: B transposed into Bt (D x
// ldbt) first, then rows i and columns j <= i (entries past the diagonal inside a block of
// NR rows are written too, and those past it otherwise left alone).  Otherwise one sgemm,
// the full n x n square.
void causal_scores(int nt, bool kern, float* S, int n, const float* A, int lda, const float* B, int ldb,
                   float* Bt, int ldbt, int D, float alpha) {
  if (!kern) {
    gemm(nt, false, true, n, n, D, alpha, A, lda, B, ldb, 0.f, S, n);
    return;
  }
  transpose_into(Bt, ldbt, B, ldb, n, D);
  for (int i0 = 0; i0 < n; i0 += NR) {
    const int nr = std::min(NR, n - i0);
    scores_rows(S + (size_t)i0 * n, n, nr, A + (size_t)i0 * lda, lda, Bt, ldbt, i0 + nr, D, alpha);
  }
}

// out(i, :) = alpha * sum_{j <= i} P(i, j) in(j, :)   (P n x n, zero past the diagonal as
// far as the kernels read, or, for the sgemm, entirely)
void causal_rows(int nt, bool kern, float* out, int ldo, const float* P, int n, const float* in, int ldi, int D,
                 float alpha) {
  if (!kern) {
    gemm(nt, false, false, n, D, n, alpha, P, n, in, ldi, 0.f, out, ldo);
    return;
  }
  for (int i0 = 0; i0 < n; i0 += NR) {
    const int nr = std::min(NR, n - i0), k1 = std::min(n, i0 + NR);
    float* o = out + (size_t)i0 * ldo;
    const float* c = P + (size_t)i0 * n;
    combine_rows(o, ldo, nr, in, ldi, c, n, 1, 0, k1, D, alpha);
  }
}

// out(j, :) = alpha * sum_{i >= j} P(i, j) in(i, :)   (P^T's rows; P zero past the diagonal)
void causal_rows_t(int nt, bool kern, float* out, int ldo, const float* P, int n, const float* in, int ldi, int D,
                   float alpha) {
  if (!kern) {
    gemm(nt, true, false, n, D, n, alpha, P, n, in, ldi, 0.f, out, ldo);
    return;
  }
  for (int j0 = 0; j0 < n; j0 += NR) {
    const int nr = std::min(NR, n - j0);
    float* o = out + (size_t)j0 * ldo;
    const float* c = P + j0;
    combine_rows(o, ldo, nr, in, ldi, c, 1, n, j0, n, D, alpha);
  }
}
}  // namespace


size_t attention_saved_workspace(const Context&, int R, int H, int T, float p) {
  // sum_s n_s^2 <= R * max n <= R * T per head: P (the backward draws Pd from it again)
  (void)p;
  return (R <= 0 || H <= 0 || T <= 0) ? 0 : (size_t)R * (size_t)T * (size_t)H;
}

namespace {
// Where (sequence s, head h)'s saved tile P starts: H * sum_{t<s} n_t^2 + h * n_s^2.
// Checked against the workspace's size, R * T * H (a sequence longer than T would not fit).
struct SavedLayout {
  std::vector<size_t> start;  // B + 1 prefix sums of H n_s^2
  SavedLayout(const char* op, const int32_t* cu, int B, int H, int T) : start((size_t)B + 1, 0) {
    for (int s = 0; s < B; ++s) {
      const size_t n = (size_t)std::max(0, cu[s + 1] - cu[s]);
      start[s + 1] = start[s] + (size_t)H * n * n;
    }
    const size_t R = (size_t)std::max(0, cu[B]);
    FSR_REQUIRE(start[B] <= R * (size_t)std::max(T, 0) * (size_t)H, op,
                ": a sequence is longer than T = ", T, ", so the saved probabilities do not fit "
                "attention_saved_workspace");
  }
  size_t at(int s, int h, int n) const { return start[s] + (size_t)h * n * n; }
};
}  // namespace

void attention_forward(const Context& ctx, float* O, float* lse, const float* Q, int ldq, const float* K,
                       const float* V, int ldkv, const int32_t* cu, int B, int H, int D, int T,
                       int n_max, float p, uint64_t key, float* saved) {
  const float scale = 1.f / std::sqrt((float)D);
  const float inv_keep = p > 0.f ? 1.f / (1.f - p) : 1.f;
  const uint32_t thr = dropout_threshold(p);
  const int ldo = H * D;
  const int nmax = longest(cu, B), ldt = (nmax + 15) / 16 * 16;
  const bool kern = rows_kernels();
  const size_t nn = (size_t)nmax * nmax;
  std::unique_ptr<SavedLayout> lay;
  if (saved) lay.reset(new SavedLayout("attention_forward", cu, B, H, T));
  // The tile: in scratch, or (saved) P in the workspace and, with dropout, Pd in scratch;
  // then the keys transposed (kernels).
  const size_t own = saved && p <= 0.f ? 0 : nn;
  const ThreadScratch scratch = tiles("attention_forward", ctx, own + (kern ? (size_t)D * ldt : 0));
  parallel_for_dynamic(ctx.threads, B * H, [&](int task) {
    const int s = task / H, h = task % H;
    const int st = cu[s], n = cu[s + 1] - cu[s];
    if (n <= 0) return;
    float* S = saved ? saved + lay->at(s, h, n) : scratch.slot();
    float* Pd = saved && p > 0.f ? scratch.slot() : S;
    float* Kt = scratch.slot() + own;
    const float* Qh = Q + (size_t)st * ldq + h * D;
    const float* Kh = K + (size_t)st * ldkv + h * D;
    const float* Vh = V + (size_t)st * ldkv + h * D;
    causal_scores(ctx.threads, kern, S, n, Qh, ldq, Kh, ldkv, Kt, ldt, D, scale);
#ifdef FSR_ATTENTION_KERNELS
    float mr[4], lr[4];
#endif
    for (int i = 0; i < n; ++i) {
      float* row = S + (size_t)i * n;
      float* drow = Pd + (size_t)i * n;
#ifdef FSR_ATTENTION_KERNELS
      if (i % 4 == 0) causal_softmax4(S, n, i, std::min(4, n - i), mr, lr);
      const float m = mr[i % 4], l = lr[i % 4];
#else
      const float m = row_max(row, i + 1);
      const float l = exp_sum_inplace(row, i + 1, m);
#endif
      lse[(size_t)(st + i) * H + h] = m + std::log(l);
      const float inv_l = 1.f / l;
      const uint64_t base = ((uint64_t)(st + i) * H + h) * T;
      if (p > 0.f && drow != row) {  // P kept, Pd beside it
        scale_inplace(row, i + 1, inv_l);
        scale_kept(drow, row, (size_t)i + 1, key, thr, base, inv_keep);
      } else if (p > 0.f) {
        scale_kept(row, row, (size_t)i + 1, key, thr, base, inv_l * inv_keep);
      } else {
        scale_inplace(row, i + 1, inv_l);
      }
      for (int j = i + 1; j < zero_end(kern, i, n); ++j) row[j] = drow[j] = 0.f;
    }
    causal_rows(ctx.threads, kern, O + (size_t)st * ldo + h * D, ldo, Pd, n, Vh, ldkv, D, 1.f);
  });
}

void attention_backward(const Context& ctx, float* dQ, float* dK, float* dV, const float* dO,
                        const float* O, const float* Q, int ldq,
                        const float* K, const float* V, int ldkv, const float* lse,
                        const int32_t* cu, int B, int H, int D, int T, int n_max, float p,
                        uint64_t key, const float* saved) {
  const float scale = 1.f / std::sqrt((float)D);
  const float inv_keep = p > 0.f ? 1.f / (1.f - p) : 1.f;
  const uint32_t thr = dropout_threshold(p);
  const int ldo = H * D;
  const int nmax = longest(cu, B), ldt = (nmax + 15) / 16 * 16;
  const bool kern = rows_kernels();
  const size_t nn = (size_t)nmax * nmax;
  const size_t nbt = kern ? (size_t)D * ldt : 0;
  std::unique_ptr<SavedLayout> lay;
  if (saved) lay.reset(new SavedLayout("attention_backward", cu, B, H, T));
  // Scratch: G (then dS); with dropout Pd; without saved tiles also P.
  const size_t own = nn + (p > 0.f ? nn : 0) + (saved ? 0 : nn);
  const ThreadScratch scratch = tiles("attention_backward", ctx, own + nbt);
  parallel_for_dynamic(ctx.threads, B * H, [&](int task) {
    const int s = task / H, h = task % H;
    const int st = cu[s], n = cu[s + 1] - cu[s];
    if (n <= 0) return;
    float* G = scratch.slot();           // dO_h V_h^T, then dS
    float* Bt = G + own;                 // the keys, then the values, transposed (kernels)
    const float* Qh = Q + (size_t)st * ldq + h * D;
    const float* Kh = K + (size_t)st * ldkv + h * D;
    const float* Vh = V + (size_t)st * ldkv + h * D;
    const float* dOh = dO + (size_t)st * ldo + h * D;
    float* dQh = dQ + (size_t)st * ldq + h * D;
    float* dKh = dK + (size_t)st * ldkv + h * D;
    float* dVh = dV + (size_t)st * ldkv + h * D;
    const float* P;   // probabilities
    const float* Pd;  // dropped probabilities (P itself without dropout)
    float* Dw = p > 0.f ? G + nn : nullptr;  // Pd, drawn again (with dropout)
    if (saved) {
      P = saved + lay->at(s, h, n);
      Pd = P;
      if (p > 0.f) {  // the forward's scale_kept on the same P: the same bits
        for (int i = 0; i < n; ++i) {
          float* drow = Dw + (size_t)i * n;
          scale_kept(drow, P + (size_t)i * n, (size_t)i + 1, key, thr, ((uint64_t)(st + i) * H + h) * T, inv_keep);
          for (int j = i + 1; j < zero_end(kern, i, n); ++j) drow[j] = 0.f;
        }
        Pd = Dw;
      }
    } else {  // recomputed from lse, the multipliers drawn again
      float* Pw = G + nn + (p > 0.f ? nn : 0);
      if (!Dw) Dw = Pw;
      causal_scores(ctx.threads, kern, Pw, n, Qh, ldq, Kh, ldkv, Bt, ldt, D, scale);
      for (int i = 0; i < n; ++i) {
        float* row = Pw + (size_t)i * n;
        float* drow = Dw + (size_t)i * n;
        const float l = lse[(size_t)(st + i) * H + h];
        const uint64_t base = ((uint64_t)(st + i) * H + h) * T;
        for (int j = 0; j <= i; ++j) row[j] = fast_exp(row[j] - l);
        if (p > 0.f) scale_kept(drow, row, (size_t)i + 1, key, thr, base, inv_keep);
        for (int j = i + 1; j < zero_end(kern, i, n); ++j) row[j] = drow[j] = 0.f;
      }
      P = Pw;
      Pd = Dw;
    }
    // dV_h = Pd^T dO_h;  G = dO_h V_h^T;  delta_i = sum_j Pd G;  dS = Pd G - P delta (in G)
    // (with m the dropout multipliers: Pd = P m, dP = m G, so P (dP - delta) = Pd G - P delta)
    causal_rows_t(ctx.threads, kern, dVh, ldkv, Pd, n, dOh, ldo, D, 1.f);
    causal_scores(ctx.threads, kern, G, n, dOh, ldo, Vh, ldkv, Bt, ldt, D, 1.f);
    for (int i = 0; i < n; ++i) {
      const float* prow = P + (size_t)i * n;
      const float* drow = Pd + (size_t)i * n;
      float* grow = G + (size_t)i * n;
      ds_row(grow, drow, prow, i + 1, dot(drow, grow, i + 1));
      for (int j = i + 1; j < zero_end(kern, i, n); ++j) grow[j] = 0.f;
    }
    const float* dS = G;
    // dQ_h = scale * dS K_h;  dK_h = scale * dS^T Q_h
    causal_rows(ctx.threads, kern, dQh, ldq, dS, n, Kh, ldkv, D, scale);
    causal_rows_t(ctx.threads, kern, dKh, ldkv, dS, n, Qh, ldq, D, scale);
  });
}

void attention_last_forward(const Context& ctx, float* O, const float* Q, int ldq, const float* K, const float* V,
                            int ldkv, const int32_t* cu, int B, int H, int D) {
  const float scale = 1.f / std::sqrt((float)D);
  const int ldo = H * D;
  const ThreadScratch scratch = tiles("attention_last_forward", ctx, longest(cu, B));
  parallel_for_dynamic(ctx.threads, B * H, [&](int task) {
    const int s = task / H, h = task % H;
    const int st = cu[s], n = cu[s + 1] - cu[s];
    if (n <= 0) return;
    float* S = scratch.slot();
    const float* Kh = K + (size_t)st * ldkv + h * D;
    const float* Vh = V + (size_t)st * ldkv + h * D;
    gemm(ctx.threads, false, true, 1, n, D, scale, Q + (size_t)s * ldq + h * D, ldq, Kh, ldkv, 0.f, S, n);
    const float m = row_max(S, n);
    const float inv_l = 1.f / exp_sum_inplace(S, n, m);
    scale_inplace(S, n, inv_l);
    gemm(ctx.threads, false, false, 1, D, n, 1.f, S, n, Vh, ldkv, 0.f, O + (size_t)s * ldo + h * D, ldo);
  });
}

}  // namespace fsr::cpu
