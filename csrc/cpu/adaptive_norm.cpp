// CPU kernels of the adaptive-norm family, and the family's op schemas.
// One row of D elements at a time: converted to fp32 once, statistics in two passes over the row (it
// sits in L1), then one fused modulation pass. Rows are split across threads with at::parallel_for.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <cstring>
#include <type_traits>
#include <vector>

#include "cosmos/adaptive_norm.h"
#include "cosmos/alloc.h"
#include "cosmos/host.h"

namespace cosmos::adaptive_norm {
namespace {

using Vec = at::vec::Vectorized<float>;

// Row buffers of one worker thread, kept across calls (float32 operands are read in place).
struct RowBuffers {
  std::vector<float> a, b, out;
  static RowBuffers& get(int64_t d) {
    static thread_local RowBuffers buffers;
    if (static_cast<int64_t>(buffers.a.size()) < d) {
      buffers.a.resize(d);
      buffers.b.resize(d);
      buffers.out.resize(d);
    }
    return buffers;
  }
};

template <typename T>
const float* as_float(const T* src, int64_t d, float* buf) {
  if constexpr (std::is_same_v<T, float>) {
    return src;
  } else {
    at::vec::convert(src, buf, d);
    return buf;
  }
}

// Reads a broadcast operand's row, skipping the conversion when the row is the one already converted
// (per-frame modulation repeats for every token of a frame).
template <typename T>
struct CachedRow {
  const T* base;
  RowStrides strides;
  std::vector<float> buf;
  int64_t cached = -1;
  const float* get(const RowGrid& g, int64_t row, int64_t d) {
    const int64_t off = strides.offset(g, row);
    if constexpr (std::is_same_v<T, float>) {
      return base + off;
    } else {
      if (off != cached) {
        buf.resize(d);
        at::vec::convert(base + off, buf.data(), d);
        cached = off;
      }
      return buf.data();
    }
  }
};

template <typename T>
float* out_row(T* out, int64_t off, float* buf) {
  if constexpr (std::is_same_v<T, float>) {
    return out + off;
  } else {
    return buf;
  }
}

template <typename T>
void finish_row(const float* src, T* out, int64_t off, int64_t d) {
  if constexpr (!std::is_same_v<T, float>) at::vec::convert(src, out + off, d);
}

// Sum of f(v) over a row with four independent accumulators (hides the add latency); the tail is a
// partial load whose unused lanes are masked out after f.
template <typename F>
inline float row_sum(const float* x, int64_t d, F f) {
  constexpr int64_t w = Vec::size();
  Vec a0(0.f), a1(0.f), a2(0.f), a3(0.f);
  int64_t i = 0;
  for (; i + 4 * w <= d; i += 4 * w) {
    a0 += f(Vec::loadu(x + i));
    a1 += f(Vec::loadu(x + i + w));
    a2 += f(Vec::loadu(x + i + 2 * w));
    a3 += f(Vec::loadu(x + i + 3 * w));
  }
  for (; i + w <= d; i += w) a0 += f(Vec::loadu(x + i));
  if (i < d) a1 += Vec::set(Vec(0.f), f(Vec::loadu(x + i, d - i)), d - i);
  return at::vec::vec_reduce_all<float>([](Vec a, Vec b) { return a + b; }, (a0 + a1) + (a2 + a3));
}

inline void mean_rstd(const float* x, int64_t d, float eps, float& mean, float& rstd) {
  mean = row_sum(x, d, [](Vec v) { return v; }) / static_cast<float>(d);
  const Vec vmean(mean);
  const float ss = row_sum(x, d, [vmean](Vec v) {
    const Vec c = v - vmean;
    return c * c;
  });
  rstd = inv_std(ss / static_cast<float>(d), eps);
}

inline void modulate_row(const float* x, const float* shift, const float* scale, float mean, float rstd,
                         int64_t d, float* out) {
  const Vec vmean(mean), vrstd(rstd), one(1.f);
  int64_t i = 0;
  for (; i + Vec::size() <= d; i += Vec::size()) {
    const Vec xhat = (Vec::loadu(x + i) - vmean) * vrstd;
    at::vec::fmadd(xhat, Vec::loadu(scale + i) + one, Vec::loadu(shift + i)).store(out + i);
  }
  for (; i < d; ++i) out[i] = modulate(x[i], mean, rstd, shift[i], scale[i]);
}

int64_t grain_rows(int64_t d) { return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(d, 1)); }

at::Tensor layer_norm_modulate_cpu(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale,
                                   double eps) {
  check_row_grid(shift, "shift", x);
  check_row_grid(scale, "scale", x);
  check_row_grid(x, "x", x);
  at::Tensor out = allocate_output(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t d = x.size(3), rows = x.numel() / std::max<int64_t>(d, 1);
  if (x.numel() == 0) return out;
  const RowGrid g = row_grid(x);
  COSMOS_DISPATCH_FLOATING(x.scalar_type(), "layer_norm_modulate_cpu", [&] {
    const auto* xp = x.const_data_ptr<scalar_t>();
    auto* op = out.mutable_data_ptr<scalar_t>();
    const RowStrides xs = row_strides(x);
    at::parallel_for(0, rows, grain_rows(d), [&](int64_t begin, int64_t end) {
      RowBuffers& buf = RowBuffers::get(d);
      CachedRow<scalar_t> sh{shift.const_data_ptr<scalar_t>(), row_strides(shift)};
      CachedRow<scalar_t> sc{scale.const_data_ptr<scalar_t>(), row_strides(scale)};
      for (int64_t r = begin; r < end; ++r) {
        const float* xr = as_float(xp + xs.offset(g, r), d, buf.a.data());
        float mean, rstd;
        mean_rstd(xr, d, static_cast<float>(eps), mean, rstd);
        float* o = out_row(op, r * d, buf.out.data());
        modulate_row(xr, sh.get(g, r, d), sc.get(g, r, d), mean, rstd, d, o);
        finish_row(o, op, r * d, d);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> gated_residual_layer_norm_modulate_cpu(
    const at::Tensor& residual, const at::Tensor& x, const at::Tensor& gate, const at::Tensor& shift,
    const at::Tensor& scale, double eps) {
  check_row_grid(residual, "residual", residual);
  check_row_grid(x, "x", residual);
  check_row_grid(gate, "gate", residual);
  check_row_grid(shift, "shift", residual);
  check_row_grid(scale, "scale", residual);
  const auto opts = residual.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor new_residual = allocate_output(residual.sizes(), opts);
  at::Tensor normed = allocate_output(residual.sizes(), opts);
  const int64_t d = residual.size(3), rows = residual.numel() / std::max<int64_t>(d, 1);
  if (residual.numel() == 0) return {new_residual, normed};
  const RowGrid g = row_grid(residual);
  COSMOS_DISPATCH_FLOATING(residual.scalar_type(), "gated_residual_layer_norm_modulate_cpu", [&] {
    const auto* rp = residual.const_data_ptr<scalar_t>();
    const auto* xp = x.const_data_ptr<scalar_t>();
    auto* nrp = new_residual.mutable_data_ptr<scalar_t>();
    auto* op = normed.mutable_data_ptr<scalar_t>();
    const RowStrides rs = row_strides(residual), xs = row_strides(x);
    at::parallel_for(0, rows, grain_rows(d), [&](int64_t begin, int64_t end) {
      RowBuffers& buf = RowBuffers::get(d);
      std::vector<float> sum_buf(std::is_same_v<scalar_t, float> ? 0 : d);
      CachedRow<scalar_t> gt{gate.const_data_ptr<scalar_t>(), row_strides(gate)};
      CachedRow<scalar_t> sh{shift.const_data_ptr<scalar_t>(), row_strides(shift)};
      CachedRow<scalar_t> sc{scale.const_data_ptr<scalar_t>(), row_strides(scale)};
      for (int64_t r = begin; r < end; ++r) {
        const float* res = as_float(rp + rs.offset(g, r), d, buf.a.data());
        const float* br = as_float(xp + xs.offset(g, r), d, buf.b.data());
        const float* gr = gt.get(g, r, d);
        float* sum = out_row(nrp, r * d, sum_buf.data());
        int64_t i = 0;
        for (; i + Vec::size() <= d; i += Vec::size()) {
          at::vec::fmadd(Vec::loadu(gr + i), Vec::loadu(br + i), Vec::loadu(res + i)).store(sum + i);
        }
        for (; i < d; ++i) sum[i] = gated_residual(res[i], gr[i], br[i]);
        if constexpr (!std::is_same_v<scalar_t, float>) {
          // Store the new residual, then normalise the rounded values the caller will see.
          at::vec::convert(sum, nrp + r * d, d);
          at::vec::convert(nrp + r * d, sum, d);
        }
        float mean, rstd;
        mean_rstd(sum, d, static_cast<float>(eps), mean, rstd);
        float* o = out_row(op, r * d, buf.out.data());
        modulate_row(sum, sh.get(g, r, d), sc.get(g, r, d), mean, rstd, d, o);
        finish_row(o, op, r * d, d);
      }
    });
  });
  return {new_residual, normed};
}

at::Tensor rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_row_grid(x, "x", x);
  check_row_grid(weight, "weight", x);
  at::Tensor out = allocate_output(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t d = x.size(3), rows = x.numel() / std::max<int64_t>(d, 1);
  if (x.numel() == 0) return out;
  const RowGrid g = row_grid(x);
  COSMOS_DISPATCH_FLOATING(x.scalar_type(), "rms_norm_cpu", [&] {
    const auto* xp = x.const_data_ptr<scalar_t>();
    auto* op = out.mutable_data_ptr<scalar_t>();
    const RowStrides xs = row_strides(x);
    at::parallel_for(0, rows, grain_rows(d), [&](int64_t begin, int64_t end) {
      RowBuffers& buf = RowBuffers::get(d);
      CachedRow<scalar_t> w{weight.const_data_ptr<scalar_t>(), row_strides(weight)};
      for (int64_t r = begin; r < end; ++r) {
        const float* xr = as_float(xp + xs.offset(g, r), d, buf.a.data());
        const float ss = row_sum(xr, d, [](Vec v) { return v * v; });
        const float inv = rms_scale(ss, d, static_cast<float>(eps));
        const float* wr = w.get(g, r, d);
        float* o = out_row(op, r * d, buf.out.data());
        const Vec vinv(inv);
        int64_t i = 0;
        for (; i + Vec::size() <= d; i += Vec::size()) {
          (Vec::loadu(xr + i) * vinv * Vec::loadu(wr + i)).store(o + i);
        }
        for (; i < d; ++i) o[i] = xr[i] * inv * wr[i];
        finish_row(o, op, r * d, d);
      }
    });
  });
  return out;
}

}  // namespace
}  // namespace cosmos::adaptive_norm

// Inputs are (N0, N1, N2, D) row grids of one dtype (broadcast dims have stride 0); see
// cosmos_kernels/adaptive_norm/ops.py for the public, broadcasting entry points.
TORCH_LIBRARY_FRAGMENT(cosmos_kernels, m) {
  m.def("layer_norm_modulate(Tensor x, Tensor shift, Tensor scale, float eps) -> Tensor");
  m.def(
      "gated_residual_layer_norm_modulate(Tensor residual, Tensor x, Tensor gate, Tensor shift, Tensor scale, "
      "float eps) -> (Tensor, Tensor)");
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(cosmos_kernels, CPU, m) {
  m.impl("layer_norm_modulate", &cosmos::adaptive_norm::layer_norm_modulate_cpu);
  m.impl("gated_residual_layer_norm_modulate", &cosmos::adaptive_norm::gated_residual_layer_norm_modulate_cpu);
  m.impl("rms_norm", &cosmos::adaptive_norm::rms_norm_cpu);
}
