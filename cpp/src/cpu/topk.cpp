// Top-k scoring for recommendation, over the scoring table of score_table.cpp.
//   ids(B,K), scores(B,K) = the K best items 1..V of h(B,C) . E^T, best first (ties: the
//   lower id first), skipping excl[excl_off[b] .. excl_off[b+1]) for row b; slots left when
//   fewer than K items remain get id 0 and score -inf.  NaN scores are never selected.
//
// Every score is one fused multiply-add chain, c = 0..C-1 in order from 0 (std::fmaf's
// rounding), whichever kernel computes it: so a score depends on its session and item
// only, never on the batch, the thread count or the instruction set, and recommend and
// recommend_batch agree bit for bit.
//
// Two ways to the same top-k (the fp32 and int8 panels of the table, score_table.cpp):
//   - fp32: every item's exact score, kept in a K-heap per session;
//   - the int8 screen (bandwidth-bound work, few sessions: a quarter of the bytes): an
//     approximate score a_i for every item with its bound e_i = H r_i; tau = the K-th
//     largest a_i - e_i of the items not excluded; the candidates are the items with
//     a_i + e_i >= tau, which include every item of the exact top-k (K items score at least
//     tau, so the K-th best exact score is >= tau, and a_i + e_i >= exact_i); candidates are
//     re-scored with the fp32 chain from E's row and kept in the K-heap.  Same ids, same
//     scores.  Items with a non-finite bound are always candidates.
// Work is split into units of (a block of sessions, a range of item panels), handed out to
// threads; each unit's exact top-k of its range is merged per session at the end.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
// GCC 12's avx512fintrin.h trips its own -Wmaybe-uninitialized (an intrinsic's undefined
// source operand), not this file's code.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

#include "cpu/ops.h"
#include "cpu/parallel.h"
#include "cpu/score_table.h"

namespace fsr::cpu {

using namespace table;

namespace {
constexpr int kTilePanels = 64; // panels per tile: 1,024 items, 256 KB of fp32 at C = 64
constexpr int kScreenMax = 16;  // the int8 screen (screen = 0) for at most this many sessions
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// ---- the vector unit: lanes of float, loads of fp32 and int8 panel columns, fused multiply-add
#if defined(__AVX512F__)
struct Simd {
  static constexpr int L = 16;
  static constexpr int MR = 4, NR = 4;  // sessions x panels of the micro-tile: 16 accumulators
  using v = __m512;
  static v zero() { return _mm512_setzero_ps(); }
  static v load(const float* p) { return _mm512_loadu_ps(p); }
  static v loadq(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static v bcast(float x) { return _mm512_set1_ps(x); }
  static v fma(v a, v b, v c) { return _mm512_fmadd_ps(a, b, c); }
  static void store(float* p, v x) { _mm512_storeu_ps(p, x); }
  // Keeps x in a register: without it the compiler folds the panel loads into every FMA
  // that uses them, MR loads per vector instead of one, and the loads then bound the kernel.
  static void keep(v& x) { asm("" : "+v"(x)); }
};
#elif defined(__AVX2__) && defined(__FMA__)
struct Simd {
  static constexpr int L = 8;
  static constexpr int MR = 4, NR = 1;  // 4 x 2 accumulators of 8 lanes
  using v = __m256;
  static v zero() { return _mm256_setzero_ps(); }
  static v load(const float* p) { return _mm256_loadu_ps(p); }
  static v loadq(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static v bcast(float x) { return _mm256_set1_ps(x); }
  static v fma(v a, v b, v c) { return _mm256_fmadd_ps(a, b, c); }
  static void store(float* p, v x) { _mm256_storeu_ps(p, x); }
  static void keep(v& x) { asm("" : "+x"(x)); }
};
#else
struct Simd {  // plain floats: std::fmaf, the same rounding as the vector units
  static constexpr int L = 1;
  static constexpr int MR = 2, NR = 1;
  using v = float;
  static v zero() { return 0.f; }
  static v load(const float* p) { return *p; }
  static v loadq(const int8_t* p) { return (float)*p; }
  static v bcast(float x) { return x; }
  static v fma(v a, v b, v c) { return std::fmaf(a, b, c); }
  static void store(float* p, v x) { *p = x; }
  static void keep(v&) {}
};
#endif
constexpr int kW = kPanel / Simd::L;  // vectors per panel column

// Bit j (j < kPanel) set: p[j] > t (never for NaN).
inline uint32_t above(const float* p, float t) {
#if defined(__AVX512F__)
  return _mm512_cmp_ps_mask(_mm512_loadu_ps(p), _mm512_set1_ps(t), _CMP_GT_OQ);
#elif defined(__AVX2__) && defined(__FMA__)
  const __m256 tv = _mm256_set1_ps(t);
  return (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p), tv, _CMP_GT_OQ)) |
         (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p + 8), tv, _CMP_GT_OQ)) << 8;
#else
  uint32_t m = 0;
  for (int j = 0; j < kPanel; ++j) m |= (uint32_t)(p[j] > t) << j;
  return m;
#endif
}

