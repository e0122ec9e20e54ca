// Device helpers shared by the CUDA kernels: 16-byte packets and block reductions.
#pragma once

#include <cuda_runtime.h>

#include "common/common.h"

namespace cosmos::cuda {

// A 16-byte packet of VEC elements: one vector load / store instruction.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Packet {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ Packet<T, VEC> load_packet(const T* p) {
  return *reinterpret_cast<const Packet<T, VEC>*>(p);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_packet(T* p, const Packet<T, VEC>& v) {
  *reinterpret_cast<Packet<T, VEC>*>(p) = v;
}

__device__ __forceinline__ Welford warp_merge(Welford w) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    Welford other;
    other.mean = __shfl_xor_sync(0xffffffffu, w.mean, offset);
    other.m2 = __shfl_xor_sync(0xffffffffu, w.m2, offset);
    other.count = __shfl_xor_sync(0xffffffffu, w.count, offset);
    w = welford_merge(w, other);
  }
  return w;
}

// Merge the statistics of all threads of the block; every thread gets the result.
__device__ __forceinline__ Welford block_merge(Welford w) {
  __shared__ Welford partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  w = warp_merge(w);
  if (lane == 0) partial[warp] = w;
  __syncthreads();
  if (warp == 0) {
    w = lane < warps ? partial[lane] : Welford{};
    w = warp_merge(w);
    if (lane == 0) partial[0] = w;
  }
  __syncthreads();
  return partial[0];
}

__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? partial[lane] : 0.f;
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0) partial[0] = v;
  }
  __syncthreads();
  return partial[0];
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace cosmos::cuda
