"""Batched σ_max(A)² through the small Gram side (never an SVD of the long side).

S = AᵀA (tall A) or AAᵀ (wide A), d×d with d = min(r, c); σ_max(A)² = λ_max(S).

- method "eigh": torch.linalg.eigh of S (exact); "power": power iteration on S
  (``_newton.power_iteration``, matrix–vector products through the backend's matmul: torch
  for the reference, the Triton batched GEMM for ``backend="triton"``). Each matrix stops when
  its Rayleigh quotient changes by ≤ tol·λ (default 16·eps, ``_newton.default_power_tol``) —
  converged to rounding, so a huge ``iters`` costs nothing more — or after ``iters`` steps
  (a cap; before convergence the value is a lower bound, error ∝ (λ₂/λ₁)^{2k}).
- Backward (both methods, hand-written): ∂λ/∂A = 2·A v vᵀ (tall) or 2·v vᵀ A (wide) with v the
  final unit vector (the top eigenvector of S at convergence).
- Bad input: NaN / Inf in A → ValueError naming A; iters must be an integer ≥ 1.
Registered as ``torch.ops.dlrl.spectral_norm_sq``. TF32 would be acceptable here (a
few-digit quantity) but the shared GEMM stays IEEE.
"""
import types
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _dispatch, _newton
from .._validate import check_float_tensor, check_method
from .gram import reference_gram
from .spd_power import check_finite


def _tall(A):
    return A.shape[-2] >= A.shape[-1]


def small_gram(A, gram_fn=reference_gram):
    """AᵀA or AAᵀ, whichever is smaller (same nonzero spectrum)."""
    return gram_fn(A) if _tall(A) else gram_fn(A.transpose(-1, -2))


def power_iteration(S, iters=30, tol=None):
    """(λ_max, v) of symmetric PSD S by power iteration (reference twin:
    ``_newton.power_iteration`` with torch.matmul)."""
    return _newton.power_iteration(S, int(iters), tol, _newton.mm_torch)


def _triton_impl():
    from .._triton import small_matrix

    return small_matrix  # .gram / .power_iteration looked up per call


#: implementation objects: ``gram(Y) -> YᵀY`` and ``power_iteration(S, iters, tol) -> (λ, v)``
TABLE = _dispatch.OpTable(
    "spectral_norm_sq", ("gram", "power_iteration"),
    reference=lambda: types.SimpleNamespace(gram=reference_gram, power_iteration=power_iteration),
    triton=_triton_impl,
)


@_dispatch.constant_result
def _backend_name(backend: str, device: str) -> str:
    """TABLE.resolve's backend name, evaluated eagerly (a constant) when torch.compile traces
    the wrapper; the op then fetches the implementation with the cached TABLE.load(name)."""
    return TABLE.resolve(backend, torch.device(device))[0]


def _spectral_impl(A: Tensor, method: str, iters: int, tol: Optional[float], backend: str) -> Tuple[Tensor, Tensor]:
    """(σ_max², v): v the unit top eigenvector of the small Gram (for the backward)."""
    impl = TABLE.load(backend)
    S = small_gram(A, impl.gram)
    if method == "eigh":
        lam, Q = torch.linalg.eigh(0.5 * (S + S.transpose(-1, -2)))
        return lam[..., -1].contiguous(), Q[..., -1].contiguous()
    return impl.power_iteration(S, iters, tol)


_spectral_op = torch.library.custom_op("dlrl::spectral_norm_sq", _spectral_impl, mutates_args=())


@_spectral_op.register_fake
def _(A, method, iters, tol, backend):
    d = min(A.shape[-2], A.shape[-1])
    return A.new_empty(A.shape[:-2]), A.new_empty((*A.shape[:-2], d))


def _setup(ctx, inputs, output):
    A = inputs[0]
    ctx.save_for_backward(A, output[1])


def _backward(ctx, g, g_v):
    A, v = ctx.saved_tensors
    vv = v[..., :, None] * v[..., None, :]
    gA = 2 * (A @ vv if _tall(A) else vv @ A)
    return g[..., None, None] * gA, None, None, None, None


_spectral_op.register_autograd(_backward, setup_context=_setup)
#: the op, or in eager mode its autograd.Function twin (``_dispatch.EagerOp``)
spectral_op = _dispatch.EagerOp(torch.ops.dlrl.spectral_norm_sq, _spectral_impl, _setup, _backward)


def spectral_norm_sq(A, method: str = "auto", iters: int = 30, backend: str = "auto", tol=None):
    """σ_max(A)² for A (..., r, c); see the module doc.

    method "eigh" (exact), "power" (``iters`` ≥ 1 caps the power steps; each matrix stops at
    convergence, relative Rayleigh-quotient change ≤ ``tol``, default 16·eps) or "auto"
    (eigh on CPU, power on CUDA / Triton).
    """
    if not torch.compiler.is_compiling():
        check_float_tensor(A, "A", ndim_min=2)
        check_method(method, {"auto", "eigh", "power"})
        if not isinstance(iters, int) or isinstance(iters, bool) or iters < 1:
            raise ValueError(f"iters: expected an integer >= 1, got {iters!r}")
        if tol is not None and (not isinstance(tol, (int, float)) or isinstance(tol, bool) or not 0 <= tol < 1):
            raise ValueError(f"tol: expected None or a real number in [0, 1), got {tol!r}")
        check_finite(A, "A")
    name = _backend_name(backend, str(A.device))
    if method == "auto":
        method = "power" if (A.device.type == "cuda" or name == "triton") else "eigh"
    return spectral_op(A, method, int(iters), None if tol is None else float(tol), name)[0]
