// The model's parameters (table, layout, initialisation), its arenas, and the explicit
// forward and backward passes.  Written once against the Backend interface; it never
// knows which backend runs it.  Training is in train.cpp, inference in infer.cpp.
#include "fastsasrec/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <unordered_map>

#include "fastsasrec/common.h"
#include "fastsasrec/rng.h"
#include "model_parts.h"

namespace fsr {

// ------------------------------------------------------------------ packed batches
void HostBatch::clear() {
  items.clear();
  targets.clear();
  pos.clear();
  cu.assign(1, 0);
  last.clear();
  negatives.clear();
  n_max = 0;
}

void HostBatch::add_sequence(const int32_t* inputs, const int32_t* next, int n, int T) {
  FSR_ASSERT(n >= 1 && n <= T, "n = ", n, ", T = ", T);
  if (inputs) items.insert(items.end(), inputs, inputs + n);
  if (next) targets.insert(targets.end(), next, next + n);
  for (int t = 0; t < n; ++t) pos.push_back(T - n + t);
  cu.push_back((int32_t)pos.size());
  last.push_back((int32_t)pos.size() - 1);
  n_max = std::max(n_max, n);
}

// ------------------------------------------------------------------ layout
namespace {
int64_t extent(Dim d, const Config& c) {
  switch (d) {
    case Dim::One: return 1;
    case Dim::C: return c.factors;
    case Dim::C2: return 2 * (int64_t)c.factors;
    case Dim::F: return c.ffn();
    case Dim::V1: return (int64_t)c.n_items + 1;
    case Dim::T: return c.max_seq;
    case Dim::NF: return c.n_feature_values;
  }
  return 0;
}
std::vector<int64_t> shape_of(const ParamSpec& s, const Config& c) {
  if (s.cols == Dim::One) return {extent(s.rows, c)};
  return {extent(s.rows, c), extent(s.cols, c)};
}
std::string layer_prefix(int l) { return "layers." + std::to_string(l) + "."; }
}  // namespace

std::vector<TensorInfo> param_layout(const Config& cfg, size_t* n_decay) {
  std::vector<TensorInfo> out;
  size_t off = 0;
  // Every dimension is below 2^31, so a tensor has fewer than 2^62 weights and the running
  // total, checked after each tensor, can never wrap.
  constexpr size_t kMaxWeights = size_t(1) << 40;
  auto add = [&](const std::string& name, const ParamSpec& p) {
    out.push_back({name, off, shape_of(p, cfg), p.decay, p.init});
    off += out.back().size();
    FSR_REQUIRE(off <= kMaxWeights, "a model of this config would have more than 2^40 weights "
                "(factors ", cfg.factors, ", n_layers ", cfg.n_layers, ", max_seq ", cfg.max_seq,
                ", n_items ", cfg.n_items, ")");
  };
  auto add_layers = [&](bool decay) {
    for (int l = 0; l < cfg.n_layers; ++l)
      for (int i = 0; i < kLayerParams; ++i)
        if (kLayerTable[i].decay == decay) add(layer_prefix(l) + kLayerTable[i].name, kLayerTable[i]);
  };
  for (int i = 0; i < kGlobalParams; ++i)
    if (kGlobalTable[i].decay) add(kGlobalTable[i].name, kGlobalTable[i]);
  add_layers(true);
  if (n_decay) *n_decay = off;
  add_layers(false);
  for (int i = 0; i < kGlobalParams; ++i)
    if (!kGlobalTable[i].decay) add(kGlobalTable[i].name, kGlobalTable[i]);
  if (cfg.n_feature_values > 0) add(kFeatureEmb.name, kFeatureEmb);
  return out;
}

Model::Layer Model::layer(float* base, int l) const {
  Layer w;
  for (int i = 0; i < kLayerParams; ++i) w.t[i] = base + layer_off_[(size_t)l * kLayerParams + i];
  return w;
}

void Model::build_layout() {
  tensors_ = param_layout(cfg_, &n_decay_);
  n_params_ = tensors_.empty() ? 0 : tensors_.back().offset + tensors_.back().size();
  std::unordered_map<std::string, size_t> at;
  for (const auto& t : tensors_) at[t.name] = t.offset;
  layer_off_.assign((size_t)cfg_.n_layers * kLayerParams, 0);
  for (int l = 0; l < cfg_.n_layers; ++l)
    for (int i = 0; i < kLayerParams; ++i)
      layer_off_[(size_t)l * kLayerParams + i] = at.at(layer_prefix(l) + kLayerTable[i].name);
  off_E_ = at.at(kGlobalTable[kItemEmb].name);
  off_P_ = at.at(kGlobalTable[kPosEmb].name);
  off_lnf_g_ = at.at(kGlobalTable[kLnfG].name);
  off_lnf_b_ = at.at(kGlobalTable[kLnfB].name);
  off_F_ = cfg_.n_feature_values > 0 ? at.at(kFeatureEmb.name) : n_params_;
}

const TensorInfo& Model::tensor(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return t;
  throw ValueError("unknown tensor '" + name + "'");
}

Model::Model(const Config& cfg, const std::string& device, int threads) : cfg_(cfg) {
  cfg_.validate();
  be_ = make_backend(device);
  device_ = be_->device_index() >= 0 ? "cuda:" + std::to_string(be_->device_index()) : be_->name();
  const std::string why = be_->unsupported(cfg_.max_seq, cfg_.head_dim());
  FSR_REQUIRE(why.empty(), "device '", device, "': ", why);
  be_->set_precision(cfg_.precision);
  be_->set_threads(threads);
  build_layout();
  const size_t bytes = n_params_ * sizeof(float);
  params_ = std::make_unique<Buffer>(*be_, bytes);
  grads_ = std::make_unique<Buffer>(*be_, bytes);
  m_ = std::make_unique<Buffer>(*be_, bytes);
  v_ = std::make_unique<Buffer>(*be_, bytes);
  be_->zero(grads_->get(), bytes);
  score_buf_ = std::make_unique<Buffer>(*be_);
  score_table_ = std::make_unique<Buffer>(*be_);
  sub_table_ = std::make_unique<Buffer>(*be_);
  loss_buf_ = std::make_unique<Buffer>(*be_);
  backup_ = std::make_unique<Buffer>(*be_);
  logq_ = std::make_unique<Buffer>(*be_);
  fused_ = std::make_unique<Buffer>(*be_);
  feat_ = std::make_unique<Buffer>(*be_);
  if (cfg_.n_feature_values > 0)
    fused_->grow(((size_t)cfg_.n_items + 1) * cfg_.factors * sizeof(float));
  train_acts_ = std::make_unique<Acts>();
  infer_acts_ = std::make_unique<Acts>();
  init_params(cfg_.seed);
}

Model::~Model() = default;

int Model::threads() const { return be_->threads(); }

void Model::set_threads(int n) {
  std::lock_guard<std::mutex> lock(mu_);
  be_->set_threads(n);
  // The loss's workspace may grow with the thread count: a training arena planned for
  // fewer threads is dropped, and the next step plans it again.
  Acts& a = *train_acts_;
  if (a.arena && a.training && loss_workspace(a.cap_R) > a.ws_cap)
    train_acts_ = std::make_unique<Acts>();
}

// By the table: Xavier-normal matrices and embeddings (row 0 of the item embedding zero),
// zero biases, unit layernorm gains: PyTorch's SASRec initialisation.  Tensor i of the
// arena draws from stream i of the seed.
void Model::init_params(uint64_t seed) {
  std::vector<float> host(n_params_, 0.f);
  for (size_t ti = 0; ti < tensors_.size(); ++ti) {
    const TensorInfo& t = tensors_[ti];
    float* w = host.data() + t.offset;
    if (t.init == Init::Zeros || t.init == Init::Ones) {
      std::fill(w, w + t.size(), t.init == Init::Ones ? 1.f : 0.f);
      continue;
    }
    const int64_t fan_in = t.shape[0];
    const int64_t fan_out = t.init == Init::XavierPaired ? t.shape[1] / 2 : t.shape[1];
    const float std_ = std::sqrt(2.f / (float)(fan_in + fan_out));
    const uint64_t key = rng_key(seed ^ kInitSalt, ti);
    for (size_t e = 0; e < t.size(); ++e) {
      // Box-Muller on two counter draws.
      const float u1 = std::max(rng_uniform(key, 2 * e), 1e-7f);
      const float u2 = rng_uniform(key, 2 * e + 1);
      w[e] = std_ * std::sqrt(-2.f * std::log(u1)) * std::cos(6.2831853f * u2);
    }
    if (t.init == Init::ItemEmb) std::fill(w, w + t.shape[1], 0.f);
  }
  const size_t bytes = n_params_ * sizeof(float);
  be_->upload(params_->get(), host.data(), bytes);
  weights_changed();
  be_->zero(m_->get(), bytes);
  be_->zero(v_->get(), bytes);
  step_ = 0;
}

std::vector<float> Model::get_params() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<float> out(n_params_);
  be_->download(out.data(), params_->get(), n_params_ * sizeof(float));
  return out;
}

