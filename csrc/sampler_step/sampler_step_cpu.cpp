// CPU kernel of the fused sampler step, and its op schema.
// Rows are the (b, c, t) lines of S = H * W elements of a (B, C, T, S) latent; a row is either wholly
// conditional (a clean frame) or not, so the inner loop has no per-element branch and vectorises.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common/alloc.h"
#include "common/host.h"
#include "sampler_step/sampler_step.h"
#include "sampler_step/sampler_step_host.h"

namespace cosmos::sampler_step {
namespace {

// Row buffers of one worker thread: reduced-precision operands are converted to fp32 here (vectorised),
// fp32 operands and outputs are used in place.
struct RowBuffers {
  explicit RowBuffers(int64_t s) : v(s), x(s), clean(s), p1(s), p2(s), x0(s), xn(s), net(s) {}
  std::vector<float> v, x, clean, p1, p2, x0, xn, net;
};

template <typename T>
const float* as_float(const T* src, int64_t s, std::vector<float>& buf) {
  if constexpr (std::is_same_v<T, float>) {
    return src;
  } else {
    at::vec::convert(src, buf.data(), s);
    return buf.data();
  }
}

template <typename T>
float* out_row(T* out, std::vector<float>& buf) {
  if constexpr (std::is_same_v<T, float>) {
    return out;
  } else {
    return buf.data();
  }
}

template <typename T>
void finish_row(const float* src, T* out, int64_t s) {
  if constexpr (!std::is_same_v<T, float>) at::vec::convert(src, out, s);
}

// The element loop on fp32 rows; `h1` / `h2` are null when their coefficient is zero (never read).
template <bool COND>
void step_row(const float* __restrict__ v, const float* __restrict__ x, const float* __restrict__ h1,
              const float* __restrict__ h2, const float* __restrict__ clean, float* __restrict__ x0_out,
              float* __restrict__ xn_out, float* __restrict__ net_out, int64_t s, const Coeffs& c) {
  for (int64_t i = 0; i < s; ++i) {
    const float x0 = x0_from_output(x[i], COND ? 0.f : v[i], clean[i], COND, c);
    const float xn = multistep_update(x[i], x0, h1 ? h1[i] : 0.f, h2 ? h2[i] : 0.f, c);
    x0_out[i] = x0;
    xn_out[i] = xn;
    net_out[i] = next_network_input(xn, clean[i], COND, c);
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
        RowBuffers buf(s);
        for (int64_t r = begin; r < end; ++r) {
          const int64_t frame = r % t_len, batch = r / (t_len * g.n1);
          const bool cond = mask[batch * t_len + frame] != 0.f;
          const float* xr = as_float(x.const_data_ptr<ST>() + xs.offset(g, r), s, buf.x);
          const float* cr = as_float(cond_latent.const_data_ptr<ST>() + cs.offset(g, r), s, buf.clean);
          const float* vr = cond ? nullptr : as_float(v.const_data_ptr<NT>() + vs.offset(g, r), s, buf.v);
          const float* h1 = c.b1 != 0.f ? as_float(x0_prev.const_data_ptr<ST>() + p1s.offset(g, r), s, buf.p1)
                                        : nullptr;
          const float* h2 = c.b2 != 0.f ? as_float(x0_prev2.const_data_ptr<ST>() + p2s.offset(g, r), s, buf.p2)
                                        : nullptr;
          ST* x0_dst = x0.mutable_data_ptr<ST>() + r * s;
          ST* xn_dst = x_next.mutable_data_ptr<ST>() + r * s;
          NT* net_dst = net_in.mutable_data_ptr<NT>() + r * s;
          float* x0r = out_row(x0_dst, buf.x0);
          float* xnr = out_row(xn_dst, buf.xn);
          float* netr = out_row(net_dst, buf.net);
          if (cond) {
            step_row<true>(vr, xr, h1, h2, cr, x0r, xnr, netr, s, c);
          } else {
            step_row<false>(vr, xr, h1, h2, cr, x0r, xnr, netr, s, c);
          }
          finish_row(x0r, x0_dst, s);
          finish_row(xnr, xn_dst, s);
          finish_row(netr, net_dst, s);
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
