"""Sparse observed entries: e[k] = (X_1⋯X_I)[rows[k], cols[k]] − values[k] and ½‖e‖².

Memory stays O(nnz + (m+n)·d): the product is never formed; the reference gathers factor
rows in chunks of ``CHUNK`` entries so that a 2·10⁶-entry problem does not hold three
nnz×d temporaries at once.

Backend primitives (Triton twin in ``dlrl_kernels/_triton/masked_residual_sparse.py``,
CUDA twin in ``csrc/sparse_residual.cu`` through ``dlrl_kernels._cuda``, native CPU twin in
``dlrl_kernels/cpu/sparse_cpu.c`` — the ``auto`` choice on CPU tensors when it compiled); one
``_dispatch.OpTable`` per public op (``masked_residual_sparse``, ``masked_loss_sparse``), whose
entries are implementation objects with these two functions:

- ``sparse_residual(U, Vt, rows, cols, values)`` -> e  (SDDMM; Vt = Vᵀ, n×d contiguous)
- ``sparse_rq(U, Vt, rows, cols, e, scale, m, n)`` -> (R, Q): R[i] = scale·Σ_{rows[k]=i} e_k Vt[cols[k]],
  Q[j] = scale·Σ_{cols[k]=j} e_k U[rows[k]]  (the two SpMM-like chain gradients).

torch.library: the product is collapsed to U = X_1⋯X_{I-1}, V = X_I by plain torch matmuls
(autograd takes the gradient back through the chain: the same d×d products as SPEC §3's
A_kᵀ E B_kᵀ), and the residual on (U, Vᵀ) is the custom op ``dlrl::masked_residual_sparse``
with a fake (meta) implementation and its hand-written backward registered with
``register_autograd``; that backward calls the custom op ``dlrl::masked_residual_sparse_rq``
(R, Q), so ``torch.compile`` traces forward and backward whole (fullgraph, no graph break),
with the kernels opaque inside. The backend is resolved once per call by the Python wrapper
and passed to the op as its name; the op fetches the implementation with ``TABLE.load(name)``.

``values`` is differentiable: ∂e_k/∂values_k = −1 (so ∂(½Σe²)/∂values = −e). A
``SparsePattern``'s index tensors are plain op arguments (no host reads in the op wrappers), so
a pattern can be used inside a compiled graph. Input checks (shapes, index ranges, NaN / ±Inf in
the factors and values: a ValueError naming the argument) run in eager mode only; under
``torch.compile`` they are skipped.
"""
from __future__ import annotations

import warnings

import operator

import torch

from types import SimpleNamespace
from typing import Optional

from .._dispatch import EagerOp, OpTable, PlainOp

# CSR tensors are used internally with indices built here; torch's "beta" notice says nothing
# to our users.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
from .._validate import check_factors, check_sparse_target
from .chain import outer_factors

CHUNK = 1 << 17


