// torch op registration for the dlrl CUDA kernels (namespace torch.ops.dlrl).
//
// Compiled only inside the torch CUDAExtension (setup.py, CUDA build of torch + CUDA_HOME);
// the standalone CI compile (.ci/compile_cuda.sh) covers the .cu files only.
//
// This file owns everything torch-facing: argument checks (device, layout, dtype, contiguity,
// shapes; every message names the op and the argument), output allocation, the device guard
// and the current stream. The kernels in sparse_residual.cu / small_matrix.cu only see raw
// pointers. No autograd here: the autograd.Function lives in the Python op layer
// (dlrl_kernels/ops/*.py), which calls these through dlrl_kernels/_cuda.py.
//
// Only c10/cuda headers are used (not ATen/cuda/CUDAContext.h, which pulls in cuBLAS/cuSPARSE
// headers); c10::cuda::getCurrentCUDAStream is what at::cuda::getCurrentCUDAStream forwards to.

#include <Python.h>

#include <cstdlib>
#include <cstring>
#include <tuple>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "dlrl_kernels.h"

namespace {

using at::Tensor;

// ------------------------------------------------------------------------------------------
// Checks
// ------------------------------------------------------------------------------------------

void check_dense_cuda(const Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.defined(), "dlrl::", op, ": ", name, " must be a defined tensor");
  TORCH_CHECK(t.layout() == at::kStrided, "dlrl::", op, ": ", name,
              " must be a dense (strided) tensor, got layout ", t.layout());
  TORCH_CHECK(t.is_cuda(), "dlrl::", op, ": ", name, " must be a CUDA tensor, got device ",
              t.device());
  TORCH_CHECK(t.is_contiguous(), "dlrl::", op, ": ", name,
              " must be contiguous (call .contiguous() first), got strides ", t.strides());
}

void check_float(const Tensor& t, const char* op, const char* name, int64_t dim) {
  check_dense_cuda(t, op, name);
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "dlrl::", op,
              ": ", name, " must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dim, "dlrl::", op, ": ", name, " must be ", dim, "-D, got shape ",
              t.sizes());
}

void check_index(const Tensor& t, const char* op, const char* name) {
  check_dense_cuda(t, op, name);
  TORCH_CHECK(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, "dlrl::", op, ": ",
              name, " must be int32 or int64, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1, "dlrl::", op, ": ", name, " must be 1-D, got shape ", t.sizes());
}

// `t` on the same device (and, for floats, with the same dtype) as the reference argument.
void check_like(const Tensor& ref, const char* ref_name, const Tensor& t, const char* op,
                const char* name, bool same_dtype) {
  TORCH_CHECK(t.device() == ref.device(), "dlrl::", op, ": ", name, " must be on ", ref.device(),
              " (same as ", ref_name, "), got ", t.device());
  if (same_dtype) {
    TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "dlrl::", op, ": ", name, " must be ",
                ref.scalar_type(), " (same as ", ref_name, "), got ", t.scalar_type());
  }
}

void check_len(const Tensor& t, int64_t n, const char* op, const char* name, const char* what) {
  TORCH_CHECK(t.numel() == n, "dlrl::", op, ": ", name, " must have ", n, " entries (", what,
              "), got ", t.numel());
}

// Batched square matrices (B, d, d) with d <= kMaxSmallDim.
void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "dlrl::", op, ": CUDA kernel launch failed: ",
              cudaGetErrorString(err));
}