// The screen's bounds of kPanel items: lo = a - e and hi = a + e with a = s * dot, e = H * r;
// bits of the candidates (hi >= tau, or hi NaN) and of the lower bounds above tau.
inline void bounds(const float* dot, const float* s, const float* r, float H, float tau,
                   float* lo, float* hi, uint32_t* cand, uint32_t* low) {
#if defined(__AVX512F__)
  const __m512 a = _mm512_mul_ps(_mm512_loadu_ps(s), _mm512_loadu_ps(dot));
  const __m512 e = _mm512_mul_ps(_mm512_set1_ps(H), _mm512_loadu_ps(r));
  const __m512 l = _mm512_sub_ps(a, e), u = _mm512_add_ps(a, e), tv = _mm512_set1_ps(tau);
  _mm512_storeu_ps(lo, l);
  _mm512_storeu_ps(hi, u);
  *cand = _mm512_cmp_ps_mask(u, tv, _CMP_GE_OQ) | _mm512_cmp_ps_mask(u, u, _CMP_UNORD_Q);
  *low = _mm512_cmp_ps_mask(l, tv, _CMP_GT_OQ);
#else
  uint32_t c = 0, w = 0;
  for (int j = 0; j < kPanel; ++j) {
    const float a = s[j] * dot[j], e = H * r[j];
    lo[j] = a - e;
    hi[j] = a + e;
    c |= (uint32_t)(hi[j] >= tau || std::isnan(hi[j])) << j;
    w |= (uint32_t)(lo[j] > tau) << j;
  }
  *cand = c;
  *low = w;
#endif
}

// out(MR, NR * kPanel) = h(MR rows, ld C) . the NR panels from p, every output one fma
// chain over c from 0 (the NR panels in one group).  T: float (fp32 panels) or int8_t
// (unscaled).
template <int MR, int NR, typename T>
void micro(const float* h, const T* p, int C, float* out) {
  typename Simd::v acc[MR][NR * kW];
  for (int m = 0; m < MR; ++m)
    for (int k = 0; k < NR * kW; ++k) acc[m][k] = Simd::zero();
  const size_t panel = kPanelStep, column = kColumnStep;
  for (int c = 0; c < C; ++c) {
    typename Simd::v b[MR];
    for (int m = 0; m < MR; ++m) b[m] = Simd::bcast(h[(size_t)m * C + c]);
    for (int n = 0; n < NR; ++n)
      for (int w = 0; w < kW; ++w) {
        const T* src = p + n * panel + (size_t)c * column + w * Simd::L;
        typename Simd::v e;
        if constexpr (std::is_same_v<T, float>) e = Simd::load(src);
        else e = Simd::loadq(src);
        Simd::keep(e);
        for (int m = 0; m < MR; ++m) acc[m][n * kW + w] = Simd::fma(b[m], e, acc[m][n * kW + w]);
      }
  }
  for (int m = 0; m < MR; ++m)
    for (int k = 0; k < NR * kW; ++k) Simd::store(out + (size_t)m * NR * kPanel + k * Simd::L, acc[m][k]);
}

// micro for mr <= MR sessions and nr <= NR panels (the edges), picked at run time.
template <typename T, int MR = Simd::MR>
void micro_any(int mr, int nr, const float* h, const T* p, int C, float* out) {
  if constexpr (MR > 1) {
    if (mr < MR) return micro_any<T, MR - 1>(mr, nr, h, p, C, out);
  }
  if (nr == Simd::NR) return micro<MR, Simd::NR, T>(h, p, C, out);
  if constexpr (Simd::NR > 1) {
    // Narrow edges: one panel at a time.
    for (int n = 0; n < nr; ++n) {
      float tmp[MR * kPanel];
      micro<MR, 1, T>(h, p + n * kPanelStep, C, tmp);
      for (int m = 0; m < MR; ++m)
        std::memcpy(out + (size_t)m * nr * kPanel + n * kPanel, tmp + m * kPanel, sizeof(float) * kPanel);
    }
  }
}

