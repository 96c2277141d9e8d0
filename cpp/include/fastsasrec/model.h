// The SASRec model: parameters, arenas, explicit forward and backward, AdamW, the
// training loop over packed batches, and inference (session states, top-k).
//
// Block (the paper's reference code):  q = LN1(x);  x = q + MHA(Q = q, K = V = x);
//                                      y = LN2(x);  x = y + FFN(y)
// then h = LN_f(x) and scores = h . E^T (the output shares the item embedding).
// Batches are packed: the rows are the real positions of the batch's sequences, one
// after another, with the positional index right-aligned (the last item of a sequence of
// n inputs sits at position T - 1, input t at T - n + t), exactly as in a left-padded
// implementation, but padding costs nothing.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "fastsasrec/backend.h"
#include "fastsasrec/config.h"

namespace fsr {

// One named tensor of the flat parameter arena.
struct TensorInfo {
  std::string name;
  size_t offset;  // in floats
  std::vector<int64_t> shape;
  size_t size() const {
    size_t n = 1;
    for (auto d : shape) n *= (size_t)d;
    return n;
  }
};

// A packed batch on the host.
struct HostBatch {
  std::vector<int32_t> items, targets, pos;  // R each
  std::vector<int32_t> cu;                   // B + 1 row offsets
  std::vector<int32_t> negatives;            // R (bce) or N (sampled_softmax)
  int R() const { return (int)items.size(); }
  int B() const { return (int)cu.size() - 1; }
};

// One model may be called from several threads (a web server's pool): the public calls
// that use the arenas take a lock, so concurrent calls run one after another.
class Model {
 public:
  Model(const Config& cfg, const std::string& device);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const Config& config() const { return cfg_; }
  Backend& backend() { return *be_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  size_t n_params() const { return n_params_; }
  int64_t step() const { return step_; }

  // ---- parameters (host copies, in arena order)
  void init_params(uint64_t seed);
  std::vector<float> get_params() const;
  void set_params(const std::vector<float>& flat);
  std::vector<float> get_grads() const;
  const TensorInfo& tensor(const std::string& name) const;

  // ---- training
  // One epoch over the sequences (flat internal ids 1..V, offsets of n_seq + 1 entries).
  // Sequences shorter than 2 are skipped. Returns the mean loss per target position.
  double train_epoch(const int32_t* items, const int64_t* offsets, int64_t n_seq, int64_t epoch);
  // Builds the packed batch of the given sequences (their most recent max_seq + 1 items),
  // with negatives for training step `step`.
  void build_batch(const int32_t* items, const int64_t* offsets, const int64_t* seqs, int n,
                   int64_t step, HostBatch& out) const;
  // Forward (+ backward when grad) on one packed batch; dropout masks of step `step` when
  // train. Gradients are left in the gradient arena. Returns the mean loss.
  double forward_backward(const HostBatch& batch, bool train, bool grad, int64_t step);
  // AdamW over the whole arena with the gradients of the last forward_backward.
  void optimizer_step();

  // ---- inference
  // h(B,C): the final hidden state at each session's last position (last max_seq items).
  std::vector<float> session_states(const int32_t* items, const int64_t* offsets, int64_t B);
  // Top-k items per session, excluding excl[excl_off[b]..excl_off[b+1]).
  void recommend(const int32_t* items, const int64_t* offsets, int64_t B, int K,
                 const int32_t* excl, const int64_t* excl_off, int32_t* out_ids,
                 float* out_scores);
  // The same for B sessions of L ids already in backend memory (row-major; ids 1..V, L <=
  // max_seq), exclusions B rows of Lx ids (excl null: none), outputs in backend memory.
  void recommend_resident(const int32_t* items, int64_t B, int L, const int32_t* excl, int Lx,
                          int K, int32_t* out_ids, float* out_scores);
  // Item embedding rows 1..V (V, C) as a host copy.
  std::vector<float> item_embeddings() const;

 private:
  struct Layer;      // parameter pointers of one block
  struct Acts;       // activation arena layout
  void build_layout();
  void ensure_acts(Acts& a, int R, int B, bool training);
  void upload_batch(const HostBatch& batch, Acts& a);
  void forward(Acts& a, int R, int B, bool train, int64_t step);
  void backward(Acts& a, int R, int B, bool train, int64_t step);
  // Inference forward: all rows through layers 0..L-2, then only each sequence's last row
  // (a.rows) through the last layer's query side; the final states land in a.hlast (B, C).
  void forward_last(Acts& a, int R, int B);
  void run_step(const HostBatch& batch, bool train, bool grad, int64_t step);
  double forward_backward_locked(const HostBatch& batch, bool train, bool grad, int64_t step);
  void final_states(const int32_t* items, const int64_t* offsets, int64_t b0, int64_t b1,
                    HostBatch& hb, Acts& a);
  Layer layer(float* base, int l) const;
  int64_t forward_end(const int64_t* offsets, int64_t f0, int64_t b1) const;
  void* grow(void*& buf, size_t& cap, size_t bytes);  // backend scratch, grown on demand

  static constexpr int kLayerTensors = 14;
  std::vector<size_t> layer_off_;
  size_t off_E_ = 0, off_P_ = 0, off_lnf_g_ = 0, off_lnf_b_ = 0;
  Config cfg_;
  std::unique_ptr<Backend> be_;
  std::vector<TensorInfo> tensors_;
  size_t n_params_ = 0, n_decay_ = 0;
  float *params_ = nullptr, *grads_ = nullptr, *m_ = nullptr, *v_ = nullptr;
  std::unique_ptr<Acts> train_acts_, infer_acts_;
  void* score_buf_ = nullptr;
  size_t score_cap_ = 0;
  void* loss_buf_ = nullptr;  // per-row losses of an epoch, summed on the host when full
  size_t loss_cap_ = 0;
  mutable std::mutex mu_;  // guards the arenas and parameters across public calls
  int64_t step_ = 0;       // optimizer steps taken (AdamW's t, and dropout streams)
};

}  // namespace fsr
