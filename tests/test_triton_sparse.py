"""Triton sparse residual (SDDMM) and scatter products (``_triton/masked_residual_sparse.py``)
against the reference backend and an independent float64 dense computation.

Entry counts are not multiples of the interpreter's 32-entry blocks, some rows and columns
have no entries, and some (row, col) pairs appear several times (each is its own
observation: residuals are per entry, gradients add up).

Bounds: e_k = ⟨u, v⟩ − x has |ê − e| ≤ (d+2)·eps·(|u|·|v| + |x|); R[i] = Σ_k e_k v_k over
the c_i entries of row i adds (c_i + 2)·eps·Σ|e||v| to the propagated |δe|·|v|.
"""
import pytest
import torch

import dlrl_kernels as dk
from dlrl_kernels._dispatch import interpret_mode
from conftest import rel_err

DEV = torch.device("cuda") if (torch.cuda.is_available() and not interpret_mode()) else torch.device("cpu")
pytestmark = pytest.mark.skipif(
    DEV.type == "cpu" and not interpret_mode(), reason="needs TRITON_INTERPRET=1 (conftest sets it) or a GPU"
)
DTYPES = [torch.float32, torch.float64]


def _k():
    from dlrl_kernels._triton import masked_residual_sparse as k

    return k


def eps(dtype):
    return torch.finfo(dtype).eps


def problem(gen, m, n, d, dtype, nnz=301, idx=torch.int64, sort=False):
    """Random COO entries over half the rows / most columns, plus duplicates of some pairs."""
    live_rows = torch.randperm(m, generator=gen)[: m // 2]  # the other rows stay empty
    r = live_rows[torch.randint(0, live_rows.numel(), (nnz,), generator=gen)]
    c = torch.randint(0, n - 2, (nnz,), generator=gen)  # the last two columns stay empty
    dup = torch.randint(0, nnz, (nnz // 7,), generator=gen)
    rows, cols = torch.cat([r, r[dup]]), torch.cat([c, c[dup]])
    if sort:
        o = torch.argsort(rows * n + cols)
        rows, cols = rows[o], cols[o]
    else:
        o = torch.randperm(rows.numel(), generator=gen)
        rows, cols = rows[o], cols[o]
    vals = torch.randn(rows.numel(), generator=gen, dtype=torch.float64) * 3
    U = torch.randn(m, d, generator=gen, dtype=torch.float64)
    V = torch.randn(d, n, generator=gen, dtype=torch.float64)
    return (U.to(dtype).to(DEV), V.to(dtype).to(DEV), rows.to(idx).to(DEV), cols.to(idx).to(DEV),
            vals.to(dtype).to(DEV))


def ref64(U, V, rows, cols, vals, m, n):
    U64, V64 = U.double().cpu(), V.double().cpu()
    r, c = rows.long().cpu(), cols.long().cpu()
    e = (U64 @ V64)[r, c] - vals.double().cpu()  # dense product, then gather: independent of the SDDMM
    b = (U.shape[1] + 2) * eps(U.dtype) * ((U64.abs() @ V64.abs())[r, c] + vals.double().abs().cpu())
    return e, b


def dense_scatter(e, rows, cols, m, n):
    E = torch.zeros(m, n, dtype=torch.float64)
    E.index_put_((rows.long().cpu(), cols.long().cpu()), e.double().cpu(), accumulate=True)
    return E


def rq_bounds(U, V, rows, cols, e64, be, m, n, s=1.0):
    r, c = rows.long().cpu(), cols.long().cpu()
    Ua, Va = U.double().abs().cpu(), V.double().abs().cpu()
    cnt_r = torch.bincount(r, minlength=m).max().item()
    cnt_c = torch.bincount(c, minlength=n).max().item()
    Eb, Ea = dense_scatter(be, rows, cols, m, n), dense_scatter(e64.abs(), rows, cols, m, n)
    bR = s * (Eb @ Va.t() + (cnt_r + 2) * eps(U.dtype) * Ea @ Va.t())
    bQ = s * (Eb.t() @ Ua + (cnt_c + 2) * eps(U.dtype) * Ea.t() @ Ua)
    return bR, bQ


def assert_within(x, ref, bound, what):
    err = (x.double().cpu() - ref).abs()
    bad = err > bound + 1e-300
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} entries outside the rounding bound; max err {err.max().item():.3e}, "
        f"max err/bound {(err / bound.clamp_min(1e-300)).max().item():.3e}"
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [16, 20, 33, 64, 100])
@pytest.mark.parametrize("idx", [torch.int64, torch.int32], ids=["i64", "i32"])
def test_residual_loss_and_gradients(gen, dtype, d, idx, record_property):
    m, n = 37, 29
    U, V, rows, cols, vals = problem(gen, m, n, d, dtype, idx=idx)
    e64, be = ref64(U, V, rows, cols, vals, m, n)
    e = dk.masked_residual_sparse([U, V], rows, cols, vals, backend="triton")
    assert e.dtype == dtype
    assert_within(e, e64, be, "e vs float64")
    er = dk.masked_residual_sparse([U, V], rows, cols, vals, backend="reference")
    assert_within(e, er.double().cpu(), 2 * be, "e vs reference")

    g = 0.5 + torch.rand((), generator=gen).item() * 2
    out = {}
    for bk in ("triton", "reference"):
        Ui, Vi = U.clone().requires_grad_(), V.clone().requires_grad_()
        L = dk.masked_loss_sparse([Ui, Vi], rows, cols, vals, backend=bk)
        (g * L).backward()
        out[bk] = (L.detach(), Ui.grad, Vi.grad)
    L64 = 0.5 * (e64 * e64).sum()
    tol_L = (e64.abs() * be).sum() + 2 * e64.numel() * eps(dtype) * L64  # torch.dot: sequential worst case
    assert abs(out["triton"][0].item() - L64.item()) <= tol_L.item()
    E64 = dense_scatter(e64, rows, cols, m, n)
    bR, bQ = rq_bounds(U, V, rows, cols, e64, be, m, n, g)
    gU64, gV64 = g * E64 @ V.double().cpu().t(), g * U.double().cpu().t() @ E64
    assert_within(out["triton"][1], gU64, bR, "dU vs float64")
    assert_within(out["triton"][2].t(), gV64.t(), bQ, "dV vs float64")
    assert_within(out["triton"][1], out["reference"][1].double().cpu(), 2 * bR, "dU vs reference")
    assert_within(out["triton"][2].t(), out["reference"][2].double().cpu().t(), 2 * bQ, "dV vs reference")
    # rows / columns without entries get exactly zero gradient
    empty_r = torch.bincount(rows.long().cpu(), minlength=m) == 0
    assert empty_r.any() and torch.all(out["triton"][1].cpu()[empty_r] == 0)
    assert torch.all(out["triton"][2].cpu()[:, -2:] == 0)
    record_property("rel_err_e", rel_err(e, e64))
    record_property("rel_err_dU", rel_err(out["triton"][1], gU64))
    record_property("rel_err_dV", rel_err(out["triton"][2], gV64))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ["atomic", "csr", "deterministic"])