void Model::set_params(const std::vector<float>& flat) {
  std::lock_guard<std::mutex> lock(mu_);
  FSR_REQUIRE(flat.size() == n_params_, "parameter vector has ", flat.size(),
              " values, the model has ", n_params_);
  be_->upload(params_->get(), flat.data(), n_params_ * sizeof(float));
  weights_changed();
}

void Model::get_optimizer_state(std::vector<float>* m, std::vector<float>* v) const {
  std::lock_guard<std::mutex> lock(mu_);
  m->resize(n_params_);
  v->resize(n_params_);
  be_->download(m->data(), m_->get(), n_params_ * sizeof(float));
  be_->download(v->data(), v_->get(), n_params_ * sizeof(float));
}

void Model::set_optimizer_state(const std::vector<float>& m, const std::vector<float>& v,
                                int64_t step) {
  std::lock_guard<std::mutex> lock(mu_);
  FSR_REQUIRE(m.size() == n_params_ && v.size() == n_params_, "optimizer moments have ", m.size(),
              " and ", v.size(), " values, the model has ", n_params_);
  FSR_REQUIRE(step >= 0, "step must be >= 0, got ", step);
  be_->upload(m_->get(), m.data(), n_params_ * sizeof(float));
  be_->upload(v_->get(), v.data(), n_params_ * sizeof(float));
  step_ = step;
}

