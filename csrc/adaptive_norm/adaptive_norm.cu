// CUDA kernels of the adaptive-norm family: one thread block per row, 16-byte vector loads, row
// statistics merged across the block (Welford / Chan), then a second pass over the row (an L1 / L2 hit)
// that writes the modulated output. Launched on the current stream, so CUDA-graph capture works.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "adaptive_norm/adaptive_norm.h"
#include "common/alloc.h"
#include "common/cuda_utils.cuh"
#include "common/host.h"

namespace cosmos::adaptive_norm {
namespace {

using cuda::load_packet;
using cuda::Packet;
using cuda::store_packet;

template <typename T>
struct NormArgs {
  const T* residual;  // gated variant only
  const T* x;
  const T* gate;  // gated variant only
  const T* shift;
  const T* scale;
  T* new_residual;  // gated variant only
  T* out;
  RowStrides residual_s, x_s, gate_s, shift_s, scale_s;
  RowGrid grid;
  int64_t d;
  float eps;
};

// Statistics of one packet, merged into the thread's running Welford state.
template <int VEC>
__device__ __forceinline__ Welford push_packet(Welford w, const float (&v)[VEC]) {
  float sum = 0.f;
#pragma unroll
  for (int j = 0; j < VEC; ++j) sum += v[j];
  Welford p;
  p.count = static_cast<float>(VEC);
  p.mean = sum / p.count;
#pragma unroll
  for (int j = 0; j < VEC; ++j) p.m2 += (v[j] - p.mean) * (v[j] - p.mean);
  return welford_merge(w, p);
}

template <typename T, int VEC, bool GATED>
__global__ void layer_norm_modulate_kernel(NormArgs<T> a) {
  const int64_t row = blockIdx.x;
  const int64_t nvec = a.d / VEC;
  // The row the statistics are taken of: x, or the new residual (re-read after it is written).
  const T* src = GATED ? a.new_residual + row * a.d : a.x + a.x_s.offset(a.grid, row);
  Welford w;
  for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
    float vals[VEC];
    if constexpr (GATED) {
      const auto r = load_packet<T, VEC>(a.residual + a.residual_s.offset(a.grid, row) + v * VEC);
      const auto x = load_packet<T, VEC>(a.x + a.x_s.offset(a.grid, row) + v * VEC);
      const auto g = load_packet<T, VEC>(a.gate + a.gate_s.offset(a.grid, row) + v * VEC);
      Packet<T, VEC> s;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        s.v[j] = static_cast<T>(
            gated_residual(static_cast<float>(r.v[j]), static_cast<float>(g.v[j]), static_cast<float>(x.v[j])));
        vals[j] = static_cast<float>(s.v[j]);  // statistics of the rounded values the caller sees
      }
      store_packet<T, VEC>(a.new_residual + row * a.d + v * VEC, s);
    } else {
      const auto x = load_packet<T, VEC>(src + v * VEC);
#pragma unroll
      for (int j = 0; j < VEC; ++j) vals[j] = static_cast<float>(x.v[j]);
    }
    w = push_packet<VEC>(w, vals);
  }
  w = cuda::block_merge(w);
  const float mean = w.mean;
  const float rstd = inv_std(w.m2 / static_cast<float>(a.d), a.eps);
  const T* shift = a.shift + a.shift_s.offset(a.grid, row);
  const T* scale = a.scale + a.scale_s.offset(a.grid, row);
  for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
    const auto x = load_packet<T, VEC>(src + v * VEC);
    const auto sh = load_packet<T, VEC>(shift + v * VEC);
    const auto sc = load_packet<T, VEC>(scale + v * VEC);
    Packet<T, VEC> o;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      o.v[j] = static_cast<T>(modulate(static_cast<float>(x.v[j]), mean, rstd, static_cast<float>(sh.v[j]),
                                       static_cast<float>(sc.v[j])));
    }
    store_packet<T, VEC>(a.out + row * a.d + v * VEC, o);
  }
}

template <typename T, int VEC>
__global__ void rms_norm_kernel(const T* x, const T* weight, T* out, RowStrides xs, RowStrides ws, RowGrid grid,
                                int64_t d, float eps) {
  const int64_t row = blockIdx.x;
  const int64_t nvec = d / VEC;
  const T* xr = x + xs.offset(grid, row);
  const T* wr = weight + ws.offset(grid, row);
  float ss = 0.f;
  for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
    const auto p = load_packet<T, VEC>(xr + v * VEC);
#pragma unroll
    for (int j = 0; j < VEC; ++j) ss += static_cast<float>(p.v[j]) * static_cast<float>(p.v[j]);
  }
  const float inv = rms_scale(cuda::block_sum(ss), d, eps);
  for (int64_t v = threadIdx.x; v < nvec; v += blockDim.x) {
    const auto p = load_packet<T, VEC>(xr + v * VEC);
    const auto wp = load_packet<T, VEC>(wr + v * VEC);
    Packet<T, VEC> o;
#pragma unroll
    for (int j = 0; j < VEC; ++j) o.v[j] = static_cast<T>(static_cast<float>(p.v[j]) * inv * static_cast<float>(wp.v[j]));
    store_packet<T, VEC>(out + row * d + v * VEC, o);
  }
}

// 16-byte packets need D, every row stride and every base pointer to be multiples of the packet.
template <typename T>
bool can_vectorize(int64_t d, std::initializer_list<const at::Tensor*> tensors) {
  constexpr int vec = 16 / sizeof(T);
  if (d % vec != 0) return false;
  for (const at::Tensor* t : tensors) {
    if (!cuda::aligned16(t->const_data_ptr())) return false;
    for (int i = 0; i < 3; ++i)
      if (t->stride(i) % vec != 0) return false;
  }
  return true;
}

