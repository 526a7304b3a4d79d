"""Batched fractional power S^a of symmetric PSD matrices, a ∈ [−1, 1].

Convention (the same for both methods, and what the backward differentiates):
- S is symmetrised first, (S + Sᵀ)/2; eigenvalues below 0 are rounding and count as 0.
- The *range* of S is the span of eigenvalues λ > floor = rtol·λ_max (rtol defaults to
  d·eps of the dtype). f(λ) = λ^a on the range and 0 on the null space, for every a
  ("negative powers act on the range"; a = 0 is the range projector, a = −1 the
  pseudo-inverse). For a > 0 this only differs from max(λ,0)^a below the floor (by at most
  floor^a), and it keeps the √eps-size rounding noise of a singular S out of S^{1/2}.
- Backward: the Daleckii–Krein (Loewner) form L(C) = Q (Γ ⊙ QᵀCQ) Qᵀ with
  Γ_ij = (f(λ_i) − f(λ_j))/(λ_i − λ_j), a·λ^{a−1} on ties, evaluated without cancellation as
  λ_j^{a−1}·expm1(a·t)/expm1(t), t = log1p((λ_i − λ_j)/λ_j). Null-space eigenvalues count as
  exactly 0 with f(0) = 0, and the null–null block of Γ is 0 (for 0 < a < 1 the true
  derivative there is infinite: |x| at 0; we return that subgradient on purpose so training
  on a rank-deficient factor stays finite). With this, the backward is exact wherever the
  rank is locally constant, which is what ``gradcheck`` checks.

method="newton" is matmul only (no eigh), for GPUs and fusion:
- the matrix is scaled by c = min(‖S‖_F, ‖S‖_∞) ≥ λ_max, A = S/c, S^a = c^a A^a;
- dyadic a ∈ (0, 1) (a = Σ b_j 2^{−j}, up to ``MAX_BITS`` bits): nested coupled Newton–Schulz
  square roots R_j = A^{2^{−j}} (Y_0 = A, Z_0 = I, T = ½(3I − ZY), Y ← YT, Z ← TZ) and the
  product of the R_j with b_j = 1;
- a ≤ 0: the range is decided by the same threshold rtol as the eigh route, through a
  Newton–Schulz *sign* iteration (``psd_pinv_newton``), then A⁺ by a Newton–Schulz inverse of
  the full-rank A + (I − P); A^a from the inverse roots of the square-root iteration (full
  rank) or A⁺·A^{1+a} (singular), sandwiched by the projector;
- its backward is the same iteration run in forward mode (dual numbers: the top-right block
  of the iteration applied to [[S, C],[0, S]], computed with 3 products instead of 8) on the
  symmetrised incoming gradient — the Fréchet derivative is self-adjoint for symmetric S —
  with the null–null block projected out as in the eigh convention.
Non-dyadic exponents need ``method="eigh"`` (``auto`` picks it).
"""
from __future__ import annotations

import math

import torch

from .. import _dispatch
from .._validate import check_method, check_power, check_square

MAX_BITS = 10


def sym(S):
    return 0.5 * (S + S.transpose(-1, -2))


def default_rtol(S):
    return S.shape[-1] * torch.finfo(S.dtype).eps


def default_sqrt_iters(dtype):
    return 40 if dtype == torch.float64 else 18


def dyadic_bits(a: float):
    """Binary digits of |a| in (0,1) if it is a multiple of 2^-MAX_BITS, else None."""
    x = abs(a)
    scaled = x * (1 << MAX_BITS)
    if abs(scaled - round(scaled)) > 1e-9:
        return None
    n = int(round(scaled))
    return [(n >> (MAX_BITS - j)) & 1 for j in range(1, MAX_BITS + 1)]


# ----------------------------------------------------------------------------- eigh route
def _powers(lam, a, floor):
    """f(λ) and the 'in range' mask, per the module convention."""
    rng = lam > floor
    safe = torch.where(rng, lam, torch.ones_like(lam))
    f = torch.where(rng, safe.pow(a), torch.zeros_like(lam))
    return f, rng


def _floor(lam, rtol):
    lmax = lam[..., -1:].clamp_min(0)
    return rtol * lmax