std::vector<float> Model::get_grads() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<float> out(n_params_);
  be_->download(out.data(), grads_->get(), n_params_ * sizeof(float));
  return out;
}

std::vector<float> Model::item_embeddings() {
  std::lock_guard<std::mutex> lock(mu_);
  const size_t C = cfg_.factors, V = cfg_.n_items;
  std::vector<float> out(V * C);
  be_->download(out.data(), item_table() + C, V * C * sizeof(float));
  return out;
}

// ------------------------------------------------------------------ item features
void Model::set_item_features(const int32_t* values, const int64_t* offsets, int64_t n_items1) {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t V1 = (int64_t)cfg_.n_items + 1, NF = cfg_.n_feature_values;
  FSR_REQUIRE(NF > 0, "set_item_features: this model has no feature table (n_feature_values = 0)");
  FSR_REQUIRE(n_items1 == V1, "offsets must have ", V1 + 1, " entries (items 0..", V1 - 1,
              " and the end), got ", n_items1 + 1);
  FSR_REQUIRE(offsets[0] == 0, "offsets[0] must be 0, got ", offsets[0]);
  for (int64_t i = 0; i < V1; ++i)
    FSR_REQUIRE(offsets[i + 1] >= offsets[i], "offsets must be non-decreasing: offsets[", i + 1,
                "] = ", offsets[i + 1], " < offsets[", i, "] = ", offsets[i]);
  FSR_REQUIRE(offsets[1] == 0, "item 0 (the padding) must have no feature values, got ",
              offsets[1]);
  const int64_t n = offsets[V1];
  FSR_REQUIRE(n <= INT32_MAX, "values: ", n, " feature values in all, at most ", INT32_MAX);
  for (int64_t i = 1; i < V1; ++i)
    for (int64_t j = offsets[i]; j < offsets[i + 1]; ++j)
      FSR_REQUIRE(values[j] >= 0 && values[j] < NF, "values: item ", i, " has feature value ",
                  values[j], " (values[", j, "]), outside 0..", NF - 1, " (n_feature_values)");
  // One int32 block: values (n), offsets (V1 + 1), inv_items (n), inv_offsets (NF + 1).
  // The inverse by counting: each value's items in ascending order.
  std::vector<int32_t> host(2 * (size_t)n + V1 + NF + 2);
  int32_t* h_values = host.data();
  int32_t* h_offsets = h_values + n;
  int32_t* h_inv = h_offsets + V1 + 1;
  int32_t* h_inv_off = h_inv + n;
  std::copy(values, values + n, h_values);
  for (int64_t i = 0; i <= V1; ++i) h_offsets[i] = (int32_t)offsets[i];
  for (int64_t j = 0; j < n; ++j) ++h_inv_off[values[j] + 1];
  for (int64_t v = 0; v < NF; ++v) h_inv_off[v + 1] += h_inv_off[v];
  std::vector<int32_t> at(h_inv_off, h_inv_off + NF);
  for (int64_t i = 1; i < V1; ++i)
    for (int64_t j = offsets[i]; j < offsets[i + 1]; ++j) h_inv[at[values[j]]++] = (int32_t)i;
  int32_t* d = static_cast<int32_t*>(feat_->grow(host.size() * sizeof(int32_t)));
  be_->upload(d, host.data(), host.size() * sizeof(int32_t));
  be_->synchronize();
  feat_values_ = d;
  feat_offsets_ = d + n;
  inv_items_ = d + n + V1 + 1;
  inv_offsets_ = d + 2 * n + V1 + 1;
  features_set_ = true;
  weights_changed();
}

