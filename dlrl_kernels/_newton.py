"""The matmul-only small d×d iterations, written once (Newton–Schulz family, power iteration).

Every function here takes its matrix product as an argument ``mm`` so that the pure-PyTorch
reference (``mm_torch``) and the Triton backend (``_triton.small_matrix.bmm``: one batched
GEMM kernel per product) run *the same algorithm by construction*: same scaling, step
counts, stop rules, range thresholds and backward. Only the products differ.

The primitive: ``mm(A, B, diag=0.0, scale=1.0) = scale·(A @ B) + diag·I`` for batched
(..., m, k) @ (..., k, n) with broadcasting batch dims (the fused epilogue ``a·I + b·AB``
covers every "1.5I − ½ZY" / "2I − BX" step without an extra pass). Everything else (norms
for the stop rules, ``torch.where`` freezes, traces) is torch glue, identical for every
backend.

This module imports torch only (a leaf: ops → _triton → _newton).

Precision. The iterations converge to working precision only with exact (IEEE) float32
products; TF32 (10-bit mantissa) would stall the stop rules near 1e-3 and corrupt the range
threshold τ = d·eps. TF32 is acceptable only for the power iteration (``power_iteration``:
a few-digit λ_max for a Lipschitz bound / spectral normalisation), never for the roots,
inverses or the sign iteration.

Contents:
- ``newton_scale``: the scale c ≥ λ_max of a symmetric matrix, computed after dividing by
  max |S| so that neither the Frobenius norm nor the result can over/underflow in float32
  (1e-30·I and 1e30 entries work: (cS)^a = c^a S^a is applied exactly).
- ``ns_sqrt``: coupled Newton–Schulz square root (and inverse root), optional tangent.
- ``psd_pinv``: range projector by the sign iteration at threshold τ, then a full-rank
  Newton–Schulz inverse (the pseudo-inverse of a PSD matrix, optional tangent).
- ``unit_power`` / ``power`` / ``power_backward``: dyadic powers S^a, a ∈ [−1, 1], and
  their Fréchet adjoint (the same iteration in forward mode on the symmetrised gradient).
- ``ns_pinv``: plain Schulz hyperpower pseudo-inverse with the step-minimum stop rule.
- ``gram_pinv``: G⁺ through the small Gram and ``psd_pinv`` (the public pinv "newton").
- ``power_iteration``: λ_max and top eigenvector with a convergence stop.
"""
from __future__ import annotations

import math

import torch

MAX_BITS = 10


# ============================================================================ the primitive
def mm_torch(A, B, diag=0.0, scale=1.0):
    """``scale·(A @ B) + diag·I`` with torch.matmul (the reference's primitive).

    float32 products must be IEEE: callers of the reference on a GPU must keep
    ``torch.backends.cuda.matmul.allow_tf32`` off (its default)."""
    out = A @ B
    if scale != 1.0:
        out = scale * out
    if diag != 0.0:
        out = out + diag * torch.eye(out.shape[-2], out.shape[-1], dtype=out.dtype, device=out.device)
    return out


def sym(S):
    return 0.5 * (S + S.transpose(-1, -2))


def eye_like(A):
    return torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)


def _fro(M):
    return torch.linalg.matrix_norm(M)


def _any_active(active) -> bool:
    """Early exit of a batched loop: free on CPU (one host read), so only done there; on a
    GPU the loop runs its fixed count with frozen matrices (no stream stall per step)."""
    return active.device.type != "cpu" or bool(active.any())


# ============================================================================ defaults
def default_rtol(S):
    return S.shape[-1] * torch.finfo(S.dtype).eps


def default_sqrt_iters(dtype):
    return 40 if dtype == torch.float64 else 18


def default_neg_tol(dtype):
    """Relative size −λ_min/λ_max above which a 'PSD' input is reported as indefinite:
    1e-5 (float64), 1e-3 (float32) — far above the rounding negatives of a Gram matrix
    (≈ d·eps·λ_max) and the perturbations of a finite-difference check (gradcheck moves a
    singular S by ≈ 1e-6), far below any genuinely indefinite input."""
    return 1e-5 if dtype == torch.float64 else 1e-3


def dyadic_bits(a: float):
    """Binary digits of |a| in (0,1) if it is a multiple of 2^-MAX_BITS, else None."""
    x = abs(a)
    scaled = x * (1 << MAX_BITS)
    if abs(scaled - round(scaled)) > 1e-9:
        return None
    n = int(round(scaled))
    return [(n >> (MAX_BITS - j)) & 1 for j in range(1, MAX_BITS + 1)]


