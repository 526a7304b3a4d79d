"""block_power's eigh route with the spectral normaliser on the native CPU kernels
(``cpu.spectral_power_forward`` / ``_backward``, the default on the CPU) against its torch code
(backend "reference"): forward outputs and the backward, float64 and float32, odd shapes,
rank-deficient S, several exponents (a = ½ has its own Loewner form), one or one per matrix."""
import os

import pytest
import torch

from dlrl_kernels import _dispatch
from dlrl_kernels.ops.lowrank_block import _backward, _block_power_impl

pytestmark = pytest.mark.skipif(not _dispatch.native_status()[0], reason="native CPU kernels unavailable")


def _spd(seed, I, d, dtype, rank=None):
    g = torch.Generator().manual_seed(seed)
    Y = torch.randn(I, 3 * d + 1, rank or d, generator=g, dtype=torch.float64)
    if rank is not None:
        Y = Y @ torch.randn(I, rank, d, generator=g, dtype=torch.float64)
    S = Y.transpose(-1, -2) @ Y
    return S.to(dtype), torch.randn(I, d, d, generator=g, dtype=torch.float64).to(dtype)


def _both(S, gN, a):
    import types

    out = {}
    for impl in ("cpu", "reference"):
        fwd = _block_power_impl(S, a, "spectral", "eigh", None, impl)
        ctx = types.SimpleNamespace(saved_tensors=(S, *fwd), a=list(a), normalize="spectral", method="eigh",
                                    rtol=None, impl=impl)
        out[impl] = (*fwd, _backward(ctx, gN, None, None, None, None)[0])
    return out["cpu"], out["reference"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("I, d, rank", [(5, 20, None), (3, 7, None), (2, 9, 4), (1, 1, None), (2, 33, None)])
@pytest.mark.parametrize("a", [[0.5], [0.25], [0.5, 0.75, 0.3, 0.5, 1.0]])
def test_native_matches_torch(I, d, rank, dtype, a):
    seed = int(os.environ.get("DLRL_TEST_SEED", int.from_bytes(os.urandom(4), "little")))  # replayable
    S, gN = _spd(seed, I, d, dtype, rank)
    a = a if len(a) == 1 else (a * I)[:I]
    if len(a) == 1 and I > 1 and seed % 2:
        a = a * I  # one exponent per matrix, all equal
    nat, ref = _both(S, gN, a)
    names = ["N", "c", "v", "lam", "Q", "gS"]
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-3, atol=2e-3)
    for name, x, y in zip(names, nat, ref):
        if name == "Q" and rank is not None:
            y = x  # (a basis of the null space is any rotation of another: only its shape is compared)
        msg = f"{name}: seed {seed}, I={I}, d={d}, rank={rank}, {dtype}, a={a}"
        assert x.shape == y.shape and x.dtype == y.dtype and x.is_contiguous(), msg
        scale = max(1.0, float(y.abs().max()))
        torch.testing.assert_close(x, y, rtol=tol["rtol"], atol=tol["atol"] * scale, msg=msg)
    if d > 1:  # (1×1: N = S^a / λ^a = 1 whatever S, so its gradient is 0)
        assert float(nat[-1].abs().max()) > 0, "a zero gradient would test nothing"


def test_native_backward_is_the_derivative():
    """gradcheck of the op on the native route (float64), full rank and a = ½ and a = 0.3."""
    from dlrl_kernels.ops.lowrank_block import block_power

    S, _ = _spd(1, 2, 5, torch.float64)
    for a in ([0.5], [0.3, 0.5]):
        f = lambda X: block_power(0.5 * (X + X.transpose(-1, -2)), a, "spectral", "eigh", None, "cpu")[0]
        assert torch.autograd.gradcheck(f, (S.clone().requires_grad_(),))


def test_double_backward_takes_the_differentiable_twin():
    """create_graph=True (a double backward) on the native route: the second derivative equals
    the torch twin's (the native kernel's result has no graph; a silent zero is the failure)."""
    from dlrl_kernels.ops.lowrank_block import block_power

    S, gN = _spd(2, 2, 5, torch.float64)
    out = {}
    for be in ("cpu", "reference"):
        X = S.clone().requires_grad_()
        N = block_power(0.5 * (X + X.transpose(-1, -2)), [0.5], "spectral", "eigh", None, be)[0]
        (g,) = torch.autograd.grad((N * gN).sum(), X, create_graph=True)
        (h,) = torch.autograd.grad((g * g).sum(), X)
        out[be] = (g.detach(), h)
    torch.testing.assert_close(out["cpu"][0], out["reference"][0])
    torch.testing.assert_close(out["cpu"][1], out["reference"][1])
    assert float(out["cpu"][1].abs().max()) > 0
