// CPU kernel of the fused sampler step, and its op schema.
// Rows are the (b, c, t) lines of S = H * W elements of a (B, C, T, S) latent; a row is either wholly
// conditional (a clean frame) or not, so the inner loop has no per-element branch and vectorises.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "cosmos/alloc.h"
#include "cosmos/host.h"
#include "cosmos/sampler_step.h"
#include "cosmos/sampler_step_host.h"

namespace cosmos::sampler_step {
namespace {

template <typename ST, typename NT, bool COND>
void step_row(const NT* __restrict__ v, const ST* __restrict__ x, const ST* __restrict__ p1,
              const ST* __restrict__ p2, const ST* __restrict__ clean, ST* __restrict__ x0_out,
              ST* __restrict__ xn_out, NT* __restrict__ net_out, int64_t s, const Coeffs& c) {
  for (int64_t i = 0; i < s; ++i) {
    const float xi = static_cast<float>(x[i]);
    const float ci = static_cast<float>(clean[i]);
    const float vi = COND ? 0.f : static_cast<float>(v[i]);
    const float x0 = x0_from_output(xi, vi, ci, COND, c);
    const float h1 = c.b1 != 0.f ? static_cast<float>(p1[i]) : 0.f;
    const float h2 = c.b2 != 0.f ? static_cast<float>(p2[i]) : 0.f;
    const float xn = multistep_update(xi, x0, h1, h2, c);
    x0_out[i] = static_cast<ST>(x0);
    xn_out[i] = static_cast<ST>(xn);
    net_out[i] = static_cast<NT>(next_network_input(xn, ci, COND, c));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sampler_step_cpu(
    const at::Tensor& v, const at::Tensor& x, const at::Tensor& x0_prev, const at::Tensor& x0_prev2,
    const at::Tensor& cond_latent, const at::Tensor& cond_mask, const at::Tensor& coeffs, const at::Tensor& step) {
  check_step_args(v, x, x0_prev, x0_prev2, cond_latent, cond_mask, coeffs, step);
  const auto state_opts = x.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor x0 = allocate_output(x.sizes(), state_opts);
  at::Tensor x_next = allocate_output(x.sizes(), state_opts);
  at::Tensor net_in = allocate_output(x.sizes(), v.options().memory_format(at::MemoryFormat::Contiguous));
  if (x.numel() == 0) return {x0, x_next, net_in};
  const Coeffs c = load_coeffs(coeffs.const_data_ptr<double>(), coeffs.size(0), step.const_data_ptr<int64_t>()[0]);
  const float* mask = cond_mask.const_data_ptr<float>();
  const RowGrid g = row_grid(x);
  const int64_t s = x.size(3), t_len = x.size(2), rows = x.numel() / s;
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / s);
  COSMOS_DISPATCH_FLOATING(x.scalar_type(), "sampler_step_cpu", [&] {
    using ST = scalar_t;
    COSMOS_DISPATCH_FLOATING(v.scalar_type(), "sampler_step_cpu", [&] {
      using NT = scalar_t;
      const RowStrides vs = row_strides(v), xs = row_strides(x), p1s = row_strides(x0_prev),
                       p2s = row_strides(x0_prev2), cs = row_strides(cond_latent);
      at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const int64_t frame = r % t_len, batch = r / (t_len * g.n1);
          const bool cond = mask[batch * t_len + frame] != 0.f;
          auto* row_step = cond ? &step_row<ST, NT, true> : &step_row<ST, NT, false>;
          row_step(v.const_data_ptr<NT>() + vs.offset(g, r), x.const_data_ptr<ST>() + xs.offset(g, r),
                   x0_prev.const_data_ptr<ST>() + p1s.offset(g, r), x0_prev2.const_data_ptr<ST>() + p2s.offset(g, r),
                   cond_latent.const_data_ptr<ST>() + cs.offset(g, r), x0.mutable_data_ptr<ST>() + r * s,
                   x_next.mutable_data_ptr<ST>() + r * s, net_in.mutable_data_ptr<NT>() + r * s, s, c);
        }
      });
    });
  });
  return {x0, x_next, net_in};
}

}  // namespace
}  // namespace cosmos::sampler_step

// Latents are (B, C, T, S) views with a contiguous last dim (S = H * W); v and net_in share the network's
// dtype, x / x0_prev / x0_prev2 / cond_latent / x0 / x_next the state's. cond_mask is (B, T) float32,
// coeffs a (K, 8) float64 table, step a one-element int64 tensor on the same device.
TORCH_LIBRARY_FRAGMENT(cosmos_kernels, m) {
  m.def(
      "sampler_step(Tensor v, Tensor x, Tensor x0_prev, Tensor x0_prev2, Tensor cond_latent, Tensor cond_mask, "
      "Tensor coeffs, Tensor step) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(cosmos_kernels, CPU, m) { m.impl("sampler_step", &cosmos::sampler_step::sampler_step_cpu); }