// The fp32 score of one item, as every kernel computes it.
inline float exact_score(const float* h, const float* e, int C) {
  float acc = 0.f;
  for (int c = 0; c < C; ++c) acc = std::fmaf(h[c], e[c], acc);
  return acc;
}

// ---- selection
struct Cand {
  float s;
  int32_t id;
};
// "a is better than b": higher score, then lower id.
inline bool better(const Cand& a, const Cand& b) { return a.s > b.s || (a.s == b.s && a.id < b.id); }
// Min-heap on "better": the root is the worst kept candidate.
inline bool heap_cmp(const Cand& a, const Cand& b) { return better(a, b); }

inline bool excluded(const int32_t* ex, int n, int32_t id) {  // ex sorted
  return std::binary_search(ex, ex + n, id);
}

// A session's K-heap of (score, id).
struct Heap {
  Cand* c;
  int f, K;
  // Offer item `id` (ids offered in increasing order within one unit, so an equal score
  // never displaces the root).  NaN never enters.
  void offer(float s, int32_t id) {
    if (std::isnan(s)) return;
    const Cand x{s, id};
    if (f < K) {
      c[f++] = x;
      std::push_heap(c, c + f, heap_cmp);
    } else if (better(x, c[0])) {
      std::pop_heap(c, c + K, heap_cmp);
      c[K - 1] = x;
      std::push_heap(c, c + K, heap_cmp);
    }
  }
  // Scores that could enter: > threshold() (or any, not NaN, while not full).
  float threshold() const { return f < K ? -kInf : c[0].s; }
  bool full() const { return f == K; }
};

// A K-heap of floats (the screen's lower bounds): the K-th largest so far at the root.
struct LowHeap {
  float* v;
  int f, K;
  void offer(float x) {
    if (f < K) {
      v[f++] = x;
      std::push_heap(v, v + f, std::greater<float>());
    } else if (x > v[0]) {
      std::pop_heap(v, v + K, std::greater<float>());
      v[K - 1] = x;
      std::push_heap(v, v + K, std::greater<float>());
    }
  }
  float tau() const { return f < K ? -kInf : v[0]; }
};

// The sessions' sorted exclusions (binary-searched when an item would enter a heap).
struct Exclusions {
  std::vector<int32_t> ids;
  std::vector<int64_t> off;
  Exclusions(const int32_t* excl, const int64_t* excl_off, int B) : off(excl_off, excl_off + B + 1) {
    const int64_t base = excl_off[0];
    for (int b = 0; b <= B; ++b) off[b] -= base;
    ids.assign(excl + base, excl + base + off[B]);
    for (int b = 0; b < B; ++b) std::sort(ids.begin() + off[b], ids.begin() + off[b + 1]);
  }
  const int32_t* of(int b) const { return ids.data() + off[b]; }
  int count(int b) const { return (int)(off[b + 1] - off[b]); }
};

// One unit of the fp32 way: sessions b0..b0+nb of h, panels p0..p1, into heaps[0..nb).
void unit_fp32(const TableView& t, const float* h, int b0, int nb, int p0, int p1, int C, int V,
               const Exclusions& ex, Heap* heaps, float* out) {
  for (int t0 = p0; t0 < p1; t0 += kTilePanels) {
    const int t1 = std::min(p1, t0 + kTilePanels);
    for (int m0 = 0; m0 < nb; m0 += Simd::MR) {
      const int mr = std::min(Simd::MR, nb - m0);
      for (int n0 = t0; n0 < t1; n0 += Simd::NR) {
        const int nr = std::min(Simd::NR, t1 - n0);
        micro_any<float>(mr, nr, h + (size_t)(b0 + m0) * C, t.f32 + panel_at(n0, C), C, out);
        const int first = n0 * kPanel + 1, n_items = std::min(nr * kPanel, V - first + 1);
        for (int m = 0; m < mr; ++m) {
          Heap& hp = heaps[m0 + m];
          const float* row = out + (size_t)m * nr * kPanel;
          const int b = b0 + m0 + m;
          for (int j0 = 0; j0 < n_items; j0 += kPanel) {
            // While the heap is full, only scores above its worst can enter: a mask of them.
            const int n = std::min(kPanel, n_items - j0);
            uint32_t bits = hp.full() ? above(row + j0, hp.threshold()) : 0xFFFFu;
            bits &= n == kPanel ? 0xFFFFu : (1u << n) - 1;
            while (bits) {
              const int j = j0 + __builtin_ctz(bits);
              bits &= bits - 1;
              if (ex.count(b) && excluded(ex.of(b), ex.count(b), first + j)) continue;
              hp.offer(row[j], first + j);
            }
          }
        }
      }
    }
  }
}