const float* Model::item_table(int64_t mask_step) {
  const float* E = params_->f() + off_E_;
  if (cfg_.n_feature_values == 0) return E;
  FSR_REQUIRE(features_set_, "the model has item features (n_feature_values = ",
              cfg_.n_feature_values, "): set_item_features must be called before it trains "
              "or scores");
  if (fused_stale_ || fused_step_ != mask_step) {
    be_->feature_bag_forward(fused_->f(), E, params_->f() + off_F_, feat_values_, feat_offsets_,
                             cfg_.n_items + 1, cfg_.factors,
                             cfg_.feature_pooling == FeaturePooling::Mean,
                             mask_step < 0 ? 0.f : cfg_.id_dropout, id_dropout_key(mask_step));
    fused_stale_ = false;
    fused_step_ = mask_step;
  }
  return fused_->f();
}

int64_t Model::id_mask_step(bool train, int64_t step) const {
  return train && cfg_.id_dropout > 0.f && cfg_.n_feature_values > 0 ? step : -1;
}

uint64_t Model::id_dropout_key(int64_t mask_step) const {
  return mask_step < 0 ? 0 : rng_key(cfg_.seed, dropout_stream(mask_step, site_id_dropout()));
}

// ------------------------------------------------------------------ arenas
void Model::ensure_acts(Acts& a, int R, int B, bool training) {
  if (a.arena && R <= a.cap_R && B <= a.cap_B && (a.training || !training)) return;
  R = std::max(R, a.cap_R);
  B = std::max(B, a.cap_B);
  training = training || a.training;
  a.arena.reset();
  const size_t C = cfg_.factors, F = cfg_.ffn(), H = cfg_.n_heads, Nl = cfg_.n_layers;
  const size_t Rs = (size_t)R;
  // Count floats then carve (each block 16-float aligned).
  std::vector<std::pair<void**, size_t>> plan;
  auto f = [&](float** p, size_t n) { plan.push_back({(void**)p, n}); };
  auto i = [&](int32_t** p, size_t n) { plan.push_back({(void**)p, n}); };
  a.layers.assign(Nl, {});
  for (auto& L : a.layers) {
    const size_t first = plan.size();
    for (float** p : {&L.x, &L.q, &L.Qp, &L.att, &L.x1, &L.y}) f(p, Rs * C);
    for (float** p : {&L.mean1, &L.rstd1, &L.mean2, &L.rstd2}) f(p, Rs);
    f(&L.KV, Rs * 2 * C);
    f(&L.lse, Rs * H);
    f(&L.f1, Rs * F);
    // Attention's probabilities, kept for its backward where the backend keeps them (the
    // CPU) and they cost no more memory than the rest of the layer's activations.
    size_t layer = 0;
    for (size_t k = first; k < plan.size(); ++k) layer += plan[k].second;
    const size_t saved = training ? be_->attention_saved_workspace(R, (int)H, cfg_.max_seq, cfg_.dropout) : 0;
    if (saved > 0 && saved <= layer) f(&L.saved, saved);
  }
  for (float** p : {&a.xL, &a.h, &a.tmp}) f(p, Rs * C);
  for (float** p : {&a.meanf, &a.rstdf}) f(p, Rs);
  f(&a.hlast, (size_t)B * C);
  if (training) {
    for (float** p : {&a.dx, &a.dx1, &a.dtmp, &a.datt, &a.dQp, &a.dh}) f(p, Rs * C);
    f(&a.df1, Rs * F);
    f(&a.dKV, Rs * 2 * C);
    f(&a.loss, Rs);
    a.ws_cap = loss_workspace(R);
    f(&a.workspace, a.ws_cap);
  }
  for (int32_t** p : {&a.items, &a.targets, &a.pos}) i(p, Rs);
  i(&a.cu, (size_t)B + 1);
  i(&a.rows, (size_t)B);
  const size_t n_neg = cfg_.loss == LossKind::GBCE ? Rs * (size_t)cfg_.n_negatives
                                                   : (size_t)std::max(cfg_.n_negatives, 1);
  i(&a.neg, std::max<size_t>(Rs, n_neg));
  size_t total = 0;
  for (auto& pl : plan) total += (pl.second + 15) / 16 * 16;
  a.arena = std::make_unique<Buffer>(*be_, total * 4);
  char* base = (char*)a.arena->get();
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
  if (!b.items.empty()) be_->upload(a.items, b.items.data(), R * 4);
  be_->upload(a.pos, b.pos.data(), R * 4);
  be_->upload(a.cu, b.cu.data(), b.cu.size() * 4);
  be_->upload(a.rows, b.last.data(), b.last.size() * 4);
  if (!b.targets.empty()) be_->upload(a.targets, b.targets.data(), R * 4);
  if (!b.negatives.empty()) be_->upload(a.neg, b.negatives.data(), b.negatives.size() * 4);
}

