// fastsasrec._core: the pybind11 boundary.  Arguments are checked here (dtype, shape,
// ranges) with messages that name them; C++ exceptions become ValueError (bad argument),
// MemoryError (allocation) or RuntimeError.  Long calls release the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cpu/ops.h"
#include "fastsasrec/backend.h"
#include "fastsasrec/common.h"
#include "fastsasrec/config.h"
#include "fastsasrec/model.h"
#include "fastsasrec/rng.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;
using namespace fsr;

namespace {

template <typename T>
const char* dtype_name();
template <> const char* dtype_name<float>() { return "float32"; }
template <> const char* dtype_name<int32_t>() { return "int32"; }
template <> const char* dtype_name<int64_t>() { return "int64"; }

// A C-contiguous array of exactly dtype T and the given rank (-1: any), else ValueError.
template <typename T>
py::array_t<T, py::array::c_style> arr(const py::object& o, const char* name, int ndim = -1) {
  if (!py::isinstance<py::array>(o))
    throw ValueError(detail::cat(name, " must be a numpy array of ", dtype_name<T>(), ", got ",
                                 std::string(py::str(py::type::handle_of(o).attr("__name__")))));
  py::array a = py::reinterpret_borrow<py::array>(o);
  if (!a.dtype().is(py::dtype::of<T>()))
    throw ValueError(detail::cat(name, " must have dtype ", dtype_name<T>(), ", got ",
                                 std::string(py::str(a.dtype()))));
  if (ndim >= 0 && a.ndim() != ndim)
    throw ValueError(detail::cat(name, " must be ", ndim, "-dimensional, got shape with ",
                                 a.ndim(), " dimensions"));
  return py::array_t<T, py::array::c_style>::ensure(a);
}

// Validates flat item ids + offsets describing n sequences.
void check_sequences(const py::array_t<int32_t, py::array::c_style>& items,
                     const py::array_t<int64_t, py::array::c_style>& offsets, int V,
                     const char* what) {
  const int64_t n_off = offsets.shape(0);
  if (n_off < 1) throw ValueError(detail::cat(what, ": offsets must have at least one entry"));
  const int64_t* o = offsets.data();
  const int64_t n_items = items.shape(0);
  if (o[0] != 0) throw ValueError(detail::cat(what, ": offsets[0] must be 0, got ", o[0]));
  for (int64_t i = 1; i < n_off; ++i)
    if (o[i] < o[i - 1])
      throw ValueError(detail::cat(what, ": offsets must be non-decreasing, offsets[", i, "] = ",
                                   o[i], " < offsets[", i - 1, "] = ", o[i - 1]));
  if (o[n_off - 1] != n_items)
    throw ValueError(detail::cat(what, ": offsets[-1] (", o[n_off - 1],
                                 ") must equal the number of items (", n_items, ")"));
  const int32_t* it = items.data();
  for (int64_t i = 0; i < n_items; ++i)
    if (it[i] < 1 || it[i] > V)
      throw ValueError(detail::cat(what, ": item id ", it[i], " at position ", i,
                                   " is outside 1..", V));
}

Config config_from_dict(const py::dict& d) {
  Config c;
  for (auto kv : d) {
    const std::string k = py::str(kv.first);
    const py::handle v = kv.second;
    if (k == "n_items") c.n_items = v.cast<int>();
    else if (k == "factors") c.factors = v.cast<int>();
    else if (k == "ffn_factors") c.ffn_factors = v.cast<int>();
    else if (k == "n_heads") c.n_heads = v.cast<int>();
    else if (k == "n_layers") c.n_layers = v.cast<int>();
    else if (k == "max_seq") c.max_seq = v.cast<int>();
    else if (k == "dropout") c.dropout = v.cast<float>();
    else if (k == "loss") c.loss = parse_loss(v.cast<std::string>());
    else if (k == "n_negatives") c.n_negatives = v.cast<int>();
    else if (k == "learning_rate") c.learning_rate = v.cast<float>();
    else if (k == "weight_decay") c.weight_decay = v.cast<float>();
    else if (k == "beta1") c.beta1 = v.cast<float>();
    else if (k == "beta2") c.beta2 = v.cast<float>();
    else if (k == "adam_eps") c.adam_eps = v.cast<float>();
    else if (k == "ln_eps") c.ln_eps = v.cast<float>();
    else if (k == "batch_size") c.batch_size = v.cast<int>();
    else if (k == "seed") c.seed = v.cast<uint64_t>();
    else if (k == "precision") c.precision = parse_precision(v.cast<std::string>());
    else throw ValueError("unknown config key '" + k + "'");
  }
  c.validate();
  return c;
}

template <typename T>
py::array_t<T> to_numpy(const std::vector<T>& v, std::vector<py::ssize_t> shape) {
  py::array_t<T> out(shape);
  std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(T));
  return out;
}

