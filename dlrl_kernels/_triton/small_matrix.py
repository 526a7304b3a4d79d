"""Batched small-matrix kernels (d ≤ 128): one Triton program per matrix.

Public functions (twins of the references in ``dlrl_kernels.ops``):

- ``gram(Y)``: Y (..., r, d) -> YᵀY; rows swept in BLOCK_R chunks (d tiled in BLOCK_D tiles
  when d > 128; on a GPU with few matrices the rows are also split across programs and the
  partial Grams summed by torch — deterministic).
- ``ns_pinv(G, max_iters)``: ``ops.pinv.ns_pinv`` (same scale α = 1/c², same relative-step
  stop rule per matrix, same cap), returns X only; ``ns_pinv_full`` also propagates a
  tangent dX (forward mode).
- ``ns_sqrt(A, iters, dA)``: ``ops.spd_power.ns_sqrt`` (coupled Newton–Schulz, step-minimum
  stop rule per matrix, optional dual/tangent pair) -> (Y, Z, dY, dZ).
- ``newton_power(S, a, iters)`` / ``newton_power_backward(S, a, C, iters)``:
  ``ops.spd_power.newton_power`` / ``newton_power_backward``. For dyadic a ∈ (0, 1) (the
  DLRL case: a = (2 − p)/2, ½ for p = 1) each is ONE fused kernel per batch: scale, nested
  square roots, products, rescale — and for the backward the null-space projection (a
  Newton–Schulz pseudo-inverse inside the same program) and the tangent iteration.
  Other exponents (a ≤ 0, or ``fused=False``) run the reference's orchestration
  (``_unit_power`` below, mirroring ``ops.spd_power._newton_unit_power``) in Python, with the
  Newton–Schulz iterations in the ``ns_sqrt`` / ``ns_pinv`` kernels and torch for the few
  d×d glue products.
- ``power_iteration(S, iters)``: ``ops.spectral_norm.power_iteration``.

Padding. Every program loads its d×d (or r×c) matrix into a BD×BD register tile,
BD = next power of two ≥ max(d, 16), with zeros outside (masked loads). Every identity that
appears in an iteration is the *embedded* identity E_d = diag(1,…,1,0,…,0), not the BD×BD
one. Then every iterate is block diagonal [[M, 0], [0, 0]]: the padded block stays exactly
zero (a 0×0 problem), the real block follows exactly the d×d iteration, and the Frobenius
norms used by the stop rules and the scale bounds (F-norm, row / column abs sums) are the
same as without padding. (Zero-padding with the full identity would be wrong for the
coupled square root: Z's padded block would grow like 1.5^k — the inverse root of the
padded zero eigenvalues.) Only the d×d part is stored.

Precision: the Newton–Schulz iterations converge to working precision only with exact
products, so every ``tl.dot`` here uses ``input_precision="ieee"`` (exact in the
interpreter; fp32 FMA / fp64 DMMA on the GPU). TF32 would be acceptable only for ``gram``
when it feeds the Lipschitz bound / spectral norm (a few-digit quantity) — not when it
feeds S^a — so it stays "ieee" by default (``GRAM_PRECISION``).

d > 128 (``MAX_D``): the single-program register tiles would spill; those calls fall back
to the reference functions (``gram`` tiles over d and has no such limit).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import ON_GPU, check_dtype, next_pow2, num_sms

MAX_D = 128
GRAM_PRECISION = "ieee"


def _warps(bd):
    return 4 if bd <= 32 else 8


# ============================================================================ jit helpers
@triton.jit
def _fro(x):
    return tl.sqrt(tl.sum(tl.sum(x * x, axis=1), axis=0))


@triton.jit
def _rel_step(xn, x):
    """‖xn − x‖_F / ‖xn‖_F with the reference's tiny clamp semantics (0/0 -> 0, t/0 -> inf)."""
    num = _fro(xn - x)
    den = _fro(xn)
    safe = tl.where(den > 0, den, 1.0)
    return tl.where(den > 0, num / safe, tl.where(num > 0, float("inf"), 0.0))


