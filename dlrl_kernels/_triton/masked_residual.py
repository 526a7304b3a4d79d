"""Fused dense masked residual: E = H ⊙ (U V − X), ½‖E‖², and (R, Q) = (s·E Vᵀ, s·Eᵀ U).

Backend primitives of ``dlrl_kernels.ops.masked_residual``:

- ``dense_residual_loss(U, V, X, mask, want_E)`` -> (loss 0-d, E or None)
- ``dense_residual_rq(U, V, X, mask, scale)`` -> (R (m×d), Q (n×d))

``mask`` is a bool (m, n) tensor or None, in which case a NaN in X marks a missing entry.

Forward (``_fwd_kernel``): one program per BLOCK_M × BLOCK_N tile (grouped launch order so
neighbouring programs share U / V tiles in L2). The tile of P = U V is accumulated in
registers over d in BLOCK_D chunks (P is never written), the mask / NaN test and the
subtraction happen in the epilogue, E is stored only when asked for, and each program writes
its partial ½-less sum of squares to its own slot; the slots are summed by torch
(deterministic for a given config). Accumulation is in the input dtype: float32 for float32,
float64 for float64 (``tl.dot`` on float64 operands accumulates in float64).

d that is not a power of two ≥ 16 is handled by masked loads along d (``other=0``): the
out-of-range columns of U / rows of V read as zeros, which is the same as zero-padding them on
the host (U V unchanged) without the copy.

Backward (``_rq_kernel``), two variants:

- ``"fused"`` (default): programs own BLOCK_M row blocks (optionally × SPLIT column ranges
  when there are too few row blocks to fill the GPU), keep their U block in registers,
  sweep the columns tile by tile recomputing E from U, V, X and the mask, accumulate
  R = s·E Vᵀ in registers (stored once; atomically added when SPLIT > 1) and atomically add
  their contribution s·Eᵀ U to Q. X and the mask are read exactly once, which is the whole
  cost of this memory-bound op; the price is (m / BLOCK_M)·n·d float atomics into Q, whose
  summation order (float32 or float64) is not deterministic.
- ``"split"``: the same kernel launched twice, rows-owned for R (Q disabled) and then on the
  transposed problem (Eᵀ = Hᵀ ⊙ (Vᵀ Uᵀ − Xᵀ), pure stride swaps, no copies) for Q. No atomics,
  bitwise deterministic, but X and the mask are read twice.

The default is ``"fused"`` (one pass over X), switched to ``"split"`` automatically when
``torch.are_deterministic_algorithms_enabled()``. On the CPU interpreter both are only checked
for correctness; no GPU timing was available when this choice was made, see
``bench/bench_kernels.py`` for the comparison row.

Both variants need the whole d in registers: d ≤ ``MAX_FUSED_D`` (128). For larger d the
backward falls back to E from the forward kernel followed by two torch matmuls (documented
fallback; the forward kernel itself handles any d).

Every accumulating ``tl.dot`` names ``out_dtype`` (the input dtype): triton 3.6 asserts that a
float64 accumulator matches ``out_dtype``, whose default is float32; 3.9 does not check.

``tl.dot`` uses ``input_precision="ieee"`` (exact float32 products on the GPU). The residual
is a difference of two comparable numbers, so TF32's 10-bit mantissa in U V would show up
directly in E; do not relax it here.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import check_dtype, configs, next_pow2, num_sms, scale_tensor, ON_GPU

MAX_FUSED_D = 128
DEFAULT_RQ_VARIANT = "fused"
#: The float64 backward takes the forward-kernel + two-matmul path of d > MAX_FUSED_D: triton
#: 3.6 (the lent GPU image) fails to lower the float64 ``_rq_kernel`` for sm_90 ("PassManager::
#: run failed" in make_llir), and with 3.9 two of its 24 float64 specialisations still spill
#: 4 B (measured with the compile report). float64 on a GPU is for accuracy, not speed.
_TRITON_VERSION = tuple(int(x) for x in triton.__version__.split(".")[:2] if x.isdigit())
FUSED_RQ_FLOAT64 = False

# ----------------------------------------------------------------------------- configs
# Measured with bench/compile_report.py (sm_90, float32 products with input_precision="ieee",
# i.e. FMA, not mma): the dot operands live in registers, so the d-chunk (BLOCK_D) is what
# decides spilling. BLOCK_D = 64 spilled in every tile (56 B at 64×64 up to 50 kB at 128×256,
# 100+ s of compile); BLOCK_D = 16 compiles spill-free at 64×64 and 128×64 in float32 and
# float64 (≈ 160 / 220 registers) in ~15 s. The op is memory-bound (d FMAs per element of X),
# so nothing is lost by the small chunk.
FWD_BLOCK_D = 16
_FWD_CONFIGS = configs(
    [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "GROUP_M": 8}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [
            (64, 64, 4, 2),
            (128, 64, 8, 2),
            (64, 128, 8, 2),
        ]
    ],
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "GROUP_M": 2}, num_warps=4, num_stages=1),
)
_FWD_MIN_TILE = min(c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] for c in list(_FWD_CONFIGS) + _FWD_CONFIGS.gpu)

# The backward keeps a BLOCK_M × BLOCK_D block of U and of R in registers for the whole sweep
# (BLOCK_D = d rounded up to a power of two), plus three FMA dots per column tile: every
# autotune candidate of the old list spilled (250 B to 90 kB). It is not autotuned any more:
# one tile per (dtype, BLOCK_D), the largest that compiled with 0 spill stores for sm_90
# (bench/results/compile_sm90.md); (BLOCK_M, BLOCK_N, num_warps).
RQ_TILES = {
    (torch.float32, 16): (32, 32, 4),
    (torch.float32, 32): (32, 32, 4),
    (torch.float32, 64): (16, 16, 4),
    (torch.float32, 128): (32, 16, 8),
    (torch.float64, 16): (16, 32, 4),
    (torch.float64, 32): (16, 16, 4),
    (torch.float64, 64): (16, 16, 4),
    (torch.float64, 128): (16, 16, 8),
}


# ----------------------------------------------------------------------------- kernels
@triton.autotune(configs=_FWD_CONFIGS, key=["m", "n", "d", "HAS_MASK", "WANT_E"], reset_to_zero=["PART"])
@triton.jit
def _fwd_kernel(
    U, V, X, MASK, E, PART,
    m, n, d,
    s_um, s_ud, s_vd, s_vn, s_xm, s_xn, s_km, s_kn, s_em, s_en,
    HAS_MASK: tl.constexpr, WANT_E: tl.constexpr,
    BLOCK_D: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    num_m = tl.cdiv(m, BLOCK_M)
    num_n = tl.cdiv(n, BLOCK_N)
    # grouped ordering: GROUP_M row blocks sweep the columns together (L2 reuse of V tiles)
    per_group = GROUP_M * num_n
    group = pid // per_group
    first_m = group * GROUP_M
    gsize = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % gsize
    pid_n = (pid % per_group) // gsize

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < m
    n_ok = rn < n
    rm64 = rm.to(tl.int64)
    rn64 = rn.to(tl.int64)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=U.dtype.element_ty)
    for k0 in range(0, d, BLOCK_D):
        rk = k0 + tl.arange(0, BLOCK_D)
        k_ok = rk < d
        u = tl.load(U + rm64[:, None] * s_um + rk[None, :] * s_ud, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        v = tl.load(V + rk[:, None] * s_vd + rn64[None, :] * s_vn, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(u, v, acc, input_precision=PREC, out_dtype=U.dtype.element_ty)

    inb = m_ok[:, None] & n_ok[None, :]
    x = tl.load(X + rm64[:, None] * s_xm + rn64[None, :] * s_xn, mask=inb, other=0.0)
    if HAS_MASK:
        h = tl.load(MASK + rm64[:, None] * s_km + rn64[None, :] * s_kn, mask=inb, other=0)
        obs = (h != 0) & inb
    else:
        obs = (x == x) & inb
    e = tl.where(obs, acc - x, 0.0)
    if WANT_E:
        tl.store(E + rm64[:, None] * s_em + rn64[None, :] * s_en, e, mask=inb)
    tl.store(PART + pid, tl.sum(tl.sum(e * e, axis=1), axis=0))


@triton.jit
def _rq_kernel(
    U, V, X, MASK, SCALE, R, Q,
    m, n, d, SPLIT,
    s_um, s_ud, s_vd, s_vn, s_xm, s_xn, s_km, s_kn, s_rm, s_rd, s_qn, s_qd,
    HAS_MASK: tl.constexpr, WRITE_Q: tl.constexpr, R_ATOMIC: tl.constexpr,
    BLOCK_D: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Rows-owned sweep: R[rows] (+)= s·E[rows,:] Vᵀ; if WRITE_Q, Q += s·E[rows,:]ᵀ U[rows]."""
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.arange(0, BLOCK_D)
    m_ok = rm < m
    k_ok = rk < d
    rm64 = rm.to(tl.int64)
    u = tl.load(U + rm64[:, None] * s_um + rk[None, :] * s_ud, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
    scale = tl.load(SCALE)
    r_acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=U.dtype.element_ty)

    tiles_n = tl.cdiv(n, BLOCK_N)
    per = tl.cdiv(tiles_n, SPLIT)
    t_lo = pid_s * per
    t_hi = tl.minimum(tiles_n, t_lo + per)
    for t in range(t_lo, t_hi):
        rn = t * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = rn < n
        rn64 = rn.to(tl.int64)
        v = tl.load(V + rk[:, None] * s_vd + rn64[None, :] * s_vn, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        p = tl.dot(u, v, input_precision=PREC)
        inb = m_ok[:, None] & n_ok[None, :]
        x = tl.load(X + rm64[:, None] * s_xm + rn64[None, :] * s_xn, mask=inb, other=0.0)
        if HAS_MASK:
            h = tl.load(MASK + rm64[:, None] * s_km + rn64[None, :] * s_kn, mask=inb, other=0)
            obs = (h != 0) & inb
        else:
            obs = (x == x) & inb
        e = tl.where(obs, p - x, 0.0) * scale
        r_acc = tl.dot(e, tl.trans(v), r_acc, input_precision=PREC, out_dtype=U.dtype.element_ty)
        if WRITE_Q:
            qc = tl.dot(tl.trans(e), u, input_precision=PREC)
            tl.atomic_add(
                Q + rn64[:, None] * s_qn + rk[None, :] * s_qd, qc, mask=n_ok[:, None] & k_ok[None, :], sem="relaxed"
            )

    r_ptr = R + rm64[:, None] * s_rm + rk[None, :] * s_rd
    r_mask = m_ok[:, None] & k_ok[None, :]
    if R_ATOMIC:
        tl.atomic_add(r_ptr, r_acc, mask=r_mask, sem="relaxed")
    else:
        tl.store(r_ptr, r_acc, mask=r_mask)


# ----------------------------------------------------------------------------- host side
def _mask_arg(mask, X):
    if mask is None:
        return X, (0, 0), False  # dummy pointer, never read
    if mask.dtype != torch.bool:
        mask = mask != 0
    mk = mask.view(torch.uint8)
    return mk, (mk.stride(0), mk.stride(1)), True


def _check(U, V, X):
    check_dtype(U, V, X)
    if not (U.dtype == V.dtype == X.dtype):
        raise TypeError(f"U, V, X: expected one dtype, got {U.dtype}, {V.dtype}, {X.dtype}")
    m, d = U.shape
    d2, n = V.shape
    if d2 != d or tuple(X.shape) != (m, n):
        raise ValueError(f"shapes: U {tuple(U.shape)}, V {tuple(V.shape)}, X {tuple(X.shape)} do not chain")
    return m, n, d


def dense_residual_loss(U, V, X, mask, want_E):
    """(½‖mask ⊙ (U V − X)‖², E or None) in one pass over X (and the mask)."""
    m, n, d = _check(U, V, X)
    mk, (s_km, s_kn), has_mask = _mask_arg(mask, X)
    E = torch.empty((m, n), dtype=X.dtype, device=X.device) if want_E else X
    if m == 0 or n == 0:
        return X.new_zeros(()), (E if want_E else None)
    max_programs = triton.cdiv(m * n, _FWD_MIN_TILE) + triton.cdiv(m, 16) + triton.cdiv(n, 16) + 1
    part = torch.zeros(max_programs, dtype=X.dtype, device=X.device)
    block_d = FWD_BLOCK_D

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    _fwd_kernel[grid](
        U, V, X, mk, E, part,
        m, n, d,
        U.stride(0), U.stride(1), V.stride(0), V.stride(1), X.stride(0), X.stride(1), s_km, s_kn,
        E.stride(0), E.stride(1),
        HAS_MASK=has_mask, WANT_E=bool(want_E), BLOCK_D=block_d, PREC="ieee",
    )
    loss = 0.5 * part.sum()
    return loss, (E if want_E else None)


def _default_split(m, n, device, split):
    if split is not None:
        return max(1, int(split))
    if not ON_GPU or device.type != "cuda":
        return 1
    rows = triton.cdiv(m, 32)
    want = triton.cdiv(2 * num_sms(device), rows)
    return max(1, min(want, triton.cdiv(n, 64)))


def _launch_rq(U, V, X, mk, s_k, has_mask, s, R, Q, write_q, split):
    m, d = U.shape
    n = V.shape[1]
    block_d = next_pow2(d)
    bm, bn, warps = RQ_TILES[(X.dtype, block_d)]
    _rq_kernel[(triton.cdiv(m, bm), split)](
        U, V, X, mk, s, R, Q,
        m, n, d, split,
        U.stride(0), U.stride(1), V.stride(0), V.stride(1), X.stride(0), X.stride(1), s_k[0], s_k[1],
        R.stride(0), R.stride(1), Q.stride(0), Q.stride(1),
        HAS_MASK=has_mask, WRITE_Q=write_q, R_ATOMIC=split > 1,
        BLOCK_D=block_d, PREC="ieee", BLOCK_M=bm, BLOCK_N=bn,
        num_warps=warps, num_stages=1,
    )


def dense_residual_rq(U, V, X, mask, scale, variant=None, split=None):
    """(R, Q) = (scale·E Vᵀ, scale·Eᵀ U) with E recomputed tile by tile (never stored).

    variant: None (``DEFAULT_RQ_VARIANT``, or "split" under torch's deterministic mode),
    "fused" (one kernel, Q by atomics) or "split" (two atomic-free launches). ``split``
    (fused only): number of column ranges per row block (None: enough programs for the GPU).
    """
    m, n, d = _check(U, V, X)
    s = scale_tensor(scale, X)
    if variant is None:
        variant = "split" if torch.are_deterministic_algorithms_enabled() else DEFAULT_RQ_VARIANT
    if variant not in ("fused", "split"):
        raise ValueError(f"variant: expected 'fused' or 'split', got {variant!r}")
    R = torch.zeros((m, d), dtype=X.dtype, device=X.device)
    Q = torch.zeros((n, d), dtype=X.dtype, device=X.device)
    if m == 0 or n == 0 or d == 0:
        return R, Q
    if d > MAX_FUSED_D or (X.dtype == torch.float64 and not FUSED_RQ_FLOAT64):
        # whole-d register blocks would spill (or triton 3.6 cannot lower the float64 kernel):
        # E from the fused forward, then two matmuls
        _, E = dense_residual_loss(U, V, X, mask, True)
        E = E * s[0]
        return E @ V.t(), E.t() @ U
    mk, s_k, has_mask = _mask_arg(mask, X)
    if variant == "fused":
        _launch_rq(U, V, X, mk, s_k, has_mask, s, R, Q, True, _default_split(m, n, X.device, split))
    else:
        # the Q slot of a launch with WRITE_Q=False gets a throw-away buffer (never written)
        dummy = torch.zeros((1, 1), dtype=X.dtype, device=X.device)
        _launch_rq(U, V, X, mk, s_k, has_mask, s, R, dummy, False, 1)
        mkt = mk.t() if has_mask else X.t()
        _launch_rq(V.t(), U.t(), X.t(), mkt, (s_k[1], s_k[0]), has_mask, s, Q, dummy, False, 1)
    return R, Q


__all__ = ["dense_residual_loss", "dense_residual_rq", "DEFAULT_RQ_VARIANT", "MAX_FUSED_D"]
