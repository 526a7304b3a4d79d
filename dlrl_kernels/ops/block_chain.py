"""All blocks' outputs and their product, as one autograd node: the DLRL forward after the operators.

    X̂_k = act(W_k N_k)            (tall / square W_k: r×d)
    X̂_k = act(N_k W_k)            (wide W_k: d×c, computed as act(W_kᵀ N_k)ᵀ, N_k symmetric)
    U   = X̂_1 (X̂_2 ⋯ X̂_{I−1}),   Vᵀ = X̂_Iᵀ               (the product X̂_1⋯X̂_I = U V)
    U'  = [U, u_extra],  V'ᵀ = [Vᵀ, v_extra]                 (extra columns: the model's biases)

Why one node: on a CPU a DLRL epoch at ML-100K's size is dominated by per-op and per-node
overhead, not arithmetic — measured on a 30×20 problem, where the arithmetic is nil, an epoch
still cost 2–4 ms, and the autograd engine's share was the largest. Composed from torch ops,
this part of the graph is ~20 nodes (products, ReLUs, transposes, the chain, two
concatenations) and ~40 backward ops; here it is one node whose backward is ~15 ops:

    Ḡ_U, Ḡ_{Vᵀ}, Ḡ_extra  = the column blocks of Ḡ_{U'}, Ḡ_{V'ᵀ}
    Ḡ_{X̂_1} = Ḡ_U Mᵀ,  Ḡ_M = X̂_1ᵀ Ḡ_U  (M = X̂_2⋯X̂_{I−1}; through M with prefix/suffix products)
    Ḡ_{X̂_I} = Ḡ_{Vᵀ}ᵀ
    Ḡ_T = Ḡ_{X̂} ⊙ [X̂ > 0]  (ReLU; as torch's threshold_backward),   Ḡ_W = Ḡ_T Nᵀ,  Ḡ_N = Wᵀ Ḡ_T

The operators N (the paper's S^a/c from ``block_power`` or the published ½·pinv) stay
separate differentiable ops, so this op serves both modes. The forward is the same
arithmetic as composing ``lowrank_block._apply_w`` and the chain (``tests/test_block_chain.py``
compares the two and gradchecks this backward in float64).

Registered as ``dlrl::block_chain`` (fake + autograd) for ``torch.compile``; in eager mode the
``autograd.Function`` twin runs the same forward and backward functions (see
``_dispatch.EagerOp``; it keeps the block outputs for the backward, the compiled op recomputes
them from W and N).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor

ACTIVATIONS = ("relu", "none")


def default_wide(Ws, d):
    """``lowrank_block``'s rule: a weight is wide when its last dimension is not d."""
    return [W.shape[-1] != d for W in Ws]


def block_outputs(N: Tensor, Ws: Sequence[Tensor], wide: Sequence[bool], activation: str) -> List[Tensor]:
    """Y_k = act(W_k N_k) (r×d), or act(W_kᵀ N_k) (c×d) where ``wide[k]`` (X̂_k = Y_kᵀ)."""
    out = []
    for W, Nk, w in zip(Ws, N.unbind(0), wide):
        T = (W.transpose(-1, -2) @ Nk) if w else (W @ Nk)
        out.append(torch.relu(T) if activation == "relu" else T)
    return out


def _natural(Ys, wide):
    """X̂_k in the chain's orientation (views)."""
    return [Y.transpose(-1, -2) if w else Y for Y, w in zip(Ys, wide)]


def middle_products(Xs: Sequence[Tensor]) -> List[Tensor]:
    """mids[j] = X̂_2⋯X̂_{j+2}: the running d×d middle products (the backward needs them, not U)."""
    mids: List[Tensor] = []
    for M in Xs[1:-1]:
        mids.append(M if not mids else mids[-1] @ M)
    return mids


def chain_factors(Xs: Sequence[Tensor]):
    """(U, Vᵀ, mids): U = X̂_1 (X̂_2⋯X̂_{I−1}), Vᵀ = X̂_Iᵀ (contiguous), mids = ``middle_products``."""
    mids = middle_products(Xs)
    U = Xs[0] if not mids else Xs[0] @ mids[-1]
    return U, Xs[-1].transpose(-1, -2).contiguous(), mids


