// Batched small d x d kernels (d <= 128): Gram matrices, coupled Newton-Schulz square root,
// Newton-Schulz pseudo-inverse and power iteration. One thread block per matrix (the Gram
// kernel: per matrix and 32x32 output tile).
//
// Shared or global working set (the iterative kernels)
// ----------------------------------------------------
// ns_sqrt_coupled and ns_pinv keep four d x d matrices live per block. That is 64 KB for
// float32 at d = 64, 256 KB for float32 and 512 KB for float64 at d = 128, more than any GPU's
// shared memory per block (227 KB on H100, 163 KB on A100). The launcher therefore picks,
// per call:
//   * shared: when scratch + working set fits the device's opt-in limit
//     (cudaDevAttrMaxSharedMemoryPerBlockOptin), the matrices live in dynamic shared memory
//     (cudaFuncAttributeMaxDynamicSharedMemorySize is raised for the kernel when needed);
//   * global: otherwise (or when asked to, for benchmarking), each block works in its own
//     slice of a caller-provided global workspace, which stays hot in L1/L2.
// The kernel body is the same template for both (kShared picks where `base` points), so the
// two paths cannot drift apart. Everything inside one block is ordered by __syncthreads(),
// which makes global-memory writes visible to the block's other threads just like shared
// ones; no pointer into a buffer that is written in the kernel is declared __restrict__,
// so the compiler cannot route its reads through the non-coherent read-only cache.
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

using detail::block_sum;
using detail::ceil_div;
using detail::group_sum;

constexpr int kThreads = 256;                          // 8 warps per block, every kernel here
constexpr size_t kScratchBytes = 32 * sizeof(double);  // block_sum scratch, start of dyn. smem
constexpr int kGemmRows = 4;                           // rows of C per thread in block_gemm
constexpr int kTile = 32;                              // Gram output tile (kTile x kTile)

// C = alpha * (A B) + beta * D + diag * I for d x d row-major matrices, computed by the whole
// block. Each thread owns kGemmRows consecutive rows of one column j: consecutive threads take
// consecutive j, so within a warp the reads of B (row k) are contiguous and the reads of A
// are the same address (a broadcast), both in shared and in global memory. The value of
// B[k][j] is reused for the kGemmRows rows (register blocking).
// C must not alias A or B (other threads still read them); it may alias D (each element of D
// is read by the thread that then writes it). D may be nullptr when beta == 0.
// The caller must __syncthreads() before reading C.
template <typename T>
__device__ void block_gemm(T* C, const T* A, const T* B, const T* D, int d, T alpha, T beta,
                           T diag) {
  const int row_groups = (d + kGemmRows - 1) / kGemmRows;
  const int work = row_groups * d;
  for (int w = threadIdx.x; w < work; w += blockDim.x) {
    const int j = w % d;
    const int i0 = (w / d) * kGemmRows;
    // Rows past the end (last group when d % kGemmRows != 0) recompute row d-1 and are not
    // stored: cheaper than a branch in the inner loop.
    const T* a[kGemmRows];
#pragma unroll
    for (int r = 0; r < kGemmRows; ++r) a[r] = A + static_cast<int64_t>(min(i0 + r, d - 1)) * d;
    T acc[kGemmRows];
#pragma unroll
    for (int r = 0; r < kGemmRows; ++r) acc[r] = T(0);
#pragma unroll 4
    for (int k = 0; k < d; ++k) {
      const T bkj = B[static_cast<int64_t>(k) * d + j];
#pragma unroll
      for (int r = 0; r < kGemmRows; ++r) acc[r] += a[r][k] * bkj;
    }
#pragma unroll
    for (int r = 0; r < kGemmRows; ++r) {
      const int i = i0 + r;
      if (i < d) {
        const int64_t o = static_cast<int64_t>(i) * d + j;
        T v = alpha * acc[r];
        if (D != nullptr) v += beta * D[o];
        if (i == j) v += diag;
        C[o] = v;
      }
    }
  }
}

template <typename T>
__device__ void block_copy(T* dst, const T* src, int64_t n) {
  for (int64_t x = threadIdx.x; x < n; x += blockDim.x) dst[x] = src[x];
}

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

