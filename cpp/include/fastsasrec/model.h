// The SASRec model: parameters, arenas, explicit forward and backward, AdamW, the
// training loop over packed batches, and inference (session states, top-k).  In files by
// job: cpp/src/model.cpp (parameters, arenas, forward, backward), train.cpp (batches,
// epochs, optimizer), infer.cpp (session states, scoring).
//
// Block (the paper's reference code):  q = LN1(x);  x = q + MHA(Q = q, K = V = x);
//                                      y = LN2(x);  x = y + FFN(y)
// then h = LN_f(x) and scores = h . E^T (the output shares the item embedding).
// With item features (n_feature_values > 0), E is read as the fused item table
// T = E + pool(F[each item's feature values]) (feature_bag_forward) on the input and the
// output side alike: recomputed from the weights before a step's forward and after every
// write of the weights; in backward dE is dT and the features' part flows into dF.  With
// id_dropout p > 0, a training step reads T_i = m_i E_i + pool(F)_i, m_i in {0, 1} kept
// with probability 1 - p per (step, item), the same mask on both sides and on dE.
// Batches are packed: the rows are the real positions of the batch's sequences, one
// after another, with the positional index right-aligned (the last item of a sequence of
// n inputs sits at position T - 1, input t at T - n + t), exactly as in a left-padded
// implementation, but padding costs nothing.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "fastsasrec/backend.h"
#include "fastsasrec/config.h"

namespace fsr {

// How a parameter tensor starts.
enum class ParamInit {
  Zeros,
  Ones,
  Xavier,        // normal, std sqrt(2 / (fan_in + fan_out))
  XavierPaired,  // the same for two (C, C) blocks side by side: fan_out is half the columns
  ItemEmb,       // Xavier with row 0 (the padding item) zero
};

// One named tensor of the flat parameter arena (a row of the parameter table, placed).
struct TensorInfo {
  std::string name;
  size_t offset;  // in floats
  std::vector<int64_t> shape;
  bool decay;     // AdamW's weight decay applies
  ParamInit init;
  size_t size() const {
    size_t n = 1;
    for (auto d : shape) n *= (size_t)d;
    return n;
  }
};

// A packed batch on the host: made only by HostBatch::add_sequence, which places the
// positions and keeps the row offsets and the longest sequence.
struct HostBatch {
  std::vector<int32_t> items, targets, pos;  // R each (targets: training batches only)
  std::vector<int32_t> cu{0};                // B + 1 row offsets
  std::vector<int32_t> last;                 // B: each sequence's last row
  std::vector<int32_t> negatives;            // R (bce) or N (sampled_softmax)
  int n_max = 0;                             // rows of the longest sequence

  int R() const { return (int)pos.size(); }
  int B() const { return (int)cu.size() - 1; }
  void clear();
  // Appends a sequence of n rows at the right-aligned positions T - n .. T - 1, with its
  // input items and targets when given (n each; null: none, e.g. items already on a device).
  void add_sequence(const int32_t* inputs, const int32_t* next, int n, int T);
};

// The flat parameter arena of a model of this config, from the parameter table (no
// allocation): its tensors in order; *n_decay gets the length of the weight-decayed prefix
// (the feature table, last when there is one, is decayed too, by a pass of its own).
std::vector<TensorInfo> param_layout(const Config& cfg, size_t* n_decay = nullptr);

// One model may be called from several threads (a web server's pool): the public calls
// that use the arenas take a lock, so concurrent calls run one after another.
class Model {
 public:
  // threads: the CPU threads of the model's ops (0 = all cores; see Backend::set_threads).
  Model(const Config& cfg, const std::string& device, int threads = 0);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const Config& config() const { return cfg_; }
  const std::string& device() const { return device_; }
  int device_index() const { return be_->device_index(); }
  // Why [p, p + n) is not this model's backend memory (empty: it is); see Backend.
  std::string check_memory(const void* p, size_t n) const { return be_->check_memory(p, n); }
  int threads() const;
  void set_threads(int n);
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  size_t n_params() const { return n_params_; }
  int64_t step() const { return step_; }

  // ---- parameters (host copies, in arena order)
  void init_params(uint64_t seed);
  std::vector<float> get_params() const;
  void set_params(const std::vector<float>& flat);
  std::vector<float> get_grads() const;
  const TensorInfo& tensor(const std::string& name) const;
  // Item embedding rows 1..V (V, C) as a host copy: the fused rows when the model has
  // item features.
  std::vector<float> item_embeddings();

  // ---- item features (a model with n_feature_values > 0 needs them before any training
  // or inference): values[offsets[i] .. offsets[i+1]) are item i's feature values, for the
  // items 0..V (n_items1 = V + 1; offsets has V + 2 entries, item 0 has none), each in
  // 0..n_feature_values - 1.  Builds the inverse (each value's items) and puts both in
  // backend memory.
  void set_item_features(const int32_t* values, const int64_t* offsets, int64_t n_items1);
  bool has_item_features() const { return features_set_; }

