"""Batched pseudo-inverse: SVD route and a matmul-only Newton–Schulz route.

Newton–Schulz (hyperpower order 2) for a matrix G (..., r, c):
    X_0 = α Gᵀ with α = 1/c², c = min(‖G‖_F, √(‖G‖_1‖G‖_∞)) ≥ σ_max   (so 0 < α < 2/σ_max²)
    X_{k+1} = X_k (2I − G X_k)
It converges quadratically once σ_min²·α·2^k ≈ 1, i.e. after about log2(κ²)+5 steps. On a
rank-deficient G, rounding puts small components in the null space and the iteration
doubles them every step (SPEC §6: float32 Schulz iterations diverge *after* converging).
We therefore track the relative step ‖X_{k+1} − X_k‖_F/‖X_{k+1}‖_F: about ½ while the
smallest range components double, then quadratically small, then growing again when the
null-space noise takes over; each matrix of the batch is frozen at that minimum (or at the
rounding floor), and ``max_iters`` bounds the count. The minimum is looked for only after
``resolve_iters`` steps: before that, a rising step may be a small range eigenvalue still
doubling, which no computable residual tells from null-space noise. So the Newton route
resolves eigenvalues down to ≈1e-6·σ_max² (float64) / 1e-3·σ_max² (float32) on singular
input — beyond that, smaller eigenvalues are treated as null space, and null-space noise
of order eps·2^k is left in the result (measured in tests/test_pinv.py). (The range residual ‖GXG − G‖ is no
use here: in float32 it reaches its rounding floor, ≈ eps·κ, before the smallest range
components have converged.)
Everything is batched with torch.where, so there is no host synchronisation per step.

Backward (both routes): the constant-rank derivative of the pseudo-inverse,
    ∂/∂G = −X̃ Ḡ X̃ + (I − G X)ᵀ-side terms      (X̃ = Xᵀ; see ``pinv_backward``)
which is exact wherever the rank is locally constant (ranks decided by ``rtol``).
"""
from __future__ import annotations

import torch

from .. import _dispatch
from .._validate import check_float_tensor, check_method

def eye_like(S):
    d = S.shape[-1]
    return torch.eye(d, dtype=S.dtype, device=S.device).expand(S.shape)


def default_rtol(G):
    return max(G.shape[-2:]) * torch.finfo(G.dtype).eps


def default_max_iters(dtype):
    return 80 if dtype == torch.float64 else 50


def resolve_iters(dtype):
    """Steps before the rise rule may stop: resolves eigenvalues down to 1e-6 (float64) or
    1e-3·λ_max (float32) of the scaled matrix — x₀λ = λ² doubles each step, +6 to converge."""
    return 46 if dtype == torch.float64 else 26


def _bmnorm(M):
    return torch.linalg.matrix_norm(M)  # Frobenius over the last two dims


def schulz_scale(G):
    """A cheap upper bound of σ_max per matrix: min(‖G‖_F, sqrt(‖G‖_1 ‖G‖_∞))."""
    fro = _bmnorm(G)
    n1 = G.abs().sum(-2).amax(-1)
    ninf = G.abs().sum(-1).amax(-1)
    return torch.minimum(fro, torch.sqrt(n1 * ninf))


def ns_pinv(G, max_iters=None, dG=None):
    """Reference Newton–Schulz pseudo-inverse with the range-residual stop.

    With ``dG`` given, also propagates the tangent dX (forward mode through the same
    iteration; used by the matmul-only backward of spd_power). Returns (X, dX, iters_used).
    """
    if max_iters is None:
        max_iters = default_max_iters(G.dtype)
    c = schulz_scale(G)
    safe_c = torch.where(c > 0, c, torch.ones_like(c))
    alpha = (1.0 / safe_c**2)[..., None, None]
    Gt = G.transpose(-1, -2)
    X = alpha * Gt
    dX = None if dG is None else alpha * dG.transpose(-1, -2)
    eps = torch.finfo(G.dtype).eps
    floor = 8 * max(G.shape[-2:]) * eps
    active = (c > 0).clone()
    prev = torch.full_like(c, float("inf"))
    used = torch.zeros(c.shape, dtype=torch.int32, device=G.device)
    I_r = torch.eye(G.shape[-2], dtype=G.dtype, device=G.device)
    k_min = resolve_iters(G.dtype)
    for k in range(max_iters):
        GX = G @ X
        Xn = X @ (2 * I_r - GX)
        # relative step: about 1/2 while the smallest range components are still doubling,
        # then falls quadratically, then rises again once null-space rounding noise (which
        # doubles every step) dominates. Stop at its minimum (or at the rounding floor).
        rel = _bmnorm(Xn - X) / _bmnorm(Xn).clamp_min(torch.finfo(G.dtype).tiny)
        # The rise rule waits `k_min` steps: before that a rising step is a small range
        # component still doubling (indistinguishable from null-space noise until then).
        stop = (prev <= floor) | ((k >= k_min) & (prev < 0.25) & (rel >= prev))
        active = active & ~stop
        a = active[..., None, None]
        if dG is not None:
            dGX = dG @ X + G @ dX
            dXn = dX @ (2 * I_r - GX) - X @ dGX
            dX = torch.where(a, dXn, dX)
        X = torch.where(a, Xn, X)
        used = used + active.to(torch.int32)
        prev = torch.where(active, rel, prev)
        # On CPU a host check is free; on a GPU it would stall the stream every step.
        if G.device.type == "cpu" and not bool(active.any()):
            break
    return X, dX, used


