// Unit tests of the per-element math that the CPU and CUDA kernels share (csrc/include/cosmos).
#include <random>
#include <vector>

#include "check.h"
#include "cosmos/adaptive_norm.h"
#include "cosmos/common.h"

using namespace cosmos;

static void welford_matches_two_pass() {
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(1000.f, 0.5f);  // large mean: the case one-pass sums get wrong
  std::vector<float> v(3001);
  for (auto& x : v) x = dist(rng);
  double mean = 0;
  for (float x : v) mean += x;
  mean /= v.size();
  double m2 = 0;
  for (float x : v) m2 += (x - mean) * (x - mean);
  // Chunked accumulation merged with Chan's formula, as the CUDA block reduction does.
  Welford total;
  for (size_t start = 0; start < v.size(); start += 128) {
    Welford part;
    for (size_t i = start; i < std::min(v.size(), start + 128); ++i) part = welford_push(part, v[i]);
    total = welford_merge(total, part);
  }
  EXPECT_NEAR(total.count, v.size(), 0);
  EXPECT_NEAR(total.mean, mean, 1e-3);
  EXPECT_NEAR(total.m2 / v.size(), m2 / v.size(), 1e-3 * m2 / v.size());
  EXPECT_NEAR(welford_merge(Welford{}, Welford{}).count, 0, 0);
}

static void modulation_math() {
  EXPECT_NEAR(adaptive_norm::modulate(3.f, 1.f, 0.5f, 0.25f, 1.f), (3 - 1) * 0.5 * 2 + 0.25, 1e-7);
  EXPECT_NEAR(adaptive_norm::gated_residual(1.f, 0.5f, 4.f), 3.0, 0);
  EXPECT_NEAR(adaptive_norm::inv_std(3.f, 1.f), 0.5, 1e-7);
  EXPECT_NEAR(adaptive_norm::rms_scale(32.f, 8, 0.f), 0.5, 1e-7);
}

static void row_offsets() {
  // A (2, 3, 4, D) grid whose middle dim is broadcast (stride 0).
  const RowGrid g{3, 4};
  const RowStrides s{100, 0, 10};
  EXPECT_TRUE(s.offset(g, 0) == 0);
  EXPECT_TRUE(s.offset(g, 5) == 10);       // (0, 1, 1)
  EXPECT_TRUE(s.offset(g, 13) == 100 + 10);  // (1, 0, 1)
  EXPECT_TRUE(s.offset(g, 23) == 130);     // (1, 2, 3)
}

int main() {
  welford_matches_two_pass();
  modulation_math();
  row_offsets();
  return finish("test_shared_math");
}
