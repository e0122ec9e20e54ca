// The one output allocator of the C++ ops: NaN-filled when tests ask for it (see cosmos_kernels/_alloc.py).
#pragma once

#include <ATen/ATen.h>

#include <atomic>
#include <limits>

namespace cosmos {

// One flag per shared library (_C and _C_cuda each register a setter op).
inline std::atomic<bool>& nan_fill_flag() {
  static std::atomic<bool> flag{false};
  return flag;
}

inline bool nan_fill_outputs() { return nan_fill_flag().load(std::memory_order_relaxed); }

inline at::Tensor allocate_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (nan_fill_outputs() && at::isFloatingType(options.dtype().toScalarType())) {
    return at::full(sizes, std::numeric_limits<float>::quiet_NaN(), options);
  }
  return at::empty(sizes, options);
}

}  // namespace cosmos
