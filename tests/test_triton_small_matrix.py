"""Triton batched small-matrix kernels (``dlrl_kernels/_triton/small_matrix.py``) through the
public ops with ``backend="triton"``: gram, pinv (newton), spd_power (newton), the power
iteration of spectral_norm_sq and lowrank_block — against the reference backend (the same
algorithm in torch) and independent float64 eigh / SVD computations.

d ∈ {16, 20, 33, 64, 128}: the Newton iterations run the shared ``_newton`` orchestration over
the batched GEMM kernel (``bmm``: 16/32/64-wide tiles, masked), so 20 and 33 exercise the
masking and 128 the 2×2 tiling with a K-loop. Each spd_power launch mixes a well-conditioned,
an ill-conditioned and a rank-deficient matrix (per-matrix stop rules in one batch).

Tolerances. The Newton–Schulz route has its own error (the reference shows it too), so each
check is two-sided: (1) the kernel is as accurate as the reference algorithm against the exact
float64 answer (≤ 3× its error + max(8·d·eps, eps·amp)), and (2) an absolute first-order
bound 8·d·eps·amp, amp = 1 on well-conditioned input, κ^{1/2} (positive powers) or κ
(negative powers, and every backward: the Loewner coefficients reach λ_min^{a−1}) on
ill-conditioned input.
"""
import pytest
import torch

import dlrl_kernels as dk
from dlrl_kernels._dispatch import interpret_mode
from dlrl_kernels.ops.spd_power import eigh_power, eigh_power_backward
from conftest import rand_spd, ref_block, ref_power, rel_err

DEV = torch.device("cuda") if (torch.cuda.is_available() and not interpret_mode()) else torch.device("cpu")
pytestmark = pytest.mark.skipif(
    DEV.type == "cpu" and not interpret_mode(), reason="needs TRITON_INTERPRET=1 (conftest sets it) or a GPU"
)
DTYPES = [torch.float32, torch.float64]
COND = {torch.float32: 1e3, torch.float64: 1e8}  # what the default iteration counts resolve


def _k():
    from dlrl_kernels._triton import small_matrix as k

    return k


def eps(dtype):
    return torch.finfo(dtype).eps


def to(t):
    return t.to(DEV)


# ----------------------------------------------------------------------------- gram
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [16, 20, 33, 64, 150])
def test_gram(gen, dtype, d, record_property):
    """YᵀY within the dot-product bound (r+2)·eps·|Y|ᵀ|Y|, equal to the reference; d = 150
    takes the tiled path (64-wide tiles, 3×3 of them, the last partial)."""
    r = 45 if d <= 64 else 21
    Y = to(torch.randn(2, r, d, generator=gen, dtype=torch.float64).to(dtype))
    G = dk.gram(Y, backend="triton")
    Y64 = Y.double().cpu()
    G64 = Y64.transpose(-1, -2) @ Y64
    bound = (r + 2) * eps(dtype) * (Y64.abs().transpose(-1, -2) @ Y64.abs())
    assert G.shape == (2, d, d) and G.dtype == dtype
    assert torch.all((G.double().cpu() - G64).abs() <= bound)
    assert torch.all((G - dk.gram(Y, backend="reference")).abs().double().cpu() <= 2 * bound)
    record_property("rel_err", rel_err(G, G64))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gram_row_split_noncontiguous_and_autograd(gen, dtype):
    k = _k()
    Y = to(torch.randn(3, 20, 70, generator=gen, dtype=torch.float64).to(dtype)).transpose(-1, -2)  # (3, 70, 20) view
    assert not Y.is_contiguous()
    G64 = Y.double().cpu().transpose(-1, -2) @ Y.double().cpu()
    tol = 4 * 70 * eps(dtype)
    for split in (1, 3, 70):  # row ranges summed by torch (the GPU path for few matrices)
        assert rel_err(k.gram(Y, split=split), G64) < tol
    C = to(torch.randn(3, 20, 20, generator=gen, dtype=torch.float64).to(dtype))
    grads = []
    for be in ("triton", "reference"):
        Yi = Y.detach().clone().requires_grad_()
        (dk.gram(Yi, backend=be) * C).sum().backward()
        grads.append(Yi.grad)
    assert rel_err(grads[0], grads[1]) < tol


