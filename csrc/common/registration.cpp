// The cosmos_kernels op library: the namespace, the test hook for NaN-filled outputs, and the Python
// module entry point of cosmos_kernels._C. Each op family declares its schemas in its own
// TORCH_LIBRARY_FRAGMENT (csrc/<family>/<family>_cpu.cpp), so families stay independent.
#include <Python.h>
#include <torch/library.h>

#include "common/alloc.h"

namespace {
void set_nan_fill(bool enabled) { cosmos::nan_fill_flag().store(enabled); }
}  // namespace

TORCH_LIBRARY(cosmos_kernels, m) {
  m.def("_set_nan_fill(bool enabled) -> ()", &set_nan_fill);
}

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "cosmos_kernels op library (schemas, CPU kernels)", -1,
                               nullptr};
  return PyModule_Create(&module);
}
