// Host-side argument checks of the fused sampler step, shared by the CPU and CUDA launchers.
#pragma once

#include <ATen/ATen.h>

#include "common/host.h"
#include "sampler_step/sampler_step.h"

namespace cosmos::sampler_step {

inline void check_latent(const at::Tensor& t, const char* name, const at::Tensor& like, bool same_dtype) {
  TORCH_CHECK(t.dim() == 4, "sampler_step: ", name, " must be a (B, C, T, S) latent, got ", t.dim(), " dims");
  TORCH_CHECK(t.sizes() == like.sizes(), "sampler_step: ", name, " has sizes ", t.sizes(), ", expected ",
              like.sizes());
  TORCH_CHECK(!same_dtype || t.scalar_type() == like.scalar_type(), "sampler_step: ", name, " has dtype ",
              t.scalar_type(), ", expected ", like.scalar_type());
  TORCH_CHECK(t.device() == like.device(), "sampler_step: ", name, " is on ", t.device(), ", expected ",
              like.device());
  TORCH_CHECK(t.size(3) <= 1 || t.stride(3) == 1, "sampler_step: ", name, " must be contiguous in its last dim");
}

inline void check_step_args(const at::Tensor& v, const at::Tensor& x, const at::Tensor& x0_prev,
                            const at::Tensor& x0_prev2, const at::Tensor& cond_latent, const at::Tensor& cond_mask,
                            const at::Tensor& coeffs, const at::Tensor& step) {
  check_latent(x, "x", x, true);
  check_latent(v, "v", x, false);
  check_latent(x0_prev, "x0_prev", x, true);
  check_latent(x0_prev2, "x0_prev2", x, true);
  check_latent(cond_latent, "cond_latent", x, true);
  TORCH_CHECK(cond_mask.dim() == 2 && cond_mask.size(0) == x.size(0) && cond_mask.size(1) == x.size(2) &&
                  cond_mask.is_contiguous() && cond_mask.scalar_type() == at::kFloat &&
                  cond_mask.device() == x.device(),
              "sampler_step: cond_mask must be a contiguous (B, T) float32 tensor on x's device, got ",
              cond_mask.sizes(), " ", cond_mask.scalar_type());
  TORCH_CHECK(coeffs.dim() == 2 && coeffs.size(0) >= 1 && coeffs.size(1) == kNumColumns && coeffs.is_contiguous() &&
                  coeffs.scalar_type() == at::kDouble && coeffs.device() == x.device(),
              "sampler_step: coeffs must be a contiguous (K, 8) float64 table on x's device, got ", coeffs.sizes(),
              " ", coeffs.scalar_type());
  TORCH_CHECK(step.numel() == 1 && step.scalar_type() == at::kLong && step.device() == x.device(),
              "sampler_step: step must be a one-element int64 tensor on x's device");
}

}  // namespace cosmos::sampler_step