# ----------------------------------------------------------------------------- pinv
def svd_pinv64(G, rtol):
    U, s, Vh = torch.linalg.svd(G.double().cpu(), full_matrices=False)
    keep = s > rtol * s[..., :1]
    sinv = torch.where(keep, 1.0 / torch.where(keep, s, torch.ones_like(s)), torch.zeros_like(s))
    return (Vh.transpose(-1, -2) * sinv[..., None, :]) @ U.transpose(-1, -2)


def rand_cond(gen, r, c, cond, rank=None):
    k = min(r, c)
    U, _ = torch.linalg.qr(torch.randn(r, k, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(c, k, generator=gen, dtype=torch.float64))
    s = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), k, dtype=torch.float64)
    s = s * (0.5 + torch.rand(1, generator=gen, dtype=torch.float64))
    if rank is not None:
        s[rank:] = 0
    return (U * s) @ V.t()


@pytest.mark.parametrize("dtype,shape", [(torch.float32, (33, 45)), (torch.float64, (20, 16))])
def test_pinv_newton(gen, dtype, shape, record_property):
    """One batch of [well-conditioned, ill-conditioned, rank-deficient] G, tall / wide /
    square. The Newton route inverts the Gram, so its error is ≈ eps·κ² (ops/pinv.py)."""
    r, c = shape
    k = min(r, c)
    cond_ill = 30.0 if dtype == torch.float32 else 1e4
    G = torch.stack([rand_cond(gen, r, c, 10.0), rand_cond(gen, r, c, cond_ill), rand_cond(gen, r, c, 10.0, rank=k // 3)])
    G = to(G.to(dtype))
    rtol = 1e-3 if dtype == torch.float32 else 1e-6
    X = dk.pinv(G, method="newton", rtol=rtol, backend="triton")
    Xr = dk.pinv(G, method="newton", rtol=rtol, backend="reference")
    ex = svd_pinv64(G, rtol)
    assert X.shape == (3, c, r) and torch.isfinite(X).all()
    for i, kappa in enumerate((10.0, cond_ill, 10.0)):
        e_t, e_r = rel_err(X[i], ex[i]), rel_err(Xr[i], ex[i])
        # on the ill-conditioned matrix both errors are rounding noise of size ≈ eps·κ² and
        # their ratio is heavy-tailed (a CI run saw 3.5×, seeds up to 9×): a wider factor there
        f = 10 if i == 1 else 3
        assert e_t <= f * e_r + 8 * k * eps(dtype), (i, e_t, e_r)
        # err/(k·eps·κ²) is heavy-tailed: 400 seeds of the float64 κ = 1e4 case on the reference
        # route gave median 2.8, p99 15, max 20 (the loop is in this commit's message),
        # and one CI run of the Triton route 34 (seed 318531593) — so 64, still far below the
        # O(rtol) or O(1) error of a wrong kernel
        assert e_t < 64 * k * eps(dtype) * kappa**2, (i, e_t)
        assert rel_err(X[i], Xr[i]) <= (f + 1) * e_r + 8 * k * eps(dtype)
        record_property(f"rel_err_{i}", e_t)


@pytest.mark.parametrize("dtype", [torch.float32])
def test_pinv_newton_honours_rtol(gen, dtype):
    """Singular values below rtol·σ_max count as zero on the Triton path too: a spectrum with
    a gap ([0.1, 1] and [1e-3, 3e-3]) and rtol = 0.03 between them. (The Triton route once
    ran the threshold-free Schulz iteration and inverted the small singular values.)"""
    r, c = 30, 20
    U, _ = torch.linalg.qr(torch.randn(r, c, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(c, c, generator=gen, dtype=torch.float64))
    s = torch.cat([torch.logspace(0, -1, 12, dtype=torch.float64), torch.logspace(-2.5, -3, 8, dtype=torch.float64)])
    G = to(((U * s) @ V.t()).to(dtype))
    ex = svd_pinv64(G, 0.03)
    X = dk.pinv(G, method="newton", rtol=0.03, backend="triton")
    Xr = dk.pinv(G, method="newton", rtol=0.03, backend="reference")
    tol = 8 * c * eps(dtype) * 10.0**2  # the kept part has κ = 10
    assert rel_err(X, ex) < tol
    assert rel_err(X, Xr) < tol


@pytest.mark.parametrize("dtype", [torch.float32])
def test_pinv_newton_autograd(gen, dtype):
    """Gradients through the Triton forward equal the reference path's (the backward formula
    is shared; it reads the kernel's X)."""
    G = to(rand_cond(gen, 21, 17, 10.0).to(dtype))
    C = to(torch.randn(17, 21, generator=gen, dtype=torch.float64).to(dtype))
    grads = []
    for be in ("triton", "reference"):
        Gi = G.clone().requires_grad_()
        (dk.pinv(Gi, method="newton", backend=be) * C).sum().backward()
        grads.append(Gi.grad)
    G64 = G.double().cpu().requires_grad_()
    (torch.linalg.pinv(G64) * C.double().cpu()).sum().backward()
    tol = 16 * 21 * eps(dtype) * 10.0**2
    assert rel_err(grads[0], G64.grad) < tol
    assert rel_err(grads[0], grads[1]) < tol


def test_ns_pinv_kernel_matches_reference_primitive(gen):
    """The plain Schulz kernel (a primitive, not the public route) on rank-deficient input:
    stops (does not diverge) and equals ops.pinv.ns_pinv."""
    from dlrl_kernels.ops.pinv import ns_pinv

    G = to(torch.stack([rand_cond(gen, 24, 20, 10.0), rand_cond(gen, 24, 20, 10.0, rank=7)]))
    X = _k().ns_pinv(G, 200)
    Xr = ns_pinv(G, 200)[0]
    assert torch.isfinite(X).all()
    assert rel_err(X, Xr) < 1e-10
    assert rel_err(X[0], svd_pinv64(G[0], 1e-8)) < 1e-12


# ----------------------------------------------------------------------------- spd_power
# Under the interpreter every GEMM launch costs ≈ 0.1–0.4 s (hundreds per backward), so the
# end-to-end cases are few: the iteration is the reference's own code (``_newton``), only the
# product differs, and ``test_bmm_primitive`` covers the product at every tile shape.
POWERS = [(0.5, 16, torch.float32), (-0.5, 20, torch.float32), (0.75, 16, torch.float64)]


def power_batch(gen, d, dtype):
    kinds = [dict(cond=10.0), dict(cond=COND[dtype]), dict(cond=10.0, rank=max(1, d // 3))]
    S = torch.cat([rand_spd(gen, d, batch=(1,), dtype=torch.float64, **kw) for kw in kinds])
    return to(S.to(dtype)), (10.0, COND[dtype], 10.0)


@pytest.mark.parametrize("a,d,dtype", POWERS)
def test_spd_power_newton_forward_and_backward(gen, dtype, a, d, record_property):
    S, kappas = power_batch(gen, d, dtype)
    C = to(torch.randn(3, d, d, generator=gen, dtype=torch.float64).to(dtype))
    res = {}
    for be in ("triton", "reference"):
        Si = S.clone().requires_grad_()
        out = dk.spd_power(Si, a, method="newton", backend=be)
        out.backward(C)
        res[be] = (out.detach(), Si.grad)
    rtol = d * eps(dtype)  # the default range threshold of both routes
    ex = ref_power(S, a, rtol=rtol)
    _, (lam, Q, rng) = eigh_power(S.double().cpu(), a, rtol)
    gex = eigh_power_backward(C.double().cpu(), a, lam, Q, rng)
    base = 8 * d * eps(dtype)
    for i, kappa in enumerate(kappas):
        for j, (what, exact, amp) in enumerate(
            (("forward", ex, kappa ** (0.5 if a > 0 else 1.0)), ("backward", gex, kappa))
        ):
            t, r = res["triton"][j][i], res["reference"][j][i]
            e_t, e_r = rel_err(t, exact[i]), rel_err(r, exact[i])
            # within first-order noise (a few eps·amp) the two errors are independent rounding
            # amplified by κ, and their ratio is heavy-tailed (seen up to 9×; float64 backward,
            # κ = 1e8, seed 831938053: triton 7.8·eps·κ vs reference 1.6·eps·κ), so the ratio
            # is only held beyond d·eps·amp; a wrong product's error is O(1)
            slack = max(base, d * eps(dtype) * amp)
            assert e_t <= 3 * e_r + slack, (what, i, e_t, e_r)
            assert rel_err(t, r) <= 4 * e_r + slack, (what, i, rel_err(t, r), e_r)
            assert e_t < base * amp, (what, i, e_t)
            record_property(f"rel_err_{what}_{['well', 'ill', 'rankdef'][i]}", e_t)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [((2, 16, 16), (2, 16, 16)), ((3, 20, 33), (1, 33, 5)), ((70, 33), (33, 1)), ((2, 128, 128), (128, 128))])
@pytest.mark.parametrize("diag,scale", [(0.0, 1.0), (1.5, -0.5)])
def test_bmm_primitive(gen, dtype, shape, diag, scale):
    """The GEMM primitive of the Newton core: scale·(A @ B) + diag·I with broadcast batch dims,
    odd sizes (masked tiles), a matrix–vector product and d = 128 (2×2 tiles of 64, K-loop)."""
    sa, sb = shape
    A = to(torch.randn(*sa, generator=gen, dtype=torch.float64).to(dtype))
    B = to(torch.randn(*sb, generator=gen, dtype=torch.float64).to(dtype))
    out = _k().bmm(A, B, diag=diag, scale=scale)
    ref = _newton_mm()(A.double().cpu(), B.double().cpu(), diag=diag, scale=scale)
    bound = (sa[-1] + 2) * eps(dtype) * (abs(scale) * (A.double().abs().cpu() @ B.double().abs().cpu()) + abs(diag))
    assert out.shape == ref.shape and out.dtype == dtype
    assert torch.all((out.double().cpu() - ref).abs() <= bound)


def _newton_mm():
    from dlrl_kernels._newton import mm_torch

    return mm_torch


@pytest.mark.parametrize("dtype", DTYPES)
def test_spd_power_d128_small_batch(gen, dtype):
    """d = 128 (the size the old register-resident kernels could not compile spill-free)
    through the public op: three capped square-root steps (``iters=3``; the full iteration
    is hundreds of interpreted launches) — the Triton route takes the reference's exact
    steps, so the two agree to rounding, capped or not."""
    d = 128
    S = to(rand_spd(gen, d, batch=(1,), cond=10.0, dtype=torch.float64).to(dtype))
    t = dk.spd_power(S, 0.5, method="newton", iters=3, check=False, backend="triton")
    r = dk.spd_power(S, 0.5, method="newton", iters=3, check=False, backend="reference")
    assert torch.isfinite(t).all()
    assert rel_err(t, r) < 64 * d * eps(dtype)


# ----------------------------------------------------------------------------- spectral norm (power)
@pytest.mark.parametrize("dtype,shape", [(torch.float32, (3, 40, 16)), (torch.float64, (2, 20, 33)), (torch.float32, (2, 64, 70))])
def test_spectral_norm_power_iteration(gen, dtype, shape, record_property):
    """λ_max of the small Gram by 30 power steps (σ₂/σ₁ = ½: the eigenvector error (¼)^30 is below eps) vs
    the reference power iteration and float64 eigh; gradients too (kernel: v vᵀ; reference:
    autograd through the iterations)."""
    *b, r, c = shape
    k = min(r, c)
    U, _ = torch.linalg.qr(torch.randn(*b, r, k, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(*b, c, k, generator=gen, dtype=torch.float64))
    s = 0.5 * torch.rand(*b, k, generator=gen, dtype=torch.float64)
    s[..., 0] = 1.0 + torch.rand(*b, generator=gen, dtype=torch.float64)
    s[..., 1] = 0.5 * s[..., 0]
    A = to(((U * s[..., None, :]) @ V.transpose(-1, -2)).to(dtype))
    res = {}
    for be in ("triton", "reference"):
        Ai = A.clone().requires_grad_()
        out = dk.spectral_norm_sq(Ai, method="power", backend=be)
        out.sum().backward()
        res[be] = (out.detach(), Ai.grad)
    A64 = A.double().cpu().requires_grad_()
    S64 = A64.transpose(-1, -2) @ A64 if r >= c else A64 @ A64.transpose(-1, -2)
    lam64 = torch.linalg.eigvalsh(S64)[..., -1]
    lam64.sum().backward()
    tol = 4 * max(r, c) * eps(dtype)
    assert rel_err(res["triton"][0], lam64) < tol
    assert rel_err(res["triton"][0], res["reference"][0]) < tol
    assert rel_err(res["triton"][1], A64.grad) < 4 * tol
    assert rel_err(res["triton"][1], res["reference"][1]) < 4 * tol
    record_property("rel_err", rel_err(res["triton"][0], lam64))
    record_property("rel_err_grad", rel_err(res["triton"][1], A64.grad))


def test_power_iteration_kernel_equals_reference_iterates(gen):
    """Few iterations (not converged): the kernel performs the reference's exact steps."""
    from dlrl_kernels.ops.spectral_norm import power_iteration

    S = to(rand_spd(gen, 33, batch=(2,), cond=3.0, repeated=2))
    for iters in (0, 1, 3):
        lam_k, v_k = _k().power_iteration(S, iters)
        lam_r, v_r = power_iteration(S, iters)
        assert rel_err(lam_k, lam_r) < 1e-14 and rel_err(v_k, v_r) < 1e-14


# ----------------------------------------------------------------------------- lowrank_block


@pytest.mark.parametrize("dtype", [torch.float32])
@pytest.mark.parametrize("p,shape,normalize", [(1.0, (2, 40, 16), None)])
def test_lowrank_block_newton(gen, dtype, p, shape, normalize, record_property):
    """ReLU(W (YᵀY)^{(2−p)/2}) and its gradients (Newton power over the GEMM kernel)."""
    Y = to(torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype))
    W = to(torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype))
    G = to(torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype))
    res = {}
    for be in ("triton", "reference"):
        Yi, Wi = Y.clone().requires_grad_(), W.clone().requires_grad_()
        out = dk.lowrank_block(Yi, Wi, p, method="newton", normalize=normalize, backend=be)
        out.backward(G)
        res[be] = (out.detach(), Yi.grad, Wi.grad)
    Y64, W64 = Y.double().cpu().requires_grad_(), W.double().cpu().requires_grad_()
    out64 = dk.lowrank_block(Y64, W64, p, method="eigh", normalize=normalize, rtol=1e-12)
    out64.backward(G.double().cpu())
    assert rel_err(out64, ref_block(Y, W, p, normalize)) < 1e-12  # the float64 reference itself
    d = min(shape[-2:])
    # Gram of rows (κ(YᵀY) ≲ 1e2 for these shapes), then a Newton power: c·r·eps
    tol = 16 * max(shape[-2:]) * eps(dtype) * 10
    names = ("out", "dY", "dW")
    for j, exact in enumerate((out64.detach(), Y64.grad, W64.grad)):
        e_t, e_r = rel_err(res["triton"][j], exact), rel_err(res["reference"][j], exact)
        assert e_t <= 3 * e_r + 8 * d * eps(dtype), (names[j], e_t, e_r)
        assert e_t < tol, (names[j], e_t)
        record_property(f"rel_err_{names[j]}", e_t)