# ============================================================================ scaling
def amax_scale(S):
    """Per-matrix max |entry| (1 where it is 0 or not finite: those are handled by callers)."""
    m = S.abs().amax(dim=(-2, -1))
    return torch.where((m > 0) & torch.isfinite(m), m, torch.ones_like(m))


def newton_scale(S):
    """(m, c') with S/m having entries ≤ 1 and c' = min(‖S/m‖_F, ‖S/m‖_∞) ≥ λ_max(S/m).

    A = S/(m·c') has its spectrum in [−1, 1]; m·c' never over/underflows because the norms are
    taken of S/m. c' = 1 where S = 0."""
    m = amax_scale(S)
    Sm = S / m[..., None, None]
    c = torch.minimum(_fro(Sm), Sm.abs().sum(-1).amax(-1))
    c = torch.where(c > 0, c, torch.ones_like(c))
    return m, c


def _nan_where_nonfinite(out, S):
    """NaN in, NaN out (visibly), never finite garbage: without a host sync."""
    bad = ~torch.isfinite(S).all(dim=-1).all(dim=-1)
    return torch.where(bad[..., None, None], torch.full_like(out, float("nan")), out)


# ============================================================================ dual products
def _dmm(mm, A, dA, B, dB):
    """(A + εdA)(B + εdB): the value and the tangent."""
    out = mm(A, B)
    if dA is None:
        return out, None
    return out, mm(dA, B) + mm(A, dB)


# ============================================================================ square root
def ns_sqrt(A, iters=None, dA=None, mm=mm_torch, noise=None, return_steps=False):
    """Coupled Newton–Schulz: (A^{1/2}, A^{-1/2} on the range, tangents). Spectrum of A in [0, 1].

    Y_0 = A, Z_0 = I, T = ½(3I − ZY), Y ← YT, Z ← TZ. A small eigenvalue λ needs
    ≈ log(1/λ)/log(2.25) + 5 steps, so the default count resolves κ ≈ 1e12 in float64 and
    κ ≈ 1e4 in float32. Each matrix exits early once the relative step
    ‖Y_{k+1} − Y_k‖_F/‖Y_{k+1}‖_F reaches the rounding floor 8·d·eps. Guard: a slightly
    negative eigenvalue −δ (rounding of a singular A) grows 1.5× per step and then explodes;
    a healthy step is never larger than ½‖Y‖, so a matrix whose relative step exceeds 0.75
    is frozen at its previous iterate.

    ``noise`` (per matrix, the rounding level of A's null eigenvalues; ``lowrank_penalty``'s
    root) adds two stops for singular inputs: at the step minimum (ρ_k ≥ ρ_{k−1} < ¼) when
    what still grows is no larger than that noise grown so far (ρ_k ≤ noise·1.5^{k+1}; a
    genuine small cluster behind a gap keeps iterating), and on a jump ρ_k > 1.6·ρ_{k−1}.
    ``return_steps`` also returns the number of steps each matrix took.
    """
    if iters is None:
        iters = default_sqrt_iters(A.dtype)
    Y, Z = A, eye_like(A).expand(A.shape)
    dY = dA
    dZ = None if dA is None else torch.zeros_like(A)
    floor = 8 * A.shape[-1] * torch.finfo(A.dtype).eps
    active = torch.ones(A.shape[:-2], dtype=torch.bool, device=A.device)
    prev = torch.full(A.shape[:-2], float("inf"), dtype=A.dtype, device=A.device)
    tiny = torch.finfo(A.dtype).tiny
    steps = torch.zeros(A.shape[:-2], dtype=A.dtype, device=A.device)
    for k in range(iters):
        T = mm(Z, Y, diag=1.5, scale=-0.5)
        Yn, Zn = mm(Y, T), mm(T, Z)
        if dA is not None:
            dT = -0.5 * (mm(dZ, Y) + mm(Z, dY))
            dYn = mm(dY, T) + mm(Y, dT)
            dZn = mm(dT, Z) + mm(T, dZ)
        rel = _fro(Yn - Y) / _fro(Yn).clamp_min(tiny)
        stop = (prev <= floor) | (rel > 0.75) | ~torch.isfinite(rel)
        if noise is not None:
            grown = noise * 1.5 ** (k + 1)
            stop = stop | ((prev < 0.25) & (rel >= prev) & (rel <= grown)) | (rel > 1.6 * prev)
        active = active & ~stop
        a = active[..., None, None]
        Y, Z = torch.where(a, Yn, Y), torch.where(a, Zn, Z)
        if dA is not None:
            dY, dZ = torch.where(a, dYn, dY), torch.where(a, dZn, dZ)
        prev = torch.where(active, rel, prev)
        steps = steps + active.to(A.dtype)
        if not _any_active(active):
            break
    if return_steps:
        return Y, Z, dY, dZ, steps
    return Y, Z, dY, dZ