// One unit of the int8 screen: the same result as unit_fp32.  low: nb LowHeaps; cand:
// nb lists of room (p1 - p0) * kPanel ids each.
void unit_screen(const TableView& t, const float* E, const float* h, int b0, int nb, int p0,
                 int p1, int C, int V, const Exclusions& ex, Heap* heaps, LowHeap* low,
                 int32_t* cand, float* cand_u, float* out) {
  const size_t room = (size_t)(p1 - p0) * kPanel;
  float H[Simd::MR];
  int n_cand[Simd::MR] = {};
  for (int m = 0; m < nb; ++m) {
    double s = 0.0;
    for (int c = 0; c < C; ++c) s += std::fabs((double)h[(size_t)(b0 + m) * C + c]);
    H[m] = std::nextafter((float)(s * (1.0 + 0x1p-40)), kInf);
  }
  for (int n0 = p0; n0 < p1; n0 += Simd::NR) {
    const int nr = std::min(Simd::NR, p1 - n0);
    micro_any<int8_t>(nb, nr, h + (size_t)b0 * C, t.q + panel_at(n0, C), C, out);
    const int first = n0 * kPanel + 1, n_items = std::min(nr * kPanel, V - first + 1);
    const float* sc = t.scale + (size_t)n0 * kPanel;
    const float* rc = t.coef + (size_t)n0 * kPanel;
    for (int m = 0; m < nb; ++m) {
      const float* row = out + (size_t)m * nr * kPanel;
      LowHeap& lh = low[m];
      const int b = b0 + m;
      int32_t* cl = cand + m * room;
      float* cu = cand_u + m * room;
      for (int j0 = 0; j0 < n_items; j0 += kPanel) {
        const int n = std::min(kPanel, n_items - j0);
        const uint32_t valid = n == kPanel ? 0xFFFFu : (1u << n) - 1;
        float lo[kPanel], hi[kPanel];
        uint32_t cbits, lbits;
        bounds(row + j0, sc + j0, rc + j0, H[m], lh.tau(), lo, hi, &cbits, &lbits);
        cbits &= valid;
        lbits &= valid;
        while (cbits) {  // candidates (a non-finite bound always is one)
          const int j = __builtin_ctz(cbits);
          cbits &= cbits - 1;
          cl[n_cand[m]] = first + j0 + j;
          cu[n_cand[m]++] = std::isnan(hi[j]) ? kInf : hi[j];
        }
        while (lbits) {  // lower bounds that enter (tau only rises: a stale mask is safe)
          const int j = __builtin_ctz(lbits);
          lbits &= lbits - 1;
          if (!(ex.count(b) && excluded(ex.of(b), ex.count(b), first + j0 + j))) lh.offer(lo[j]);
        }
      }
    }
  }
  for (int m = 0; m < nb; ++m) {
    const float tau = low[m].tau();
    const int b = b0 + m;
    const int32_t* cl = cand + m * room;
    const float* cu = cand_u + m * room;
    for (int i = 0; i < n_cand[m]; ++i) {
      if (!(cu[i] >= tau)) continue;
      const int32_t id = cl[i];
      if (ex.count(b) && excluded(ex.of(b), ex.count(b), id)) continue;
      heaps[m].offer(exact_score(h + (size_t)b * C, E + (size_t)id * C, C), id);
    }
  }
}

}  // namespace

// The CPU allocates its scratch per call (no workspace).
size_t topk_workspace(const Context&, int B, int C, int V, int K) { return 0; }

