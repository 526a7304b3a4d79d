"""Dense masked residual E = H ⊙ (X_1⋯X_I − X) and its loss ½‖E‖²_F.

Backend primitives (the Triton kernel in ``dlrl_kernels/_triton/masked_residual.py``
computes the same two functions):

- ``dense_residual_loss(U, V, X, mask, want_E)`` -> (loss, E or None): E = mask ⊙ (U V − X)
  with mask=None meaning "NaN in X is missing"; the rank-d product U V is the collapsed
  chain (U = X_1⋯X_{I-1}, V = X_I).
- ``dense_residual_rq(U, V, X, mask, scale)`` -> (R, Q) = (scale·E Vᵀ, scale·Eᵀ U), E
  recomputed from U, V, X, mask (the fused kernel never stores E).

The backward of the loss is ``chain.grads_from_rq`` applied to (R, Q): SPEC §3's
∂J/∂X_k = A_kᵀ E B_kᵀ, written by hand.
"""
from __future__ import annotations

import torch

from .. import _dispatch
from .._validate import check_dense_target, check_factors
from .chain import _prefixes, grads_from_rq, outer_factors


# ----------------------------------------------------------------------------- reference
def observed(X, mask):
    return ~torch.isnan(X) if mask is None else mask


def reference_residual(U, V, X, mask):
    P = V if U is None else U @ V
    return torch.where(observed(X, mask), P - X, torch.zeros((), dtype=X.dtype, device=X.device))


def reference_residual_loss(U, V, X, mask, want_E=True):
    E = reference_residual(U, V, X, mask)
    return 0.5 * (E * E).sum(), (E if want_E else None)


def reference_residual_rq(U, V, X, mask, scale, E=None):
    if E is None:
        E = reference_residual(U, V, X, mask)
    E = E * scale
    return E @ V.t(), E.t() @ U


# ----------------------------------------------------------------------------- dispatch
def _triton():
    from .._triton import masked_residual as k

    return k


def _fwd(backend, U, V, X, mask, want_E):
    if backend == "triton" and U is not None:
        return _triton().dense_residual_loss(U, V, X, mask, want_E)
    return reference_residual_loss(U, V, X, mask, want_E)


def _rq(backend, U, V, X, mask, scale, E):
    if backend == "triton":
        return _triton().dense_residual_rq(U, V, X, mask, scale)
    return reference_residual_rq(U, V, X, mask, scale, E)


# ----------------------------------------------------------------------------- autograd
class MaskedLossFn(torch.autograd.Function):
    """½‖H ⊙ (X_1⋯X_I − X)‖²; backward = grad_output · [A_kᵀ E B_kᵀ]_k (two passes over E)."""

    @staticmethod
    def forward(ctx, X, mask, backend, *factors):
        prefixes = _prefixes(factors)
        U, V = outer_factors(factors, prefixes)
        # The reference keeps E (it is m×n anyway); the fused kernel recomputes it.
        keep_E = backend == "reference"
        loss, E = _fwd(backend, U, V, X, mask, keep_E)
        ctx.backend = backend
        ctx.prefixes = prefixes
        ctx.save_for_backward(X, mask, E, *factors)
        return loss

    @staticmethod
    def backward(ctx, g):
        X, mask, E, *factors = ctx.saved_tensors
        if len(factors) == 1:
            Ed = E if E is not None else reference_residual(None, factors[0], X, mask)
            return (None, None, None, g * Ed)
        U, V = outer_factors(factors, ctx.prefixes)
        R, Q = _rq(ctx.backend, U, V, X, mask, g, E)
        return (None, None, None, *grads_from_rq(factors, ctx.prefixes, R, Q))


class MaskedResidualFn(torch.autograd.Function):
    """E itself; backward maps dE to every factor through the same chain products."""

    @staticmethod
    def forward(ctx, X, mask, backend, *factors):
        prefixes = _prefixes(factors)
        U, V = outer_factors(factors, prefixes)
        if backend == "triton" and U is not None:
            _, E = _triton().dense_residual_loss(U, V, X, mask, True)
        else:
            E = reference_residual(U, V, X, mask)
        ctx.prefixes = prefixes
        ctx.save_for_backward(X, mask, *factors)
        return E

    @staticmethod
    def backward(ctx, gE):
        X, mask, *factors = ctx.saved_tensors
        gE = torch.where(observed(X, mask), gE, torch.zeros((), dtype=gE.dtype, device=gE.device))
        if len(factors) == 1:
            return (None, None, None, gE)
        U, V = outer_factors(factors, ctx.prefixes)
        R, Q = gE @ V.t(), gE.t() @ U
        return (None, None, None, *grads_from_rq(factors, ctx.prefixes, R, Q))


# ----------------------------------------------------------------------------- public
def _prepare(factors, X, mask, backend, op):
    m, n = check_factors(factors)
    mask = check_dense_target(X, mask, (m, n), factors[0])
    be = _dispatch.resolve(backend, X.device, op, triton_ok=len(factors) > 1)
    return mask, be


def masked_residual(factors, X, mask=None, backend: str = "auto"):
    """E = mask ⊙ (X_1⋯X_I − X), zero where unobserved; mask=None: NaN in X marks missing.

    Differentiable w.r.t. every factor. Note the sign: E = P − X (SPEC §2; the paper's
    Eq. 14 prints X − P).
    """
    mask, be = _prepare(factors, X, mask, backend, "masked_residual")
    return MaskedResidualFn.apply(X, mask, be, *factors)


def masked_loss(factors, X, mask=None, backend: str = "auto"):
    """½‖mask ⊙ (X_1⋯X_I − X)‖²_F with a hand-written backward (chain products)."""
    mask, be = _prepare(factors, X, mask, backend, "masked_loss")
    return MaskedLossFn.apply(X, mask, be, *factors)