class SparsePattern:
    """Observed positions sorted once (row-major), with their CSR and CSC index arrays.

    Training evaluates the loss on the same positions every epoch; sorting them once lets the
    reference backward run both chain gradients as CSR SpMMs (R = E Vᵀ by rows, Q = Eᵀ U by
    columns through a fixed permutation of e) instead of scatter-adds, which on CPU is an
    order of magnitude faster. Build it with ``sparse_pattern(rows, cols, shape)``, permute
    your values with ``values[pattern.order]`` once, and pass ``pattern.rows``,
    ``pattern.cols`` and ``pattern=pattern`` to ``masked_loss_sparse`` /
    ``masked_residual_sparse``.
    """

    def __init__(self, rows, cols, shape):
        m, n = int(shape[0]), int(shape[1])
        rows, cols = rows.long(), cols.long()
        order = torch.argsort(rows * n + cols, stable=True)
        self.shape = (m, n)
        self.order = order
        # index_select rather than t[order]: advanced indexing is ~3× slower at 2·10⁶ entries
        self.rows = rows.index_select(0, order)
        self.cols = cols.index_select(0, order)
        self.crow = torch._convert_indices_from_coo_to_csr(self.rows, m)
        corder = torch.argsort(self.cols * m + self.rows, stable=True)
        self.col_order = corder  # row-sorted position of each column-sorted entry
        self.ccol = torch._convert_indices_from_coo_to_csr(self.cols.index_select(0, corder), n)
        self.rows_by_col = self.rows.index_select(0, corder)

    def check(self, rows, cols):
        same = (rows is self.rows or (rows.data_ptr() == self.rows.data_ptr() and rows.shape == self.rows.shape)) and (
            cols is self.cols or (cols.data_ptr() == self.cols.data_ptr() and cols.shape == self.cols.shape))
        if not same:
            raise ValueError("pattern: expected rows/cols to be pattern.rows/pattern.cols (the pattern "
                             "was built for other indices; permute values with values[pattern.order])")

    def to(self, device):
        out = object.__new__(SparsePattern)
        for k, v in self.__dict__.items():
            setattr(out, k, v.to(device) if isinstance(v, torch.Tensor) else v)
        return out


def sparse_pattern(rows, cols, shape):
    """A :class:`SparsePattern` for repeated losses on the same observed positions."""
    rows, cols = torch.as_tensor(rows), torch.as_tensor(cols)
    for name, t in (("rows", rows), ("cols", cols)):
        # float indices would be truncated silently (1.9 -> 1): refuse them
        if t.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name}: expected an integer tensor (int32/int64), got {t.dtype}")
    if rows.shape != cols.shape or rows.dim() != 1:
        raise ValueError(f"rows/cols: expected two 1-D tensors of equal length, got {tuple(rows.shape)} and {tuple(cols.shape)}")
    try:  # operator.index: Python, numpy and 0-d torch integers; floats and bools are refused
        m, n = (operator.index(s) for s in shape) if not isinstance(shape, (str, bytes)) else (None, None)
        ok = not any(isinstance(s, bool) for s in shape) and m > 0 and n > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"shape: expected (n_rows, n_cols), two positive ints, got {shape!r}")
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= m):
        raise ValueError(f"rows: expected indices in [0, {m}), got range [{int(rows.min())}, {int(rows.max())}]")
    if cols.numel() and (int(cols.min()) < 0 or int(cols.max()) >= n):
        raise ValueError(f"cols: expected indices in [0, {n}), got range [{int(cols.min())}, {int(cols.max())}]")
    return SparsePattern(rows, cols, (m, n))


def pattern_rq(pattern, U, Vt, e, scale):
    """(R, Q) of ``reference_sparse_rq`` as two CSR SpMMs over a prepared pattern."""
    m, n = pattern.shape
    es = e * scale
    R = torch.sparse_csr_tensor(pattern.crow, pattern.cols, es, (m, n), check_invariants=False) @ Vt
    Q = torch.sparse_csr_tensor(pattern.ccol, pattern.rows_by_col, es.index_select(0, pattern.col_order), (n, m),
                                check_invariants=False) @ U
    return R, Q


# ----------------------------------------------------------------------------- reference
#: the reference SDDMM forms the dense product and gathers from it when it has at most this
#: many entries and the observed fraction is at least DENSE_MIN_DENSITY: one GEMM then beats
#: two nnz×d row gathers on a CPU (ML-100K: 1.6·10⁶ entries, 5 % observed)
DENSE_MAX_ENTRIES = 1 << 23
DENSE_MIN_DENSITY = 1.0 / 64


def reference_sparse_residual(U, Vt, rows, cols, values):
    m, n = U.shape[0], Vt.shape[0]
    if m * n <= DENSE_MAX_ENTRIES and values.numel() >= DENSE_MIN_DENSITY * m * n:
        flat = rows.long() * n + cols.long()
        return (U @ Vt.t()).view(-1).index_select(0, flat) - values
    e = torch.empty_like(values)
    for s in range(0, values.numel(), CHUNK):
        r, c = rows[s : s + CHUNK], cols[s : s + CHUNK]
        prod = (U.index_select(0, r) * Vt.index_select(0, c)).sum(1)
        torch.sub(prod, values[s : s + CHUNK], out=e[s : s + CHUNK])
    return e