// ------------------------------------------------------------------ forward
void Model::forward(Acts& a, const Shape& s, bool train, int64_t step, Rows rows) {
  Backend& be = *be_;
  const int C = cfg_.factors, L = cfg_.n_layers, R = s.R;
  const float p = train ? cfg_.dropout : 0.f;
  const float* lnf_g = params_->f() + off_lnf_g_;
  const float* lnf_b = params_->f() + off_lnf_b_;
  float* x0 = L > 0 ? a.layers[0].x : a.xL;
  be.embedding_forward(x0, a.items, a.pos, item_table(id_mask_step(train, step)),
                       params_->f() + off_P_, R, C,
                       std::sqrt((float)C), p,
                       rng_key(cfg_.seed, dropout_stream(step, site_embedding())));
  if (L == 0) {  // the final norm of the embeddings (of each sequence's last row: Rows::Last)
    if (rows == Rows::Last) {
      be.gather_rows(a.tmp, x0, a.rows, s.B, C);
      be.layernorm_forward(a.hlast, a.meanf, a.rstdf, a.tmp, lnf_g, lnf_b, s.B, C, cfg_.ln_eps);
    } else {
      be.layernorm_forward(a.h, a.meanf, a.rstdf, x0, lnf_g, lnf_b, R, C, cfg_.ln_eps);
    }
    return;
  }
  const Layer w0 = layer(params_->f(), 0);
  be.layernorm_forward(a.layers[0].q, a.layers[0].mean1, a.layers[0].rstd1, x0, w0[kLn1G],
                       w0[kLn1B], R, C, cfg_.ln_eps);
  for (int l = 0; l < L; ++l)
    layer_forward(a, l, s, p, step, l + 1 == L ? rows : Rows::All);
}

