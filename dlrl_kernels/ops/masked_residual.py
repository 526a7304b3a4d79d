"""Dense masked residual E = H ⊙ (X_1⋯X_I − X) and its loss ½‖E‖²_F.

Backend primitives (the Triton kernel in ``dlrl_kernels/_triton/masked_residual.py``
computes the same two functions):

- ``dense_residual_loss(U, V, X, mask, want_E)`` -> (loss, E or None): E = mask ⊙ (U V − X)
  with mask=None meaning "NaN in X is missing"; the rank-d product U V is the collapsed
  chain (U = X_1⋯X_{I-1}, V = X_I).
- ``dense_residual_rq(U, V, X, mask, scale)`` -> (R, Q) = (scale·E Vᵀ, scale·Eᵀ U), E
  recomputed from U, V, X, mask (the fused kernel never stores E).

The backward of the loss is (R, Q) for (U, V), and autograd takes it back through the
collapsed chain U = X_1⋯X_{I-1} (plain torch matmuls): SPEC §3's ∂J/∂X_k = A_kᵀ E B_kᵀ with the
same d×d products as ``chain.grads_from_rq``.

torch.library: ``dlrl::masked_loss`` (½‖E‖² on (U, V)) and ``dlrl::masked_residual`` (E) are
custom ops with fake implementations and hand-written backwards (``register_autograd``); the
loss backward calls the custom op ``dlrl::masked_residual_rq``, so ``torch.compile`` traces
forward and backward without a graph break. One ``_dispatch.OpTable`` per public op; the
wrapper resolves the backend once per call and passes its name, the op fetches the
implementation with ``TABLE.load(name)``.

``X`` is differentiable: ∂J/∂X = −grad·E (observed entries), ∂E/∂X = −mask. NaN / ±Inf in
the factors, ±Inf in X, and NaN in X at an observed entry (with a mask) are a ValueError
naming the argument (eager mode only; the checks are skipped under ``torch.compile``).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Optional

import torch

from .._dispatch import EagerOp, OpTable, PlainOp
from .._validate import check_dense_target, check_factors
from .chain import outer_factors


# ----------------------------------------------------------------------------- reference
def observed(X, mask):
    return ~torch.isnan(X) if mask is None else mask


def reference_residual(U, V, X, mask):
    P = V if U is None else U @ V
    return torch.where(observed(X, mask), P - X, torch.zeros((), dtype=X.dtype, device=X.device))


def reference_residual_loss(U, V, X, mask, want_E):
    E = reference_residual(U, V, X, mask)
    return 0.5 * (E * E).sum(), (E if want_E else None)


def reference_residual_rq(U, V, X, mask, scale, E=None):
    if E is None:
        E = reference_residual(U, V, X, mask)
    E = E * scale
    return E @ V.t(), E.t() @ U


# ----------------------------------------------------------------------------- dispatch
REFERENCE = SimpleNamespace(dense_residual_loss=reference_residual_loss, dense_residual_rq=reference_residual_rq)


def _triton_impl():
    from .._triton import masked_residual as k

    return k


_INTERFACE = ("dense_residual_loss", "dense_residual_rq")
TABLE = OpTable("masked_residual", _INTERFACE, reference=lambda: REFERENCE, triton=_triton_impl)
TABLE_LOSS = OpTable("masked_loss", _INTERFACE, reference=lambda: REFERENCE, triton=_triton_impl)
_TABLES = {"masked_residual": TABLE, "masked_loss": TABLE_LOSS}


# ----------------------------------------------------------------------------- torch.library
def _loss_impl(U: torch.Tensor, V: torch.Tensor, X: torch.Tensor, mask: Optional[torch.Tensor], backend: str,
             keep_E: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(½‖mask ⊙ (U V − X)‖², E if keep_E else an empty tensor)."""
    loss, E = TABLE_LOSS.load(backend).dense_residual_loss(U, V, X, mask, keep_E)
    return loss, (E if keep_E else X.new_empty((0,)))


_loss_op = torch.library.custom_op("dlrl::masked_loss", _loss_impl, mutates_args=())


@_loss_op.register_fake
def _(U, V, X, mask, backend, keep_E):
    return X.new_empty(()), (X.new_empty(X.shape) if keep_E else X.new_empty((0,)))


def _rq_impl(U: torch.Tensor, V: torch.Tensor, X: torch.Tensor, mask: Optional[torch.Tensor], E: Optional[torch.Tensor],
           g: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, Q) = (g·E Vᵀ, g·Eᵀ U); E recomputed by the kernel, or the reference's saved one."""
    if backend == "reference":
        return reference_residual_rq(U, V, X, mask, g, E)
    return TABLE_LOSS.load(backend).dense_residual_rq(U, V, X, mask, g)


_rq_op = torch.library.custom_op("dlrl::masked_residual_rq", _rq_impl, mutates_args=())
rq_op = PlainOp(torch.ops.dlrl.masked_residual_rq, _rq_impl)


