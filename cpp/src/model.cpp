// The model: parameter layout, arenas, forward, backward, AdamW, training and inference.
// Written once against the Backend interface; it never knows which backend runs it.
#include "fastsasrec/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "fastsasrec/common.h"
#include "fastsasrec/rng.h"

namespace fsr {

// ------------------------------------------------------------------ layout
struct Model::Layer {
  float *ln1_g, *ln1_b, *Wq, *bq, *Wkv, *bkv, *Wo, *bo, *ln2_g, *ln2_b, *W1, *b1, *W2, *b2;
};

// Activation arena.  Per layer: everything the backward needs; plus scratch for the
// backward and the loss.  Sized for (R rows, B sequences), allocated once per shape.
struct Model::Acts {
  struct L {
    float *x, *q, *mean1, *rstd1, *Qp, *KV, *att, *lse, *x1, *y, *mean2, *rstd2, *f1;
  };
  std::vector<L> layers;
  float *xL = nullptr, *h = nullptr, *meanf = nullptr, *rstdf = nullptr, *tmp = nullptr;
  // backward scratch
  float *dx = nullptr, *dx1 = nullptr, *dtmp = nullptr, *df1 = nullptr, *datt = nullptr,
        *dQp = nullptr, *dKV = nullptr, *dh = nullptr;
  float *loss = nullptr, *workspace = nullptr, *hlast = nullptr;
  int32_t *items = nullptr, *targets = nullptr, *pos = nullptr, *cu = nullptr, *neg = nullptr,
          *rows = nullptr;
  int cap_R = 0, cap_B = 0;
  int n_max = 0;  // the longest sequence of the batch last uploaded
  bool training = false;
  void* arena = nullptr;
  Backend* be = nullptr;
  ~Acts() {
    if (arena) be->release(arena);
  }
};

Model::Layer Model::layer(float* base, int l) const {
  const size_t* o = layer_off_.data() + (size_t)l * kLayerTensors;
  return Layer{base + o[0], base + o[1], base + o[2],  base + o[3],  base + o[4],
               base + o[5], base + o[6], base + o[7],  base + o[8],  base + o[9],
               base + o[10], base + o[11], base + o[12], base + o[13]};
}

void Model::build_layout() {
  const int64_t V = cfg_.n_items, C = cfg_.factors, F = cfg_.ffn(), T = cfg_.max_seq;
  size_t off = 0;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    TensorInfo t{name, off, std::move(shape)};
    off += t.size();
    tensors_.push_back(t);
  };
  // Decayed tensors first (matrices and embeddings), so AdamW's decay is a prefix.
  add("item_emb", {V + 1, C});
  add("pos_emb", {T, C});
  for (int l = 0; l < cfg_.n_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    add(p + "attn_q.weight", {C, C});
    add(p + "attn_kv.weight", {C, 2 * C});
    add(p + "attn_out.weight", {C, C});
    add(p + "ffn1.weight", {C, F});
    add(p + "ffn2.weight", {F, C});
  }
  n_decay_ = off;
  for (int l = 0; l < cfg_.n_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    add(p + "ln1.weight", {C});
    add(p + "ln1.bias", {C});
    add(p + "attn_q.bias", {C});
    add(p + "attn_kv.bias", {2 * C});
    add(p + "attn_out.bias", {C});
    add(p + "ln2.weight", {C});
    add(p + "ln2.bias", {C});
    add(p + "ffn1.bias", {F});
    add(p + "ffn2.bias", {C});
  }
  add("final_ln.weight", {C});
  add("final_ln.bias", {C});
  n_params_ = off;
  // Cache the offsets the hot paths use (same order as the Layer struct).
  static const char* names[kLayerTensors] = {
      "ln1.weight", "ln1.bias", "attn_q.weight", "attn_q.bias", "attn_kv.weight",
      "attn_kv.bias", "attn_out.weight", "attn_out.bias", "ln2.weight", "ln2.bias",
      "ffn1.weight", "ffn1.bias", "ffn2.weight", "ffn2.bias"};
  layer_off_.clear();
  for (int l = 0; l < cfg_.n_layers; ++l)
    for (const char* n : names)
      layer_off_.push_back(tensor("layers." + std::to_string(l) + "." + n).offset);
  off_E_ = tensor("item_emb").offset;
  off_P_ = tensor("pos_emb").offset;
  off_lnf_g_ = tensor("final_ln.weight").offset;
  off_lnf_b_ = tensor("final_ln.bias").offset;
}

const TensorInfo& Model::tensor(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return t;
  throw ValueError("unknown tensor '" + name + "'");
}

