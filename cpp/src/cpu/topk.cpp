// Top-k scoring for recommendation.
//   ids(B,K), scores(B,K) = the K best items 1..V of h(B,C) . E^T, best first (ties: the
//   lower id first), skipping excl[excl_off[b] .. excl_off[b+1]) for row b; slots left when
//   fewer than K items remain get id 0 and score -inf.  NaN scores are never selected.
// Items are scored a tile at a time (rows x kTile), each row keeping a K-heap: memory is
// bounded by the tile, never B x V.  Rows are split over threads in blocks.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/ops.h"
#include "cpu/parallel.h"

namespace fsr::cpu {

namespace {
constexpr int kTile = 4096;   // items per tile
constexpr int kRowBlock = 32; // rows per task

struct Cand {
  float s;
  int32_t id;
};
// "a is better than b": higher score, then lower id.
inline bool better(const Cand& a, const Cand& b) { return a.s > b.s || (a.s == b.s && a.id < b.id); }
// Min-heap on "better": the root is the worst kept candidate.
inline bool heap_cmp(const Cand& a, const Cand& b) { return better(a, b); }
}  // namespace

// The CPU allocates its tiles and heaps per call, per thread (no workspace).
size_t topk_workspace(const Context&, int B, int C, int V, int K) { return 0; }

void topk(const Context& ctx, int32_t* ids, float* scores, const float* h, const float* E,
          const int32_t* excl, const int64_t* excl_off, int B, int C, int V, int K,
          float* workspace) {
  const float ninf = -std::numeric_limits<float>::infinity();
  const int nblocks = (B + kRowBlock - 1) / kRowBlock;
  const int tile_n = std::min(kTile, std::max(V, 1));
  // Per thread: a tile of scores, the rows' K-heaps and fill counts, allocated before the
  // region (a failed allocation is a MemoryError here, not inside the region).
  static_assert(sizeof(Cand) == 2 * sizeof(float), "a candidate is two floats of scratch");
  const size_t rows = (size_t)std::min(B, kRowBlock);
  const ThreadScratch scratch("topk", usable_threads(ctx.threads),
                              rows * tile_n + 2 * rows * (size_t)K + rows);
  parallel_for_dynamic(ctx.threads, nblocks, [&](int blk) {
    const int b0 = blk * kRowBlock, b1 = std::min(B, b0 + kRowBlock), nb = b1 - b0;
    float* S = scratch.slot();
    Cand* heaps = reinterpret_cast<Cand*>(S + rows * tile_n);
    int* fill = reinterpret_cast<int*>(S + rows * tile_n + 2 * rows * (size_t)K);
    std::fill(fill, fill + nb, 0);
    for (int i0 = 1; i0 <= V; i0 += tile_n) {
      const int in = std::min(tile_n, V - i0 + 1);
      gemm(ctx.threads, false, true, nb, in, C, 1.f, h + (size_t)b0 * C, C, E + (size_t)i0 * C, C, 0.f, S, in);
      for (int b = 0; b < nb; ++b) {
        float* row = S + (size_t)b * in;
        for (int64_t e = excl_off[b0 + b]; e < excl_off[b0 + b + 1]; ++e) {
          const int32_t x = excl[e];
          if (x >= i0 && x < i0 + in) row[x - i0] = std::numeric_limits<float>::quiet_NaN();
        }
        Cand* hp = heaps + (size_t)b * K;
        int& f = fill[b];
        for (int j = 0; j < in; ++j) {
          const float s = row[j];
          if (std::isnan(s)) continue;
          const Cand c{s, i0 + j};
          if (f < K) {
            hp[f++] = c;
            std::push_heap(hp, hp + f, heap_cmp);
          } else if (better(c, hp[0])) {
            std::pop_heap(hp, hp + K, heap_cmp);
            hp[K - 1] = c;
            std::push_heap(hp, hp + K, heap_cmp);
          }
        }
      }
    }
    for (int b = 0; b < nb; ++b) {
      Cand* hp = heaps + (size_t)b * K;
      const int f = fill[b];
      std::sort(hp, hp + f, better);
      int32_t* oi = ids + (size_t)(b0 + b) * K;
      float* os = scores + (size_t)(b0 + b) * K;
      for (int k = 0; k < K; ++k) {
        oi[k] = k < f ? hp[k].id : 0;
        os[k] = k < f ? hp[k].s : ninf;
      }
    }
  });
}

}  // namespace fsr::cpu
