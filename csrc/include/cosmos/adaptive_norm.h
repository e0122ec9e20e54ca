// Per-element math of the adaptive-norm family (LayerNorm + modulation, gated residual, RMSNorm).
#pragma once

#include "cosmos/common.h"

namespace cosmos::adaptive_norm {

COSMOS_HD float inv_std(float variance, float eps) {
#if defined(__CUDA_ARCH__)
  return rsqrtf(variance + eps);
#else
  return 1.f / __builtin_sqrtf(variance + eps);
#endif
}

// LayerNorm (no affine) followed by adaLN modulation: (x - mean) * rstd * (1 + scale) + shift.
COSMOS_HD float modulate(float x, float mean, float rstd, float shift, float scale) {
  return (x - mean) * rstd * (1.f + scale) + shift;
}

// The gated residual of a DiT block: residual + gate * branch.
COSMOS_HD float gated_residual(float residual, float gate, float branch) {
  return residual + gate * branch;
}

COSMOS_HD float rms_scale(float sum_squares, int64_t d, float eps) {
  return inv_std(sum_squares / static_cast<float>(d), eps);
}

}  // namespace cosmos::adaptive_norm
