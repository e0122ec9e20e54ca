// Python module entry point of cosmos_kernels._C_cuda, and its copy of the NaN-fill test hook
// (each shared library has its own allocator flag).
#include <Python.h>
#include <torch/library.h>

#include "common/alloc.h"

namespace {
void set_nan_fill(bool enabled) { cosmos::nan_fill_flag().store(enabled); }
}  // namespace

TORCH_LIBRARY_FRAGMENT(cosmos_kernels, m) { m.def("_set_nan_fill_cuda(bool enabled) -> ()", &set_nan_fill); }

extern "C" PyObject* PyInit__C_cuda(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C_cuda", "cosmos_kernels CUDA kernels", -1, nullptr};
  return PyModule_Create(&module);
}
