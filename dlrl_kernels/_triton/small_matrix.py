"""Batched small-matrix kernels: a batched GEMM (``bmm``) driving the shared Newton–Schulz
orchestration of ``dlrl_kernels._newton``, and the batched Gram.

Design (issue 11). The iterations (square root, sign / inverse, powers, plain Schulz pinv,
power iteration) are written once, in ``_newton``, with the matrix product passed in; this
module plugs in ``bmm``, one Triton batched-GEMM launch per product, with the fused epilogue
``scale·AB + diag·I``. Each program computes one BM×BN tile of one matrix of the batch with a
K-loop of BK-wide slices, so no program ever holds a whole d×d matrix (let alone several):
the earlier register-resident "one program per matrix, whole iteration fused" kernels
spilled 79k–283k registers at d = 128, took 45–385 s to compile per variant and asked for
more than the 232,448 B of shared memory an sm_90 block may use. The GEMM compiles in
seconds, spill-free, for every d (measured: bench/results/compile_sm90.md). The stop rules
and freezes are torch glue identical to the reference's: the reference twin and this
backend run the same algorithm by construction.

Public functions (the implementation objects of the ops' dispatch tables):

- ``bmm(A, B, diag=0, scale=1)``: the primitive (broadcasting batch dims);
- ``gram(Y)``: Y (..., r, d) -> YᵀY (rows swept in BLOCK_R chunks, 64-wide d tiles; on a
  GPU with few matrices the rows are also split across programs and the partial Grams
  summed by torch — deterministic);
- ``newton_power`` / ``newton_power_backward``: ``_newton.power`` / ``power_backward``;
- ``gram_pinv_newton``: ``_newton.gram_pinv`` with ``gram`` for the Gram;
- ``ns_pinv``, ``ns_sqrt``, ``psd_pinv_newton``: the primitives;
- ``power_iteration``: ``_newton.power_iteration`` (matrix–vector products through ``bmm``).

Precision: every ``tl.dot`` uses ``input_precision="ieee"`` (exact in the interpreter; fp32
FMA / fp64 DMMA on the GPU): the Newton–Schulz iterations converge to working precision
only with exact products. TF32 would be acceptable for ``gram`` when it feeds only a
Lipschitz bound / spectral norm and for the power iteration (few-digit quantities) — not
when it feeds S^a, a pseudo-inverse or the range threshold — so ``GRAM_PRECISION`` stays
"ieee".
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _newton
from . import ON_GPU, check_dtype, next_pow2, num_sms

GRAM_PRECISION = "ieee"
#: largest GEMM tile side (BM = BN): 64×64 fp32/fp64 accumulators fit 4 warps spill-free
MAX_TILE = 64
#: K-slice width
MAX_BK = 32


# ============================================================================ kernels
@triton.jit
def _bmm_kernel(
    A, B, C, M, N, K, diag, scale,
    s_ab, s_am, s_ak, s_bb, s_bk, s_bn, s_cb, s_cm, s_cn,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    HAS_DIAG: tl.constexpr, HAS_SCALE: tl.constexpr, PREC: tl.constexpr,
):
    """C[b, I, J] = scale·Σ_k A[b, I, k] B[b, k, J] + diag·δ_IJ for one BM×BN tile (I, J)."""
    b = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    nt_n = tl.cdiv(N, BN)
    tm = tile // nt_n
    tn = tile % nt_n
    ri = tm * BM + tl.arange(0, BM)
    rj = tn * BN + tl.arange(0, BN)
    a_base = A + b * s_ab
    b_base = B + b * s_bb
    acc = tl.zeros((BM, BN), dtype=C.dtype.element_ty)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        a = tl.load(a_base + ri[:, None] * s_am + rk[None, :] * s_ak,
                    mask=(ri < M)[:, None] & (rk < K)[None, :], other=0.0)
        bt = tl.load(b_base + rk[:, None] * s_bk + rj[None, :] * s_bn,
                     mask=(rk < K)[:, None] & (rj < N)[None, :], other=0.0)
        acc = tl.dot(a, bt, acc, input_precision=PREC)
    if HAS_SCALE:
        acc = acc * scale
    if HAS_DIAG:
        acc = tl.where(ri[:, None] == rj[None, :], acc + diag, acc)
    tl.store(C + b * s_cb + ri[:, None] * s_cm + rj[None, :] * s_cn, acc,
             mask=(ri < M)[:, None] & (rj < N)[None, :])


@triton.jit
def _gram_kernel(
    Y, OUT, r, d, rows_per_split,
    s_yb, s_yr, s_yd, s_os, s_ob, s_oi, s_oj,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr,
):
    """OUT[split, b, I, J] = Σ_{rows of this split} Y[b, rows, I]ᵀ Y[b, rows, J] (one d-tile pair)."""
    b = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    sp = tl.program_id(2)
    nt = tl.cdiv(d, BLOCK_D)
    ti = tile // nt
    tj = tile % nt
    ci = ti * BLOCK_D + tl.arange(0, BLOCK_D)
    cj = tj * BLOCK_D + tl.arange(0, BLOCK_D)
    lo = sp * rows_per_split
    hi = tl.minimum(r, lo + rows_per_split)
    acc = tl.zeros((BLOCK_D, BLOCK_D), dtype=Y.dtype.element_ty)
    base = Y + b * s_yb
    for r0 in range(lo, hi, BLOCK_R):
        rr = r0 + tl.arange(0, BLOCK_R)
        r_ok = rr < hi
        yi = tl.load(base + rr[:, None] * s_yr + ci[None, :] * s_yd, mask=r_ok[:, None] & (ci < d)[None, :], other=0.0)
        yj = tl.load(base + rr[:, None] * s_yr + cj[None, :] * s_yd, mask=r_ok[:, None] & (cj < d)[None, :], other=0.0)
        acc = tl.dot(tl.trans(yi), yj, acc, input_precision=PREC)
    msk = (ci < d)[:, None] & (cj < d)[None, :]
    tl.store(OUT + sp * s_os + b * s_ob + ci[:, None] * s_oi + cj[None, :] * s_oj, acc, mask=msk)


# ============================================================================ host side
def _tile(n, cap):
    return min(next_pow2(n), cap)


def bmm(A, B, diag=0.0, scale=1.0):
    """``scale·(A @ B) + diag·I`` for (..., m, k) @ (..., k, n) (batch dims broadcast), one
    launch: the ``mm`` primitive of ``dlrl_kernels._newton``."""
    check_dtype(A, B)
    if A.dtype != B.dtype:
        raise TypeError(f"bmm: expected one dtype, got {A.dtype} and {B.dtype}")
    *ba, m, k = A.shape
    *bb, k2, n = B.shape
    if k != k2:
        raise ValueError(f"bmm: inner dimensions differ: {tuple(A.shape)} @ {tuple(B.shape)}")
    batch = torch.broadcast_shapes(tuple(ba), tuple(bb))
    Ab = A.expand(*batch, m, k).reshape(-1, m, k)
    Bb = B.expand(*batch, k, n).reshape(-1, k, n)
    nb = Ab.shape[0]
    out = torch.empty((nb, m, n), dtype=A.dtype, device=A.device)
    if nb == 0 or m == 0 or n == 0:
        return out.reshape(*batch, m, n)
    if k == 0:
        out.zero_()
        if diag != 0.0:
            out += diag * torch.eye(m, n, dtype=A.dtype, device=A.device)
        return out.reshape(*batch, m, n)
    bm, bn = _tile(m, MAX_TILE), _tile(n, MAX_TILE)
    # K-slice of the largest (64×64) tile, from the sm_90 compile report (one pipeline stage):
    # float64 64×64×16 with the epilogue spills 8 B and 64×64×32 does not; float32 is the other
    # way round (64×64×32 spills 8 B when the strides are not 16-aligned, 64×64×16 never)
    if bm * bn >= MAX_TILE * MAX_TILE:
        bk = MAX_BK if A.dtype == torch.float64 else 16
    else:
        bk = _tile(k, MAX_BK)
    grid = (nb, triton.cdiv(m, bm) * triton.cdiv(n, bn))
    _bmm_kernel[grid](
        Ab, Bb, out, m, n, k, float(diag), float(scale),
        Ab.stride(0), Ab.stride(1), Ab.stride(2), Bb.stride(0), Bb.stride(1), Bb.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        BM=bm, BN=bn, BK=bk, HAS_DIAG=float(diag) != 0.0, HAS_SCALE=float(scale) != 1.0,
        # one pipeline stage: with the default three, or two, some tiles spill 8-16 B on sm_90
        # (64×64×32 fp32, 32×32×32 fp64); one stage with the K-slices above is spill-free at
        # every tile (bench/results/compile_sm90.md). The K loop is short (d ≤ a few hundred).
        PREC="ieee", num_warps=4, num_stages=1,
    )
    return out.reshape(*batch, m, n)


def gram(Y, split=None):
    """YᵀY for Y (..., r, d). ``split``: row ranges per matrix (None: 1 on CPU, enough on GPU)."""
    check_dtype(Y)
    *batch, r, d = Y.shape
    Yb = Y.reshape(-1, r, d)
    nb = Yb.shape[0]
    if nb == 0 or d == 0:
        return Y.new_zeros((*batch, d, d))
    block_d = _tile(d, MAX_TILE)
    nt = triton.cdiv(d, block_d)
    block_r = 16 if Y.dtype == torch.float64 else 32
    if split is None:
        split = 1
        if ON_GPU and Y.device.type == "cuda":
            want = triton.cdiv(2 * num_sms(Y.device), nb * nt * nt)
            split = max(1, min(want, triton.cdiv(r, 256)))
    split = max(1, min(int(split), max(1, r)))
    rows_per_split = triton.cdiv(max(r, 1), split)
    out = torch.zeros((split, nb, d, d), dtype=Y.dtype, device=Y.device)
    _gram_kernel[(nb, nt * nt, split)](
        Yb, out, r, d, rows_per_split,
        Yb.stride(0), Yb.stride(1), Yb.stride(2), out.stride(0), out.stride(1), out.stride(2), out.stride(3),
        BLOCK_R=block_r, BLOCK_D=block_d, PREC=GRAM_PRECISION, num_warps=4,
    )
    G = out[0] if split == 1 else out.sum(0)
    return G.reshape(*batch, d, d)


# ----------------------------------------------------------------------------- the iterations
def ns_sqrt(A, iters=None, dA=None):
    """``_newton.ns_sqrt`` with ``bmm``: (A^{1/2}, A^{-1/2}, dY, dZ), spectrum of A in [0, 1]."""
    check_dtype(A, dA)
    return _newton.ns_sqrt(A, iters, dA, bmm)


def psd_pinv_newton(A, rtol, dA=None):
    """``_newton.psd_pinv`` with ``bmm``: (A⁺, dA⁺, P, dP) for PSD A with spectrum in [0, 1]."""
    check_dtype(A, dA)
    return _newton.psd_pinv(A, rtol, dA, bmm)


def ns_pinv_full(G, max_iters=None, dG=None):
    """(X, dX): ``_newton.ns_pinv`` (plain Schulz, step-minimum stop) with ``bmm``."""
    check_dtype(G, dG)
    X, dX, _ = _newton.ns_pinv(G, max_iters, dG, bmm)
    return X, dX


def ns_pinv(G, max_iters=None):
    """Newton–Schulz pseudo-inverse: ``_newton.ns_pinv(G, max_iters)[0]`` with ``bmm``."""
    return ns_pinv_full(G, max_iters)[0]


def gram_pinv_newton(G, rtol=None):
    """``_newton.gram_pinv`` (the public ``pinv(method="newton")``) with ``gram`` and ``bmm``."""
    check_dtype(G)
    return _newton.gram_pinv(G, rtol, bmm, gram_fn=gram)


def newton_power(S, a, iters=None, rtol=None, check=False):
    """S^a by the matmul-only route: ``_newton.power`` with ``bmm``."""
    check_dtype(S)
    return _newton.power(S, float(a), iters, rtol, bmm, check=check)


def newton_power_backward(S, a, C, iters=None, rtol=None):
    """Adjoint of the Newton route of S ↦ S^a applied to C: ``_newton.power_backward``."""
    check_dtype(S, C)
    return _newton.power_backward(S, float(a), C, iters, rtol, bmm)


def power_iteration(S, iters=30, tol=None):
    """(λ_max, v) of symmetric PSD S: ``_newton.power_iteration`` with ``bmm``."""
    check_dtype(S)
    return _newton.power_iteration(S, int(iters), tol, bmm)


__all__ = [
    "bmm",
    "gram",
    "gram_pinv_newton",
    "ns_pinv",
    "ns_pinv_full",
    "ns_sqrt",
    "psd_pinv_newton",
    "newton_power",
    "newton_power_backward",
    "power_iteration",
]
