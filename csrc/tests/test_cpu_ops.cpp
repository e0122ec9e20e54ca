// The CPU ops through the dispatcher, against a double-precision loop on a strided, broadcast row grid.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>

#include "check.h"

static at::Tensor call_layer_norm_modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("cosmos_kernels::layer_norm_modulate", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>();
  return op.call(x, shift, scale, 1e-6);
}

static void layer_norm_modulate_matches_double_loop(at::ScalarType dtype, double tol) {
  at::manual_seed(3);
  const int64_t b = 2, t = 3, s = 5, d = 1000;
  at::Tensor x = at::randn({b, t, s, d}).mul(3).add(1).to(dtype);
  at::Tensor mod = at::randn({b, t, 1, 3 * d}).to(dtype);
  auto chunks = mod.chunk(3, -1);
  at::Tensor shift = chunks[0].expand({b, t, s, d}), scale = chunks[1].expand({b, t, s, d});
  at::Tensor out = call_layer_norm_modulate(x, shift, scale).to(at::kDouble);
  at::Tensor xd = x.to(at::kDouble), shd = shift.to(at::kDouble), scd = scale.to(at::kDouble);
  double worst = 0;
  for (int64_t i = 0; i < b; ++i)
    for (int64_t j = 0; j < t; ++j)
      for (int64_t k = 0; k < s; ++k) {
        auto row = xd[i][j][k];
        const double mean = row.mean().item<double>();
        const double var = (row - mean).pow(2).mean().item<double>();
        auto want = (row - mean) / std::sqrt(var + 1e-6) * (1 + scd[i][j][k]) + shd[i][j][k];
        worst = std::max(worst, (out[i][j][k] - want).abs().max().item<double>());
      }
  EXPECT_NEAR(worst, 0, tol);
}

int main() {
  layer_norm_modulate_matches_double_loop(at::kFloat, 1e-4);
  layer_norm_modulate_matches_double_loop(at::kBFloat16, 0.1);
  return finish("test_cpu_ops");
}