def reference_sparse_rq(U, Vt, rows, cols, e, scale, m, n):
    d = Vt.shape[1]
    R = torch.zeros(m, d, dtype=Vt.dtype, device=Vt.device)
    Q = torch.zeros(n, d, dtype=Vt.dtype, device=Vt.device)
    es = e * scale
    for s in range(0, e.numel(), CHUNK):
        r, c, ek = rows[s : s + CHUNK], cols[s : s + CHUNK], es[s : s + CHUNK, None]
        R.index_add_(0, r, ek * Vt.index_select(0, c))
        Q.index_add_(0, c, ek * U.index_select(0, r))
    return R, Q


# ----------------------------------------------------------------------------- dispatch
REFERENCE = SimpleNamespace(sparse_residual=reference_sparse_residual, sparse_rq=reference_sparse_rq)


def _triton_impl():
    from .._triton import masked_residual_sparse as k

    return k


def _cuda_sparse_residual(U, Vt, rows, cols, values):
    from .. import _cuda

    return _cuda.sparse_residual(U, Vt, rows, cols, values)[0]  # the op also returns ½Σe²


def _cuda_sparse_rq(U, Vt, rows, cols, e, scale, m, n):
    from .. import _cuda

    return _cuda.sparse_rq(U, Vt, rows, cols, e, scale, m, n)


def _cuda_impl():
    from .. import _cuda

    missing = [op for op in ("sparse_residual", "sparse_rq") if not _cuda.has_op(op)]
    if missing:
        raise RuntimeError(f"the CUDA extension does not provide {missing}: {_cuda.UNAVAILABLE_REASON or 'stale build?'}")
    return SimpleNamespace(sparse_residual=_cuda_sparse_residual, sparse_rq=_cuda_sparse_rq)


def _cpu_impl():
    from .._dispatch import native_module

    return native_module()


_INTERFACE = ("sparse_residual", "sparse_rq")
TABLE = OpTable("masked_residual_sparse", _INTERFACE, reference=lambda: REFERENCE, triton=_triton_impl, cuda=_cuda_impl,
                cpu=_cpu_impl)
TABLE_LOSS = OpTable("masked_loss_sparse", _INTERFACE, reference=lambda: REFERENCE, triton=_triton_impl,
                     cuda=_cuda_impl, cpu=_cpu_impl)
_TABLES = {"masked_residual_sparse": TABLE, "masked_loss_sparse": TABLE_LOSS}


# ----------------------------------------------------------------------------- torch.library
def _residual_impl(U: torch.Tensor, Vt: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor,
                 backend: str, table: str, crow: Optional[torch.Tensor], ccol: Optional[torch.Tensor],
                 col_order: Optional[torch.Tensor], rows_by_col: Optional[torch.Tensor]) -> torch.Tensor:
    """e = ⟨U[rows], Vt[cols]⟩ − values with the implementation ``_TABLES[table].load(backend)``."""
    if backend == "reference" and crow is not None and values.numel():
        # a prepared pattern (rows/cols in its CSR order): one sampled product over the CSR,
        # measured 18× faster than the GEMM + gather at ML-100K's size in float32 and 20× than
        # the row gathers at 4·10⁵ entries (1 thread); same result to rounding
        csr = torch.sparse_csr_tensor(crow, cols, values, (U.shape[0], Vt.shape[0]), check_invariants=False)
        return torch.sparse.sampled_addmm(csr, U, Vt.t(), beta=-1.0).values()
    return _TABLES[table].load(backend).sparse_residual(U, Vt, rows, cols, values)


_residual_op = torch.library.custom_op("dlrl::masked_residual_sparse", _residual_impl, mutates_args=())


