"""Triton dense masked residual / loss (``dlrl_kernels/_triton/masked_residual.py``) against
the reference backend and an independent float64 computation.

Runs on CPU tensors through Triton's interpreter (conftest sets TRITON_INTERPRET=1), or on
a GPU when the interpreter is switched off. Shapes are odd on purpose: the interpreter's
tiles are 32×32, so 37×45 and 50×33 have partial tiles on both sides.

Error bounds (elementwise, the standard dot-product bound γ_k = k·eps): a residual entry
e = u·v − x computed in working precision satisfies |ê − e| ≤ (d+2)·eps·(|u|·|v| + |x|).
R = E Vᵀ then carries that error times |V| plus its own (n+2)·eps·|E||V|ᵀ.
"""
import pytest
import torch

import dlrl_kernels as dk
from dlrl_kernels._dispatch import interpret_mode
from conftest import rel_err

DEV = torch.device("cuda") if (torch.cuda.is_available() and not interpret_mode()) else torch.device("cpu")
pytestmark = pytest.mark.skipif(
    DEV.type == "cpu" and not interpret_mode(), reason="needs TRITON_INTERPRET=1 (conftest sets it) or a GPU"
)
DTYPES = [torch.float32, torch.float64]
SHAPES = [(37, 45), (50, 33)]


def _k():
    from dlrl_kernels._triton import masked_residual as k

    return k


def eps(dtype):
    return torch.finfo(dtype).eps


def problem(gen, m, n, d, dtype, density=0.6, nan=False):
    U = torch.randn(m, d, generator=gen, dtype=torch.float64)
    V = torch.randn(d, n, generator=gen, dtype=torch.float64)
    X = torch.randn(m, n, generator=gen, dtype=torch.float64) * 3
    mask = torch.rand(m, n, generator=gen) < density
    mask[m // 3, :] = False  # a row without observations
    mask[:, n // 2] = False  # and a column
    if nan:
        X = torch.where(mask, X, torch.full_like(X, float("nan")))
    return [t.to(DEV) for t in (U.to(dtype), V.to(dtype), X.to(dtype))] + [mask.to(DEV)]


def ref64(U, V, X, mask):
    """Independent float64 residual, loss, R = E Vᵀ, Q = Eᵀ U, and their error bounds."""
    U, V, X = U.double().cpu(), V.double().cpu(), X.double().cpu()
    obs = ~torch.isnan(X) if mask is None else mask.cpu()
    Xz = torch.where(obs, X, torch.zeros_like(X))
    E = torch.where(obs, U @ V - Xz, torch.zeros_like(X))
    return E, obs, Xz


def e_bound(U, V, Xz, obs, dtype):
    d = U.shape[1]
    b = (d + 2) * eps(dtype) * (U.double().abs().cpu() @ V.double().abs().cpu() + Xz.abs())
    return torch.where(obs, b, torch.zeros_like(b))


def assert_within(x, ref, bound, what):
    err = (x.double().cpu() - ref).abs()
    bad = err > bound + 1e-300
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} entries outside the rounding bound; max err {err.max().item():.3e}, "
        f"max err/bound {(err / bound.clamp_min(1e-300)).max().item():.3e}"
    )
    return (err / bound.clamp_min(1e-300)).max().item()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [16, 20, 33, 64])
@pytest.mark.parametrize("nan", [False, True], ids=["mask", "nan"])
def test_residual_and_loss_forward(gen, dtype, d, nan, record_property):
    m, n = SHAPES[d % 2]
    U, V, X, mask = problem(gen, m, n, d, dtype, nan=nan)
    mk = None if nan else mask
    E64, obs, Xz = ref64(U, V, X, mk)
    bound = e_bound(U, V, Xz, obs, dtype)

    E = dk.masked_residual([U, V], X, mk, backend="triton")
    assert E.dtype == dtype and torch.isfinite(E).all()
    assert torch.all(E.cpu()[~obs] == 0)
    assert_within(E, E64, bound, "E vs float64")
    Er = dk.masked_residual([U, V], X, mk, backend="reference")
    assert_within(E, Er.double().cpu(), 2 * bound, "E vs reference")

    L = dk.masked_loss([U, V], X, mk, backend="triton")
    L64 = 0.5 * (E64 * E64).sum()
    # first order: Σ|e|·δe, plus the tile sums and the sum over tiles (≤ 64·eps relative)
    tol = (E64.abs() * bound).sum() + 64 * eps(dtype) * L64
    assert abs(L.item() - L64.item()) <= tol.item()
    Lr = dk.masked_loss([U, V], X, mk, backend="reference")
    assert abs(L.item() - Lr.item()) <= 2 * tol.item()
    record_property("rel_err_E", rel_err(E, E64))
    record_property("rel_err_loss", abs(L.item() - L64.item()) / L64.item())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [16, 33])
