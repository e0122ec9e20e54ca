// CUDA kernel of the fused QK RMSNorm + rotate-half RoPE: q and k in one launch. Each head (row) is
// handled by a group of lanes of one warp (a power of two up to 32); a lane owns matching 16-byte packets
// of the head's two halves, so the rotation pairs x[i] with x[i + d/2] in registers. The row's sum of
// squares is reduced with shuffles inside the group; the second pass re-reads the row from L1.
// Launched on the current stream (CUDA-graph safe).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>

#include "common/alloc.h"
#include "common/cuda_utils.cuh"
#include "common/host.h"
#include "qk_norm_rope/rope.h"
#include "qk_norm_rope/rope_host.h"

namespace cosmos::rope {
namespace {

using cuda::load_packet;
using cuda::Packet;
using cuda::store_packet;

constexpr int kThreads = 256;

template <typename T>
struct QkArgs {
  const T* x[2];  // q, k
  T* out[2];
  const float* weight[2];
  HeadRows rows[2];
  const float* cos;
  const float* sin;
  int64_t table_stride;
  int64_t q_rows, total_rows, d;
  int group;  // lanes per row
  float eps;
};

// VEC consecutive fp32 table / weight values; 16-byte loads when the launcher checked alignment.
template <int VEC>
__device__ __forceinline__ void load_f32(const float* p, float (&v)[VEC]) {
  if constexpr (VEC % 4 == 0) {
#pragma unroll
    for (int j = 0; j < VEC; j += 4) {
      const auto f = load_packet<float, 4>(p + j);
#pragma unroll
      for (int i = 0; i < 4; ++i) v[j + i] = f.v[i];
    }
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) v[j] = p[j];
  }
}

template <typename T, int VEC, bool NORM, bool ROPE>
__global__ void qk_norm_rope_kernel(QkArgs<T> a) {
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t row_all = tid / a.group;
  const int lane = static_cast<int>(tid % a.group);
  const bool active = row_all < a.total_rows;
  const int which = row_all < a.q_rows ? 0 : 1;
  const int64_t row = which == 0 ? row_all : row_all - a.q_rows;
  const int64_t half = a.d / 2, packets = half / VEC;
  const T* x = a.x[which] + (active ? a.rows[which].offset(row) : 0);
  T* out = a.out[which] + row * a.d;

  float inv = 1.f;
  if constexpr (NORM) {
    float ss = 0.f;
    if (active) {
      for (int64_t p = lane; p < packets; p += a.group) {
        const auto x1 = load_packet<T, VEC>(x + p * VEC);
        const auto x2 = load_packet<T, VEC>(x + half + p * VEC);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const float f1 = static_cast<float>(x1.v[j]), f2 = static_cast<float>(x2.v[j]);
          ss += f1 * f1 + f2 * f2;
        }
      }
    }
    for (int offset = a.group / 2; offset > 0; offset >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, offset);
    inv = rms_scale(ss, a.d, a.eps);
  }
  if (!active) return;
  const float* w = a.weight[which];
  const int64_t pos = a.rows[which].position(row);
  const float* cos = ROPE ? a.cos + pos * a.table_stride : nullptr;
  const float* sin = ROPE ? a.sin + pos * a.table_stride : nullptr;
  for (int64_t p = lane; p < packets; p += a.group) {
    const int64_t i = p * VEC;
    const auto x1 = load_packet<T, VEC>(x + i);
    const auto x2 = load_packet<T, VEC>(x + half + i);
    float w1[VEC], w2[VEC], c1[VEC], s1[VEC], c2[VEC], s2[VEC];
    if constexpr (NORM) {
      load_f32<VEC>(w + i, w1);
      load_f32<VEC>(w + half + i, w2);
    }
    if constexpr (ROPE) {
      load_f32<VEC>(cos + i, c1);
      load_f32<VEC>(sin + i, s1);
      load_f32<VEC>(cos + half + i, c2);
      load_f32<VEC>(sin + half + i, s2);
    }
    Packet<T, VEC> o1, o2;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      float f1 = static_cast<float>(x1.v[j]), f2 = static_cast<float>(x2.v[j]);
      if constexpr (NORM) {
        f1 = rms_apply(f1, inv, w1[j]);
        f2 = rms_apply(f2, inv, w2[j]);
      }
      if constexpr (ROPE) {
        float r1, r2;
        rotate_pair(f1, f2, c1[j], s1[j], c2[j], s2[j], r1, r2);
        f1 = r1;
        f2 = r2;
      }
      o1.v[j] = static_cast<T>(f1);
      o2.v[j] = static_cast<T>(f2);
    }
    store_packet<T, VEC>(out + i, o1);
    store_packet<T, VEC>(out + half + i, o2);
  }
}