Model::Model(const Config& cfg, const std::string& device) : cfg_(cfg) {
  cfg_.validate();
  be_ = make_backend(device);
  be_->set_precision(cfg_.precision);
  build_layout();
  const size_t bytes = n_params_ * sizeof(float);
  params_ = (float*)be_->alloc(bytes);
  grads_ = (float*)be_->alloc(bytes);
  m_ = (float*)be_->alloc(bytes);
  v_ = (float*)be_->alloc(bytes);
  be_->zero(grads_, bytes);
  be_->zero(m_, bytes);
  be_->zero(v_, bytes);
  train_acts_ = std::make_unique<Acts>();
  infer_acts_ = std::make_unique<Acts>();
  init_params(cfg_.seed);
}

Model::~Model() {
  train_acts_.reset();
  infer_acts_.reset();
  if (score_buf_) be_->release(score_buf_);
  if (loss_buf_) be_->release(loss_buf_);
  for (float* p : {params_, grads_, m_, v_})
    if (p) be_->release(p);
}

// Xavier-normal matrices and embeddings (row 0 of the item embedding zero), zero biases,
// unit layernorm gains: PyTorch's SASRec initialisation.
void Model::init_params(uint64_t seed) {
  std::vector<float> host(n_params_, 0.f);
  for (size_t ti = 0; ti < tensors_.size(); ++ti) {
    const TensorInfo& t = tensors_[ti];
    float* w = host.data() + t.offset;
    const bool is_ln_gain = t.name.find("ln") != std::string::npos && t.name.size() > 7 &&
                            t.name.compare(t.name.size() - 7, 7, ".weight") == 0;
    if (t.shape.size() == 1) {
      std::fill(w, w + t.size(), is_ln_gain ? 1.f : 0.f);
      continue;
    }
    int64_t fan_in = t.shape[0], fan_out = t.shape[1];
    if (t.name.find("attn_kv.weight") != std::string::npos) fan_out /= 2;  // two C x C blocks
    const float std_ = std::sqrt(2.f / (float)(fan_in + fan_out));
    const uint64_t key = rng_key(seed ^ kInitSalt, ti);
    for (size_t e = 0; e < t.size(); ++e) {
      // Box-Muller on two counter draws.
      const float u1 = std::max(rng_uniform(key, 2 * e), 1e-7f);
      const float u2 = rng_uniform(key, 2 * e + 1);
      w[e] = std_ * std::sqrt(-2.f * std::log(u1)) * std::cos(6.2831853f * u2);
    }
    if (t.name == "item_emb") std::fill(w, w + t.shape[1], 0.f);
  }
  be_->upload(params_, host.data(), n_params_ * sizeof(float));
  be_->zero(m_, n_params_ * sizeof(float));
  be_->zero(v_, n_params_ * sizeof(float));
  step_ = 0;
}

std::vector<float> Model::get_params() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<float> out(n_params_);
  be_->download(out.data(), params_, n_params_ * sizeof(float));
  return out;
}

void Model::set_params(const std::vector<float>& flat) {
  std::lock_guard<std::mutex> lock(mu_);
  FSR_REQUIRE(flat.size() == n_params_, "parameter vector has ", flat.size(),
              " values, the model has ", n_params_);
  be_->upload(params_, flat.data(), n_params_ * sizeof(float));
}

std::vector<float> Model::get_grads() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<float> out(n_params_);
  be_->download(out.data(), grads_, n_params_ * sizeof(float));
  return out;
}

std::vector<float> Model::item_embeddings() const {
  std::lock_guard<std::mutex> lock(mu_);
  const size_t C = cfg_.factors, V = cfg_.n_items;
  std::vector<float> out(V * C);
  be_->download(out.data(), params_ + C, V * C * sizeof(float));
  return out;
}

