"""Sparse observed entries: SDDMM residual and the two scatter products (R, Q).

Backend primitives of ``dlrl_kernels.ops.masked_residual_sparse``:

- ``sparse_residual(U, Vt, rows, cols, values)`` -> e, e_k = ⟨U[rows_k], Vt[cols_k]⟩ − values_k
- ``sparse_rq(U, Vt, rows, cols, e, scale, m, n)`` -> (R (m×d), Q (n×d)),
  R[i] = scale·Σ_{rows_k=i} e_k Vt[cols_k],  Q[j] = scale·Σ_{cols_k=j} e_k U[rows_k]

Kernels work on blocks of BLOCK_K entries × BLOCK_D columns of the factors (d larger than
BLOCK_D is swept in chunks); factor rows are gathered with 2-D masked loads, so any d works
(no padding copy). Products accumulate in the input dtype (float32 / float64).

Index width: the kernels read ``rows`` / ``cols`` in whatever integer dtype they come in
(int32 or int64, no host copy) and do the address arithmetic in int32 when nnz, m·d and
n·d all fit below 2³¹ (``IDX64=False``), in int64 otherwise. A host-side int64 → int32 cast
would read 8 and write 4 bytes per index on every call to save 4 bytes per read, so it only
pays when done once up front: ``prepare_indices`` does that for callers that loop (training).

``sparse_rq`` variants (``variant=``):

- ``"atomic"`` (default): one pass over the entries; each block gathers Vt[cols] and
  U[rows], scales by s·e and scatters with ``tl.atomic_add`` into R and Q. Works for any
  order of the entries and for duplicated (row, col) pairs (each atomic adds separately);
  summation order (hence the last bits in float32) is not deterministic.
- ``"csr"``: R by a segmented reduction, one program per row over that row's entries in
  CSR order (no atomics on R, deterministic R; pays when rows are sorted — otherwise a
  stable argsort permutation is computed first), Q still by atomics.
- ``"deterministic"``: both R and Q segmented (CSC permutation for Q): bitwise
  reproducible, chosen automatically under ``torch.are_deterministic_algorithms_enabled()``.
  Costs a sort per call (cache the permutations in the caller if this matters).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import check_dtype, configs, scale_tensor

DEFAULT_RQ_VARIANT = "atomic"
_I32 = 2**31 - 1
#: columns of the factors per inner step. Measured for sm_90 (bench/compile_report.py): with 64
#: the BLOCK_K × 64 gathers (values plus 64-bit addresses) spilled in every BLOCK_K config
#: (sddmm 640 B, scatter up to 2.2 kB, segment 8 B, float32); with 16 they compile spill-free
#: (sddmm 166, scatter 212, segment 40 registers at BLOCK_K 256/256/128, float32).
BLOCK_D = 16

# BLOCK_K = 512 spilled in every variant when compiled for sm_90; the list stops at 256
# (bench/results/compile_sm90.md).
_BLOCK_CONFIGS = configs(
    [
        triton.Config({"BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bk, w, s in [(64, 4, 2), (128, 4, 3), (256, 8, 3)]
    ],
    triton.Config({"BLOCK_K": 32}, num_warps=4, num_stages=1),
)
_SEG_CONFIGS = configs(
    [triton.Config({"BLOCK_K": bk}, num_warps=w) for bk, w in [(16, 2), (32, 4), (64, 4), (128, 8)]],
    triton.Config({"BLOCK_K": 16}, num_warps=4, num_stages=1),
)


# ----------------------------------------------------------------------------- kernels
@triton.autotune(configs=_BLOCK_CONFIGS, key=["nnz", "d", "IDX64"])
@triton.jit
def _sddmm_kernel(
    U, VT, ROWS, COLS, VALS, OUT,
    nnz, d,
    s_um, s_ud, s_vn, s_vd,
    IDX64: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    if IDX64:
        offs = pid.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    else:
        offs = pid * BLOCK_K + tl.arange(0, BLOCK_K)
    k_ok = offs < nnz
    r = tl.load(ROWS + offs, mask=k_ok, other=0)
    c = tl.load(COLS + offs, mask=k_ok, other=0)
    if IDX64:
        r = r.to(tl.int64)
        c = c.to(tl.int64)
    else:
        r = r.to(tl.int32)
        c = c.to(tl.int32)
    acc = tl.zeros((BLOCK_K,), dtype=VALS.dtype.element_ty)
    for d0 in range(0, d, BLOCK_D):
        rd = d0 + tl.arange(0, BLOCK_D)
        msk = k_ok[:, None] & (rd < d)[None, :]
        u = tl.load(U + r[:, None] * s_um + rd[None, :] * s_ud, mask=msk, other=0.0)
        v = tl.load(VT + c[:, None] * s_vn + rd[None, :] * s_vd, mask=msk, other=0.0)
        acc += tl.sum(u * v, axis=1)
    vals = tl.load(VALS + offs, mask=k_ok, other=0.0)
    tl.store(OUT + offs, acc - vals, mask=k_ok)


@triton.autotune(configs=_BLOCK_CONFIGS, key=["nnz", "d", "IDX64", "DO_R", "DO_Q"], reset_to_zero=["R", "Q"])
@triton.jit
def _scatter_kernel(
    U, VT, ROWS, COLS, E, SCALE, R, Q,
    nnz, d,
    s_um, s_ud, s_vn, s_vd, s_rm, s_rd, s_qn, s_qd,
    DO_R: tl.constexpr, DO_Q: tl.constexpr,
    IDX64: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """R[rows_k] += s e_k Vt[cols_k] (DO_R), Q[cols_k] += s e_k U[rows_k] (DO_Q), by atomics."""
    pid = tl.program_id(0)
    if IDX64:
        offs = pid.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    else:
        offs = pid * BLOCK_K + tl.arange(0, BLOCK_K)
    k_ok = offs < nnz
    r = tl.load(ROWS + offs, mask=k_ok, other=0)
    c = tl.load(COLS + offs, mask=k_ok, other=0)
    if IDX64:
        r = r.to(tl.int64)
        c = c.to(tl.int64)
    else:
        r = r.to(tl.int32)
        c = c.to(tl.int32)
    w = tl.load(E + offs, mask=k_ok, other=0.0) * tl.load(SCALE)
    for d0 in range(0, d, BLOCK_D):
        rd = d0 + tl.arange(0, BLOCK_D)
        msk = k_ok[:, None] & (rd < d)[None, :]
        if DO_R:
            v = tl.load(VT + c[:, None] * s_vn + rd[None, :] * s_vd, mask=msk, other=0.0)
            tl.atomic_add(R + r[:, None] * s_rm + rd[None, :] * s_rd, w[:, None] * v, mask=msk, sem="relaxed")
        if DO_Q:
            u = tl.load(U + r[:, None] * s_um + rd[None, :] * s_ud, mask=msk, other=0.0)
            tl.atomic_add(Q + c[:, None] * s_qn + rd[None, :] * s_qd, w[:, None] * u, mask=msk, sem="relaxed")


@triton.autotune(configs=_SEG_CONFIGS, key=["nseg", "d", "HAS_PERM", "IDX64"])
@triton.jit
def _segment_kernel(
    PTR, PERM, GIDX, E, SCALE, SRC, OUT,
    nseg, d,
    s_src, s_sd, s_out, s_od,
    HAS_PERM: tl.constexpr, IDX64: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """OUT[s] = scale·Σ_{t∈[PTR[s], PTR[s+1])} E[k_t] SRC[GIDX[k_t]], k_t = PERM[t] or t.

    One program per segment (row for R in CSR order, column for Q in CSC order); fixed
    summation order, no atomics.
    """
    seg = tl.program_id(0)
    lo = tl.load(PTR + seg)
    hi = tl.load(PTR + seg + 1)
    scale = tl.load(SCALE)
    if IDX64:
        seg_off = seg.to(tl.int64) * s_out
    else:
        seg_off = seg * s_out
    for d0 in range(0, d, BLOCK_D):
        rd = d0 + tl.arange(0, BLOCK_D)
        d_ok = rd < d
        acc = tl.zeros((BLOCK_K, BLOCK_D), dtype=E.dtype.element_ty)
        for t0 in range(lo, hi, BLOCK_K):
            t = t0 + tl.arange(0, BLOCK_K)
            t_ok = t < hi
            if HAS_PERM:
                k = tl.load(PERM + t, mask=t_ok, other=0)
            else:
                k = t
            g = tl.load(GIDX + k, mask=t_ok, other=0)
            if IDX64:
                g = g.to(tl.int64)
            else:
                g = g.to(tl.int32)
            w = tl.load(E + k, mask=t_ok, other=0.0)
            src = tl.load(SRC + g[:, None] * s_src + rd[None, :] * s_sd, mask=t_ok[:, None] & d_ok[None, :], other=0.0)
            acc += w[:, None] * src
        out = tl.sum(acc, axis=0) * scale
        tl.store(OUT + seg_off + rd * s_od, out, mask=d_ok)


# ----------------------------------------------------------------------------- host side
def _idx64(nnz, m, n, d):
    big = max(nnz, m * max(d, 1), n * max(d, 1), m + 1, n + 1)
    return big >= _I32 - 1024


def prepare_indices(rows, cols, m, n, d):
    """Cast int64 COO indices to int32 once when everything fits (saves index bandwidth on
    every later call); returns them unchanged otherwise."""
    if _idx64(rows.numel(), m, n, d):
        return rows, cols
    return rows.to(torch.int32), cols.to(torch.int32)


def _check(U, Vt, rows, cols):
    check_dtype(U, Vt)
    if U.dtype != Vt.dtype:
        raise TypeError(f"U, Vt: expected one dtype, got {U.dtype} and {Vt.dtype}")
    if U.shape[1] != Vt.shape[1]:
        raise ValueError(f"U {tuple(U.shape)} and Vt {tuple(Vt.shape)}: expected the same number of columns")
    for name, t in (("rows", rows), ("cols", cols)):
        if t.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name}: expected int32 or int64, got {t.dtype}")
    if not rows.is_contiguous() or not cols.is_contiguous():
        rows, cols = rows.contiguous(), cols.contiguous()
    return rows, cols


def sparse_residual(U, Vt, rows, cols, values):
    """e_k = ⟨U[rows_k], Vt[cols_k]⟩ − values_k (SDDMM), O(nnz·d) work, no m×n temporary."""
    rows, cols = _check(U, Vt, rows, cols)
    values = values.contiguous()
    nnz = values.numel()
    out = torch.empty_like(values)
    if nnz == 0:
        return out
    m, d = U.shape
    n = Vt.shape[0]
    grid = lambda meta: (triton.cdiv(nnz, meta["BLOCK_K"]),)  # noqa: E731
    _sddmm_kernel[grid](
        U, Vt, rows, cols, values, out,
        nnz, d,
        U.stride(0), U.stride(1), Vt.stride(0), Vt.stride(1),
        IDX64=_idx64(nnz, m, n, d), BLOCK_D=BLOCK_D,
    )
    return out


def _segments(key, nseg):
    """(indptr, perm or None) visiting the entries in increasing ``key`` order (stable sort;
    no permutation when ``key`` is already sorted, i.e. CSR order for rows)."""
    k = key.long()
    perm = None
    if k.numel() > 1 and not bool((k[1:] >= k[:-1]).all()):
        perm = torch.argsort(k, stable=True)
    counts = torch.bincount(k, minlength=nseg)
    ptr = torch.zeros(nseg + 1, dtype=torch.int64, device=key.device)
    torch.cumsum(counts, 0, out=ptr[1:])
    if not _idx64(k.numel(), nseg, 1, 1):
        ptr = ptr.to(torch.int32)
        perm = None if perm is None else perm.to(torch.int32)
    return ptr, perm


def _launch_segment(ptr, perm, gidx, e, s, src, out, idx64):
    nseg, d = out.shape
    if nseg == 0:
        return
    _segment_kernel[(nseg,)](
        ptr, perm if perm is not None else ptr, gidx, e, s, src, out,
        nseg, d,
        src.stride(0), src.stride(1), out.stride(0), out.stride(1),
        HAS_PERM=perm is not None, IDX64=idx64, BLOCK_D=BLOCK_D,
    )


def sparse_rq(U, Vt, rows, cols, e, scale, m, n, variant=None):
    """(R, Q): R[i] = s Σ_{rows_k=i} e_k Vt[cols_k], Q[j] = s Σ_{cols_k=j} e_k U[rows_k].

    variant: None (``DEFAULT_RQ_VARIANT``, or "deterministic" under torch's deterministic
    mode), "atomic", "csr" or "deterministic" (module doc). Duplicate (row, col) pairs
    accumulate, as in the reference's index_add_.
    """
    rows, cols = _check(U, Vt, rows, cols)
    e = e.contiguous()
    d = U.shape[1]
    nnz = e.numel()
    if variant is None:
        variant = "deterministic" if torch.are_deterministic_algorithms_enabled() else DEFAULT_RQ_VARIANT
    if variant not in ("atomic", "csr", "deterministic"):
        raise ValueError(f"variant: expected 'atomic', 'csr' or 'deterministic', got {variant!r}")
    R = torch.zeros((m, d), dtype=Vt.dtype, device=Vt.device)
    Q = torch.zeros((n, d), dtype=Vt.dtype, device=Vt.device)
    if nnz == 0 or d == 0:
        return R, Q
    s = scale_tensor(scale, Vt)
    idx64 = _idx64(nnz, m, n, d)
    seg_r = variant in ("csr", "deterministic")
    seg_q = variant == "deterministic"
    if not (seg_r and seg_q):
        grid = lambda meta: (triton.cdiv(nnz, meta["BLOCK_K"]),)  # noqa: E731
        _scatter_kernel[grid](
            U, Vt, rows, cols, e, s, R, Q,
            nnz, d,
            U.stride(0), U.stride(1), Vt.stride(0), Vt.stride(1),
            R.stride(0), R.stride(1), Q.stride(0), Q.stride(1),
            DO_R=not seg_r, DO_Q=not seg_q,
            IDX64=idx64, BLOCK_D=BLOCK_D,
        )
    if seg_r:
        ptr, perm = _segments(rows, m)
        _launch_segment(ptr, perm, cols, e, s, Vt, R, idx64)
    if seg_q:
        ptr, perm = _segments(cols, n)
        _launch_segment(ptr, perm, rows, e, s, U, Q, idx64)
    return R, Q


__all__ = ["sparse_residual", "sparse_rq", "prepare_indices", "DEFAULT_RQ_VARIANT"]