# ============================================================================ PSD pseudo-inverse
def sign_inv_counts(tau: float):
    """Step counts of ``psd_pinv`` for threshold τ: sign iteration, inverse iteration."""
    n_sign = int(math.ceil(math.log(1.0 / tau) / math.log(1.5))) + 6
    n_inv = int(math.ceil(2 * math.log2(1.0 / tau))) + 6
    return n_sign, n_inv


def range_projector(A, rtol, dA=None, mm=mm_torch):
    """P = (I + sign(A − τI))/2, τ = rtol, by the Newton–Schulz sign iteration
    X ← ½X(3I − X²) (±1 attract, so null-space rounding does not grow). -> (P, dP)."""
    tau = float(rtol)
    n_sign, _ = sign_inv_counts(tau)
    X, dX = A - tau * eye_like(A), dA
    for _ in range(n_sign):
        T = mm(X, X, diag=1.5, scale=-0.5)
        if dA is not None:
            dX2 = mm(dX, X) + mm(X, dX)
            dX = mm(dX, T) - 0.5 * mm(X, dX2)
        X = mm(X, T)
    P = 0.5 * (eye_like(A) + X)
    return P, (None if dA is None else 0.5 * dX)


def psd_pinv(A, rtol, dA=None, mm=mm_torch):
    """Pseudo-inverse and range projector of symmetric PSD A (spectrum in [0, 1]), matmul only.

    The range is decided by the same threshold as the eigh route (λ > τ = rtol):
      1. P = (I + sign(A − τI))/2 (``range_projector``; ≈ log(1/τ)/log 1.5 + 6 steps);
      2. B = A + (I − P) is full rank with spectrum in [τ, 1]: Newton–Schulz inverse
         Y ← Y(2I − BY) from Y = B (≈ 2 log2(1/τ) + 6 steps, no null space to blow up);
      3. A⁺ = P Y P.
    With ``dA`` the tangents are carried through the same steps (forward mode).
    Returns (A⁺, dA⁺, P, dP).
    """
    _, n_inv = sign_inv_counts(float(rtol))
    P, dP = range_projector(A, rtol, dA, mm)
    B = A + (eye_like(A) - P)
    dB = None if dA is None else dA - dP
    Y, dY = B, dB
    for _ in range(n_inv):
        M = mm(B, Y, diag=2.0, scale=-1.0)
        if dA is not None:
            dBY = mm(dB, Y) + mm(B, dY)
            dY = mm(dY, M) - mm(Y, dBY)
        Y = mm(Y, M)
    M, dM = _dmm(mm, P, dP, Y, dY)
    Ap, dAp = _dmm(mm, M, dM, P, dP)
    return Ap, dAp, P, dP


