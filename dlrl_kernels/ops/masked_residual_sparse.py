"""Sparse observed entries: e[k] = (X_1⋯X_I)[rows[k], cols[k]] − values[k] and ½‖e‖².

Memory stays O(nnz + (m+n)·d): the product is never formed; the reference gathers factor
rows in chunks of ``CHUNK`` entries so that a 2·10⁶-entry problem does not hold three
nnz×d temporaries at once.

Backend primitives (Triton twin in ``dlrl_kernels/_triton/masked_residual_sparse.py``,
CUDA twin in ``csrc/sparse_residual.cu``):

- ``sparse_residual(U, Vt, rows, cols, values)`` -> e  (SDDMM; Vt = Vᵀ, n×d contiguous)
- ``sparse_rq(U, Vt, rows, cols, e, scale, m, n)`` -> (R, Q): R[i] = scale·Σ_{rows[k]=i} e_k Vt[cols[k]],
  Q[j] = scale·Σ_{cols[k]=j} e_k U[rows[k]]  (the two SpMM-like chain gradients).
"""
from __future__ import annotations

import warnings

import torch

from .. import _dispatch

# CSR tensors are used internally with indices built here; torch's "beta" notice says nothing
# to our users.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
from .._validate import check_factors, check_sparse_target
from .chain import _prefixes, grads_from_rq, outer_factors

CHUNK = 1 << 17


class SparsePattern:
    """Observed positions sorted once (row-major), with their CSR and CSC index arrays.

    Training evaluates the loss on the same positions every epoch; sorting them once lets the
    reference backward run both chain gradients as CSR SpMMs (R = E Vᵀ by rows, Q = Eᵀ U by
    columns through a fixed permutation of e) instead of scatter-adds, which on CPU is an
    order of magnitude faster. Build it with ``sparse_pattern(rows, cols, shape)``, permute
    your values with ``values[pattern.order]`` once, and pass ``pattern.rows``,
    ``pattern.cols`` and ``pattern=pattern`` to ``masked_loss_sparse`` /
    ``masked_residual_sparse``.
    """

    def __init__(self, rows, cols, shape):
        m, n = int(shape[0]), int(shape[1])
        rows, cols = rows.long(), cols.long()
        order = torch.argsort(rows * n + cols, stable=True)
        self.shape = (m, n)
        self.order = order
        self.rows = rows[order]
        self.cols = cols[order]
        self.crow = torch._convert_indices_from_coo_to_csr(self.rows, m)
        corder = torch.argsort(self.cols * m + self.rows, stable=True)
        self.col_order = corder  # row-sorted position of each column-sorted entry
        self.ccol = torch._convert_indices_from_coo_to_csr(self.cols[corder], n)
        self.rows_by_col = self.rows[corder]

    def check(self, rows, cols):
        if rows is not self.rows or cols is not self.cols:
            raise ValueError("pattern: expected rows/cols to be pattern.rows/pattern.cols (the pattern "
                             "was built for other indices; permute values with values[pattern.order])")

    def to(self, device):
        out = object.__new__(SparsePattern)
        for k, v in self.__dict__.items():
            setattr(out, k, v.to(device) if isinstance(v, torch.Tensor) else v)
        return out


def sparse_pattern(rows, cols, shape):
    """A :class:`SparsePattern` for repeated losses on the same observed positions."""
    rows, cols = torch.as_tensor(rows), torch.as_tensor(cols)
    if rows.shape != cols.shape or rows.dim() != 1:
        raise ValueError(f"rows/cols: expected two 1-D tensors of equal length, got {tuple(rows.shape)} and {tuple(cols.shape)}")
    m, n = int(shape[0]), int(shape[1])
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= m):
        raise ValueError(f"rows: expected indices in [0, {m}), got range [{int(rows.min())}, {int(rows.max())}]")
    if cols.numel() and (int(cols.min()) < 0 or int(cols.max()) >= n):
        raise ValueError(f"cols: expected indices in [0, {n}), got range [{int(cols.min())}, {int(cols.max())}]")
    return SparsePattern(rows, cols, (m, n))


