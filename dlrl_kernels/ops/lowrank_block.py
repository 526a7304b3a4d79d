"""The differentiable low-rank operator of one DLRL block (paper Eq. 23, SPEC §2 step 5).

    S = YᵀY (short side),  T = W · S^a with a = (2 − p)/2,  X̂ = ReLU(T)

This is Eq. 23's ``½ W G⁺`` with ``G = ½ S^{(p−2)/2}``: for p ≤ 2, G⁺ = 2 S^{(2−p)/2} on the
range of S, so the pseudo-inverse disappears and only a positive fractional power is left.
When Y is wide (fewer rows than columns) the operator works on Yᵀ and Wᵀ and transposes
back, so S is always the small min(r, c)² Gram.

``normalize="trace"`` divides S^a by its mean eigenvalue tr(S^a)/d — a scalar that makes
X̂ independent of the scale of Y (W carries the scale). SPEC §2 reports that the plain
power blows the factor scales up in training; the DLRL module's "paper" mode uses this.

Backward (hand-written, SPEC §3, replacing Eqs. 35 and 41):
    Ḡ_T = Ḡ ⊙ 1[T > 0]
    Ḡ_W = Ḡ_T (S^a)ᵀ
    Ḡ_{S^a} = Wᵀ Ḡ_T       (then through the normalisation, if any)
    Ḡ_S = L_a(S, sym Ḡ_{S^a})   (Daleckii–Krein / Newton dual iteration, see spd_power)
    Ḡ_Y = Y (Ḡ_S + Ḡ_Sᵀ)
"""
from __future__ import annotations

import torch

from .. import _dispatch
from .._validate import check_float_tensor, check_method, check_p, check_same
from .gram import reference_gram
from .spd_power import (
    eigh_power,
    eigh_power_backward,
    newton_power,
    newton_power_backward,
    resolve_method,
)


class LowRankBlockFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, Y, W, a, method, normalize, rtol, backend):
        S = reference_gram(Y)
        if method == "eigh":
            P, (lam, Q, rng) = eigh_power(S, a, rtol)
            ctx.eig = (lam, Q, rng)
        else:
            if backend == "triton":
                from .._triton import small_matrix as k

                P = k.newton_power(S, a, None, rtol)
            else:
                P = newton_power(S, a, None, rtol)
            ctx.eig = None
        c = None
        if normalize == "trace":
            d = P.shape[-1]
            c = (P.diagonal(dim1=-2, dim2=-1).sum(-1) / d).clamp_min(torch.finfo(P.dtype).tiny)
            N = P / c[..., None, None]
        else:
            N = P
        T = W @ N
        ctx.a, ctx.method, ctx.normalize, ctx.backend, ctx.rtol = a, method, normalize, backend, rtol
        ctx.save_for_backward(Y, W, S, P, N, T, c if c is not None else torch.empty(0))
        return torch.relu(T)

    @staticmethod
    def backward(ctx, g):
        Y, W, S, P, N, T, c = ctx.saved_tensors
        gT = torch.where(T > 0, g, torch.zeros((), dtype=g.dtype, device=g.device))
        gW = gT @ N.transpose(-1, -2)
        gN = W.transpose(-1, -2) @ gT
        if ctx.normalize == "trace":
            d = P.shape[-1]
            cc = c[..., None, None]
            inner = (gN * P).sum((-1, -2), keepdim=True)
            eye = torch.eye(d, dtype=P.dtype, device=P.device)
            gP = gN / cc - inner / (cc * cc * d) * eye
        else:
            gP = gN
        if ctx.method == "eigh":
            gS = eigh_power_backward(gP, ctx.a, *ctx.eig)
        elif ctx.backend == "triton":
            from .._triton import small_matrix as k

            gS = k.newton_power_backward(S, ctx.a, gP, None, ctx.rtol)
        else:
            gS = newton_power_backward(S, ctx.a, gP, None, ctx.rtol)
        gY = Y @ (gS + gS.transpose(-1, -2))
        return gY, gW, None, None, None, None, None


def lowrank_block(Y, W, p, method: str = "auto", normalize=None, rtol=None, backend: str = "auto"):
    """ReLU(W · (YᵀY)^{(2−p)/2}) on the short side; differentiable w.r.t. Y and W.

    Y, W: (..., r, c) of the same shape (W is the learnable Lagrange multiplier of the block).
    p ∈ (0, 2]: the block's Schatten exponent. method: as ``spd_power``. normalize: None or
    "trace" (see module doc).
    """
    check_float_tensor(Y, "Y", ndim_min=2)
    check_float_tensor(W, "W", ndim_min=2)
    check_same(Y, "Y", W, "W")
    if W.shape != Y.shape:
        raise ValueError(f"W: expected the shape of Y {tuple(Y.shape)}, got {tuple(W.shape)}")
    p = check_p(p)
    if normalize not in (None, "trace"):
        raise ValueError(f"normalize: expected None or 'trace', got {normalize!r}")
    a = (2.0 - p) / 2.0
    be = _dispatch.resolve(backend, Y.device, "lowrank_block")
    method = resolve_method(method, a, Y.device, be)
    wide = Y.shape[-2] < Y.shape[-1]
    if wide:
        Y, W = Y.transpose(-1, -2), W.transpose(-1, -2)
    out = LowRankBlockFn.apply(Y, W, a, method, normalize, rtol, be)
    return out.transpose(-1, -2) if wide else out
