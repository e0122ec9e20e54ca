// Host-side helpers shared by the CPU and CUDA launchers: row-grid checks and dtype dispatch.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "common/common.h"

// The kernels' dtypes: float32, bfloat16, float16 (float64 runs on the reference backend).
#define COSMOS_DISPATCH_FLOATING(TYPE, NAME, ...)                  \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                   \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)     \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__))

namespace cosmos {

// Check that `t` is a (N0, N1, N2, D) row grid like `like`: same sizes, dtype and device, and a
// contiguous last dimension (the Python side builds these views; see cosmos_kernels/_layout.py).
inline void check_row_grid(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.dim() == 4, name, " must be a 4-d row grid, got ", t.dim(), " dims");
  TORCH_CHECK(t.sizes() == like.sizes(), name, " has sizes ", t.sizes(), ", expected ", like.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " has dtype ", t.scalar_type(), ", expected ",
              like.scalar_type());
  TORCH_CHECK(t.device() == like.device(), name, " is on ", t.device(), ", expected ", like.device());
  TORCH_CHECK(t.size(3) <= 1 || t.stride(3) == 1, name, " must be contiguous in its last dimension");
}

inline RowStrides row_strides(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

inline RowGrid row_grid(const at::Tensor& t) { return {t.size(1), t.size(2)}; }

}  // namespace cosmos
