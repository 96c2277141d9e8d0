// The bindings' conversions between Python and the engine, each checking what it is given
// with a message that names the argument: arrays (dtype, rank, layout; on the host or, for
// a model on a GPU, in its memory), flat sequences against the catalogue, the config from
// a dict and its schema (config.def), training batches to and from dicts.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "fastsasrec/common.h"
#include "fastsasrec/config.h"
#include "fastsasrec/model.h"

namespace fsr::bind {

namespace py = pybind11;

template <typename T>
const char* dtype_name();
template <> inline const char* dtype_name<float>() { return "float32"; }
template <> inline const char* dtype_name<int32_t>() { return "int32"; }
template <> inline const char* dtype_name<int64_t>() { return "int64"; }

inline std::string type_name(py::handle o) {
  return py::str(py::type::handle_of(o).attr("__name__"));
}

// A C-contiguous array of exactly dtype T and the given rank (-1: any), else ValueError.
template <typename T>
py::array_t<T, py::array::c_style> arr(const py::object& o, const char* name, int ndim = -1) {
  if (!py::isinstance<py::array>(o))
    throw ValueError(detail::cat(name, " must be a numpy array of ", dtype_name<T>(), ", got ",
                                 type_name(o)));
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
  py::object keep;  // the array (alive while the pointer is used)
};
// T: int32_t or float.  device: the model is on a GPU; output: the array is written.
template <typename T>
Resident resident(const Model& m, const py::object& o, const char* name, bool device,
                  bool output);

// Validates flat item ids + offsets describing n sequences (ids in 1..V).
void check_sequences(const py::array_t<int32_t, py::array::c_style>& items,
                     const py::array_t<int64_t, py::array::c_style>& offsets, int V,
                     const char* what);

// The engine's config from a dict of its fields (config.def's names; an unknown key or a
// value of the wrong type is a ValueError naming it); with threads given, also the key
// "num_threads".  Not validated here.
Config parse_config(const py::dict& d, int* threads = nullptr);
// The same, validated (with the catalogue).
Config config_from_dict(const py::dict& d);
// config.def as a list of dicts: name, type ("int", "float", "bool", "uint64", "str"),
// default, min, max (None when unbounded), range (the text of the messages: ">= 1",
// "in [0, 1)"; None when any value of the type is valid), choices (the names of an enum
// field's values, else None) and doc.
py::list config_schema();

template <typename T>
py::array_t<T> to_numpy(const std::vector<T>& v, std::vector<py::ssize_t> shape) {
  py::array_t<T> out(shape);
  std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(T));
  return out;
}

py::dict batch_to_dict(const HostBatch& b);
// A training batch from its arrays, every size and id checked against the config.
HostBatch batch_from_arrays(py::object items, py::object targets, py::object pos, py::object cu,
                            py::object negatives, const Config& c);

// A list of lists of Python ints -> (flat int64, offsets int64), without a Python loop;
// None for anything else (tuples, arrays, strings, bools, floats, ints beyond int64).
py::object flatten_int_lists(py::handle obj);

}  // namespace fsr::bind
