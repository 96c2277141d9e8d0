// fastsasrec._core: the pybind11 boundary.  Arguments are checked here (dtype, shape,
// ranges) with messages that name them; C++ exceptions become ValueError (bad argument),
// MemoryError (allocation) or RuntimeError.  Long calls release the GIL.
//   convert.h/.cpp   array checks and conversions, the config from a dict and its schema
//   model.cpp        _core.Model
//   test_ops.cpp     _core.Ops, the raw ops (test builds only: FASTSASREC_TEST_OPS=ON)
//   module.cpp       the module: its functions, and the parts above
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "bind.h"
#include "convert.h"
#include "cpu/op_profile.h"
#include "cpu/ops.h"
#include "fastsasrec/backend.h"
#include "fastsasrec/config.h"
#include "fastsasrec/model.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;
using namespace fsr;
using namespace fsr::bind;

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastsasrec engine (C++)";
  py::register_exception<fsr::MemoryError>(m, "EngineMemoryError", PyExc_MemoryError);

  // The common shape of recommend_batch's input, read without a Python loop: a list of
  // lists of Python ints -> (flat int64, offsets int64).  None for anything else (tuples,
  // arrays, strings, bools, floats, ints beyond int64), which the Python path handles and
  // names precisely.
  m.def("flatten_int_lists", &flatten_int_lists);
  m.def("check_config", [](const py::dict& d) {
    int threads = 0;
    const Config c = parse_config(d, &threads);
    FSR_REQUIRE(threads >= 0, "num_threads must be >= 0, got ", threads);
    c.validate(d.contains("n_items"));
  }, py::arg("params"),
     "Raises ValueError naming the first hyper-parameter out of its range (the engine's "
     "config fields, plus num_threads; without n_items the catalogue checks are skipped).");
  m.def("config_schema", &config_schema,
     "The engine's config fields (config.def), in order: a list of dicts with name, type "
     "('int', 'float', 'bool', 'uint64' or 'str'), default, min and max (None: unbounded), "
     "range (the text of the range messages, None when every value of the type is valid), "
     "choices (a 'str' field's names, else None) and doc.");
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
    // the CPU's bf16 products: the AVX-512 BF16 kernel, or bf16 operands through sgemm
    d["bf16_gemm"] = cpu::gemm_bf16_native() ? "avx512bf16" : "sgemm";
    // the CPU's fp32 products (linear layers, attention, the softmax losses): gemm_rows's
    // AVX-512 kernels, its AVX2 kernels, or sgemm
    d["fp32_kernels"] = cpu::avx512_kernels() ? "avx512" : cpu::rows_kernels() ? "avx2" : "sgemm";
#ifndef FSR_CUDA_LINE
#define FSR_CUDA_LINE "not compiled"
#endif
    d["cuda"] = FSR_CUDA_LINE;
    d["cuda_compiled"] = std::string(FSR_CUDA_LINE).rfind("compiled", 0) == 0;
    d["compiler"] = __VERSION__;
    return d;
  });

  m.def("op_profile_start", [] { cpu::op_profile_enable(true); },
     "Zeroes the CPU backend's op profile and starts it: every op call of every CPU model is "
     "timed, and its matrix products' floating-point operations counted, until "
     "op_profile_stop (process-wide: profile one training at a time).");
  m.def("op_profile_stop", [] {
    cpu::op_profile_enable(false);
    py::list out;
    for (const auto& s : cpu::op_profile_read()) {
      py::dict d;
      d["op"] = s.name;
      d["calls"] = s.calls;
      d["seconds"] = s.seconds;
      d["flops"] = s.flops;
      out.append(d);
    }
    return out;
  }, "Stops the op profile; returns [{op, calls, seconds, flops}] for each op called since "
     "op_profile_start, in ops.def's order (flops: 2 M N K summed over the op's matrix "
     "products).");

  bind_model(m);
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