  // AdamW's state as host copies (the moments m and v in arena order; the step is step()),
  // for checkpoints; set_optimizer_state puts a saved one back.
  void get_optimizer_state(std::vector<float>* m, std::vector<float>* v) const;
  void set_optimizer_state(const std::vector<float>& m, const std::vector<float>& v, int64_t step);

  // ---- training (train.cpp)
  struct EpochResult {
    double loss;     // mean loss per target position (of a completed epoch)
    bool completed;  // false: stopped, and nothing of the epoch kept
  };
  // One epoch over the sequences (flat internal ids 1..V, offsets of n_seq + 1 entries;
  // every sequence of 2 or more items).  With `stop`, the epoch is all or nothing: stop()
  // is asked before every batch, and when it says true, or a batch throws, the weights,
  // AdamW's moments and the step are put back as they were when the epoch began (from a
  // copy of the three arenas in backend memory, made only when stop is given) and the
  // epoch returns not completed (or rethrows).
  EpochResult train_epoch(const int32_t* items, const int64_t* offsets, int64_t n_seq,
                          int64_t epoch, const std::function<bool()>& stop = {});
  // The packed batch of the given sequences (their most recent max_seq + 1 items), with
  // negatives for training step `step`.
  void build_batch(const int32_t* items, const int64_t* offsets, const int64_t* seqs, int n,
                   int64_t step, HostBatch& out) const;
  // Forward (+ backward when grad) on one packed batch; dropout masks of step `step` when
  // train. Gradients are left in the gradient arena. Returns the mean loss.
  double forward_backward(const HostBatch& batch, bool train, bool grad, int64_t step);
  // The sampled softmax's popularity sampler (negatives 'popularity', 'in_batch', 'mixed'):
  // counts[i] = how often item i (1..V; counts has V + 1 entries) is a training target.
  // train_epoch sets them from its sequences (the targets its batches hold); a caller of
  // build_batch or forward_backward sets them first.  Also sets the logQ table.
  void set_target_counts(const std::vector<int64_t>& counts);
  // counts as train_epoch sets them: each sequence's last min(n - 1, max_seq) items.
  std::vector<int64_t> target_counts(const int32_t* items, const int64_t* offsets,
                                     int64_t n_seq) const;
  // AdamW over the whole arena with the gradients of the last forward_backward, at
  // learning_rate x lr_scale.
  void optimizer_step();
  // The multiplier of learning_rate for the steps that follow (a schedule the caller runs:
  // the refit's decay); 1 as built.  Not part of the model: a file or checkpoint keeps
  // the configured rate, and whoever resumes sets the scale again.
  void set_lr_scale(float s);
  float lr_scale() const { return lr_scale_; }

  // ---- inference (infer.cpp)
  // h(B,C): the final hidden state at each session's last position (last max_seq items).
  std::vector<float> session_states(const int32_t* items, const int64_t* offsets, int64_t B);
  // Top-k items per session, excluding excl[excl_off[b]..excl_off[b+1]).  With candidates
  // (cand: n_cand internal ids, strictly increasing, in 1..V; null: the whole catalogue)
  // only those items are ranked: the ids written and excl are then positions in cand
  // (1..n_cand), and K <= n_cand.  Each score is the one the whole catalogue's top-k gives
  // that item (topk's scores depend on the session and the item only), and ties go to the
  // lower id as there: the top-k of the catalogue less every item outside cand.
  void recommend(const int32_t* items, const int64_t* offsets, int64_t B, int K,
                 const int32_t* excl, const int64_t* excl_off, int32_t* out_ids,
                 float* out_scores, const int32_t* cand = nullptr, int n_cand = 0);
  // The same for B sessions of L ids already in backend memory (row-major; ids 1..V, L <=
  // max_seq), exclusions B rows of Lx ids (excl null: none), outputs in backend memory.
  // The ids are checked where they are (find_outside) before they index anything.
  void recommend_resident(const int32_t* items, int64_t B, int L, const int32_t* excl, int Lx,
                          int K, int32_t* out_ids, float* out_scores);
  // How top-k scores (the same ids and scores every way): "auto" (the backend chooses),
  // "fp32" (every item's exact score), "int8" (the CPU's int8 screen, then fp32 re-scoring).
  void set_scoring(const std::string& how);
  std::string scoring() const;

 private:
  class Buffer;      // backend memory, released with its owner
  struct Acts;       // activation arena layout
  struct Layer;      // the parameter (or gradient) pointers of one block
  struct Shape {     // what an op launch needs of a packed batch
    int R, B, n_max;
  };
  enum class Rows { All, Last };  // which rows the last layer's queries take (inference: Last)