// ------------------------------------------------------------------ arenas
void Model::ensure_acts(Acts& a, int R, int B, bool training) {
  if (a.arena && R <= a.cap_R && B <= a.cap_B && (a.training || !training)) return;
  R = std::max(R, a.cap_R);
  B = std::max(B, a.cap_B);
  training = training || a.training;
  if (a.arena) be_->release(a.arena);
  a.arena = nullptr;
  a.be = be_.get();
  const size_t C = cfg_.factors, F = cfg_.ffn(), H = cfg_.n_heads, Nl = cfg_.n_layers;
  const size_t Rs = (size_t)R;
  // Count floats then carve (each block 16-float aligned).
  std::vector<std::pair<void**, size_t>> plan;
  auto f = [&](float** p, size_t n) { plan.push_back({(void**)p, n}); };
  auto i = [&](int32_t** p, size_t n) { plan.push_back({(void**)p, n}); };
  a.layers.assign(Nl, {});
  for (auto& L : a.layers) {
    f(&L.x, Rs * C);
    f(&L.q, Rs * C);
    f(&L.mean1, Rs);
    f(&L.rstd1, Rs);
    f(&L.Qp, Rs * C);
    f(&L.KV, Rs * 2 * C);
    f(&L.att, Rs * C);
    f(&L.lse, Rs * H);
    f(&L.x1, Rs * C);
    f(&L.y, Rs * C);
    f(&L.mean2, Rs);
    f(&L.rstd2, Rs);
    f(&L.f1, Rs * F);
  }
  f(&a.xL, Rs * C);
  f(&a.h, Rs * C);
  f(&a.meanf, Rs);
  f(&a.rstdf, Rs);
  f(&a.tmp, Rs * C);
  f(&a.hlast, (size_t)B * C);
  if (training) {
    for (float** p : {&a.dx, &a.dx1, &a.dtmp, &a.datt, &a.dQp, &a.dh}) f(p, Rs * C);
    f(&a.df1, Rs * F);
    f(&a.dKV, Rs * 2 * C);
    f(&a.loss, Rs);
    f(&a.workspace, be_->loss_workspace(cfg_.loss, R, C, cfg_.n_items, cfg_.n_negatives));
  }
  i(&a.items, Rs);
  i(&a.targets, Rs);
  i(&a.pos, Rs);
  i(&a.cu, (size_t)B + 1);
  i(&a.rows, (size_t)B);
  i(&a.neg, std::max<size_t>(Rs, (size_t)std::max(cfg_.n_negatives, 1)));
  size_t total = 0;
  for (auto& pl : plan) total += (pl.second + 15) / 16 * 16;
  a.arena = be_->alloc(total * 4);
  char* base = (char*)a.arena;
  size_t at = 0;
  for (auto& pl : plan) {
    *pl.first = base + at * 4;
    at += (pl.second + 15) / 16 * 16;
  }
  a.cap_R = R;
  a.cap_B = B;
  a.training = training;
}

void Model::upload_batch(const HostBatch& b, Acts& a) {
  const int R = b.R();
  a.n_max = 0;
  for (size_t s = 0; s + 1 < b.cu.size(); ++s) a.n_max = std::max(a.n_max, b.cu[s + 1] - b.cu[s]);
  be_->upload(a.items, b.items.data(), R * 4);
  be_->upload(a.pos, b.pos.data(), R * 4);
  be_->upload(a.cu, b.cu.data(), b.cu.size() * 4);
  if (!b.targets.empty()) be_->upload(a.targets, b.targets.data(), R * 4);
  if (!b.negatives.empty()) be_->upload(a.neg, b.negatives.data(), b.negatives.size() * 4);
}

// ------------------------------------------------------------------ forward / backward
void Model::forward(Acts& a, int R, int B, bool train, int64_t step) {
  Backend& be = *be_;
  const int C = cfg_.factors, F = cfg_.ffn(), H = cfg_.n_heads, D = cfg_.head_dim(),
            T = cfg_.max_seq;
  const float p = train ? cfg_.dropout : 0.f;
  auto key = [&](int site) { return rng_key(cfg_.seed, dropout_stream(step, site)); };
  const float* E = params_ + off_E_;
  const float* P = params_ + off_P_;
  const int L = cfg_.n_layers;
  float* x0 = L > 0 ? a.layers[0].x : a.xL;
  be.embedding_forward(x0, a.items, a.pos, E, P, R, C, std::sqrt((float)C), p,
                       key(site_embedding()));
  // Each residual add is fused with the layernorm that reads its sum: x1 with LN2, a
  // layer's output with the next layer's LN1 (the final norm after the last layer).
  if (L == 0)
    be.layernorm_forward(a.h, a.meanf, a.rstdf, a.xL, params_ + off_lnf_g_,
                         params_ + off_lnf_b_, R, C, cfg_.ln_eps);
  else
    be.layernorm_forward(a.layers[0].q, a.layers[0].mean1, a.layers[0].rstd1, x0,
                         layer(params_, 0).ln1_g, layer(params_, 0).ln1_b, R, C, cfg_.ln_eps);
  for (int l = 0; l < L; ++l) {
    const Layer w = layer(params_, l);
    auto& A = a.layers[l];
    be.linear_forward(A.Qp, A.q, w.Wq, w.bq, R, C, C, false, 0.f, 0);
    be.linear_forward(A.KV, A.x, w.Wkv, w.bkv, R, C, 2 * C, false, 0.f, 0);
    be.attention_forward(A.att, A.lse, A.Qp, C, A.KV, A.KV + C, 2 * C, a.cu, B, H, D, T,
                         a.n_max, p, key(site_attention(l)));
    be.linear_forward(a.tmp, A.att, w.Wo, w.bo, R, C, C, false, 0.f, 0);
    // x1 = q + tmp;  y = LN2(x1)
    be.residual_layernorm_forward(A.x1, A.y, A.mean2, A.rstd2, A.q, a.tmp, 0.f, 0, w.ln2_g,
                                  w.ln2_b, R, C, cfg_.ln_eps);
    // f1 = dropout(relu(y W1 + b1)), the dropout applied as the product is stored
    be.linear_forward(A.f1, A.y, w.W1, w.b1, R, C, F, true, p, key(site_ffn_hidden(l)));
    be.linear_forward(a.tmp, A.f1, w.W2, w.b2, R, F, C, false, 0.f, 0);
    // the layer's output x' = y + dropout(tmp), then the next LN1 (or the final norm) of x'
    const uint64_t k_out = key(site_ffn_out(l));
    if (l + 1 < L) {
      auto& N = a.layers[l + 1];
      const Layer wn = layer(params_, l + 1);
      be.residual_layernorm_forward(N.x, N.q, N.mean1, N.rstd1, A.y, a.tmp, p, k_out, wn.ln1_g,
                                    wn.ln1_b, R, C, cfg_.ln_eps);
    } else {
      be.residual_layernorm_forward(a.xL, a.h, a.meanf, a.rstdf, A.y, a.tmp, p, k_out,
                                    params_ + off_lnf_g_, params_ + off_lnf_b_, R, C,
                                    cfg_.ln_eps);
    }
  }
}

