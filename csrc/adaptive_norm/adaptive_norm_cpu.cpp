// CPU kernels of the adaptive-norm family, and the family's op schemas.
// One row of D elements at a time, in fp32 vector lanes converted in registers: statistics in two passes
// over the row (it sits in L1), then one fused modulation pass. Rows are split across threads with
// at::parallel_for.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

#include "adaptive_norm/adaptive_norm.h"
#include "common/alloc.h"
#include "common/host.h"

namespace cosmos::adaptive_norm {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kW = Vec::size();

// fp32 lanes from any of the kernel dtypes, converted in registers (no row buffers).
template <typename T>
inline Vec load_lanes(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return Vec::loadu(p);
  } else {
    Vec out;
    at::vec::load_to_float<T>(p, out);
    return out;
  }
}

template <typename T>
inline void store_lanes(T* p, Vec v) {
  if constexpr (std::is_same_v<T, float>) {
    v.store(p);
  } else {
    at::vec::convert_from_float<T>(v, v).store(p, kW);
  }
}

// A store of finished output that bypasses the cache (no read-for-ownership of the destination line): the
// output is not read again by this op. Falls back to a plain store where the ISA or alignment does not allow.
template <typename T>
inline void stream_lanes(T* p, Vec v) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    if ((reinterpret_cast<uintptr_t>(p) & 63u) == 0) {
      _mm512_stream_ps(p, static_cast<__m512>(v));
      return;
    }
  } else {
    if ((reinterpret_cast<uintptr_t>(p) & 31u) == 0) {  // 16 half-width values: the low 256 bits
      const __m512i packed = static_cast<__m512i>(at::vec::convert_from_float<T>(v, v));
      _mm256_stream_si256(reinterpret_cast<__m256i*>(p), _mm512_castsi512_si256(packed));
      return;
    }
  }
#endif
  store_lanes(p, v);
}

// A per-thread fp32 row, reused across rows and calls.
inline float* row_buffer(int64_t d) {
  static thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < d) buffer.resize(d);
  return buffer.data();
}

// Makes this thread's streaming stores visible before the parallel region ends.
inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX512)
  _mm_sfence();
#endif
}

// Sum of f(v) over a row with four independent accumulators (hides the add latency); the tail is scalar.
template <typename T, typename F, typename G>
inline float row_sum(const T* x, int64_t d, F f, G f_scalar) {
  Vec a0(0.f), a1(0.f), a2(0.f), a3(0.f);
  int64_t i = 0;
  for (; i + 4 * kW <= d; i += 4 * kW) {
    a0 += f(load_lanes(x + i));
    a1 += f(load_lanes(x + i + kW));
    a2 += f(load_lanes(x + i + 2 * kW));
    a3 += f(load_lanes(x + i + 3 * kW));
  }
  for (; i + kW <= d; i += kW) a0 += f(load_lanes(x + i));
  float sum = at::vec::vec_reduce_all<float>([](Vec a, Vec b) { return a + b; }, (a0 + a1) + (a2 + a3));
  for (; i < d; ++i) sum += f_scalar(static_cast<float>(x[i]));
  return sum;
}

// Mean and 1/std of a row in one pass over it, on shifted data: sums of (x - k) and (x - k)^2 with k the mean
// of the first lanes, so the variance does not cancel catastrophically for rows with a large mean.
template <typename T>
inline void mean_rstd(const T* x, int64_t d, float eps, float& mean, float& rstd) {
  const int64_t head = std::min<int64_t>(d, kW);
  float k = 0.f;
  for (int64_t i = 0; i < head; ++i) k += static_cast<float>(x[i]);
  k /= static_cast<float>(head);
  const Vec vk(k);
  Vec s0(0.f), s1(0.f), q0(0.f), q1(0.f);
  int64_t i = 0;
  for (; i + 2 * kW <= d; i += 2 * kW) {
    const Vec c0 = load_lanes(x + i) - vk, c1 = load_lanes(x + i + kW) - vk;
    s0 += c0;
    s1 += c1;
    q0 = at::vec::fmadd(c0, c0, q0);
    q1 = at::vec::fmadd(c1, c1, q1);
  }
  for (; i + kW <= d; i += kW) {
    const Vec c0 = load_lanes(x + i) - vk;
    s0 += c0;
    q0 = at::vec::fmadd(c0, c0, q0);
  }
  const auto add = [](Vec a, Vec b) { return a + b; };
  float sum = at::vec::vec_reduce_all<float>(add, s0 + s1), sq = at::vec::vec_reduce_all<float>(add, q0 + q1);
  for (; i < d; ++i) {
    const float c = static_cast<float>(x[i]) - k;
    sum += c;
    sq += c * c;
  }
  const float shift_mean = sum / static_cast<float>(d);
  mean = k + shift_mean;
  rstd = inv_std(std::max(sq / static_cast<float>(d) - shift_mean * shift_mean, 0.f), eps);
}