// ---------------------------------------------------------------------------------------
// ns_sqrt_coupled
// ---------------------------------------------------------------------------------------
template <typename T, bool kShared>
__global__ void __launch_bounds__(kThreads)
    ns_sqrt_kernel(const T* __restrict__ A, int d, int64_t iters, T* Y_out, T* Z_out, T* gws) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t b = blockIdx.x;
  const int64_t dd = static_cast<int64_t>(d) * d;
  T* base = kShared ? reinterpret_cast<T*>(smem + kScratchBytes) : gws + b * 4 * dd;
  T* Y = base;
  T* Z = base + dd;
  T* Tm = base + 2 * dd;
  T* W = base + 3 * dd;  // destination of the next product, then swapped in

  const T* Ab = A + b * dd;
  for (int64_t x = threadIdx.x; x < dd; x += blockDim.x) {
    Y[x] = Ab[x];
    Z[x] = (x / d == x % d) ? T(1) : T(0);
  }
  __syncthreads();

  for (int64_t it = 0; it < iters; ++it) {
    block_gemm<T>(Tm, Z, Y, nullptr, d, T(-0.5), T(0), T(1.5));  // T = 1.5 I - 0.5 Z Y
    __syncthreads();
    block_gemm<T>(W, Y, Tm, nullptr, d, T(1), T(0), T(0));  // Y <- Y T
    __syncthreads();
    { T* t = Y; Y = W; W = t; }
    block_gemm<T>(W, Tm, Z, nullptr, d, T(1), T(0), T(0));  // Z <- T Z
    __syncthreads();
    { T* t = Z; Z = W; W = t; }
  }
  block_copy(Y_out + b * dd, Y, dd);
  block_copy(Z_out + b * dd, Z, dd);
}

// ---------------------------------------------------------------------------------------
// ns_pinv
// ---------------------------------------------------------------------------------------
// Why the stop rule is armed late: written per eigen-pair (a of A, x of X, y = a x), one step
// maps y -> 1 - (1 - y)^2 and changes x by (y / a)(1 - y). A component with small a starts at
// y0 = alpha a^2 << 1 and its change doubles every step until y nears 1/2, so on any input with
// a spread of eigenvalues ||Xn - X|| first GROWS for several steps before convergence sets
// in; "stop as soon as the step grows" would stop at step 2 on e.g. eigenvalues {1, 0.1}.
// After convergence the step is at rounding level, and on rank-deficient input it then
// grows x2 per step again (the null-space components of X double, in float32 visibly):
// that second growth is the one the rule must catch. The rule arms when either
//   * the step has fallen to arm_ratio (default 1e-2) of the largest step seen: the
//     transient is over and convergence has set in; or
//   * the step is at rounding level already, step <= 64 eps ||Xn||_F: needed when X0 is
//     converged from the start (e.g. rank-1 A with alpha = 1/lambda^2), where the steps only
//     ever grow and the first condition would never hold.
// Once armed, the first step that does not decrease (>= the previous one) is rejected and the
// matrix stops. Design notes: csrc/README.md.
// Every branch below depends only on block_sum results, identical in all threads, so the
// __syncthreads() inside the loop are reached uniformly.
template <typename T>
struct Eps;
template <>
struct Eps<float> {
  static constexpr double value = 1.1920928955078125e-07;
};
template <>
struct Eps<double> {
  static constexpr double value = 2.220446049250313e-16;
};
constexpr double kRoundingArm = 64.0;

