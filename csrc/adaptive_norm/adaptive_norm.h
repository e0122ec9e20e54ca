// Per-element math of the adaptive-norm family (LayerNorm + modulation, gated residual, RMSNorm).
#pragma once

#include "common/common.h"

namespace cosmos::adaptive_norm {

using cosmos::inv_std;
using cosmos::rms_scale;

// LayerNorm (no affine) followed by adaLN modulation: (x - mean) * rstd * (1 + scale) + shift.
COSMOS_HD float modulate(float x, float mean, float rstd, float shift, float scale) {
  return (x - mean) * rstd * (1.f + scale) + shift;
}

// The gated residual of a DiT block: residual + gate * branch.
COSMOS_HD float gated_residual(float residual, float gate, float branch) {
  return residual + gate * branch;
}

}  // namespace cosmos::adaptive_norm