@triton.jit
def _sym(x):
    return 0.5 * (x + tl.trans(x))


@triton.jit
def _eye(BD: tl.constexpr, n, dtype: tl.constexpr):
    """Embedded identity E_n (ones on the first n diagonal entries only)."""
    i = tl.arange(0, BD)
    on = (i[:, None] == i[None, :]) & (i[:, None] < n)
    return tl.where(on, 1.0, 0.0).to(dtype)


@triton.jit
def _ns_sqrt_loop(Y, Z, dY, dZ, EYE, iters, floor, TANGENT: tl.constexpr, PREC: tl.constexpr):
    """Coupled Newton–Schulz Y -> A^{1/2}, Z -> A^{-1/2} with the step-minimum stop rule."""
    prev = tl.sum(tl.sum(Y * 0.0, axis=1), axis=0) + float("inf")
    active = tl.sum(tl.sum(Y * 0.0, axis=1), axis=0) == 0.0
    it = 0
    while active & (it < iters):
        ZY = tl.dot(Z, Y, input_precision=PREC)
        T = 1.5 * EYE - 0.5 * ZY
        Yn = tl.dot(Y, T, input_precision=PREC)
        Zn = tl.dot(T, Z, input_precision=PREC)
        rel = _rel_step(Yn, Y)
        stop = (prev <= floor) | ((prev < 0.25) & (rel >= prev))
        if TANGENT:
            dZY = tl.dot(dZ, Y, input_precision=PREC) + tl.dot(Z, dY, input_precision=PREC)
            dT = -0.5 * dZY
            dYn = tl.dot(dY, T, input_precision=PREC) + tl.dot(Y, dT, input_precision=PREC)
            dZn = tl.dot(dT, Z, input_precision=PREC) + tl.dot(T, dZ, input_precision=PREC)
            dY = tl.where(stop, dY, dYn)
            dZ = tl.where(stop, dZ, dZn)
        Y = tl.where(stop, Y, Yn)
        Z = tl.where(stop, Z, Zn)
        prev = tl.where(stop, prev, rel)
        active = stop == 0
        it += 1
    return Y, Z, dY, dZ


@triton.jit
def _schulz_alpha(G):
    """(α = 1/c², c > 0) with c = min(‖G‖_F, √(‖G‖_1 ‖G‖_∞)) ≥ σ_max (ops.pinv.schulz_scale)."""
    fro = _fro(G)
    a = tl.abs(G)
    n1 = tl.max(tl.sum(a, axis=0), axis=0)
    ninf = tl.max(tl.sum(a, axis=1), axis=0)
    c = tl.minimum(fro, tl.sqrt(n1 * ninf))
    safe = tl.where(c > 0, c, 1.0)
    return 1.0 / (safe * safe), c > 0


@triton.jit
def _ns_pinv_loop(G, X, dG, dX, EYE_R, max_iters, floor, active, TANGENT: tl.constexpr, PREC: tl.constexpr):
    """Schulz X <- X (2I − G X) with the relative-step stop rule (ops.pinv.ns_pinv)."""
    prev = tl.sum(tl.sum(X * 0.0, axis=1), axis=0) + float("inf")
    it = 0
    while active & (it < max_iters):
        GX = tl.dot(G, X, input_precision=PREC)
        M = 2.0 * EYE_R - GX
        Xn = tl.dot(X, M, input_precision=PREC)
        rel = _rel_step(Xn, X)
        stop = (prev <= floor) | ((prev < 0.25) & (rel >= prev))
        if TANGENT:
            dGX = tl.dot(dG, X, input_precision=PREC) + tl.dot(G, dX, input_precision=PREC)
            dXn = tl.dot(dX, M, input_precision=PREC) - tl.dot(X, dGX, input_precision=PREC)
            dX = tl.where(stop, dX, dXn)
        X = tl.where(stop, X, Xn)
        prev = tl.where(stop, prev, rel)
        active = stop == 0
        it += 1
    return X, dX