int threads_for(int64_t packets) {
  const int64_t t = (packets + 31) / 32 * 32;
  return static_cast<int>(std::clamp<int64_t>(t, 32, 512));
}

template <typename T, bool GATED>
void launch_layer_norm(const NormArgs<T>& args, int64_t rows, bool vectorize) {
  constexpr int vec = 16 / sizeof(T);
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (vectorize) {
    layer_norm_modulate_kernel<T, vec, GATED><<<rows, threads_for(args.d / vec), 0, stream>>>(args);
  } else {
    layer_norm_modulate_kernel<T, 1, GATED><<<rows, threads_for(args.d), 0, stream>>>(args);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor layer_norm_modulate_cuda(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale,
                                    double eps) {
  check_row_grid(shift, "shift", x);
  check_row_grid(scale, "scale", x);
  check_row_grid(x, "x", x);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = allocate_output(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t d = x.size(3), rows = x.numel() / std::max<int64_t>(d, 1);
  if (x.numel() == 0) return out;
  COSMOS_DISPATCH_FLOATING(x.scalar_type(), "layer_norm_modulate_cuda", [&] {
    NormArgs<scalar_t> a{};
    a.x = x.const_data_ptr<scalar_t>();
    a.shift = shift.const_data_ptr<scalar_t>();
    a.scale = scale.const_data_ptr<scalar_t>();
    a.out = out.mutable_data_ptr<scalar_t>();
    a.x_s = row_strides(x);
    a.shift_s = row_strides(shift);
    a.scale_s = row_strides(scale);
    a.grid = row_grid(x);
    a.d = d;
    a.eps = static_cast<float>(eps);
    launch_layer_norm<scalar_t, false>(a, rows, can_vectorize<scalar_t>(d, {&x, &shift, &scale, &out}));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> gated_residual_layer_norm_modulate_cuda(
    const at::Tensor& residual, const at::Tensor& x, const at::Tensor& gate, const at::Tensor& shift,
    const at::Tensor& scale, double eps) {
  check_row_grid(residual, "residual", residual);
  check_row_grid(x, "x", residual);
  check_row_grid(gate, "gate", residual);
  check_row_grid(shift, "shift", residual);
  check_row_grid(scale, "scale", residual);
  const c10::cuda::CUDAGuard guard(residual.device());
  const auto opts = residual.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor new_residual = allocate_output(residual.sizes(), opts);
  at::Tensor normed = allocate_output(residual.sizes(), opts);
  const int64_t d = residual.size(3), rows = residual.numel() / std::max<int64_t>(d, 1);
  if (residual.numel() == 0) return {new_residual, normed};
  COSMOS_DISPATCH_FLOATING(residual.scalar_type(), "gated_residual_layer_norm_modulate_cuda", [&] {
    NormArgs<scalar_t> a{};
    a.residual = residual.const_data_ptr<scalar_t>();
    a.x = x.const_data_ptr<scalar_t>();
    a.gate = gate.const_data_ptr<scalar_t>();
    a.shift = shift.const_data_ptr<scalar_t>();
    a.scale = scale.const_data_ptr<scalar_t>();
    a.new_residual = new_residual.mutable_data_ptr<scalar_t>();
    a.out = normed.mutable_data_ptr<scalar_t>();
    a.residual_s = row_strides(residual);
    a.x_s = row_strides(x);
    a.gate_s = row_strides(gate);
    a.shift_s = row_strides(shift);
    a.scale_s = row_strides(scale);
    a.grid = row_grid(residual);
    a.d = d;
    a.eps = static_cast<float>(eps);
    launch_layer_norm<scalar_t, true>(
        a, rows, can_vectorize<scalar_t>(d, {&residual, &x, &gate, &shift, &scale, &new_residual, &normed}));
  });
  return {new_residual, normed};
}

at::Tensor rms_norm_cuda(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_row_grid(x, "x", x);
  check_row_grid(weight, "weight", x);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = allocate_output(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t d = x.size(3), rows = x.numel() / std::max<int64_t>(d, 1);
  if (x.numel() == 0) return out;
  COSMOS_DISPATCH_FLOATING(x.scalar_type(), "rms_norm_cuda", [&] {
    constexpr int vec = 16 / sizeof(scalar_t);
    auto stream = c10::cuda::getCurrentCUDAStream();
    const auto* xp = x.const_data_ptr<scalar_t>();
    const auto* wp = weight.const_data_ptr<scalar_t>();
    auto* op = out.mutable_data_ptr<scalar_t>();
    if (can_vectorize<scalar_t>(d, {&x, &weight, &out})) {
      rms_norm_kernel<scalar_t, vec><<<rows, threads_for(d / vec), 0, stream>>>(
          xp, wp, op, row_strides(x), row_strides(weight), row_grid(x), d, static_cast<float>(eps));
    } else {
      rms_norm_kernel<scalar_t, 1><<<rows, threads_for(d), 0, stream>>>(
          xp, wp, op, row_strides(x), row_strides(weight), row_grid(x), d, static_cast<float>(eps));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace cosmos::adaptive_norm

TORCH_LIBRARY_IMPL(cosmos_kernels, CUDA, m) {
  m.impl("layer_norm_modulate", &cosmos::adaptive_norm::layer_norm_modulate_cuda);
  m.impl("gated_residual_layer_norm_modulate", &cosmos::adaptive_norm::gated_residual_layer_norm_modulate_cuda);
  m.impl("rms_norm", &cosmos::adaptive_norm::rms_norm_cuda);
}