void Model::forward_last(Acts& a, int R, int B) {
  Backend& be = *be_;
  const int C = cfg_.factors, F = cfg_.ffn(), H = cfg_.n_heads, D = cfg_.head_dim(),
            T = cfg_.max_seq, L = cfg_.n_layers;
  const float* E = params_ + off_E_;
  const float* P = params_ + off_P_;
  const float* lnf_g = params_ + off_lnf_g_;
  const float* lnf_b = params_ + off_lnf_b_;
  float* x0 = L > 0 ? a.layers[0].x : a.xL;
  be.embedding_forward(x0, a.items, a.pos, E, P, R, C, std::sqrt((float)C), 0.f, 0);
  if (L == 0) {
    be.gather_rows(a.tmp, x0, a.rows, B, C);
    be.layernorm_forward(a.hlast, a.meanf, a.rstdf, a.tmp, lnf_g, lnf_b, B, C, cfg_.ln_eps);
    return;
  }
  // Every row through all layers but the last, as in forward (residual adds fused with the
  // norm after them); the last layer's LN1 too, of every row, in the same pass as the add.
  be.layernorm_forward(a.layers[0].q, a.layers[0].mean1, a.layers[0].rstd1, x0,
                       layer(params_, 0).ln1_g, layer(params_, 0).ln1_b, R, C, cfg_.ln_eps);
  for (int l = 0; l + 1 < L; ++l) {
    const Layer w = layer(params_, l), wn = layer(params_, l + 1);
    auto& A = a.layers[l];
    auto& N = a.layers[l + 1];
    be.linear_forward(A.Qp, A.q, w.Wq, w.bq, R, C, C, false, 0.f, 0);
    be.linear_forward(A.KV, A.x, w.Wkv, w.bkv, R, C, 2 * C, false, 0.f, 0);
    be.attention_forward(A.att, A.lse, A.Qp, C, A.KV, A.KV + C, 2 * C, a.cu, B, H, D, T, a.n_max,
                         0.f, 0);
    be.linear_forward(a.tmp, A.att, w.Wo, w.bo, R, C, C, false, 0.f, 0);
    be.residual_layernorm_forward(A.x1, A.y, A.mean2, A.rstd2, A.q, a.tmp, 0.f, 0, w.ln2_g,
                                  w.ln2_b, R, C, cfg_.ln_eps);
    be.linear_forward(A.f1, A.y, w.W1, w.b1, R, C, F, true, 0.f, 0);
    be.linear_forward(a.tmp, A.f1, w.W2, w.b2, R, F, C, false, 0.f, 0);
    be.residual_layernorm_forward(N.x, N.q, N.mean1, N.rstd1, A.y, a.tmp, 0.f, 0, wn.ln1_g,
                                  wn.ln1_b, R, C, cfg_.ln_eps);
  }
  // The last layer: keys and values of every row, queries of the last rows only.  Its
  // buffers hold B rows from here: q_last (the last rows' LN1) in A.y, their LN2 in A.q.
  const Layer w = layer(params_, L - 1);
  auto& A = a.layers[L - 1];
  float* q_last = A.y;
  float* y_last = A.q;
  be.linear_forward(A.KV, A.x, w.Wkv, w.bkv, R, C, 2 * C, false, 0.f, 0);
  be.gather_rows(q_last, A.q, a.rows, B, C);
  be.linear_forward(A.Qp, q_last, w.Wq, w.bq, B, C, C, false, 0.f, 0);
  be.attention_last_forward(A.att, A.Qp, C, A.KV, A.KV + C, 2 * C, a.cu, B, H, D);
  be.linear_forward(a.tmp, A.att, w.Wo, w.bo, B, C, C, false, 0.f, 0);
  be.residual_layernorm_forward(A.x1, y_last, A.mean2, A.rstd2, q_last, a.tmp, 0.f, 0, w.ln2_g,
                                w.ln2_b, B, C, cfg_.ln_eps);
  be.linear_forward(A.f1, y_last, w.W1, w.b1, B, C, F, true, 0.f, 0);
  be.linear_forward(a.tmp, A.f1, w.W2, w.b2, B, F, C, false, 0.f, 0);
  be.residual_layernorm_forward(a.xL, a.hlast, a.meanf, a.rstdf, y_last, a.tmp, 0.f, 0, lnf_g,
                                lnf_b, B, C, cfg_.ln_eps);
}