@triton.jit
def _load_sq(P, b, s_b, s_i, s_j, nr, nc, BD: tl.constexpr):
    i = tl.arange(0, BD)
    msk = (i[:, None] < nr) & (i[None, :] < nc)
    return tl.load(P + b * s_b + i[:, None] * s_i + i[None, :] * s_j, mask=msk, other=0.0)


@triton.jit
def _store_sq(P, b, s_b, s_i, s_j, x, nr, nc, BD: tl.constexpr):
    i = tl.arange(0, BD)
    msk = (i[:, None] < nr) & (i[None, :] < nc)
    tl.store(P + b * s_b + i[:, None] * s_i + i[None, :] * s_j, x, mask=msk)


# ============================================================================ kernels
@triton.jit
def _gram_kernel(
    Y, OUT, r, d, rows_per_split,
    s_yb, s_yr, s_yd, s_os, s_ob, s_oi, s_oj,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    sp = tl.program_id(2)
    nt = tl.cdiv(d, BLOCK_D)
    ti = tile // nt
    tj = tile % nt
    ci = ti * BLOCK_D + tl.arange(0, BLOCK_D)
    cj = tj * BLOCK_D + tl.arange(0, BLOCK_D)
    lo = sp * rows_per_split
    hi = tl.minimum(r, lo + rows_per_split)
    acc = tl.zeros((BLOCK_D, BLOCK_D), dtype=Y.dtype.element_ty)
    base = Y + b * s_yb
    for r0 in range(lo, hi, BLOCK_R):
        rr = r0 + tl.arange(0, BLOCK_R)
        r_ok = rr < hi
        yi = tl.load(base + rr[:, None] * s_yr + ci[None, :] * s_yd, mask=r_ok[:, None] & (ci < d)[None, :], other=0.0)
        yj = tl.load(base + rr[:, None] * s_yr + cj[None, :] * s_yd, mask=r_ok[:, None] & (cj < d)[None, :], other=0.0)
        acc = tl.dot(tl.trans(yi), yj, acc, input_precision=PREC)
    msk = (ci < d)[:, None] & (cj < d)[None, :]
    tl.store(OUT + sp * s_os + b * s_ob + ci[:, None] * s_oi + cj[None, :] * s_oj, acc, mask=msk)


@triton.jit
def _pinv_kernel(
    G, X, DG, DX, nr, nc, max_iters, floor,
    s_gb, s_gi, s_gj, s_xb, s_xi, s_xj,
    TANGENT: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    g = _load_sq(G, b, s_gb, s_gi, s_gj, nr, nc, BD)
    alpha, active = _schulz_alpha(g)
    x = alpha * tl.trans(g)
    if TANGENT:
        dg = _load_sq(DG, b, s_gb, s_gi, s_gj, nr, nc, BD)
        dx = alpha * tl.trans(dg)
    else:
        dg = g
        dx = x
    eye_r = _eye(BD, nr, g.dtype)
    x, dx = _ns_pinv_loop(g, x, dg, dx, eye_r, max_iters, floor, active, TANGENT, PREC)
    _store_sq(X, b, s_xb, s_xi, s_xj, x, nc, nr, BD)
    if TANGENT:
        _store_sq(DX, b, s_xb, s_xi, s_xj, dx, nc, nr, BD)


@triton.jit
def _sqrt_kernel(
    A, Y, Z, DA, DY, DZ, d, iters, floor,
    s_b, s_i, s_j, s_ob, s_oi, s_oj,
    TANGENT: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    y = _load_sq(A, b, s_b, s_i, s_j, d, d, BD)
    eye = _eye(BD, d, y.dtype)
    z = eye
    if TANGENT:
        dy = _load_sq(DA, b, s_b, s_i, s_j, d, d, BD)
        dz = y * 0.0
    else:
        dy = y
        dz = z
    y, z, dy, dz = _ns_sqrt_loop(y, z, dy, dz, eye, iters, floor, TANGENT, PREC)
    _store_sq(Y, b, s_ob, s_oi, s_oj, y, d, d, BD)
    _store_sq(Z, b, s_ob, s_oi, s_oj, z, d, d, BD)
    if TANGENT:
        _store_sq(DY, b, s_ob, s_oi, s_oj, dy, d, d, BD)
        _store_sq(DZ, b, s_ob, s_oi, s_oj, dz, d, d, BD)


@triton.jit
def _power_kernel(
    S, C, OUT, d, iters, pinv_iters, floor_sqrt, floor_pinv,
    s_b, s_i, s_j, s_cb, s_ci, s_cj, s_ob, s_oi, s_oj,
    A_EXP: tl.constexpr, BITS: tl.constexpr, NBITS: tl.constexpr, FIRST: tl.constexpr,
    BACKWARD: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr,
):
    """S^a (BACKWARD=False) or its adjoint applied to C (BACKWARD=True), dyadic a ∈ (0,1).

    a = Σ_j bit_j 2^{-(j+1)}, bit_j = (BITS >> j) & 1, j < NBITS; FIRST = first set bit.
    """
    b = tl.program_id(0).to(tl.int64)
    s = _load_sq(S, b, s_b, s_i, s_j, d, d, BD)
    # newton_scale: c = min(‖S‖_F, ‖S‖_∞) (of S as given), 1 where it is 0
    c = tl.minimum(_fro(s), tl.max(tl.sum(tl.abs(s), axis=1), axis=0))
    c = tl.where(c > 0, c, 1.0)
    A = _sym(s) / c
    eye = _eye(BD, d, s.dtype)
    if BACKWARD:
        cs = _sym(_load_sq(C, b, s_cb, s_ci, s_cj, d, d, BD))
        # null–null block of the adjoint is zero by convention: Cs -= Pn Cs Pn, Pn = I − A A⁺
        alpha, act = _schulz_alpha(A)
        xp, _unused = _ns_pinv_loop(A, alpha * tl.trans(A), A, A, eye, pinv_iters, floor_pinv, act, False, PREC)
        pn = _sym(eye - tl.dot(A, xp, input_precision=PREC))
        cs = cs - tl.dot(tl.dot(pn, cs, input_precision=PREC), pn, input_precision=PREC)
        dR = cs / c
    else:
        dR = A
    R = A
    P = eye
    dP = A * 0.0
    for j in tl.static_range(NBITS):
        R, Zj, dR, dZj = _ns_sqrt_loop(R, eye, dR, A * 0.0, eye, iters, floor_sqrt, BACKWARD, PREC)
        if (BITS >> j) & 1:
            if j == FIRST:
                P = R
                dP = dR
            else:
                if BACKWARD:
                    dP = tl.dot(dP, R, input_precision=PREC) + tl.dot(P, dR, input_precision=PREC)
                P = tl.dot(P, R, input_precision=PREC)
    if A_EXP == 0.5:
        ca = tl.sqrt(c)
    else:
        ca = tl.exp(A_EXP * tl.log(c))
    if BACKWARD:
        out = _sym(dP * ca)
    else:
        out = P * ca
    _store_sq(OUT, b, s_ob, s_oi, s_oj, out, d, d, BD)


@triton.jit
def _power_iter_kernel(S, OUT, d, iters, s_b, s_i, s_j, BD: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    s = _load_sq(S, b, s_b, s_i, s_j, d, d, BD)
    i = tl.arange(0, BD)
    ramp = (1e-3 * i.to(s.dtype)) / d
    v = tl.where(i < d, 1.0 + ramp, 0.0).to(s.dtype)
    v = v / tl.sqrt(tl.sum(v * v, axis=0))
    for _ in range(iters):
        w = tl.sum(s * v[None, :], axis=1)
        nw = tl.sqrt(tl.sum(w * w, axis=0))
        v = tl.where(nw > 0, w / tl.where(nw > 0, nw, 1.0), 0.0)
    sv = tl.sum(s * v[None, :], axis=1)
    tl.store(OUT + b, tl.sum(v * sv, axis=0))


# ============================================================================ host side
def _flat(M, r, c):
    B = M.reshape(-1, r, c)
    return B


def _floor(n, dtype):
    return 8 * n * torch.finfo(dtype).eps


def _default_sqrt_iters(dtype):
    return 40 if dtype == torch.float64 else 32


def _default_pinv_iters(dtype):
    return 60 if dtype == torch.float64 else 40


def gram(Y, split=None):
    """YᵀY for Y (..., r, d). ``split``: row ranges per matrix (None: 1 on CPU, enough on GPU)."""
    check_dtype(Y)
    *batch, r, d = Y.shape
    Yb = _flat(Y, r, d)
    nb = Yb.shape[0]
    if nb == 0 or d == 0:
        return Y.new_zeros((*batch, d, d))
    block_d = min(next_pow2(d), 64 if d > 128 else 128)
    nt = triton.cdiv(d, block_d)
    block_r = 16 if block_d >= 128 else 32
    if split is None:
        split = 1
        if ON_GPU and Y.device.type == "cuda":
            want = triton.cdiv(2 * num_sms(Y.device), nb * nt * nt)
            split = max(1, min(want, triton.cdiv(r, 256)))
    split = max(1, min(int(split), max(1, r)))
    rows_per_split = triton.cdiv(max(r, 1), split)
    out = torch.zeros((split, nb, d, d), dtype=Y.dtype, device=Y.device)
    _gram_kernel[(nb, nt * nt, split)](
        Yb, out, r, d, rows_per_split,
        Yb.stride(0), Yb.stride(1), Yb.stride(2), out.stride(0), out.stride(1), out.stride(2), out.stride(3),
        BLOCK_R=block_r, BLOCK_D=block_d, PREC=GRAM_PRECISION, num_warps=_warps(block_d),
    )
    G = out[0] if split == 1 else out.sum(0)
    return G.reshape(*batch, d, d)


def ns_pinv_full(G, max_iters=None, dG=None):
    """(X, dX): Newton–Schulz pseudo-inverse of G (..., r, c) and its tangent along dG."""
    check_dtype(G, dG)
    if max_iters is None:
        max_iters = _default_pinv_iters(G.dtype)
    *batch, r, c = G.shape
    if max(r, c) > MAX_D:
        from ..ops.pinv import ns_pinv as ref

        X, dX, _ = ref(G, max_iters, dG)
        return X, dX
    Gb = _flat(G, r, c).contiguous()
    nb = Gb.shape[0]
    X = torch.empty((nb, c, r), dtype=G.dtype, device=G.device)
    tangent = dG is not None
    dGb = _flat(dG, r, c).contiguous() if tangent else Gb
    dX = torch.empty_like(X) if tangent else X
    if nb:
        bd = next_pow2(max(r, c))
        _pinv_kernel[(nb,)](
            Gb, X, dGb, dX, r, c, int(max_iters), _floor(max(r, c), G.dtype),
            Gb.stride(0), Gb.stride(1), Gb.stride(2), X.stride(0), X.stride(1), X.stride(2),
            TANGENT=tangent, BD=bd, PREC="ieee", num_warps=_warps(bd),
        )
    X = X.reshape(*batch, c, r)
    return X, (dX.reshape(*batch, c, r) if tangent else None)


def ns_pinv(G, max_iters=None):
    """Newton–Schulz pseudo-inverse (``ops.pinv.ns_pinv``'s X)."""
    return ns_pinv_full(G, max_iters)[0]


def ns_sqrt(A, iters=None, dA=None):
    """(Y ≈ A^{1/2}, Z ≈ A^{-1/2} on the range, dY, dZ) for symmetric A with spectrum in [0, 1]."""
    check_dtype(A, dA)
    if iters is None:
        iters = _default_sqrt_iters(A.dtype)
    d = A.shape[-1]
    if d > MAX_D:
        from ..ops.spd_power import ns_sqrt as ref

        return ref(A, iters, dA)
    Ab = _flat(A, d, d).contiguous()
    nb = Ab.shape[0]
    Y = torch.empty_like(Ab)
    Z = torch.empty_like(Ab)
    tangent = dA is not None
    dAb = _flat(dA, d, d).contiguous() if tangent else Ab
    dY = torch.empty_like(Ab) if tangent else Y
    dZ = torch.empty_like(Ab) if tangent else Z
    if nb:
        bd = next_pow2(d)
        _sqrt_kernel[(nb,)](
            Ab, Y, Z, dAb, dY, dZ, d, int(iters), _floor(d, A.dtype),
            Ab.stride(0), Ab.stride(1), Ab.stride(2), Y.stride(0), Y.stride(1), Y.stride(2),
            TANGENT=tangent, BD=bd, PREC="ieee", num_warps=_warps(bd),
        )
    shp = A.shape
    if tangent:
        return Y.reshape(shp), Z.reshape(shp), dY.reshape(shp), dZ.reshape(shp)
    return Y.reshape(shp), Z.reshape(shp), None, None


# ----------------------------------------------------------------------------- power
def _hsym(S):
    return 0.5 * (S + S.transpose(-1, -2))


def _newton_scale(S):
    fro = torch.linalg.matrix_norm(S)
    ninf = S.abs().sum(-1).amax(-1)
    c = torch.minimum(fro, ninf)
    return torch.where(c > 0, c, torch.ones_like(c))


def _dmm(A, dA, B, dB):
    out = A @ B
    if dA is None:
        return out, None
    return out, dA @ B + A @ dB


def _bits(a):
    from ..ops.spd_power import dyadic_bits

    return dyadic_bits(a)


def _unit_power(A, a, iters, pinv_iters, dA=None):
    """A^a (and tangent) for spectrum in [0, 1]: ``ops.spd_power._newton_unit_power`` with the
    Newton–Schulz iterations in Triton kernels and torch for the d×d glue products."""
    if a == 1:
        return A, dA
    pos = abs(a)
    P, dP = None, None
    if pos == 1.0:
        P, dP = A, dA
    elif pos > 0.0:
        bits = _bits(pos)
        last = max(j for j, b in enumerate(bits) if b)
        R, dR = A, dA
        for j in range(last + 1):
            R, Z, dR, dZ = ns_sqrt(R, iters, dR)
            F, dF = (R, dR) if a > 0 else (Z, dZ)
            if bits[j]:
                P, dP = (F, dF) if P is None else _dmm(P, dP, F, dF)
    if a > 0:
        return P, dP
    Ap, dAp = ns_pinv_full(A, pinv_iters, dA)
    Pr, dPr = _dmm(Ap, dAp, A, dA)
    for _ in range(2):
        Pr2, dPr2 = _dmm(Pr, dPr, Pr, dPr)
        Pr3, dPr3 = _dmm(Pr2, dPr2, Pr, dPr)
        Pr = 3 * Pr2 - 2 * Pr3
        dPr = None if dA is None else 3 * dPr2 - 2 * dPr3
    if a == 0.0:
        return Pr, dPr
    if a == -1.0:
        return Ap, dAp
    M1, dM1 = _dmm(Pr, dPr, P, dP)
    M1, dM1 = _dmm(M1, dM1, Pr, dPr)
    P2, dP2 = _unit_power(A, 1.0 + a, iters, pinv_iters, dA)
    M2, dM2 = _dmm(Ap, dAp, P2, dP2)
    M2, dM2 = _dmm(Pr, dPr, M2, dM2)
    M2, dM2 = _dmm(M2, dM2, Pr, dPr)
    d = A.shape[-1]
    singular = (Pr.diagonal(dim1=-2, dim2=-1).sum(-1) < d - 0.5)[..., None, None]
    out = torch.where(singular, M2, M1)
    dout = None if dA is None else torch.where(singular, dM2, dM1)
    return out, dout


def _fusable(S, a, fused):
    if fused is False:
        return None
    if not (0.0 < a < 1.0) or S.shape[-1] > MAX_D:
        return None
    bits = _bits(a)
    if bits is None:
        return None
    return bits


def _launch_power(S, C, a, bits, iters, pinv_iters, backward):
    d = S.shape[-1]
    Sb = _flat(S, d, d).contiguous()
    nb = Sb.shape[0]
    Cb = _flat(C, d, d).contiguous() if backward else Sb
    out = torch.empty_like(Sb)
    if nb:
        mask = sum(b << j for j, b in enumerate(bits))
        nbits = max(j for j, b in enumerate(bits) if b) + 1
        first = min(j for j, b in enumerate(bits) if b)
        bd = next_pow2(d)
        _power_kernel[(nb,)](
            Sb, Cb, out, d, int(iters), int(pinv_iters), _floor(d, S.dtype), _floor(d, S.dtype),
            Sb.stride(0), Sb.stride(1), Sb.stride(2), Cb.stride(0), Cb.stride(1), Cb.stride(2),
            out.stride(0), out.stride(1), out.stride(2),
            A_EXP=float(a), BITS=mask, NBITS=nbits, FIRST=first, BACKWARD=backward,
            BD=bd, PREC="ieee", num_warps=_warps(bd),
        )
    return out.reshape(S.shape)


def newton_power(S, a, iters=None, pinv_iters=None, fused=None):
    """S^a by matmul-only Newton–Schulz (``ops.spd_power.newton_power``).

    fused: None/True -> one kernel when a is dyadic in (0, 1) and d ≤ 128; False -> the
    Python orchestration over the ns_sqrt / ns_pinv kernels (always used for a ≤ 0).
    """
    check_dtype(S)
    a = float(a)
    if iters is None:
        iters = _default_sqrt_iters(S.dtype)
    if pinv_iters is None:
        pinv_iters = _default_pinv_iters(S.dtype)
    bits = _fusable(S, a, fused)
    if bits is not None:
        return _launch_power(S, None, a, bits, iters, pinv_iters, False)
    c = _newton_scale(S)
    A = _hsym(S) / c[..., None, None]
    P, _ = _unit_power(A, a, iters, pinv_iters)
    return P * (c**a)[..., None, None]


def newton_power_backward(S, a, C, iters=None, pinv_iters=None, fused=None):
    """Adjoint of S ↦ S^a (Newton route) applied to C (``ops.spd_power.newton_power_backward``)."""
    check_dtype(S, C)
    a = float(a)
    if iters is None:
        iters = _default_sqrt_iters(S.dtype)
    if pinv_iters is None:
        pinv_iters = _default_pinv_iters(S.dtype)
    bits = _fusable(S, a, fused)
    if bits is not None:
        return _launch_power(S, C, a, bits, iters, pinv_iters, True)
    c = _newton_scale(S)
    A = _hsym(S) / c[..., None, None]
    Cs = _hsym(C)
    if a != 1:
        I = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        Pn = _hsym(I - A @ ns_pinv(A, pinv_iters))
        Cs = Cs - Pn @ Cs @ Pn
    _, dP = _unit_power(A, a, iters, pinv_iters, dA=Cs / c[..., None, None])
    return _hsym(dP * (c**a)[..., None, None])


# ----------------------------------------------------------------------------- power iteration
def power_iteration(S, iters=30):
    """Largest eigenvalue of symmetric PSD S (..., d, d) by ``iters`` power steps."""
    check_dtype(S)
    d = S.shape[-1]
    if d > MAX_D:
        from ..ops.spectral_norm import power_iteration as ref

        return ref(S, iters)
    Sb = _flat(S, d, d)
    nb = Sb.shape[0]
    out = torch.empty(nb, dtype=S.dtype, device=S.device)
    if nb:
        bd = next_pow2(d)
        _power_iter_kernel[(nb,)](
            Sb, out, d, int(iters), Sb.stride(0), Sb.stride(1), Sb.stride(2), BD=bd, num_warps=_warps(bd),
        )
    return out.reshape(S.shape[:-2])


__all__ = [
    "gram",
    "ns_pinv",
    "ns_pinv_full",
    "ns_sqrt",
    "newton_power",
    "newton_power_backward",
    "power_iteration",
    "MAX_D",
]
