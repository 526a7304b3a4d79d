import pytest
import torch
from torch.autograd import gradcheck

import dlrl_kernels as dk
from conftest import chain


def case(gen, m, n, I, d=4, frac=0.5, dtype=torch.float64, dup=False):
    dims = [m] + [d] * (I - 1) + [n]
    fs = chain(gen, dims, dtype)
    X = torch.randn(m, n, generator=gen, dtype=dtype)
    mask = torch.rand(m, n, generator=gen) < frac
    r, c = mask.nonzero(as_tuple=True)
    if dup and r.numel():
        r, c = torch.cat([r, r[:3]]), torch.cat([c, c[:3]])
    return fs, X, mask, r, c, X[r, c]


@pytest.mark.parametrize("m,n,I,d", [(1, 9, 2, 3), (9, 1, 2, 3), (13, 11, 2, 20), (6, 5, 5, 3), (4, 4, 10, 2), (8, 3, 1, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparse_equals_dense_on_same_entries(gen, m, n, I, d, dtype):
    fs, X, mask, r, c, v = case(gen, m, n, I, d, dtype=dtype)
    e = dk.masked_residual_sparse(fs, r, c, v)
    E = dk.masked_residual(fs, X, mask)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(e, E[r, c], rtol=tol, atol=tol)
    a = [f.clone().requires_grad_() for f in fs]
    b = [f.clone().requires_grad_() for f in fs]
    ls, ld = dk.masked_loss_sparse(a, r, c, v), dk.masked_loss(b, X, mask)
    torch.testing.assert_close(ls, ld, rtol=tol * 10, atol=tol)
    ls.backward()
    ld.backward()
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad, rtol=tol * 10, atol=tol * 10)


@pytest.mark.parametrize("I", [1, 2, 3, 6])
def test_gradcheck_sparse(gen, I):
    fs, X, mask, r, c, v = case(gen, 7, 6, I, d=3, dup=True)
    fs = [f.requires_grad_() for f in fs]
    assert gradcheck(lambda *f: dk.masked_loss_sparse(list(f), r, c, v), fs)
    assert gradcheck(lambda *f: dk.masked_residual_sparse(list(f), r, c, v), fs)


def test_duplicates_count_twice(gen):
    fs, X, mask, r, c, v = case(gen, 5, 6, 2, d=3)
    k = 0
    r2, c2, v2 = torch.cat([r, r[k : k + 1]]), torch.cat([c, c[k : k + 1]]), torch.cat([v, v[k : k + 1]])
    e = dk.masked_residual_sparse(fs, r, c, v)
    torch.testing.assert_close(dk.masked_loss_sparse(fs, r2, c2, v2), 0.5 * (e @ e + e[k] ** 2))


def test_int32_indices(gen):
    fs, X, mask, r, c, v = case(gen, 9, 8, 3)
    torch.testing.assert_close(
        dk.masked_loss_sparse(fs, r.int(), c.int(), v), dk.masked_loss_sparse(fs, r, c, v)
    )


def test_empty_observations_give_zero_loss_and_gradient(gen):
    fs = [f.requires_grad_() for f in chain(gen, [4, 3, 5])]
    empty = torch.empty(0, dtype=torch.long)
    loss = dk.masked_loss_sparse(fs, empty, empty, torch.empty(0, dtype=torch.float64))
    loss.backward()
    assert loss.item() == 0.0 and all(torch.all(f.grad == 0) for f in fs)


def test_chunking_boundary(gen, monkeypatch):
    from dlrl_kernels.ops import masked_residual_sparse as mod

    fs, X, mask, r, c, v = case(gen, 30, 25, 3, d=4, frac=0.7)
    full = dk.masked_loss_sparse(fs, r, c, v)
    monkeypatch.setattr(mod, "CHUNK", 7)  # many chunks with a ragged tail
    torch.testing.assert_close(dk.masked_loss_sparse(fs, r, c, v), full)
