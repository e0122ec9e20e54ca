// CUDA kernel of the fused sampler step. Grid: (rows, chunks of a row); a row is one (b, c, t) line of
// S elements, wholly conditional or not. The step's coefficient row is read from the device table at the
// device-held step index, so the launch needs no host value and a loop of steps can be graph-captured.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "common/alloc.h"
#include "common/host.h"
#include "sampler_step/sampler_step.h"
#include "sampler_step/sampler_step_host.h"

namespace cosmos::sampler_step {
namespace {

constexpr int kThreads = 256;
constexpr int kVec = 4;  // elements per thread and access: 16 bytes of fp32, 8 of bf16 / fp16

template <typename ST, typename NT>
struct StepArgs {
  const NT* v;
  const ST* x;
  const ST* p1;
  const ST* p2;
  const ST* clean;
  const float* mask;
  const double* coeffs;
  const int64_t* step;
  ST* x0;
  ST* xn;
  NT* net;
  RowStrides vs, xs, p1s, p2s, cs;
  RowGrid grid;
  int64_t s, num_rows_table;
};

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Vec {
  T v[VEC];
};

template <int VEC, typename T>
__device__ __forceinline__ void load(const T* p, float (&out)[VEC]) {
  const Vec<T, VEC> packet = *reinterpret_cast<const Vec<T, VEC>*>(p);
#pragma unroll
  for (int j = 0; j < VEC; ++j) out[j] = static_cast<float>(packet.v[j]);
}

template <int VEC, typename T>
__device__ __forceinline__ void store(T* p, const float (&in)[VEC]) {
  Vec<T, VEC> packet;
#pragma unroll
  for (int j = 0; j < VEC; ++j) packet.v[j] = static_cast<T>(in[j]);
  *reinterpret_cast<Vec<T, VEC>*>(p) = packet;
}

template <typename ST, typename NT, int VEC>
__global__ void __launch_bounds__(kThreads) sampler_step_kernel(StepArgs<ST, NT> a) {
  const int64_t row = blockIdx.x;
  const int64_t i = (static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x) * VEC;
  if (i >= a.s) return;
  const Coeffs c = load_coeffs(a.coeffs, a.num_rows_table, *a.step);
  const int64_t frame = row % a.grid.n2, batch = row / (a.grid.n2 * a.grid.n1);
  const bool cond = a.mask[batch * a.grid.n2 + frame] != 0.f;
  float x[VEC], v[VEC], clean[VEC], h1[VEC], h2[VEC], x0[VEC], xn[VEC], net[VEC];
  load<VEC>(a.x + a.xs.offset(a.grid, row) + i, x);
  load<VEC>(a.clean + a.cs.offset(a.grid, row) + i, clean);
  if (!cond) {
    load<VEC>(a.v + a.vs.offset(a.grid, row) + i, v);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) v[j] = 0.f;
  }
  if (c.b1 != 0.f) load<VEC>(a.p1 + a.p1s.offset(a.grid, row) + i, h1);
  if (c.b2 != 0.f) load<VEC>(a.p2 + a.p2s.offset(a.grid, row) + i, h2);
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    x0[j] = x0_from_output(x[j], v[j], clean[j], cond, c);
    xn[j] = multistep_update(x[j], x0[j], c.b1 != 0.f ? h1[j] : 0.f, c.b2 != 0.f ? h2[j] : 0.f, c);
    net[j] = next_network_input(xn[j], clean[j], cond, c);
  }
  store<VEC>(a.x0 + row * a.s + i, x0);
  store<VEC>(a.xn + row * a.s + i, xn);
  store<VEC>(a.net + row * a.s + i, net);
}

bool aligned(const at::Tensor& t, int64_t bytes) {
  if (reinterpret_cast<uintptr_t>(t.const_data_ptr()) % bytes != 0) return false;
  for (int d = 0; d < 3; ++d)
    if ((t.stride(d) * static_cast<int64_t>(t.element_size())) % bytes != 0) return false;
  return true;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sampler_step_cuda(
    const at::Tensor& v, const at::Tensor& x, const at::Tensor& x0_prev, const at::Tensor& x0_prev2,
    const at::Tensor& cond_latent, const at::Tensor& cond_mask, const at::Tensor& coeffs, const at::Tensor& step) {
  check_step_args(v, x, x0_prev, x0_prev2, cond_latent, cond_mask, coeffs, step);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto state_opts = x.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor x0 = allocate_output(x.sizes(), state_opts);
  at::Tensor x_next = allocate_output(x.sizes(), state_opts);
  at::Tensor net_in = allocate_output(x.sizes(), v.options().memory_format(at::MemoryFormat::Contiguous));
  if (x.numel() == 0) return {x0, x_next, net_in};
  const int64_t s = x.size(3), rows = x.numel() / s;
  TORCH_CHECK(s <= int64_t{65535} * kThreads, "sampler_step: rows of at most ", 65535 * kThreads,
              " elements (H * W) on CUDA, got ", s);
  COSMOS_DISPATCH_FLOATING(x.scalar_type(), "sampler_step_cuda", [&] {
    using ST = scalar_t;
    COSMOS_DISPATCH_FLOATING(v.scalar_type(), "sampler_step_cuda", [&] {
      using NT = scalar_t;
      StepArgs<ST, NT> a{};
      a.v = v.const_data_ptr<NT>();
      a.x = x.const_data_ptr<ST>();
      a.p1 = x0_prev.const_data_ptr<ST>();
      a.p2 = x0_prev2.const_data_ptr<ST>();
      a.clean = cond_latent.const_data_ptr<ST>();
      a.mask = cond_mask.const_data_ptr<float>();
      a.coeffs = coeffs.const_data_ptr<double>();
      a.step = step.const_data_ptr<int64_t>();
      a.x0 = x0.mutable_data_ptr<ST>();
      a.xn = x_next.mutable_data_ptr<ST>();
      a.net = net_in.mutable_data_ptr<NT>();
      a.vs = row_strides(v);
      a.xs = row_strides(x);
      a.p1s = row_strides(x0_prev);
      a.p2s = row_strides(x0_prev2);
      a.cs = row_strides(cond_latent);
      a.grid = row_grid(x);
      a.s = s;
      a.num_rows_table = coeffs.size(0);
      auto stream = c10::cuda::getCurrentCUDAStream();
      const bool vec = s % kVec == 0 && aligned(v, kVec * sizeof(NT)) && aligned(x, kVec * sizeof(ST)) &&
                       aligned(x0_prev, kVec * sizeof(ST)) && aligned(x0_prev2, kVec * sizeof(ST)) &&
                       aligned(cond_latent, kVec * sizeof(ST));
      if (vec) {
        const dim3 grid(rows, (s / kVec + kThreads - 1) / kThreads);
        sampler_step_kernel<ST, NT, kVec><<<grid, kThreads, 0, stream>>>(a);
      } else {
        const dim3 grid(rows, (s + kThreads - 1) / kThreads);
        sampler_step_kernel<ST, NT, 1><<<grid, kThreads, 0, stream>>>(a);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {x0, x_next, net_in};
}

}  // namespace
}  // namespace cosmos::sampler_step

TORCH_LIBRARY_IMPL(cosmos_kernels, CUDA, m) { m.impl("sampler_step", &cosmos::sampler_step::sampler_step_cuda); }