def pattern_rq(pattern, U, Vt, e, scale):
    """(R, Q) of ``reference_sparse_rq`` as two CSR SpMMs over a prepared pattern."""
    m, n = pattern.shape
    es = e * scale
    R = torch.sparse_csr_tensor(pattern.crow, pattern.cols, es, (m, n), check_invariants=False) @ Vt
    Q = torch.sparse_csr_tensor(pattern.ccol, pattern.rows_by_col, es[pattern.col_order], (n, m),
                                check_invariants=False) @ U
    return R, Q


# ----------------------------------------------------------------------------- reference
#: the reference SDDMM forms the dense product and gathers from it when it has at most this
#: many entries and the observed fraction is at least DENSE_MIN_DENSITY: one GEMM then beats
#: two nnz×d row gathers on a CPU (ML-100K: 1.6·10⁶ entries, 5 % observed)
DENSE_MAX_ENTRIES = 1 << 23
DENSE_MIN_DENSITY = 1.0 / 64


def reference_sparse_residual(U, Vt, rows, cols, values):
    m, n = U.shape[0], Vt.shape[0]
    if m * n <= DENSE_MAX_ENTRIES and values.numel() >= DENSE_MIN_DENSITY * m * n:
        flat = rows.long() * n + cols.long()
        return (U @ Vt.t()).view(-1).index_select(0, flat) - values
    e = torch.empty_like(values)
    for s in range(0, values.numel(), CHUNK):
        r, c = rows[s : s + CHUNK], cols[s : s + CHUNK]
        prod = (U.index_select(0, r) * Vt.index_select(0, c)).sum(1)
        torch.sub(prod, values[s : s + CHUNK], out=e[s : s + CHUNK])
    return e


def reference_sparse_rq(U, Vt, rows, cols, e, scale, m, n):
    d = Vt.shape[1]
    R = torch.zeros(m, d, dtype=Vt.dtype, device=Vt.device)
    Q = torch.zeros(n, d, dtype=Vt.dtype, device=Vt.device)
    es = e * scale
    for s in range(0, e.numel(), CHUNK):
        r, c, ek = rows[s : s + CHUNK], cols[s : s + CHUNK], es[s : s + CHUNK, None]
        R.index_add_(0, r, ek * Vt.index_select(0, c))
        Q.index_add_(0, c, ek * U.index_select(0, r))
    return R, Q


def _single_factor_residual(X1, rows, cols, values):
    return X1[rows.long(), cols.long()] - values


def _single_factor_grad(X1, rows, cols, e):
    G = torch.zeros_like(X1)
    G.index_put_((rows.long(), cols.long()), e, accumulate=True)
    return G


# ----------------------------------------------------------------------------- dispatch
def _triton():
    from .._triton import masked_residual_sparse as k

    return k


def _cuda():
    from .. import _cuda as k

    return k


def _residual(backend, U, Vt, rows, cols, values):
    if backend == "triton":
        return _triton().sparse_residual(U, Vt, rows, cols, values)
    if backend == "cuda":
        return _cuda().sparse_residual(U, Vt, rows, cols, values)
    return reference_sparse_residual(U, Vt, rows, cols, values)


def _rq(backend, U, Vt, rows, cols, e, scale, m, n, pattern=None):
    if pattern is not None and backend == "reference":
        return pattern_rq(pattern, U, Vt, e, scale)
    if backend == "triton":
        return _triton().sparse_rq(U, Vt, rows, cols, e, scale, m, n)
    if backend == "cuda":
        return _cuda().sparse_rq(U, Vt, rows, cols, e, scale, m, n)
    return reference_sparse_rq(U, Vt, rows, cols, e, scale, m, n)