// Expects a.dh to hold dLoss/dh; accumulates every parameter gradient into grads_
// (which the caller zeroed).
void Model::backward(Acts& a, int R, int B, bool train, int64_t step) {
  Backend& be = *be_;
  const int C = cfg_.factors, F = cfg_.ffn(), H = cfg_.n_heads, D = cfg_.head_dim(),
            T = cfg_.max_seq;
  const float p = train ? cfg_.dropout : 0.f;
  auto key = [&](int site) { return rng_key(cfg_.seed, dropout_stream(step, site)); };
  const size_t RC = (size_t)R * C;
  be.layernorm_backward(a.dx, grads_ + off_lnf_g_,
                        grads_ + off_lnf_b_, a.dh, a.xL, a.meanf, a.rstdf,
                        params_ + off_lnf_g_, R, C, false);
  for (int l = cfg_.n_layers - 1; l >= 0; --l) {
    const Layer w = layer(params_, l), g = layer(grads_, l);
    auto& A = a.layers[l];
    // x_out = y + dropout(dropout(relu(y W1 + b1)) W2 + b2): dy = dx (the residual) plus the
    // feed-forward's gradient, accumulated into dx in place once dx has been read
    be.dropout_backward(a.dtmp, a.dx, nullptr, RC, p, key(site_ffn_out(l)));
    be.linear_backward(a.df1, g.W2, g.b2, a.dtmp, A.f1, w.W2, R, F, C, false);
    // f1 = dropout(relu(z)) is > 0 exactly where the ReLU passed and the dropout kept, so it
    // serves as the ReLU's mask (the dropout's own mask is recomputed)
    be.dropout_backward(a.df1, a.df1, A.f1, (size_t)R * F, p, key(site_ffn_hidden(l)));
    be.linear_backward(a.dx, g.W1, g.b1, a.df1, A.y, w.W1, R, C, F, true);
    // y = LN2(x1)
    be.layernorm_backward(a.dx1, g.ln2_g, g.ln2_b, a.dx, A.x1, A.mean2, A.rstd2, w.ln2_g, R, C, false);
    // x1 = q + att Wo + bo
    be.linear_backward(a.datt, g.Wo, g.bo, a.dx1, A.att, w.Wo, R, C, C, false);
    be.attention_backward(a.dQp, a.dKV, a.dKV + C, a.datt, A.att, A.Qp, C, A.KV, A.KV + C, 2 * C, A.lse,
                          a.cu, B, H, D, T, a.n_max, p, key(site_attention(l)));
    // dq = dx1 (the residual) + dQp Wq^T, in place in dx1
    be.linear_backward(a.dx1, g.Wq, g.bq, a.dQp, A.q, w.Wq, R, C, C, true);
    // K, V = x Wkv + bkv;  q = LN1(x)
    be.linear_backward(a.dx, g.Wkv, g.bkv, a.dKV, A.x, w.Wkv, R, C, 2 * C, false);
    be.layernorm_backward(a.dx, g.ln1_g, g.ln1_b, a.dx1, A.x, A.mean1, A.rstd1, w.ln1_g, R, C, true);
  }
  be.embedding_backward(grads_ + off_E_, grads_ + off_P_,
                        a.dx, a.items, a.pos, R, C, std::sqrt((float)C), p, key(site_embedding()));
}

