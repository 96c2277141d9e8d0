// The scoring table of the item embeddings, in the form topk reads (packed once per
// weights; layout in score_table.h).
//   score_table_size: the floats of the table of E ((V+1) x C)
//   score_table_pack: table = the packed form of E's items 1..V (every value written)
//
// The table holds the items in panels of
// kPanel lanes, so a vector of lanes is one factor of kPanel items and the kernels need no
// horizontal sums; kGroup panels are interleaved by factor, so a kernel reading a group's
// panels reads one sequential stream (the hardware prefetcher's best case):
//   - fp32 panels: E's values;
//   - int8 panels with per-item scales s_i (q = round(E / s), s = max|E_i| / 127) and per-
//     item error coefficients r_i, such that for any h with H = sum |h_c|,
//       | s_i * fma-chain(h, q_i) - fma-chain(h, E_i) | <= H * r_i,
//     (r_i = max_c |E_ic - s_i q_ic| plus the two chains' rounding, gamma_{C+1} (127 s_i +
//     max|E_i|), plus a margin for forming a +- H r in float; see pack_item).
// topk.cpp states how its two ways of reading the panels give the same top-k.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "cpu/ops.h"
#include "cpu/parallel.h"
#include "cpu/score_table.h"

namespace fsr::cpu {

using namespace table;

namespace {
constexpr float kInf = std::numeric_limits<float>::infinity();

// gamma_n = n u / (1 - n u), u = 2^-24: the relative bound of an n-term dot product's rounding.
double gamma_n(int n) {
  const double nu = (double)n * 0x1p-24;
  return nu / (1.0 - nu);
}

// Item e (C values) into its panel lane (columns kColumnStep apart): fp32 copy, int8
// codes, scale and error coefficient.
void pack_item(const float* e, int C, float* f32, int8_t* q, float* scale, float* coef) {
  constexpr size_t qs = kColumnStep;
  double mx = 0.0;
  bool finite = true;
  for (int c = 0; c < C; ++c) {
    f32[(size_t)c * qs] = e[c];
    finite = finite && std::isfinite(e[c]);
    mx = std::max(mx, std::fabs((double)e[c]));
  }
  if (!finite) {  // never screened out: always a candidate
    for (int c = 0; c < C; ++c) q[(size_t)c * qs] = 0;
    *scale = 0.f;
    *coef = kInf;
    return;
  }
  const float s = (float)(mx / 127.0);
  double d = 0.0;  // max |E - s q|, exact in double
  for (int c = 0; c < C; ++c) {
    int qc = s > 0.f ? (int)std::lrint((double)e[c] / (double)s) : 0;
    qc = std::clamp(qc, -127, 127);
    q[(size_t)c * qs] = (int8_t)qc;
    d = std::max(d, std::fabs((double)e[c] - (double)s * qc));
  }
  // Rounding: the fp32 chain is within gamma_C H max|E|, the int8 chain and its scaling
  // within gamma_{C+1} H 127 s; forming a +- e in float costs at most u (|a| + e) <=
  // u (128 s + ...) H, far inside the margin 2^-10 (s + max|E| / 127) H.
  const double g = gamma_n(C + 1);
  const double r = d + g * (mx + 127.0 * s) + 0x1p-10 * ((double)s + mx / 127.0);
  *scale = s;
  *coef = std::nextafter((float)r, kInf);
}

}  // namespace

size_t score_table_size(const Context&, int C, int V) { return table_floats(C, V); }

void score_table_pack(const Context& ctx, float* table, const float* E, int C, int V) {
  const TableView tv = view(table, C, V);
  float* f32 = table;
  float* scale = const_cast<float*>(tv.scale);
  float* coef = const_cast<float*>(tv.coef);
  int8_t* q = const_cast<int8_t*>(tv.q);
  // Zeros first: the padding lanes and the last group's panels past np (never items).
  std::memset(f32, 0, n_cells(C, V) * sizeof(float));
  std::memset(q, 0, n_cells(C, V));
  parallel_chunks(ctx.threads, tv.np, (long)C * kPanel, [&](long lo, long hi, int) {
    for (long p = lo; p < hi; ++p) {
      const size_t base = panel_at((int)p, C);
      for (int j = 0; j < kPanel; ++j) {
        const long item = p * kPanel + j + 1;
        const size_t lane = (size_t)p * kPanel + j;
        if (item <= V) {
          pack_item(E + (size_t)item * C, C, f32 + base + j, q + base + j, scale + lane, coef + lane);
        } else {
          scale[lane] = 0.f;
          coef[lane] = 0.f;
        }
      }
    }
  });
}

}  // namespace fsr::cpu