# ----------------------------------------------------------------------------- autograd
class _SparseBase(torch.autograd.Function):
    @staticmethod
    def _forward(ctx, rows, cols, values, backend, pattern, factors):
        if len(factors) == 1:
            e = _single_factor_residual(factors[0], rows, cols, values)
            ctx.prefixes, ctx.Vt = None, None
        else:
            prefixes = _prefixes(factors)
            U, V = outer_factors(factors, prefixes)
            Vt = V.t().contiguous()
            e = _residual(backend, U, Vt, rows, cols, values)
            ctx.prefixes, ctx.Vt = prefixes, Vt
        ctx.backend = backend
        ctx.pattern = pattern
        return e

    @staticmethod
    def _backward(ctx, rows, cols, ge, factors):
        if len(factors) == 1:
            return [_single_factor_grad(factors[0], rows, cols, ge)]
        U, _ = outer_factors(factors, ctx.prefixes)
        m, n = factors[0].shape[0], factors[-1].shape[1]
        R, Q = _rq(ctx.backend, U, ctx.Vt, rows, cols, ge, 1.0, m, n, ctx.pattern)
        return grads_from_rq(factors, ctx.prefixes, R, Q)


class SparseResidualFn(_SparseBase):
    @staticmethod
    def forward(ctx, rows, cols, values, backend, pattern, *factors):
        e = _SparseBase._forward(ctx, rows, cols, values, backend, pattern, factors)
        ctx.save_for_backward(rows, cols, *factors)
        return e

    @staticmethod
    def backward(ctx, ge):
        rows, cols, *factors = ctx.saved_tensors
        return (None, None, None, None, None, *_SparseBase._backward(ctx, rows, cols, ge, factors))


class SparseLossFn(_SparseBase):
    """½Σ e²; backward: grad_output · [A_kᵀ E B_kᵀ] with E the sparse residual (two SpMMs)."""

    @staticmethod
    def forward(ctx, rows, cols, values, backend, pattern, *factors):
        e = _SparseBase._forward(ctx, rows, cols, values, backend, pattern, factors)
        ctx.save_for_backward(rows, cols, e, *factors)
        return 0.5 * torch.dot(e, e)

    @staticmethod
    def backward(ctx, g):
        rows, cols, e, *factors = ctx.saved_tensors
        return (None, None, None, None, None, *_SparseBase._backward(ctx, rows, cols, e * g, factors))


# ----------------------------------------------------------------------------- public
def _prepare(factors, rows, cols, values, backend, op, pattern=None):
    m, n = check_factors(factors)
    if pattern is not None:
        if tuple(pattern.shape) != (m, n):
            raise ValueError(f"pattern: built for shape {pattern.shape}, the factors give ({m}, {n})")
        pattern.check(rows, cols)  # indices were range-checked when the pattern was built
        check_sparse_target(rows, cols, values, (m, n), factors[0], check_range=False)
    else:
        check_sparse_target(rows, cols, values, (m, n), factors[0])
    be = _dispatch.resolve(backend, values.device, op, triton_ok=len(factors) > 1, cuda_ok=len(factors) > 1)
    return be


def masked_residual_sparse(factors, rows, cols, values, backend: str = "auto", pattern=None):
    """e[k] = (X_1⋯X_I)[rows[k], cols[k]] − values[k]; never builds an m×n tensor.

    Duplicate (row, col) pairs are kept as separate observations (each contributes its own
    residual), exactly as the dense loss would if the entry were counted twice.
    """
    be = _prepare(factors, rows, cols, values, backend, "masked_residual_sparse", pattern)
    return SparseResidualFn.apply(rows, cols, values, be, pattern, *factors)


def masked_loss_sparse(factors, rows, cols, values, backend: str = "auto", pattern=None):
    """½ Σ_k e[k]² with a hand-written backward (two SpMM-like chain products)."""
    be = _prepare(factors, rows, cols, values, backend, "masked_loss_sparse", pattern)
    return SparseLossFn.apply(rows, cols, values, be, pattern, *factors)