double Model::forward_backward(const HostBatch& batch, bool train, bool grad, int64_t step) {
  std::lock_guard<std::mutex> lock(mu_);
  return forward_backward_locked(batch, train, grad, step);
}

// Upload, forward, loss (+ backward): the per-row losses are left in a.loss.
void Model::run_step(const HostBatch& batch, bool train, bool grad, int64_t step) {
  const int R = batch.R(), B = batch.B();
  FSR_ASSERT(R > 0 && B > 0);
  Acts& a = *train_acts_;
  ensure_acts(a, R, B, true);
  upload_batch(batch, a);
  forward(a, R, B, train, step);
  const float* E = params_ + off_E_;
  if (grad) be_->zero(grads_, n_params_ * sizeof(float));
  be_->loss(cfg_.loss, a.loss, a.dh, grads_ + off_E_, a.h, E, a.targets, a.neg,
            R, cfg_.factors, cfg_.n_items, cfg_.n_negatives, grad ? 1.f / R : 0.f, a.workspace);
  if (grad) backward(a, R, B, train, step);
}

double Model::forward_backward_locked(const HostBatch& batch, bool train, bool grad, int64_t step) {
  run_step(batch, train, grad, step);
  const int R = batch.R();
  std::vector<float> losses(R);
  be_->download(losses.data(), train_acts_->loss, R * sizeof(float));
  double s = 0.0;
  for (float v : losses) s += v;
  return s / R;
}

void Model::optimizer_step() {
  ++step_;
  be_->adamw_step(params_, grads_, m_, v_, n_params_, n_decay_, cfg_.learning_rate, cfg_.beta1,
                  cfg_.beta2, cfg_.adam_eps, cfg_.weight_decay, step_);
}

// ------------------------------------------------------------------ batches and epochs
void Model::build_batch(const int32_t* items, const int64_t* offsets, const int64_t* seqs, int n,
                        int64_t step, HostBatch& out) const {
  const int T = cfg_.max_seq, V = cfg_.n_items;
  out.items.clear();
  out.targets.clear();
  out.pos.clear();
  out.cu.assign(1, 0);
  out.negatives.clear();
  std::vector<std::pair<int64_t, int64_t>> windows;  // per row's sequence: [start, end)
  std::vector<int> row_seq;
  for (int k = 0; k < n; ++k) {
    const int64_t s = seqs[k];
    const int64_t len = offsets[s + 1] - offsets[s];
    const int64_t w = std::min<int64_t>(len, T + 1);
    if (w < 2) continue;
    const int64_t start = offsets[s + 1] - w;
    const int ni = (int)w - 1;
    for (int t = 0; t < ni; ++t) {
      out.items.push_back(items[start + t]);
      out.targets.push_back(items[start + t + 1]);
      out.pos.push_back(T - ni + t);
      row_seq.push_back((int)windows.size());
    }
    windows.push_back({start, offsets[s + 1]});
    out.cu.push_back((int32_t)out.items.size());
  }
  const uint64_t key = rng_key(cfg_.seed ^ kSamplerSalt, (uint64_t)step);
  if (cfg_.loss == LossKind::BCE) {
    // One negative per row, redrawn (up to 64 times) while it is in the sequence's window.
    const int R = out.R();
    out.negatives.resize(R);
    for (int r = 0; r < R; ++r) {
      const auto [a, b] = windows[row_seq[r]];
      int32_t cand = 1;
      for (int attempt = 0; attempt < 64; ++attempt) {
        cand = rng_int(key, (uint64_t)r * 64 + attempt, 1, V);
        bool seen = false;
        for (int64_t e = a; e < b && !seen; ++e) seen = items[e] == cand;
        if (!seen) break;
      }
      out.negatives[r] = cand;
    }
  } else if (cfg_.loss == LossKind::SampledSoftmax) {
    out.negatives.resize(cfg_.n_negatives);
    for (int j = 0; j < cfg_.n_negatives; ++j) out.negatives[j] = rng_int(key, j, 1, V);
  }
}

