// The parts of fastsasrec._core, each bound by its own file and called by module.cpp.
#pragma once

#include <pybind11/pybind11.h>

namespace fsr::bind {

void bind_model(pybind11::module_& m);  // model.cpp: _core.Model
void bind_ops(pybind11::module_& m);    // test_ops.cpp: _core.Ops (test builds only)

}  // namespace fsr::bind