def _forward(N: Tensor, Ws: Sequence[Tensor], wide, u_extra: Optional[Tensor], v_extra: Optional[Tensor],
             activation: str):
    Ys = block_outputs(N, Ws, wide, activation)
    U, Vt, _ = chain_factors(_natural(Ys, wide))
    if u_extra is not None:
        U = torch.cat([U, u_extra], 1)
        Vt = torch.cat([Vt, v_extra], 1)
    elif U.data_ptr() == Ys[0].data_ptr():  # I = 2 without extras: U is Y_1 itself; outputs never alias
        U = U.clone()
    return U, Vt, Ys


def middle_backward(Xm: Sequence[Tensor], mids: Sequence[Tensor], gM: Tensor) -> List[Tensor]:
    """Ḡ of each middle factor X̂_2, …, X̂_{I−1} from Ḡ of their product M = mids[−1]
    (``mids = middle_products``): M = mids[j−1] X̂_{j+2} ⋯, walked from the right carrying Ḡ
    of the prefix."""
    gX: List[Optional[Tensor]] = [None] * len(Xm)
    for j in range(len(mids) - 1, -1, -1):
        if j == 0:
            gX[0] = gM
        else:
            gX[j] = mids[j - 1].transpose(-1, -2) @ gM
            gM = gM @ Xm[j].transpose(-1, -2)
    return gX


def block_backward(W: Tensor, Nk: Tensor, Y: Tensor, gX: Tensor, wide: bool, activation: str):
    """(Ḡ_W, Ḡ_N) of one block Y = act(W N) (or act(Wᵀ N) when wide, X̂ = Yᵀ) for Ḡ of X̂."""
    gY = gX.transpose(-1, -2) if wide else gX  # in Y's orientation
    gT = torch.where(Y > 0, gY, torch.zeros((), dtype=gY.dtype, device=gY.device)) if activation == "relu" else gY
    if wide:  # T = Wᵀ N
        return (gT @ Nk.transpose(-1, -2)).transpose(-1, -2), W @ gT
    return gT @ Nk.transpose(-1, -2), W.transpose(-1, -2) @ gT


def _backward_core(N, Ws, wide, Ys, activation, gU, gVt, n_extra):
    """(Ḡ_N, [Ḡ_W], Ḡ_u_extra, Ḡ_v_extra) for incoming Ḡ_{U'}, Ḡ_{V'ᵀ} (None = zero)."""
    d = N.shape[-1]
    I = len(Ws)
    if gU is None:
        gU = N.new_zeros(Ys[0].shape[0], d + n_extra)
    if gVt is None:
        gVt = N.new_zeros(Ys[-1].shape[0], d + n_extra)
    gu = gU[:, d:] if n_extra else None
    gv = gVt[:, d:] if n_extra else None
    gU, gVt = gU[:, :d], gVt[:, :d]
    Xs = _natural(Ys, wide)
    mids = middle_products(Xs)  # only the d×d products: U and the Vᵀ copy are not needed here
    if mids:
        gX = [gU @ mids[-1].transpose(-1, -2)] + middle_backward(Xs[1:-1], mids, Xs[0].transpose(-1, -2) @ gU)
    else:
        gX = [gU]
    gX.append(gVt.transpose(-1, -2))
    gN = torch.empty_like(N)
    gWs = []
    for k, (W, Y) in enumerate(zip(Ws, Ys)):
        gW, gN[k] = block_backward(W, N[k], Y, gX[k], wide[k], activation)
        gWs.append(gW)
    return gN, gWs, gu, gv


# ----------------------------------------------------------------------------- torch.library
def _op_impl(N: Tensor, Ws: List[Tensor], wide: List[bool], u_extra: Optional[Tensor], v_extra: Optional[Tensor],
             activation: str) -> tuple[Tensor, Tensor]:
    U, Vt, _ = _forward(N, Ws, wide, u_extra, v_extra, activation)
    return U, Vt


_op = torch.library.custom_op("dlrl::block_chain", _op_impl, mutates_args=())


@_op.register_fake
def _(N, Ws, wide, u_extra, v_extra, activation):
    k = 0 if u_extra is None else u_extra.shape[1]
    d = N.shape[-1]
    r = Ws[0].shape[1] if wide[0] else Ws[0].shape[0]
    c = Ws[-1].shape[1] if wide[-1] else Ws[-1].shape[0]
    return N.new_empty(r, d + k), N.new_empty(c, d + k)


