// Device-side helpers shared by the dlrl .cu files (not compiled on its own: setup.py and
// .ci/compile_cuda.sh only pick up *.cu / *.cpp).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace dlrl {
namespace cuda {
namespace detail {

constexpr unsigned kFullMask = 0xffffffffu;

// Vector type used for wide loads of a row: float4 (16 B) for float, double2 (16 B) for
// double. VEC = 1 means plain scalar loads (d not divisible, or a pointer not 16 B aligned).
template <typename T, int VEC>
struct VecT;
template <typename T>
struct VecT<T, 1> {
  using type = T;
};
template <>
struct VecT<float, 4> {
  using type = float4;
};
template <>
struct VecT<double, 2> {
  using type = double2;
};

// The widest VEC for each scalar type (16-byte loads).
template <typename T>
struct WideVec;
template <>
struct WideVec<float> {
  static constexpr int value = 4;
};
template <>
struct WideVec<double> {
  static constexpr int value = 2;
};

// Uniform element access to a vector register, so the kernels can be written once for
// VEC = 1, 2, 4.
template <typename T>
__device__ __forceinline__ T& vget(T& v, int) { return v; }
__device__ __forceinline__ float& vget(float4& v, int c) {
  return c == 0 ? v.x : (c == 1 ? v.y : (c == 2 ? v.z : v.w));
}
__device__ __forceinline__ double& vget(double2& v, int c) { return c == 0 ? v.x : v.y; }

template <typename V>
__device__ __forceinline__ V vzero() {
  V v;
  unsigned char* p = reinterpret_cast<unsigned char*>(&v);
#pragma unroll
  for (unsigned i = 0; i < sizeof(V); ++i) p[i] = 0;
  return v;
}

// Sum over groups of G consecutive lanes (G a power of two <= 32); every lane of the warp
// must call it (full mask), every lane of a group gets the group's sum.
template <int G, typename T>
__device__ __forceinline__ T group_sum(T v) {
#pragma unroll
  for (int off = G / 2; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

// Sum over the whole block, returned to every thread. `scratch` holds >= 32 doubles of
// shared memory. Contains __syncthreads(): call it from uniform control flow only.
__device__ __forceinline__ double block_sum(double v, double* scratch) {
  v = group_sum<32>(v);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwarps = (blockDim.x + 31) >> 5;
  __syncthreads();  // the previous call's readers of scratch[0] are done
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    double w = lane < nwarps ? scratch[lane] : 0.0;
    w = group_sum<32>(w);
    if (lane == 0) scratch[0] = w;
  }
  __syncthreads();
  return scratch[0];
}

// atomicAdd for double exists from sm_60; keep a CAS loop for older targets so a torch arch
// list that still names them does not break the build.
__device__ __forceinline__ float atomic_add(float* addr, float v) { return atomicAdd(addr, v); }
__device__ __forceinline__ double atomic_add(double* addr, double v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 600
  unsigned long long* a = reinterpret_cast<unsigned long long*>(addr);
  unsigned long long old = *a, assumed;
  do {
    assumed = old;
    old = atomicCAS(a, assumed, __double_as_longlong(v + __longlong_as_double(assumed)));
  } while (assumed != old);
  return __longlong_as_double(old);
#else
  return atomicAdd(addr, v);
#endif
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Smallest power of two in [lo, 32] that is >= n.
inline int pow2_group(int64_t n, int lo) {
  int g = lo;
  while (g < 32 && g < n) g <<= 1;
  return g;
}

}  // namespace detail
}  // namespace cuda
}  // namespace dlrl