double Model::train_epoch(const int32_t* items, const int64_t* offsets, int64_t n_seq,
                          int64_t epoch) {
  std::lock_guard<std::mutex> lock(mu_);
  FSR_REQUIRE(n_seq >= 0, "n_seq must be >= 0, got ", n_seq);
  std::vector<int64_t> order;
  order.reserve(n_seq);
  for (int64_t s = 0; s < n_seq; ++s)
    if (offsets[s + 1] - offsets[s] >= 2) order.push_back(s);
  FSR_REQUIRE(!order.empty(), "no sequence has 2 or more items: nothing to train on");
  // Fisher-Yates with the counter RNG of this epoch.
  const uint64_t key = rng_key(cfg_.seed ^ (kSamplerSalt + 1), (uint64_t)epoch);
  for (int64_t i = (int64_t)order.size() - 1; i > 0; --i) {
    const int64_t j = (int64_t)((uint64_t)rng_u32(key, i) * (uint64_t)(i + 1) >> 32);
    std::swap(order[i], order[j]);
  }
  // The per-row losses stay on the backend, copied batch after batch into a buffer that
  // the host sums when it fills and at the end: no batch waits for the device, so the host
  // builds and uploads the next batch while the device computes this one.
  // The buffer is kept between epochs (an allocation and its release would each wait for
  // the device).
  const size_t cap = std::max<size_t>(size_t(1) << 22, (size_t)cfg_.batch_size * (cfg_.max_seq + 1));
  float* losses = static_cast<float*>(grow(loss_buf_, loss_cap_, cap * sizeof(float)));
  size_t used = 0;
  double loss_sum = 0.0;
  int64_t rows = 0;
  std::vector<float> host;
  auto flush = [&] {
    host.resize(used);
    be_->download(host.data(), losses, used * sizeof(float));
    for (float v : host) loss_sum += v;
    used = 0;
  };
  HostBatch batch;
  for (size_t b0 = 0; b0 < order.size(); b0 += cfg_.batch_size) {
    const int n = (int)std::min<size_t>(cfg_.batch_size, order.size() - b0);
    build_batch(items, offsets, order.data() + b0, n, step_ + 1, batch);
    const int R = batch.R();
    if (used + R > cap) flush();
    run_step(batch, true, true, step_ + 1);
    be_->copy(losses + used, train_acts_->loss, R * sizeof(float));
    used += R;
    optimizer_step();
    rows += R;
  }
  flush();
  return loss_sum / std::max<int64_t>(rows, 1);
}

// ------------------------------------------------------------------ inference
// Forward (no dropout) of sessions b0..b1; each one's final state lands in a.hlast.
void Model::final_states(const int32_t* items, const int64_t* offsets, int64_t b0, int64_t b1,
                         HostBatch& hb, Acts& a) {
  const int T = cfg_.max_seq;
  hb.items.clear();
  hb.pos.clear();
  hb.targets.clear();
  hb.negatives.clear();
  hb.cu.assign(1, 0);
  std::vector<int32_t> last;
  for (int64_t s = b0; s < b1; ++s) {
    const int64_t len = offsets[s + 1] - offsets[s];
    FSR_REQUIRE(len >= 1, "session ", s, " is empty");
    const int n = (int)std::min<int64_t>(len, T);
    const int64_t start = offsets[s + 1] - n;
    for (int t = 0; t < n; ++t) {
      hb.items.push_back(items[start + t]);
      hb.pos.push_back(T - n + t);
    }
    hb.cu.push_back((int32_t)hb.items.size());
    last.push_back((int32_t)hb.items.size() - 1);
  }
  const int R = hb.R(), B = hb.B();
  ensure_acts(a, R, B, false);
  upload_batch(hb, a);
  be_->upload(a.rows, last.data(), last.size() * 4);
  forward_last(a, R, B);
}

