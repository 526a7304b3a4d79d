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
import os
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
def sym_pinv_eig(G: Tensor, rtol=None):
    """(P, Q, inv): P = G⁺ of a symmetric G from one eigen-decomposition G = Q diag(λ) Qᵀ, with
    inv = 1/λ where |λ| > rtol·max|λ| and 0 elsewhere — the arithmetic of
    ``torch.linalg.pinv(G, rtol, hermitian=True)`` (|λ| as the singular values), keeping Q and
    inv for the backward (``sym_pinv_backward``)."""
    if rtol is None:
        rtol = default_rtol(G)
    lam, Q = torch.linalg.eigh(G)
    a = lam.abs()
    keep = a > rtol * a.amax(-1, keepdim=True)
    inv = torch.where(keep, lam.reciprocal(), torch.zeros((), dtype=G.dtype, device=G.device))
    return (Q * inv.unsqueeze(-2)) @ Q.transpose(-1, -2), Q, inv


def sym_pinv_backward(Q, inv, gP):
    """``pinv_backward`` (Golub–Pereyra, constant rank) for a symmetric G = Q diag(λ) Qᵀ, in its
    eigenbasis: with g = Qᵀ Ḡ_P Q, κ_i = 1/λ_i (0 when cut) and c_i = [λ_i cut],
        Qᵀ Ḡ_G Q = −κ_i κ_j g_ij + (c_i κ_j² + κ_i² c_j) g_ji
    (−P Ḡ P, and the range/null-space terms (I − GP) Ḡᵀ P² + P² Ḡᵀ (I − PG))."""
    Qt = Q.transpose(-1, -2)
    g = Qt @ gP @ Q
    cut = (inv == 0).to(inv.dtype)
    k2 = inv * inv
    a = -inv.unsqueeze(-1) * inv.unsqueeze(-2)
    b = cut.unsqueeze(-1) * k2.unsqueeze(-2) + k2.unsqueeze(-1) * cut.unsqueeze(-2)
    return Q @ (a * g + b * g.transpose(-1, -2)) @ Qt


def _published_shift(S):
    return 0.002 * S.diagonal(dim1=-2, dim2=-1).abs().amax(-1)


def published_forward_torch(S, expo, rtol):
    """(M, Q, inv): M = ½·pinv(G), G = ½·(S + st)^∘e, st = 0.002·max_i |S_ii|, through one eigh
    of G (``sym_pinv_eig``) — the reference twin of ``cpu.published_forward``."""
    G = 0.5 * torch.pow(S + _published_shift(S)[..., None, None], expo)
    P, Q, inv = sym_pinv_eig(G, rtol)
    return 0.5 * P, Q.contiguous(), inv  # (eigh returns Q column-major; the op's fake says row-major)


def published_backward_torch(S, expo, Q, inv, gM):
    """By hand, the adjoints autograd would chain: ½ · pinv (Golub–Pereyra in G's eigenbasis) ·
    ½ · pow (torch's rule: g·e·B^(e−1), 0 where e = 0) · the shift st (amax: split evenly over
    ties; |·|: sign)."""
    gG = sym_pinv_backward(Q, inv, 0.5 * gM)
    B = S + _published_shift(S)[..., None, None]
    gB = torch.where(expo == 0, torch.zeros((), dtype=S.dtype, device=S.device),
                     (0.5 * gG) * (expo * B.pow(expo - 1)))
    dg = S.diagonal(dim1=-2, dim2=-1)
    a = dg.abs()
    top = a == a.amax(-1, keepdim=True)
    g_st = gB.sum((-1, -2))  # st is added to every entry
    g_diag = (0.002 * g_st)[..., None] * top / top.sum(-1, keepdim=True) * torch.sign(dg)
    return gB + torch.diag_embed(g_diag)


def _published_cpu():
    cpu = _dispatch.native_module()
    return types.SimpleNamespace(forward=cpu.published_forward, backward=cpu.published_backward)


#: the published operator's forward (S, expo, rtol) → (M, Q, inv) and backward (S, expo, Q, inv,
#: gM) → gS: the torch twin (any device) or the native CPU kernels (the d×d arithmetic around
#: torch's eigh in C: at d = 20 the torch route is ~50 small ops, each costing more than its math)
TABLE_PUBLISHED = _dispatch.OpTable(
    "published_operator", ("forward", "backward"),
    reference=lambda: types.SimpleNamespace(forward=published_forward_torch, backward=published_backward_torch),
    cpu=_published_cpu,
)


