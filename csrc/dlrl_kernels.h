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

}  // namespace cuda
}  // namespace dlrl