cudaStream_t current_stream(const Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

// ------------------------------------------------------------------------------------------
// Sparse ops
// ------------------------------------------------------------------------------------------

std::tuple<Tensor, Tensor> sparse_residual(const Tensor& U, const Tensor& Vt, const Tensor& rows,
                                           const Tensor& cols, const Tensor& values) {
  constexpr const char* op = "sparse_residual";
  check_float(U, op, "U", 2);
  check_float(Vt, op, "Vt", 2);
  check_like(U, "U", Vt, op, "Vt", true);
  TORCH_CHECK(Vt.size(1) == U.size(1), "dlrl::", op, ": Vt must have ", U.size(1),
              " columns (the rank d of U), got shape ", Vt.sizes());
  check_index(rows, op, "rows");
  check_index(cols, op, "cols");
  check_like(U, "U", rows, op, "rows", false);
  check_like(U, "U", cols, op, "cols", false);
  TORCH_CHECK(cols.scalar_type() == rows.scalar_type(), "dlrl::", op, ": cols must be ",
              rows.scalar_type(), " (same as rows), got ", cols.scalar_type());
  check_float(values, op, "values", 1);
  check_like(U, "U", values, op, "values", true);
  const int64_t nnz = rows.numel();
  check_len(cols, nnz, op, "cols", "one per entry of rows");
  check_len(values, nnz, op, "values", "one per entry of rows");

  const c10::cuda::CUDAGuard guard(U.device());
  Tensor e = at::empty({nnz}, values.options());
  Tensor loss = at::empty({}, values.options());
  Tensor partials =
      at::empty({dlrl::cuda::kResidualMaxBlocks}, values.options().dtype(at::kDouble));
  cudaError_t err = cudaSuccess;
  AT_DISPATCH_FLOATING_TYPES(U.scalar_type(), "dlrl::sparse_residual", [&] {
    AT_DISPATCH_INDEX_TYPES(rows.scalar_type(), "dlrl::sparse_residual", [&] {
      err = dlrl::cuda::sparse_residual<scalar_t, index_t>(
          U.data_ptr<scalar_t>(), Vt.data_ptr<scalar_t>(), rows.data_ptr<index_t>(),
          cols.data_ptr<index_t>(), values.data_ptr<scalar_t>(), nnz, U.size(1),
          e.data_ptr<scalar_t>(), loss.data_ptr<scalar_t>(), partials.data_ptr<double>(),
          current_stream(U));
    });
  });
  check_launch(err, op);
  return {e, loss};
}

// Shared by sparse_grad_rows (CSR: ptr = row_ptr, idx = col_idx, dense = Vt) and
// sparse_grad_cols (CSC: ptr = col_ptr, idx = row_idx, dense = U).
Tensor grad_compressed(const char* op, const char* ptr_name, const char* idx_name,
                       const char* dense_name, const Tensor& ptr, const Tensor& idx,
                       const Tensor& e, const Tensor& dense, double scale) {
  check_float(dense, op, dense_name, 2);
  check_index(ptr, op, ptr_name);
  check_index(idx, op, idx_name);
  check_like(dense, dense_name, ptr, op, ptr_name, false);
  check_like(dense, dense_name, idx, op, idx_name, false);
  TORCH_CHECK(idx.scalar_type() == ptr.scalar_type(), "dlrl::", op, ": ", idx_name, " must be ",
              ptr.scalar_type(), " (same as ", ptr_name, "), got ", idx.scalar_type());
  TORCH_CHECK(ptr.numel() >= 1, "dlrl::", op, ": ", ptr_name,
              " must have at least one entry (length = number of output rows + 1), got 0");
  check_float(e, op, "e", 1);
  check_like(dense, dense_name, e, op, "e", true);
  check_len(e, idx.numel(), op, "e", idx_name);

  const int64_t num_rows = ptr.numel() - 1;
  const int64_t d = dense.size(1);
  const c10::cuda::CUDAGuard guard(dense.device());
  Tensor out = at::empty({num_rows, d}, dense.options());
  cudaError_t err = cudaSuccess;
  AT_DISPATCH_FLOATING_TYPES(dense.scalar_type(), "dlrl::sparse_grad", [&] {
    AT_DISPATCH_INDEX_TYPES(ptr.scalar_type(), "dlrl::sparse_grad", [&] {
      err = dlrl::cuda::sparse_grad_compressed<scalar_t, index_t>(
          ptr.data_ptr<index_t>(), idx.data_ptr<index_t>(), e.data_ptr<scalar_t>(),
          dense.data_ptr<scalar_t>(), num_rows, d, scale, out.data_ptr<scalar_t>(),
          current_stream(dense));
    });
  });
  check_launch(err, op);
  return out;
}

Tensor sparse_grad_rows(const Tensor& row_ptr, const Tensor& col_idx, const Tensor& e,
                        const Tensor& Vt, double scale) {
  return grad_compressed("sparse_grad_rows", "row_ptr", "col_idx", "Vt", row_ptr, col_idx, e, Vt,
                         scale);
}

Tensor sparse_grad_cols(const Tensor& col_ptr, const Tensor& row_idx, const Tensor& e,
                        const Tensor& U, double scale) {
  return grad_compressed("sparse_grad_cols", "col_ptr", "row_idx", "U", col_ptr, row_idx, e, U,
                         scale);
}

Tensor sparse_grad_cols_atomic(const Tensor& rows, const Tensor& cols, const Tensor& e,
                               const Tensor& U, int64_t n, double scale) {
  constexpr const char* op = "sparse_grad_cols_atomic";
  check_float(U, op, "U", 2);
  check_index(rows, op, "rows");
  check_index(cols, op, "cols");
  check_like(U, "U", rows, op, "rows", false);
  check_like(U, "U", cols, op, "cols", false);
  TORCH_CHECK(cols.scalar_type() == rows.scalar_type(), "dlrl::", op, ": cols must be ",
              rows.scalar_type(), " (same as rows), got ", cols.scalar_type());
  check_float(e, op, "e", 1);
  check_like(U, "U", e, op, "e", true);
  const int64_t nnz = rows.numel();
  check_len(cols, nnz, op, "cols", "one per entry of rows");
  check_len(e, nnz, op, "e", "one per entry of rows");
  TORCH_CHECK(n >= 0, "dlrl::", op, ": n (number of columns) must be >= 0, got ", n);

  const int64_t d = U.size(1);
  const c10::cuda::CUDAGuard guard(U.device());
  Tensor out = at::zeros({n, d}, U.options());  // accumulated into with atomicAdd
  cudaError_t err = cudaSuccess;
  AT_DISPATCH_FLOATING_TYPES(U.scalar_type(), "dlrl::sparse_grad_cols_atomic", [&] {
    AT_DISPATCH_INDEX_TYPES(rows.scalar_type(), "dlrl::sparse_grad_cols_atomic", [&] {
      err = dlrl::cuda::sparse_grad_coo_atomic<scalar_t, index_t>(
          rows.data_ptr<index_t>(), cols.data_ptr<index_t>(), e.data_ptr<scalar_t>(),
          U.data_ptr<scalar_t>(), nnz, d, scale, out.data_ptr<scalar_t>(), current_stream(U));
    });
  });
  check_launch(err, op);
  return out;
}

// ------------------------------------------------------------------------------------------
// Batched small-matrix ops
// ------------------------------------------------------------------------------------------

Tensor gram_batched(const Tensor& Y) {
  constexpr const char* op = "gram_batched";
  check_float(Y, op, "Y", 3);
  TORCH_CHECK(Y.size(2) <= dlrl::cuda::kMaxSmallDim, "dlrl::", op,
              ": Y must have d <= ", dlrl::cuda::kMaxSmallDim, " columns, got shape ", Y.sizes());
  const int64_t B = Y.size(0), r = Y.size(1), d = Y.size(2);
  const c10::cuda::CUDAGuard guard(Y.device());
  Tensor S = at::empty({B, d, d}, Y.options());
  cudaError_t err = cudaSuccess;
  AT_DISPATCH_FLOATING_TYPES(Y.scalar_type(), "dlrl::gram_batched", [&] {
    err = dlrl::cuda::gram_batched<scalar_t>(Y.data_ptr<scalar_t>(), B, r, d,
                                             S.data_ptr<scalar_t>(), current_stream(Y));
  });
  check_launch(err, op);
  return S;
}

}  // namespace