def svd_pinv(G, rtol=None):
    if rtol is None:
        rtol = default_rtol(G)
    return torch.linalg.pinv(G, rtol=rtol)


def pinv_backward(G, X, gX):
    """Adjoint of X = G⁺ for locally constant rank (Golub–Pereyra), batched."""
    Xt, Gt = X.transpose(-1, -2), G.transpose(-1, -2)
    gXt = gX.transpose(-1, -2)
    I_r = torch.eye(G.shape[-2], dtype=G.dtype, device=G.device)
    I_c = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    return (
        -Xt @ gX @ Xt
        + (I_r - G @ X) @ gXt @ (X @ Xt)
        + (Xt @ X) @ gXt @ (I_c - X @ G)
    )


def gram_pinv_newton(G, rtol=None, gram_fn=None, psd_pinv=None):
    """G⁺ = (GᵀG)⁺Gᵀ (or Gᵀ(GGᵀ)⁺ when G is wide), matmul only, with an explicit threshold.

    The PSD pseudo-inverse of the small Gram uses ``spd_power.psd_pinv_newton`` (sign
    iteration for the range, then a full-rank Newton–Schulz inverse), so null-space rounding
    never gets a chance to grow. Singular values below rtol·σ_max count as zero; the Gram's
    threshold is rtol² (floored at d·eps, what the Gram can resolve). The price: the Gram
    squares the condition number, so float32 is accurate to ≈ eps·κ²: κ(G) ≲ 1e2 in float32
    (measured: 7e-6 at κ = 10, error ≈ 1 at κ = 1e3, bench/op_accuracy.py), ≲ 1e6 in float64.

    ``gram_fn`` / ``psd_pinv`` swap in kernels for the two heavy steps (the Triton twin runs
    this same route with its Gram and sign/inverse kernels); defaults: torch matmul and
    ``spd_power.psd_pinv_newton``.
    """
    if psd_pinv is None:
        from .spd_power import psd_pinv_newton as psd_pinv

    if rtol is None:
        rtol = default_rtol(G)
    tall = G.shape[-2] >= G.shape[-1]
    Gt = G.transpose(-1, -2)
    if gram_fn is None:
        M = Gt @ G if tall else G @ Gt
    else:
        M = gram_fn(G) if tall else gram_fn(Gt)
    M = 0.5 * (M + M.transpose(-1, -2))
    d = M.shape[-1]
    c = schulz_scale(M)
    c = torch.where(c > 0, c, torch.ones_like(c))[..., None, None]
    tau = max(float(rtol) ** 2, d * torch.finfo(G.dtype).eps)
    Mp = psd_pinv(M / c, tau)[0] / c
    return Mp @ Gt if tall else Gt @ Mp


class PinvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, G, method, rtol, max_iters, backend):
        if method == "svd":
            X = svd_pinv(G, rtol)
        elif backend == "triton":
            # the same algorithm as the reference below (the plain Schulz ``ns_pinv`` has no
            # threshold and leaves null-space noise on rank-deficient G)
            from .._triton import small_matrix as k

            X = k.gram_pinv_newton(G, rtol)
        else:
            X = gram_pinv_newton(G, rtol)
        ctx.save_for_backward(G, X)
        return X

    @staticmethod
    def backward(ctx, gX):
        G, X = ctx.saved_tensors
        return pinv_backward(G, X, gX), None, None, None, None


def pinv(G, method: str = "auto", rtol=None, max_iters=None, backend: str = "auto"):
    """Batched pseudo-inverse of G (..., r, c).

    method: "svd" (torch.linalg.pinv with relative cut-off ``rtol``, default max(r,c)·eps),
    "newton" (matmul only: ``gram_pinv_newton``, explicit threshold ``rtol``) or "auto"
    (newton on CUDA, svd on CPU). Differentiable (constant-rank derivative).
    ``ns_pinv`` (plain Schulz with the step-minimum stop) stays available as a primitive.
    """
    check_float_tensor(G, "G", ndim_min=2)
    check_method(method, {"auto", "svd", "newton"})
    be = _dispatch.resolve(backend, G.device, "pinv")
    if method == "auto":
        method = "newton" if (G.device.type == "cuda" or be == "triton") else "svd"
    return PinvFn.apply(G, method, rtol, max_iters, be)
