// Per-element math of the attention family's QK RMSNorm + rotate-half RoPE, shared by the CPU and CUDA
// kernels. Templated on the value type so the CPU kernel runs it on at::vec::Vectorized<float> lanes and
// the CUDA kernel on floats: one definition of the arithmetic.
#pragma once

#include "common/common.h"

namespace cosmos::rope {

// 1 / sqrt(mean(x^2) + eps) of a head of `d` elements whose squares sum to `sum_squares`.
using cosmos::rms_scale;

// The normalised element: x * inv_rms * weight.
template <typename V>
COSMOS_HD V rms_apply(V x, V inv_rms, V weight) {
  return x * inv_rms * weight;
}

// Rotate-half RoPE of the pair (x1 = x[i], x2 = x[i + d/2]):
//   out[i]       = x1 * cos[i]       - x2 * sin[i]
//   out[i + d/2] = x2 * cos[i + d/2] + x1 * sin[i + d/2]
template <typename V>
COSMOS_HD void rotate_pair(V x1, V x2, V cos1, V sin1, V cos2, V sin2, V& out1, V& out2) {
  out1 = x1 * cos1 - x2 * sin1;
  out2 = x2 * cos2 + x1 * sin2;
}

// Rows of one (B, L, H, D) tensor: row r = ((b * L) + l) * H + h, read through its own strides.
struct HeadRows {
  int64_t L, H;
  int64_t sb, sl, sh;
  COSMOS_HD int64_t position(int64_t row) const { return (row / H) % L; }
  COSMOS_HD int64_t offset(int64_t row) const {
    const int64_t h = row % H;
    const int64_t t = row / H;
    return (t / L) * sb + (t % L) * sl + h * sh;
  }
};

}  // namespace cosmos::rope
