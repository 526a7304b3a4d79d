// Host-side declarations of the dlrl CUDA launchers.
//
// This header is plain C++ + the CUDA runtime API: no torch, no ATen. It is included by the
// .cu files (which define and explicitly instantiate the templates) and by bindings.cpp (which
// checks torch tensors and calls these with raw pointers and the current stream).
//
// Conventions shared by every launcher:
//   * all pointers are device pointers to contiguous row-major storage;
//   * the launcher only enqueues work on `stream`: it never synchronises and never allocates;
//   * the return value is the cudaError_t of the launch (cudaGetLastError() right after it),
//     cudaSuccess when there was nothing to do, cudaErrorInvalidValue for a bad argument that
//     the launcher itself can see (negative size, missing workspace);
//   * index values (rows, cols, CSR/CSC pointers) are NOT range-checked on the device: the
//     Python op layer validates them (dlrl_kernels/_validate.py) before calling in.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace dlrl {
namespace cuda {

// ---------------------------------------------------------------------------------------
// sparse_residual.cu
// ---------------------------------------------------------------------------------------

// Capacity (in doubles) of the `partials` workspace that sparse_residual needs: one slot per
// block of the first pass. A compile-time constant so the caller can allocate it up front.
constexpr int64_t kResidualMaxBlocks = 2048;

// e[k] = dot(U[rows[k], :], Vt[cols[k], :]) - values[k]     for k in [0, nnz)
// loss = 1/2 * sum_k e[k]^2, accumulated in float64 and written (cast to scalar_t) to *loss.
// U is (m, d), Vt is (n, d). `loss` may be nullptr (then `partials` is unused and may be too);
// otherwise `partials` must hold kResidualMaxBlocks doubles. Deterministic: no atomics.
template <typename scalar_t, typename index_t>
cudaError_t sparse_residual(const scalar_t* U, const scalar_t* Vt, const index_t* rows,
                            const index_t* cols, const scalar_t* values, int64_t nnz, int64_t d,
                            scalar_t* e, scalar_t* loss, double* partials, cudaStream_t stream);

// Compressed-sparse gradient product (CSR for rows, CSC for columns: the same kernel).
//   out[i, :] = scale * sum_{k in [ptr[i], ptr[i+1])} e[k] * dense[idx[k], :]
// ptr has num_out_rows + 1 entries, idx and e have ptr[num_out_rows] entries (e in the same
// compressed order), dense is (K, d), out is (num_out_rows, d) and is fully overwritten
// (rows without entries get exact zeros). One warp per output row.
template <typename scalar_t, typename index_t>
cudaError_t sparse_grad_compressed(const index_t* ptr, const index_t* idx, const scalar_t* e,
                                   const scalar_t* dense, int64_t num_out_rows, int64_t d,
                                   double scale, scalar_t* out, cudaStream_t stream);

// Scatter variant from COO order, for benchmarking against the compressed one:
//   out[dst[k], :] += scale * e[k] * src[src_idx[k], :]     (atomicAdd)
// `out` must be zero-filled (or hold what should be accumulated into) before the call.
// Not deterministic in float (atomic order), unlike sparse_grad_compressed.
template <typename scalar_t, typename index_t>
cudaError_t sparse_grad_coo_atomic(const index_t* src_idx, const index_t* dst_idx,
                                   const scalar_t* e, const scalar_t* src, int64_t nnz, int64_t d,
                                   double scale, scalar_t* out, cudaStream_t stream);

// ---------------------------------------------------------------------------------------
// small_matrix.cu : batched d x d work, one thread block per matrix, d <= kMaxSmallDim.
// ---------------------------------------------------------------------------------------

constexpr int64_t kMaxSmallDim = 128;

// S_b = Y_b^T Y_b for Y (B, r, d) -> S (B, d, d). Any r >= 0 (rows are streamed in chunks).
// One block per (matrix, 32x32 tile of S); for d <= 32 that is one block per matrix.
template <typename scalar_t>
cudaError_t gram_batched(const scalar_t* Y, int64_t B, int64_t r, int64_t d, scalar_t* S,
                         cudaStream_t stream);

// Working-set placement for the iterative kernels (see csrc/README.md, "shared or global").
// Returns how many scalar_t elements of global workspace the caller must pass to the matching
// launcher: 0 when the working set fits in (opt-in) shared memory on the current device and
// force_global is false, B * (matrices per block) * d * d otherwise. Needs the current device
// to be set (it queries its shared-memory limit).
int64_t ns_sqrt_workspace_elems(int64_t B, int64_t d, size_t elem_size, bool force_global);
int64_t ns_pinv_workspace_elems(int64_t B, int64_t d, size_t elem_size, bool force_global);

// Coupled Newton-Schulz square root. A (B, d, d) symmetric, spectrum in [0, 1].
//   Y0 = A, Z0 = I;  repeat iters times: T = (3I - Z Y) / 2;  Y <- Y T;  Z <- T Z.
// Y_out ~ A^{1/2}, Z_out ~ A^{-1/2} on the range of A (on its null space Z grows like 1.5^k).
template <typename scalar_t>
cudaError_t ns_sqrt_coupled(const scalar_t* A, int64_t B, int64_t d, int64_t iters,
                            scalar_t* Y_out, scalar_t* Z_out, scalar_t* workspace,
                            bool force_global, cudaStream_t stream);

// Newton-Schulz pseudo-inverse with a per-matrix stop rule. A (B, d, d) symmetric PSD,
// alpha (B,) with 0 < alpha < 2 / lambda_max^2.
//   X0 = alpha A;  repeat at most iters times: Xn = 2X - X A X,  step = ||Xn - X||_F.
// Stop rule (per matrix): once armed, the first step that does not decrease (>= the previous
// one) is rejected and the matrix stops, keeping the previous iterate (the one with the
// smallest step since arming). The rule arms when step <= arm_ratio * (largest step so far)
// or step <= 64 * eps(scalar_t) * ||Xn||_F (already at rounding level); with arm_ratio >= 1
// it is armed from the first step (the plain "stop when the step grows" rule). A zero step
// also stops. X_out gets the kept iterate, iters_out the number k of updates in it
// (X_out = X_k, 0 <= k <= iters). Why the arming: see small_matrix.cu / csrc/README.md.
template <typename scalar_t>
cudaError_t ns_pinv(const scalar_t* A, const scalar_t* alpha, int64_t B, int64_t d,
                    int64_t iters, double arm_ratio, scalar_t* X_out, int32_t* iters_out,
                    scalar_t* workspace, bool force_global, cudaStream_t stream);

// Largest eigenvalue of symmetric PSD S (B, d, d) by power iteration: `iters` normalised
// products from the fixed start vector (README: v0_i = 1 + 0.01 * (frac(i * 0.618...) - 0.5),
// normalised), then the Rayleigh quotient v^T S v -> lambda (B,). Needs no workspace: S is
// staged in shared memory when it fits, read from global memory otherwise.
template <typename scalar_t>
cudaError_t power_iteration(const scalar_t* S, int64_t B, int64_t d, int64_t iters,
                            scalar_t* lambda_out, bool force_global, cudaStream_t stream);

}  // namespace cuda
}  // namespace dlrl
