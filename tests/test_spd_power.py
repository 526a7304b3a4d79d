import pytest
import torch
from torch.autograd import gradcheck

import dlrl_kernels as dk
from dlrl_kernels.ops.spd_power import eigh_power, eigh_power_backward, newton_power_backward
from conftest import rand_spd, ref_power, rel_err

DYADIC = [0.5, 0.25, 0.75, -0.5, -1.0, 0.0, 1.0]


@pytest.mark.parametrize("d", [16, 20, 48, 80, 128])
@pytest.mark.parametrize("cond", [1e1, 1e4])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_newton_matches_float64_eigh(gen, d, cond, dtype):
    """SPEC accuracy bar: 1e-5 relative (float64), 1e-3 (float32), κ ≤ 1e4, d ≤ 128."""
    tol = 1e-5 if dtype == torch.float64 else 1e-3
    S = rand_spd(gen, d, cond, dtype=dtype)
    for a in DYADIC:
        out = dk.spd_power(S, a, method="newton")
        err = rel_err(out, ref_power(S, a))
        assert err < tol, f"d={d} cond={cond} a={a}: {err:.2e}"
        assert out.dtype == dtype


@pytest.mark.parametrize("d,rank", [(16, 5), (48, 20), (128, 40)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_newton_rank_deficient(gen, d, rank, dtype):
    """Null space: negative powers act on the range; nothing diverges (SPEC §6)."""
    tol = 1e-5 if dtype == torch.float64 else 2e-3
    S = rand_spd(gen, d, 1e2, rank=rank, dtype=dtype)
    for a in DYADIC:
        out = dk.spd_power(S, a, method="newton")
        assert torch.isfinite(out).all()
        assert rel_err(out, ref_power(S, a, rtol=1e-6)) < tol, a


@pytest.mark.parametrize("a", [0.5, 0.3, -0.7, -1.0, 0.0, 1.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_eigh_matches_reference(gen, a, dtype):
    S = rand_spd(gen, 33, 1e3, dtype=dtype)
    tol = 1e-10 if dtype == torch.float64 else 2e-3
    assert rel_err(dk.spd_power(S, a, method="eigh"), ref_power(S, a)) < tol


def test_beyond_1e4_documented_degradation(gen):
    """Documented behaviour beyond the bar: at κ = 1e6 float64 Newton still meets 1e-5 for a > 0."""
    S = rand_spd(gen, 32, 1e6)
    assert rel_err(dk.spd_power(S, 0.5, method="newton"), ref_power(S, 0.5)) < 1e-5


@pytest.mark.parametrize("a", [0.5, 0.25, 0.75, -0.5, -1.0, 0.0])
@pytest.mark.parametrize("method", ["eigh", "newton"])
def test_gradcheck_full_rank(gen, a, method):
    S = rand_spd(gen, 6, 20.0).requires_grad_()
    assert gradcheck(lambda s: dk.spd_power(s, a, method=method), (S,))


@pytest.mark.parametrize("method", ["eigh", "newton"])
def test_gradcheck_repeated_eigenvalues(gen, method):
    S = rand_spd(gen, 6, 5.0, repeated=3).requires_grad_()
    assert gradcheck(lambda s: dk.spd_power(s, 0.5, method=method), (S,))
    assert gradcheck(lambda s: dk.spd_power(s, -0.5, method=method), (S,))


@pytest.mark.parametrize("a", [0.5, 0.25, 0.0, -0.5, -1.0])
def test_gradcheck_rank_deficient_constant_rank(gen, a):
    """Rank-deficient S = B Bᵀ, perturbed through B (rank stays 3): exact derivative."""
    B = torch.randn(2, 6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda b: dk.spd_power(b @ b.transpose(-1, -2), a, method="eigh", rtol=1e-8), (B,))


@pytest.mark.parametrize("a", [0.5, 0.25, 0.0, -0.5, -1.0])
def test_newton_backward_equals_eigh_backward_on_singular_input(gen, a):
    """The matmul-only backward implements the same convention, null space included."""
    B = torch.randn(2, 8, 3, generator=gen, dtype=torch.float64)
    S = B @ B.transpose(-1, -2)
    C = torch.randn(2, 8, 8, generator=gen, dtype=torch.float64)
    _, (lam, Q, rng) = eigh_power(S, a, 1e-8)
    ge = eigh_power_backward(C, a, lam, Q, rng)
    gn = newton_power_backward(S, a, C)
    # a = 1/4 is a square root of a square root: the rounding-level (≈1e-16) null eigenvalues
    # come out of the inner root at ≈1e-8 and feed the outer root's tangent; measured worst
    # over 150 seeds 1.6e-7 (a = 1/2 and a ≤ 0: 4e-14)
    tol = 1e-6 if a == 0.25 else 1e-8
    assert rel_err(gn, ge) < tol


def test_gradcheck_rank_deficient_direct_negative_power(gen):
    """Direct perturbation of a singular S: the floor (rtol) keeps the rank constant for a ≤ 0.

    (For 0 < a < 1 the derivative at a singular S is infinite — |x| at 0 — see the module doc
    and test_singular_positive_power_subgradient_is_finite.)
    """
    S = rand_spd(gen, 6, 10.0, rank=3).requires_grad_()
    for a in (0.0, -0.5, -1.0):
        assert gradcheck(lambda s: dk.spd_power(s, a, method="eigh", rtol=1e-4), (S,))


def test_singular_positive_power_subgradient_is_finite(gen):
    B = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    S = (B @ B.t()).requires_grad_()
    out = dk.spd_power(S, 0.5, method="eigh")
    g = torch.randn(7, 7, generator=gen, dtype=torch.float64)
    (out * g).sum().backward()
    assert torch.isfinite(S.grad).all() and S.grad.abs().sum() > 0


def test_zero_matrix_is_handled(gen):
    S = torch.zeros(2, 5, 5, dtype=torch.float64)
    for m in ("eigh", "newton"):
        for a in (0.5, -0.5):
            out = dk.spd_power(S, a, method=m)
            assert torch.all(out == 0), (m, a)


def test_non_dyadic_newton_is_refused_and_auto_uses_eigh(gen):
    S = rand_spd(gen, 5)
    with pytest.raises(ValueError, match="a: method='newton'"):
        dk.spd_power(S, 1 / 3, method="newton")
    assert rel_err(dk.spd_power(S, 1 / 3), ref_power(S, 1 / 3)) < 1e-10


def test_batched_leading_dims(gen):
    S = rand_spd(gen, 7, 10.0, batch=(2, 3))
    out = dk.spd_power(S, 0.5, method="newton")
    assert out.shape == (2, 3, 7, 7)
    assert rel_err(out, ref_power(S, 0.5)) < 1e-10


# ----------------------------------------------------------------------------- bad input (issue 12)
@pytest.mark.parametrize("method", ["eigh", "newton"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_S_is_an_error_naming_S(gen, method, bad):
    S = rand_spd(gen, 5)
    S[1, 2, 3] = bad
    with pytest.raises(ValueError, match="S: expected finite entries"):
        dk.spd_power(S, 0.5, method=method)


@pytest.mark.parametrize("a", [0.5, -0.5])
def test_non_finite_S_unchecked_gives_nan_not_garbage(gen, a):
    """check=False (no host sync, also the compiled path): the Newton route returns NaN for
    that matrix — never finite numbers — and leaves the others of the batch intact."""
    S = rand_spd(gen, 5)
    S[1, 2, 3] = float("nan")
    out = dk.spd_power(S, a, method="newton", check=False)
    assert torch.isnan(out[1]).all()
    assert rel_err(out[0], ref_power(S[0], a)) < 1e-8


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("a", [0.5, 0.25, -0.5, 0.0, -1.0, 1.0])
@pytest.mark.parametrize("method", ["eigh", "newton"])
def test_clearly_indefinite_S_is_an_error_in_both_methods(gen, dtype, a, method):
    """diag(−5, 1) (the issue's example) and a random matrix with λ_min = −0.01·λ_max."""
    with pytest.raises(ValueError, match="S: expected symmetric positive semi-definite"):
        dk.spd_power(torch.diag(torch.tensor([-5.0, 1.0], dtype=dtype)), a, method=method)
    Q, _ = torch.linalg.qr(torch.randn(9, 9, generator=gen, dtype=torch.float64))
    lam = torch.linspace(1.0, 0.1, 9, dtype=torch.float64)
    lam[-1] = -0.01
    S = ((Q * lam) @ Q.t()).to(dtype)
    with pytest.raises(ValueError, match="S: expected symmetric positive semi-definite"):
        dk.spd_power(S, a, method=method)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("a", [0.5, -0.5, 0.0])
def test_rounding_negative_eigenvalues_are_clamped_identically(gen, dtype, a):
    """λ_min = −d·eps·λ_max (rounding of a singular Gram): no error, both methods treat it as
    null space (λ ≤ rtol·λ_max → 0) and agree."""
    d = 8
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    lam = torch.logspace(0, -1, d, dtype=torch.float64)
    lam[-2:] = torch.tensor([0.0, -d * torch.finfo(dtype).eps])
    S = ((Q * lam) @ Q.t()).to(dtype)
    e = dk.spd_power(S, a, method="eigh", rtol=1e-4)
    n = dk.spd_power(S, a, method="newton", rtol=1e-4)
    tol = 1e-8 if dtype == torch.float64 else 2e-3
    assert rel_err(n, e) < tol
    assert rel_err(e, ref_power(S, a, rtol=1e-4)) < tol


@pytest.mark.parametrize("a", [0.5, 0.25])
def test_gray_zone_negative_eigenvalue_never_gives_garbage(gen, a):
    """float64 λ_min = −1e-8·λ_max: above rounding, below the eigh route's tol (1e-5), which
    clamps it. The square-root iteration cannot clamp it (the negative direction grows until
    the guard freezes it), so the Newton route reports it instead (documented): either a
    ValueError naming S, or the eigh answer — never a silently wrong matrix."""
    Q, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=torch.float64))
    lam = torch.logspace(0, -1, 8, dtype=torch.float64)
    lam[-1] = -1e-8
    S = (Q * lam) @ Q.t()
    e = dk.spd_power(S, a, method="eigh", rtol=1e-4)
    assert rel_err(e, ref_power(S, a, rtol=1e-4)) < 1e-10
    try:
        n = dk.spd_power(S, a, method="newton", rtol=1e-4)
    except ValueError as exc:
        assert str(exc).startswith("S: expected symmetric positive semi-definite")
    else:
        assert rel_err(n, e) < 1e-6


@pytest.mark.parametrize("scale", [1e-30, 1e30, 1e-20, 1e20])
@pytest.mark.parametrize("a", [0.5, -0.5, -1.0, 0.25])
@pytest.mark.parametrize("method", ["eigh", "newton"])
def test_float32_extreme_scales(gen, scale, a, method):
    """(cS)^a = c^a S^a: S is divided by max |S| before iterating, so float32 1e-30·S and
    1e30·S give the right answer (they gave 0 and inf/NaN)."""
    S = rand_spd(gen, 6, 10.0, dtype=torch.float64)
    out = dk.spd_power((scale * S).float(), a, method=method)
    ex = ref_power(S, a) * scale**a
    assert torch.isfinite(out).all()
    assert rel_err(out, ex) < 2e-4


def test_bad_rtol_and_iters_name_the_argument(gen):
    S = rand_spd(gen, 4)
    for rtol in (-1.0, 0.0, 1.5, "x"):
        with pytest.raises(ValueError, match="rtol: expected"):
            dk.spd_power(S, 0.5, rtol=rtol)
    for iters in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="iters: expected"):
            dk.spd_power(S, 0.5, method="newton", iters=iters)
