"""The DLRL training loss from the block operators in one node: every block's output, the chain,
the sparse loss and the whole backward to N and the weights.

    X̂_k = act(W_k N_k)  (X̂_I = act(W_Iᵀ N_I)ᵀ: the last weight is wide, d×n)
    J   = ½ Σ_{(i,j)∈Ω} ( [X̂_1 M]_i · [X̂_I]_{:,j} + ue_i · ve_j − x_ij )²,   M = X̂_2⋯X̂_{I−1}

It is ``block_chain`` followed by ``masked_loss_sparse``, split differently: the d×d middle
(blocks 2…I−1, their product M, and its backward) stays in torch, and the *outer* part — both
outer blocks, the loss between them and both outer blocks' backward — is one primitive with two
implementations:

- ``native`` (CPU, ``dlrl_kernels/cpu``): one C pass over the rows (first block's row, u_i, the
  row's entries, its gradient r_i and everything that follows from it: ∂W_1's row, ∂N_1, ∂M)
  and one over the columns (last block's row before, its backward after). No m×d or n×d
  intermediate is materialised besides the last block's output and q (the column gradient);
- ``composed`` (any device, any sparse backend): the same arithmetic as torch ops around the
  backend's ``loss_grad`` (the reference twin; ``tests/test_chain_loss.py`` compares them).

Why: at ML-100K's size a DLRL epoch on a CPU was ~3.5 ms of which ~1.8 ms were this part as
≈ 40 torch ops forward and backward (each 5–50 µs: nine m×d·d×d products, five masks, the
autograd engine) around a 0.5 ms native sparse pass; the fused pass does the same arithmetic
in about the time of the sparse pass alone (``bench/bench_dlrl.py``).

The forward computes the gradients for a unit ∂L/∂J while the rows are in cache (the training
loss always has a backward); the backward scales them. Registered as
``dlrl::chain_loss_sparse`` (fake + autograd) for ``torch.compile``; eager mode uses its
``autograd.Function`` twin (``_dispatch.EagerOp``). ``values`` gets no gradient here.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from .block_chain import _natural, block_backward, block_outputs, middle_backward, middle_products


def fusable(N: Tensor, Ws, wide, u_extra: Optional[Tensor]) -> bool:
    """Whether the fused op applies: ≥ 2 blocks, a tall first weight (m×d), a wide last one (d×n)
    and at most ``cpu.CHAIN_MAX_EXTRA`` extra columns (the model's layouts except tiny problems
    whose first factor is itself wide; those use ``block_chain`` + ``masked_loss_sparse``)."""
    from ..cpu import CHAIN_MAX_EXTRA

    d = N.shape[-1]
    if len(Ws) < 2 or wide[0] or not wide[-1] or Ws[0].shape[1] != d or Ws[-1].shape[0] != d:
        return False
    return u_extra is None or u_extra.shape[1] <= CHAIN_MAX_EXTRA


# ----------------------------------------------------------------------------- outer primitive
def _outer_composed(W1, N1, Mid, WI, NI, ue, ve, activation, rows, cols, values, backend, with_grad, pat):
    """The outer part as torch ops around the backend's ``loss_grad`` — the reference twin.
    Returns (J, gW1, gN1, gMid, gWI, gNI, gue, gve) for a unit incoming gradient."""
    from .masked_residual_sparse import _loss_impl

    Y1, YI = block_outputs(torch.stack([N1, NI]), [W1, WI], [False, True], activation)
    U = Y1 if Mid is None else Y1 @ Mid
    Vt = YI  # X̂_I = YIᵀ, so Vᵀ = YI (n×d)
    d = N1.shape[-1]
    if ue is not None:
        U, Vt = torch.cat([U, ue], 1), torch.cat([Vt, ve], 1)
    # the sparse loss op's own forward: J, and for a unit gradient R = E·V', Q = Eᵀ·U'
    J, _, R, Q = _loss_impl(U, Vt.contiguous(), rows, cols, values, backend, with_grad, *pat)
    if not with_grad:
        return J, None, None, None, None, None, None, None
    gU, gV = R[:, :d], Q[:, :d]
    gMid = None if Mid is None else Y1.transpose(-1, -2) @ gU
    gX1 = gU if Mid is None else gU @ Mid.transpose(-1, -2)
    gW1, gN1 = block_backward(W1, N1, Y1, gX1, False, activation)
    gWI, gNI = block_backward(WI, NI, YI, gV.transpose(-1, -2), True, activation)
    gue, gve = (R[:, d:], Q[:, d:]) if ue is not None else (None, None)
    return J, gW1, gN1, gMid, gWI, gNI, gue, gve


def _use_native(backend, N, pat) -> bool:
    return backend == "cpu" and N.device.type == "cpu" and pat[0] is not None


# ----------------------------------------------------------------------------- the op
def _impl(N: Tensor, Ws: List[Tensor], wide: List[bool], u_extra: Optional[Tensor], v_extra: Optional[Tensor],
          activation: str, rows: Tensor, cols: Tensor, values: Tensor, backend: str, with_grad: bool,
          crow: Optional[Tensor], ccol: Optional[Tensor], col_order: Optional[Tensor],
          rows_by_col: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(J, ∂J/∂N, ∂J/∂W (all weights flattened and concatenated), ∂J/∂u_extra, ∂J/∂v_extra);
    the gradients for a unit incoming gradient when ``with_grad``, else empty tensors. J in
    N's dtype, accumulated in float64."""
    return loss_and_grads(N, Ws, wide, u_extra, v_extra, activation, rows, cols, values, backend, with_grad, crow,
                          ccol, col_order, rows_by_col)


