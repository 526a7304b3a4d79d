import pytest
import torch
from torch.autograd import gradcheck

import dlrl_kernels as dk
from conftest import chain


def product(fs):
    P = fs[0]
    for f in fs[1:]:
        P = P @ f
    return P


def case(gen, m, n, I, d=4, frac=0.6, dtype=torch.float64):
    dims = [m] + [d] * (I - 1) + [n]
    fs = chain(gen, dims, dtype)
    X = torch.randn(m, n, generator=gen, dtype=dtype)
    mask = torch.rand(m, n, generator=gen) < frac
    return fs, X, mask


@pytest.mark.parametrize("m,n,I,d", [(1, 9, 2, 3), (7, 1, 3, 2), (13, 11, 2, 20), (6, 5, 5, 3), (4, 4, 10, 2), (8, 3, 1, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_residual_matches_definition(gen, m, n, I, d, dtype):
    fs, X, mask = case(gen, m, n, I, d, dtype=dtype)
    E = dk.masked_residual(fs, X, mask)
    ref = torch.where(mask, product([f.double() for f in fs]) - X.double(), torch.zeros((), dtype=torch.float64))
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(E.double(), ref, rtol=tol, atol=tol)
    assert E.dtype == dtype
    L = dk.masked_loss(fs, X, mask)
    torch.testing.assert_close(L.double(), 0.5 * (ref**2).sum(), rtol=tol * 10, atol=tol)


def test_nan_marks_missing(gen):
    fs, X, mask = case(gen, 9, 8, 3)
    Xn = torch.where(mask, X, torch.full_like(X, float("nan")))
    torch.testing.assert_close(dk.masked_residual(fs, Xn), dk.masked_residual(fs, X, mask))
    assert not torch.isnan(dk.masked_loss(fs, Xn))


def test_float_mask_equals_bool(gen):
    fs, X, mask = case(gen, 6, 7, 2)
    torch.testing.assert_close(dk.masked_loss(fs, X, mask.double()), dk.masked_loss(fs, X, mask))


@pytest.mark.parametrize("I", [1, 2, 3, 5])
@pytest.mark.parametrize("wide", [False, True])
def test_gradcheck_masked_loss(gen, I, wide):
    m, n = (5, 8) if wide else (8, 5)
    fs, X, mask = case(gen, m, n, I, d=3)
    fs = [f.requires_grad_() for f in fs]
    assert gradcheck(lambda *f: dk.masked_loss(list(f), X, mask), fs)
    Xn = torch.where(mask, X, torch.full_like(X, float("nan")))
    assert gradcheck(lambda *f: dk.masked_residual(list(f), Xn), fs)


def test_rows_without_observations_get_zero_gradient(gen):
    fs, X, mask = case(gen, 6, 7, 2)
    mask[2] = False  # user 2 has no observed entry
    fs = [f.requires_grad_() for f in fs]
    dk.masked_loss(fs, X, mask).backward()
    assert torch.all(fs[0].grad[2] == 0)
    assert torch.isfinite(fs[0].grad).all() and fs[0].grad.abs().sum() > 0


def test_backward_matches_autograd_reference(gen):
    fs, X, mask = case(gen, 12, 10, 4, d=5)
    a = [f.clone().requires_grad_() for f in fs]
    b = [f.clone().requires_grad_() for f in fs]
    dk.masked_loss(a, X, mask).backward()
    (0.5 * (torch.where(mask, product(b) - X, torch.zeros(())) ** 2).sum()).backward()
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad)


def test_dense_X_is_differentiated_and_bad_input_is_named(gen):
    from torch.autograd import gradcheck

    m, n, d = 6, 5, 3
    U = torch.randn(m, d, generator=gen, dtype=torch.float64, requires_grad=True)
    V = torch.randn(d, n, generator=gen, dtype=torch.float64, requires_grad=True)
    X = torch.randn(m, n, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(m, n, generator=gen) < 0.6
    assert gradcheck(lambda a, b, x: dk.masked_loss([a, b], x, mask), (U, V, X))
    assert gradcheck(lambda a, b, x: dk.masked_residual([a, b], x, mask), (U, V, X))
    bad = U.detach().clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"factors\[0\]: expected finite"):
        dk.masked_loss([bad, V], X, mask)
    Xi = X.detach().clone()
    Xi[1, 1] = -float("inf")
    with pytest.raises(ValueError, match="X: expected finite"):
        dk.masked_loss([U, V], Xi, mask)