@pytest.mark.parametrize("sort", [False, True], ids=["unsorted", "csr_order"])
def test_rq_variants(gen, dtype, variant, sort):
    """Every scatter variant (atomics, CSR-segmented R with / without a permutation, fully
    segmented) within the bound of float64 E Vᵀ / Eᵀ U, duplicates included."""
    m, n, d = 37, 29, 20
    U, V, rows, cols, vals = problem(gen, m, n, d, dtype, sort=sort)
    e = torch.randn(rows.numel(), generator=gen, dtype=torch.float64).to(dtype).to(DEV)
    s = 1.5
    Vt = V.t().contiguous()
    R, Q = _k().sparse_rq(U, Vt, rows, cols, e, torch.tensor(s, dtype=dtype), m, n, variant=variant)
    E64 = dense_scatter(e, rows, cols, m, n)
    bR, bQ = rq_bounds(U, V, rows, cols, e.double().cpu(), torch.zeros(e.numel(), dtype=torch.float64), m, n, s)
    assert_within(R, s * E64 @ V.double().cpu().t(), bR, f"R ({variant})")
    assert_within(Q, s * E64.t() @ U.double().cpu(), bQ, f"Q ({variant})")


def test_deterministic_mode_is_bitwise_reproducible(gen):
    m, n, d = 37, 29, 33
    U, V, rows, cols, vals = problem(gen, m, n, d, torch.float32)
    e = torch.randn(rows.numel(), generator=gen).to(DEV)
    Vt = V.t().contiguous()
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        R1, Q1 = _k().sparse_rq(U, Vt, rows, cols, e, 1.0, m, n)
        R2, Q2 = _k().sparse_rq(U, Vt, rows, cols, e.clone(), 1.0, m, n)
    finally:
        torch.use_deterministic_algorithms(prev)
    assert torch.equal(R1, R2) and torch.equal(Q1, Q2)
    R3, Q3 = _k().sparse_rq(U, Vt, rows, cols, e, 1.0, m, n, variant="deterministic")
    assert torch.equal(R1, R3) and torch.equal(Q1, Q3)


