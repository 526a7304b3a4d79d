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
Everything is batched with torch.where, so there is no host synchronisation per step. The
iterations live once in ``dlrl_kernels._newton`` (matrix product plugged in).

Backward (both routes): the constant-rank derivative of the pseudo-inverse,
    ∂/∂G = −X̃ Ḡ X̃ + (I − G X)ᵀ-side terms      (X̃ = Xᵀ; see ``pinv_backward``)
which is exact wherever the rank is locally constant (ranks decided by ``rtol``).
"""
import types
from typing import Optional

import torch
from torch import Tensor

from .. import _dispatch, _newton
from .._newton import default_max_iters, resolve_iters, schulz_scale  # noqa: F401
from .._validate import check_float_tensor, check_method
from .spd_power import _check_rtol, check_finite


def eye_like(S):
    d = S.shape[-1]
    return torch.eye(d, dtype=S.dtype, device=S.device).expand(S.shape)


def default_rtol(G):
    return _newton.pinv_default_rtol(G)


def ns_pinv(G, max_iters=None, dG=None):
    """Plain Newton–Schulz pseudo-inverse with the step-minimum stop (``_newton.ns_pinv`` with
    torch.matmul; with ``dG`` also the tangent). Returns (X, dX, iters_used)."""
    return _newton.ns_pinv(G, max_iters, dG, _newton.mm_torch)


def svd_pinv(G, rtol=None):
    if rtol is None:
        rtol = default_rtol(G)
    return torch.linalg.pinv(G, rtol=rtol)


def eigh_pinv(G, rtol=None):
    """G⁺ of a symmetric G through its eigen-decomposition (|λ| as the singular values: the same
    cut-off rtol·max|λ| and, in exact arithmetic, the same result as ``svd_pinv``); an eigh
    costs about half an SVD at d = 20 (158 vs 276 µs for 5 matrices on this CPU)."""
    if rtol is None:
        rtol = default_rtol(G)
    return torch.linalg.pinv(G, rtol=rtol, hermitian=True)


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


def gram_pinv_newton(G, rtol=None):
    """G⁺ = (GᵀG)⁺Gᵀ (or Gᵀ(GGᵀ)⁺ when G is wide), matmul only, with an explicit threshold:
    ``_newton.gram_pinv`` with torch.matmul (the Triton twin plugs in its GEMM and Gram).

    Singular values below rtol·σ_max count as zero; the Gram's threshold is
    max(rtol², d·eps). The Gram squares the condition number, so float32 is accurate to
    ≈ eps·κ²: κ(G) ≲ 1e2 in float32 (measured: 7e-6 at κ = 10, error ≈ 1 at κ = 1e3,
    bench/op_accuracy.py), ≲ 1e6 in float64.
    """
    return _newton.gram_pinv(G, rtol, _newton.mm_torch)


def _triton_impl():
    from .._triton import small_matrix

    return small_matrix  # .gram_pinv_newton looked up per call


#: implementation objects: ``gram_pinv_newton(G, rtol) -> G⁺`` (the svd route is torch)
TABLE = _dispatch.OpTable(
    "pinv", ("gram_pinv_newton",),
    reference=lambda: types.SimpleNamespace(gram_pinv_newton=gram_pinv_newton),
    triton=_triton_impl,
)


@_dispatch.constant_result
def _backend_name(backend: str, device: str) -> str:
    """TABLE.resolve's backend name, evaluated eagerly (a constant) when torch.compile traces
    the wrapper; the op then fetches the implementation with the cached TABLE.load(name)."""
    return TABLE.resolve(backend, torch.device(device))[0]


def _pinv_impl(G: Tensor, method: str, rtol: Optional[float], backend: str) -> Tensor:
    if method == "svd":
        return svd_pinv(G, rtol)
    if method == "eigh":
        return eigh_pinv(G, rtol)
    return TABLE.load(backend).gram_pinv_newton(G, rtol)


_pinv_op = torch.library.custom_op("dlrl::pinv", _pinv_impl, mutates_args=())


@_pinv_op.register_fake
def _(G, method, rtol, backend):
    return G.new_empty((*G.shape[:-2], G.shape[-1], G.shape[-2]))


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output)


def _backward(ctx, gX):
    G, X = ctx.saved_tensors
    if gX is None:
        return None, None, None, None
    return pinv_backward(G, X, gX), None, None, None


_pinv_op.register_autograd(_backward, setup_context=_setup)
#: ``dlrl::pinv``, or in eager mode its autograd.Function twin (same functions; see
#: ``_dispatch.EagerOp``): pinv_op(G, method, rtol, backend)
pinv_op = _dispatch.EagerOp(torch.ops.dlrl.pinv, _pinv_impl, _setup, _backward, none_grads=True)


def pinv(G, method: str = "auto", rtol=None, max_iters=None, backend: str = "auto"):
    """Batched pseudo-inverse of G (..., r, c).

    method: "svd" (torch.linalg.pinv with relative cut-off ``rtol``, default max(r,c)·eps),
    "eigh" (symmetric G only: the same through an eigen-decomposition, about twice as fast),
    "newton" (matmul only: ``gram_pinv_newton``, explicit threshold ``rtol``) or "auto"
    (newton on CUDA / Triton, svd on CPU). Differentiable (constant-rank derivative),
    registered as ``torch.ops.dlrl.pinv``.

    Bad input: NaN / Inf in G → ValueError naming G (the Newton route would otherwise return
    NaN matrices; while compiling it does). rtol must lie in (0, 1). ``max_iters`` is not a
    parameter of either route (Newton's step counts follow from rtol): any value other than
    None raises, rather than being ignored. Extreme scales: G is divided by max |G| first
    (pinv(sG) = pinv(G)/s), so float32 1e-30·I and 1e30·I are inverted correctly.
    ``ns_pinv`` (plain Schulz with the step-minimum stop) stays available as a primitive.
    """
    if not torch.compiler.is_compiling():
        check_float_tensor(G, "G", ndim_min=2)
        check_method(method, {"auto", "svd", "eigh", "newton"})
        if method == "eigh" and (G.shape[-1] != G.shape[-2] or not torch.allclose(G, G.transpose(-1, -2))):
            raise ValueError(f"G: method='eigh' needs symmetric matrices, got shape {tuple(G.shape)}"
                             + ("" if G.shape[-1] != G.shape[-2] else " that are not symmetric"))
        rtol = _check_rtol(rtol)
        if max_iters is not None:
            raise ValueError(
                f"max_iters: pinv takes no step cap (the Newton route's step counts follow from rtol), got {max_iters!r}"
            )
        check_finite(G, "G")
    name = _backend_name(backend, str(G.device))
    if method == "auto":
        method = "newton" if (G.device.type == "cuda" or name == "triton") else "svd"
    return pinv_op(G, method, rtol, name)


# ----------------------------------------------------------------------------- published operator
def _published_impl(S: Tensor, expo: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    """(M, G): M = ½·pinv(G), G = ½·(S + st)^∘e (elementwise power, e = expo broadcast per
    matrix), st = 0.002·max_i |S_ii| — the published code's block operator, with its pinv on
    the eigh route (same cut-off as its SVD). G is returned for the backward."""
    st = 0.002 * S.diagonal(dim1=-2, dim2=-1).abs().amax(-1)
    G = 0.5 * torch.pow(S + st[..., None, None], expo)
    return 0.5 * _pinv_impl(G, "eigh", None, backend), G


_published_op = torch.library.custom_op("dlrl::published_operator", _published_impl, mutates_args=())


@_published_op.register_fake
def _(S, expo, backend):
    return S.new_empty(S.shape), S.new_empty(S.shape)


def _published_setup(ctx, inputs, output):
    S, expo, backend = inputs
    ctx.save_for_backward(S, expo, output[0], output[1])


def _published_backward(ctx, gM, gG_out):
    """By hand, the adjoints autograd would chain: ½ · pinv (Golub–Pereyra) · ½ · pow (torch's
    rule: g·e·B^(e−1), 0 where e = 0) · the shift st (amax: split evenly over ties; |·|: sign)."""
    S, expo, M, G = ctx.saved_tensors
    if gM is None:
        return None, None, None
    P = 2.0 * M
    gG = pinv_backward(G, P, 0.5 * gM)
    st = 0.002 * S.diagonal(dim1=-2, dim2=-1).abs().amax(-1)
    B = S + st[..., None, None]
    gB = torch.where(expo == 0, torch.zeros((), dtype=S.dtype, device=S.device),
                     (0.5 * gG) * (expo * B.pow(expo - 1)))
    dg = S.diagonal(dim1=-2, dim2=-1)
    a = dg.abs()
    top = a == a.amax(-1, keepdim=True)
    g_st = gB.sum((-1, -2))  # st is added to every entry
    g_diag = (0.002 * g_st)[..., None] * top / top.sum(-1, keepdim=True) * torch.sign(dg)
    gS = gB + torch.diag_embed(g_diag)
    return gS, None, None


_published_op.register_autograd(_published_backward, setup_context=_published_setup)
published_op = _dispatch.EagerOp(torch.ops.dlrl.published_operator, _published_impl, _published_setup,
                                 _published_backward, none_grads=True)


def published_operator(S: Tensor, expo: Tensor, backend: str = "auto") -> Tensor:
    """The published code's block operator M = ½·pinv(½·(S + st)^∘e), st = 0.002·max_i|S_ii|,
    for symmetric S (..., d, d) and exponents ``expo`` broadcastable to S (e = (p−2)/2 per
    block): one autograd node with a hand-written backward (the composition of the adjoints
    autograd would chain; ``tests/test_pinv.py`` compares the two and gradchecks it). A
    negative entry of S + st gives NaN in G (as in the published code)."""
    name = _backend_name(backend, str(S.device))
    return published_op(S, expo, name)[0]
