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

method="newton" is matmul only (no eigh), for GPUs and fusion. The iteration is written once,
in ``dlrl_kernels._newton``, with the matrix product plugged in (torch.matmul here, the Triton
batched GEMM on ``backend="triton"``), so the reference and the kernels run the same algorithm:
- the matrix is divided by m = max |S| and by c = min(‖S/m‖_F, ‖S/m‖_∞) ≥ λ_max(S/m),
  A = S/(m·c), S^a = m^a·c^a·A^a (no over/underflow at float32's extreme scales);
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
import types
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _dispatch, _newton
from .._newton import MAX_BITS, default_neg_tol, default_rtol, default_sqrt_iters, dyadic_bits, sym  # noqa: F401
from .._validate import check_method, check_power, check_square


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
# The iteration itself lives once in dlrl_kernels._newton; the reference plugs in torch.matmul.
def ns_sqrt(A, iters=None, dA=None):
    """Coupled Newton–Schulz square root (``_newton.ns_sqrt`` with torch.matmul)."""
    return _newton.ns_sqrt(A, iters, dA, _newton.mm_torch)


def psd_pinv_newton(A, rtol, dA=None):
    """PSD pseudo-inverse by sign + inverse iterations (``_newton.psd_pinv`` with torch.matmul)."""
    return _newton.psd_pinv(A, rtol, dA, _newton.mm_torch)


def newton_scale(S):
    """The scale m·c ≥ λ_max used by the Newton route (``_newton.newton_scale``)."""
    m, c = _newton.newton_scale(S)
    return m * c


def newton_power(S, a, iters=None, rtol=None, check=False):
    """S^a, matmul only (``_newton.power`` with torch.matmul): the reference twin."""
    return _newton.power(S, float(a), iters, rtol, _newton.mm_torch, check=check)


def newton_power_backward(S, a, C, iters=None, rtol=None):
    """Adjoint of the Newton route applied to C (``_newton.power_backward`` with torch.matmul)."""
    return _newton.power_backward(S, float(a), C, iters, rtol, _newton.mm_torch)


def _triton_impl():
    from .._triton import small_matrix

    return small_matrix  # attributes looked up per call (newton_power, newton_power_backward)


#: implementation objects: ``newton_power(S, a, iters, rtol, check)`` and
#: ``newton_power_backward(S, a, C, iters, rtol)``; the eigh route is torch on every backend
TABLE = _dispatch.OpTable(
    "spd_power",
    ("newton_power", "newton_power_backward"),
    reference=lambda: types.SimpleNamespace(newton_power=newton_power, newton_power_backward=newton_power_backward),
    triton=_triton_impl,
)


@_dispatch.constant_result
def _backend_name(backend: str, device: str) -> str:
    """TABLE.resolve's backend name, evaluated eagerly (a constant) when torch.compile traces
    the wrapper; the op then fetches the implementation with the cached TABLE.load(name)."""
    return TABLE.resolve(backend, torch.device(device))[0]


# ----------------------------------------------------------------------------- eigh route, scaled
def _eigh_forward(S, a, rtol, check, neg_tol=None):
    """eigh route on S/m (m = max |S|: no over/underflow at extreme scales), result × m^a."""
    m = _newton.amax_scale(S)
    out, (lam, Q, _) = eigh_power(S / m[..., None, None], a, rtol)
    if check:
        tol = default_neg_tol(S.dtype) if neg_tol is None else neg_tol
        lmax = lam[..., -1].clamp_min(0)
        bad = lam[..., 0] < -tol * lmax
        if bool(bad.any()):
            ratio = float((-lam[..., 0] / lmax.clamp_min(torch.finfo(S.dtype).tiny)).max())
            raise ValueError(
                f"S: expected symmetric positive semi-definite matrices, got {int(bad.sum())} clearly "
                f"indefinite one(s) (λ_min/λ_max down to −{ratio:.3g} < −tol = −{tol:g})"
            )
    return out * m.pow(a)[..., None, None], lam, Q


def _eigh_backward(C, S, lam, Q, a, rtol):
    m = _newton.amax_scale(S)
    if rtol is None:
        rtol = default_rtol(S)
    rng = lam > _floor(lam, rtol)
    return eigh_power_backward(C, a, lam, Q, rng) * m.pow(a - 1.0)[..., None, None]


# ----------------------------------------------------------------------------- torch.library
def _spd_power_impl(
    S: Tensor, a: float, method: str, rtol: Optional[float], iters: Optional[int], check: bool, backend: str
) -> Tuple[Tensor, Tensor, Tensor]:
    """(S^a, λ, Q): λ, Q the eigen-decomposition of S/max|S| on the eigh route (for the
    backward), empty on the Newton route."""
    if method == "eigh":
        return _eigh_forward(S, a, rtol, check)
    out = TABLE.load(backend).newton_power(S, a, iters, rtol, check)
    empty = S.new_empty(0)
    return out, empty, empty.clone()


_spd_power_op = torch.library.custom_op("dlrl::spd_power", _spd_power_impl, mutates_args=())


@_spd_power_op.register_fake
def _(S, a, method, rtol, iters, check, backend):
    if method == "eigh":
        return S.new_empty(S.shape), S.new_empty(S.shape[:-1]), S.new_empty(S.shape)
    return S.new_empty(S.shape), S.new_empty(0), S.new_empty(0)


def _spd_power_backward_impl(
    C: Tensor, S: Tensor, lam: Tensor, Q: Tensor, a: float, method: str, rtol: Optional[float],
    iters: Optional[int], backend: str,
) -> Tensor:
    if method == "eigh":
        return _eigh_backward(C, S, lam, Q, a, rtol)
    return TABLE.load(backend).newton_power_backward(S, a, C, iters, rtol)


_spd_power_backward_op = torch.library.custom_op("dlrl::spd_power_backward", _spd_power_backward_impl, mutates_args=())
spd_power_backward_op = _dispatch.PlainOp(torch.ops.dlrl.spd_power_backward, _spd_power_backward_impl)


@_spd_power_backward_op.register_fake
def _(C, S, lam, Q, a, method, rtol, iters, backend):
    return S.new_empty(S.shape)


def _setup(ctx, inputs, output):
    S, a, method, rtol, iters, check, backend = inputs
    _, lam, Q = output
    ctx.save_for_backward(S, lam, Q)
    ctx.args = (a, method, rtol, iters, backend)


def _backward(ctx, g_out, g_lam, g_Q):
    S, lam, Q = ctx.saved_tensors
    a, method, rtol, iters, backend = ctx.args
    g = spd_power_backward_op(g_out, S, lam, Q, a, method, rtol, iters, backend)
    return g, None, None, None, None, None, None


_spd_power_op.register_autograd(_backward, setup_context=_setup)
#: the op, or in eager mode its autograd.Function twin (``_dispatch.EagerOp``)
spd_power_op = _dispatch.EagerOp(torch.ops.dlrl.spd_power, _spd_power_impl, _setup, _backward)


# ----------------------------------------------------------------------------- public
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


def check_finite(t, name):
    """ValueError naming ``name`` when ``t`` has NaN / Inf entries (one host sync)."""
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        n_nan = int(torch.isnan(t).sum())
        raise ValueError(f"{name}: expected finite entries, got {n_nan} NaN and {int(bad.sum()) - n_nan} Inf")


def _check_rtol(rtol, name="rtol"):
    if rtol is None:
        return None
    if not isinstance(rtol, (int, float)) or isinstance(rtol, bool) or not (0.0 < float(rtol) < 1.0):
        raise ValueError(f"{name}: expected None or a real number in (0, 1), got {rtol!r}")
    return float(rtol)


def _check_iters(iters, name="iters"):
    if iters is None:
        return None
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 1:
        raise ValueError(f"{name}: expected None or an integer >= 1, got {iters!r}")
    return int(iters)


def spd_power(S, a, method: str = "auto", rtol=None, iters=None, backend: str = "auto", check: bool = True):
    """S^a for symmetric PSD S (..., d, d), a ∈ [−1, 1]; see the module doc for the convention.

    method: "eigh" (torch.linalg.eigh; exact, any a), "newton" (matmul only, dyadic a) or
    "auto" (newton on CUDA / Triton when a is dyadic, eigh otherwise). ``rtol`` ∈ (0, 1) is the
    eigenvalue floor relative to λ_max (default d·eps) that decides the range; ``iters`` ≥ 1
    caps the Newton–Schulz square-root steps (default 40 float64, 18 float32; each matrix
    exits early at the rounding floor).

    Bad input. NaN / Inf in S: ValueError naming S (with ``check``; without it, or while
    compiling, the Newton route returns NaN matrices for them — never finite numbers).
    Indefinite S (``check``, both methods): eigenvalues in [−tol·λ_max, 0) are rounding and
    are clamped to 0 (both methods: the range is λ > rtol·λ_max); a most negative eigenvalue
    below −tol·λ_max raises ValueError naming S. tol = 1e-5 (float64) / 1e-3 (float32)
    (``_newton.default_neg_tol``). The eigh route reads λ_min directly; the Newton route
    uses the positive part of R² − A for its first square root R (``_newton.negative_excess``,
    one extra product; for a ∈ {0, −1, 1} one extra square root), relative to ‖A‖_F — the
    same threshold up to ‖A‖_F/λ_max ∈ [1, √d]. Gray zone: a negative eigenvalue above
    rounding (≳ 8·d·eps·λ_max) cannot be clamped by the square-root iteration (it grows until
    the explosion guard freezes it), so there the Newton route raises where eigh clamps —
    it reports rather than returning a wrong matrix. ``check=False`` skips both checks and their
    host syncs (what a CUDA-graph-captured training step needs).
    Extreme scales: S is divided by max |S| before iterating and the result multiplied by
    (max |S|)^a — exact, so float32 1e-30·I and 1e30 entries work in both methods.

    Differentiable with a hand-written backward (registered as ``torch.ops.dlrl.spd_power``).
    """
    compiling = torch.compiler.is_compiling()
    if not compiling:
        check_square(S, "S")
        a = check_power(a, "a")
        if a != a:
            raise ValueError("a: expected a real number in [-1, 1], got nan")
        rtol = _check_rtol(rtol)
        iters = _check_iters(iters)
        if check:
            check_finite(S, "S")
    name = _backend_name(backend, str(S.device))
    method = resolve_method(method, float(a), S.device, name)
    return spd_power_op(S, float(a), method, rtol, iters, bool(check), name)[0]
