// Per-element math of the fused sampler step, shared by the CPU and CUDA kernels.
//
// Between two network passes of a multistep sampler (see cosmos_kernels/sampling/step/reference.py):
//   x0     = cond ? clean : c_skip * x + c_out * v          (preconditioning of the network output v)
//   x_next = a * x + b0 * x0 + b1 * x0_prev + b2 * x0_prev2  (multistep update)
//   net_in = cond ? clean : c_in_next * x_next               (the next network input)
// The coefficients of a step are one row of a float64 table, read on the device at a step index held
// in device memory, so a whole sampling loop runs without a host round trip.
#pragma once

#include <cstdint>

#include "common/common.h"

namespace cosmos::sampler_step {

// Columns of a coefficient-table row.
enum Column : int { kCSkip = 0, kCOut, kA, kB0, kB1, kB2, kCInNext, kNumColumns = 8 };

struct Coeffs {
  float c_skip, c_out, a, b0, b1, b2, c_in_next;
};

// Out-of-range step indices are clamped: the kernel cannot raise without a host sync.
COSMOS_HD int64_t clamp_step(int64_t step, int64_t num_rows) {
  return step < 0 ? 0 : (step >= num_rows ? num_rows - 1 : step);
}

COSMOS_HD Coeffs load_coeffs(const double* table, int64_t num_rows, int64_t step) {
  const double* row = table + clamp_step(step, num_rows) * kNumColumns;
  return {static_cast<float>(row[kCSkip]), static_cast<float>(row[kCOut]), static_cast<float>(row[kA]),
          static_cast<float>(row[kB0]),    static_cast<float>(row[kB1]),  static_cast<float>(row[kB2]),
          static_cast<float>(row[kCInNext])};
}

COSMOS_HD float x0_from_output(float x, float v, float clean, bool is_cond, const Coeffs& c) {
  return is_cond ? clean : c.c_skip * x + c.c_out * v;
}

// A history term whose coefficient is zero contributes nothing, even where the history is not finite
// (the first steps of a multistep solver have no history yet).
COSMOS_HD float multistep_update(float x, float x0, float x0_prev, float x0_prev2, const Coeffs& c) {
  float out = c.a * x + c.b0 * x0;
  if (c.b1 != 0.f) out += c.b1 * x0_prev;
  if (c.b2 != 0.f) out += c.b2 * x0_prev2;
  return out;
}

COSMOS_HD float next_network_input(float x_next, float clean, bool is_cond, const Coeffs& c) {
  return is_cond ? clean : c.c_in_next * x_next;
}

}  // namespace cosmos::sampler_step
