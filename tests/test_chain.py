import pytest
import torch

import dlrl_kernels as dk
from conftest import chain


def dense_prod(fs):
    P = fs[0]
    for f in fs[1:]:
        P = P @ f
    return P


@pytest.mark.parametrize("I", [1, 2, 3, 6, 10])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chain_products_match_naive(gen, I, dtype):
    dims = [7] + [int(torch.randint(2, 9, (1,), generator=gen)) for _ in range(I - 1)] + [5]
    fs = chain(gen, dims, dtype)
    pre, suf = dk.chain_products(fs)
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    for k in range(I):
        if k == 0:
            assert pre[k] is None
        else:
            torch.testing.assert_close(pre[k], dense_prod(fs[:k]), rtol=tol, atol=tol)
        if k == I - 1:
            assert suf[k] is None
        else:
            torch.testing.assert_close(suf[k], dense_prod(fs[k + 1 :]), rtol=tol, atol=tol)


@pytest.mark.parametrize("I", [1, 2, 4, 10])
@pytest.mark.parametrize("layout", ["dense", "coo", "csr"])
def test_chain_grad_is_AtEBt(gen, I, layout):
    dims = [9] + [4] * (I - 1) + [6]
    fs = chain(gen, dims)
    E = torch.randn(9, 6, generator=gen, dtype=torch.float64)
    E = E * (torch.rand(9, 6, generator=gen) < 0.5)
    pre, suf = dk.chain_products(fs)
    Ein = {"dense": E, "coo": E.to_sparse(), "csr": E.to_sparse_csr()}[layout]
    got = dk.chain_grad(fs, Ein)
    for k in range(I):
        A = torch.eye(9, dtype=E.dtype) if pre[k] is None else pre[k]
        B = torch.eye(6, dtype=E.dtype) if suf[k] is None else suf[k]
        g = got[k].to_dense() if got[k].layout != torch.strided else got[k]
        torch.testing.assert_close(g, A.t() @ E @ B.t(), rtol=1e-10, atol=1e-10)


def test_chain_grad_equals_autograd_of_half_frobenius(gen):
    fs = chain(gen, [5, 3, 4, 2, 7], requires_grad=True)
    E0 = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    loss = (dense_prod(fs) * E0).sum()
    auto = torch.autograd.grad(loss, fs)
    for a, b in zip(dk.chain_grad([f.detach() for f in fs], E0), auto):
        torch.testing.assert_close(a, b)