def _op_setup(ctx, inputs, output):
    N, Ws, wide, u_extra, v_extra, activation = inputs
    ctx.activation, ctx.wide, ctx.n_extra = activation, list(wide), 0 if u_extra is None else u_extra.shape[1]
    ctx.save_for_backward(N, *Ws)


def _op_backward(ctx, gU, gVt):
    N, *Ws = ctx.saved_tensors
    Ys = block_outputs(N, Ws, ctx.wide, ctx.activation)  # recomputed (custom-op outputs cannot carry them)
    gN, gWs, gu, gv = _backward_core(N, Ws, ctx.wide, Ys, ctx.activation, gU, gVt, ctx.n_extra)
    return gN, gWs, None, gu, gv, None


_op.register_autograd(_op_backward, setup_context=_op_setup)


class _Eager(torch.autograd.Function):
    """The eager twin: same forward and backward functions; keeps the block outputs."""

    @staticmethod
    def forward(ctx, N, wide, u_extra, v_extra, activation, *Ws):
        ctx.set_materialize_grads(False)
        U, Vt, Ys = _forward(N, Ws, wide, u_extra, v_extra, activation)
        ctx.activation, ctx.wide, ctx.n_extra = activation, wide, 0 if u_extra is None else u_extra.shape[1]
        ctx.save_for_backward(N, *Ws, *Ys)
        return U, Vt

    @staticmethod
    def backward(ctx, gU, gVt):
        saved = ctx.saved_tensors
        I = (len(saved) - 1) // 2
        N, Ws, Ys = saved[0], saved[1:1 + I], saved[1 + I:]
        if gU is None and gVt is None:
            return (None,) * (5 + I)
        gN, gWs, gu, gv = _backward_core(N, Ws, ctx.wide, Ys, ctx.activation, gU, gVt, ctx.n_extra)
        return (gN, None, gu, gv, None, *gWs)


def block_chain(N: Tensor, Ws: Sequence[Tensor], activation: str = "relu", u_extra: Optional[Tensor] = None,
                v_extra: Optional[Tensor] = None, wide: Optional[Sequence[bool]] = None):
    """(U', V'ᵀ) = ([X̂_1⋯X̂_{I−1}, u_extra], [X̂_Iᵀ, v_extra]) with X̂_k = act(W_k N_k) — see the
    module doc. N: (I, d, d) symmetric operators; Ws: I weights, each r×d (tall / square) or
    d×c (wide); u_extra (r×k) and v_extra (c×k): columns appended to U and Vᵀ (both or
    neither). ``wide[k]``: block k computes act(W_kᵀ N_k)ᵀ (default: W_k's last dimension is not
    d, as ``lowrank_block``; the published code's rule differs, so the model passes its own).
    Differentiable w.r.t. N, every W_k and the extra columns."""
    Ws = list(Ws)
    wide = default_wide(Ws, N.shape[-1]) if wide is None else [bool(w) for w in wide]
    if not torch.compiler.is_compiling():
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
        if N.dim() != 3 or N.shape[-1] != N.shape[-2] or N.shape[0] != len(Ws) or len(Ws) < 2:
            raise ValueError(f"N: expected shape ({len(Ws)}, d, d) for {len(Ws)} ≥ 2 weights, got {tuple(N.shape)}")
        if (u_extra is None) != (v_extra is None):
            raise ValueError("u_extra/v_extra: give both or neither")
        d = N.shape[-1]
        if len(wide) != len(Ws):
            raise ValueError(f"wide: expected {len(Ws)} flags (one per weight), got {len(wide)}")
        for k, W in enumerate(Ws):
            if W.dim() != 2 or W.shape[0 if wide[k] else 1] != d:
                raise ValueError(f"Ws[{k}]: expected shape {f'({d}, c)' if wide[k] else f'(r, {d})'}, got {tuple(W.shape)}")
            if W.dtype != N.dtype or W.device != N.device:
                raise ValueError(f"Ws[{k}]: expected {N.dtype} on {N.device} like N, got {W.dtype} on {W.device}")
    if torch.compiler.is_compiling():
        return torch.ops.dlrl.block_chain(N, Ws, wide, u_extra, v_extra, activation)
    return _Eager.apply(N, wide, u_extra, v_extra, activation, *Ws)