// Schemas: keep in sync with the fake (meta) implementations in dlrl_kernels/_cuda.py.
TORCH_LIBRARY(dlrl, m) {
  m.def(
      "sparse_residual(Tensor U, Tensor Vt, Tensor rows, Tensor cols, Tensor values)"
      " -> (Tensor e, Tensor loss)");
  m.def("sparse_grad_rows(Tensor row_ptr, Tensor col_idx, Tensor e, Tensor Vt, float scale=1.0)"
        " -> Tensor");
  m.def("sparse_grad_cols(Tensor col_ptr, Tensor row_idx, Tensor e, Tensor U, float scale=1.0)"
        " -> Tensor");
  m.def(
      "sparse_grad_cols_atomic(Tensor rows, Tensor cols, Tensor e, Tensor U, int n,"
      " float scale=1.0) -> Tensor");
  m.def("gram_batched(Tensor Y) -> Tensor");
}

TORCH_LIBRARY_IMPL(dlrl, CUDA, m) {
  m.impl("sparse_residual", &sparse_residual);
  m.impl("sparse_grad_rows", &sparse_grad_rows);
  m.impl("sparse_grad_cols", &sparse_grad_cols);
  m.impl("sparse_grad_cols_atomic", &sparse_grad_cols_atomic);
  m.impl("gram_batched", &gram_batched);
}

// `from dlrl_kernels import _C` needs a module init function; the module itself is empty:
// importing it runs the static TORCH_LIBRARY registrations above. The name must match the
// extension name in setup.py (dlrl_kernels._C).
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",
      "dlrl CUDA kernels; the ops are registered as torch.ops.dlrl.*",
      -1,       // no per-interpreter state
      nullptr,  // m_methods
      nullptr,  // m_slots
      nullptr,  // m_traverse
      nullptr,  // m_clear
      nullptr,  // m_free
  };
  return PyModule_Create(&module_def);
}
