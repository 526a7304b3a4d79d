import pytest
import torch
from torch.autograd import gradcheck

import dlrl_kernels as dk
from conftest import ref_block, rel_err


@pytest.mark.parametrize("p", [0.5, 1.0, 1.5, 2.0])
@pytest.mark.parametrize("shape", [(40, 20), (20, 40), (3, 33, 16), (1, 5), (5, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_block_matches_reference(gen, p, shape, dtype):
    Y = torch.randn(*shape, generator=gen, dtype=dtype)
    W = torch.randn(*shape, generator=gen, dtype=dtype)
    tol = 1e-8 if dtype == torch.float64 else 1e-3
    for method in ("eigh", "newton"):
        for nz in (None, "trace"):
            out = dk.lowrank_block(Y, W, p, method=method, normalize=nz)
            assert out.shape == Y.shape and out.dtype == dtype
            assert rel_err(out, ref_block(Y, W, p, nz)) < tol, (method, nz)


def test_block_is_eq23_with_pinv(gen):
    """T = ½ W G⁺ with G = ½ (YᵀY)^{(p−2)/2} equals W (YᵀY)^{(2−p)/2} (SPEC §2)."""
    Y = torch.randn(30, 6, generator=gen, dtype=torch.float64)
    W = torch.randn(30, 6, generator=gen, dtype=torch.float64)
    for p in (0.5, 1.0, 1.5):
        G = 0.5 * dk.spd_power(Y.t() @ Y, (p - 2) / 2)
        T = 0.5 * W @ dk.pinv(G)
        torch.testing.assert_close(dk.lowrank_block(Y, W, p), torch.relu(T))


@pytest.mark.parametrize("p", [0.5, 1.0, 1.5, 2.0])
@pytest.mark.parametrize("shape", [(9, 4), (4, 9)])
@pytest.mark.parametrize("method", ["eigh", "newton"])
@pytest.mark.parametrize("normalize", [None, "trace"])
def test_gradcheck_block(gen, p, shape, method, normalize):
    Y = torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)
    W = torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda y, w: dk.lowrank_block(y, w, p, method=method, normalize=normalize), (Y, W))


@pytest.mark.parametrize("method", ["eigh", "newton"])
def test_gradcheck_rank_deficient_Y_at_p2(gen, method):
    """p = 2: S^0 is the range projector, locally constant in null directions: differentiable."""
    W = torch.randn(8, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    B = torch.randn(2, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    A = torch.randn(8, 2, generator=gen, dtype=torch.float64)
    assert gradcheck(lambda b, w: dk.lowrank_block(A @ b, w, 2.0, method=method, rtol=1e-8), (B, W))


def test_rank_deficient_Y_p1_gradient_finite(gen):
    Y = (torch.randn(10, 3, generator=gen, dtype=torch.float64) @ torch.randn(3, 6, generator=gen, dtype=torch.float64))
    Y.requires_grad_()
    W = torch.randn(10, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    for method in ("eigh", "newton"):
        out = dk.lowrank_block(Y, W, 1.0, method=method)
        out.sum().backward()
        assert torch.isfinite(Y.grad).all() and torch.isfinite(W.grad).all()
        Y.grad = None
        W.grad = None


def test_backward_equals_autograd_through_eigh(gen):
    """The hand-written backward against autograd through torch.linalg.eigh (full rank)."""
    Y = torch.randn(12, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    W = torch.randn(12, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(12, 5, generator=gen, dtype=torch.float64)
    (dk.lowrank_block(Y, W, 1.0) * g).sum().backward()
    gy, gw = Y.grad.clone(), W.grad.clone()
    Y.grad = W.grad = None
    lam, Q = torch.linalg.eigh(Y.t() @ Y)
    P = (Q * lam.sqrt()) @ Q.t()
    (torch.relu(W @ P) * g).sum().backward()
    torch.testing.assert_close(gy, Y.grad)
    torch.testing.assert_close(gw, W.grad)
