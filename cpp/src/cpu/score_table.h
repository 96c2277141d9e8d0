// The CPU's scoring table: its layout, shared by score_table.cpp (which packs it) and
// topk.cpp (whose kernels read it).  See score_table.cpp for what the table holds.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace fsr::cpu::table {

constexpr int kPanel = 16;      // items per panel
constexpr int kGroup = 4;       // panels interleaved by column: one stream for the kernels to read

// Panels come in groups of kGroup, a group's column c holding its panels' lanes side by
// side (64 values: one 64-byte line of int8, four of fp32), columns one after another: the
// kernels read one sequential stream however many of a group's panels they take.
constexpr size_t kPanelStep = kPanel, kColumnStep = kGroup * kPanel;

inline size_t n_panels(int V) { return ((size_t)std::max(V, 0) + kPanel - 1) / kPanel; }
// Values of the fp32 (or int8) panels: whole groups.
inline size_t n_cells(int C, int V) { return (n_panels(V) + kGroup - 1) / kGroup * kGroup * (size_t)C * kPanel; }
// Where panel n's column 0 starts.
inline size_t panel_at(int n, int C) {
  return (size_t)(n / kGroup) * C * kColumnStep + (size_t)(n % kGroup) * kPanelStep;
}
struct TableView {
  int np;              // panels
  const float* f32;    // n_cells, grouped
  const float* scale;  // np x kPanel: s_i
  const float* coef;   // np x kPanel: r_i
  const int8_t* q;     // n_cells, grouped
};
inline size_t table_floats(int C, int V) {
  const size_t cells = n_cells(C, V);
  return cells + 2 * n_panels(V) * kPanel + (cells + 3) / 4;
}
inline TableView view(const float* t, int C, int V) {
  TableView tv;
  tv.np = (int)n_panels(V);
  tv.f32 = t;
  tv.scale = t + n_cells(C, V);
  tv.coef = tv.scale + (size_t)tv.np * kPanel;
  tv.q = reinterpret_cast<const int8_t*>(tv.coef + (size_t)tv.np * kPanel);
  return tv;
}

}  // namespace fsr::cpu::table
