// Shared by the CPU (.cpp) and CUDA (.cu) kernels: the per-element math lives here once, as
// __host__ __device__ inline functions, so the CPU tests exercise the arithmetic the GPU runs.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define COSMOS_HD __host__ __device__ __forceinline__
#else
#define COSMOS_HD inline
#endif

namespace cosmos {

// Rows of a (N0, N1, N2, D) grid: row r -> (i0, i1, i2). Each operand has its own three strides
// (0 for a broadcast dimension); the last dimension is contiguous.
struct RowGrid {
  int64_t n1;
  int64_t n2;
};

struct RowStrides {
  int64_t s0, s1, s2;
  COSMOS_HD int64_t offset(const RowGrid& g, int64_t row) const {
    const int64_t i2 = row % g.n2;
    const int64_t rest = row / g.n2;
    return (rest / g.n1) * s0 + (rest % g.n1) * s1 + i2 * s2;
  }
};

// 1 / sqrt(variance + eps), and the RMSNorm scale 1 / sqrt(mean(x^2) + eps) of `d` elements.
COSMOS_HD float inv_std(float variance, float eps) {
#if defined(__CUDA_ARCH__)
  return rsqrtf(variance + eps);
#else
  return 1.f / __builtin_sqrtf(variance + eps);
#endif
}

COSMOS_HD float rms_scale(float sum_squares, int64_t d, float eps) {
  return inv_std(sum_squares / static_cast<float>(d), eps);
}

// Welford running statistics, merged with Chan's formula: stable for rows with a large mean.
struct Welford {
  float mean = 0.f;
  float m2 = 0.f;
  float count = 0.f;
};

COSMOS_HD Welford welford_push(Welford w, float v) {
  w.count += 1.f;
  const float delta = v - w.mean;
  w.mean += delta / w.count;
  w.m2 += delta * (v - w.mean);
  return w;
}

COSMOS_HD Welford welford_merge(Welford a, Welford b) {
  const float count = a.count + b.count;
  if (count == 0.f) return a;
  const float delta = b.mean - a.mean;
  const float wb = b.count / count;
  Welford out;
  out.count = count;
  out.mean = a.mean + delta * wb;
  out.m2 = a.m2 + b.m2 + delta * delta * a.count * wb;
  return out;
}

}  // namespace cosmos