# ============================================================================ powers
def unit_power(A, a, iters, rtol, dA=None, mm=mm_torch, want_root=False):
    """A^a for spectrum in [0,1] (and its tangent), matmul only; a dyadic in [−1, 1].

    With ``want_root`` also returns the first square root R_1 = A^{1/2} when the route
    computed it (None otherwise): the indefiniteness check reuses it.
    """
    root = None
    if a == 1:
        return (A, dA, root) if want_root else (A, dA)
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
        R, dR = A, dA
        for j in range(last + 1):  # R_j = A^{2^-(j+1)}: nested square roots
            R, Z, dR, dZ = ns_sqrt(R, iters, dR, mm)
            if j == 0:
                root = R
            F, dF = (R, dR) if a > 0 else (Z, dZ)
            if bits[j]:
                P, dP = (F, dF) if P is None else _dmm(mm, P, dP, F, dF)
    if a > 0:
        return (P, dP, root) if want_root else (P, dP)
    Ap, dAp, Pr, dPr = psd_pinv(A, rtol, dA, mm)
    if a == 0.0:
        out, dout = Pr, dPr
    elif a == -1.0:
        out, dout = Ap, dAp
    else:
        # Full rank: the inverse roots Z_j are as accurate as the square roots. Singular: Z_j
        # is garbage (≈ 1/√δ) on the null space, so use A⁺ · A^{1+a} (a positive power, clean
        # there), sandwiched by the projector. Chosen per matrix from tr P.
        M1, dM1 = _dmm(mm, Pr, dPr, P, dP)
        M1, dM1 = _dmm(mm, M1, dM1, Pr, dPr)
        P2, dP2 = unit_power(A, 1.0 + a, iters, rtol, dA, mm)
        M2, dM2 = _dmm(mm, Ap, dAp, P2, dP2)
        M2, dM2 = _dmm(mm, Pr, dPr, M2, dM2)
        M2, dM2 = _dmm(mm, M2, dM2, Pr, dPr)
        d = A.shape[-1]
        singular = (Pr.diagonal(dim1=-2, dim2=-1).sum(-1) < d - 0.5)[..., None, None]
        out = torch.where(singular, M2, M1)
        dout = None if dA is None else torch.where(singular, dM2, dM1)
    return (out, dout, root) if want_root else (out, dout)


def negative_excess(A, root, mm=mm_torch):
    """Positive-part size of E = R² − A relative to ‖A‖_F, for R ≈ A^{1/2} from ``ns_sqrt``.

    From Y_0 = A the Newton iterate of an eigenvalue λ ∈ [0, 1] rises monotonically towards
    √λ from below, so on PSD A every eigenvalue of E is ≤ 0 up to rounding (unresolved small
    eigenvalues give y² − λ < 0). An eigenvalue −δ < 0 keeps its iterate negative, so E has
    an eigenvalue y² + δ ≥ δ there. With t = tr E and f = ‖E‖_F, (t + f)/2 ≤ 0 when E ⪯ 0 and
    ≈ δ when one positive eigenvalue dominates: the returned (t + f)/(2‖A‖_F) is a sync-free
    witness of λ_min(A) < 0 that ignores the (negative) convergence error.
    """
    tiny = torch.finfo(A.dtype).tiny
    E = mm(root, root) - A
    t = E.diagonal(dim1=-2, dim2=-1).sum(-1)
    return (0.5 * (t + _fro(E))).clamp_min(0) / _fro(A).clamp_min(tiny)


def power(S, a, iters=None, rtol=None, mm=mm_torch, check=False, neg_tol=None):
    """S^a for symmetric PSD S (..., d, d), dyadic a ∈ [−1, 1], matmul only.

    S is symmetrised and scaled: A = sym(S)/(m·c) (``newton_scale``), S^a = (m·c)^a A^a with
    the factor applied as m^a·c^a (no overflow). NaN/Inf entries give NaN matrices (no sync).
    ``check``: report an indefinite S (ValueError naming S, one host sync) when
    ``negative_excess`` > neg_tol: the same tolerance as the eigh route's
    λ_min < −neg_tol·λ_max, up to the factor ‖A‖_F/λ_max ∈ [1, √d].
    """
    if rtol is None:
        rtol = default_rtol(S)
    m, c = newton_scale(S)
    A = sym(S) / (m * c)[..., None, None]
    A = torch.where(torch.isfinite(A), A, torch.zeros_like(A))
    if a == 1.0:
        out, root = A, None
    else:
        out, _, root = unit_power(A, a, iters, rtol, None, mm, want_root=True)
    if check:
        if root is None:
            root = ns_sqrt(A, iters, None, mm)[0]
        check_indefinite_newton(A, root, mm, neg_tol)
    fac = m.pow(a) * c.pow(a)
    return _nan_where_nonfinite(out * fac[..., None, None], S)


def check_indefinite_newton(A, root, mm=mm_torch, neg_tol=None):
    if neg_tol is None:
        neg_tol = default_neg_tol(A.dtype)
    ex = negative_excess(A, root, mm)
    bad = ex > neg_tol
    if bool(bad.any()):
        raise ValueError(
            f"S: expected symmetric positive semi-definite matrices, got {int(bad.sum())} clearly "
            f"indefinite one(s) (Newton witness of a negative eigenvalue, relative to ‖S‖_F, up to {float(ex.max()):.3g} > tol {neg_tol:g}; "
            "the most negative eigenvalue is below −tol·λ_max)"
        )