// 16-byte packets of T need each half to hold whole packets, and every row and table start to be aligned.
template <typename T>
bool can_vectorize(int64_t d, const at::Tensor& q, const at::Tensor& k, const at::Tensor& q_out,
                   const at::Tensor& k_out, const std::optional<at::Tensor>& qw, const std::optional<at::Tensor>& kw,
                   const std::optional<at::Tensor>& cos, const std::optional<at::Tensor>& sin) {
  constexpr int vec = 16 / sizeof(T);
  if ((d / 2) % vec != 0) return false;
  for (const at::Tensor* t : {&q, &k, &q_out, &k_out}) {
    if (!cuda::aligned16(t->const_data_ptr())) return false;
    for (int i = 0; i < 3; ++i)
      if (t->stride(i) % vec != 0) return false;
  }
  // fp32 weights and tables are read VEC at a time with 16-byte loads: VEC must hold whole float4s.
  for (const auto* t : {&qw, &kw, &cos, &sin}) {
    if (!t->has_value()) continue;
    if (vec % 4 != 0 || !cuda::aligned16(t->value().const_data_ptr())) return false;
    if (t->value().dim() == 2 && t->value().stride(0) % 4 != 0) return false;
  }
  return true;
}

int lanes_per_row(int64_t packets) {
  int g = 1;
  while (g < packets && g < 32) g <<= 1;
  return g;
}

template <typename T, int VEC>
void launch(QkArgs<T> a, bool norm, bool rope) {
  a.group = lanes_per_row(a.d / 2 / VEC);
  const int64_t threads = a.total_rows * a.group;
  const int64_t blocks = (threads + kThreads - 1) / kThreads;
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (norm && rope) {
    qk_norm_rope_kernel<T, VEC, true, true><<<blocks, kThreads, 0, stream>>>(a);
  } else if (norm) {
    qk_norm_rope_kernel<T, VEC, true, false><<<blocks, kThreads, 0, stream>>>(a);
  } else if (rope) {
    qk_norm_rope_kernel<T, VEC, false, true><<<blocks, kThreads, 0, stream>>>(a);
  } else {
    qk_norm_rope_kernel<T, VEC, false, false><<<blocks, kThreads, 0, stream>>>(a);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> qk_norm_rope_cuda(const at::Tensor& q, const at::Tensor& k,
                                                     const std::optional<at::Tensor>& q_weight,
                                                     const std::optional<at::Tensor>& k_weight,
                                                     const std::optional<at::Tensor>& cos,
                                                     const std::optional<at::Tensor>& sin, double eps) {
  check_qk_norm_rope(q, k, q_weight, k_weight, cos, sin);
  const c10::cuda::CUDAGuard guard(q.device());
  const auto opts = q.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor q_out = allocate_output(q.sizes(), opts);
  at::Tensor k_out = allocate_output(k.sizes(), opts);
  const int64_t heads = q.size(2), d = q.size(3);
  const int64_t q_rows = q.size(0) * q.size(1) * heads, total_rows = q_rows + k.size(0) * k.size(1) * heads;
  if (total_rows == 0 || d == 0) return {q_out, k_out};
  const bool norm = q_weight.has_value(), rope = cos.has_value();
  COSMOS_DISPATCH_FLOATING(q.scalar_type(), "qk_norm_rope_cuda", [&] {
    QkArgs<scalar_t> a{};
    a.x[0] = q.const_data_ptr<scalar_t>();
    a.x[1] = k.const_data_ptr<scalar_t>();
    a.out[0] = q_out.mutable_data_ptr<scalar_t>();
    a.out[1] = k_out.mutable_data_ptr<scalar_t>();
    a.weight[0] = norm ? q_weight->const_data_ptr<float>() : nullptr;
    a.weight[1] = norm ? k_weight->const_data_ptr<float>() : nullptr;
    a.rows[0] = head_rows(q);
    a.rows[1] = head_rows(k);
    a.cos = rope ? cos->const_data_ptr<float>() : nullptr;
    a.sin = rope ? sin->const_data_ptr<float>() : nullptr;
    a.table_stride = rope ? cos->stride(0) : 0;
    a.q_rows = q_rows;
    a.total_rows = total_rows;
    a.d = d;
    a.eps = static_cast<float>(eps);
    if (can_vectorize<scalar_t>(d, q, k, q_out, k_out, q_weight, k_weight, cos, sin)) {
      launch<scalar_t, 16 / sizeof(scalar_t)>(a, norm, rope);
    } else {
      launch<scalar_t, 1>(a, norm, rope);
    }
  });
  return {q_out, k_out};
}

}  // namespace
}  // namespace cosmos::rope

TORCH_LIBRARY_IMPL(cosmos_kernels, CUDA, m) { m.impl("qk_norm_rope", &cosmos::rope::qk_norm_rope_cuda); }