template <typename T, bool kShared>
__global__ void __launch_bounds__(kThreads)
    ns_pinv_kernel(const T* __restrict__ A, const T* __restrict__ alpha, int d, int64_t iters,
                   double arm_ratio, T* X_out, int32_t* iters_out, T* gws) {
  extern __shared__ __align__(16) unsigned char smem[];
  double* scratch = reinterpret_cast<double*>(smem);
  const int64_t b = blockIdx.x;
  const int64_t dd = static_cast<int64_t>(d) * d;
  T* base = kShared ? reinterpret_cast<T*>(smem + kScratchBytes) : gws + b * 3 * dd;
  T* X = base;
  T* Xn = base + dd;
  T* P = base + 2 * dd;

  const T* Ab = A + b * dd;
  const T* Aw = Ab;  // A as read by the products: staged in shared memory when it fits
  if (kShared) {
    T* As = base + 3 * dd;
    block_copy(As, Ab, dd);
    Aw = As;
  }
  const T a0 = alpha[b];
  for (int64_t x = threadIdx.x; x < dd; x += blockDim.x) X[x] = a0 * Ab[x];
  __syncthreads();

  double prev = 0.0, max_step = 0.0;
  bool armed = false;
  int64_t used = 0;
  for (int64_t it = 1; it <= iters; ++it) {
    block_gemm<T>(P, X, Aw, nullptr, d, T(1), T(0), T(0));  // P = X A
    __syncthreads();
    block_gemm<T>(Xn, P, X, X, d, T(-1), T(2), T(0));  // Xn = 2X - (X A) X
    __syncthreads();
    double s2 = 0.0, n2 = 0.0;
    for (int64_t x = threadIdx.x; x < dd; x += blockDim.x) {
      const double xn = static_cast<double>(Xn[x]);
      const double diff = xn - static_cast<double>(X[x]);
      s2 += diff * diff;
      n2 += xn * xn;
    }
    const double step = sqrt(block_sum(s2, scratch));
    const double xn_norm = sqrt(block_sum(n2, scratch));
    if (armed && step >= prev) break;  // reject Xn: X is the best iterate
    { T* t = X; X = Xn; Xn = t; }
    used = it;
    max_step = fmax(max_step, step);
    if (step <= arm_ratio * max_step || step <= kRoundingArm * Eps<T>::value * xn_norm)
      armed = true;
    prev = step;
    if (step == 0.0) break;  // X A X == X exactly: further steps change nothing
  }
  block_copy(X_out + b * dd, X, dd);
  if (threadIdx.x == 0) iters_out[b] = static_cast<int32_t>(used);
}

// ---------------------------------------------------------------------------------------
// power_iteration
// ---------------------------------------------------------------------------------------
// Matrix-vector products are done a warp per row (lanes over the row: contiguous reads, no
// symmetry assumption needed there), norms through block_sum in float64.
template <typename T>
__device__ void block_matvec(T* w, const T* S, const T* v, int d) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  for (int i = warp; i < d; i += nwarps) {  // uniform per warp: full-mask shuffles are safe
    T acc = T(0);
    for (int j = lane; j < d; j += 32) acc += S[static_cast<int64_t>(i) * d + j] * v[j];
    acc = group_sum<32>(acc);
    if (lane == 0) w[i] = acc;
  }
}

template <typename T, bool kShared>
__global__ void __launch_bounds__(kThreads)
    power_kernel(const T* __restrict__ S, int d, int64_t iters, T* __restrict__ lambda_out) {
  extern __shared__ __align__(16) unsigned char smem[];
  double* scratch = reinterpret_cast<double*>(smem);
  T* v = reinterpret_cast<T*>(smem + kScratchBytes);
  T* w = v + d;
  const int64_t b = blockIdx.x;
  const int64_t dd = static_cast<int64_t>(d) * d;
  const T* Sb = S + b * dd;
  const T* Sm = Sb;
  if (kShared) {
    T* Ss = w + d;
    block_copy(Ss, Sb, dd);
    Sm = Ss;
  }
  // Start vector: all-ones plus a small deterministic, non-symmetric ripple (golden-ratio
  // fractional parts), so it is not orthogonal to the top eigenvector of e.g. a matrix whose
  // top eigenvector is (1, -1, 0, ...) / sqrt(2).
  double s0 = 0.0;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    const double ripple = static_cast<double>(i) * 0.6180339887498949;
    const double vi = 1.0 + 0.01 * ((ripple - floor(ripple)) - 0.5);
    v[i] = static_cast<T>(vi);
    s0 += vi * vi;
  }
  const double n0 = sqrt(block_sum(s0, scratch));  // > 0 for d >= 1
  for (int i = threadIdx.x; i < d; i += blockDim.x) v[i] = static_cast<T>(v[i] / n0);
  __syncthreads();

  for (int64_t it = 0; it < iters; ++it) {
    block_matvec(w, Sm, v, d);
    __syncthreads();
    double s2 = 0.0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) s2 += static_cast<double>(w[i]) * w[i];
    s2 = block_sum(s2, scratch);
    if (s2 == 0.0) break;  // S v = 0: the Rayleigh quotient below is 0 either way
    const double inv = 1.0 / sqrt(s2);
    for (int i = threadIdx.x; i < d; i += blockDim.x) v[i] = static_cast<T>(w[i] * inv);
    __syncthreads();
  }
  block_matvec(w, Sm, v, d);
  __syncthreads();
  double rq = 0.0;
  for (int i = threadIdx.x; i < d; i += blockDim.x) rq += static_cast<double>(v[i]) * w[i];
  rq = block_sum(rq, scratch);
  if (threadIdx.x == 0) lambda_out[b] = static_cast<T>(rq);
}

