"""The differentiable low-rank operator of DLRL blocks (paper Eq. 23, SPEC §2 step 5).

    S = YᵀY (short side),  N = S^a / c(S^a) with a = (2 − p)/2,  X̂ = ReLU(W · N)

This is Eq. 23's ``½ W G⁺`` with ``G = ½ S^{(p−2)/2}``: for p ≤ 2, G⁺ = 2 S^{(2−p)/2} on the
range of S, so the pseudo-inverse disappears and only a positive fractional power is left.
When Y is wide (fewer rows than columns) the operator works on Yᵀ and Wᵀ and transposes
back, so S is always the small min(r, c)² Gram.

Two entries:
- ``lowrank_block(Y, W, p)``: one block (or a batch of same-shape blocks) from its factor Y;
- ``lowrank_block(None, Ws, p, S=S)``: "from Gram" — S (I, d, d) is given (the DLRL model
  builds S_k(η) from three precomputed d×d pieces), ``Ws`` a list of I weights of any
  shapes (r×d, or d×c for a wide block, whose output is ReLU(N W)); ``p`` one exponent or one
  per block. All blocks' powers and normalisations are one batched op call.

Normalisation ``c`` (a scalar per block that W absorbs; it makes X̂ independent of the scale
of Y): ``None`` (c = 1), ``"trace"`` (mean eigenvalue tr(S^a)/d), ``"frobenius"`` (‖S^a‖_F)
or ``"spectral"`` (‖S^a‖₂). The spectral norm is *not* an SVD: on the eigh route the
eigenvalues are at hand and ‖S^a‖₂ = λ_max^a; on the matmul-only Newton route a power
iteration on S^a accelerated by repeated squaring (``SPECTRAL_SQUARINGS`` d×d products)
gives it and its top vector v.

The power and its normalisation are one ``torch.library`` op, ``dlrl::block_power``, with a
fake (meta) implementation and a hand-written backward (SPEC §3, replacing Eqs. 35 and 41):
    Ḡ_P = Ḡ_N / c − ⟨Ḡ_N, N⟩/c · ∂c/∂P     (∂c/∂P: I/d, N, or v vᵀ)
    Ḡ_S = L_a(S, sym Ḡ_P)                    (Daleckii–Krein / Newton dual iteration, see spd_power)
The W products, the ReLU and the Gram are plain differentiable torch ops around it
(Ḡ_W = Ḡ_T Nᵀ, Ḡ_Y = Y (Ḡ_S + Ḡ_Sᵀ) come from autograd), so ``torch.compile`` traces the
whole block.
"""
from __future__ import annotations

import types
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _dispatch
from .._validate import check_float_tensor, check_method, check_p, check_same
from .gram import reference_gram
from .spd_power import (
    default_rtol,
    eigh_power,
    eigh_power_backward,
    newton_power,
    newton_power_backward,
    resolve_method,
    sym,
)

NORMALIZE = (None, "none", "trace", "frobenius", "spectral")
#: squarings for ‖S^a‖₂ on the Newton route: the power method's error falls as (λ₂/λ₁)^(2^j)
SPECTRAL_SQUARINGS = 10


def _triton_impl():
    from .._triton import small_matrix as k

    return types.SimpleNamespace(newton_power=k.newton_power, newton_power_backward=k.newton_power_backward)


def _cpu_impl():
    """The native CPU kernels for the eigh route with the spectral normaliser (the d×d arithmetic
    around torch's eigh: ~75 small torch ops an epoch at d = 20, ``cpu.spectral_power_*``); the
    Newton route stays the reference's."""
    cpu = _dispatch.native_module()
    return types.SimpleNamespace(newton_power=newton_power, newton_power_backward=newton_power_backward,
                                 spectral_forward=cpu.spectral_power_forward,
                                 spectral_backward=cpu.spectral_power_backward)


