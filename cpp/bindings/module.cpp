// fastsasrec._core: the pybind11 boundary.  Arguments are checked here (dtype, shape,
// ranges) with messages that name them; C++ exceptions become ValueError (bad argument),
// MemoryError (allocation) or RuntimeError.  Long calls release the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>
#include <string>
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

// ---- ops for tests: float32 numpy in, numpy out (CPU backend functions).
using F32 = py::array_t<float, py::array::c_style>;
using I32 = py::array_t<int32_t, py::array::c_style>;
F32 zeros_like_shape(std::vector<py::ssize_t> shape) {
  F32 a(shape);
  std::memset(a.mutable_data(), 0, a.size() * sizeof(float));
  return a;
}
F32 copy_f32(const py::object& o, const char* name) {
  auto a = arr<float>(o, name);
  F32 out(std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim()));
  std::memcpy(out.mutable_data(), a.data(), a.size() * sizeof(float));
  return out;
}

void bind_ops(py::module_& m) {
  m.doc() = "The CPU ops, one by one, for tests against the float64 NumPy reference.";
  m.def("rng_key", &rng_key, py::arg("seed"), py::arg("stream"));
  m.def("uniform", [](uint64_t key, int64_t n) {
    F32 out({(py::ssize_t)n});
    for (int64_t e = 0; e < n; ++e) out.mutable_data()[e] = rng_uniform(key, (uint64_t)e);
    return out;
  }, py::arg("key"), py::arg("n"));
  m.def("embedding_forward", [](py::object items, py::object pos, py::object E, py::object P,
                                float scale, float p, uint64_t key) {
    auto it = arr<int32_t>(items, "items", 1); auto ps = arr<int32_t>(pos, "pos", 1);
    auto e = arr<float>(E, "E", 2); auto pp = arr<float>(P, "P", 2);
    const int R = it.shape(0), C = e.shape(1);
    F32 x({R, C});
    cpu::embedding_forward(x.mutable_data(), it.data(), ps.data(), e.data(), pp.data(), R, C, scale, p, key);
    return x;
  });
  m.def("embedding_backward", [](py::object dx, py::object items, py::object pos, int V1, int T,
                                 float scale, float p, uint64_t key) {
    auto g = arr<float>(dx, "dx", 2); auto it = arr<int32_t>(items, "items", 1);
    auto ps = arr<int32_t>(pos, "pos", 1);
    const int R = g.shape(0), C = g.shape(1);
    F32 dE = zeros_like_shape({V1, C}), dP = zeros_like_shape({T, C});
    cpu::embedding_backward(dE.mutable_data(), dP.mutable_data(), g.data(), it.data(), ps.data(), R, C, scale, p, key);
    return py::make_tuple(dE, dP);
  });
  m.def("layernorm_forward", [](py::object x, py::object g, py::object b, float eps) {
    auto a = arr<float>(x, "x", 2); auto gg = arr<float>(g, "g", 1); auto bb = arr<float>(b, "b", 1);
    const int R = a.shape(0), C = a.shape(1);
    F32 out({R, C}), mean({R}), rstd({R});
    cpu::layernorm_forward(out.mutable_data(), mean.mutable_data(), rstd.mutable_data(), a.data(), gg.data(), bb.data(), R, C, eps);
    return py::make_tuple(out, mean, rstd);
  });
  m.def("layernorm_backward", [](py::object dout, py::object x, py::object mean, py::object rstd, py::object g) {
    auto d = arr<float>(dout, "dout", 2); auto a = arr<float>(x, "x", 2);
    auto mu = arr<float>(mean, "mean", 1); auto rs = arr<float>(rstd, "rstd", 1); auto gg = arr<float>(g, "g", 1);
    const int R = a.shape(0), C = a.shape(1);
    F32 din({R, C}); F32 dg = zeros_like_shape({C}), db = zeros_like_shape({C});
    cpu::layernorm_backward(din.mutable_data(), dg.mutable_data(), db.mutable_data(), d.data(), a.data(), mu.data(), rs.data(), gg.data(), R, C, false);
    return py::make_tuple(din, dg, db);
  });
  m.def("linear_forward", [](py::object x, py::object W, py::object b, bool relu) {
    auto a = arr<float>(x, "x", 2); auto w = arr<float>(W, "W", 2); auto bb = arr<float>(b, "b", 1);
    const int R = a.shape(0), I = a.shape(1), O = w.shape(1);
    FSR_REQUIRE(w.shape(0) == I, "W must have ", I, " rows");
    F32 out({R, O});
    cpu::linear_forward(out.mutable_data(), a.data(), w.data(), bb.data(), R, I, O, relu);
    return out;
  });
  m.def("linear_backward", [](py::object dout, py::object x, py::object W) {
    auto d = arr<float>(dout, "dout", 2); auto a = arr<float>(x, "x", 2); auto w = arr<float>(W, "W", 2);
    const int R = a.shape(0), I = a.shape(1), O = w.shape(1);
    F32 din({R, I}); F32 dW = zeros_like_shape({I, O}), db = zeros_like_shape({O});
    cpu::linear_backward(din.mutable_data(), dW.mutable_data(), db.mutable_data(), d.data(), a.data(), w.data(), R, I, O, false);
    return py::make_tuple(din, dW, db);
  });
  m.def("dropout_forward", [](py::object x, float p, uint64_t key) {
    F32 out = copy_f32(x, "x");
    cpu::dropout_forward(out.mutable_data(), out.data(), out.size(), p, key);
    return out;
  });
  m.def("dropout_backward", [](py::object dout, py::object relu_out, float p, uint64_t key) {
    F32 din = copy_f32(dout, "dout");
    const float* r = nullptr;
    F32 ro;
    if (!relu_out.is_none()) { ro = arr<float>(relu_out, "relu_out"); FSR_REQUIRE(ro.size() == din.size(), "relu_out must match dout"); r = ro.data(); }
    cpu::dropout_backward(din.mutable_data(), din.data(), r, din.size(), p, key);
    return din;
  }, py::arg("dout"), py::arg("relu_out"), py::arg("p"), py::arg("key"));
  m.def("residual_forward", [](py::object a, py::object b) {
    auto x = arr<float>(a, "a"); auto y = arr<float>(b, "b");
    FSR_REQUIRE(x.size() == y.size(), "a and b must have the same size");
    F32 out(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
    cpu::residual_forward(out.mutable_data(), x.data(), y.data(), x.size());
    return out;
  });
  m.def("residual_backward", [](py::object dout) {
    auto d = arr<float>(dout, "dout");
    std::vector<py::ssize_t> sh(d.shape(), d.shape() + d.ndim());
    F32 da = zeros_like_shape(sh), db = zeros_like_shape(sh);
    cpu::residual_backward(da.mutable_data(), db.mutable_data(), d.data(), d.size());
    return py::make_tuple(da, db);
  });
  m.def("attention_forward", [](py::object Q, py::object K, py::object V, py::object cu, int H, int T, float p, uint64_t key) {
    auto q = arr<float>(Q, "Q", 2); auto k = arr<float>(K, "K", 2); auto v = arr<float>(V, "V", 2);
    auto c = arr<int32_t>(cu, "cu", 1);
    const int R = q.shape(0), C = q.shape(1), B = c.shape(0) - 1;
    FSR_REQUIRE(C % H == 0, "C must be divisible by H");
    F32 O({R, C}), lse({R, H});
    cpu::attention_forward(O.mutable_data(), lse.mutable_data(), q.data(), C, k.data(), v.data(), C, c.data(), B, H, C / H, T, p, key);
    return py::make_tuple(O, lse);
  });
  m.def("attention_backward", [](py::object dO, py::object Q, py::object K, py::object V, py::object lse, py::object cu, int H, int T, float p, uint64_t key) {
    auto d = arr<float>(dO, "dO", 2); auto q = arr<float>(Q, "Q", 2); auto k = arr<float>(K, "K", 2);
    auto v = arr<float>(V, "V", 2); auto l = arr<float>(lse, "lse", 2); auto c = arr<int32_t>(cu, "cu", 1);
    const int R = q.shape(0), C = q.shape(1), B = c.shape(0) - 1;
    F32 dQ({R, C}), dK({R, C}), dV({R, C});
    cpu::attention_backward(dQ.mutable_data(), dK.mutable_data(), dV.mutable_data(), d.data(), q.data(), C, k.data(), v.data(), C, l.data(), c.data(), B, H, C / H, T, p, key);
    return py::make_tuple(dQ, dK, dV);
  });
  m.def("attention_last_forward", [](py::object Q, py::object K, py::object V, py::object cu, int H) {
    auto q = arr<float>(Q, "Q", 2); auto k = arr<float>(K, "K", 2); auto v = arr<float>(V, "V", 2);
    auto c = arr<int32_t>(cu, "cu", 1);
    const int B = c.shape(0) - 1, C = q.shape(1);
    FSR_REQUIRE(q.shape(0) == B, "Q must have one row per sequence");
    FSR_REQUIRE(C % H == 0, "C must be divisible by H");
    F32 O({B, C});
    cpu::attention_last_forward(O.mutable_data(), q.data(), C, k.data(), v.data(), C, c.data(), B, H, C / H);
    return O;
  });
  m.def("gather_rows", [](py::object x, py::object rows) {
    auto a = arr<float>(x, "x", 2); auto r = arr<int32_t>(rows, "rows", 1);
    const int n = r.shape(0), C = a.shape(1);
    for (int i = 0; i < n; ++i) FSR_REQUIRE(r.data()[i] >= 0 && r.data()[i] < a.shape(0), "rows[", i, "] out of range");
    F32 out({n, C});
    cpu::gather_rows(out.mutable_data(), a.data(), r.data(), n, C);
    return out;
  });
  m.def("loss", [](const std::string& kind, py::object h, py::object E, py::object targets, py::object negatives, float grad_scale) {
    const LossKind k = parse_loss(kind);
    auto hh = arr<float>(h, "h", 2); auto e = arr<float>(E, "E", 2);
    auto t = arr<int32_t>(targets, "targets", 1); auto n = arr<int32_t>(negatives, "negatives", 1);
    const int R = hh.shape(0), C = hh.shape(1), V = e.shape(0) - 1, N = n.shape(0);
    F32 loss({R}); F32 dh = zeros_like_shape({R, C}); F32 dE = zeros_like_shape({V + 1, C});
    std::vector<float> ws(k == LossKind::Softmax ? cpu::softmax_workspace(R, V)
                          : k == LossKind::SampledSoftmax ? cpu::sampled_softmax_workspace(R, C, N) : 0);
    if (k == LossKind::BCE) cpu::bce_loss(loss.mutable_data(), dh.mutable_data(), dE.mutable_data(), hh.data(), e.data(), t.data(), n.data(), R, C, grad_scale);
    else if (k == LossKind::SampledSoftmax) cpu::sampled_softmax_loss(loss.mutable_data(), dh.mutable_data(), dE.mutable_data(), hh.data(), e.data(), t.data(), n.data(), R, C, N, grad_scale, ws.data());
    else cpu::softmax_loss(loss.mutable_data(), dh.mutable_data(), dE.mutable_data(), hh.data(), e.data(), t.data(), R, C, V, grad_scale, ws.data());
    return py::make_tuple(loss, dh, dE);
  });
  m.def("adamw_step", [](py::object params, py::object grads, py::object m_, py::object v_, int64_t n_decay, float lr, float b1, float b2, float eps, float wd, int64_t step) {
    F32 p = copy_f32(params, "params"), m = copy_f32(m_, "m"), v = copy_f32(v_, "v");
    auto g = arr<float>(grads, "grads");
    FSR_REQUIRE(g.size() == p.size() && m.size() == p.size() && v.size() == p.size(), "params, grads, m, v must have the same size");
    cpu::adamw_step(p.mutable_data(), g.data(), m.mutable_data(), v.mutable_data(), p.size(), n_decay, lr, b1, b2, eps, wd, step);
    return py::make_tuple(p, m, v);
  });
  m.def("topk", [](py::object h, py::object E, py::object excl, py::object excl_off, int K) {
    auto hh = arr<float>(h, "h", 2); auto e = arr<float>(E, "E", 2);
    auto x = arr<int32_t>(excl, "excl", 1); auto xo = arr<int64_t>(excl_off, "excl_off", 1);
    const int B = hh.shape(0), C = hh.shape(1), V = e.shape(0) - 1;
    FSR_REQUIRE(xo.shape(0) == B + 1, "excl_off must have B + 1 entries");
    py::array_t<int32_t> ids({B, K}); F32 sc({B, K});
    cpu::topk_forward(ids.mutable_data(), sc.mutable_data(), hh.data(), e.data(), x.data(), xo.data(), B, C, V, K);
    return py::make_tuple(ids, sc);
  });
  m.def("set_num_threads", &cpu::set_num_threads);
  m.def("num_threads", &cpu::num_threads);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastsasrec engine (C++)";
  py::register_exception<fsr::MemoryError>(m, "EngineMemoryError", PyExc_MemoryError);

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
      .def("item_embeddings", [](const Model& s) {
        return to_numpy(s.item_embeddings(), {(py::ssize_t)s.config().n_items, (py::ssize_t)s.config().factors});
      });

  py::module_ ops = m.def_submodule("ops");
  bind_ops(ops);
}