def loss_and_grads(N, Ws, wide, u_extra, v_extra, activation, rows, cols, values, backend, with_grad, crow, ccol,
                   col_order, rows_by_col, out=None):
    """The op's forward (``_impl``) as a plain function, with ``out``: None, or (gN, gW) tensors
    the native route writes ∂J/∂N and ∂J/∂W into (the composed route ignores it). For a caller
    that consumes the gradients before its next call — the model's autograd-free training step:
    fresh gradient buffers every epoch cost ~90 µs of cache misses at ML-100K's size (216 KB
    of ∂W written partly column-wise), measured against reused ones. The op itself (whose
    outputs autograd keeps) never passes ``out``."""
    pat = (crow, ccol, col_order, rows_by_col)
    if _use_native(backend, N, pat):
        from .. import cpu

        J, gN, gW, gue, gve = cpu.chain_loss(N, Ws, wide, u_extra, v_extra, activation == "relu", crow, cols, values,
                                             with_grad, out=out)
    else:
        J, gN, gW, gue, gve = _composed(N, Ws, wide, u_extra, v_extra, activation, rows, cols, values, backend,
                                        with_grad, pat)
    J = J.to(N.dtype)
    if not with_grad:  # (distinct empties: a custom op's outputs may not alias one another)
        return J, N.new_empty(0), N.new_empty(0), N.new_empty(0), N.new_empty(0)
    return J, gN, gW, _own(gue, N), _own(gve, N)


def _composed(N, Ws, wide, u_extra, v_extra, activation, rows, cols, values, backend, with_grad, pat):
    """The op as torch ops around the backend's sparse loss (the native kernel's twin): the
    middle blocks and their product, the outer part (``_outer_composed``), the middle backward."""
    I = len(Ws)
    Ym = block_outputs(N[1:I - 1], Ws[1:I - 1], wide[1:I - 1], activation) if I > 2 else []
    Xm = _natural(Ym, wide[1:I - 1])
    mids = middle_products([None, *Xm, None]) if Xm else []
    Mid = mids[-1] if mids else None
    J, gW1, gN1, gMid, gWI, gNI, gue, gve = _outer_composed(Ws[0], N[0], Mid, Ws[-1], N[-1], u_extra, v_extra,
                                                             activation, rows, cols, values, backend, with_grad, pat)
    if not with_grad:
        return J, None, None, None, None
    gN = torch.empty_like(N)
    gN[0], gN[-1] = gN1, gNI
    gWs = [gW1]
    if Xm:
        for k, gX in enumerate(middle_backward(Xm, mids, gMid), start=1):
            gW, gN[k] = block_backward(Ws[k], N[k], Ym[k - 1], gX, wide[k], activation)
            gWs.append(gW)
    gWs.append(gWI)
    return J, gN, torch.cat([g.reshape(-1) for g in gWs]), gue, gve