@_residual_op.register_fake
def _(U, Vt, rows, cols, values, backend, table, crow, ccol, col_order, rows_by_col):
    return values.new_empty(values.shape)


def _rq_impl(U: torch.Tensor, Vt: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, e: torch.Tensor,
           backend: str, table: str, crow: Optional[torch.Tensor], ccol: Optional[torch.Tensor],
           col_order: Optional[torch.Tensor], rows_by_col: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, Q) = (E Vᵀ, Eᵀ U) for the sparse E holding e: the chain gradients w.r.t. U and Vt."""
    return rq(U, Vt, rows, cols, e, 1.0, backend, table, crow, ccol, col_order, rows_by_col)


_rq_op = torch.library.custom_op("dlrl::masked_residual_sparse_rq", _rq_impl, mutates_args=())
#: the op while compiling, its function in eager mode
rq_op = PlainOp(torch.ops.dlrl.masked_residual_sparse_rq, _rq_impl)


def rq(U, Vt, rows, cols, e, scale, backend, table="masked_residual_sparse", crow=None, ccol=None, col_order=None,
       rows_by_col=None):
    """scale·(R, Q) with ``backend``'s primitive; the reference uses the pattern's two CSR SpMMs
    when one is given. The one body behind the rq op, the loss backward and the model's
    per-fit preparation. ``scale``: a number, or (native CPU only) a one-element tensor."""
    m, n = U.shape[0], Vt.shape[0]
    if backend == "reference" and crow is not None:
        pat = SimpleNamespace(shape=(m, n), crow=crow, cols=cols, ccol=ccol, col_order=col_order, rows_by_col=rows_by_col)
        return pattern_rq(pat, U, Vt, e, scale)
    return _TABLES[table].load(backend).sparse_rq(U, Vt, rows, cols, e, scale, m, n)


@_rq_op.register_fake
def _(U, Vt, rows, cols, e, backend, table, crow, ccol, col_order, rows_by_col):
    return U.new_empty(U.shape), Vt.new_empty(Vt.shape)


def _setup_context(ctx, inputs, output):
    U, Vt, rows, cols, values, backend, table, crow, ccol, col_order, rows_by_col = inputs
    ctx.backend, ctx.table = backend, table
    ctx.save_for_backward(U, Vt, rows, cols, crow, ccol, col_order, rows_by_col)


def _backward(ctx, ge):
    U, Vt, rows, cols, crow, ccol, col_order, rows_by_col = ctx.saved_tensors
    R = Q = None
    if ge is None:  # an undefined output gradient (eager route: grads are not materialised)
        return R, Q, None, None, None, None, None, None, None, None, None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        R, Q = rq_op(U, Vt, rows, cols, ge.contiguous(), ctx.backend, ctx.table,
                                                        crow, ccol, col_order, rows_by_col)
    gvalues = -ge if ctx.needs_input_grad[4] else None
    return R, Q, None, None, gvalues, None, None, None, None, None, None


_residual_op.register_autograd(_backward, setup_context=_setup_context)
#: the op, or in eager mode its autograd.Function twin (same functions; see ``EagerOp``)
residual_op = EagerOp(torch.ops.dlrl.masked_residual_sparse, _residual_impl, _setup_context, _backward, none_grads=True)


# ----------------------------------------------------------------------------- the loss op
def loss_grad(U, Vt, rows, cols, values, backend, crow=None, ccol=None, col_order=None, rows_by_col=None):
    """(J, e, R, Q): J = ½Σe² (float64 accumulation, in e's dtype), e, and the unscaled chain
    gradients (R, Q) = (E·Vt, Eᵀ·U) — the native CPU kernel does all four in one pass over the
    entries; other backends run their residual and then their R, Q (the same body as ``rq``)."""
    if backend == "cpu" and U.device.type == "cpu":
        from .. import cpu

        J, e, R, Q = cpu.sparse_loss_grad(U, Vt, rows, cols, values)
        return J.to(e.dtype), e, R, Q
    e = _residual_impl(U, Vt, rows, cols, values, backend, "masked_loss_sparse", crow, ccol, col_order, rows_by_col)
    R, Q = rq(U, Vt, rows, cols, e, 1.0, backend, "masked_loss_sparse", crow, ccol, col_order, rows_by_col)
    e64 = e.double()
    return (0.5 * torch.dot(e64, e64)).to(e.dtype), e, R, Q


def _loss_impl(U: torch.Tensor, Vt: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor,
               backend: str, with_grad: bool, crow: Optional[torch.Tensor], ccol: Optional[torch.Tensor],
               col_order: Optional[torch.Tensor],
               rows_by_col: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(J, e, R, Q): J = ½ Σ e² accumulated in float64 (returned in e's dtype), the residual e,
    and — when ``with_grad`` — R = E·Vt, Q = Eᵀ·U, the loss's gradients w.r.t. U and Vt for a
    unit incoming gradient (else two 0-row tensors).

    One op for the training loss: the forward computes the gradients while the factor rows are
    loaded anyway (one pass over the entries on the native CPU backend instead of three), and
    the backward only scales them by ∂L/∂J. Callers pass ``with_grad`` = "a backward will
    follow" (grad mode on and U or Vt requiring grad); a backward without them recomputes."""
    if with_grad:
        return loss_grad(U, Vt, rows, cols, values, backend, crow, ccol, col_order, rows_by_col)
    e = _residual_impl(U, Vt, rows, cols, values, backend, "masked_loss_sparse", crow, ccol, col_order, rows_by_col)
    e64 = e.double()
    return (0.5 * torch.dot(e64, e64)).to(e.dtype), e, U.new_empty(0, U.shape[1]), Vt.new_empty(0, Vt.shape[1])


_loss_op = torch.library.custom_op("dlrl::masked_loss_sparse", _loss_impl, mutates_args=())


@_loss_op.register_fake
def _(U, Vt, rows, cols, values, backend, with_grad, crow, ccol, col_order, rows_by_col):
    m, n = (U.shape[0], Vt.shape[0]) if with_grad else (0, 0)
    return values.new_empty(()), values.new_empty(values.shape), U.new_empty(m, U.shape[1]), Vt.new_empty(n, Vt.shape[1])


def _loss_setup(ctx, inputs, output):
    U, Vt, rows, cols, values, backend, with_grad, crow, ccol, col_order, rows_by_col = inputs
    ctx.backend = backend
    ctx.save_for_backward(U, Vt, rows, cols, crow, ccol, col_order, rows_by_col, *output[1:])


def _loss_backward(ctx, gJ, ge, gR=None, gQ=None):
    U, Vt, rows, cols, crow, ccol, col_order, rows_by_col, e, R1, Q1 = ctx.saved_tensors
    # ∂L/∂e = gJ·e (+ ge when the residual itself was used downstream); R, Q are outputs with no
    # gradient of their own (they are the gradient), so gR / gQ are ignored
    none = (None,) * 11
    if gJ is None and ge is None:
        return none
    R = Q = None
    pat = (crow, ccol, col_order, rows_by_col)
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        if gJ is not None and R1.shape[0] == U.shape[0] and Q1.shape[0] == Vt.shape[0]:
            R, Q = R1 * gJ, Q1 * gJ  # computed in the forward for a unit gradient
            if ge is not None:
                R2, Q2 = rq_op(U, Vt, rows, cols, ge.contiguous(), ctx.backend,
                                                                  "masked_loss_sparse", *pat)
                R, Q = R + R2, Q + Q2
        else:
            g = ge if gJ is None else (e * gJ if ge is None else e * gJ + ge)
            R, Q = rq_op(U, Vt, rows, cols, g.contiguous(), ctx.backend,
                                                            "masked_loss_sparse", *pat)
    gvalues = None
    if ctx.needs_input_grad[4]:
        gvalues = -(ge if gJ is None else (e * gJ if ge is None else e * gJ + ge))
    return R, Q, None, None, gvalues, None, None, None, None, None, None


_loss_op.register_autograd(_loss_backward, setup_context=_loss_setup)
#: the op, or in eager mode its autograd.Function twin (same functions; see ``EagerOp``)
loss_op = EagerOp(torch.ops.dlrl.masked_loss_sparse, _loss_impl, _loss_setup, _loss_backward, none_grads=True)


def wants_grad(*tensors):
    """``with_grad`` for the loss op: a backward can follow (grad mode on, an input requires grad)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


# ----------------------------------------------------------------------------- public
def check_finite(t, name):
    """ValueError naming ``name`` when t holds NaN or ±Inf (one host read)."""
    if not bool(torch.isfinite(t).all()):
        bad = ~torch.isfinite(t)
        raise ValueError(f"{name}: expected finite values, got {int(torch.isnan(t).sum())} NaN and "
                         f"{int((bad & ~torch.isnan(t)).sum())} ±Inf of {t.numel()} entries")


def _prepare(factors, rows, cols, values, backend, table, pattern=None):
    many = len(factors) > 1
    if torch.compiler.is_compiling():
        return table.resolve(backend, values.device, triton_ok=many, cuda_ok=many)[0]
    m, n = check_factors(factors)
    if pattern is not None:
        if tuple(pattern.shape) != (m, n):
            raise ValueError(f"pattern: built for shape {pattern.shape}, the factors give ({m}, {n})")
        pattern.check(rows, cols)  # indices were range-checked when the pattern was built
        check_sparse_target(rows, cols, values, (m, n), factors[0], check_range=False)
    else:
        check_sparse_target(rows, cols, values, (m, n), factors[0])
    check_finite(values, "values")
    for k, f in enumerate(factors):
        check_finite(f.detach(), f"factors[{k}]")
    return table.resolve(backend, values.device, triton_ok=many, cuda_ok=many)[0]


def _residual(factors, rows, cols, values, backend, table, pattern):
    if len(factors) == 1:
        return factors[0][rows.long(), cols.long()] - values
    U, V = outer_factors(factors)
    p = (None, None, None, None) if pattern is None else (pattern.crow, pattern.ccol, pattern.col_order, pattern.rows_by_col)
    return residual_op(U, V.t().contiguous(), rows, cols, values, backend, table, *p)


def masked_residual_sparse(factors, rows, cols, values, backend: str = "auto", pattern=None):
    """e[k] = (X_1⋯X_I)[rows[k], cols[k]] − values[k]; never builds an m×n tensor.

    Differentiable w.r.t. every factor and ``values`` (∂e/∂values = −1). Duplicate (row, col)
    pairs are kept as separate observations (each contributes its own residual), exactly as
    the dense loss would if the entry were counted twice.
    """
    be = _prepare(factors, rows, cols, values, backend, TABLE, pattern)
    return _residual(factors, rows, cols, values, be, "masked_residual_sparse", pattern)


def masked_loss_sparse(factors, rows, cols, values, backend: str = "auto", pattern=None):
    """½ Σ_k e[k]² (accumulated in float64) with a hand-written backward: the two SpMM-like
    chain products with the loss's scale folded in (op ``dlrl::masked_loss_sparse``)."""
    be = _prepare(factors, rows, cols, values, backend, TABLE_LOSS, pattern)
    if len(factors) == 1:
        e = _residual(factors, rows, cols, values, be, "masked_loss_sparse", pattern)
        return 0.5 * torch.dot(e, e)
    U, V = outer_factors(factors)
    Vt = V.t().contiguous()
    p = (None, None, None, None) if pattern is None else (pattern.crow, pattern.ccol, pattern.col_order, pattern.rows_by_col)
    return loss_op(U, Vt, rows, cols, values, be, wants_grad(U, Vt), *p)[0]