// One block.  Its input x and q = LN1(x) are in a.layers[l]; its output x' and the norm that
// reads it (the next layer's LN1, or the final norm) are written in one pass, each residual
// add fused with that norm.  Keys and values take every row; with Rows::Last the queries
// (and so everything after the attention) take each sequence's last row only: those B rows
// live in the layer's y buffer (their q) and q buffer (their y), and the state in a.hlast.
void Model::layer_forward(Acts& a, int l, const Shape& s, float p, int64_t step, Rows rows) {
  Backend& be = *be_;
  const int C = cfg_.factors, F = cfg_.ffn(), H = cfg_.n_heads, D = cfg_.head_dim(),
            T = cfg_.max_seq, L = cfg_.n_layers;
  auto key = [&](int site) { return rng_key(cfg_.seed, dropout_stream(step, site)); };
  const Layer w = layer(params_->f(), l);
  auto& A = a.layers[l];
  const float* q = A.q;
  float* y = A.y;
  int Rq = s.R;
  be.linear_forward(A.KV, A.x, w[kWkv], w[kBkv], s.R, C, 2 * C, false, 0.f, 0);
  if (rows == Rows::Last) {
    be.gather_rows(A.y, A.q, a.rows, s.B, C);
    q = A.y;
    y = A.q;
    Rq = s.B;
  }
  be.linear_forward(A.Qp, q, w[kWq], w[kBq], Rq, C, C, false, 0.f, 0);
  if (rows == Rows::Last)
    be.attention_last_forward(A.att, A.Qp, C, A.KV, A.KV + C, 2 * C, a.cu, s.B, H, D);
  else
    be.attention_forward(A.att, A.lse, A.Qp, C, A.KV, A.KV + C, 2 * C, a.cu, s.B, H, D, T,
                         s.n_max, p, key(site_attention(l)), A.saved);
  be.linear_forward(a.tmp, A.att, w[kWo], w[kBo], Rq, C, C, false, 0.f, 0);
  // x1 = q + tmp;  y = LN2(x1)
  be.layernorm_residual_forward(A.x1, y, A.mean2, A.rstd2, q, a.tmp, 0.f, 0, w[kLn2G], w[kLn2B],
                                Rq, C, cfg_.ln_eps);
  // f1 = dropout(relu(y W1 + b1)), the dropout applied as the product is stored
  be.linear_forward(A.f1, y, w[kW1], w[kB1], Rq, C, F, true, p, key(site_ffn_hidden(l)));
  be.linear_forward(a.tmp, A.f1, w[kW2], w[kB2], Rq, F, C, false, 0.f, 0);
  // x' = y + dropout(tmp), then the next layer's LN1 of x' (or the final norm)
  const uint64_t k_out = key(site_ffn_out(l));
  if (l + 1 < L) {
    auto& N = a.layers[l + 1];
    const Layer wn = layer(params_->f(), l + 1);
    be.layernorm_residual_forward(N.x, N.q, N.mean1, N.rstd1, y, a.tmp, p, k_out, wn[kLn1G],
                                  wn[kLn1B], Rq, C, cfg_.ln_eps);
  } else {
    be.layernorm_residual_forward(a.xL, rows == Rows::Last ? a.hlast : a.h, a.meanf, a.rstdf, y,
                                  a.tmp, p, k_out, params_->f() + off_lnf_g_,
                                  params_->f() + off_lnf_b_, Rq, C, cfg_.ln_eps);
  }
}

