"""Batched Gram matrix YᵀY of tall-skinny Y (..., r, d) -> (..., d, d).

Dispatch (``TABLE``): implementation objects with ``gram(Y)``: the reference (torch
matmul), Triton (``_triton.small_matrix.gram``: row-swept tiles, exact IEEE products) and
CUDA (``_cuda.gram_batched``, d ≤ 128; the loader refuses when the extension lacks it, and
``auto`` then falls back). NaN / Inf in Y propagate visibly (no host sync on this hot path:
a NaN row gives NaN entries, never finite garbage). Registered as ``torch.ops.dlrl.gram``.
Backward ∂/∂Y = Y (Ḡ + Ḡᵀ) (one matmul, traced by torch.compile).
"""
import types

import torch
from torch import Tensor

from .. import _dispatch
from .._validate import check_float_tensor


def reference_gram(Y):
    return Y.transpose(-1, -2) @ Y


def _triton_impl():
    from .._triton import small_matrix

    return small_matrix  # .gram looked up per call


def _cuda_impl():
    from .. import _cuda

    if not _cuda.has_op("gram_batched"):
        raise RuntimeError(f"the CUDA extension has no gram_batched ({_cuda.UNAVAILABLE_REASON or 'not built with it'})")

    def gram(Y):
        *batch, r, d = Y.shape
        if d > 128:  # the kernel's documented limit
            return reference_gram(Y)
        return _cuda.gram_batched(Y.reshape(-1, r, d).contiguous()).reshape(*batch, d, d)

    return types.SimpleNamespace(gram=gram)


#: implementation objects: ``gram(Y) -> YᵀY``
TABLE = _dispatch.OpTable(
    "gram", ("gram",),
    reference=lambda: types.SimpleNamespace(gram=reference_gram),
    triton=_triton_impl,
    cuda=_cuda_impl,
)


@_dispatch.constant_result
def _backend_name(backend: str, device: str) -> str:
    """TABLE.resolve's backend name, evaluated eagerly (a constant) when torch.compile traces
    the wrapper; the op then fetches the implementation with the cached TABLE.load(name)."""
    return TABLE.resolve(backend, torch.device(device))[0]


def _gram_impl(Y: Tensor, backend: str) -> Tensor:
    G = TABLE.load(backend).gram(Y)
    return G if G.data_ptr() != Y.data_ptr() else G.clone()


_gram_op = torch.library.custom_op("dlrl::gram", _gram_impl, mutates_args=())


@_gram_op.register_fake
def _(Y, backend):
    return Y.new_empty((*Y.shape[:-2], Y.shape[-1], Y.shape[-1]))


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _backward(ctx, g):
    (Y,) = ctx.saved_tensors
    return Y @ (g + g.transpose(-1, -2)), None


_gram_op.register_autograd(_backward, setup_context=_setup)
#: the op, or in eager mode its autograd.Function twin (``_dispatch.EagerOp``)
gram_op = _dispatch.EagerOp(torch.ops.dlrl.gram, _gram_impl, _setup, _backward)


def gram(Y, backend: str = "auto"):
    """YᵀY for Y of shape (..., r, d); differentiable."""
    if not torch.compiler.is_compiling():
        check_float_tensor(Y, "Y", ndim_min=2)
    name = _backend_name(backend, str(Y.device))
    return gram_op(Y, name)