py::dict batch_to_dict(const HostBatch& b) {
  py::dict d;
  d["items"] = to_numpy(b.items, {(py::ssize_t)b.items.size()});
  d["targets"] = to_numpy(b.targets, {(py::ssize_t)b.targets.size()});
  d["pos"] = to_numpy(b.pos, {(py::ssize_t)b.pos.size()});
  d["cu"] = to_numpy(b.cu, {(py::ssize_t)b.cu.size()});
  d["negatives"] = to_numpy(b.negatives, {(py::ssize_t)b.negatives.size()});
  return d;
}

HostBatch batch_from_arrays(py::object items, py::object targets, py::object pos, py::object cu,
                            py::object negatives, const Config& c) {
  auto vec = [](const py::array_t<int32_t, py::array::c_style>& a) {
    return std::vector<int32_t>(a.data(), a.data() + a.size());
  };
  HostBatch b;
  b.items = vec(arr<int32_t>(items, "items", 1));
  b.targets = vec(arr<int32_t>(targets, "targets", 1));
  b.pos = vec(arr<int32_t>(pos, "pos", 1));
  b.cu = vec(arr<int32_t>(cu, "cu", 1));
  b.negatives = vec(arr<int32_t>(negatives, "negatives", 1));
  const int R = b.R();
  FSR_REQUIRE(R >= 1, "items must not be empty");
  FSR_REQUIRE((int)b.targets.size() == R && (int)b.pos.size() == R,
              "items, targets and pos must have the same length");
  FSR_REQUIRE(b.cu.size() >= 2 && b.cu.front() == 0 && b.cu.back() == R,
              "cu must start at 0 and end at len(items)");
  for (size_t i = 1; i < b.cu.size(); ++i) {
    FSR_REQUIRE(b.cu[i] > b.cu[i - 1], "cu must be strictly increasing");
    FSR_REQUIRE(b.cu[i] - b.cu[i - 1] <= c.max_seq, "a sequence is longer than max_seq");
  }
  for (int r = 0; r < R; ++r) {
    FSR_REQUIRE(b.items[r] >= 1 && b.items[r] <= c.n_items, "items[", r, "] = ", b.items[r], " outside 1..", c.n_items);
    FSR_REQUIRE(b.targets[r] >= 1 && b.targets[r] <= c.n_items, "targets[", r, "] = ", b.targets[r], " outside 1..", c.n_items);
    FSR_REQUIRE(b.pos[r] >= 0 && b.pos[r] < c.max_seq, "pos[", r, "] = ", b.pos[r], " outside 0..", c.max_seq - 1);
  }
  const size_t need = c.loss == LossKind::BCE ? (size_t)R
                      : c.loss == LossKind::SampledSoftmax ? (size_t)c.n_negatives : 0;
  FSR_REQUIRE(b.negatives.size() == need, "negatives must have ", need, " entries for loss '",
              loss_name(c.loss), "', got ", b.negatives.size());
  for (size_t j = 0; j < b.negatives.size(); ++j)
    FSR_REQUIRE(b.negatives[j] >= 1 && b.negatives[j] <= c.n_items, "negatives[", j, "] = ",
                b.negatives[j], " outside 1..", c.n_items);
  return b;
}

// ---- ops for tests: float32 numpy in, numpy out, on the backend of a device.  Each
// method checks its arguments, copies the inputs into backend buffers, runs the Backend op
// and copies the outputs back.  On "cpu" the buffers are host memory and the copies
// memcpy, so the results are those of the cpu:: functions themselves.
using F32 = py::array_t<float, py::array::c_style>;
using I32 = py::array_t<int32_t, py::array::c_style>;
using Shape = std::vector<py::ssize_t>;

Shape shape_of(const py::array& a) { return Shape(a.shape(), a.shape() + a.ndim()); }

