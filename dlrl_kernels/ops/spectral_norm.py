"""Batched σ_max(A)² through the small Gram side (never an SVD of the long side)."""
from __future__ import annotations

import torch

from .. import _dispatch
from .._validate import check_float_tensor, check_method
from .gram import gram


def small_gram(A, backend="auto"):
    """AᵀA or AAᵀ, whichever is smaller (same nonzero spectrum)."""
    if A.shape[-2] >= A.shape[-1]:
        return gram(A, backend=backend)
    return gram(A.transpose(-1, -2), backend=backend)


def power_iteration(S, iters=30):
    """Largest eigenvalue of symmetric PSD S by power iteration (reference twin).

    Start: the normalised all-ones vector plus a small deterministic ramp, so that it is
    not orthogonal to the top eigenvector for the symmetric cases where ones would be.
    """
    d = S.shape[-1]
    v = torch.ones(S.shape[:-1], dtype=S.dtype, device=S.device)
    v = v + 1e-3 * torch.arange(d, dtype=S.dtype, device=S.device) / d
    v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    for _ in range(iters):
        w = (S @ v[..., None])[..., 0]
        v = w / torch.linalg.vector_norm(w, dim=-1, keepdim=True).clamp_min(torch.finfo(S.dtype).tiny)
    return (v * (S @ v[..., None])[..., 0]).sum(-1)


class PowerIterationFn(torch.autograd.Function):
    """Kernel power iteration; backward ∂λ/∂S = v vᵀ with v the final unit vector (the
    gradient of the Rayleigh quotient vᵀSv at the converged vector; the reference's autograd
    through the iterations agrees up to the iteration's own convergence error)."""

    @staticmethod
    def forward(ctx, S, iters):
        from .._triton import small_matrix as k

        lam, v = k.power_iteration(S, iters, return_vector=True)
        ctx.save_for_backward(v)
        return lam

    @staticmethod
    def backward(ctx, g):
        (v,) = ctx.saved_tensors
        return g[..., None, None] * (v[..., :, None] * v[..., None, :]), None


def spectral_norm_sq(A, method: str = "auto", iters: int = 30, backend: str = "auto"):
    """σ_max(A)² for A (..., r, c).

    method "eigh": largest eigenvalue of the small Gram (exact, differentiable by autograd);
    "power": ``iters`` power iterations on the small Gram (a lower bound that converges at
    rate (λ₂/λ₁)^{2k}); "auto": eigh on CPU, power on CUDA.
    """
    check_float_tensor(A, "A", ndim_min=2)
    check_method(method, {"auto", "eigh", "power"})
    be = _dispatch.resolve(backend, A.device, "spectral_norm_sq")
    if method == "auto":
        method = "power" if A.device.type == "cuda" else "eigh"
    S = small_gram(A, backend=be)
    if method == "eigh":
        return torch.linalg.eigvalsh(0.5 * (S + S.transpose(-1, -2)))[..., -1]
    if be == "triton":
        return PowerIterationFn.apply(S, int(iters))
    return power_iteration(S, iters)