def power_backward(S, a, C, iters=None, rtol=None, mm=mm_torch):
    """Adjoint of S ↦ S^a (Newton route) applied to C: the Fréchet derivative of the same
    iteration in forward mode on the symmetrised C (self-adjoint for symmetric S), with the
    null–null block projected out (Pn Cs Pn, Pn = I − P the null projector), × (m·c)^{a−1}."""
    if rtol is None:
        rtol = default_rtol(S)
    m, c = newton_scale(S)
    mc = (m * c)[..., None, None]
    A = sym(S) / mc
    A = torch.where(torch.isfinite(A), A, torch.zeros_like(A))
    Cs = sym(C)
    if a != 1:
        Pn = sym(eye_like(A) - range_projector(A, rtol, None, mm)[0])
        Cs = Cs - mm(mm(Pn, Cs), Pn)
    if a == 1:
        dP = Cs / mc
    else:
        _, dP = unit_power(A, a, iters, rtol, Cs / mc, mm)
    fac = m.pow(a) * c.pow(a)
    return _nan_where_nonfinite(sym(dP * fac[..., None, None]), S)


# ============================================================================ pseudo-inverse
def pinv_default_rtol(G):
    return max(G.shape[-2:]) * torch.finfo(G.dtype).eps


def default_max_iters(dtype):
    return 80 if dtype == torch.float64 else 50


def resolve_iters(dtype):
    """Steps before the rise rule may stop: resolves eigenvalues down to 1e-6 (float64) or
    1e-3·λ_max (float32) of the scaled matrix — x₀λ = λ² doubles each step, +6 to converge."""
    return 46 if dtype == torch.float64 else 26


def schulz_scale(G):
    """A cheap upper bound of σ_max per matrix: min(‖G‖_F, sqrt(‖G‖_1 ‖G‖_∞))."""
    fro = _fro(G)
    n1 = G.abs().sum(-2).amax(-1)
    ninf = G.abs().sum(-1).amax(-1)
    return torch.minimum(fro, torch.sqrt(n1 * ninf))


def ns_pinv(G, max_iters=None, dG=None, mm=mm_torch):
    """Plain Newton–Schulz (hyperpower 2) pseudo-inverse X ← X(2I − GX), X_0 = Gᵀ/c² with the
    relative-step stop rule: the rounding floor, or (after ``resolve_iters`` steps) the first
    rise of the step once below ¼ (null-space noise doubling, SPEC §6). With ``dG`` also the
    tangent dX. Returns (X, dX, iters_used). G is pre-scaled by max |G| (no overflow)."""
    if max_iters is None:
        max_iters = default_max_iters(G.dtype)
    s = amax_scale(G)[..., None, None]
    Gs = G / s
    dGs = None if dG is None else dG / s
    c = schulz_scale(Gs)
    safe_c = torch.where(c > 0, c, torch.ones_like(c))
    alpha = (1.0 / safe_c**2)[..., None, None]
    X = alpha * Gs.transpose(-1, -2)
    dX = None if dG is None else alpha * dGs.transpose(-1, -2)
    floor = 8 * max(G.shape[-2:]) * torch.finfo(G.dtype).eps
    active = (c > 0).clone()
    prev = torch.full_like(c, float("inf"))
    used = torch.zeros(c.shape, dtype=torch.int32, device=G.device)
    k_min = resolve_iters(G.dtype)
    tiny = torch.finfo(G.dtype).tiny
    for k in range(max_iters):
        M = mm(Gs, X, diag=2.0, scale=-1.0)
        Xn = mm(X, M)
        rel = _fro(Xn - X) / _fro(Xn).clamp_min(tiny)
        stop = (prev <= floor) | ((k >= k_min) & (prev < 0.25) & (rel >= prev)) | ~torch.isfinite(rel)
        active = active & ~stop
        a = active[..., None, None]
        if dG is not None:
            dGX = mm(dGs, X) + mm(Gs, dX)
            dXn = mm(dX, M) - mm(X, dGX)
            dX = torch.where(a, dXn, dX)
        X = torch.where(a, Xn, X)
        used = used + active.to(torch.int32)
        prev = torch.where(active, rel, prev)
        if not _any_active(active):
            break
    X = X / s
    if dG is not None:
        dX = dX / s
    return X, dX, used


