// Inference: the final state of each session (its last max_seq items through the model,
// only the last row through the last layer's queries), and top-k scoring against the
// item embeddings, from host arrays (recommend) or from arrays already on the device
// (recommend_resident).
#include <algorithm>
#include <vector>

#include "fastsasrec/common.h"
#include "fastsasrec/model.h"
#include "model_parts.h"

namespace fsr {

namespace {
constexpr int64_t kScoreChunk = 65536;  // sessions per top-k call
size_t aligned(size_t bytes) { return (bytes + 255) / 256 * 256; }
}  // namespace

// Forward (no dropout) of sessions b0..b1; each one's final state lands in a.hlast.
void Model::final_states(const int32_t* items, const int64_t* offsets, int64_t b0, int64_t b1,
                         HostBatch& hb, Acts& a) {
  const int T = cfg_.max_seq;
  hb.clear();
  for (int64_t s = b0; s < b1; ++s) {
    const int64_t len = offsets[s + 1] - offsets[s];
    FSR_REQUIRE(len >= 1, "session ", s, " is empty");
    const int n = (int)std::min<int64_t>(len, T);
    hb.add_sequence(items + offsets[s + 1] - n, nullptr, n, T);
  }
  ensure_acts(a, hb.R(), hb.B(), false);
  upload_batch(hb, a);
  forward(a, Shape{hb.R(), hb.B(), hb.n_max}, false, 0, Rows::Last);
}

// The end of the inference forward that starts at session f0 (at most b1): as many sessions
// as fill the backend's row budget with their last max_seq items, and at least one.
// Short sessions make few rows, so they go many to a forward.
int64_t Model::forward_end(const int64_t* offsets, int64_t f0, int64_t b1) const {
  const int64_t budget = (int64_t)be_->inference_rows(), T = cfg_.max_seq;
  int64_t rows = 0, f = f0;
  while (f < b1) {
    const int64_t n = std::min<int64_t>(offsets[f + 1] - offsets[f], T);
    if (f > f0 && rows + n > budget) break;
    rows += n;
    ++f;
  }
  return f;
}

std::vector<float> Model::session_states(const int32_t* items, const int64_t* offsets, int64_t B) {
  std::lock_guard<std::mutex> lock(mu_);
  const int C = cfg_.factors;
  std::vector<float> out((size_t)B * C);
  HostBatch hb;
  Acts& a = *infer_acts_;
  for (int64_t b0 = 0, b1; b0 < B; b0 = b1) {
    b1 = forward_end(offsets, b0, B);
    final_states(items, offsets, b0, b1, hb, a);
    be_->download(out.data() + (size_t)b0 * C, a.hlast, (size_t)(b1 - b0) * C * sizeof(float));
  }
  return out;
}

// The top K of B sessions, kScoreChunk sessions to one top-k call (the GPU sees one large
// product instead of many small ones), in scratch kept between calls.  For each chunk
// b0..b1 the callers say
//   states(b0, b1, h):           the chunk's final states into h (backend memory, (nb, C))
//   exclusions(b0, b1, ex, off): the chunk's exclusion ids and their (nb + 1) offsets,
//                                in scratch `ex` (room for n_excl ids) and `off`
//   outputs(b0, b1, ids, sc):    where the chunk's (nb, K) results go; null: into scratch,
//                                then outputs(b0, b1, ids, sc) is called again with them
Model::Ranked Model::catalogue_table() {
  const int C = cfg_.factors, V = cfg_.n_items;
  const float* E = item_table();
  const size_t table_size = be_->score_table_size(C, V);
  if (table_size && table_stale_) {
    be_->score_table_pack(static_cast<float*>(score_table_->grow(table_size * 4)), E, C, V);
    table_stale_ = false;
  }
  return Ranked{E, V, table_size ? score_table_->f() : nullptr};
}

// Rows 0 (the padding row, never ranked) and cand[0..n) of the item table, gathered into
// one table of n + 1 rows, then packed as the backend ranks it; kept while the weights and
// the candidates stay the same (packing costs several times what ranking one session over
// the packed table does).
Model::Ranked Model::candidate_table(const int32_t* cand, int n) {
  const int C = cfg_.factors, V = cfg_.n_items;
  FSR_REQUIRE(n >= 1, "candidates: at least one item is needed, got none");
  for (int i = 0; i < n; ++i)
    FSR_REQUIRE(cand[i] >= 1 && cand[i] <= V && (i == 0 || cand[i] > cand[i - 1]),
                "candidates must be increasing ids in 1..", V, ": entry ", i, " is ", cand[i]);
  if (!sub_stale_ && sub_cand_.size() == (size_t)n && std::equal(cand, cand + n, sub_cand_.begin()))
    return sub_ranked_;
  sub_stale_ = true;  // (until rebuilt: the buffer below may move)
  const float* E = item_table();
  const size_t sz_rows = aligned((size_t)(n + 1) * 4), sz_E = aligned((size_t)(n + 1) * C * 4),
               table_size = be_->score_table_size(C, n);
  char* base = (char*)sub_table_->grow(sz_rows + sz_E + table_size * 4);
  int32_t* rows = (int32_t*)base;
  float* sub = (float*)(base + sz_rows);
  std::vector<int32_t> host(cand, cand + n);
  host.insert(host.begin(), 0);
  be_->upload(rows, host.data(), host.size() * 4);
  be_->gather_rows(sub, E, rows, n + 1, C);
  float* table = table_size ? (float*)(base + sz_rows + sz_E) : nullptr;
  if (table) be_->score_table_pack(table, sub, C, n);
  sub_cand_.assign(cand, cand + n);
  sub_ranked_ = Ranked{sub, n, table};
  sub_stale_ = false;
  return sub_ranked_;
}

template <typename States, typename Exclusions, typename Outputs>
void Model::score(const Ranked& ranked, int64_t B, int K, int64_t n_excl, States states,
                  Exclusions exclusions, Outputs outputs) {
  const int C = cfg_.factors, V = ranked.V;
  const float* E = ranked.E;
  const int64_t chunk = std::min<int64_t>(B, kScoreChunk);
  const size_t sz_h = aligned((size_t)chunk * C * 4), sz_off = aligned((size_t)(chunk + 1) * 8),
               sz_ex = aligned((size_t)std::max<int64_t>(n_excl, 1) * 4),
               sz_out = aligned((size_t)chunk * K * 4),
               sz_ws = aligned(be_->topk_workspace((int)chunk, C, V, K) * 4);
  char* base = (char*)score_buf_->grow(sz_h + sz_off + sz_ex + 2 * sz_out + sz_ws);
  float* h = (float*)base;
  int64_t* off = (int64_t*)(base + sz_h);
  int32_t* ex = (int32_t*)(base + sz_h + sz_off);
  int32_t* ids = (int32_t*)(base + sz_h + sz_off + sz_ex);
  float* sc = (float*)(base + sz_h + sz_off + sz_ex + sz_out);
  float* ws = (float*)(base + sz_h + sz_off + sz_ex + 2 * sz_out);
  const float* table = ranked.table;
  for (int64_t b0 = 0; b0 < B; b0 += chunk) {
    const int64_t b1 = std::min(B, b0 + chunk);
    states(b0, b1, h);
    const int32_t* ex_chunk = exclusions(b0, b1, ex, off);
    int32_t* out_ids = nullptr;
    float* out_sc = nullptr;
    outputs(b0, b1, out_ids, out_sc);
    const bool staged = out_ids == nullptr;
    be_->topk(staged ? ids : out_ids, staged ? sc : out_sc, h, E, table, screen_, ex_chunk, off,
              (int)(b1 - b0), C, V, K, ws);
    if (staged) {
      out_ids = ids;
      out_sc = sc;
      outputs(b0, b1, out_ids, out_sc);
    }
  }
}

void Model::recommend(const int32_t* items, const int64_t* offsets, int64_t B, int K,
                      const int32_t* excl, const int64_t* excl_off, int32_t* out_ids,
                      float* out_scores, const int32_t* cand, int n_cand) {
  std::lock_guard<std::mutex> lock(mu_);
  const int C = cfg_.factors;
  const int V = cand ? n_cand : cfg_.n_items;
  FSR_REQUIRE(K >= 1, "n must be >= 1, got ", K);
  FSR_REQUIRE(K <= V, "n (", K, ") must be <= the number of ", cand ? "candidates" : "items", " (", V, ")");
  // (the scratch score() grows is separate from sub_table_, so the table stays put)
  const Ranked ranked = cand ? candidate_table(cand, n_cand) : catalogue_table();
  HostBatch hb;
  Acts& a = *infer_acts_;
  int64_t n_excl = 0;  // the most exclusions of any chunk
  for (int64_t b0 = 0; b0 < B; b0 += kScoreChunk)
    n_excl = std::max(n_excl, excl_off[std::min(B, b0 + kScoreChunk)] - excl_off[b0]);
  std::vector<int64_t> off_local;
  score(
      ranked, B, K, n_excl,
      [&](int64_t b0, int64_t b1, float* h) {  // as many forwards as fill the row budget
        for (int64_t f0 = b0, f1; f0 < b1; f0 = f1) {
          f1 = forward_end(offsets, f0, b1);
          final_states(items, offsets, f0, f1, hb, a);
          be_->copy(h + (size_t)(f0 - b0) * C, a.hlast, (size_t)(f1 - f0) * C * sizeof(float));
        }
      },
      [&](int64_t b0, int64_t b1, int32_t* ex, int64_t* off) -> const int32_t* {
        off_local.resize(b1 - b0 + 1);
        for (int64_t b = b0; b <= b1; ++b) off_local[b - b0] = excl_off[b] - excl_off[b0];
        be_->upload(ex, excl + excl_off[b0], (size_t)off_local.back() * 4);
        be_->upload(off, off_local.data(), off_local.size() * 8);
        return ex;
      },
      [&](int64_t b0, int64_t b1, int32_t*& ids, float*& sc) {  // staged, then downloaded
        if (!ids) return;
        be_->download(out_ids + b0 * K, ids, (size_t)(b1 - b0) * K * 4);
        be_->download(out_scores + b0 * K, sc, (size_t)(b1 - b0) * K * 4);
      });
}

// recommend for sessions already in backend memory (a GPU caller's arrays): B sessions of
// L internal ids each (row-major, every id in 1..V, L <= max_seq), exclusions B rows of
// Lx ids (none when excl is null), outputs (B, K) written in backend memory.  Nothing
// crosses to the host but the positions and row offsets, which follow from B and L alone.
void Model::recommend_resident(const int32_t* items, int64_t B, int L, const int32_t* excl,
                               int Lx, int K, int32_t* out_ids, float* out_scores) {
  std::lock_guard<std::mutex> lock(mu_);
  const int C = cfg_.factors, V = cfg_.n_items, T = cfg_.max_seq;
  FSR_REQUIRE(K >= 1 && K <= V, "n must be in 1..", V, ", got ", K);
  FSR_REQUIRE(L >= 1 && L <= T, "session length must be in 1..", T, " (max_seq), got ", L);
  FSR_REQUIRE(B >= 0, "the number of sessions must be >= 0, got ", B);
  FSR_REQUIRE(excl == nullptr ? Lx == 0 : Lx >= 1, "exclusion rows of ", Lx, " ids");
  // The ids index the embedding table: check them where they are.  (Exclusions are only
  // compared with item ids, so any value there is harmless.)
  const size_t n = (size_t)B * (size_t)L;
  if (n) {
    int64_t* first = static_cast<int64_t*>(score_buf_->grow(sizeof(int64_t)));
    be_->find_outside(first, items, n, 1, V);
    int64_t bad = 0;
    be_->download(&bad, first, sizeof(bad));
    if (bad < (int64_t)n) {
      int32_t id = 0;
      be_->download(&id, items + bad, sizeof(id));
      FSR_REQUIRE(false, "items: id ", id, " at position ", bad, " (session ", bad / L, ", item ",
                  bad % L, ") is outside 1..", V);
    }
  }
  Acts& a = *infer_acts_;
  const int64_t fchunk = std::max<int64_t>(1, (int64_t)be_->inference_rows() / L);
  HostBatch hb;  // positions and row offsets only: the items are on the device
  std::vector<int64_t> off;
  score(
      catalogue_table(), B, K, 0,
      [&](int64_t b0, int64_t b1, float* h) {
        for (int64_t f0 = b0; f0 < b1; f0 += fchunk) {
          const int64_t f1 = std::min(b1, f0 + fchunk);
          hb.clear();
          for (int64_t b = f0; b < f1; ++b) hb.add_sequence(nullptr, nullptr, L, T);
          ensure_acts(a, hb.R(), hb.B(), false);
          be_->copy(a.items, items + (size_t)f0 * L, (size_t)hb.R() * 4);
          upload_batch(hb, a);
          forward(a, Shape{hb.R(), hb.B(), hb.n_max}, false, 0, Rows::Last);
          be_->copy(h + (size_t)(f0 - b0) * C, a.hlast, (size_t)hb.B() * C * sizeof(float));
        }
      },
      [&](int64_t b0, int64_t b1, int32_t*, int64_t* doff) -> const int32_t* {
        off.resize(b1 - b0 + 1);
        for (int64_t b = 0; b <= b1 - b0; ++b) off[b] = b * Lx;
        be_->upload(doff, off.data(), off.size() * 8);
        // With no exclusions every row's range is empty and the pointer is never read.
        return excl ? excl + (size_t)b0 * Lx : items;
      },
      [&](int64_t b0, int64_t, int32_t*& ids, float*& sc) {  // straight into the caller's
        ids = out_ids + (size_t)b0 * K;
        sc = out_scores + (size_t)b0 * K;
      });
  be_->synchronize();
}

void Model::set_scoring(const std::string& how) {
  std::lock_guard<std::mutex> lock(mu_);
  const int s = how == "auto" ? 0 : how == "fp32" ? 1 : how == "int8" ? 2 : -1;
  FSR_REQUIRE(s >= 0, "scoring must be 'auto', 'fp32' or 'int8', got '", how, "'");
  screen_ = s;
}

std::string Model::scoring() const { return screen_ == 0 ? "auto" : screen_ == 1 ? "fp32" : "int8"; }

}  // namespace fsr