TABLE = _dispatch.OpTable(
    "lowrank_block",
    ("newton_power", "newton_power_backward"),
    reference=lambda: types.SimpleNamespace(newton_power=newton_power, newton_power_backward=newton_power_backward),
    triton=_triton_impl,
    cpu=_cpu_impl,
)


def _native_spectral(impl, method, normalize, S, *more):
    """Whether ``block_power`` runs the native kernels: backend "cpu", the eigh route, the spectral
    normaliser, a batch (I, d, d) on the CPU, and plain tensors (anything else: the torch code,
    their twin). The last condition is for the backward, which AOTAutograd traces with fake /
    functional tensors whose data the kernels cannot read: a compiled step's backward is the
    twin's ops, the forward stays the opaque op's (native at run time)."""
    return (impl == "cpu" and method == "eigh" and normalize == "spectral" and S.dim() == 3 and S.is_cpu
            and not torch.compiler.is_compiling() and all(type(t) is Tensor for t in (S, *more)))


# ----------------------------------------------------------------------------- the op
def _groups(a: Sequence[float], batch: int):
    """{exponent: batch indices (None = all)}: blocks with the same p share one call."""
    if len(a) == 1:
        return {float(a[0]): None}
    out: dict = {}
    for k, ak in enumerate(a):
        out.setdefault(float(ak), []).append(k)
    return out if len(out) > 1 else {float(a[0]): None}


def _power(S, a, method, rtol, impl):
    """S^a and, on the eigh route, its eigen-decomposition (λ ascending, Q)."""
    if method == "eigh":
        P, (lam, Q, _) = eigh_power(S, a, rtol)
        return P, lam, Q
    P = sym(S) if a == 1.0 else impl.newton_power(S, a, None, rtol)
    return P, None, None


def power_iteration_top(P, squarings=SPECTRAL_SQUARINGS):
    """λ_max and unit top eigenvector of symmetric PSD P (..., d, d), matmul only.

    Power iteration accelerated by repeated squaring: B = P^(2^j) (normalised at each step)
    after ``squarings`` d×d products, so the other directions shrink by (λ₂/λ₁)^(2^j); the
    largest column of B is then the top direction (it cannot vanish, unlike a fixed start
    vector that could be orthogonal to it), and its Rayleigh quotient gives λ_max."""
    tiny = torch.finfo(P.dtype).tiny
    B = P / torch.linalg.matrix_norm(P, keepdim=True).clamp_min(tiny)
    for _ in range(squarings):
        B = B @ B
        B = B / torch.linalg.matrix_norm(B, keepdim=True).clamp_min(tiny)
    j = torch.linalg.vector_norm(B, dim=-2).argmax(-1)  # the largest column
    v = torch.take_along_dim(B, j[..., None, None], dim=-1)[..., 0]
    v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(tiny)
    v = (P @ v[..., None])[..., 0]  # one plain step more
    v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(tiny)
    return (v * (P @ v[..., None])[..., 0]).sum(-1), v


def _scale(P, lam, Q, a, normalize):
    """(c, v): the normaliser of P = S^a and, for "spectral", its top unit vector."""
    tiny = torch.finfo(P.dtype).tiny
    if normalize in (None, "none"):
        return torch.ones(P.shape[:-2], dtype=P.dtype, device=P.device), P.new_zeros(P.shape[:-1])
    if normalize == "trace":
        c = P.diagonal(dim1=-2, dim2=-1).sum(-1) / P.shape[-1]
        return c.clamp_min(tiny), P.new_zeros(P.shape[:-1])
    if normalize == "frobenius":
        return torch.linalg.matrix_norm(P).clamp_min(tiny), P.new_zeros(P.shape[:-1])
    # spectral
    if lam is not None:
        # f(λ) = λ^a is increasing (a ≥ 0): the largest eigenvalue of S^a is f(λ_max), and its
        # eigenvector is S's top one; read both off the decomposition the power used
        top = lam[..., -1]
        c = torch.where(top > 0, top.clamp_min(tiny) ** a, torch.zeros_like(top))
        return c.clamp_min(tiny), Q[..., :, -1].clone()  # (not a view of Q: op outputs may not alias)
    c, v = power_iteration_top(P)
    return c.clamp_min(tiny), v


