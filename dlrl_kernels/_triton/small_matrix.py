"""Batched small-matrix kernels (d ≤ 128): one Triton program per matrix.

Public functions (twins of the references in ``dlrl_kernels.ops``):

- ``gram(Y)``: Y (..., r, d) -> YᵀY; rows swept in BLOCK_R chunks (d tiled in BLOCK_D tiles
  when d > 128; on a GPU with few matrices the rows are also split across programs and the
  partial Grams summed by torch — deterministic).
- ``gram_pinv_newton(G, rtol)``: ``ops.pinv.gram_pinv_newton``, the public
  ``pinv(method="newton")`` (``gram`` + ``psd_pinv_newton`` below, torch for the glue).
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
# (kept few and flat: every nested @jit call costs the interpreter a re-patch of tl.*)
@triton.jit
def _rel_step(xn, x):
    """‖xn − x‖_F / ‖xn‖_F with the reference's tiny clamp (0/0 -> 0, t/0 -> inf)."""
    dd = xn - x
    num = tl.sqrt(tl.sum(tl.sum(dd * dd, axis=1), axis=0))
    den = tl.sqrt(tl.sum(tl.sum(xn * xn, axis=1), axis=0))
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
    """Coupled Newton–Schulz Y -> A^{1/2}, Z -> A^{-1/2} (ops.spd_power.ns_sqrt).

    Per matrix: stops once the relative step of the previous iterate reached ``floor``, or
    freezes at the previous iterate when a step exceeds 0.75 (explosion guard).
    """
    prev = tl.max(tl.max(Y * 0.0, axis=1), axis=0) + float("inf")
    active = prev > 0.0
    it = 0
    while active & (it < iters):
        ZY = tl.dot(Z, Y, input_precision=PREC)
        T = 1.5 * EYE - 0.5 * ZY
        Yn = tl.dot(Y, T, input_precision=PREC)
        Zn = tl.dot(T, Z, input_precision=PREC)
        rel = _rel_step(Yn, Y)
        stop = (prev <= floor) | (rel > 0.75)
        if TANGENT:
            dT = -0.5 * (tl.dot(dZ, Y, input_precision=PREC) + tl.dot(Z, dY, input_precision=PREC))
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
def _ns_pinv_loop(G, X, dG, dX, EYE_R, max_iters, k_min, floor, active,
                  TANGENT: tl.constexpr, PREC: tl.constexpr):
    """Schulz X <- X (2I − G X) with ops.pinv.ns_pinv's stop rule: the rounding floor, or
    (from step k_min on) the first rise of the relative step once it fell below 1/4."""
    prev = tl.max(tl.max(X * 0.0, axis=1), axis=0) + float("inf")
    it = 0
    while active & (it < max_iters):
        GX = tl.dot(G, X, input_precision=PREC)
        M = 2.0 * EYE_R - GX
        Xn = tl.dot(X, M, input_precision=PREC)
        rel = _rel_step(Xn, X)
        stop = (prev <= floor) | ((it >= k_min) & (prev < 0.25) & (rel >= prev))
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
def _sign_loop(X, dX, EYE, n_sign, TANGENT: tl.constexpr, PREC: tl.constexpr):
    """Newton–Schulz sign iteration X <- ½ X (3I − X²), fixed count (and its tangent)."""
    for _ in range(n_sign):
        X2 = tl.dot(X, X, input_precision=PREC)
        T = 1.5 * EYE - 0.5 * X2
        if TANGENT:
            dX2 = tl.dot(dX, X, input_precision=PREC) + tl.dot(X, dX, input_precision=PREC)
            dX = tl.dot(dX, T, input_precision=PREC) - 0.5 * tl.dot(X, dX2, input_precision=PREC)
        X = tl.dot(X, T, input_precision=PREC)
    return X, dX