def loewner(lam, a, rng):
    """Γ_ij for f(λ) = λ^a with null-space eigenvalues set to 0 (see module doc)."""
    li, lj = lam[..., :, None], lam[..., None, :]
    ri, rj = rng[..., :, None], rng[..., None, :]
    both = ri & rj
    one = ri ^ rj
    one_safe = torch.where(both, lj, torch.ones_like(lj))
    # both in range: λ_j^{a-1} · expm1(a t)/expm1(t), t = log1p((λ_i − λ_j)/λ_j)
    t = torch.log1p((torch.where(both, li, one_safe) - one_safe) / one_safe)
    den = torch.expm1(t)
    small = t.abs() < 1e-12
    ratio = torch.where(small, torch.full_like(t, a), torch.expm1(a * t) / torch.where(small, torch.ones_like(den), den))
    g_both = one_safe.pow(a - 1) * ratio
    # exactly one in range: (f(λ) − 0)/(λ − 0) = λ^{a-1} with λ the range eigenvalue
    lr = torch.where(ri, li, lj)
    lr = torch.where(one, lr, torch.ones_like(lr))
    g_one = lr.pow(a - 1)
    g_null = torch.full_like(li.expand_as(t), 1.0 if a == 1 else 0.0)
    return torch.where(both, g_both, torch.where(one, g_one, g_null))


def eigh_power(S, a, rtol=None):
    if rtol is None:
        rtol = default_rtol(S)
    lam, Q = torch.linalg.eigh(sym(S))
    f, rng = _powers(lam, a, _floor(lam, rtol))
    out = (Q * f[..., None, :]) @ Q.transpose(-1, -2)
    return out, (lam, Q, rng)


def eigh_power_backward(C, a, lam, Q, rng):
    Cs = sym(C)
    M = Q.transpose(-1, -2) @ Cs @ Q
    G = Q @ (loewner(lam, a, rng) * M) @ Q.transpose(-1, -2)
    return sym(G)


# ----------------------------------------------------------------------------- newton route
def _dmm(A, dA, B, dB):
    """Product of dual matrices (A + εdA)(B + εdB)."""
    out = A @ B
    if dA is None:
        return out, None
    return out, dA @ B + A @ dB


def ns_sqrt(A, iters=None, dA=None):
    """Coupled Newton–Schulz: (A^{1/2}, A^{-1/2} on the range, tangents). Spectrum of A in [0, 1].

    Iteration count: a small eigenvalue λ needs ≈ log(1/λ)/log(2.25) + 5 steps (zy grows
    2.25× per step until ≈ 1, then converges quadratically), so the default count resolves
    κ ≈ 1e12 in float64 and κ ≈ 1e4 in float32. Each matrix exits early once the relative
    step ‖Y_{k+1} − Y_k‖/‖Y_{k+1}‖ reaches the rounding floor. Guard: a slightly negative
    eigenvalue −δ (rounding of a singular A, a perturbation) grows 1.5×, then explodes after
    ≈ ln(1/δ)/(2 ln 1.5) steps; a healthy step is never larger than ½‖Y‖, so a matrix whose
    relative step exceeds 0.75 is frozen at its previous iterate.
    """
    if iters is None:
        iters = default_sqrt_iters(A.dtype)
    I = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    Y, Z = A, I.expand(A.shape)
    dY = dA
    dZ = None if dA is None else torch.zeros_like(A)
    floor = 8 * A.shape[-1] * torch.finfo(A.dtype).eps
    active = torch.ones(A.shape[:-2], dtype=torch.bool, device=A.device)
    prev = torch.full(A.shape[:-2], float("inf"), dtype=A.dtype, device=A.device)
    tiny = torch.finfo(A.dtype).tiny
    for _ in range(iters):
        ZY, dZY = _dmm(Z, dZ, Y, dY)
        T = 1.5 * I - 0.5 * ZY
        dT = None if dA is None else -0.5 * dZY
        Yn, dYn = _dmm(Y, dY, T, dT)
        Zn, dZn = _dmm(T, dT, Z, dZ)
        rel = torch.linalg.matrix_norm(Yn - Y) / torch.linalg.matrix_norm(Yn).clamp_min(tiny)
        stop = (prev <= floor) | (rel > 0.75)
        active = active & ~stop
        a = active[..., None, None]
        Y, Z = torch.where(a, Yn, Y), torch.where(a, Zn, Z)
        if dA is not None:
            dY, dZ = torch.where(a, dYn, dY), torch.where(a, dZn, dZ)
        prev = torch.where(active, rel, prev)
        if A.device.type == "cpu" and not bool(active.any()):
            break
    return Y, Z, dY, dZ


