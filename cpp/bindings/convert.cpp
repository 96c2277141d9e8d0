#include "convert.h"

#include <pybind11/stl.h>

#include <cmath>
#include <string_view>
#include <type_traits>

namespace fsr::bind {

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
                                 type_name(o)));
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

namespace {

// A value of a config field, or ValueError naming the field and the value.
template <typename T>
const char* expected() {
  if constexpr (std::is_same_v<T, bool>) return "True or False";
  else if constexpr (std::is_same_v<T, uint64_t>) return "an integer in 0..2**64-1";
  else if constexpr (std::is_integral_v<T>) return "a 32-bit integer";
  else if constexpr (std::is_floating_point_v<T>) return "a number";
  else return "a string";
}

std::string shown(py::handle v) {
  std::string r = py::repr(v);
  return r.size() > 80 ? r.substr(0, 77) + "..." : r;
}

template <typename T>
T config_value(py::handle v, const char* name) {
  if constexpr (std::is_enum_v<T>) {
    if (!py::isinstance<py::str>(v))
      throw ValueError(detail::cat(name, " must be ", expected<T>(), ", got ", shown(v)));
    return parse_name<T>(name, v.cast<std::string>());
  } else {
    try {
      return v.cast<T>();
    } catch (const py::cast_error&) {
      throw ValueError(detail::cat(name, " must be ", expected<T>(), ", got ", shown(v)));
    }
  }
}

template <typename T>
const char* schema_type() {
  if constexpr (std::is_enum_v<T>) return "str";
  else if constexpr (std::is_same_v<T, bool>) return "bool";
  else if constexpr (std::is_same_v<T, uint64_t>) return "uint64";
  else if constexpr (std::is_integral_v<T>) return "int";
  else return "float";
}

// A field's entry of config_schema().  default_value: config.def's literal (a float
// field's as written, not its float rounding).
template <typename T, typename D>
py::dict schema_entry(const char* name, D default_value, const Range& range, const char* doc) {
  py::dict e;
  e["name"] = name;
  e["type"] = schema_type<T>();
  if constexpr (std::is_enum_v<T>) e["default"] = name_of(static_cast<T>(default_value));
  else e["default"] = py::cast(default_value);
  constexpr bool integral = std::is_integral_v<T>;
  auto bound = [&](double x) -> py::object {
    return integral ? py::object(py::int_((long long)x)) : py::object(py::float_(x));
  };
  const bool has_min = range.kind != Range::Any;
  const bool has_max = range.kind == Range::Closed || range.kind == Range::HalfOpen;
  e["min"] = has_min ? bound(range.lo) : py::none();
  e["max"] = has_max ? bound(range.hi) : py::none();
  e["range"] = has_min ? py::object(py::str(range.text(integral))) : py::none();
  if constexpr (std::is_enum_v<T>) e["choices"] = py::cast(names<T>());
  else e["choices"] = py::none();
  e["doc"] = doc;
  return e;
}

}  // namespace

Config parse_config(const py::dict& d, int* threads) {
  Config c;
  for (auto kv : d) {
    const std::string k = py::str(kv.first);
    const py::handle v = kv.second;
    if (k == "num_threads" && threads) {
      *threads = config_value<int>(v, "num_threads");
      continue;
    }
#define FSR_CONFIG(type, name, default_value, range, doc) \
    if (k == #name) {                                     \
      c.name = config_value<type>(v, #name);              \
      continue;                                           \
    }
#include "fastsasrec/config.def"
#undef FSR_CONFIG
    throw ValueError("unknown config key '" + k + "'");
  }
  return c;
}

Config config_from_dict(const py::dict& d) {
  Config c = parse_config(d);
  c.validate();
  return c;
}

py::list config_schema() {
  py::list out;
#define FSR_CONFIG(type, name, default_value, range, doc) \
  out.append(schema_entry<type>(#name, default_value, range, doc));
#include "fastsasrec/config.def"
#undef FSR_CONFIG
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
              name_of(c.loss), "', got ", b.negatives.size());
  for (size_t j = 0; j < b.negatives.size(); ++j)
    FSR_REQUIRE(b.negatives[j] >= 1 && b.negatives[j] <= c.n_items, "negatives[", j, "] = ",
                b.negatives[j], " outside 1..", c.n_items);
  return b;
}

py::object flatten_int_lists(py::handle obj) {
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
}

template Resident resident<int32_t>(const Model&, const py::object&, const char*, bool, bool);
template Resident resident<float>(const Model&, const py::object&, const char*, bool, bool);

}  // namespace fsr::bind