@pytest.mark.parametrize("nan", [False, True], ids=["mask", "nan"])
def test_loss_backward_two_factors(gen, dtype, d, nan, record_property):
    """The fused (R, Q) kernel: gradients equal the reference path's and float64 E Vᵀ, Eᵀ U."""
    m, n = SHAPES[d % 2]
    U, V, X, mask = problem(gen, m, n, d, dtype, nan=nan)
    mk = None if nan else mask
    g = 0.5 + torch.rand((), generator=gen).item() * 2  # upstream gradient ≠ 1: the scale path
    grads = {}
    for be in ("triton", "reference"):
        Ui, Vi = U.clone().requires_grad_(), V.clone().requires_grad_()
        (g * dk.masked_loss([Ui, Vi], X, mk, backend=be)).backward()
        grads[be] = (Ui.grad, Vi.grad)
    E64, obs, Xz = ref64(U, V, X, mk)
    gU64, gV64 = g * E64 @ V.double().cpu().t(), g * (U.double().cpu().t() @ E64)
    bound = e_bound(U, V, Xz, obs, dtype)
    bU = g * (bound @ V.double().abs().cpu().t() + (n + 2) * eps(dtype) * E64.abs() @ V.double().abs().cpu().t())
    bV = g * (U.double().abs().cpu().t() @ bound + (m + 2) * eps(dtype) * U.double().abs().cpu().t() @ E64.abs())
    gU, gV = grads["triton"]
    assert_within(gU, gU64, bU, "dU vs float64")
    assert_within(gV, gV64, bV, "dV vs float64")
    assert_within(gU, grads["reference"][0].double().cpu(), 2 * bU, "dU vs reference")
    assert_within(gV, grads["reference"][1].double().cpu(), 2 * bV, "dV vs reference")
    # the unobserved row gets an exactly zero gradient
    assert torch.all(gU[m // 3] == 0)
    record_property("rel_err_dU", rel_err(gU, gU64))
    record_property("rel_err_dV", rel_err(gV, gV64))


@pytest.mark.parametrize("dtype", DTYPES)
def test_three_factor_chain_autograd(gen, dtype, record_property):
    """Gradients of every factor through the kernels equal the reference path's and float64
    autograd of the dense formula (I = 3: the kernel sees U = X₁X₂)."""
    m, d1, d, n = 41, 24, 20, 35
    fs = [torch.randn(a, b, generator=gen, dtype=torch.float64).to(dtype).to(DEV) for a, b in ((m, d1), (d1, d), (d, n))]
    X = torch.randn(m, n, generator=gen, dtype=torch.float64).to(dtype).to(DEV)
    mask = (torch.rand(m, n, generator=gen) < 0.5).to(DEV)
    out = {}
    for be in ("triton", "reference"):
        f = [t.clone().requires_grad_() for t in fs]
        loss = dk.masked_loss(f, X, mask, backend=be)
        loss.backward()
        out[be] = (loss.detach(), [t.grad for t in f])
    f64 = [t.double().cpu().requires_grad_() for t in fs]
    E64 = torch.where(mask.cpu(), f64[0] @ f64[1] @ f64[2] - X.double().cpu(), torch.zeros((), dtype=torch.float64))
    L64 = 0.5 * (E64 * E64).sum()
    L64.backward()
    tol = 16 * d1 * eps(dtype)  # three chained products of length ≤ d1, normwise
    assert abs(out["triton"][0].item() - L64.item()) / L64.item() < tol
    for k in range(3):
        assert rel_err(out["triton"][1][k], f64[k].grad) < tol
        assert rel_err(out["triton"][1][k], out["reference"][1][k]) < tol
    record_property("rel_err_grads", max(rel_err(out["triton"][1][k], f64[k].grad) for k in range(3)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_residual_autograd(gen, dtype):
    """E itself (forward kernel) with a random upstream dE: gradients equal the reference's."""
    m, n, d = 37, 45, 20
    U, V, X, mask = problem(gen, m, n, d, dtype)
    gE = torch.randn(m, n, generator=gen, dtype=torch.float64).to(dtype).to(DEV)
    grads = {}
    for be in ("triton", "reference"):
        Ui, Vi = U.clone().requires_grad_(), V.clone().requires_grad_()
        dk.masked_residual([Ui, Vi], X, mask, backend=be).backward(gE)
        grads[be] = (Ui.grad, Vi.grad)
    G64 = torch.where(mask.cpu(), gE.double().cpu(), torch.zeros((), dtype=torch.float64))
    tol = 4 * max(m, n) * eps(dtype)
    assert rel_err(grads["triton"][0], G64 @ V.double().cpu().t()) < tol
    assert rel_err(grads["triton"][1], U.double().cpu().t() @ G64) < tol
    assert rel_err(grads["triton"][0], grads["reference"][0]) < tol
    assert rel_err(grads["triton"][1], grads["reference"][1]) < tol


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(gen, dtype):
    """The kernels take strides: transposed views of U, X and the mask give the same result."""
    m, n, d = 45, 37, 20
    U, V, X, mask = problem(gen, m, n, d, dtype)
    Ut, Xt, Mt = U.t().contiguous().t(), X.t().contiguous().t(), mask.t().contiguous().t()
    assert not (Ut.is_contiguous() or Xt.is_contiguous() or Mt.is_contiguous())
    k = _k()
    L, E = k.dense_residual_loss(Ut, V, Xt, Mt, True)
    L0, E0 = k.dense_residual_loss(U, V, X, mask, True)
    assert torch.equal(E, E0) and torch.equal(L, L0)
    R, Q = k.dense_residual_rq(Ut, V, Xt, Mt, 1.0, variant="split")
    R0, Q0 = k.dense_residual_rq(U, V, X, mask, 1.0, variant="split")
    if dtype == torch.float64 and not getattr(k, "FUSED_RQ_FLOAT64", True):
        # float64 (R, Q) come from the forward kernel's E and two torch matmuls, whose BLAS
        # call differs with the operands' layout: equal to rounding, not bit for bit
        tol = 4 * max(m, n) * eps(dtype)
        assert rel_err(R, R0) < tol and rel_err(Q, Q0) < tol
    else:
        assert torch.equal(R, R0) and torch.equal(Q, Q0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant,split", [("fused", 1), ("fused", 3), ("split", None)])
def test_rq_variants(gen, dtype, variant, split, record_property):
    """Both backward variants (and the column-split fused launch with atomic R) agree with
    float64 E Vᵀ / Eᵀ U within the rounding bound; a float mask behaves as the bool one."""
    m, n, d = 50, 97, 33
    U, V, X, mask = problem(gen, m, n, d, dtype)
    s = 1.75
    R, Q = _k().dense_residual_rq(U, V, X, mask.to(X.dtype), torch.tensor(s, dtype=dtype), variant=variant, split=split)
    E64, obs, Xz = ref64(U, V, X, mask)
    bound = e_bound(U, V, Xz, obs, dtype)
    Va, Ua = V.double().abs().cpu(), U.double().abs().cpu()
    bR = s * (bound @ Va.t() + (n + 2) * eps(dtype) * E64.abs() @ Va.t())
    bQ = s * (bound.t() @ Ua + (m + 2) * eps(dtype) * E64.abs().t() @ Ua)
    assert_within(R, s * E64 @ V.double().cpu().t(), bR, "R")
    assert_within(Q, s * E64.t() @ U.double().cpu(), bQ, "Q")
    record_property("rel_err_R", rel_err(R, s * E64 @ V.double().cpu().t()))


def test_split_variant_is_deterministic_and_chosen_in_deterministic_mode(gen, monkeypatch):
    m, n, d = 37, 45, 16
    U, V, X, mask = problem(gen, m, n, d, torch.float32)
    k = _k()
    seen = []
    orig = k._launch_rq
    monkeypatch.setattr(k, "_launch_rq", lambda *a: seen.append(a[9]) or orig(*a))
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        R1, Q1 = k.dense_residual_rq(U, V, X, mask, 1.0)
        R2, Q2 = k.dense_residual_rq(U, V, X, mask, 1.0)
    finally:
        torch.use_deterministic_algorithms(prev)
    assert seen == [False, False, False, False]  # two launches per call, neither writes Q by atomics
    assert torch.equal(R1, R2) and torch.equal(Q1, Q2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_d_fallback_and_d_chunks(gen, dtype):
    """d = 130: the forward sweeps d in 64-wide chunks (3 of them, the last partial) and the
    backward takes the documented d > MAX_FUSED_D route (E from the forward kernel)."""
    m, n, d = 33, 35, 130
    assert d > _k().MAX_FUSED_D
    U, V, X, mask = problem(gen, m, n, d, dtype)
    E64, obs, Xz = ref64(U, V, X, mask)
    bound = e_bound(U, V, Xz, obs, dtype)
    E = dk.masked_residual([U, V], X, mask, backend="triton")
    assert_within(E, E64, bound, "E (d=130)")
    R, Q = _k().dense_residual_rq(U, V, X, mask, 2.0)
    tol = 4 * (d + max(m, n)) * eps(dtype)
    assert rel_err(R, 2 * E64 @ V.double().cpu().t()) < tol
    assert rel_err(Q, 2 * E64.t() @ U.double().cpu()) < tol


def test_loss_without_E_and_all_missing(gen):
    U, V, X, mask = problem(gen, 37, 45, 16, torch.float64)
    L, E = _k().dense_residual_loss(U, V, X, mask, False)
    assert E is None and L.item() > 0
    L0, E0 = _k().dense_residual_loss(U, V, X, torch.zeros_like(mask), True)
    assert L0.item() == 0 and torch.all(E0 == 0)
    R, Q = _k().dense_residual_rq(U, V, X, torch.zeros_like(mask), 1.0)
    assert torch.all(R == 0) and torch.all(Q == 0)


def test_rejects_integer_factors_dtype():
    k = _k()
    with pytest.raises(TypeError, match="float32 or float64"):
        k.dense_residual_loss(torch.ones(3, 2, dtype=torch.float16), torch.ones(2, 4, dtype=torch.float16),
                              torch.ones(3, 4, dtype=torch.float16), None, False)