@_dispatch.constant_result
def published_backend(backend: str, device: str) -> str:
    """The published operator's implementation for a model / call ``backend``: "cpu" (the native
    kernels) for CPU tensors when ``backend`` is "cpu", or "auto" with ``DLRL_BACKEND`` unset /
    "auto" / "cpu", and the kernels build; else "reference" — the torch twin, which runs on any
    device (the op has no Triton or CUDA kernel of its own, so a Triton / CUDA choice, forced
    or from ``DLRL_BACKEND``, runs the twin there). An explicit "cpu" without the native kernels
    raises, as every op's forced backend does."""
    if backend == "auto":
        backend = os.environ.get("DLRL_BACKEND", "auto") or "auto"
        if backend == "cpu":
            backend = "auto"  # the variable prefers the kernels; without them "auto" falls back
    if torch.device(device).type != "cpu" or backend not in ("auto", "cpu"):
        return "reference"
    ok, why = _dispatch.native_status()
    if ok:
        return "cpu"
    if backend == "cpu":
        raise RuntimeError(f"backend='cpu': the native CPU kernels are unavailable ({why})")
    return "reference"


def _per_matrix(S, expo):
    """Whether ``expo`` holds one exponent per matrix of S (I, d, d) — the native kernels' case."""
    return S.dim() == 3 and (expo.dim() == 0 or (expo.shape[-2:] == (1, 1) and expo.numel() in (1, S.shape[0])))


def _published_route(S, expo, backend):
    return backend if backend == "cpu" and S.device.type == "cpu" and _per_matrix(S, expo) else "reference"


def _published_grad_impl(S: Tensor, expo: Tensor, Q: Tensor, inv: Tensor, gM: Tensor, backend: str) -> Tensor:
    return TABLE_PUBLISHED.load(_published_route(S, expo, backend)).backward(S, expo, Q, inv, gM)


_published_grad_op = torch.library.custom_op("dlrl::published_operator_backward", _published_grad_impl,
                                             mutates_args=())


@_published_grad_op.register_fake
def _(S, expo, Q, inv, gM, backend):
    return S.new_empty(S.shape)


def published_grad(S: Tensor, expo: Tensor, Q: Tensor, inv: Tensor, gM: Tensor, backend: str) -> Tensor:
    """∂L/∂S for ∂L/∂M of the op's forward ``(M, Q, inv) = _published_impl(S, expo, backend)`` —
    the op's own backward, callable without autograd (the model's autograd-free training step).

    It is an op of its own (``dlrl::published_operator_backward``) because AOTAutograd traces
    the operator's backward with fake / functional tensors, which the native kernels (raw data
    pointers) cannot take: while compiling, or whenever a tensor is a subclass (fake,
    functional), the registered op is called; plain tensors go straight to the function (no
    torch.library dispatch cost, no torch._dynamo import)."""
    if torch.compiler.is_compiling() or type(S) is not Tensor or type(gM) is not Tensor:
        return torch.ops.dlrl.published_operator_backward(S, expo, Q, inv, gM, backend)
    return _published_grad_impl(S, expo, Q, inv, gM, backend)


def _published_impl(S: Tensor, expo: Tensor, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(M, Q, inv): M = ½·pinv(G), G = ½·(S + st)^∘e (elementwise power, e = expo broadcast per
    matrix), st = 0.002·max_i |S_ii| — the published code's block operator, with its pinv on
    the eigh route (same cut-off as its SVD); G's eigenvectors Q and cut reciprocal eigenvalues
    inv are returned for the backward."""
    return TABLE_PUBLISHED.load(_published_route(S, expo, backend)).forward(S, expo, default_rtol(S))


_published_op = torch.library.custom_op("dlrl::published_operator", _published_impl, mutates_args=())


@_published_op.register_fake
def _(S, expo, backend):
    return S.new_empty(S.shape), S.new_empty(S.shape), S.new_empty(S.shape[:-1])


def _published_setup(ctx, inputs, output):
    S, expo, backend = inputs
    ctx.backend = backend
    ctx.save_for_backward(S, expo, output[1], output[2])


def _published_backward(ctx, gM, gQ=None, ginv=None):
    """∂L/∂S for ∂L/∂M (Q and inv are saved values, not differentiated)."""
    S, expo, Q, inv = ctx.saved_tensors
    if gM is None:
        return None, None, None
    return published_grad(S, expo, Q, inv, gM, ctx.backend), None, None


_published_op.register_autograd(_published_backward, setup_context=_published_setup)
published_op = _dispatch.EagerOp(torch.ops.dlrl.published_operator, _published_impl, _published_setup,
                                 _published_backward, none_grads=True)


def published_operator(S: Tensor, expo: Tensor, backend: str = "auto") -> Tensor:
    """The published code's block operator M = ½·pinv(½·(S + st)^∘e), st = 0.002·max_i|S_ii|,
    for symmetric S (..., d, d) and exponents ``expo`` broadcastable to S (e = (p−2)/2 per
    block): one autograd node with a hand-written backward (the composition of the adjoints
    autograd would chain; ``tests/test_pinv.py`` compares the two and gradchecks it). A
    negative entry of S + st gives NaN in G (as in the published code). On the CPU the d×d
    arithmetic around the eigh runs in the native kernels (``backend`` "auto" / "cpu";
    "reference": the torch twin)."""
    return published_op(S, expo, published_backend(backend, str(S.device)))[0]
