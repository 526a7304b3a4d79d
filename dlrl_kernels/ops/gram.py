"""Batched Gram matrix YᵀY of tall-skinny Y (..., r, d) -> (..., d, d)."""
from __future__ import annotations

import torch

from .. import _dispatch
from .._validate import check_float_tensor


def reference_gram(Y):
    return Y.transpose(-1, -2) @ Y


class GramFn(torch.autograd.Function):
    """Kernel forward; backward ∂/∂Y = Y (G + Gᵀ) (one batched matmul, no kernel needed)."""

    @staticmethod
    def forward(ctx, Y):
        from .._triton import small_matrix as k

        ctx.save_for_backward(Y)
        return k.gram(Y)

    @staticmethod
    def backward(ctx, G):
        (Y,) = ctx.saved_tensors
        return Y @ (G + G.transpose(-1, -2))


def gram(Y, backend: str = "auto"):
    """YᵀY for Y of shape (..., r, d); differentiable."""
    check_float_tensor(Y, "Y", ndim_min=2)
    be = _dispatch.resolve(backend, Y.device, "gram")
    if be == "triton":
        return GramFn.apply(Y)
    return reference_gram(Y)