def test_int64_address_path(gen, monkeypatch):
    """The IDX64 branch (int64 offsets, taken for > 2³¹ entries) forced on a small problem."""
    k = _k()
    m, n, d = 37, 29, 20
    U, V, rows, cols, vals = problem(gen, m, n, d, torch.float64, idx=torch.int32)
    e0 = k.sparse_residual(U, V.t().contiguous(), rows, cols, vals)
    R0, Q0 = k.sparse_rq(U, V.t().contiguous(), rows, cols, e0, 1.0, m, n, variant="atomic")
    Rd0, Qd0 = k.sparse_rq(U, V.t().contiguous(), rows, cols, e0, 1.0, m, n, variant="deterministic")
    monkeypatch.setattr(k, "_I32", 0)
    assert k._idx64(1, 1, 1, 1)
    e1 = k.sparse_residual(U, V.t().contiguous(), rows, cols, vals)
    R1, Q1 = k.sparse_rq(U, V.t().contiguous(), rows, cols, e1, 1.0, m, n, variant="atomic")
    Rd1, Qd1 = k.sparse_rq(U, V.t().contiguous(), rows, cols, e1, 1.0, m, n, variant="deterministic")
    assert torch.equal(e0, e1) and torch.equal(Rd0, Rd1) and torch.equal(Qd0, Qd1)
    assert rel_err(R1, R0) < 1e-14 and rel_err(Q1, Q0) < 1e-14  # atomics: order may differ


@pytest.mark.parametrize("dtype", DTYPES)
def test_three_factor_chain_and_residual_autograd(gen, dtype):
    """masked_residual_sparse with a random upstream de, I = 3: gradients equal the reference
    path's and float64 autograd of the dense gather."""
    m, d1, d, n = 33, 18, 16, 27
    fs = [torch.randn(a, b, generator=gen, dtype=torch.float64) for a, b in ((m, d1), (d1, d), (d, n))]
    _, _, rows, cols, vals = problem(gen, m, n, d, dtype)
    ge = torch.randn(rows.numel(), generator=gen, dtype=torch.float64)
    out = {}
    for bk in ("triton", "reference"):
        f = [t.to(dtype).to(DEV).clone().requires_grad_() for t in fs]
        dk.masked_residual_sparse(f, rows, cols, vals, backend=bk).backward(ge.to(dtype).to(DEV))
        out[bk] = [t.grad for t in f]
    f64 = [t.clone().requires_grad_() for t in fs]
    e64 = (f64[0] @ f64[1] @ f64[2])[rows.long().cpu(), cols.long().cpu()] - vals.double().cpu()
    e64.backward(ge)
    tol = 16 * (d1 + 8) * eps(dtype)
    for k in range(3):
        assert rel_err(out["triton"][k], f64[k].grad) < tol
        assert rel_err(out["triton"][k], out["reference"][k]) < tol


def test_no_entries(gen):
    m, n, d = 9, 7, 16
    U = torch.randn(m, d, generator=gen, dtype=torch.float64).to(DEV).requires_grad_()
    V = torch.randn(d, n, generator=gen, dtype=torch.float64).to(DEV).requires_grad_()
    idx = torch.zeros(0, dtype=torch.int64, device=DEV)
    L = dk.masked_loss_sparse([U, V], idx, idx, torch.zeros(0, dtype=torch.float64, device=DEV), backend="triton")
    L.backward()
    assert L.item() == 0 and torch.all(U.grad == 0) and torch.all(V.grad == 0)


def test_all_entries_in_one_row_and_one_column(gen):
    """A single long segment (longer than one block) for the segmented variants."""
    m, n, d = 5, 70, 20
    U = torch.randn(m, d, generator=gen, dtype=torch.float64).to(DEV)
    V = torch.randn(d, n, generator=gen, dtype=torch.float64).to(DEV)
    cols = torch.arange(n, device=DEV).repeat(2)  # 140 entries in row 2, each column twice
    rows = torch.full_like(cols, 2)
    e = torch.randn(cols.numel(), generator=gen, dtype=torch.float64).to(DEV)
    for variant in ("atomic", "csr", "deterministic"):
        R, Q = _k().sparse_rq(U, V.t().contiguous(), rows, cols, e, 1.0, m, n, variant=variant)
        E64 = dense_scatter(e, rows, cols, m, n)
        assert rel_err(R, E64 @ V.double().cpu().t()) < 1e-14
        assert rel_err(Q, E64.t() @ U.double().cpu()) < 1e-14
        assert torch.all(R[torch.arange(m, device=DEV) != 2] == 0)


def test_with_prepared_pattern(gen):
    """``pattern=`` changes only the reference's backward; the Triton path must agree with it."""
    if not hasattr(dk, "sparse_pattern"):
        pytest.skip("dk.sparse_pattern is not available in this version")
    m, n, d = 37, 29, 20
    U, V, rows, cols, vals = problem(gen, m, n, d, torch.float64)
    pat = dk.sparse_pattern(rows, cols, (m, n))
    v = vals[pat.order.to(vals.device)]
    out = {}
    for bk in ("triton", "reference"):
        Ui, Vi = U.clone().requires_grad_(), V.clone().requires_grad_()
        dk.masked_loss_sparse([Ui, Vi], pat.rows, pat.cols, v, backend=bk, pattern=pat).backward()
        out[bk] = (Ui.grad, Vi.grad)
    assert rel_err(out["triton"][0], out["reference"][0]) < 1e-13
    assert rel_err(out["triton"][1], out["reference"][1]) < 1e-13
