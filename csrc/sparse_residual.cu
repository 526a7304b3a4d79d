// Sparse (observed-entries-only) kernels of the DLRL loss and its gradient.
//
//   sparse_residual         e[k] = <U[rows[k]], Vt[cols[k]]> - values[k],  loss = 1/2 sum e^2
//   sparse_grad_compressed  out[i] = scale * sum_{k in row i} e[k] * dense[idx[k]]   (CSR/CSC)
//   sparse_grad_coo_atomic  out[dst[k]] += scale * e[k] * src[src_idx[k]]           (COO)
//
// Plain CUDA: no torch headers, so the file compiles with a bare `nvcc -c` (CI) as well as
// inside the torch extension. See csrc/README.md for the launch configurations.

#include <algorithm>
#include <cstdint>

#include "dlrl_device.cuh"
#include "dlrl_kernels.h"

namespace dlrl {
namespace cuda {
namespace {

using detail::ceil_div;
using detail::group_sum;
using detail::kFullMask;
using detail::vget;
using detail::VecT;
using detail::vzero;

constexpr int kThreads = 256;  // every kernel in this file: 8 warps per block

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// ---------------------------------------------------------------------------------------
// sparse_residual
// ---------------------------------------------------------------------------------------
// A group of G lanes computes one dot product: each lane takes every G-th VEC-wide chunk of
// the two rows, then the group reduces with shuffles. G is the smallest power of two >= the
// number of chunks (min 4, max 32), so for small d several nonzeros share a warp instead of
// leaving most lanes idle. The warp walks the nonzeros in strides of (groups per warp) so that
// all 32 lanes always execute the shuffles together, even on the last, partial stride.
// Each block reduces its squared residuals in float64 and writes one partial; a one-block
// second pass sums the partials in a fixed order, so the loss is deterministic.
template <typename T, typename I, int VEC, int G>
__global__ void __launch_bounds__(kThreads)
    residual_kernel(const T* __restrict__ U, const T* __restrict__ Vt, const I* __restrict__ rows,
                    const I* __restrict__ cols, const T* __restrict__ values, int64_t nnz,
                    int64_t d, T* __restrict__ e, double* __restrict__ partials) {
  using V = typename VecT<T, VEC>::type;
  constexpr int kGroupsPerWarp = 32 / G;
  __shared__ double scratch[32];

  const int lane = threadIdx.x & 31;
  const int sub = lane / G;  // which nonzero of the warp's current stride
  const int gl = lane % G;   // lane within the group
  const int64_t nvec = d / VEC;
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t nwarps = (int64_t(gridDim.x) * blockDim.x) >> 5;

  double sq = 0.0;
  for (int64_t base = warp * kGroupsPerWarp; base < nnz; base += nwarps * kGroupsPerWarp) {
    const int64_t k = base + sub;
    const bool valid = k < nnz;
    T dot = T(0);
    if (valid) {
      const V* u = reinterpret_cast<const V*>(U + int64_t(rows[k]) * d);
      const V* v = reinterpret_cast<const V*>(Vt + int64_t(cols[k]) * d);
      for (int64_t j = gl; j < nvec; j += G) {
        V a = u[j];
        V b = v[j];
#pragma unroll
        for (int c = 0; c < VEC; ++c) dot += vget(a, c) * vget(b, c);
      }
    }
    dot = group_sum<G>(dot);  // whole warp participates
    if (valid && gl == 0) {
      const T ek = dot - values[k];
      e[k] = ek;
      sq += double(ek) * double(ek);
    }
  }
  if (partials != nullptr) {  // uniform over the grid
    const double total = detail::block_sum(sq, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = total;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    residual_finalize_kernel(const double* __restrict__ partials, int64_t n, T* __restrict__ loss) {
  __shared__ double scratch[32];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += partials[i];
  s = detail::block_sum(s, scratch);
  if (threadIdx.x == 0) *loss = static_cast<T>(0.5 * s);
}

template <typename T, typename I, int VEC, int G>
cudaError_t launch_residual(const T* U, const T* Vt, const I* rows, const I* cols,
                            const T* values, int64_t nnz, int64_t d, T* e, double* partials,
                            int64_t* num_blocks, cudaStream_t stream) {
  constexpr int64_t kGroupsPerBlock = kThreads / G;
  const int64_t blocks = std::min<int64_t>(ceil_div(nnz, kGroupsPerBlock), kResidualMaxBlocks);
  *num_blocks = blocks;
  residual_kernel<T, I, VEC, G>
      <<<dim3(static_cast<unsigned>(blocks)), kThreads, 0, stream>>>(U, Vt, rows, cols, values,
                                                                    nnz, d, e, partials);
  return cudaGetLastError();
}

template <typename T, typename I, int VEC>
cudaError_t dispatch_residual_group(const T* U, const T* Vt, const I* rows, const I* cols,
                                    const T* values, int64_t nnz, int64_t d, T* e,
                                    double* partials, int64_t* num_blocks, cudaStream_t stream) {
  switch (detail::pow2_group(d / VEC, 4)) {
    case 4:
      return launch_residual<T, I, VEC, 4>(U, Vt, rows, cols, values, nnz, d, e, partials,
                                           num_blocks, stream);
    case 8:
      return launch_residual<T, I, VEC, 8>(U, Vt, rows, cols, values, nnz, d, e, partials,
                                           num_blocks, stream);
    case 16:
      return launch_residual<T, I, VEC, 16>(U, Vt, rows, cols, values, nnz, d, e, partials,
                                            num_blocks, stream);
    default:
      return launch_residual<T, I, VEC, 32>(U, Vt, rows, cols, values, nnz, d, e, partials,
                                            num_blocks, stream);
  }
}

// ---------------------------------------------------------------------------------------
// sparse_grad_compressed (CSR rows / CSC columns)
// ---------------------------------------------------------------------------------------
// One warp per output row. The warp is split into 32/G groups of G lanes; lane gl of every
// group owns the VEC-wide column chunk (blockIdx.y * G + gl), and group s accumulates entries
// start+s, start+s+32/G, ... of the row, so a short row with small d still keeps all lanes busy
// and several dense rows are in flight at once. The groups are combined with xor-shuffles at
// the end and group 0 writes. G = smallest power of two >= d/VEC (max 32); when d/VEC > 32
// the columns are split over blockIdx.y (each y-slice re-reads the row's indices, which are
// small and cached). No atomics: deterministic, and each output row is written exactly once.
template <typename T, typename I, int VEC, int G>
__global__ void __launch_bounds__(kThreads)
    grad_compressed_kernel(const I* __restrict__ ptr, const I* __restrict__ idx,
                           const T* __restrict__ e, const T* __restrict__ dense, int64_t num_rows,
                           int64_t d, T scale, T* __restrict__ out) {
  using V = typename VecT<T, VEC>::type;
  constexpr int kGroupsPerWarp = 32 / G;

  const int64_t row = int64_t(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5);
  if (row >= num_rows) return;  // whole warp leaves together: shuffles below stay full-warp

  const int lane = threadIdx.x & 31;
  const int sub = lane / G;
  const int gl = lane % G;
  const int64_t nvec = d / VEC;
  const int64_t vi = int64_t(blockIdx.y) * G + gl;  // the chunk of the row this lane owns
  const bool col_ok = vi < nvec;

  const int64_t start = static_cast<int64_t>(ptr[row]);
  const int64_t end = static_cast<int64_t>(ptr[row + 1]);

  V acc = vzero<V>();
  if (col_ok) {
    for (int64_t k = start + sub; k < end; k += kGroupsPerWarp) {
      const T ek = e[k];
      V x = reinterpret_cast<const V*>(dense + int64_t(idx[k]) * d)[vi];
#pragma unroll
      for (int c = 0; c < VEC; ++c) vget(acc, c) += ek * vget(x, c);
    }
  }
#pragma unroll
  for (int off = G; off < 32; off <<= 1) {
#pragma unroll
    for (int c = 0; c < VEC; ++c) vget(acc, c) += __shfl_xor_sync(kFullMask, vget(acc, c), off);
  }
  if (sub == 0 && col_ok) {
    V o = vzero<V>();  // empty row: exact zeros (no 0 * scale, which could be -0 or NaN)
    if (end > start) {
#pragma unroll
      for (int c = 0; c < VEC; ++c) vget(o, c) = vget(acc, c) * scale;
    }
    reinterpret_cast<V*>(out + row * d)[vi] = o;
  }
}

template <typename T, typename I, int VEC, int G>
cudaError_t launch_grad_compressed(const I* ptr, const I* idx, const T* e, const T* dense,
                                   int64_t num_rows, int64_t d, double scale, T* out,
                                   cudaStream_t stream) {
  const int64_t nvec = d / VEC;
  const int64_t col_slices = std::max<int64_t>(1, ceil_div(nvec, G));
  const int64_t row_blocks = ceil_div(num_rows, kThreads / 32);
  if (col_slices > 65535 || row_blocks > 0x7fffffff) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(row_blocks), static_cast<unsigned>(col_slices));
  grad_compressed_kernel<T, I, VEC, G>
      <<<grid, kThreads, 0, stream>>>(ptr, idx, e, dense, num_rows, d, static_cast<T>(scale), out);
  return cudaGetLastError();
}

template <typename T, typename I, int VEC>
cudaError_t dispatch_grad_group(const I* ptr, const I* idx, const T* e, const T* dense,
                                int64_t num_rows, int64_t d, double scale, T* out,
                                cudaStream_t stream) {
  switch (detail::pow2_group(d / VEC, 2)) {
    case 2:
      return launch_grad_compressed<T, I, VEC, 2>(ptr, idx, e, dense, num_rows, d, scale, out,
                                                  stream);
    case 4:
      return launch_grad_compressed<T, I, VEC, 4>(ptr, idx, e, dense, num_rows, d, scale, out,
                                                  stream);
    case 8:
      return launch_grad_compressed<T, I, VEC, 8>(ptr, idx, e, dense, num_rows, d, scale, out,
                                                  stream);
    case 16:
      return launch_grad_compressed<T, I, VEC, 16>(ptr, idx, e, dense, num_rows, d, scale, out,
                                                   stream);
    default:
      return launch_grad_compressed<T, I, VEC, 32>(ptr, idx, e, dense, num_rows, d, scale, out,
                                                   stream);
  }
}

// ---------------------------------------------------------------------------------------
// sparse_grad_coo_atomic
// ---------------------------------------------------------------------------------------
// A group of G lanes per nonzero, lanes over the d columns, one atomicAdd per element.
// Grid-stride over the nonzeros. Scalar loads/atomics: vector atomics are Hopper-only.
template <typename T, typename I, int G>
__global__ void __launch_bounds__(kThreads)
    grad_coo_atomic_kernel(const I* __restrict__ src_idx, const I* __restrict__ dst_idx,
                           const T* __restrict__ e, const T* __restrict__ src, int64_t nnz,
                           int64_t d, T scale, T* out) {
  const int gl = threadIdx.x % G;
  const int64_t group = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / G;
  const int64_t ngroups = (int64_t(gridDim.x) * blockDim.x) / G;
  for (int64_t k = group; k < nnz; k += ngroups) {
    const T w = scale * e[k];
    const T* s = src + int64_t(src_idx[k]) * d;
    T* o = out + int64_t(dst_idx[k]) * d;
    for (int64_t j = gl; j < d; j += G) detail::atomic_add(o + j, w * s[j]);
  }
}

template <typename T, typename I, int G>
cudaError_t launch_coo_atomic(const I* src_idx, const I* dst_idx, const T* e, const T* src,
                              int64_t nnz, int64_t d, double scale, T* out, cudaStream_t stream) {
  constexpr int64_t kGroupsPerBlock = kThreads / G;
  const int64_t blocks = std::min<int64_t>(ceil_div(nnz, kGroupsPerBlock), int64_t(1) << 16);
  grad_coo_atomic_kernel<T, I, G><<<dim3(static_cast<unsigned>(blocks)), kThreads, 0, stream>>>(
      src_idx, dst_idx, e, src, nnz, d, static_cast<T>(scale), out);
  return cudaGetLastError();
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Public launchers
// ---------------------------------------------------------------------------------------

template <typename scalar_t, typename index_t>
cudaError_t sparse_residual(const scalar_t* U, const scalar_t* Vt, const index_t* rows,
                            const index_t* cols, const scalar_t* values, int64_t nnz, int64_t d,
                            scalar_t* e, scalar_t* loss, double* partials, cudaStream_t stream) {
  if (nnz < 0 || d < 0) return cudaErrorInvalidValue;
  if (loss != nullptr && partials == nullptr) return cudaErrorInvalidValue;
  double* part = loss != nullptr ? partials : nullptr;
  int64_t num_blocks = 0;
  if (nnz > 0) {
    constexpr int W = detail::WideVec<scalar_t>::value;
    const bool wide = d % W == 0 && aligned16(U) && aligned16(Vt);
    const cudaError_t err =
        wide ? dispatch_residual_group<scalar_t, index_t, W>(U, Vt, rows, cols, values, nnz, d,
                                                             e, part, &num_blocks, stream)
             : dispatch_residual_group<scalar_t, index_t, 1>(U, Vt, rows, cols, values, nnz, d,
                                                             e, part, &num_blocks, stream);
    if (err != cudaSuccess) return err;
  }
  if (loss != nullptr) {  // also for nnz == 0: writes loss = 0
    residual_finalize_kernel<scalar_t><<<1, kThreads, 0, stream>>>(partials, num_blocks, loss);
    return cudaGetLastError();
  }
  return cudaSuccess;
}

template <typename scalar_t, typename index_t>
cudaError_t sparse_grad_compressed(const index_t* ptr, const index_t* idx, const scalar_t* e,
                                   const scalar_t* dense, int64_t num_out_rows, int64_t d,
                                   double scale, scalar_t* out, cudaStream_t stream) {
  if (num_out_rows < 0 || d < 0) return cudaErrorInvalidValue;
  if (num_out_rows == 0 || d == 0) return cudaSuccess;
  constexpr int W = detail::WideVec<scalar_t>::value;
  const bool wide = d % W == 0 && aligned16(dense) && aligned16(out);
  return wide ? dispatch_grad_group<scalar_t, index_t, W>(ptr, idx, e, dense, num_out_rows, d,
                                                          scale, out, stream)
              : dispatch_grad_group<scalar_t, index_t, 1>(ptr, idx, e, dense, num_out_rows, d,
                                                          scale, out, stream);
}

template <typename scalar_t, typename index_t>
cudaError_t sparse_grad_coo_atomic(const index_t* src_idx, const index_t* dst_idx,
                                   const scalar_t* e, const scalar_t* src, int64_t nnz, int64_t d,
                                   double scale, scalar_t* out, cudaStream_t stream) {
  if (nnz < 0 || d < 0) return cudaErrorInvalidValue;
  if (nnz == 0 || d == 0) return cudaSuccess;
  switch (detail::pow2_group(d, 4)) {
    case 4:
      return launch_coo_atomic<scalar_t, index_t, 4>(src_idx, dst_idx, e, src, nnz, d, scale,
                                                     out, stream);
    case 8:
      return launch_coo_atomic<scalar_t, index_t, 8>(src_idx, dst_idx, e, src, nnz, d, scale,
                                                     out, stream);
    case 16:
      return launch_coo_atomic<scalar_t, index_t, 16>(src_idx, dst_idx, e, src, nnz, d, scale,
                                                      out, stream);
    default:
      return launch_coo_atomic<scalar_t, index_t, 32>(src_idx, dst_idx, e, src, nnz, d, scale,
                                                      out, stream);
  }
}

// Explicit instantiations: {float, double} x {int32, int64}.
#define DLRL_INSTANTIATE_SPARSE(T, I)                                                         \
  template cudaError_t sparse_residual<T, I>(const T*, const T*, const I*, const I*, const T*, \
                                             int64_t, int64_t, T*, T*, double*, cudaStream_t); \
  template cudaError_t sparse_grad_compressed<T, I>(const I*, const I*, const T*, const T*,    \
                                                    int64_t, int64_t, double, T*,             \
                                                    cudaStream_t);                            \
  template cudaError_t sparse_grad_coo_atomic<T, I>(const I*, const I*, const T*, const T*,    \
                                                    int64_t, int64_t, double, T*, cudaStream_t);

DLRL_INSTANTIATE_SPARSE(float, int32_t)
DLRL_INSTANTIATE_SPARSE(float, int64_t)
DLRL_INSTANTIATE_SPARSE(double, int32_t)
DLRL_INSTANTIATE_SPARSE(double, int64_t)
#undef DLRL_INSTANTIATE_SPARSE

}  // namespace cuda
}  // namespace dlrl