// ---------------------------------------------------------------------------------------
// Host helpers
// ---------------------------------------------------------------------------------------

// Opt-in shared memory per block of the current device (0 if it cannot be queried, which
// sends the caller down the global-memory path).
size_t smem_optin_limit() {
  int dev = 0;
  int v = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
    (void)cudaGetLastError();  // do not leave the query's error for the launch check
    return 0;
  }
  return static_cast<size_t>(v);
}

size_t iter_smem_bytes(int64_t d, size_t elem_size, int matrices) {
  return kScratchBytes + static_cast<size_t>(matrices) * static_cast<size_t>(d * d) * elem_size;
}

bool iter_uses_shared(int64_t d, size_t elem_size, int matrices, bool force_global) {
  return !force_global && iter_smem_bytes(d, elem_size, matrices) <= smem_optin_limit();
}

constexpr int kSqrtMatrices = 4;       // Y, Z, T, W
constexpr int kPinvMatrices = 3;       // X, Xn, P (+ a copy of A on the shared path)
constexpr int kPinvSharedMatrices = 4;

bool valid_small(int64_t B, int64_t d) {
  return B >= 0 && d >= 0 && d <= kMaxSmallDim && B <= 0x7fffffff;
}

// Launch `kernel` with `bytes` of dynamic shared memory, raising the kernel's opt-in limit
// first when it is above the default 48 KB.
template <typename Kernel, typename... Args>
cudaError_t launch_dyn(Kernel kernel, int64_t blocks, size_t bytes, cudaStream_t stream,
                       Args... args) {
  if (bytes > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
    if (err != cudaSuccess) return err;
  }
  kernel<<<dim3(static_cast<unsigned>(blocks)), kThreads, bytes, stream>>>(args...);
  return cudaGetLastError();
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Public launchers
// ---------------------------------------------------------------------------------------

int64_t ns_sqrt_workspace_elems(int64_t B, int64_t d, size_t elem_size, bool force_global) {
  if (!valid_small(B, d) || iter_uses_shared(d, elem_size, kSqrtMatrices, force_global)) return 0;
  return B * kSqrtMatrices * d * d;
}

int64_t ns_pinv_workspace_elems(int64_t B, int64_t d, size_t elem_size, bool force_global) {
  if (!valid_small(B, d) || iter_uses_shared(d, elem_size, kPinvSharedMatrices, force_global))
    return 0;
  return B * kPinvMatrices * d * d;
}

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

template <typename scalar_t>
cudaError_t ns_sqrt_coupled(const scalar_t* A, int64_t B, int64_t d, int64_t iters,
                            scalar_t* Y_out, scalar_t* Z_out, scalar_t* workspace,
                            bool force_global, cudaStream_t stream) {
  if (!valid_small(B, d) || iters < 0) return cudaErrorInvalidValue;
  if (B == 0 || d == 0) return cudaSuccess;
  const int di = static_cast<int>(d);
  if (iter_uses_shared(d, sizeof(scalar_t), kSqrtMatrices, force_global)) {
    return launch_dyn(ns_sqrt_kernel<scalar_t, true>, B,
                      iter_smem_bytes(d, sizeof(scalar_t), kSqrtMatrices), stream, A, di, iters,
                      Y_out, Z_out, static_cast<scalar_t*>(nullptr));
  }
  if (workspace == nullptr) return cudaErrorInvalidValue;
  return launch_dyn(ns_sqrt_kernel<scalar_t, false>, B, kScratchBytes, stream, A, di, iters,
                    Y_out, Z_out, workspace);
}

template <typename scalar_t>
cudaError_t ns_pinv(const scalar_t* A, const scalar_t* alpha, int64_t B, int64_t d,
                    int64_t iters, double arm_ratio, scalar_t* X_out, int32_t* iters_out,
                    scalar_t* workspace, bool force_global, cudaStream_t stream) {
  if (!valid_small(B, d) || iters < 0 || iters > 0x7fffffff || !(arm_ratio >= 0.0))
    return cudaErrorInvalidValue;
  if (B == 0) return cudaSuccess;
  if (d == 0) {  // empty matrices: nothing to iterate, report 0 updates
    return cudaMemsetAsync(iters_out, 0, static_cast<size_t>(B) * sizeof(int32_t), stream);
  }
  const int di = static_cast<int>(d);
  if (iter_uses_shared(d, sizeof(scalar_t), kPinvSharedMatrices, force_global)) {
    return launch_dyn(ns_pinv_kernel<scalar_t, true>, B,
                      iter_smem_bytes(d, sizeof(scalar_t), kPinvSharedMatrices), stream, A, alpha,
                      di, iters, arm_ratio, X_out, iters_out, static_cast<scalar_t*>(nullptr));
  }
  if (workspace == nullptr) return cudaErrorInvalidValue;
  return launch_dyn(ns_pinv_kernel<scalar_t, false>, B, kScratchBytes, stream, A, alpha, di,
                    iters, arm_ratio, X_out, iters_out, workspace);
}

template <typename scalar_t>
cudaError_t power_iteration(const scalar_t* S, int64_t B, int64_t d, int64_t iters,
                            scalar_t* lambda_out, bool force_global, cudaStream_t stream) {
  if (!valid_small(B, d) || iters < 0) return cudaErrorInvalidValue;
  if (B == 0) return cudaSuccess;
  if (d == 0) return cudaMemsetAsync(lambda_out, 0, static_cast<size_t>(B) * sizeof(scalar_t), stream);
  const int di = static_cast<int>(d);
  const size_t vec_bytes = kScratchBytes + 2 * static_cast<size_t>(d) * sizeof(scalar_t);
  const size_t shared_bytes = vec_bytes + static_cast<size_t>(d * d) * sizeof(scalar_t);
  if (!force_global && shared_bytes <= smem_optin_limit()) {
    return launch_dyn(power_kernel<scalar_t, true>, B, shared_bytes, stream, S, di, iters,
                      lambda_out);
  }
  return launch_dyn(power_kernel<scalar_t, false>, B, vec_bytes, stream, S, di, iters,
                    lambda_out);
}

#define DLRL_INSTANTIATE_SMALL(T)                                                           \
  template cudaError_t gram_batched<T>(const T*, int64_t, int64_t, int64_t, T*,             \
                                       cudaStream_t);                                       \
  template cudaError_t ns_sqrt_coupled<T>(const T*, int64_t, int64_t, int64_t, T*, T*, T*,  \
                                          bool, cudaStream_t);                              \
  template cudaError_t ns_pinv<T>(const T*, const T*, int64_t, int64_t, int64_t, double, T*, \
                                  int32_t*, T*, bool, cudaStream_t);                        \
  template cudaError_t power_iteration<T>(const T*, int64_t, int64_t, int64_t, T*, bool,    \
                                          cudaStream_t);

DLRL_INSTANTIATE_SMALL(float)
DLRL_INSTANTIATE_SMALL(double)
#undef DLRL_INSTANTIATE_SMALL

}  // namespace cuda
}  // namespace dlrl