template <typename TX, typename T>
inline void modulate_row(const TX* x, const T* shift, const T* scale, float mean, float rstd, int64_t d, T* out) {
  const Vec vmean(mean), vrstd(rstd), one(1.f);
  int64_t i = 0;
  for (; i + kW <= d; i += kW) {
    const Vec xhat = (load_lanes(x + i) - vmean) * vrstd;
    stream_lanes(out + i, at::vec::fmadd(xhat, load_lanes(scale + i) + one, load_lanes(shift + i)));
  }
  for (; i < d; ++i) {
    out[i] = static_cast<T>(modulate(static_cast<float>(x[i]), mean, rstd, static_cast<float>(shift[i]),
                                     static_cast<float>(scale[i])));
  }
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
    const auto* shp = shift.const_data_ptr<scalar_t>();
    const auto* scp = scale.const_data_ptr<scalar_t>();
    auto* op = out.mutable_data_ptr<scalar_t>();
    const RowStrides xs = row_strides(x), shs = row_strides(shift), scs = row_strides(scale);
    at::parallel_for(0, rows, grain_rows(d), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* xr = xp + xs.offset(g, r);
        float mean, rstd;
        mean_rstd(xr, d, static_cast<float>(eps), mean, rstd);
        modulate_row(xr, shp + shs.offset(g, r), scp + scs.offset(g, r), mean, rstd, d, op + r * d);
      }
      stream_fence();
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
    const auto* gp = gate.const_data_ptr<scalar_t>();
    const auto* shp = shift.const_data_ptr<scalar_t>();
    const auto* scp = scale.const_data_ptr<scalar_t>();
    auto* nrp = new_residual.mutable_data_ptr<scalar_t>();
    auto* op = normed.mutable_data_ptr<scalar_t>();
    const RowStrides rs = row_strides(residual), xs = row_strides(x), gs = row_strides(gate);
    const RowStrides shs = row_strides(shift), scs = row_strides(scale);
    at::parallel_for(0, rows, grain_rows(d), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* res = rp + rs.offset(g, r);
        const scalar_t* br = xp + xs.offset(g, r);
        const scalar_t* gr = gp + gs.offset(g, r);
        scalar_t* sum = nrp + r * d;
        // Statistics and modulation read the new residual as the caller sees it (rounded to the output
        // dtype). fp32 keeps it in an L1 row buffer while the output copy streams to memory; half types
        // re-read their stored row from L1 (cheaper than the extra conversions).
        const bool keep = std::is_same_v<scalar_t, float>;
        float* kept = keep ? row_buffer(d) : nullptr;
        int64_t i = 0;
        for (; i + kW <= d; i += kW) {
          const Vec v = at::vec::fmadd(load_lanes(gr + i), load_lanes(br + i), load_lanes(res + i));
          if (keep) {
            v.store(kept + i);
            stream_lanes(sum + i, v);
          } else {
            store_lanes(sum + i, v);
          }
        }
        for (; i < d; ++i) {
          sum[i] = static_cast<scalar_t>(gated_residual(static_cast<float>(res[i]), static_cast<float>(gr[i]),
                                                        static_cast<float>(br[i])));
          if (keep) kept[i] = static_cast<float>(sum[i]);
        }
        float mean, rstd;
        const scalar_t* shift_row = shp + shs.offset(g, r);
        const scalar_t* scale_row = scp + scs.offset(g, r);
        if (keep) {
          mean_rstd(static_cast<const float*>(kept), d, static_cast<float>(eps), mean, rstd);
          modulate_row(static_cast<const float*>(kept), shift_row, scale_row, mean, rstd, d, op + r * d);
        } else {
          mean_rstd(static_cast<const scalar_t*>(sum), d, static_cast<float>(eps), mean, rstd);
          modulate_row(static_cast<const scalar_t*>(sum), shift_row, scale_row, mean, rstd, d, op + r * d);
        }
      }
      stream_fence();
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
    const auto* wp = weight.const_data_ptr<scalar_t>();
    auto* op = out.mutable_data_ptr<scalar_t>();
    const RowStrides xs = row_strides(x), ws = row_strides(weight);
    at::parallel_for(0, rows, grain_rows(d), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* xr = xp + xs.offset(g, r);
        const scalar_t* wr = wp + ws.offset(g, r);
        scalar_t* o = op + r * d;
        const float ss = row_sum(xr, d, [](Vec v) { return v * v; }, [](float v) { return v * v; });
        const float inv = rms_scale(ss, d, static_cast<float>(eps));
        const Vec vinv(inv);
        int64_t i = 0;
        for (; i + kW <= d; i += kW) store_lanes(o + i, load_lanes(xr + i) * vinv * load_lanes(wr + i));
        for (; i < d; ++i) {
          o[i] = static_cast<scalar_t>(static_cast<float>(xr[i]) * inv * static_cast<float>(wr[i]));
        }
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
