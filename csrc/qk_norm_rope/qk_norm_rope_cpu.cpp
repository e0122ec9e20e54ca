// CPU kernel of the fused QK RMSNorm + rotate-half RoPE, and the attention family's op schema.
// One token (all heads of q, or of k) per step of at::parallel_for; each head is processed as its two
// halves, vectorised with at::vec, with the per-element math of cosmos/rope.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <optional>
#include <type_traits>
#include <vector>

#include "common/alloc.h"
#include "common/host.h"
#include "qk_norm_rope/rope.h"
#include "qk_norm_rope/rope_host.h"

namespace cosmos::rope {
namespace {

using Vec = at::vec::Vectorized<float>;

struct Operand {
  const void* x;
  void* out;
  const float* weight;  // nullptr: no norm
  HeadRows rows;
};

// One head of d elements in fp32 (`x`), written to `out` (fp32).
template <bool NORM, bool ROPE>
void norm_rope_head(const float* x, const float* w, const float* cos, const float* sin, int64_t d, float eps,
                    float* out) {
  const int64_t half = d / 2;
  float inv = 1.f;
  if constexpr (NORM) {
    const float ss = at::vec::map_reduce_all<float>([](Vec v) { return v * v; }, [](Vec a, Vec b) { return a + b; },
                                                    x, d);
    inv = rms_scale(ss, d, eps);
  }
  const Vec vinv(inv);
  int64_t i = 0;
  for (; i + Vec::size() <= half; i += Vec::size()) {
    Vec x1 = Vec::loadu(x + i), x2 = Vec::loadu(x + half + i);
    if constexpr (NORM) {
      x1 = rms_apply(x1, vinv, Vec::loadu(w + i));
      x2 = rms_apply(x2, vinv, Vec::loadu(w + half + i));
    }
    if constexpr (ROPE) {
      Vec o1, o2;
      rotate_pair(x1, x2, Vec::loadu(cos + i), Vec::loadu(sin + i), Vec::loadu(cos + half + i),
                  Vec::loadu(sin + half + i), o1, o2);
      x1 = o1;
      x2 = o2;
    }
    x1.store(out + i);
    x2.store(out + half + i);
  }
  for (; i < half; ++i) {
    float x1 = x[i], x2 = x[half + i];
    if constexpr (NORM) {
      x1 = rms_apply(x1, inv, w[i]);
      x2 = rms_apply(x2, inv, w[half + i]);
    }
    if constexpr (ROPE) {
      float o1, o2;
      rotate_pair(x1, x2, cos[i], sin[i], cos[half + i], sin[half + i], o1, o2);
      x1 = o1;
      x2 = o2;
    }
    out[i] = x1;
    out[half + i] = x2;
  }
}

template <typename T, bool NORM, bool ROPE>
void run_tokens(const Operand& q, const Operand& k, int64_t q_tokens, int64_t tokens, int64_t heads, int64_t d,
                const float* cos, const float* sin, int64_t table_stride, float eps) {
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(heads * d, 1));
  at::parallel_for(0, tokens, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> in_buf(std::is_same_v<T, float> ? 0 : d), out_buf(std::is_same_v<T, float> ? 0 : d);
    for (int64_t t = begin; t < end; ++t) {
      const bool is_q = t < q_tokens;
      const Operand& op = is_q ? q : k;
      const int64_t token = is_q ? t : t - q_tokens;
      const int64_t first_row = token * heads;
      const int64_t pos = op.rows.position(first_row);
      const float* c = ROPE ? cos + pos * table_stride : nullptr;
      const float* s = ROPE ? sin + pos * table_stride : nullptr;
      const T* src = static_cast<const T*>(op.x);
      T* dst = static_cast<T*>(op.out);
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t row = first_row + h;
        const T* x = src + op.rows.offset(row);
        T* o = dst + row * d;
        if constexpr (std::is_same_v<T, float>) {
          norm_rope_head<NORM, ROPE>(x, op.weight, c, s, d, eps, o);
        } else {
          at::vec::convert(x, in_buf.data(), d);
          norm_rope_head<NORM, ROPE>(in_buf.data(), op.weight, c, s, d, eps, out_buf.data());
          at::vec::convert(out_buf.data(), o, d);
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> qk_norm_rope_cpu(const at::Tensor& q, const at::Tensor& k,
                                                    const std::optional<at::Tensor>& q_weight,
                                                    const std::optional<at::Tensor>& k_weight,
                                                    const std::optional<at::Tensor>& cos,
                                                    const std::optional<at::Tensor>& sin, double eps) {
  check_qk_norm_rope(q, k, q_weight, k_weight, cos, sin);
  const auto opts = q.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor q_out = allocate_output(q.sizes(), opts);
  at::Tensor k_out = allocate_output(k.sizes(), opts);
  const int64_t heads = q.size(2), d = q.size(3);
  const int64_t q_tokens = q.size(0) * q.size(1), tokens = q_tokens + k.size(0) * k.size(1);
  if (tokens == 0 || heads == 0 || d == 0) return {q_out, k_out};
  const bool norm = q_weight.has_value(), rope = cos.has_value();
  const float* cp = rope ? cos->const_data_ptr<float>() : nullptr;
  const float* sp = rope ? sin->const_data_ptr<float>() : nullptr;
  const int64_t table_stride = rope ? cos->stride(0) : 0;
  COSMOS_DISPATCH_FLOATING(q.scalar_type(), "qk_norm_rope_cpu", [&] {
    const Operand qo{q.const_data_ptr(), q_out.mutable_data_ptr(), norm ? q_weight->const_data_ptr<float>() : nullptr,
                     head_rows(q)};
    const Operand ko{k.const_data_ptr(), k_out.mutable_data_ptr(), norm ? k_weight->const_data_ptr<float>() : nullptr,
                     head_rows(k)};
    const float e = static_cast<float>(eps);
    if (norm && rope) {
      run_tokens<scalar_t, true, true>(qo, ko, q_tokens, tokens, heads, d, cp, sp, table_stride, e);
    } else if (norm) {
      run_tokens<scalar_t, true, false>(qo, ko, q_tokens, tokens, heads, d, cp, sp, table_stride, e);
    } else if (rope) {
      run_tokens<scalar_t, false, true>(qo, ko, q_tokens, tokens, heads, d, cp, sp, table_stride, e);
    } else {
      run_tokens<scalar_t, false, false>(qo, ko, q_tokens, tokens, heads, d, cp, sp, table_stride, e);
    }
  });
  return {q_out, k_out};
}

}  // namespace
}  // namespace cosmos::rope

// q, k: (B, L, H, D) with any strides and a contiguous last dim (views of a packed QKV projection are read
// in place); weights (D,) and RoPE tables (Lq, D) in fp32, or None. See cosmos_kernels/attention/ops.py.
TORCH_LIBRARY_FRAGMENT(cosmos_kernels, m) {
  m.def(
      "qk_norm_rope(Tensor q, Tensor k, Tensor? q_weight, Tensor? k_weight, Tensor? cos, Tensor? sin, float eps) "
      "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(cosmos_kernels, CPU, m) { m.impl("qk_norm_rope", &cosmos::rope::qk_norm_rope_cpu); }