// ------------------------------------------------------------------ backward
// Expects a.dh to hold dLoss/dh; accumulates every parameter gradient into the gradient
// arena (which the caller zeroed).
void Model::backward(Acts& a, const Shape& s, bool train, int64_t step) {
  Backend& be = *be_;
  const int C = cfg_.factors, F = cfg_.ffn(), H = cfg_.n_heads, D = cfg_.head_dim(),
            T = cfg_.max_seq, R = s.R, B = s.B;
  const float p = train ? cfg_.dropout : 0.f;
  auto key = [&](int site) { return rng_key(cfg_.seed, dropout_stream(step, site)); };
  const size_t RC = (size_t)R * C;
  float* P = params_->f();
  float* G = grads_->f();
  be.layernorm_backward(a.dx, G + off_lnf_g_, G + off_lnf_b_, a.dh, a.xL, a.meanf, a.rstdf,
                        P + off_lnf_g_, R, C, false);
  for (int l = cfg_.n_layers - 1; l >= 0; --l) {
    const Layer w = layer(P, l), g = layer(G, l);
    auto& A = a.layers[l];
    // x_out = y + dropout(dropout(relu(y W1 + b1)) W2 + b2): dy = dx (the residual) plus the
    // feed-forward's gradient, accumulated into dx in place once dx has been read
    be.dropout_backward(a.dtmp, a.dx, nullptr, RC, p, key(site_ffn_out(l)));
    be.linear_backward(a.df1, g[kW2], g[kB2], a.dtmp, A.f1, w[kW2], R, F, C, false);
    // f1 = dropout(relu(z)) is > 0 exactly where the ReLU passed and the dropout kept, so it
    // serves as the ReLU's mask (the dropout's own mask is recomputed)
    be.dropout_backward(a.df1, a.df1, A.f1, (size_t)R * F, p, key(site_ffn_hidden(l)));
    be.linear_backward(a.dx, g[kW1], g[kB1], a.df1, A.y, w[kW1], R, C, F, true);
    // y = LN2(x1)
    be.layernorm_backward(a.dx1, g[kLn2G], g[kLn2B], a.dx, A.x1, A.mean2, A.rstd2, w[kLn2G], R,
                          C, false);
    // x1 = q + att Wo + bo
    be.linear_backward(a.datt, g[kWo], g[kBo], a.dx1, A.att, w[kWo], R, C, C, false);
    be.attention_backward(a.dQp, a.dKV, a.dKV + C, a.datt, A.att, A.Qp, C, A.KV, A.KV + C, 2 * C,
                          A.lse, a.cu, B, H, D, T, s.n_max, p, key(site_attention(l)), A.saved);
    // dq = dx1 (the residual) + dQp Wq^T, in place in dx1
    be.linear_backward(a.dx1, g[kWq], g[kBq], a.dQp, A.q, w[kWq], R, C, C, true);
    // K, V = x Wkv + bkv;  q = LN1(x)
    be.linear_backward(a.dx, g[kWkv], g[kBkv], a.dKV, A.x, w[kWkv], R, C, 2 * C, false);
    be.layernorm_backward(a.dx, g[kLn1G], g[kLn1B], a.dx1, A.x, A.mean1, A.rstd1, w[kLn1G], R, C,
                          true);
  }
  be.embedding_backward(G + off_E_, G + off_P_, a.dx, a.items, a.pos, R, C, std::sqrt((float)C),
                        p, key(site_embedding()));
  // With features, dE (complete now: the loss's part and the embedding's) is the fused
  // table's gradient; the features' part of it goes to dF, and what stays in dE is the id
  // part's (the rows the step's id dropout left out: zero).
  if (cfg_.n_feature_values > 0) {
    const int64_t ms = id_mask_step(train, step);
    be.feature_bag_backward(G + off_F_, G + off_E_, inv_items_, inv_offsets_, feat_offsets_,
                            cfg_.n_feature_values, cfg_.n_items + 1, C,
                            cfg_.feature_pooling == FeaturePooling::Mean,
                            ms < 0 ? 0.f : cfg_.id_dropout, id_dropout_key(ms));
  }
}

// ------------------------------------------------------------------ the loss
size_t Model::loss_workspace(int R) const {
  const int C = cfg_.factors, V = cfg_.n_items, N = cfg_.n_negatives;
  switch (cfg_.loss) {
    case LossKind::BCE: return be_->loss_bce_workspace(R, C, V, N);
    case LossKind::SampledSoftmax: return be_->loss_sampled_softmax_workspace(R, C, V, N);
    case LossKind::Softmax: return be_->loss_softmax_workspace(R, C, V, N);
    case LossKind::GBCE: return be_->loss_gbce_workspace(R, C, V, N);
  }
  return 0;
}

// loss(R) = the per-row losses of final states h against the batch's targets; with
// grad_scale != 0 also dh = and the item embeddings' gradient +=.
void Model::loss(float* loss, float* dh, const float* h, const Acts& a, int R, float grad_scale,
                 int64_t mask_step) {
  const int C = cfg_.factors, V = cfg_.n_items, N = cfg_.n_negatives;
  const float* E = item_table(mask_step);
  float* dE = grads_->f() + off_E_;
  switch (cfg_.loss) {
    case LossKind::BCE:
      return be_->loss_bce(loss, dh, dE, h, E, a.targets, a.neg, R, C, V, N, grad_scale,
                           a.workspace);
    case LossKind::SampledSoftmax:
      return be_->loss_sampled_softmax(loss, dh, dE, h, E, a.targets, a.neg,
                                       cfg_.uses_logq() ? logq_->f() : nullptr, R, C, V, N,
                                       grad_scale, a.workspace);
    case LossKind::Softmax:
      return be_->loss_softmax(loss, dh, dE, h, E, a.targets, a.neg, R, C, V, N, grad_scale,
                               a.workspace);
    case LossKind::GBCE:
      return be_->loss_gbce(loss, dh, dE, h, E, a.targets, a.neg, R, C, V, N, cfg_.gbce_beta(),
                            grad_scale, a.workspace);
  }
}

}  // namespace fsr