def newton_scale(S):
    fro = torch.linalg.matrix_norm(S)
    ninf = S.abs().sum(-1).amax(-1)
    c = torch.minimum(fro, ninf)
    return torch.where(c > 0, c, torch.ones_like(c))


def psd_pinv_newton(A, rtol, dA=None):
    """Pseudo-inverse and range projector of symmetric PSD A (spectrum in [0, 1]), matmul only.

    The range is decided by the same threshold as the eigh route (λ > τ = rtol):
      1. P = (I + sign(A − τI))/2 by the Newton–Schulz sign iteration X ← ½X(3I − X²)
         (stable: ±1 attract, so null-space rounding does not grow; ≈ log(1/τ)/log 1.5 + 6
         steps bring the eigenvalues next to τ to ±1);
      2. B = A + (I − P) is full rank with spectrum in [τ, 1]: Newton–Schulz inverse
         Y ← Y(2I − BY) from Y = B (≈ 2 log2(1/τ) + 6 steps, no null space to blow up);
      3. A⁺ = P Y P.
    With ``dA`` the tangents are carried through the same steps (forward mode).
    Returns (A⁺, dA⁺, P, dP).
    """
    d = A.shape[-1]
    I = torch.eye(d, dtype=A.dtype, device=A.device)
    tau = float(rtol)
    n_sign = int(math.ceil(math.log(1.0 / tau) / math.log(1.5))) + 6
    n_inv = int(math.ceil(2 * math.log2(1.0 / tau))) + 6
    X, dX = A - tau * I, dA
    for _ in range(n_sign):
        X2, dX2 = _dmm(X, dX, X, dX)
        T = 1.5 * I - 0.5 * X2
        X, dX = _dmm(X, dX, T, None if dA is None else -0.5 * dX2)
    P = 0.5 * (I + X)
    dP = None if dA is None else 0.5 * dX
    B = A + (I - P)
    dB = None if dA is None else dA - dP
    Y, dY = B, dB
    for _ in range(n_inv):
        BY, dBY = _dmm(B, dB, Y, dY)
        Y, dY = _dmm(Y, dY, 2 * I - BY, None if dA is None else -dBY)
    M, dM = _dmm(P, dP, Y, dY)
    Ap, dAp = _dmm(M, dM, P, dP)
    return Ap, dAp, P, dP


def _newton_unit_power(A, a, iters, rtol, dA=None):
    """A^a for spectrum in [0,1] (and its tangent), matmul only."""
    if a == 1:
        return A, dA
    # Positive part via nested coupled square roots (R_j = A^{2^-j}); for a < 0 the same
    # iteration's inverse roots Z_j = A^{-2^-j} give A^{-|a|} on the range directly (better
    # conditioned than A⁺·A^{1+a}: no κ-sized factor times a √eps-sized one).
    pos = abs(a)
    P, dP = None, None
    if pos == 1.0:
        P, dP = A, dA
    elif pos > 0.0:
        bits = dyadic_bits(pos)
        last = max(j for j, b in enumerate(bits) if b)
        P, dP = None, None
        R, dR = A, dA
        for j in range(last + 1):  # R_j = A^{2^-(j+1)}: nested square roots
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
    # Full rank: the inverse roots Z_j are as accurate as the square roots. Singular: Z_j is
    # garbage (≈ 1/√δ) on the null space, so use A⁺ · A^{1+a} (a positive power, clean
    # there), sandwiched by the projector. Chosen per matrix from tr P.
    M1, dM1 = _dmm(Pr, dPr, P, dP)
    M1, dM1 = _dmm(M1, dM1, Pr, dPr)
    P2, dP2 = _newton_unit_power(A, 1.0 + a, iters, rtol, dA)
    M2, dM2 = _dmm(Ap, dAp, P2, dP2)
    M2, dM2 = _dmm(Pr, dPr, M2, dM2)
    M2, dM2 = _dmm(M2, dM2, Pr, dPr)
    d = A.shape[-1]
    singular = (Pr.diagonal(dim1=-2, dim2=-1).sum(-1) < d - 0.5)[..., None, None]
    out = torch.where(singular, M2, M1)
    dout = None if dA is None else torch.where(singular, dM2, dM1)
    return out, dout