namespace {
constexpr int64_t kScoreChunk = 65536;  // sessions per top-k call
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

// Backend memory of at least `bytes` in buf (capacity cap), reallocated only to grow.
void* Model::grow(void*& buf, size_t& cap, size_t bytes) {
  if (bytes > cap) {
    if (buf) be_->release(buf);
    buf = nullptr;
    cap = 0;
    buf = be_->alloc(bytes);
    cap = bytes;
  }
  return buf;
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

// The states of up to kScoreChunk sessions are computed a forward chunk at a time into
// backend scratch, then scored in one top-k call: the GPU sees one large product instead
// of many small ones.  The scratch (states, exclusions, outputs) is kept between calls.
void Model::recommend(const int32_t* items, const int64_t* offsets, int64_t B, int K,
                      const int32_t* excl, const int64_t* excl_off, int32_t* out_ids,
                      float* out_scores) {
  std::lock_guard<std::mutex> lock(mu_);
  const int C = cfg_.factors, V = cfg_.n_items;
  FSR_REQUIRE(K >= 1, "n must be >= 1, got ", K);
  FSR_REQUIRE(K <= V, "n (", K, ") must be <= the number of items (", V, ")");
  HostBatch hb;
  Acts& a = *infer_acts_;
  const float* E = params_ + off_E_;
  std::vector<int64_t> off_local;
  auto aligned = [](size_t n) { return (n + 255) / 256 * 256; };
  for (int64_t b0 = 0; b0 < B; b0 += kScoreChunk) {
    const int64_t b1 = std::min(B, b0 + kScoreChunk), nb = b1 - b0;
    off_local.resize(nb + 1);
    for (int64_t b = 0; b <= nb; ++b) off_local[b] = excl_off[b0 + b] - excl_off[b0];
    const int64_t ne = off_local[nb];
    const size_t sz_h = aligned((size_t)nb * C * 4), sz_out = aligned((size_t)nb * K * 4),
                 sz_off = aligned((size_t)(nb + 1) * 8), sz_ex = aligned((size_t)std::max<int64_t>(ne, 1) * 4);
    char* base = (char*)grow(score_buf_, score_cap_, sz_h + 2 * sz_out + sz_off + sz_ex);
    float* dh = (float*)base;
    int32_t* dids = (int32_t*)(base + sz_h);
    float* dsc = (float*)(base + sz_h + sz_out);
    int64_t* doff = (int64_t*)(base + sz_h + 2 * sz_out);
    int32_t* dexcl = (int32_t*)(base + sz_h + 2 * sz_out + sz_off);
    for (int64_t f0 = b0, f1; f0 < b1; f0 = f1) {
      f1 = forward_end(offsets, f0, b1);
      final_states(items, offsets, f0, f1, hb, a);
      be_->copy(dh + (size_t)(f0 - b0) * C, a.hlast, (size_t)(f1 - f0) * C * sizeof(float));
    }
    be_->upload(dexcl, excl + excl_off[b0], ne * 4);
    be_->upload(doff, off_local.data(), (nb + 1) * 8);
    be_->topk(dids, dsc, dh, E, dexcl, doff, (int)nb, C, V, K);
    be_->download(out_ids + b0 * K, dids, (size_t)nb * K * 4);
    be_->download(out_scores + b0 * K, dsc, (size_t)nb * K * 4);
  }
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
  Acts& a = *infer_acts_;
  const float* E = params_ + off_E_;
  const int64_t fchunk = std::max<int64_t>(1, (int64_t)be_->inference_rows() / L);
  auto aligned = [](size_t n) { return (n + 255) / 256 * 256; };
  std::vector<int32_t> pos, cu, last;
  std::vector<int64_t> off;
  for (int64_t b0 = 0; b0 < B; b0 += kScoreChunk) {
    const int64_t b1 = std::min(B, b0 + kScoreChunk), nb = b1 - b0;
    const size_t sz_h = aligned((size_t)nb * C * 4);
    char* base = (char*)grow(score_buf_, score_cap_, sz_h + aligned((size_t)(nb + 1) * 8));
    float* dh = (float*)base;
    int64_t* doff = (int64_t*)(base + sz_h);
    for (int64_t f0 = b0; f0 < b1; f0 += fchunk) {
      const int64_t f1 = std::min(b1, f0 + fchunk);
      const int Bf = (int)(f1 - f0), R = Bf * L;
      pos.resize(R);
      cu.resize(Bf + 1);
      last.resize(Bf);
      for (int b = 0; b < Bf; ++b)
        for (int t = 0; t < L; ++t) pos[(size_t)b * L + t] = T - L + t;
      for (int b = 0; b <= Bf; ++b) cu[b] = b * L;
      for (int b = 0; b < Bf; ++b) last[b] = (b + 1) * L - 1;
      ensure_acts(a, R, Bf, false);
      be_->copy(a.items, items + (size_t)f0 * L, (size_t)R * 4);
      be_->upload(a.pos, pos.data(), (size_t)R * 4);
      be_->upload(a.cu, cu.data(), (size_t)(Bf + 1) * 4);
      be_->upload(a.rows, last.data(), (size_t)Bf * 4);
      a.n_max = L;  // every session has L items
      forward_last(a, R, Bf);
      be_->copy(dh + (size_t)(f0 - b0) * C, a.hlast, (size_t)Bf * C * sizeof(float));
    }
    off.resize(nb + 1);
    for (int64_t b = 0; b <= nb; ++b) off[b] = b * Lx;
    be_->upload(doff, off.data(), (size_t)(nb + 1) * 8);
    // With no exclusions every row's range is empty and the pointer is never read.
    const int32_t* ex = excl ? excl + (size_t)b0 * Lx : items;
    be_->topk(out_ids + (size_t)b0 * K, out_scores + (size_t)b0 * K, dh, E, ex, doff, (int)nb, C,
              V, K);
  }
  be_->synchronize();
}

}  // namespace fsr
