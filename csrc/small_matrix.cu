// Batched small d x d kernel (d <= 128): Gram matrices S_b = Y_b^T Y_b, one thread block per
// (matrix, 32x32 output tile).
//
// The iterative small-matrix kernels that used to live here (coupled Newton-Schulz square
// root, Newton-Schulz pseudo-inverse, power iteration) were removed: nothing in the library
// reached them (the Newton-Schulz orchestration lives once, in dlrl_kernels/_newton.py, with a
// matmul primitive plugged in), and a second copy of the iteration with its own stop rule is
// exactly what the project decided against. gram_batched stays: it is gram's CUDA entry.
//
// Plain CUDA, no torch headers (see csrc/README.md).


#include <algorithm>
#include <cmath>
#include <cstdint>

#include "dlrl_device.cuh"
#include "dlrl_kernels.h"

namespace dlrl {
namespace cuda {
namespace {

using detail::ceil_div;
constexpr int kThreads = 256;  // 8 warps per block
constexpr int kTile = 32;      // Gram output tile (kTile x kTile)

// ---------------------------------------------------------------------------------------
// gram_batched
// ---------------------------------------------------------------------------------------
// Block (32, 8) computes the 32x32 tile (ti, tj) of S_b; thread (tx, ty) owns rows
// ty, ty+8, ty+16, ty+24 of the tile in column tx. Y_b is streamed in chunks of 32 rows: the
// chunk's columns of the i- and j-blocks are staged in shared memory (padded against bank
// conflicts), loads are coalesced along d. Each S entry sums its r products in the same order
// as its mirror entry, so the result is symmetric.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    gram_kernel(const T* __restrict__ Y, int64_t r, int d, int tiles_per_side,
                T* __restrict__ S) {
  __shared__ T Yi[kTile][kTile + 1];
  __shared__ T Yj[kTile][kTile + 1];
  constexpr int kRowsPerThread = kTile / 8;
  const int64_t b = blockIdx.x;
  const int ti = blockIdx.y / tiles_per_side;
  const int tj = blockIdx.y % tiles_per_side;
  const int i0 = ti * kTile;
  const int j0 = tj * kTile;
  const int tx = threadIdx.x;
  const int ty = threadIdx.y;
  const T* Yb = Y + b * r * d;

  T acc[kRowsPerThread];
#pragma unroll
  for (int q = 0; q < kRowsPerThread; ++q) acc[q] = T(0);

  for (int64_t r0 = 0; r0 < r; r0 += kTile) {
#pragma unroll
    for (int q = 0; q < kRowsPerThread; ++q) {
      const int rr = ty + 8 * q;
      const int64_t row = r0 + rr;
      const bool row_ok = row < r;
      Yi[rr][tx] = (row_ok && i0 + tx < d) ? Yb[row * d + i0 + tx] : T(0);
      Yj[rr][tx] = (row_ok && j0 + tx < d) ? Yb[row * d + j0 + tx] : T(0);
    }
    __syncthreads();
#pragma unroll 8
    for (int rr = 0; rr < kTile; ++rr) {
      const T yj = Yj[rr][tx];
#pragma unroll
      for (int q = 0; q < kRowsPerThread; ++q) acc[q] += Yi[rr][ty + 8 * q] * yj;
    }
    __syncthreads();
  }
  const int j = j0 + tx;
#pragma unroll
  for (int q = 0; q < kRowsPerThread; ++q) {
    const int i = i0 + ty + 8 * q;
    if (i < d && j < d) S[(b * d + i) * d + j] = acc[q];
  }
}


bool valid_small(int64_t B, int64_t d) {
  return B >= 0 && d >= 0 && d <= kMaxSmallDim && B <= 0x7fffffff;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Public launchers
// ---------------------------------------------------------------------------------------

template <typename scalar_t>
cudaError_t gram_batched(const scalar_t* Y, int64_t B, int64_t r, int64_t d, scalar_t* S,
                         cudaStream_t stream) {
  if (!valid_small(B, d) || r < 0) return cudaErrorInvalidValue;
  if (B == 0 || d == 0) return cudaSuccess;
  const int tiles = static_cast<int>(ceil_div(d, kTile));
  const dim3 grid(static_cast<unsigned>(B), static_cast<unsigned>(tiles * tiles));
  gram_kernel<scalar_t><<<grid, dim3(kTile, kThreads / kTile), 0, stream>>>(
      Y, r, static_cast<int>(d), tiles, S);
  return cudaGetLastError();
}

#define DLRL_INSTANTIATE_SMALL(T)                                               \
  template cudaError_t gram_batched<T>(const T*, int64_t, int64_t, int64_t, T*, \
                                       cudaStream_t);

DLRL_INSTANTIATE_SMALL(float)
DLRL_INSTANTIATE_SMALL(double)
#undef DLRL_INSTANTIATE_SMALL

}  // namespace cuda
}  // namespace dlrl