@triton.jit
def _psd_pinv(A, dA, EYE, tau, n_sign, n_inv, TANGENT: tl.constexpr, PREC: tl.constexpr):
    """ops.spd_power.psd_pinv_newton: range projector P from the sign of A − τI, then the
    Newton–Schulz inverse of the full-rank A + (I − P), A⁺ = P Y P. -> (A⁺, dA⁺, P, dP)."""
    X, dX = _sign_loop(A - tau * EYE, dA, EYE, n_sign, TANGENT, PREC)
    P = 0.5 * (EYE + X)
    dP = 0.5 * dX
    B = A + (EYE - P)
    dB = dA - dP
    Y = B
    dY = dB
    for _ in range(n_inv):
        BY = tl.dot(B, Y, input_precision=PREC)
        M = 2.0 * EYE - BY
        if TANGENT:
            dBY = tl.dot(dB, Y, input_precision=PREC) + tl.dot(B, dY, input_precision=PREC)
            dY = tl.dot(dY, M, input_precision=PREC) - tl.dot(Y, dBY, input_precision=PREC)
        Y = tl.dot(Y, M, input_precision=PREC)
    PY = tl.dot(P, Y, input_precision=PREC)
    Ap = tl.dot(PY, P, input_precision=PREC)
    if TANGENT:
        dPY = tl.dot(dP, Y, input_precision=PREC) + tl.dot(P, dY, input_precision=PREC)
        dAp = tl.dot(dPY, P, input_precision=PREC) + tl.dot(PY, dP, input_precision=PREC)
    else:
        dAp = Ap
    return Ap, dAp, P, dP


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
    """OUT[split, b, I, J] = Σ_{rows of this split} Y[b, rows, I]ᵀ Y[b, rows, J] (one d-tile pair)."""
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
    G, X, DG, DX, nr, nc, max_iters, k_min, floor,
    s_gb, s_gi, s_gj, s_xb, s_xi, s_xj,
    TANGENT: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    g = _load_sq(G, b, s_gb, s_gi, s_gj, nr, nc, BD)
    # schulz_scale: c = min(‖G‖_F, √(‖G‖_1 ‖G‖_∞)) ≥ σ_max, α = 1/c²
    ga = tl.abs(g)
    fro = tl.sqrt(tl.sum(tl.sum(g * g, axis=1), axis=0))
    n1 = tl.max(tl.sum(ga, axis=0), axis=0)
    ninf = tl.max(tl.sum(ga, axis=1), axis=0)
    c = tl.minimum(fro, tl.sqrt(n1 * ninf))
    safe = tl.where(c > 0, c, 1.0)
    alpha = 1.0 / (safe * safe)
    x = alpha * tl.trans(g)
    if TANGENT:
        dg = _load_sq(DG, b, s_gb, s_gi, s_gj, nr, nc, BD)
        dx = alpha * tl.trans(dg)
    else:
        dg = g
        dx = x
    eye_r = _eye(BD, nr, g.dtype)
    x, dx = _ns_pinv_loop(g, x, dg, dx, eye_r, max_iters, k_min, floor, c > 0, TANGENT, PREC)
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
def _psd_pinv_kernel(
    A, DA, AP, DAP, PR, DPR, TAU, d, n_sign, n_inv,
    s_b, s_i, s_j, s_ob, s_oi, s_oj,
    TANGENT: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    a = _load_sq(A, b, s_b, s_i, s_j, d, d, BD)
    eye = _eye(BD, d, a.dtype)
    if TANGENT:
        da = _load_sq(DA, b, s_b, s_i, s_j, d, d, BD)
    else:
        da = a
    tau = tl.load(TAU)
    ap, dap, pr, dpr = _psd_pinv(a, da, eye, tau, n_sign, n_inv, TANGENT, PREC)
    _store_sq(AP, b, s_ob, s_oi, s_oj, ap, d, d, BD)
    _store_sq(PR, b, s_ob, s_oi, s_oj, pr, d, d, BD)
    if TANGENT:
        _store_sq(DAP, b, s_ob, s_oi, s_oj, dap, d, d, BD)
        _store_sq(DPR, b, s_ob, s_oi, s_oj, dpr, d, d, BD)


@triton.jit
def _power_kernel(
    S, C, OUT, TAU, d, iters, n_sign, floor,
    s_b, s_i, s_j, s_cb, s_ci, s_cj, s_ob, s_oi, s_oj,
    A_EXP: tl.constexpr, BITS: tl.constexpr, NBITS: tl.constexpr, FIRST: tl.constexpr,
    BACKWARD: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr,
):
    """S^a (BACKWARD=False) or its Newton-route adjoint applied to C (BACKWARD=True), for
    dyadic a ∈ (0, 1): a = Σ_j bit_j 2^{-(j+1)}, bit_j = (BITS >> j) & 1, j < NBITS,
    FIRST = the first set bit. The whole of ops.spd_power.newton_power(_backward) for such a.
    """
    b = tl.program_id(0).to(tl.int64)
    s = _load_sq(S, b, s_b, s_i, s_j, d, d, BD)
    # newton_scale: c = min(‖S‖_F, ‖S‖_∞) of S as given, 1 where it is 0
    c = tl.minimum(tl.sqrt(tl.sum(tl.sum(s * s, axis=1), axis=0)), tl.max(tl.sum(tl.abs(s), axis=1), axis=0))
    c = tl.where(c > 0, c, 1.0)
    A = _sym(s) / c
    eye = _eye(BD, d, s.dtype)
    zero = A * 0.0
    if BACKWARD:
        cs = _sym(_load_sq(C, b, s_cb, s_ci, s_cj, d, d, BD))
        # null–null block of the adjoint is zero by convention: Cs -= Pn Cs Pn with
        # Pn = sym(I − P), P the range projector of psd_pinv_newton (its sign iteration only)
        tau = tl.load(TAU)
        X, _u = _sign_loop(A - tau * eye, zero, eye, n_sign, False, PREC)
        pn = _sym(eye - 0.5 * (eye + X))
        cs = cs - tl.dot(tl.dot(pn, cs, input_precision=PREC), pn, input_precision=PREC)
        dR = cs / c
    else:
        dR = zero
    R = A
    P = eye
    dP = zero
    for j in tl.static_range(NBITS):
        R, _z, dR, _dz = _ns_sqrt_loop(R, eye, dR, zero, eye, iters, floor, BACKWARD, PREC)
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
def _power_iter_kernel(S, OUT, VOUT, d, iters, s_b, s_i, s_j, WANT_V: tl.constexpr, BD: tl.constexpr):
    """OUT[b] = vᵀ S v after ``iters`` normalised power steps; VOUT[b] = v when WANT_V."""
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
    if WANT_V:
        tl.store(VOUT + b * d + i, v, mask=i < d)


# ============================================================================ host side
def _flat(M, r, c):
    return M.reshape(-1, r, c)


def _floor(n, dtype):
    return 8 * n * torch.finfo(dtype).eps


# Defaults come from the reference modules themselves, so that the twins stay in step.
def _sqrt_iters(dtype, iters):
    if iters is not None:
        return int(iters)
    from ..ops.spd_power import default_sqrt_iters

    return default_sqrt_iters(dtype)


def _pinv_iters(dtype, max_iters):
    from ..ops import pinv as _pv

    if max_iters is None:
        max_iters = _pv.default_max_iters(dtype)
    k_min = _pv.resolve_iters(dtype) if hasattr(_pv, "resolve_iters") else 0
    return int(max_iters), int(k_min)


def _rtol(S, rtol):
    if rtol is not None:
        return float(rtol)
    from ..ops.spd_power import default_rtol

    return float(default_rtol(S))


def _sign_inv_counts(tau):
    """Step counts of ops.spd_power.psd_pinv_newton for threshold τ."""
    n_sign = int(math.ceil(math.log(1.0 / tau) / math.log(1.5))) + 6
    n_inv = int(math.ceil(2 * math.log2(1.0 / tau))) + 6
    return n_sign, n_inv


def _bits(a):
    from ..ops.spd_power import dyadic_bits

    return dyadic_bits(a)


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
    """(X, dX): ``ops.pinv.ns_pinv`` (plain Schulz, step-minimum stop) of G (..., r, c) and its
    tangent along dG (None when dG is None)."""
    check_dtype(G, dG)
    max_iters, k_min = _pinv_iters(G.dtype, max_iters)
    *batch, r, c = G.shape
    if max(r, c) > MAX_D:
        from ..ops.pinv import ns_pinv as ref

        X, dX, _ = ref(G, max_iters, dG)
        return X, dX
    Gb = _flat(G, r, c)
    nb = Gb.shape[0]
    X = torch.empty((nb, c, r), dtype=G.dtype, device=G.device)
    tangent = dG is not None
    dGb = _flat(dG, r, c).expand(nb, r, c) if tangent else Gb
    if tangent and dGb.stride() != Gb.stride():
        Gb, dGb = Gb.contiguous(), dGb.contiguous()
    dX = torch.empty_like(X) if tangent else X
    if nb:
        bd = next_pow2(max(r, c))
        _pinv_kernel[(nb,)](
            Gb, X, dGb, dX, r, c, max_iters, k_min, _floor(max(r, c), G.dtype),
            Gb.stride(0), Gb.stride(1), Gb.stride(2), X.stride(0), X.stride(1), X.stride(2),
            TANGENT=tangent, BD=bd, PREC="ieee", num_warps=_warps(bd),
        )
    X = X.reshape(*batch, c, r)
    return X, (dX.reshape(*batch, c, r) if tangent else None)


def ns_pinv(G, max_iters=None):
    """Newton–Schulz pseudo-inverse: ``ops.pinv.ns_pinv(G, max_iters)[0]``."""
    return ns_pinv_full(G, max_iters)[0]


def gram_pinv_newton(G, rtol=None):
    """``ops.pinv.gram_pinv_newton`` (the public ``pinv(method="newton")``): G⁺ = (GᵀG)⁺Gᵀ
    (Gᵀ(GGᵀ)⁺ when G is wide), the small Gram by ``gram``, its thresholded PSD pseudo-inverse
    by ``psd_pinv_newton`` (sign iteration + full-rank inverse: no null-space blow-up), the
    scale and the last product in torch. Same threshold: singular values below rtol·σ_max
    count as zero (Gram threshold max(rtol², d·eps))."""
    from ..ops.pinv import gram_pinv_newton as route

    check_dtype(G)
    return route(G, rtol, gram_fn=gram, psd_pinv=psd_pinv_newton)


def _same_layout(A, dA):
    d = A.shape[-1]
    Ab = _flat(A, d, d)
    if dA is None:
        return Ab, Ab
    dAb = _flat(dA, d, d)
    if dAb.stride() != Ab.stride():
        Ab, dAb = Ab.contiguous(), dAb.contiguous()
    return Ab, dAb


def ns_sqrt(A, iters=None, dA=None):
    """``ops.spd_power.ns_sqrt``: (Y ≈ A^{1/2}, Z ≈ A^{-1/2} on the range, dY, dZ) for
    symmetric A with spectrum in [0, 1]; dY, dZ are None without dA."""
    check_dtype(A, dA)
    iters = _sqrt_iters(A.dtype, iters)
    d = A.shape[-1]
    if d > MAX_D:
        from ..ops.spd_power import ns_sqrt as ref

        return ref(A, iters, dA)
    tangent = dA is not None
    Ab, dAb = _same_layout(A, dA)
    nb = Ab.shape[0]
    Y = torch.empty((nb, d, d), dtype=A.dtype, device=A.device)
    Z = torch.empty_like(Y)
    dY = torch.empty_like(Y) if tangent else Y
    dZ = torch.empty_like(Y) if tangent else Z
    if nb:
        bd = next_pow2(d)
        _sqrt_kernel[(nb,)](
            Ab, Y, Z, dAb, dY, dZ, d, iters, _floor(d, A.dtype),
            Ab.stride(0), Ab.stride(1), Ab.stride(2), Y.stride(0), Y.stride(1), Y.stride(2),
            TANGENT=tangent, BD=bd, PREC="ieee", num_warps=_warps(bd),
        )
    shp = A.shape
    if tangent:
        return Y.reshape(shp), Z.reshape(shp), dY.reshape(shp), dZ.reshape(shp)
    return Y.reshape(shp), Z.reshape(shp), None, None


def psd_pinv_newton(A, rtol, dA=None):
    """``ops.spd_power.psd_pinv_newton``: (A⁺, dA⁺, P, dP) for symmetric PSD A with spectrum
    in [0, 1], range = eigenvalues above τ = rtol (sign iteration, then a full-rank inverse)."""
    check_dtype(A, dA)
    d = A.shape[-1]
    if d > MAX_D:
        from ..ops.spd_power import psd_pinv_newton as ref

        return ref(A, rtol, dA)
    tau = float(rtol)
    n_sign, n_inv = _sign_inv_counts(tau)
    tangent = dA is not None
    Ab, dAb = _same_layout(A, dA)
    nb = Ab.shape[0]
    Ap = torch.empty((nb, d, d), dtype=A.dtype, device=A.device)
    Pr = torch.empty_like(Ap)
    dAp = torch.empty_like(Ap) if tangent else Ap
    dPr = torch.empty_like(Ap) if tangent else Pr
    if nb:
        bd = next_pow2(d)
        _psd_pinv_kernel[(nb,)](
            Ab, dAb, Ap, dAp, Pr, dPr, torch.full((1,), tau, dtype=A.dtype, device=A.device), d, n_sign, n_inv,
            Ab.stride(0), Ab.stride(1), Ab.stride(2), Ap.stride(0), Ap.stride(1), Ap.stride(2),
            TANGENT=tangent, BD=bd, PREC="ieee", num_warps=_warps(bd),
        )
    shp = A.shape
    if tangent:
        return Ap.reshape(shp), dAp.reshape(shp), Pr.reshape(shp), dPr.reshape(shp)
    return Ap.reshape(shp), None, Pr.reshape(shp), None


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


def _unit_power(A, a, iters, rtol, dA=None):
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
    Ap, dAp, Pr, dPr = psd_pinv_newton(A, rtol, dA)
    if a == 0.0:
        return Pr, dPr
    if a == -1.0:
        return Ap, dAp
    M1, dM1 = _dmm(Pr, dPr, P, dP)
    M1, dM1 = _dmm(M1, dM1, Pr, dPr)
    P2, dP2 = _unit_power(A, 1.0 + a, iters, rtol, dA)
    M2, dM2 = _dmm(Ap, dAp, P2, dP2)
    M2, dM2 = _dmm(Pr, dPr, M2, dM2)
    M2, dM2 = _dmm(M2, dM2, Pr, dPr)
    d = A.shape[-1]
    singular = (Pr.diagonal(dim1=-2, dim2=-1).sum(-1) < d - 0.5)[..., None, None]
    out = torch.where(singular, M2, M1)
    dout = None if dA is None else torch.where(singular, dM2, dM1)
    return out, dout


def _fusable(S, a, fused):
    if fused is False or not (0.0 < a < 1.0) or S.shape[-1] > MAX_D:
        return None
    return _bits(a)


def _launch_power(S, C, a, bits, iters, tau, backward):
    d = S.shape[-1]
    Sb = _flat(S, d, d)
    nb = Sb.shape[0]
    Cb = _flat(C, d, d).expand(nb, d, d) if backward else Sb
    out = torch.empty((nb, d, d), dtype=S.dtype, device=S.device)
    if nb:
        mask = sum(bit << j for j, bit in enumerate(bits))
        nbits = max(j for j, bit in enumerate(bits) if bit) + 1
        first = min(j for j, bit in enumerate(bits) if bit)
        n_sign = _sign_inv_counts(tau)[0] if backward else 0
        bd = next_pow2(d)
        _power_kernel[(nb,)](
            Sb, Cb, out, torch.full((1,), tau, dtype=S.dtype, device=S.device), d, iters, n_sign,
            _floor(d, S.dtype),
            Sb.stride(0), Sb.stride(1), Sb.stride(2), Cb.stride(0), Cb.stride(1), Cb.stride(2),
            out.stride(0), out.stride(1), out.stride(2),
            A_EXP=float(a), BITS=mask, NBITS=nbits, FIRST=first, BACKWARD=backward,
            BD=bd, PREC="ieee", num_warps=_warps(bd),
        )
    return out.reshape(S.shape)


def newton_power(S, a, iters=None, rtol=None, fused=None):
    """S^a by matmul-only Newton–Schulz: ``ops.spd_power.newton_power(S, a, iters, rtol)``.

    fused: None/True -> one kernel per batch when a is dyadic in (0, 1) and d ≤ 128; False ->
    the Python orchestration over the ns_sqrt / psd_pinv kernels (always used for a ≤ 0).
    """
    check_dtype(S)
    a = float(a)
    iters = _sqrt_iters(S.dtype, iters)
    tau = _rtol(S, rtol)
    bits = _fusable(S, a, fused)
    if bits is not None:
        return _launch_power(S, None, a, bits, iters, tau, False)
    c = _newton_scale(S)
    A = _hsym(S) / c[..., None, None]
    P, _ = _unit_power(A, a, iters, tau)
    return P * (c**a)[..., None, None]


def newton_power_backward(S, a, C, iters=None, rtol=None, fused=None):
    """Adjoint of the Newton route of S ↦ S^a applied to C:
    ``ops.spd_power.newton_power_backward(S, a, C, iters, rtol)``."""
    check_dtype(S, C)
    a = float(a)
    iters = _sqrt_iters(S.dtype, iters)
    tau = _rtol(S, rtol)
    bits = _fusable(S, a, fused)
    if bits is not None:
        return _launch_power(S, C, a, bits, iters, tau, True)
    c = _newton_scale(S)
    A = _hsym(S) / c[..., None, None]
    Cs = _hsym(C)
    if a != 1:
        I = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        Pn = _hsym(I - psd_pinv_newton(A, tau)[2])
        Cs = Cs - Pn @ Cs @ Pn
    _, dP = _unit_power(A, a, iters, tau, dA=Cs / c[..., None, None])
    return _hsym(dP * (c**a)[..., None, None])


# ----------------------------------------------------------------------------- power iteration
def _power_iteration_torch(S, iters):
    """(λ, v) of ``ops.spectral_norm.power_iteration`` (same start, same steps), no autograd."""
    d = S.shape[-1]
    with torch.no_grad():
        v = torch.ones(S.shape[:-1], dtype=S.dtype, device=S.device)
        v = v + 1e-3 * torch.arange(d, dtype=S.dtype, device=S.device) / d
        v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)
        for _ in range(iters):
            w = (S @ v[..., None])[..., 0]
            v = w / torch.linalg.vector_norm(w, dim=-1, keepdim=True).clamp_min(torch.finfo(S.dtype).tiny)
        return (v * (S @ v[..., None])[..., 0]).sum(-1), v