def newton_power(S, a, iters=None, rtol=None):
    if rtol is None:
        rtol = default_rtol(S)
    c = newton_scale(S)
    A = sym(S) / c[..., None, None]
    P, _ = _newton_unit_power(A, a, iters, rtol)
    return P * (c**a)[..., None, None]


def newton_power_backward(S, a, C, iters=None, rtol=None):
    if rtol is None:
        rtol = default_rtol(S)
    c = newton_scale(S)
    A = sym(S) / c[..., None, None]
    Cs = sym(C)
    if a != 1:
        # null–null block of the adjoint is zero by convention (module doc)
        I = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        Pn = sym(I - psd_pinv_newton(A, rtol)[2])
        Cs = Cs - Pn @ Cs @ Pn
    _, dP = _newton_unit_power(A, a, iters, rtol, dA=Cs / c[..., None, None])
    return sym(dP * (c**a)[..., None, None])


# ----------------------------------------------------------------------------- autograd
class SpdPowerFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, S, a, method, rtol, iters, backend):
        ctx.a, ctx.method, ctx.iters, ctx.backend, ctx.rtol = a, method, iters, backend, rtol
        if method == "eigh":
            out, (lam, Q, rng) = eigh_power(S, a, rtol)
            ctx.save_for_backward(S, lam, Q, rng)
        else:
            if backend == "triton":
                from .._triton import small_matrix as k

                out = k.newton_power(S, a, iters, rtol)
            else:
                out = newton_power(S, a, iters, rtol)
            ctx.save_for_backward(S)
        return out

    @staticmethod
    def backward(ctx, C):
        if ctx.method == "eigh":
            S, lam, Q, rng = ctx.saved_tensors
            g = eigh_power_backward(C, ctx.a, lam, Q, rng)
        else:
            (S,) = ctx.saved_tensors
            if ctx.backend == "triton":
                from .._triton import small_matrix as k

                g = k.newton_power_backward(S, ctx.a, C, ctx.iters, ctx.rtol)
            else:
                g = newton_power_backward(S, ctx.a, C, ctx.iters, ctx.rtol)
        return g, None, None, None, None, None


def resolve_method(method, a, device, backend):
    check_method(method, {"auto", "eigh", "newton"})
    dyadic = a in (0.0, 1.0, -1.0) or dyadic_bits(a if a > 0 else 1.0 + a) is not None
    if method == "newton" and not dyadic:
        raise ValueError(
            f"a: method='newton' supports dyadic exponents (multiples of 2^-{MAX_BITS}), got {a}; "
            "use method='eigh' or 'auto'"
        )
    if method == "auto":
        method = "newton" if dyadic and (device.type == "cuda" or backend == "triton") else "eigh"
    return method


def spd_power(S, a, method: str = "auto", rtol=None, iters=None, backend: str = "auto"):
    """S^a for symmetric PSD S (..., d, d), a ∈ [−1, 1]; see the module doc for the convention.

    method: "eigh" (torch.linalg.eigh; exact, any a), "newton" (matmul only, dyadic a) or
    "auto" (newton on CUDA / Triton when a is dyadic, eigh otherwise). ``rtol`` is the
    eigenvalue floor relative to λ_max (default d·eps) used by the eigh route to decide the
    range; ``iters`` caps the Newton–Schulz square-root steps (default 40 float64, 18 float32; each
    matrix exits early at the rounding floor).
    Differentiable with a hand-written backward.
    """
    check_square(S, "S")
    a = check_power(a, "a")
    be = _dispatch.resolve(backend, S.device, "spd_power")
    method = resolve_method(method, a, S.device, be)
    if a == 1.0 and method == "newton":
        return sym(S) if not S.requires_grad else SpdPowerFn.apply(S, a, "eigh", rtol, iters, "reference")
    return SpdPowerFn.apply(S, a, method, rtol, iters, be)
