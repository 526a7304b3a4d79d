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
