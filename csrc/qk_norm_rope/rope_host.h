// Host-side checks of the qk_norm_rope op, shared by its CPU and CUDA launchers.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "qk_norm_rope/rope.h"

namespace cosmos::rope {

inline HeadRows head_rows(const at::Tensor& t) { return {t.size(1), t.size(2), t.stride(0), t.stride(1), t.stride(2)}; }

// q, k: (B, L, H, D) of one dtype with a contiguous last dim; weights (D,) and tables (Lq, D) in fp32.
// The Python entry point (cosmos_kernels/attention/ops.py) gives the user-facing errors; these guard the op.
inline void check_qk_norm_rope(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& q_weight,
                               const std::optional<at::Tensor>& k_weight, const std::optional<at::Tensor>& cos,
                               const std::optional<at::Tensor>& sin) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4, "qk_norm_rope: q and k must be (B, L, H, D), got ", q.sizes(), " and ",
              k.sizes());
  TORCH_CHECK(q.scalar_type() == k.scalar_type(), "qk_norm_rope: q and k must share a dtype");
  TORCH_CHECK(q.device() == k.device(), "qk_norm_rope: q and k must be on one device");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(2) == k.size(2) && q.size(3) == k.size(3),
              "qk_norm_rope: q and k differ in batch, heads or head_dim: ", q.sizes(), " vs ", k.sizes());
  const int64_t d = q.size(3);
  TORCH_CHECK(d % 2 == 0, "qk_norm_rope: head_dim must be even, got ", d);
  TORCH_CHECK(d <= 1 || (q.stride(3) == 1 && k.stride(3) == 1), "qk_norm_rope: the last dim must be contiguous");
  TORCH_CHECK(q_weight.has_value() == k_weight.has_value(), "qk_norm_rope: give both weights or neither");
  for (const auto* w : {&q_weight, &k_weight}) {
    if (!w->has_value()) continue;
    const at::Tensor& t = w->value();
    TORCH_CHECK(t.dim() == 1 && t.size(0) == d && t.scalar_type() == at::kFloat && t.is_contiguous() &&
                    t.device() == q.device(),
                "qk_norm_rope: weights must be contiguous fp32 (head_dim,) tensors on q's device, got ", t.sizes(),
                " ", t.scalar_type());
  }
  TORCH_CHECK(cos.has_value() == sin.has_value(), "qk_norm_rope: give both RoPE tables or neither");
  if (cos.has_value()) {
    TORCH_CHECK(q.size(1) == k.size(1), "qk_norm_rope: RoPE needs q and k of one length, got ", q.size(1), " and ",
                k.size(1));
    for (const auto* tab : {&cos, &sin}) {
      const at::Tensor& t = tab->value();
      TORCH_CHECK(t.dim() == 2 && t.size(0) == q.size(1) && t.size(1) == d && t.scalar_type() == at::kFloat &&
                      t.stride(1) == 1 && t.device() == q.device(),
                  "qk_norm_rope: RoPE tables must be fp32 (L, head_dim) with a contiguous last dim on q's device, "
                  "got ", t.sizes(), " ", t.scalar_type());
    }
    TORCH_CHECK(cos->stride(0) == sin->stride(0), "qk_norm_rope: cos and sin must share their row stride");
  }
}

}  // namespace cosmos::rope