// Backend memory for an array of T of the given shape, released when it goes out of
// scope (also when an op throws).
template <typename T>
class Buffer {
 public:
  Buffer(Backend& be, Shape shape) : be_(&be), shape_(std::move(shape)) {
    for (py::ssize_t s : shape_) n_ *= (size_t)s;
    p_ = static_cast<T*>(be.alloc(n_ * sizeof(T)));
  }
  Buffer(Buffer&& o) noexcept : be_(o.be_), shape_(std::move(o.shape_)), n_(o.n_), p_(o.p_) {
    o.p_ = nullptr;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer& operator=(Buffer&&) = delete;
  ~Buffer() {
    if (p_) be_->release(p_);
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(T); }
  const Shape& shape() const { return shape_; }

 private:
  Backend* be_;
  Shape shape_;
  size_t n_ = 1;
  T* p_ = nullptr;
};

// The longest sequence of a cu array (at least 1): the n_max of the attention ops.
int longest(const py::array_t<int32_t, py::array::c_style>& cu) {
  int n = 1;
  const int32_t* c = cu.data();
  for (py::ssize_t s = 0; s + 1 < cu.shape(0); ++s) n = std::max(n, c[s + 1] - c[s]);
  return n;
}

class Ops {
 public:
  Ops(const std::string& device, const std::string& precision) : be_(make_backend(device)) {
    be_->set_precision(parse_precision(precision));
  }
  std::string device() const { return be_->name(); }

