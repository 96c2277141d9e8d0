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
  if (!a.dtype().equal(py::dtype::of<T>()))
    throw ValueError(detail::cat(name, " must have dtype ", dtype_name<T>(), ", got ",
                                 std::string(py::str(a.dtype()))));
  if (ndim >= 0 && a.ndim() != ndim)
    throw ValueError(detail::cat(name, " must be ", ndim, "-dimensional, got shape with ",
                                 a.ndim(), " dimensions"));
  return py::array_t<T, py::array::c_style>::ensure(a);
}

// A 2-D C-contiguous array in a model's memory, for recommend_resident: a numpy array for a
// model on the CPU; for a model on a GPU, any object with __cuda_array_interface__ (version
// 2 or later) whose memory the backend confirms is on that GPU.
struct Resident {
  void* ptr = nullptr;
  int64_t shape[2] = {0, 0};
  py::object keep;  // the numpy array (alive while the pointer is used)
};

template <typename T>
Resident resident(const Model& m, const py::object& o, const char* name, bool device,
                  bool output) {
  Resident r;
  if (!device) {
    auto a = arr<T>(o, name, 2);
    if (output && !a.writeable()) throw ValueError(detail::cat(name, " must be writeable"));
    r.ptr = output ? (void*)a.mutable_data() : (void*)a.data();
    r.shape[0] = a.shape(0);
    r.shape[1] = a.shape(1);
    r.keep = a;
    return r;
  }
  if (!py::hasattr(o, "__cuda_array_interface__"))
    throw ValueError(detail::cat(name, " must be a GPU array (with __cuda_array_interface__, e.g. "
                                 "CuPy) for a model on '", m.device(), "', got ",
                                 std::string(py::str(py::type::handle_of(o).attr("__name__")))));
  py::dict cai = o.attr("__cuda_array_interface__");
  const std::string want = std::string("<") + (std::is_same_v<T, float> ? "f4" : "i4");
  const std::string type = py::str(cai["typestr"]);
  if (type != want && !(type.size() == 3 && type[0] == '|' && type.substr(1) == want.substr(1)))
    throw ValueError(detail::cat(name, " must hold ", dtype_name<T>(), " (typestr ", want, "), got ",
                                 type));
  py::tuple shape = cai["shape"];
  if (shape.size() != 2)
    throw ValueError(detail::cat(name, " must be 2-dimensional, got ", shape.size(), " dimensions"));
  r.shape[0] = shape[0].cast<int64_t>();
  r.shape[1] = shape[1].cast<int64_t>();
  if (cai.contains("strides") && !cai["strides"].is_none()) {
    py::tuple st = cai["strides"];
    const int64_t e = sizeof(T);
    const bool contiguous = (r.shape[0] <= 1 || st[0].cast<int64_t>() == r.shape[1] * e) &&
                            (r.shape[1] <= 1 || st[1].cast<int64_t>() == e);
    if (!contiguous) throw ValueError(detail::cat(name, " must be C-contiguous"));
  }
  py::tuple data = cai["data"];
  if (output && data[1].cast<bool>()) throw ValueError(detail::cat(name, " is read-only"));
  r.ptr = reinterpret_cast<void*>(data[0].cast<uintptr_t>());
  const size_t bytes = (size_t)r.shape[0] * (size_t)r.shape[1] * sizeof(T);
  if (bytes && !r.ptr) throw ValueError(detail::cat(name, " has a null data pointer"));
  const std::string why = m.check_memory(r.ptr, bytes);
  if (!why.empty()) throw ValueError(detail::cat(name, ": ", why));
  r.keep = o;
  return r;
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

// The engine's config from a dict of its fields (names as in config.h); with threads
// given, also the key "num_threads".  Not validated here.
Config parse_config(const py::dict& d, int* threads = nullptr) {
  Config c;
  for (auto kv : d) {
    const std::string k = py::str(kv.first);
    const py::handle v = kv.second;
    if (k == "num_threads" && threads) *threads = v.cast<int>();
    else if (k == "n_items") c.n_items = v.cast<int>();
    else if (k == "factors") c.factors = v.cast<int>();
    else if (k == "ffn_factors") c.ffn_factors = v.cast<int>();
    else if (k == "n_heads") c.n_heads = v.cast<int>();
    else if (k == "n_layers") c.n_layers = v.cast<int>();
    else if (k == "max_seq") c.max_seq = v.cast<int>();
    else if (k == "dropout") c.dropout = v.cast<float>();
    else if (k == "loss") c.loss = parse_loss(v.cast<std::string>());
    else if (k == "n_negatives") c.n_negatives = v.cast<int>();
    else if (k == "negatives") c.negatives = parse_negatives(v.cast<std::string>());
    else if (k == "logq_correction") c.logq_correction = v.cast<bool>();
    else if (k == "gbce_t") c.gbce_t = v.cast<float>();
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
  return c;
}

Config config_from_dict(const py::dict& d) {
  Config c = parse_config(d);
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
    b.last.push_back(b.cu[i] - 1);
    b.n_max = std::max(b.n_max, b.cu[i] - b.cu[i - 1]);
  }
  for (int r = 0; r < R; ++r) {
    FSR_REQUIRE(b.items[r] >= 1 && b.items[r] <= c.n_items, "items[", r, "] = ", b.items[r], " outside 1..", c.n_items);
    FSR_REQUIRE(b.targets[r] >= 1 && b.targets[r] <= c.n_items, "targets[", r, "] = ", b.targets[r], " outside 1..", c.n_items);
    FSR_REQUIRE(b.pos[r] >= 0 && b.pos[r] < c.max_seq, "pos[", r, "] = ", b.pos[r], " outside 0..", c.max_seq - 1);
  }
  const size_t need = c.loss == LossKind::BCE ? (size_t)R
                      : c.loss == LossKind::SampledSoftmax ? (size_t)c.n_negatives
                      : c.loss == LossKind::GBCE ? (size_t)R * c.n_negatives : 0;
  FSR_REQUIRE(b.negatives.size() == need, "negatives must have ", need, " entries for loss '",
              loss_name(c.loss), "', got ", b.negatives.size());
  for (size_t j = 0; j < b.negatives.size(); ++j)
    FSR_REQUIRE(b.negatives[j] >= 1 && b.negatives[j] <= c.n_items, "negatives[", j, "] = ",
                b.negatives[j], " outside 1..", c.n_items);
  return b;
}

#ifdef FSR_TEST_OPS
// ---- ops for tests: _core.Ops(device) has one method per op of ops.def, taking that op's
// arguments in order.  A pointer argument is a C-contiguous numpy array of exactly its
// pointee's dtype, or None (null).  Each array is copied into backend memory before the
// call; the arrays of the non-const pointers (the op's outputs) are copied back into the
// same numpy arrays after it, so "+=" outputs accumulate onto what the caller put there.
// No shapes are checked: these are the raw ops, for tests against the float64 reference,
// compiled in only by a test build (cmake -DFASTSASREC_TEST_OPS=ON): an index or size
// past an array's end reads or writes outside it, so a release module never binds them.
template <typename T>
const char* pointee_name() {
  if constexpr (std::is_same_v<T, float>) return "float32";
  else if constexpr (std::is_same_v<T, int32_t>) return "int32";
  else return "int64";
}

// Backend memory of n values of T, released when it goes out of scope.
template <typename T>
class Buffer {
 public:
  Buffer(Backend& be, size_t n) : be_(&be), n_(n), p_(static_cast<T*>(be.alloc(n * sizeof(T)))) {}
  Buffer(Buffer&& o) noexcept : be_(o.be_), n_(o.n_), p_(o.p_) { o.p_ = nullptr; }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer& operator=(Buffer&&) = delete;
  ~Buffer() {
    if (p_) be_->release(p_);
  }
  T* get() const { return p_; }

 private:
  Backend* be_;
  size_t n_;
  T* p_;
};

// One argument of an op, converted from Python: a scalar, or an array put in backend memory
// (and, for an output, fetched back by finish()).
template <typename A>
struct OpArg {
  A value;
  OpArg(Backend&, py::handle h, const std::string& where) {
    try {
      value = h.cast<A>();
    } catch (const py::cast_error&) {
      throw ValueError(where + " must be a " + (std::is_same_v<A, bool> ? "bool" : std::is_integral_v<A> ? "int" : "float") +
                       ", got " + std::string(py::str(py::type::handle_of(h).attr("__name__"))));
    }
  }
  A get() const { return value; }
  void finish(Backend&) {}
};
template <typename T>
struct OpArg<T*> {
  using V = std::remove_const_t<T>;
  static constexpr bool kOutput = !std::is_const_v<T>;
  py::array array;
  std::unique_ptr<Buffer<V>> buf;
  OpArg(Backend& be, py::handle h, const std::string& where) {
    if (h.is_none()) return;
    if (!py::isinstance<py::array>(h))
      throw ValueError(detail::cat(where, " must be a numpy array of ", pointee_name<V>(), " or None, got ",
                                   std::string(py::str(py::type::handle_of(h).attr("__name__")))));
    array = py::reinterpret_borrow<py::array>(h);
    if (!array.dtype().equal(py::dtype::of<V>()))
      throw ValueError(detail::cat(where, " must have dtype ", pointee_name<V>(), ", got ",
                                   std::string(py::str(array.dtype()))));
    if (!(array.flags() & py::array::c_style))
      throw ValueError(where + " must be C-contiguous");
    if (kOutput && !array.writeable()) throw ValueError(where + " is an output: it must be writeable");
    buf = std::make_unique<Buffer<V>>(be, (size_t)array.size());
    be.upload(buf->get(), array.data(), (size_t)array.size() * sizeof(V));
  }
  T* get() const { return buf ? buf->get() : nullptr; }
  void finish(Backend& be) {
    if (kOutput && buf) be.download(array.mutable_data(), buf->get(), (size_t)array.size() * sizeof(V));
  }
};

template <typename Ret, typename... A, size_t... I>
py::object call_op(Backend& be, Ret (Backend::*op)(A...), const char* name, const py::args& args,
                   std::index_sequence<I...>) {
  FSR_REQUIRE(args.size() == sizeof...(A), name, " takes ", sizeof...(A), " arguments, got ",
              args.size());
  std::tuple<OpArg<A>...> conv{
      OpArg<A>(be, args[I], detail::cat(name, ": argument ", I))...};
  if constexpr (std::is_void_v<Ret>) {
    (be.*op)(std::get<I>(conv).get()...);
    (std::get<I>(conv).finish(be), ...);
    return py::none();
  } else {
    const Ret r = (be.*op)(std::get<I>(conv).get()...);
    (std::get<I>(conv).finish(be), ...);
    return py::cast(r);
  }
}

template <typename Ret, typename... A>
py::object call_op(Backend& be, Ret (Backend::*op)(A...), const char* name, const py::args& args) {
  return call_op(be, op, name, args, std::index_sequence_for<A...>{});
}

class Ops {
 public:
  Ops(const std::string& device, const std::string& precision, int threads)
      : be_(make_backend(device)) {
    be_->set_precision(parse_precision(precision));
    be_->set_threads(threads);
  }
  std::string device() const { return be_->name(); }
  int threads() const { return be_->threads(); }
  Backend& backend() { return *be_; }

 private:
  std::unique_ptr<Backend> be_;
};

using F32 = py::array_t<float, py::array::c_style>;

F32 uniform(uint64_t key, int64_t n) {
  FSR_REQUIRE(n >= 0, "n must be >= 0, got ", n);
  F32 out({(py::ssize_t)n});
  for (int64_t e = 0; e < n; ++e) out.mutable_data()[e] = rng_uniform(key, (uint64_t)e);
  return out;
}

void bind_ops(py::module_& m) {
  py::class_<Ops> cls(m, "Ops",
                      "The ops of one device's backend (the list in ops.def), one by one, for "
                      "tests against the float64 NumPy reference.  Ops(device) raises "
                      "ValueError when the device is unusable.");
  cls.def(py::init<const std::string&, const std::string&, int>(), py::arg("device"),
          py::arg("precision") = "fp32", py::arg("threads") = 0)
      .def_property_readonly("device", &Ops::device)
      .def_property_readonly("threads", &Ops::threads)
      .def_static("rng_key", &rng_key, py::arg("seed"), py::arg("stream"))
      .def_static("uniform", &uniform, py::arg("key"), py::arg("n"));
#define FSR_OP(ret, name, params, arg_names)                                             \
  cls.def(                                                                             \
      #name,                                                                           \
      [](Ops& o, const py::args& a) { return call_op(o.backend(), &Backend::name, #name, a); }, \
      #name #params);
#include "fastsasrec/ops.def"
#undef FSR_OP
}
#endif  // FSR_TEST_OPS

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
  m.def("check_config", [](const py::dict& d) {
    int threads = 0;
    const Config c = parse_config(d, &threads);
    FSR_REQUIRE(threads >= 0, "num_threads must be >= 0, got ", threads);
    c.validate(d.contains("n_items"));
  }, py::arg("params"),
     "Raises ValueError naming the first hyper-parameter out of its range (the engine's "
     "config fields, plus num_threads; without n_items the catalogue checks are skipped).");
  m.def("param_layout", [](const py::dict& d) {
    const Config c = config_from_dict(d);
    py::list tensors;
    size_t n = 0;
    for (const auto& t : param_layout(c)) {
      tensors.append(py::make_tuple(t.name, t.offset, py::tuple(py::cast(t.shape))));
      n = t.offset + t.size();
    }
    return py::make_tuple(tensors, n);
  }, py::arg("config"),
     "([(name, offset, shape)], n_params): the weights of a model of this (validated) config, "
     "computed from the parameter table without allocating the model.");
  m.def("device_unsupported", [](const std::string& device, const py::dict& d) {
    const Config c = parse_config(d);
    return make_backend(device)->unsupported(c.max_seq, c.head_dim());
  }, py::arg("device"), py::arg("config"),
     "Why a usable device cannot run a model of this config (max_seq, factors, n_heads): "
     "'' when it can.");
  m.def("cuda_device_count", &cuda_device_count, "GPUs the CUDA backend can use (0: none).");
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
      .def(py::init([](const py::dict& cfg, const std::string& device, int threads) {
             return std::make_unique<Model>(config_from_dict(cfg), device, threads);
           }),
           py::arg("config"), py::arg("device") = "cpu", py::arg("threads") = 0)
      .def_property_readonly("n_params", &Model::n_params)
      .def_property_readonly("step", &Model::step)
      .def_property_readonly("device", &Model::device)
      .def_property_readonly("device_index", &Model::device_index)
      .def_property_readonly("threads", &Model::threads,
                             "CPU threads of the model's ops (1 on a GPU)")
      .def("set_threads", &Model::set_threads, py::arg("n"),
           "CPU threads of the model's ops from now on (0 = all cores)")
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
      .def("train_epoch", [](Model& s, py::object items, py::object offsets, int64_t epoch,
                             bool check_signals, py::object stop) -> py::object {
        // check_signals: before every batch, Python's signal handlers run (the GIL taken
        // for that instant); one that raises (Ctrl-C: KeyboardInterrupt) stops the epoch,
        // which puts the weights back as they were when it began, and the exception is
        // raised here.  stop: a callable asked the same way; True stops the epoch the same
        // way and returns None.  Without either, the epoch runs to its end.
        auto it = arr<int32_t>(items, "items", 1);
        auto off = arr<int64_t>(offsets, "offsets", 1);
        check_sequences(it, off, s.config().n_items, "sequences");
        FSR_REQUIRE(stop.is_none() || PyCallable_Check(stop.ptr()),
                    "stop must be None or a callable returning a bool");
        std::unique_ptr<py::error_already_set> raised;
        std::function<bool()> ask;
        if (check_signals || !stop.is_none()) {
          ask = [&]() -> bool {
            py::gil_scoped_acquire gil;
            if (check_signals && PyErr_CheckSignals() != 0) {
              raised = std::make_unique<py::error_already_set>();
              return true;
            }
            if (stop.is_none()) return false;
            try {
              return stop().cast<bool>();
            } catch (py::error_already_set& e) {
              raised = std::make_unique<py::error_already_set>(std::move(e));
              return true;
            }
          };
        }
        Model::EpochResult r;
        {
          py::gil_scoped_release nogil;
          r = s.train_epoch(it.data(), off.data(), off.shape(0) - 1, epoch, ask);
        }
        if (raised) throw std::move(*raised);
        if (!r.completed) return py::none();
        return py::float_(r.loss);
      }, py::arg("items"), py::arg("offsets"), py::arg("epoch"), py::arg("check_signals") = false,
         py::arg("stop") = py::none())
      .def("optimizer_state", [](const Model& s) {
        std::vector<float> m, v;
        s.get_optimizer_state(&m, &v);
        const py::ssize_t n = (py::ssize_t)s.n_params();
        return py::make_tuple(to_numpy(std::move(m), {n}), to_numpy(std::move(v), {n}), s.step());
      }, "(m, v, step): AdamW's moments (float32, arena order) and its step count")
      .def("set_optimizer_state", [](Model& s, py::object m_, py::object v_, int64_t step) {
        auto m = arr<float>(m_, "m", 1);
        auto v = arr<float>(v_, "v", 1);
        const py::ssize_t n = (py::ssize_t)s.n_params();
        FSR_REQUIRE(m.shape(0) == n && v.shape(0) == n, "m and v must have ", n,
                    " values each, got ", m.shape(0), " and ", v.shape(0));
        for (py::ssize_t i = 0; i < n; ++i)
          FSR_REQUIRE(std::isfinite(m.data()[i]) && std::isfinite(v.data()[i]) && v.data()[i] >= 0,
                      "optimizer state entry ", i, " is not finite (or v < 0)");
        s.set_optimizer_state(std::vector<float>(m.data(), m.data() + n),
                              std::vector<float>(v.data(), v.data() + n), step);
      }, py::arg("m"), py::arg("v"), py::arg("step"))
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
      .def("target_counts", [](const Model& s, py::object items, py::object offsets) {
        auto it = arr<int32_t>(items, "items", 1);
        auto off = arr<int64_t>(offsets, "offsets", 1);
        check_sequences(it, off, s.config().n_items, "sequences");
        const auto c = s.target_counts(it.data(), off.data(), off.shape(0) - 1);
        return to_numpy(c, {(py::ssize_t)c.size()});
      }, py::arg("items"), py::arg("offsets"))
      .def("set_target_counts", [](Model& s, py::object counts) {
        auto c = arr<int64_t>(counts, "counts", 1);
        s.set_target_counts(std::vector<int64_t>(c.data(), c.data() + c.size()));
      }, py::arg("counts"))
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
      .def("recommend_resident", [](Model& s, py::object items_, py::object excl_, int k,
                                    py::object out_ids_, py::object out_scores_) {
        // Sessions and outputs in the model's memory: numpy arrays for a model on the CPU,
        // arrays with __cuda_array_interface__ (CuPy, PyTorch, Numba) on the model's GPU
        // for a model there.  Every array's type, shape, layout and memory are checked
        // here, and the engine checks the ids (1..V) where they are before using them.
        const bool device = s.device_index() >= 0;
        Resident items = resident<int32_t>(s, items_, "items", device, false);
        const int64_t B = items.shape[0];
        const int64_t L = items.shape[1];
        Resident excl;
        if (!excl_.is_none()) {
          excl = resident<int32_t>(s, excl_, "excl", device, false);
          FSR_REQUIRE(excl.shape[0] == B && excl.shape[1] >= 1, "excl must have shape (", B,
                      ", >= 1), got (", excl.shape[0], ", ", excl.shape[1], ")");
        }
        Resident ids = resident<int32_t>(s, out_ids_, "out_ids", device, true);
        Resident sc = resident<float>(s, out_scores_, "out_scores", device, true);
        FSR_REQUIRE(ids.shape[0] == B && ids.shape[1] == k && sc.shape[0] == B && sc.shape[1] == k,
                    "out_ids and out_scores must have shape (", B, ", ", k, ")");
        FSR_REQUIRE(L <= INT32_MAX && excl.shape[1] <= INT32_MAX, "sessions are too long");
        py::gil_scoped_release nogil;
        s.recommend_resident(static_cast<const int32_t*>(items.ptr), B, (int)L,
                             static_cast<const int32_t*>(excl.ptr), (int)excl.shape[1], k,
                             static_cast<int32_t*>(ids.ptr), static_cast<float*>(sc.ptr));
      }, py::arg("items"), py::arg("excl"), py::arg("k"), py::arg("out_ids"), py::arg("out_scores"))
      .def_property("scoring", &Model::scoring, &Model::set_scoring,
                    "How top-k scores: 'auto', 'fp32' (every item's exact score) or 'int8' "
                    "(an int8 screen with proven bounds, then fp32 re-scoring of the "
                    "candidates); the same ids and scores every way.")
      .def("item_embeddings", [](const Model& s) {
        return to_numpy(s.item_embeddings(), {(py::ssize_t)s.config().n_items, (py::ssize_t)s.config().factors});
      });

#ifdef FSR_TEST_OPS
  bind_ops(m);
#endif
  m.attr("test_ops") = py::bool_(
#ifdef FSR_TEST_OPS
      true
#else
      false
#endif
  );
}