@_rq_op.register_fake
def _(U, V, X, mask, E, g, backend):
    return U.new_empty(U.shape), V.new_empty((V.shape[1], V.shape[0]))


def _loss_setup(ctx, inputs, output):
    U, V, X, mask, backend, keep_E = inputs
    ctx.backend = backend
    ctx.save_for_backward(U, V, X, mask, output[1] if keep_E else None)


def _loss_backward(ctx, g, _gE):
    U, V, X, mask, E = ctx.saved_tensors
    gU = gV = gX = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        R, Q = rq_op(U, V, X, mask, E, g.reshape(1), ctx.backend)
        gU, gV = R, Q.t()
    if ctx.needs_input_grad[2]:
        if E is None:
            E = _residual_impl(U, V, X, mask, ctx.backend) if not torch.compiler.is_compiling() else \
                torch.ops.dlrl.masked_residual(U, V, X, mask, ctx.backend)
        gX = -g * E
    return gU, gV, gX, None, None, None


_loss_op.register_autograd(_loss_backward, setup_context=_loss_setup)
#: the op, or in eager mode its autograd.Function twin (``_dispatch.EagerOp``)
loss_op = EagerOp(torch.ops.dlrl.masked_loss, _loss_impl, _loss_setup, _loss_backward)


def _residual_impl(U: torch.Tensor, V: torch.Tensor, X: torch.Tensor, mask: Optional[torch.Tensor],
                 backend: str) -> torch.Tensor:
    """E = mask ⊙ (U V − X) (0 where unobserved)."""
    return TABLE.load(backend).dense_residual_loss(U, V, X, mask, True)[1]


_residual_op = torch.library.custom_op("dlrl::masked_residual", _residual_impl, mutates_args=())


@_residual_op.register_fake
def _(U, V, X, mask, backend):
    return X.new_empty(X.shape)


def _residual_setup(ctx, inputs, output):
    U, V, X, mask, backend = inputs
    ctx.save_for_backward(U, V, X, mask)


def _residual_backward(ctx, gE):
    U, V, X, mask = ctx.saved_tensors
    gE = torch.where(observed(X, mask), gE, torch.zeros((), dtype=gE.dtype, device=gE.device))
    gU = gE @ V.t() if ctx.needs_input_grad[0] else None
    gV = U.t() @ gE if ctx.needs_input_grad[1] else None
    gX = -gE if ctx.needs_input_grad[2] else None
    return gU, gV, gX, None, None


_residual_op.register_autograd(_residual_backward, setup_context=_residual_setup)
#: the op, or in eager mode its autograd.Function twin (``_dispatch.EagerOp``)
residual_op = EagerOp(torch.ops.dlrl.masked_residual, _residual_impl, _residual_setup, _residual_backward)


# ----------------------------------------------------------------------------- public
def _check_finite(factors, X, mask):
    for k, f in enumerate(factors):
        f = f.detach()
        if not bool(torch.isfinite(f).all()):
            raise ValueError(f"factors[{k}]: expected finite values, got {int(torch.isnan(f).sum())} NaN and "
                             f"{int(torch.isinf(f).sum())} ±Inf of {f.numel()} entries")
    n_inf = torch.isinf(X.detach())
    if bool(n_inf.any()):
        raise ValueError(f"X: expected finite values (NaN marks a missing entry when mask is None), got "
                         f"{int(n_inf.sum())} ±Inf")


def _prepare(factors, X, mask, backend, table):
    many = len(factors) > 1
    if not torch.compiler.is_compiling():
        m, n = check_factors(factors)
        mask = check_dense_target(X, mask, (m, n), factors[0])
        _check_finite(factors, X, mask)
    elif mask is not None and mask.dtype != torch.bool:
        mask = mask != 0
    return mask, table.resolve(backend, X.device, triton_ok=many, cuda_ok=False)[0]


def masked_residual(factors, X, mask=None, backend: str = "auto"):
    """E = mask ⊙ (X_1⋯X_I − X), zero where unobserved; mask=None: NaN in X marks missing.

    Differentiable w.r.t. every factor and X. Note the sign: E = P − X (SPEC §2; the paper's
    Eq. 14 prints X − P).
    """
    mask, be = _prepare(factors, X, mask, backend, TABLE)
    if len(factors) == 1:
        return reference_residual(None, factors[0], X, mask)
    U, V = outer_factors(factors)
    return residual_op(U, V, X, mask, be)


def masked_loss(factors, X, mask=None, backend: str = "auto"):
    """½‖mask ⊙ (X_1⋯X_I − X)‖²_F with a hand-written backward (chain products)."""
    mask, be = _prepare(factors, X, mask, backend, TABLE_LOSS)
    if len(factors) == 1:
        E = reference_residual(None, factors[0], X, mask)
        return 0.5 * (E * E).sum()
    U, V = outer_factors(factors)
    # the reference keeps E (m×n anyway) for the backward; the fused kernel recomputes it
    return loss_op(U, V, X, mask, be, be == "reference")[0]