  py::array_t<float> embedding_forward(py::object items, py::object pos, py::object E,
                                       py::object P, float scale, float p, uint64_t key) {
    auto it = arr<int32_t>(items, "items", 1); auto ps = arr<int32_t>(pos, "pos", 1);
    auto e = arr<float>(E, "E", 2); auto pp = arr<float>(P, "P", 2);
    const int R = it.shape(0), C = e.shape(1);
    auto d_it = put(it), d_ps = put(ps); auto d_e = put(e), d_pp = put(pp);
    auto x = empty<float>({R, C});
    be_->embedding_forward(x.get(), d_it.get(), d_ps.get(), d_e.get(), d_pp.get(), R, C, scale, p, key);
    return fetch(x);
  }
  py::tuple embedding_backward(py::object dx, py::object items, py::object pos, int V1, int T,
                               float scale, float p, uint64_t key) {
    auto g = arr<float>(dx, "dx", 2); auto it = arr<int32_t>(items, "items", 1);
    auto ps = arr<int32_t>(pos, "pos", 1);
    const int R = g.shape(0), C = g.shape(1);
    auto d_g = put(g); auto d_it = put(it), d_ps = put(ps);
    auto dE = zeros<float>({V1, C}), dP = zeros<float>({T, C});
    be_->embedding_backward(dE.get(), dP.get(), d_g.get(), d_it.get(), d_ps.get(), R, C, scale, p, key);
    return py::make_tuple(fetch(dE), fetch(dP));
  }
  py::tuple layernorm_forward(py::object x, py::object g, py::object b, float eps) {
    auto a = arr<float>(x, "x", 2); auto gg = arr<float>(g, "g", 1); auto bb = arr<float>(b, "b", 1);
    const int R = a.shape(0), C = a.shape(1);
    auto d_a = put(a), d_g = put(gg), d_b = put(bb);
    auto out = empty<float>({R, C}), mean = empty<float>({R}), rstd = empty<float>({R});
    be_->layernorm_forward(out.get(), mean.get(), rstd.get(), d_a.get(), d_g.get(), d_b.get(), R, C, eps);
    return py::make_tuple(fetch(out), fetch(mean), fetch(rstd));
  }
  py::tuple residual_layernorm_forward(py::object a, py::object b, py::object g, py::object beta,
                                       float eps, float p, uint64_t key) {
    auto x = arr<float>(a, "a", 2); auto y = arr<float>(b, "b", 2);
    auto gg = arr<float>(g, "g", 1); auto bb = arr<float>(beta, "beta", 1);
    FSR_REQUIRE(y.shape(0) == x.shape(0) && y.shape(1) == x.shape(1), "b must have the shape of a");
    const int R = x.shape(0), C = x.shape(1);
    auto d_x = put(x), d_y = put(y), d_g = put(gg), d_b = put(bb);
    auto sum = empty<float>({R, C}), out = empty<float>({R, C});
    auto mean = empty<float>({R}), rstd = empty<float>({R});
    be_->residual_layernorm_forward(sum.get(), out.get(), mean.get(), rstd.get(), d_x.get(), d_y.get(),
                                    p, key, d_g.get(), d_b.get(), R, C, eps);
    return py::make_tuple(fetch(sum), fetch(out), fetch(mean), fetch(rstd));
  }
  py::tuple layernorm_backward(py::object dout, py::object x, py::object mean, py::object rstd,
                               py::object g) {
    auto d = arr<float>(dout, "dout", 2); auto a = arr<float>(x, "x", 2);
    auto mu = arr<float>(mean, "mean", 1); auto rs = arr<float>(rstd, "rstd", 1); auto gg = arr<float>(g, "g", 1);
    const int R = a.shape(0), C = a.shape(1);
    auto d_d = put(d), d_a = put(a), d_mu = put(mu), d_rs = put(rs), d_g = put(gg);
    auto din = empty<float>({R, C}); auto dg = zeros<float>({C}), db = zeros<float>({C});
    be_->layernorm_backward(din.get(), dg.get(), db.get(), d_d.get(), d_a.get(), d_mu.get(), d_rs.get(), d_g.get(), R, C, false);
    return py::make_tuple(fetch(din), fetch(dg), fetch(db));
  }
  py::array_t<float> linear_forward(py::object x, py::object W, py::object b, bool relu, float p,
                                    uint64_t key) {
    auto a = arr<float>(x, "x", 2); auto w = arr<float>(W, "W", 2); auto bb = arr<float>(b, "b", 1);
    const int R = a.shape(0), I = a.shape(1), O = w.shape(1);
    FSR_REQUIRE(w.shape(0) == I, "W must have ", I, " rows");
    auto d_a = put(a), d_w = put(w), d_b = put(bb);
    auto out = empty<float>({R, O});
    be_->linear_forward(out.get(), d_a.get(), d_w.get(), d_b.get(), R, I, O, relu, p, key);
    return fetch(out);
  }
  py::tuple linear_backward(py::object dout, py::object x, py::object W) {
    auto d = arr<float>(dout, "dout", 2); auto a = arr<float>(x, "x", 2); auto w = arr<float>(W, "W", 2);
    const int R = a.shape(0), I = a.shape(1), O = w.shape(1);
    auto d_d = put(d), d_a = put(a), d_w = put(w);
    auto din = empty<float>({R, I}); auto dW = zeros<float>({I, O}), db = zeros<float>({O});
    be_->linear_backward(din.get(), dW.get(), db.get(), d_d.get(), d_a.get(), d_w.get(), R, I, O, false);
    return py::make_tuple(fetch(din), fetch(dW), fetch(db));
  }
  py::array_t<float> dropout_forward(py::object x, float p, uint64_t key) {
    auto a = arr<float>(x, "x");
    auto d_a = put(a);
    auto out = empty<float>(shape_of(a));
    be_->dropout_forward(out.get(), d_a.get(), out.size(), p, key);
    return fetch(out);
  }
  py::array_t<float> dropout_backward(py::object dout, py::object relu_out, float p, uint64_t key) {
    auto d = arr<float>(dout, "dout");
    const bool relu = !relu_out.is_none();
    F32 ro;
    if (relu) { ro = arr<float>(relu_out, "relu_out"); FSR_REQUIRE(ro.size() == d.size(), "relu_out must match dout"); }
    auto d_d = put(d); auto d_ro = relu ? put(ro) : empty<float>({0});
    auto din = empty<float>(shape_of(d));
    be_->dropout_backward(din.get(), d_d.get(), relu ? d_ro.get() : nullptr, din.size(), p, key);
    return fetch(din);
  }
  py::tuple attention_forward(py::object Q, py::object K, py::object V, py::object cu, int H,
                              int T, float p, uint64_t key) {
    auto q = arr<float>(Q, "Q", 2); auto k = arr<float>(K, "K", 2); auto v = arr<float>(V, "V", 2);
    auto c = arr<int32_t>(cu, "cu", 1);
    const int R = q.shape(0), C = q.shape(1), B = c.shape(0) - 1;
    FSR_REQUIRE(C % H == 0, "C must be divisible by H");
    auto d_q = put(q), d_k = put(k), d_v = put(v); auto d_c = put(c);
    auto O = empty<float>({R, C}), lse = empty<float>({R, H});
    be_->attention_forward(O.get(), lse.get(), d_q.get(), C, d_k.get(), d_v.get(), C, d_c.get(), B, H, C / H, T, longest(c), p, key);
    return py::make_tuple(fetch(O), fetch(lse));
  }
  py::tuple attention_backward(py::object dO, py::object Q, py::object K, py::object V,
                               py::object lse, py::object cu, int H, int T, float p, uint64_t key) {
    auto d = arr<float>(dO, "dO", 2); auto q = arr<float>(Q, "Q", 2); auto k = arr<float>(K, "K", 2);
    auto v = arr<float>(V, "V", 2); auto l = arr<float>(lse, "lse", 2); auto c = arr<int32_t>(cu, "cu", 1);
    const int R = q.shape(0), C = q.shape(1), B = c.shape(0) - 1;
    auto d_d = put(d), d_q = put(q), d_k = put(k), d_v = put(v), d_l = put(l); auto d_c = put(c);
    // The backward may read the forward's output (delta_i = dO_i . O_i): recompute it here
    // from the same inputs and dropout key.
    auto O = empty<float>({R, C}), lse_f = empty<float>({R, H});
    const int n_max = longest(c);
    be_->attention_forward(O.get(), lse_f.get(), d_q.get(), C, d_k.get(), d_v.get(), C, d_c.get(), B, H, C / H, T, n_max, p, key);
    auto dQ = empty<float>({R, C}), dK = empty<float>({R, C}), dV = empty<float>({R, C});
    be_->attention_backward(dQ.get(), dK.get(), dV.get(), d_d.get(), O.get(), d_q.get(), C, d_k.get(), d_v.get(), C, d_l.get(), d_c.get(), B, H, C / H, T, n_max, p, key);
    return py::make_tuple(fetch(dQ), fetch(dK), fetch(dV));
  }
  py::array_t<float> attention_last_forward(py::object Q, py::object K, py::object V,
                                            py::object cu, int H) {
    auto q = arr<float>(Q, "Q", 2); auto k = arr<float>(K, "K", 2); auto v = arr<float>(V, "V", 2);
    auto c = arr<int32_t>(cu, "cu", 1);
    const int B = c.shape(0) - 1, C = q.shape(1);
    FSR_REQUIRE(q.shape(0) == B, "Q must have one row per sequence");
    FSR_REQUIRE(C % H == 0, "C must be divisible by H");
    auto d_q = put(q), d_k = put(k), d_v = put(v); auto d_c = put(c);
    auto O = empty<float>({B, C});
    be_->attention_last_forward(O.get(), d_q.get(), C, d_k.get(), d_v.get(), C, d_c.get(), B, H, C / H);
    return fetch(O);
  }
  py::array_t<float> gather_rows(py::object x, py::object rows) {
    auto a = arr<float>(x, "x", 2); auto r = arr<int32_t>(rows, "rows", 1);
    const int n = r.shape(0), C = a.shape(1);
    for (int i = 0; i < n; ++i) FSR_REQUIRE(r.data()[i] >= 0 && r.data()[i] < a.shape(0), "rows[", i, "] out of range");
    auto d_a = put(a); auto d_r = put(r);
    auto out = empty<float>({n, C});
    be_->gather_rows(out.get(), d_a.get(), d_r.get(), n, C);
    return fetch(out);
  }
  py::tuple loss(const std::string& kind, py::object h, py::object E, py::object targets,
                 py::object negatives, float grad_scale) {
    const LossKind k = parse_loss(kind);
    auto hh = arr<float>(h, "h", 2); auto e = arr<float>(E, "E", 2);
    auto t = arr<int32_t>(targets, "targets", 1); auto n = arr<int32_t>(negatives, "negatives", 1);
    const int R = hh.shape(0), C = hh.shape(1), V = e.shape(0) - 1, N = n.shape(0);
    auto d_h = put(hh), d_e = put(e); auto d_t = put(t), d_n = put(n);
    auto loss = empty<float>({R}); auto dh = zeros<float>({R, C}), dE = zeros<float>({V + 1, C});
    auto ws = zeros<float>({(py::ssize_t)be_->loss_workspace(k, R, C, V, N)});
    be_->loss(k, loss.get(), dh.get(), dE.get(), d_h.get(), d_e.get(), d_t.get(), d_n.get(), R, C, V, N, grad_scale, ws.get());
    return py::make_tuple(fetch(loss), fetch(dh), fetch(dE));
  }
  py::tuple adamw_step(py::object params, py::object grads, py::object m_, py::object v_,
                       int64_t n_decay, float lr, float b1, float b2, float eps, float wd,
                       int64_t step) {
    auto p = arr<float>(params, "params"), m = arr<float>(m_, "m"), v = arr<float>(v_, "v");
    auto g = arr<float>(grads, "grads");
    FSR_REQUIRE(g.size() == p.size() && m.size() == p.size() && v.size() == p.size(), "params, grads, m, v must have the same size");
    auto d_p = put(p), d_g = put(g), d_m = put(m), d_v = put(v);
    be_->adamw_step(d_p.get(), d_g.get(), d_m.get(), d_v.get(), d_p.size(), n_decay, lr, b1, b2, eps, wd, step);
    return py::make_tuple(fetch(d_p), fetch(d_m), fetch(d_v));
  }
  py::tuple topk(py::object h, py::object E, py::object excl, py::object excl_off, int K) {
    auto hh = arr<float>(h, "h", 2); auto e = arr<float>(E, "E", 2);
    auto x = arr<int32_t>(excl, "excl", 1); auto xo = arr<int64_t>(excl_off, "excl_off", 1);
    const int B = hh.shape(0), C = hh.shape(1), V = e.shape(0) - 1;
    FSR_REQUIRE(xo.shape(0) == B + 1, "excl_off must have B + 1 entries");
    auto d_h = put(hh), d_e = put(e); auto d_x = put(x); auto d_xo = put(xo);
    auto ids = empty<int32_t>({B, K}); auto sc = empty<float>({B, K});
    be_->topk(ids.get(), sc.get(), d_h.get(), d_e.get(), d_x.get(), d_xo.get(), B, C, V, K);
    return py::make_tuple(fetch(ids), fetch(sc));
  }

