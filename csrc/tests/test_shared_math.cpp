// Unit tests of the per-element math that the CPU and CUDA kernels share (the per-element header of each csrc/<family>/).
#include <random>
#include <vector>

#include "check.h"
#include "adaptive_norm/adaptive_norm.h"
#include "common/common.h"
#include "qk_norm_rope/rope.h"
#include "sampler_step/sampler_step.h"

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

static void rope_math() {
  // Rotating the pair (1, 0) by 90 degrees in the rotate-half convention.
  float o1, o2;
  rope::rotate_pair(1.f, 0.f, 0.f, 1.f, 0.f, 1.f, o1, o2);
  EXPECT_NEAR(o1, 0, 1e-7);
  EXPECT_NEAR(o2, 1, 1e-7);
  // A rotation keeps the pair's norm.
  const float a = 0.7f, c = std::cos(a), s = std::sin(a);
  rope::rotate_pair(3.f, -4.f, c, s, c, s, o1, o2);
  EXPECT_NEAR(o1 * o1 + o2 * o2, 25, 1e-4);
  EXPECT_NEAR(rope::rms_apply(2.f, 0.5f, 3.f), 3, 0);
  // (B=2, L=3, H=4) rows of a packed QKV view: head stride 8, token stride 96, batch stride 400.
  const rope::HeadRows rows{3, 4, 400, 96, 8};
  EXPECT_TRUE(rows.position(4 * 2 + 1) == 2);
  EXPECT_TRUE(rows.offset(4 * 3 + 4 * 1 + 2) == 400 + 96 + 16);  // b=1, l=1, h=2
}

static void sampler_step_math() {
  using namespace sampler_step;
  const double table[2 * kNumColumns] = {0.5, -0.5, 0.25, 0.75, 0, 0, 2, 0,  // row 0
                                         0.1, -0.9, 0.5, 0.25, 0.125, 0.0625, 4, 0};
  const Coeffs c0 = load_coeffs(table, 2, 0);
  const Coeffs c1 = load_coeffs(table, 2, 7);  // clamped to the last row
  EXPECT_NEAR(c1.c_in_next, 4, 0);
  EXPECT_NEAR(x0_from_output(2.f, 1.f, 9.f, false, c0), 0.5 * 2 - 0.5 * 1, 1e-7);
  EXPECT_NEAR(x0_from_output(2.f, 1.f, 9.f, true, c0), 9, 0);
  // The first step has no history: non-finite history with a zero coefficient must not leak in.
  EXPECT_NEAR(multistep_update(1.f, 2.f, NAN, INFINITY, c0), 0.25 + 0.75 * 2, 1e-7);
  EXPECT_NEAR(multistep_update(1.f, 2.f, 4.f, 8.f, c1), 0.5 + 0.25 * 2 + 0.125 * 4 + 0.0625 * 8, 1e-7);
  EXPECT_NEAR(next_network_input(3.f, 9.f, false, c1), 12, 0);
  EXPECT_NEAR(next_network_input(3.f, 9.f, true, c1), 9, 0);
}

int main() {
  welford_matches_two_pass();
  modulation_math();
  row_offsets();
  rope_math();
  sampler_step_math();
  return finish("test_shared_math");
}