def power_iteration(S, iters=30, return_vector=False):
    """``ops.spectral_norm.power_iteration``: λ_max of symmetric PSD S (..., d, d).

    Not differentiable by itself (kernel output); with ``return_vector`` also returns the
    final unit vector v, from which ``ops.spectral_norm`` builds the gradient v vᵀ.
    """
    check_dtype(S)
    d = S.shape[-1]
    if d > MAX_D:
        lam, v = _power_iteration_torch(S, int(iters))
        return (lam, v) if return_vector else lam
    Sb = _flat(S, d, d)
    nb = Sb.shape[0]
    out = torch.empty(nb, dtype=S.dtype, device=S.device)
    vout = torch.empty((nb, d), dtype=S.dtype, device=S.device) if return_vector else out
    if nb:
        bd = next_pow2(d)
        _power_iter_kernel[(nb,)](
            Sb, out, vout, d, int(iters), Sb.stride(0), Sb.stride(1), Sb.stride(2),
            WANT_V=bool(return_vector), BD=bd, num_warps=_warps(bd),
        )
    lam = out.reshape(S.shape[:-2])
    return (lam, vout.reshape(S.shape[:-1])) if return_vector else lam


__all__ = [
    "gram",
    "gram_pinv_newton",
    "ns_pinv",
    "ns_pinv_full",
    "ns_sqrt",
    "psd_pinv_newton",
    "newton_power",
    "newton_power_backward",
    "power_iteration",
    "MAX_D",
]