def _own(t, like):
    """An output with storage of its own (a custom op's outputs are fresh, contiguous tensors:
    the composed route's extra-column gradients are column slices of R and Q)."""
    if t is None:
        return like.new_empty(0)
    return t if t.is_contiguous() and t.storage_offset() == 0 else t.clone(memory_format=torch.contiguous_format)


_op = torch.library.custom_op("dlrl::chain_loss_sparse", _impl, mutates_args=())


@_op.register_fake
def _(N, Ws, wide, u_extra, v_extra, activation, rows, cols, values, backend, with_grad, crow, ccol, col_order,
      rows_by_col):
    if not with_grad:
        return N.new_empty(()), N.new_empty(0), N.new_empty(0), N.new_empty(0), N.new_empty(0)
    k = 0 if u_extra is None else u_extra.shape[1]
    return (N.new_empty(()), N.new_empty(N.shape), N.new_empty(sum(W.numel() for W in Ws)),
            N.new_empty(Ws[0].shape[0], k) if k else N.new_empty(0),
            N.new_empty(Ws[-1].shape[1], k) if k else N.new_empty(0))


def _setup(ctx, inputs, output):
    N, Ws, wide, u_extra, v_extra = inputs[:5]
    ctx.shapes = [W.shape for W in Ws]
    ctx.n_ws = len(Ws)
    ctx.extra = u_extra is not None
    ctx.save_for_backward(*output[1:])


def _backward(ctx, gJ, *unused):
    """The forward's unit-gradient adjoints times ∂L/∂J (the other outputs are gradients
    themselves and carry none)."""
    gN, gW, gu, gv = ctx.saved_tensors
    n_in = 15
    if gJ is None:
        return (None,) * n_in
    if gN.numel() == 0 and ctx.n_ws:
        raise RuntimeError("chain_loss_sparse: backward after a forward with with_grad=False (pass with_grad=True)")
    gWs, off = [], 0
    gW = gW * gJ
    for sh in ctx.shapes:
        k = sh.numel()
        gWs.append(gW[off:off + k].view(sh))
        off += k
    extra = (gu * gJ, gv * gJ) if ctx.extra else (None, None)
    return (gN * gJ, gWs, None, *extra, None, None, None, None, None, None, None, None, None, None)


_op.register_autograd(_backward, setup_context=_setup)


class _Eager(torch.autograd.Function):
    """The eager twin (a list input cannot cross ``autograd.Function``: the weights come last,
    spread); the same forward and backward functions as the op."""

    @staticmethod
    def forward(ctx, N, wide, u_extra, v_extra, activation, rows, cols, values, backend, with_grad, crow, ccol,
                col_order, rows_by_col, *Ws):
        ctx.set_materialize_grads(False)
        out = _impl(N, list(Ws), wide, u_extra, v_extra, activation, rows, cols, values, backend, with_grad, crow,
                    ccol, col_order, rows_by_col)
        _setup(ctx, (N, Ws, wide, u_extra, v_extra), out)
        ctx.mark_non_differentiable(*out[1:])
        return out

    @staticmethod
    def backward(ctx, gJ, *unused):
        g = _backward(ctx, gJ)
        gN, gWs, _, gu, gv = g[:5]
        if gN is None:
            return (None,) * (14 + ctx.n_ws)
        return (gN, None, gu, gv, *(None,) * 10, *gWs)


def chain_loss_op(N, Ws, wide, u_extra, v_extra, activation, rows, cols, values, backend, with_grad, crow=None,
                  ccol=None, col_order=None, rows_by_col=None):
    """The op (while compiling) or its eager twin; returns the op's 5 outputs (J first)."""
    if torch.compiler.is_compiling():
        return torch.ops.dlrl.chain_loss_sparse(N, list(Ws), list(wide), u_extra, v_extra, activation, rows, cols,
                                                values, backend, with_grad, crow, ccol, col_order, rows_by_col)
    return _Eager.apply(N, list(wide), u_extra, v_extra, activation, rows, cols, values, backend, with_grad, crow,
                        ccol, col_order, rows_by_col, *Ws)


__all__ = ["chain_loss_op", "fusable"]
