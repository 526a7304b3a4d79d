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

import torch

from .. import _dispatch
from .._validate import check_factors, check_sparse_target
from .chain import _prefixes, grads_from_rq, outer_factors

CHUNK = 1 << 17


# ----------------------------------------------------------------------------- reference
def reference_sparse_residual(U, Vt, rows, cols, values):
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


def _rq(backend, U, Vt, rows, cols, e, scale, m, n):
    if backend == "triton":
        return _triton().sparse_rq(U, Vt, rows, cols, e, scale, m, n)
    if backend == "cuda":
        return _cuda().sparse_rq(U, Vt, rows, cols, e, scale, m, n)
    return reference_sparse_rq(U, Vt, rows, cols, e, scale, m, n)


# ----------------------------------------------------------------------------- autograd
class _SparseBase(torch.autograd.Function):
    @staticmethod
    def _forward(ctx, rows, cols, values, backend, factors):
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
        return e

    @staticmethod
    def _backward(ctx, rows, cols, ge, factors):
        if len(factors) == 1:
            return [_single_factor_grad(factors[0], rows, cols, ge)]
        U, _ = outer_factors(factors, ctx.prefixes)
        m, n = factors[0].shape[0], factors[-1].shape[1]
        R, Q = _rq(ctx.backend, U, ctx.Vt, rows, cols, ge, 1.0, m, n)
        return grads_from_rq(factors, ctx.prefixes, R, Q)


class SparseResidualFn(_SparseBase):
    @staticmethod
    def forward(ctx, rows, cols, values, backend, *factors):
        e = _SparseBase._forward(ctx, rows, cols, values, backend, factors)
        ctx.save_for_backward(rows, cols, *factors)
        return e

    @staticmethod
    def backward(ctx, ge):
        rows, cols, *factors = ctx.saved_tensors
        return (None, None, None, None, *_SparseBase._backward(ctx, rows, cols, ge, factors))


class SparseLossFn(_SparseBase):
    """½Σ e²; backward: grad_output · [A_kᵀ E B_kᵀ] with E the sparse residual (two SpMMs)."""

    @staticmethod
    def forward(ctx, rows, cols, values, backend, *factors):
        e = _SparseBase._forward(ctx, rows, cols, values, backend, factors)
        ctx.save_for_backward(rows, cols, e, *factors)
        return 0.5 * torch.dot(e, e)

    @staticmethod
    def backward(ctx, g):
        rows, cols, e, *factors = ctx.saved_tensors
        return (None, None, None, None, *_SparseBase._backward(ctx, rows, cols, e * g, factors))


# ----------------------------------------------------------------------------- public
def _prepare(factors, rows, cols, values, backend, op):
    m, n = check_factors(factors)
    check_sparse_target(rows, cols, values, (m, n), factors[0])
    be = _dispatch.resolve(backend, values.device, op, triton_ok=len(factors) > 1, cuda_ok=len(factors) > 1)
    return be


def masked_residual_sparse(factors, rows, cols, values, backend: str = "auto"):
    """e[k] = (X_1⋯X_I)[rows[k], cols[k]] − values[k]; never builds an m×n tensor.

    Duplicate (row, col) pairs are kept as separate observations (each contributes its own
    residual), exactly as the dense loss would if the entry were counted twice.
    """
    be = _prepare(factors, rows, cols, values, backend, "masked_residual_sparse")
    return SparseResidualFn.apply(rows, cols, values, be, *factors)


def masked_loss_sparse(factors, rows, cols, values, backend: str = "auto"):
    """½ Σ_k e[k]² with a hand-written backward (two SpMM-like chain products)."""
    be = _prepare(factors, rows, cols, values, backend, "masked_loss_sparse")
    return SparseLossFn.apply(rows, cols, values, be, *factors)
