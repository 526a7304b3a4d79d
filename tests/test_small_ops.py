"""gram and spectral_norm_sq against independent float64 references."""
import pytest
import torch
from torch.autograd import gradcheck

import dlrl_kernels as dk
from conftest import rel_err


@pytest.mark.parametrize("shape", [(37, 16), (5, 20), (1, 3), (3, 70, 33)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram(gen, shape, dtype):
    Y = torch.randn(*shape, generator=gen, dtype=dtype)
    ref = torch.einsum("...ri,...rj->...ij", Y.double(), Y.double())
    assert rel_err(dk.gram(Y), ref) < (1e-12 if dtype == torch.float64 else 1e-5)


def test_gram_gradcheck(gen):
    Y = torch.randn(2, 6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert gradcheck(dk.gram, (Y,))


@pytest.mark.parametrize("shape", [(40, 7), (7, 40), (3, 16, 16), (1, 5)])
@pytest.mark.parametrize("method", ["eigh", "power"])
def test_spectral_norm_sq(gen, shape, method):
    A = torch.randn(*shape, generator=gen, dtype=torch.float64)
    # make the top singular value well separated so 300 power steps converge to 1e-10
    U, s, Vh = torch.linalg.svd(A, full_matrices=False)
    s = s.clone()
    s[..., 0] = s[..., 0] * 2
    A = (U * s[..., None, :]) @ Vh
    ref = s[..., 0] ** 2
    got = dk.spectral_norm_sq(A, method=method, iters=300)
    assert rel_err(got, ref) < 1e-10


def test_spectral_norm_rank_one_and_zero(gen):
    u = torch.randn(9, 1, generator=gen, dtype=torch.float64)
    v = torch.randn(1, 4, generator=gen, dtype=torch.float64)
    A = u @ v
    ref = (u.norm() * v.norm()) ** 2
    for m in ("eigh", "power"):
        assert abs(dk.spectral_norm_sq(A, method=m).item() - ref.item()) < 1e-9 * ref.item()
        assert dk.spectral_norm_sq(torch.zeros(3, 4, dtype=torch.float64), method=m).item() == 0.0


def test_spectral_norm_gradient(gen):
    A = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda a: dk.spectral_norm_sq(a, method="eigh"), (A,))


@pytest.mark.parametrize("iters", [0, -3, 2.5, True])
def test_power_iters_validated(gen, iters):
    A = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    with pytest.raises(ValueError, match="iters: expected an integer >= 1"):
        dk.spectral_norm_sq(A, method="power", iters=iters)


def test_power_huge_iters_stops_on_convergence(gen):
    """iters is a cap: each matrix stops once its Rayleigh quotient changes by ≤ 16·eps
    relative; 10⁸ steps would take minutes, the stop makes it instant."""
    import time

    from dlrl_kernels.ops.spectral_norm import power_iteration

    A = torch.randn(3, 30, 8, generator=gen, dtype=torch.float64)
    t0 = time.perf_counter()
    got = dk.spectral_norm_sq(A, method="power", iters=10**8)
    assert time.perf_counter() - t0 < 30
    ref = torch.linalg.matrix_norm(A, ord=2) ** 2
    assert rel_err(got, ref) < 1e-6
    S = A.transpose(-1, -2) @ A
    lam, v = power_iteration(S, 10**8)
    assert torch.allclose((S @ v[..., None])[..., 0], lam[..., None] * v, rtol=0, atol=1e-5 * float(lam.max()))


@pytest.mark.parametrize("method", ["eigh", "power"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_spectral_norm_non_finite_is_an_error(gen, method, bad):
    A = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    A[2, 1] = bad
    with pytest.raises(ValueError, match="A: expected finite entries"):
        dk.spectral_norm_sq(A, method=method)


def test_gram_nan_propagates_visibly(gen):
    """gram does not sync to check (hot path): a NaN in Y shows up as NaN, never finite."""
    Y = torch.randn(2, 6, 3, generator=gen, dtype=torch.float64)
    Y[1, 2, 0] = float("nan")
    G = dk.gram(Y)
    assert torch.isnan(G[1, 0]).all() and torch.isfinite(G[0]).all()


def test_power_gradcheck(gen):
    """The hand-written backward of the power route (2·A v vᵀ), float64."""
    A = torch.randn(2, 7, 4, generator=gen, dtype=torch.float64)
    U, s, Vh = torch.linalg.svd(A, full_matrices=False)
    s = s.clone()
    s[..., 0] *= 3
    A = ((U * s[..., None, :]) @ Vh).requires_grad_()
    assert gradcheck(lambda a: dk.spectral_norm_sq(a, method="power", iters=500), (A,))
    assert gradcheck(lambda a: dk.spectral_norm_sq(a.transpose(-1, -2), method="eigh"), (A,))


def test_ops_registered_and_fullgraph_compile_on_cpu(gen):
    """The four ops are torch.library custom ops (``torch.ops.dlrl.*``, fake impls, autograd
    registered): torch.compile(fullgraph=True) traces a function calling them whole, forward
    and backward (aot_eager: AOTAutograd over the fake impls and the registered backwards)."""
    for name in ("gram", "spd_power", "spd_power_backward", "pinv", "spectral_norm_sq"):
        assert hasattr(torch.ops.dlrl, name), name

    def f(Y, S):
        out = dk.gram(Y).sum() + dk.spd_power(S, 0.5, method="newton").sum()
        out = out + dk.spd_power(S, -0.5, method="eigh").sum()
        out = out + dk.pinv(Y, method="newton").sum() + dk.spectral_norm_sq(Y, method="power").sum()
        return out

    Y = torch.randn(2, 9, 4, generator=gen, dtype=torch.float64)
    S = Y.transpose(-1, -2) @ Y + 0.1 * torch.eye(4, dtype=torch.float64)
    grads = []
    for fn in (f, torch.compile(f, fullgraph=True, backend="aot_eager")):
        Yi, Si = Y.clone().requires_grad_(), S.clone().requires_grad_()
        out = fn(Yi, Si)
        out.backward()
        grads.append((out.detach(), Yi.grad, Si.grad))
    for x, y in zip(*grads):
        assert rel_err(x, y) < 1e-12