  void build_layout();
  Layer layer(float* base, int l) const;
  void ensure_acts(Acts& a, int R, int B, bool training);
  void upload_batch(const HostBatch& batch, Acts& a);
  // Forward of a packed batch in `a`: dropout of step `step` when train.  Rows::All leaves
  // every row's final state in a.h; Rows::Last (inference) only each sequence's last row
  // through the last layer's queries, its state in a.hlast (B, C).
  void forward(Acts& a, const Shape& s, bool train, int64_t step, Rows rows);
  void layer_forward(Acts& a, int l, const Shape& s, float p, int64_t step, Rows rows);
  void backward(Acts& a, const Shape& s, bool train, int64_t step);
  void run_step(const HostBatch& batch, bool train, bool grad, int64_t step);
  void loss(float* loss, float* dh, const float* h, const Acts& a, int R, float grad_scale,
            int64_t mask_step);
  // The item table every forward, loss and score reads: E, or with features the fused
  // table (recomputed when the weights changed since it was last built, or it was built
  // with another id-dropout mask).  mask_step: the training step whose id-dropout mask it
  // applies, -1 none (inference, and every model without id dropout).
  const float* item_table(int64_t mask_step = -1);
  int64_t id_mask_step(bool train, int64_t step) const;  // -1, or step when it drops ids
  uint64_t id_dropout_key(int64_t mask_step) const;      // the mask's RNG key (-1: 0)
  // Every write of the weights: the fused table and the scoring table are rebuilt on use.
  void weights_changed() {
    fused_stale_ = true;
    table_stale_ = true;
    sub_stale_ = true;
  }
  size_t loss_workspace(int R) const;
  // Inference: sessions b0..b1 packed (their last max_seq items) and forwarded; their
  // final states in a.hlast.
  void final_states(const int32_t* items, const int64_t* offsets, int64_t b0, int64_t b1,
                    HostBatch& hb, Acts& a);
  int64_t forward_end(const int64_t* offsets, int64_t f0, int64_t b1) const;
  // The table top-k ranks (V items, rows 1..V of E) and its packed form (null where the
  // backend packs none): the whole catalogue's, packed on first use after the weights
  // change; or the rows of n_cand candidates gathered into sub_table_ for one call.
  struct Ranked {
    const float* E;
    int V;
    const float* table;
  };
  Ranked catalogue_table();
  Ranked candidate_table(const int32_t* cand, int n_cand);
  template <typename States, typename Exclusions, typename Outputs>
  void score(const Ranked& ranked, int64_t B, int K, int64_t n_excl, States states,
             Exclusions exclusions, Outputs outputs);

  Config cfg_;
  std::string device_;
  std::unique_ptr<Backend> be_;  // declared first among the owners of backend memory
  std::vector<TensorInfo> tensors_;
  std::vector<size_t> layer_off_;  // per layer, the offsets of its tensors (Layer's order)
  size_t off_E_ = 0, off_P_ = 0, off_lnf_g_ = 0, off_lnf_b_ = 0;
  size_t off_F_ = 0;  // the feature table's offset (n_params_ when the model has none)
  size_t n_params_ = 0, n_decay_ = 0;
  std::unique_ptr<Buffer> params_, grads_, m_, v_;  // the four arenas, one layout
  std::unique_ptr<Acts> train_acts_, infer_acts_;
  std::unique_ptr<Buffer> score_buf_;  // inference scratch: states, exclusions, top-k
  // The backend's scoring table of the item embeddings (score_table_pack), packed by the
  // first top-k after the weights change (table_stale_: set by every write of the weights).
  std::unique_ptr<Buffer> score_table_;
  bool table_stale_ = true;
  // recommend's candidates: their row indices, rows of the item table and packed table,
  // kept for the next call with the same candidates while the weights do not change (a
  // store asks for the same set, its new products, again and again)
  std::unique_ptr<Buffer> sub_table_;
  std::vector<int32_t> sub_cand_;
  Ranked sub_ranked_{nullptr, 0, nullptr};
  bool sub_stale_ = true;
  // Item features: fused_ is T ((V + 1) x C) and fused_stale_ says it must be rebuilt;
  // feat_ holds the CSR (values, offsets) and its inverse (inv_items, inv_offsets), int32.
  std::unique_ptr<Buffer> fused_, feat_;
  const int32_t *feat_values_ = nullptr, *feat_offsets_ = nullptr, *inv_items_ = nullptr,
                *inv_offsets_ = nullptr;
  bool features_set_ = false, fused_stale_ = true;
  int64_t fused_step_ = -1;  // the id-dropout mask fused_ was built with (-1: none)
  int screen_ = 0;  // topk's screen: 0 the backend chooses, 1 fp32 only, 2 int8 screen
  std::unique_ptr<Buffer> loss_buf_;   // per-row losses of an epoch, summed when full
  std::unique_ptr<Buffer> backup_;     // params, m, v at an interruptible epoch's start
  std::unique_ptr<Buffer> logq_;       // V + 1 floats: log q(item) of the sampler (uses_logq)
  std::vector<double> pop_cdf_;        // V: cumulative target counts of items 1..V
  std::vector<int64_t> counts_;        // V + 1: the target counts pop_cdf_ was built from
  mutable std::mutex mu_;  // guards the arenas and parameters across public calls
  int64_t step_ = 0;       // optimizer steps taken (AdamW's t, and dropout streams)
  float lr_scale_ = 1.f;   // set_lr_scale
};

}  // namespace fsr