void topk(const Context& ctx, int32_t* ids, float* scores, const float* h, const float* E,
          const float* table, int screen, const int32_t* excl, const int64_t* excl_off, int B,
          int C, int V, int K, float* workspace) {
  FSR_REQUIRE(B >= 0 && C >= 0 && V >= 0 && K >= 0, "topk: negative size (B=", B, ", C=", C,
              ", V=", V, ", K=", K, ")");
  FSR_REQUIRE(screen >= 0 && screen <= 2, "topk: screen must be 0, 1 or 2, got ", screen);
  if (B == 0 || K == 0) return;
  std::vector<float> own;  // no table given: pack one for this call
  if (!table) {
    own.resize(table_floats(C, V));
    score_table_pack(ctx, own.data(), E, C, V);
    table = own.data();
  }
  const TableView tv = view(table, C, V);
  const Exclusions ex(excl, excl_off, B);
  const bool use_screen = screen == 2 || (screen == 0 && B <= kScreenMax && C > 0);
  // Units: session blocks x panel ranges, enough of them for the threads.
  const int nt = usable_threads(ctx.threads);
  const int sb = use_screen ? Simd::MR : 32;
  const int n_sb = (B + sb - 1) / sb;
  int n_ir = 1;
  if (n_sb < nt && tv.np > 0) n_ir = std::max(1, std::min((nt + n_sb - 1) / n_sb, tv.np / 16));
  // Ranges start on an int8 group (the screen's kernel reads a group's panels together).
  const int per_range = tv.np > 0 ? ((tv.np + n_ir - 1) / n_ir + kGroup - 1) / kGroup * kGroup : 0;
  const int n_units = n_sb * n_ir;
  // Scratch per thread: heaps (and the screen's bound heaps and candidate lists) of one
  // unit, and a micro-tile; partial lists per unit when the items are split.
  const size_t out_floats = (size_t)Simd::MR * Simd::NR * kPanel;
  const size_t room = (size_t)std::max(per_range, 1) * kPanel;
  const size_t per_thread = 2 * (size_t)sb * K + out_floats +
                            (use_screen ? (size_t)sb * K + 2 * (size_t)sb * room : 0);
  const ThreadScratch scratch("topk", nt, per_thread);
  std::vector<Cand> partial(n_ir > 1 ? (size_t)n_units * sb * K : 0);
  std::vector<int> partial_fill(n_ir > 1 ? (size_t)n_units * sb : 0);
  parallel_for_dynamic(nt, n_units, [&](int u) {
    const int blk = u / n_ir, r = u % n_ir;
    const int b0 = blk * sb, nb = std::min(B, b0 + sb) - b0;
    const int p0 = std::min(tv.np, r * per_range), p1 = std::min(tv.np, p0 + per_range);
    float* S = scratch.slot();
    Cand* hc = reinterpret_cast<Cand*>(S);
    float* out = S + 2 * (size_t)sb * K;
    Heap heaps[32];
    for (int m = 0; m < nb; ++m) heaps[m] = Heap{hc + (size_t)m * K, 0, K};
    if (use_screen) {
      float* lv = out + out_floats;
      int32_t* cand = reinterpret_cast<int32_t*>(lv + (size_t)sb * K);
      float* cand_u = reinterpret_cast<float*>(cand + (size_t)sb * room);
      LowHeap low[Simd::MR];
      for (int m = 0; m < nb; ++m) low[m] = LowHeap{lv + (size_t)m * K, 0, K};
      for (int m0 = 0; m0 < nb; m0 += Simd::MR) {
        const int mr = std::min(Simd::MR, nb - m0);
        unit_screen(tv, E, h, b0 + m0, mr, p0, p1, C, V, ex, heaps + m0, low, cand, cand_u, out);
      }
    } else {
      unit_fp32(tv, h, b0, nb, p0, p1, C, V, ex, heaps, out);
    }
    for (int m = 0; m < nb; ++m) {
      Heap& hp = heaps[m];
      std::sort(hp.c, hp.c + hp.f, better);
      if (n_ir > 1) {
        const size_t slot = (size_t)u * sb + m;
        std::copy(hp.c, hp.c + hp.f, partial.begin() + slot * K);
        partial_fill[slot] = hp.f;
        continue;
      }
      int32_t* oi = ids + (size_t)(b0 + m) * K;
      float* os = scores + (size_t)(b0 + m) * K;
      for (int k = 0; k < K; ++k) {
        oi[k] = k < hp.f ? hp.c[k].id : 0;
        os[k] = k < hp.f ? hp.c[k].s : -kInf;
      }
    }
  });
  if (n_ir == 1) return;
  // Merge each session's sorted lists of its ranges.
  const ThreadScratch merge("topk", nt, 2 * (size_t)n_ir * K);
  parallel_for(nt, B, [&](int b) {
    const int blk = b / sb, m = b % sb;
    Cand* all = reinterpret_cast<Cand*>(merge.slot());
    int n = 0;
    for (int r = 0; r < n_ir; ++r) {
      const size_t slot = (size_t)(blk * n_ir + r) * sb + m;
      const Cand* src = partial.data() + slot * K;
      n = (int)(std::copy(src, src + partial_fill[slot], all + n) - all);
    }
    const int f = std::min(K, n);
    std::partial_sort(all, all + f, all + n, better);
    int32_t* oi = ids + (size_t)b * K;
    float* os = scores + (size_t)b * K;
    for (int k = 0; k < K; ++k) {
      oi[k] = k < f ? all[k].id : 0;
      os[k] = k < f ? all[k].s : -kInf;
    }
  });
}

}  // namespace fsr::cpu
