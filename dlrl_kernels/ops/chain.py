"""Prefix/suffix products of a factor chain and the gradient chain products.

``chain_products`` shares partial products: prefixes[k+1] = prefixes[k] @ X_k and
suffixes[k-1] = X_k @ suffixes[k], i.e. 2(I-2) matmuls rather than I^2.

``chain_grad`` returns A_kᵀ E B_kᵀ for every k while touching E only twice, whatever I is:
with U = X_1⋯X_{I-1} and V = X_I (the collapsed outer factors),
  R = E Vᵀ  (m×d),   Q = Eᵀ U  (n×d),
  grad_I = Qᵀ,   grad_k = A_kᵀ R C_kᵀ  with  C_k = X_{k+1}⋯X_{I-1}  (k < I),
and R C_kᵀ is built right-to-left with small d×d products. E is the only m×n (or nnz)
operand, so for sparse E the two passes are the two SpMMs, and a fused kernel only has to
produce R and Q (see masked_residual / masked_residual_sparse).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from .._validate import check_factors, check_same


def chain_products(factors: Sequence[torch.Tensor]):
    """(prefixes, suffixes): prefixes[k] = X_1⋯X_{k-1}, suffixes[k] = X_{k+1}⋯X_I; None where empty."""
    check_factors(factors)
    return _prefixes(factors), _suffixes(factors)


def _prefixes(factors) -> List[Optional[torch.Tensor]]:
    out: List[Optional[torch.Tensor]] = [None]
    for k in range(1, len(factors)):
        prev = out[-1]
        out.append(factors[k - 1] if prev is None else prev @ factors[k - 1])
    return out


def _suffixes(factors) -> List[Optional[torch.Tensor]]:
    n = len(factors)
    out: List[Optional[torch.Tensor]] = [None] * n
    for k in range(n - 2, -1, -1):
        nxt = out[k + 1]
        out[k] = factors[k + 1] if nxt is None else factors[k + 1] @ nxt
    return out


def outer_factors(factors, prefixes=None):
    """U = X_1⋯X_{I-1} (m×d) and V = X_I (d×n); U is None when I = 1."""
    if len(factors) == 1:
        return None, factors[0]
    if prefixes is None:
        prefixes = _prefixes(factors)
    return prefixes[-1], factors[-1]


def grads_from_rq(factors, prefixes, R, Q):
    """Turn R = E Vᵀ (m×d) and Q = Eᵀ U (n×d) into every factor's A_kᵀ E B_kᵀ."""
    I = len(factors)
    grads: List[Optional[torch.Tensor]] = [None] * I
    grads[I - 1] = Q.t()
    RC = R  # R C_kᵀ, starting at k = I-2 where C is the identity
    for k in range(I - 2, -1, -1):
        grads[k] = RC if prefixes[k] is None else prefixes[k].t() @ RC
        if k:
            RC = RC @ factors[k].t()
    return grads


def _spmm(E, M):
    return torch.sparse.mm(E, M)


def chain_grad(factors: Sequence[torch.Tensor], E: torch.Tensor):
    """[A_kᵀ E B_kᵀ for k in 0..I-1]. E dense (m×n), or sparse COO/CSR (never densified)."""
    m, n = check_factors(factors)
    if not isinstance(E, torch.Tensor):
        raise TypeError(f"E: expected a torch.Tensor (dense, COO or CSR), got {type(E).__name__}")
    if tuple(E.shape) != (m, n):
        raise ValueError(f"E: expected shape {(m, n)} (rows of factors[0] × cols of factors[-1]), got {tuple(E.shape)}")
    check_same(factors[0], "factors[0]", E, "E")
    if len(factors) == 1:
        return [E]
    prefixes = _prefixes(factors)
    U, V = outer_factors(factors, prefixes)
    if E.layout == torch.strided:
        R = E @ V.t()
        Q = E.t() @ U
    elif E.layout in (torch.sparse_coo, torch.sparse_csr):
        # COO transposes for free; CSR's transpose side goes through COO (O(nnz), no densify).
        Ecoo = E if E.layout == torch.sparse_coo else E.to_sparse_coo()
        R = _spmm(E, V.t().contiguous())
        Q = _spmm(Ecoo.t(), U)
    else:
        raise TypeError(f"E: expected a strided, sparse_coo or sparse_csr tensor, got layout {E.layout}")
    return grads_from_rq(factors, prefixes, R, Q)