def _block_power_impl(S: Tensor, a: List[float], normalize: str, method: str, rtol: Optional[float],
                impl: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(N, c, v, λ, Q): N = S^a / c for a batch S (..., d, d), one exponent per batch entry
    (``a`` of length 1 or S.shape[0]). v: top vector ("spectral"), λ/Q: the eigh route's
    decomposition (empty on the Newton route) — saved for the backward."""
    fn = TABLE.load(impl)
    if _native_spectral(impl, method, normalize, S):
        return fn.spectral_forward(S, a, default_rtol(S) if rtol is None else rtol)
    nz = None if normalize == "none" else normalize
    eigh = method == "eigh"
    groups = _groups(a, S.shape[0] if S.dim() > 2 else 1)
    if len(groups) > 1:  # (one group, the common case, returns its results as they are: no copies)
        N = torch.empty_like(S)
        c = S.new_empty(S.shape[:-2])
        v = S.new_empty(S.shape[:-1])
        lam = S.new_empty(S.shape[:-1] if eigh else (0,))
        Q = S.new_empty(S.shape if eigh else (0,))
    for ak, idx in groups.items():
        Sg = S if idx is None else S[idx]
        P, lg, Qg = _power(Sg, ak, method, rtol, fn)
        cg, vg = _scale(P, lg, Qg, ak, nz)
        Ng = P / cg[..., None, None]
        if idx is None:
            N, c, v = Ng, cg, vg
            # eigh returns column-major Q; the fake says row-major
            lam, Q = (lg, Qg.contiguous()) if eigh else (S.new_empty((0,)), S.new_empty((0,)))
        else:
            N[idx], c[idx], v[idx] = Ng, cg, vg
            if eigh:
                lam[idx], Q[idx] = lg, Qg
    return N, c, v, lam, Q


_block_power_op = torch.library.custom_op("dlrl::block_power", _block_power_impl, mutates_args=())


@_block_power_op.register_fake
def _(S, a, normalize, method, rtol, impl):
    eigh = method == "eigh"
    return (torch.empty_like(S), S.new_empty(S.shape[:-2]), S.new_empty(S.shape[:-1]),
            S.new_empty(S.shape[:-1] if eigh else (0,)), S.new_empty(S.shape if eigh else (0,)))


def _setup(ctx, inputs, output):
    S, a, normalize, method, rtol, impl = inputs
    N, c, v, lam, Q = output
    ctx.a, ctx.normalize, ctx.method, ctx.rtol, ctx.impl = list(a), normalize, method, rtol, impl
    ctx.save_for_backward(S, N, c, v, lam, Q)


def _backward(ctx, gN, gc, gv, glam, gQ):
    S, N, c, v, lam, Q = ctx.saved_tensors
    if gN is None:  # only N is differentiated (c, v, λ, Q are saved for the backward)
        return None, None, None, None, None, None
    # grad mode on inside a backward = create_graph (a double backward): the native kernel's
    # result has no graph, so the twin's differentiable ops run instead
    if not torch.is_grad_enabled() and _native_spectral(ctx.impl, ctx.method, ctx.normalize, S, gN, N):
        gS = TABLE.load("cpu").spectral_backward(gN, N, c, v, lam, Q, ctx.a,
                                                  default_rtol(S) if ctx.rtol is None else ctx.rtol)
        return gS, None, None, None, None, None
    cc = c[..., None, None]
    gP = gN / cc
    if ctx.normalize != "none":
        inner = (gN * N).sum((-1, -2), keepdim=True) / cc
        d = N.shape[-1]
        if ctx.normalize == "trace":
            gP = gP - inner * torch.eye(d, dtype=N.dtype, device=N.device) / d
        elif ctx.normalize == "frobenius":
            gP = gP - inner * N
        else:  # spectral: ∂λ_max(P)/∂P = v vᵀ
            gP = gP - inner * (v[..., :, None] * v[..., None, :])
    groups = _groups(ctx.a, S.shape[0] if S.dim() > 2 else 1)
    gS = torch.empty_like(S) if len(groups) > 1 else None
    fn = TABLE.load(ctx.impl) if ctx.method != "eigh" else None
    for ak, idx in groups.items():
        sel = (lambda t: t) if idx is None else (lambda t: t[idx])
        if ctx.method == "eigh":
            lg = sel(lam)
            rtol = default_rtol(S) if ctx.rtol is None else ctx.rtol
            rng = lg > rtol * lg[..., -1:].clamp_min(0)
            g = (_sqrt_backward if ak == 0.5 else eigh_power_backward)(sel(gP), ak, lg, sel(Q), rng)
        elif ak == 1.0:
            g = sym(sel(gP))
        else:
            g = fn.newton_power_backward(sel(S), ak, sel(gP), None, ctx.rtol)
        if idx is None:
            gS = g
        else:
            gS[idx] = g
    return gS, None, None, None, None, None


_block_power_op.register_autograd(_backward, setup_context=_setup)
#: ``dlrl::block_power``, or in eager mode its autograd.Function twin (same functions; see
#: ``_dispatch.EagerOp``): block_power(S, a, normalize, method, rtol, impl) → (N, c, v, λ, Q)
block_power = _dispatch.EagerOp(torch.ops.dlrl.block_power, _block_power_impl, _setup, _backward, none_grads=True)


def _sqrt_backward(C, a, lam, Q, rng):
    """``eigh_power_backward`` for a = ½ (p = 1, the default): the Loewner matrix of √λ is
    Γ_ij = 1/(√λ_i + √λ_j), with √λ = 0 on the null space, which also gives the one-in-range
    entries λ^{−½}; the null–null block is 0 as in the general convention. Two elementwise
    ops instead of the general form's dozen (it runs every epoch)."""
    s = torch.where(rng, lam.clamp_min(0).sqrt(), torch.zeros_like(lam))
    den = s[..., :, None] + s[..., None, :]
    G = torch.where(den > 0, 1.0 / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))
    Qt = Q.transpose(-1, -2)
    Cs = C + C.transpose(-1, -2)  # 2·sym(C); the ½ goes into the final symmetrisation
    M = Q @ (G * (Qt @ Cs @ Q)) @ Qt
    return 0.25 * (M + M.transpose(-1, -2))


