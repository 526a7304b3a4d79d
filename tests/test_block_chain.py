"""dk.block_chain (all blocks' outputs and their product as one autograd node) against the same
arithmetic composed from torch ops, its float64 gradcheck, and the compiled op route."""
from __future__ import annotations

import os

import pytest
import torch

import dlrl_kernels as dk
from dlrl_kernels.ops import block_chain as bc


def _seed():
    return int.from_bytes(os.urandom(4), "little")


def _case(seed, m, n, d, I, dtype, extra, wide_mid=False):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(I, d, d, generator=g, dtype=torch.float64)
    N = (A @ A.transpose(-1, -2) / d).to(dtype)  # symmetric PSD operators, as block_power's
    Ws = [torch.randn(m, d, generator=g, dtype=torch.float64)] + \
         [torch.randn(d, d, generator=g, dtype=torch.float64) for _ in range(I - 2)] + \
         [torch.randn(d, n, generator=g, dtype=torch.float64)]
    Ws = [W.to(dtype) for W in Ws]
    wide = [False] + [wide_mid] * (I - 2) + [True]
    ue = ve = None
    if extra:
        ue = torch.randn(m, extra, generator=g, dtype=torch.float64).to(dtype)
        ve = torch.randn(n, extra, generator=g, dtype=torch.float64).to(dtype)
    return N, Ws, wide, ue, ve


def _composed(N, Ws, wide, act, ue, ve):
    """The model's former route: per-block products and activations, then the chain."""
    Xs = []
    for W, Nk, w in zip(Ws, N.unbind(0), wide):
        T = (W.t() @ Nk).t() if w else W @ Nk
        Xs.append(torch.relu(T) if act == "relu" else T)
    mid = None
    for M in Xs[1:-1]:
        mid = M if mid is None else mid @ M
    U = Xs[0] if mid is None else Xs[0] @ mid
    Vt = Xs[-1].t()
    if ue is not None:
        U, Vt = torch.cat([U, ue], 1), torch.cat([Vt, ve], 1)
    return U, Vt


@pytest.mark.parametrize("I", [2, 3, 5])
@pytest.mark.parametrize("act", ["relu", "none"])
@pytest.mark.parametrize("extra", [0, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_composed_ops_and_their_gradients(I, act, extra, dtype):
    seed = _seed()
    N, Ws, wide, ue, ve = _case(seed, 13, 17, 5, I, dtype, extra, wide_mid=(I == 5))
    g = torch.Generator().manual_seed(seed + 1)
    leaves = [t.clone().requires_grad_() for t in [N, *Ws] + ([ue, ve] if extra else [])]
    twins = [t.detach().clone().requires_grad_() for t in leaves]
    def unpack(ts):
        return ts[0], ts[1:1 + I], (ts[1 + I] if extra else None), (ts[2 + I] if extra else None)
    n_, w_, u_, v_ = unpack(leaves)
    U, Vt = dk.block_chain(n_, w_, act, u_, v_, wide=wide)
    n2, w2, u2, v2 = unpack(twins)
    U2, Vt2 = _composed(n2, w2, wide, act, u2, v2)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(U, U2, **tol, msg=lambda s: f"U: {s} (seed {seed})")
    torch.testing.assert_close(Vt, Vt2, **tol, msg=lambda s: f"Vt: {s} (seed {seed})")
    assert Vt.is_contiguous()
    cu = torch.randn(U.shape, generator=g, dtype=torch.float64).to(dtype)
    cv = torch.randn(Vt.shape, generator=g, dtype=torch.float64).to(dtype)
    ((U * cu).sum() + (Vt * cv).sum()).backward()
    ((U2 * cu).sum() + (Vt2 * cv).sum()).backward()
    for k, (a, b) in enumerate(zip(leaves, twins)):
        scale = max(1.0, float(b.grad.abs().max()))
        torch.testing.assert_close(a.grad, b.grad, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10 * scale,
                                   msg=lambda s: f"grad of input {k}: {s} (seed {seed})")


@pytest.mark.parametrize("I,extra", [(2, 0), (3, 2), (5, 1)])
def test_gradcheck_float64(I, extra):
    seed = _seed()
    N, Ws, wide, ue, ve = _case(seed, 6, 7, 3, I, torch.float64, extra, wide_mid=True)
    # keep pre-activations away from the ReLU kink, where finite differences are meaningless
    inputs = [N.requires_grad_(), *[W.requires_grad_() for W in Ws]] + ([ue.requires_grad_(), ve.requires_grad_()]
                                                                       if extra else [])

    def f(*ts):
        u, v = (ts[1 + I], ts[2 + I]) if extra else (None, None)
        return dk.block_chain(ts[0], list(ts[1:1 + I]), "relu", u, v, wide=wide)

    with torch.no_grad():
        Ys = bc.block_outputs(N, Ws, wide, "none")
    if min(float(Y.abs().min()) for Y in Ys) < 1e-4:
        pytest.skip(f"a pre-activation within 1e-4 of the kink (seed {seed})")
    assert torch.autograd.gradcheck(f, tuple(inputs)), f"seed {seed}"


def test_compiled_op_route_matches_eager():
    """The registered op (what torch.compile traces: it recomputes the block outputs in its
    backward) gives the eager twin's values and gradients."""
    seed = _seed()
    N, Ws, wide, ue, ve = _case(seed, 9, 11, 4, 4, torch.float64, 2)
    a = [t.clone().requires_grad_() for t in [N, *Ws, ue, ve]]
    b = [t.clone().requires_grad_() for t in [N, *Ws, ue, ve]]
    U, Vt = dk.block_chain(a[0], a[1:5], "relu", a[5], a[6], wide=wide)
    U2, Vt2 = torch.ops.dlrl.block_chain(b[0], b[1:5], wide, b[5], b[6], "relu")
    torch.testing.assert_close(U, U2)
    torch.testing.assert_close(Vt, Vt2)
    (U.sum() + (Vt ** 2).sum()).backward()
    (U2.sum() + (Vt2 ** 2).sum()).backward()
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad, msg=lambda s: f"{s} (seed {seed})")


def test_bad_arguments_are_named():
    N, Ws, wide, ue, ve = _case(0, 5, 6, 3, 3, torch.float64, 1)
    with pytest.raises(ValueError, match="activation"):
        dk.block_chain(N, Ws, "gelu")
    with pytest.raises(ValueError, match="N: expected shape"):
        dk.block_chain(N[:2], Ws)
    with pytest.raises(ValueError, match="u_extra/v_extra"):
        dk.block_chain(N, Ws, "relu", ue, None)
    with pytest.raises(ValueError, match=r"Ws\[1\]"):
        dk.block_chain(N, [Ws[0], torch.randn(4, 4, dtype=torch.float64), Ws[2]])
    with pytest.raises(ValueError, match="wide"):
        dk.block_chain(N, Ws, wide=[False, True])