 private:
  // A backend copy of a host array.
  template <typename T>
  Buffer<T> put(const py::array_t<T, py::array::c_style>& a) {
    Buffer<T> b(*be_, shape_of(a));
    be_->upload(b.get(), a.data(), b.bytes());
    return b;
  }
  // An output the op must overwrite, poisoned (all bits set: NaN floats, -1 ints) so that an
  // element the op forgets to write fails the comparison instead of passing on leftovers.
  template <typename T>
  Buffer<T> empty(Shape shape) {
    Buffer<T> b(*be_, std::move(shape));
    const std::vector<unsigned char> poison(b.bytes(), 0xFF);
    be_->upload(b.get(), poison.data(), b.bytes());
    return b;
  }
  template <typename T>
  Buffer<T> zeros(Shape shape) {
    Buffer<T> b(*be_, std::move(shape));
    be_->zero(b.get(), b.bytes());
    return b;
  }
  // A new numpy array holding the buffer's contents.
  template <typename T>
  py::array_t<T> fetch(const Buffer<T>& b) {
    py::array_t<T> a(b.shape());
    be_->download(a.mutable_data(), b.get(), b.bytes());
    return a;
  }

  std::unique_ptr<Backend> be_;
};

F32 uniform(uint64_t key, int64_t n) {
  F32 out({(py::ssize_t)n});
  for (int64_t e = 0; e < n; ++e) out.mutable_data()[e] = rng_uniform(key, (uint64_t)e);
  return out;
}

void bind_ops(py::module_& m) {
  py::class_<Ops>(m, "Ops",
                  "The ops of one device's backend, one by one, for tests against the float64 "
                  "NumPy reference.  Ops(device) raises ValueError when the device is unusable.")
      .def(py::init<const std::string&, const std::string&>(), py::arg("device"),
           py::arg("precision") = "fp32")
      .def_property_readonly("device", &Ops::device)
      .def_static("rng_key", &rng_key, py::arg("seed"), py::arg("stream"))
      .def_static("uniform", &uniform, py::arg("key"), py::arg("n"))
      .def("embedding_forward", &Ops::embedding_forward)
      .def("embedding_backward", &Ops::embedding_backward)
      .def("layernorm_forward", &Ops::layernorm_forward)
      .def("residual_layernorm_forward", &Ops::residual_layernorm_forward)
      .def("layernorm_backward", &Ops::layernorm_backward)
      .def("linear_forward", &Ops::linear_forward, py::arg("x"), py::arg("W"), py::arg("b"),
           py::arg("relu"), py::arg("p") = 0.f, py::arg("key") = 0)
      .def("linear_backward", &Ops::linear_backward)
      .def("dropout_forward", &Ops::dropout_forward)
      .def("dropout_backward", &Ops::dropout_backward, py::arg("dout"), py::arg("relu_out"),
           py::arg("p"), py::arg("key"))
      .def("attention_forward", &Ops::attention_forward)
      .def("attention_backward", &Ops::attention_backward)
      .def("attention_last_forward", &Ops::attention_last_forward)
      .def("gather_rows", &Ops::gather_rows)
      .def("loss", &Ops::loss)
      .def("adamw_step", &Ops::adamw_step)
      .def("topk", &Ops::topk)
      // The CPU backend's OpenMP threads, whichever device the instance has.
      .def_static("set_num_threads", &cpu::set_num_threads)
      .def_static("num_threads", &cpu::num_threads);
  // _core.ops: the CPU ops, as before this class existed.
  m.attr("ops") = py::cast(Ops("cpu", "fp32"));
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastsasrec engine (C++)";
  py::register_exception<fsr::MemoryError>(m, "EngineMemoryError", PyExc_MemoryError);

  // The common shape of recommend_batch's input, read without a Python loop: a list of
  // lists of Python ints -> (flat int64, offsets int64).  None for anything else (tuples,
  // arrays, strings, bools, floats, ints beyond int64), which the Python path handles and
  // names precisely.
  m.def("flatten_int_lists", [](py::handle obj) -> py::object {
    if (!PyList_CheckExact(obj.ptr())) return py::none();
    PyObject* outer = obj.ptr();
    const Py_ssize_t n = PyList_GET_SIZE(outer);
    size_t total = 0;
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyObject* s = PyList_GET_ITEM(outer, i);
      if (!PyList_CheckExact(s)) return py::none();
      total += (size_t)PyList_GET_SIZE(s);
    }
    py::array_t<int64_t> flat((py::ssize_t)total), offsets((py::ssize_t)n + 1);
    int64_t* f = flat.mutable_data();
    int64_t* o = offsets.mutable_data();
    size_t k = 0;
    o[0] = 0;
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyObject* s = PyList_GET_ITEM(outer, i);
      const Py_ssize_t m = PyList_GET_SIZE(s);
      for (Py_ssize_t j = 0; j < m; ++j) {
        PyObject* x = PyList_GET_ITEM(s, j);
        if (!PyLong_CheckExact(x)) return py::none();  // bool, float, str, numpy scalar...
        int overflow = 0;
        const long long v = PyLong_AsLongLongAndOverflow(x, &overflow);
        if (overflow) return py::none();
        f[k++] = (int64_t)v;
      }
      o[i + 1] = (int64_t)k;
    }
    return py::make_tuple(flat, offsets);
  });
  m.def("backend_available", [](const std::string& device) {
    std::string why;
    const bool ok = backend_available(device, &why);
    return py::make_tuple(ok, why);
  });
  m.def("build_info", []() {
    py::dict d;
#ifdef _OPENMP
    d["openmp"] = py::int_(_OPENMP);
    d["omp_max_threads"] = omp_get_max_threads();
#else
    d["openmp"] = py::none();
    d["omp_max_threads"] = 1;
#endif
    d["blas"] = "OpenBLAS (scipy-openblas32)";
#ifndef FSR_CUDA_LINE
#define FSR_CUDA_LINE "not compiled"
#endif
    d["cuda"] = FSR_CUDA_LINE;
    d["cuda_compiled"] = std::string(FSR_CUDA_LINE).rfind("compiled", 0) == 0;
    d["compiler"] = __VERSION__;
    return d;
  });

  py::class_<Model>(m, "Model")
      .def(py::init([](const py::dict& cfg, const std::string& device) {
             return std::make_unique<Model>(config_from_dict(cfg), device);
           }),
           py::arg("config"), py::arg("device") = "cpu")
      .def_property_readonly("n_params", &Model::n_params)
      .def_property_readonly("step", &Model::step)
      .def_property_readonly("device", [](Model& s) { return s.backend().name(); })
      .def_property_readonly("device_index", [](Model& s) { return s.backend().device_index(); })
      .def_property_readonly("threads", [](Model& s) { return s.backend().threads(); })
      .def("set_threads", [](Model& s, int n) {
        FSR_REQUIRE(n >= 0, "num_threads must be >= 0, got ", n);
        if (n > 0) s.backend().set_threads(n);
      })
      .def("tensors", [](const Model& s) {
        py::list out;
        for (const auto& t : s.tensors()) out.append(py::make_tuple(t.name, t.offset, py::tuple(py::cast(t.shape))));
        return out;
      })
      .def("get_params", [](const Model& s) { return to_numpy(s.get_params(), {(py::ssize_t)s.n_params()}); })
      .def("set_params", [](Model& s, py::object a) {
        auto p = arr<float>(a, "params", 1);
        FSR_REQUIRE((size_t)p.shape(0) == s.n_params(), "params must have ", s.n_params(), " values, got ", p.shape(0));
        for (py::ssize_t i = 0; i < p.shape(0); ++i)
          FSR_REQUIRE(std::isfinite(p.data()[i]), "params[", i, "] is not finite");
        s.set_params(std::vector<float>(p.data(), p.data() + p.size()));
      })
      .def("get_grads", [](const Model& s) { return to_numpy(s.get_grads(), {(py::ssize_t)s.n_params()}); })
      .def("init_params", &Model::init_params, py::arg("seed"))
      .def("train_epoch", [](Model& s, py::object items, py::object offsets, int64_t epoch) {
        auto it = arr<int32_t>(items, "items", 1);
        auto off = arr<int64_t>(offsets, "offsets", 1);
        check_sequences(it, off, s.config().n_items, "sequences");
        py::gil_scoped_release nogil;
        return s.train_epoch(it.data(), off.data(), off.shape(0) - 1, epoch);
      }, py::arg("items"), py::arg("offsets"), py::arg("epoch"))
      .def("build_batch", [](const Model& s, py::object items, py::object offsets, py::object seqs, int64_t step) {
        auto it = arr<int32_t>(items, "items", 1);
        auto off = arr<int64_t>(offsets, "offsets", 1);
        auto sq = arr<int64_t>(seqs, "seqs", 1);
        check_sequences(it, off, s.config().n_items, "sequences");
        for (py::ssize_t i = 0; i < sq.shape(0); ++i)
          FSR_REQUIRE(sq.data()[i] >= 0 && sq.data()[i] < off.shape(0) - 1, "seqs[", i, "] out of range");
        HostBatch b;
        s.build_batch(it.data(), off.data(), sq.data(), (int)sq.shape(0), step, b);
        return batch_to_dict(b);
      })
      .def("forward_backward", [](Model& s, py::object items, py::object targets, py::object pos, py::object cu, py::object negatives, bool train, bool grad, int64_t step) {
        HostBatch b = batch_from_arrays(items, targets, pos, cu, negatives, s.config());
        py::gil_scoped_release nogil;
        return s.forward_backward(b, train, grad, step);
      }, py::arg("items"), py::arg("targets"), py::arg("pos"), py::arg("cu"), py::arg("negatives"), py::arg("train"), py::arg("grad"), py::arg("step"))
      .def("optimizer_step", &Model::optimizer_step)
      .def("session_states", [](Model& s, py::object items, py::object offsets) {
        auto it = arr<int32_t>(items, "items", 1);
        auto off = arr<int64_t>(offsets, "offsets", 1);
        check_sequences(it, off, s.config().n_items, "sessions");
        const int64_t B = off.shape(0) - 1;
        std::vector<float> h;
        {
          py::gil_scoped_release nogil;
          h = s.session_states(it.data(), off.data(), B);
        }
        return to_numpy(h, {(py::ssize_t)B, (py::ssize_t)s.config().factors});
      })
      .def("recommend", [](Model& s, py::object items, py::object offsets, int k, py::object excl, py::object excl_off) {
        auto it = arr<int32_t>(items, "items", 1);
        auto off = arr<int64_t>(offsets, "offsets", 1);
        check_sequences(it, off, s.config().n_items, "sessions");
        auto x = arr<int32_t>(excl, "exclude", 1);
        auto xo = arr<int64_t>(excl_off, "exclude_offsets", 1);
        const int64_t B = off.shape(0) - 1;
        FSR_REQUIRE(xo.shape(0) == B + 1, "exclude_offsets must have ", B + 1, " entries, got ", xo.shape(0));
        check_sequences(x, xo, s.config().n_items, "exclude");
        FSR_REQUIRE(k >= 1 && k <= s.config().n_items, "n must be in 1..", s.config().n_items, ", got ", k);
        py::array_t<int32_t> ids({(py::ssize_t)B, (py::ssize_t)k});
        py::array_t<float> sc({(py::ssize_t)B, (py::ssize_t)k});
        int32_t* pi = ids.mutable_data();
        float* ps = sc.mutable_data();
        {
          py::gil_scoped_release nogil;
          s.recommend(it.data(), off.data(), B, k, x.data(), xo.data(), pi, ps);
        }
        return py::make_tuple(ids, sc);
      })
      .def("recommend_resident", [](Model& s, uintptr_t items, int64_t B, int L, uintptr_t excl,
                                    int Lx, int k, uintptr_t out_ids, uintptr_t out_scores) {
        // Addresses in the backend's memory (device pointers on cuda), e.g. CuPy arrays'
        // data.ptr; the caller checks the ids (1..V) and that the arrays are C-contiguous
        // int32 (items, excl, out_ids) and float32 (out_scores).
        FSR_REQUIRE(items != 0 && out_ids != 0 && out_scores != 0,
                    "items, out_ids and out_scores must be non-null addresses");
        py::gil_scoped_release nogil;
        s.recommend_resident(reinterpret_cast<const int32_t*>(items), B, L,
                             reinterpret_cast<const int32_t*>(excl), Lx, k,
                             reinterpret_cast<int32_t*>(out_ids), reinterpret_cast<float*>(out_scores));
      }, py::arg("items"), py::arg("B"), py::arg("L"), py::arg("excl"), py::arg("Lx"), py::arg("k"),
         py::arg("out_ids"), py::arg("out_scores"))
      .def("item_embeddings", [](const Model& s) {
        return to_numpy(s.item_embeddings(), {(py::ssize_t)s.config().n_items, (py::ssize_t)s.config().factors});
      });

  bind_ops(m);
}