def gram_pinv(G, rtol=None, mm=mm_torch, gram_fn=None):
    """G⁺ = (GᵀG)⁺Gᵀ (or Gᵀ(GGᵀ)⁺ when G is wide), matmul only, with an explicit threshold.

    G is first divided by max |G| (pinv(sG) = pinv(G)/s: exact, and the Gram can neither
    overflow nor underflow). The small Gram's PSD pseudo-inverse is ``psd_pinv`` (sign
    iteration for the range, full-rank inverse), so null-space rounding never grows. Singular
    values below rtol·σ_max count as zero; the Gram's threshold is max(rtol², d·eps). The
    Gram squares the condition number: float32 is accurate to ≈ eps·κ² (κ ≲ 1e2).
    ``gram_fn(Y) = YᵀY`` (default ``mm(Yᵀ, Y)``).
    """
    if rtol is None:
        rtol = pinv_default_rtol(G)
    s = amax_scale(G)[..., None, None]
    Gs = G / s
    tall = G.shape[-2] >= G.shape[-1]
    Gt = Gs.transpose(-1, -2)
    if gram_fn is None:
        M = mm(Gt, Gs) if tall else mm(Gs, Gt)
    else:
        M = gram_fn(Gs) if tall else gram_fn(Gt)
    M = sym(M)
    d = M.shape[-1]
    c = schulz_scale(M)
    c = torch.where(c > 0, c, torch.ones_like(c))[..., None, None]
    tau = max(float(rtol) ** 2, d * torch.finfo(G.dtype).eps)
    Mp = psd_pinv(M / c, tau, None, mm)[0] / c
    X = (mm(Mp, Gt) if tall else mm(Gt, Mp)) / s
    return _nan_where_nonfinite(X, G)


# ============================================================================ power iteration
def default_power_tol(dtype):
    """Relative change of the Rayleigh quotient below which the power iteration may stop:
    16·eps (the quotient has converged to rounding, or stagnates on a tie λ₁ = λ₂)."""
    return 16 * torch.finfo(dtype).eps


def power_iteration(S, iters=30, tol=None, mm=mm_torch):
    """(λ_max, v) of symmetric PSD S (..., d, d) by power iteration, matmul only.

    Start: the normalised all-ones vector plus a small deterministic ramp (not orthogonal to
    the top eigenvector in the symmetric cases where ones would be). Stop rule per matrix:
    the vector has converged, ‖v_{k+1} − v_k‖ ≤ 8·d·eps (the gradient v vᵀ needs v, which
    converges only as (λ₂/λ₁)^k while λ converges as its square), or the Rayleigh quotient
    changed by ≤ tol·|λ| (default ``default_power_tol``) and the vector step stopped
    shrinking (its rounding floor: no endless loop) — or after ``iters`` steps (a cap; the
    estimate is a lower bound converging as (λ₂/λ₁)^{2k}). Loops over a batch break as soon
    as every matrix stopped (on CPU every step, on a GPU every 8 steps: one host read each).
    """
    if tol is None:
        tol = default_power_tol(S.dtype)
    d = S.shape[-1]
    tiny = torch.finfo(S.dtype).tiny
    vtol = 8 * d * torch.finfo(S.dtype).eps
    v = torch.ones((*S.shape[:-1], 1), dtype=S.dtype, device=S.device)
    v = v + 1e-3 * torch.arange(d, dtype=S.dtype, device=S.device)[:, None] / max(d, 1)
    v = v / torch.linalg.vector_norm(v, dim=-2, keepdim=True)
    w = mm(S, v)
    lam = (v * w).sum((-2, -1))
    active = torch.ones(S.shape[:-2], dtype=torch.bool, device=S.device)
    dv_prev = torch.full(S.shape[:-2], float("inf"), dtype=S.dtype, device=S.device)
    for k in range(iters):
        nw = torch.linalg.vector_norm(w, dim=-2, keepdim=True)
        vn = w / nw.clamp_min(tiny)
        wn = mm(S, vn)
        lamn = (vn * wn).sum((-2, -1))
        dv = torch.linalg.vector_norm(vn - v, dim=(-2, -1))
        a = active[..., None, None]
        v, w = torch.where(a, vn, v), torch.where(a, wn, w)
        rq_conv = (lamn - lam).abs() <= tol * lamn.abs()
        conv = (dv <= vtol) | (rq_conv & (dv >= dv_prev))
        lam = torch.where(active, lamn, lam)
        dv_prev = torch.where(active, dv, dv_prev)
        active = active & ~conv & torch.isfinite(lamn)
        if (S.device.type == "cpu" or k % 8 == 7) and not bool(active.any()):
            break
    return lam, v[..., 0]
