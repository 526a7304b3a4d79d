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
