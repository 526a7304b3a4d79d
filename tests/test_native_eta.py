"""The native gram S(η) and η's adjoint (``dlrl_kernels.cpu.eta_gram`` / ``eta_grad``, used by the
model's autograd-free step on the CPU) against the torch expression and its autograd gradient."""
import pytest
import torch

from dlrl_kernels import _dispatch

pytestmark = pytest.mark.skipif(not _dispatch.native_status()[0], reason="native CPU kernels unavailable")


def _torch_gram(G0, G1, G2, c, eta, lo, hi):
    e = eta.clamp(lo, hi)
    t = (c / e)[:, None, None]
    return G0 + t * G1 + (t * t) * G2, t.reshape(-1)


def _case(seed, I, d, dtype):
    g = torch.Generator().manual_seed(seed)
    G0, G1, G2 = (torch.randn(I, d, d, generator=g, dtype=torch.float64).to(dtype) for _ in range(3))
    c = (torch.rand(I, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    if seed % 2:
        c = -c  # the paper's descent sign
    gS = torch.randn(I, d, d, generator=g, dtype=torch.float64).to(dtype)
    return G0, G1, G2, c, gS


# (I, d): odd sizes, one block of one, the model's d = 20 (its specialised build), d > 32 (heap scratch)
SHAPES = [(5, 20), (3, 7), (1, 1), (2, 33)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("I, d", SHAPES)
@pytest.mark.parametrize("eta0, lo", [(0.37, 1e-3), (1.0, 1e-3), (1e-3, 1e-3), (1.7, 1e-3), (-0.2, 1e-3),
                                      (float("nan"), 1e-3), (0.25, 0.0), (1.3, 0.0)])
def test_eta_gram_and_grad_match_torch(I, d, dtype, eta0, lo):
    """Inside the clamp, on both bounds (included), outside and NaN; paper's bounds [1e-3, 1] and
    published's [0, 1] (η = 0 itself is left out: t = c/0 is infinite, so S is inf/NaN in an
    order-dependent way in both)."""
    from dlrl_kernels import cpu

    hi = 1.0
    for seed in range(3):
        G0, G1, G2, c, gS = _case(seed, I, d, dtype)
        eta = torch.tensor(eta0, dtype=dtype)
        S, t = cpu.eta_gram(G0, G1, G2, c, eta, lo, hi)
        # truth: the torch expression in float64, and its autograd gradient through η's clamp
        e64 = eta.double().clone().requires_grad_(True)
        S64, t64 = _torch_gram(G0.double(), G1.double(), G2.double(), c.double(), e64, lo, hi)
        (S64 * gS.double()).sum().backward()
        tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-6, atol=2e-5)
        msg = f"seed {seed}, I={I}, d={d}, {dtype}, eta={eta0}"
        assert S.dtype == dtype and t.dtype == dtype, msg
        torch.testing.assert_close(S.double(), S64.detach(), equal_nan=True, **tol, msg=msg)
        torch.testing.assert_close(t.double(), t64.detach(), equal_nan=True, **tol, msg=msg)
        g = cpu.eta_grad(gS, G1, G2, t, eta, lo, hi)
        assert g.shape == eta.shape and g.dtype == dtype, msg
        want = e64.grad
        scale = max(1.0, float(want.abs().nan_to_num(0.0, 0.0, 0.0)))
        torch.testing.assert_close(g.double(), want, equal_nan=True, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10 * scale, msg=msg)
        if not (lo <= eta0 <= hi):
            assert float(g) == 0.0, msg  # outside the clamp (and NaN): no gradient, as autograd's clamp
        else:
            assert float(g) != 0.0, msg


def test_eta_native_refuses_mismatched_tensors():
    from dlrl_kernels import cpu

    G0, G1, G2, c, gS = _case(0, 3, 5, torch.float64)
    eta = torch.tensor(0.5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^G1: "):
        cpu.eta_gram(G0, G1.float(), G2, c, eta, 1e-3, 1.0)
    with pytest.raises(ValueError, match=r"^c: "):
        cpu.eta_gram(G0, G1, G2, c[:2], eta, 1e-3, 1.0)
    with pytest.raises(ValueError, match=r"^G2: "):
        cpu.eta_gram(G0, G1, G2.transpose(-1, -2), c, eta, 1e-3, 1.0)
    with pytest.raises(ValueError, match=r"^eta: "):
        cpu.eta_grad(gS, G1, G2, c, torch.ones(2, dtype=torch.float64), 1e-3, 1.0)
    with pytest.raises(ValueError, match=r"^t: "):
        cpu.eta_grad(gS, G1, G2, c[:1], eta, 1e-3, 1.0)


def test_eta_grad_names_its_gradient_argument():
    from dlrl_kernels import cpu

    G0, G1, G2, c, gS = _case(0, 3, 5, torch.float64)
    eta = torch.tensor(0.5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^gS: "):
        cpu.eta_grad(gS.transpose(-1, -2), G1, G2, c, eta, 1e-3, 1.0)