# ----------------------------------------------------------------------------- wrapper
def _apply_w(W, N, activation="relu"):
    """ReLU(W N) for a tall / square W (…, r, d); ReLU(N W) for a wide one (…, d, c) — the
    transposed short-side form, since N is symmetric. ``activation="none"``: no ReLU.

    The wide output is computed as (Wᵀ N)ᵀ (= N W, N symmetric) so that its transpose, the
    c×d layout the sparse kernels read, is contiguous: no copy per epoch."""
    d = N.shape[-1]
    if W.shape[-1] == d:
        T = W @ N
    else:
        T = (W.transpose(-1, -2) @ N).transpose(-1, -2)
    return torch.relu(T) if activation == "relu" else T


ACTIVATIONS = ("relu", "none")


def lowrank_block(Y, W, p, method: str = "auto", normalize=None, rtol=None, backend: str = "auto", *, S=None,
                  activation: str = "relu"):
    """ReLU(W · N(S)), N(S) = S^{(2−p)/2} / c, S = YᵀY on the short side (or ``S`` given).

    From the factor: Y, W (..., r, c) of the same shape; differentiable w.r.t. Y and W.
    From the Gram (``Y=None, S=S``): S (I, d, d) symmetric PSD and ``W`` a list of I weights,
    W_k of shape (r, d) (output ReLU(W_k N_k)) or (d, c) with c ≠ d (output ReLU(N_k W_k));
    returns the list of I outputs; differentiable w.r.t. S and every W_k. A single tensor W
    with S (..., d, d) is accepted too (one output).
    p ∈ (0, 2]: the Schatten exponent (one, or one per block of S). method: as ``spd_power``.
    normalize: None, "trace", "frobenius" or "spectral" (see module doc). activation: "relu"
    (the paper's X̂ = ReLU(T)) or "none" (X̂ = T, for signed targets).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize: expected one of {NORMALIZE}, got {normalize!r}")
    nz = "none" if normalize is None else normalize
    if S is None:
        if Y is None:
            raise ValueError("Y: expected a tensor (or S= for the from-Gram entry), got None")
        if not torch.compiler.is_compiling():
            check_float_tensor(Y, "Y", ndim_min=2)
            check_float_tensor(W, "W", ndim_min=2)
            check_same(Y, "Y", W, "W")
            if W.shape != Y.shape:
                raise ValueError(f"W: expected the shape of Y {tuple(Y.shape)}, got {tuple(W.shape)}")
        p = check_p(p)
        a = (2.0 - p) / 2.0
        be, _ = TABLE.resolve(backend, Y.device, cuda_ok=False)
        method = resolve_method(method, a, Y.device, be)
        wide = Y.shape[-2] < Y.shape[-1]
        if wide:
            Y, W = Y.transpose(-1, -2), W.transpose(-1, -2)
        N = block_power(reference_gram(Y), [a], nz, method, rtol, be)[0]
        out = W @ N
        out = torch.relu(out) if activation == "relu" else out
        return out.transpose(-1, -2) if wide else out
    if Y is not None:
        raise ValueError("S: give either Y (the factor) or S (its Gram), not both")
    single = isinstance(W, torch.Tensor)
    Ws = [W] if single else list(W)
    ps = list(p) if isinstance(p, (list, tuple)) else [p]
    if not torch.compiler.is_compiling():
        check_float_tensor(S, "S", ndim_min=2)
        if S.shape[-1] != S.shape[-2]:
            raise ValueError(f"S: expected square matrices (..., d, d), got shape {tuple(S.shape)}")
        d = S.shape[-1]
        if not single:
            if S.dim() != 3 or S.shape[0] != len(Ws):
                raise ValueError(f"S: expected shape ({len(Ws)}, d, d) (one Gram per W), got {tuple(S.shape)}")
        for k, Wk in enumerate(Ws):
            nm = "W" if single else f"W[{k}]"
            check_float_tensor(Wk, nm, ndim_min=2)
            check_same(S, "S", Wk, nm)
            if Wk.shape[-1] != d and Wk.shape[-2] != d:
                raise ValueError(f"{nm}: expected shape (r, {d}) or ({d}, c) to match S, got {tuple(Wk.shape)}")
        if len(ps) not in (1, S.shape[0] if S.dim() > 2 else 1):
            raise ValueError(f"p: expected 1 or {S.shape[0]} exponents (one per Gram), got {len(ps)}")
        ps = [check_p(x) for x in ps]
    a = [(2.0 - float(x)) / 2.0 for x in ps]
    be, _ = TABLE.resolve(backend, S.device, cuda_ok=False)
    methods = {resolve_method(method, ak, S.device, be) for ak in set(a)}
    meth = "eigh" if "eigh" in methods else "newton"
    N = block_power(S, a, nz, meth, rtol, be)[0]
    if single:
        return _apply_w(W, N, activation)
    return [_apply_w(Wk, Nk, activation) for Wk, Nk in zip(Ws, N.unbind(0))]  # one unbind, not I selects
