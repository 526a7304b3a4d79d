"""The CUDA part: it compiles (when nvcc is here), its loader never breaks the import, its
schemas and fake implementations agree, and, on a machine with a GPU and the built
extension, its kernels match pure-PyTorch references (tests marked ``gpu``)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "compile_cuda.sh"
BINDINGS = ROOT / "csrc" / "bindings.cpp"

from dlrl_kernels import _cuda  # noqa: E402  (must import on every machine)


# ------------------------------------------------------------------------------------------
# Build and loader (run everywhere)
# ------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_compile_script_compiles_every_cu_file():
    proc = subprocess.run(
        ["bash", str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "PYTHON": sys.executable},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f".ci/compile_cuda.sh failed:\n{out}"
    for src in sorted((ROOT / "csrc").glob("*.cu")):
        assert f"ok     csrc/{src.name}" in out, f"{src.name} not reported compiled:\n{out}"


def test_compile_script_skips_without_nvcc(tmp_path):
    # PATH with bash but no nvcc: the script must say SKIP and succeed.
    bash = shutil.which("bash")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "bash").symlink_to(bash)
    for tool in ("dirname", "mktemp", "rm", "basename"):
        found = shutil.which(tool)
        if found:
            (bindir / tool).symlink_to(found)
    proc = subprocess.run(
        [str(bindir / "bash"), str(SCRIPT)], cwd=ROOT, capture_output=True, text=True,
        timeout=60, env={"PATH": str(bindir), "HOME": os.environ.get("HOME", "/tmp")},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SKIP" in proc.stdout


def test_cuda_module_imports_and_reports_status():
    assert isinstance(_cuda.AVAILABLE, bool)
    assert isinstance(_cuda.UNAVAILABLE_REASON, str)
    if torch.version.cuda is None:  # a CPU build of torch can never load the extension
        assert _cuda.AVAILABLE is False
    if not _cuda.AVAILABLE:
        assert _cuda.UNAVAILABLE_REASON.strip(), "unavailable without a reason"
    else:
        assert _cuda.UNAVAILABLE_REASON == ""


@pytest.mark.skipif(_cuda.AVAILABLE, reason="extension is available here")
def test_wrappers_raise_with_the_reason_when_unavailable():
    x = torch.zeros(2, 2)
    with pytest.raises(RuntimeError, match="unavailable"):
        _cuda.gram_batched(x[None])
    try:
        _cuda.sparse_grad_cols_atomic(x.long()[0], x.long()[0], x[0], x, 2)
    except RuntimeError as exc:
        assert _cuda.UNAVAILABLE_REASON in str(exc)
    assert not _cuda.has_op("sparse_residual")
    assert not _cuda.has_op("sparse_rq")


def test_dispatch_reports_the_same_status():
    from dlrl_kernels import _dispatch

    ok, why = _dispatch.cuda_ext_status()
    assert ok == _cuda.AVAILABLE
    assert why == _cuda.UNAVAILABLE_REASON


def _bindings_schemas():
    """{op name: schema string} from the m.def(...) calls of csrc/bindings.cpp."""
    src = BINDINGS.read_text()
    block = src[src.index("TORCH_LIBRARY(dlrl, m)"):src.index("TORCH_LIBRARY_IMPL(dlrl, CUDA, m)")]
    schemas = {}
    for call in re.findall(r"m\.def\((.*?)\);", block, flags=re.S):
        schema = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', call))
        schemas[schema.split("(", 1)[0]] = schema
    impls = re.findall(r'm\.impl\("(\w+)"', src)
    return schemas, impls


def test_schemas_cover_every_op_and_every_op_has_a_cuda_impl():
    schemas, impls = _bindings_schemas()
    assert sorted(schemas) == sorted(_cuda.OPS)
    assert sorted(impls) == sorted(_cuda.OPS)


def test_fake_implementations_match_the_schemas():
    """Define the bindings.cpp schemas under a scratch namespace, register _cuda's fakes for
    them, and trace every op with fake tensors: catches a schema typo or a fake whose
    signature or output shapes drifted, on machines without the extension."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    ns = "dlrl_schema_test"
    schemas, _ = _bindings_schemas()
    lib = torch.library.Library(ns, "DEF")
    try:
        for schema in schemas.values():
            lib.define(schema)
        _cuda._register_fakes(ns=ns, lib=lib)
        ops = getattr(torch.ops, ns)
        f32, f64, i32, i64 = torch.float32, torch.float64, torch.int32, torch.int64
        with FakeTensorMode():
            U, Vt = torch.empty(7, 5, dtype=f64), torch.empty(6, 5, dtype=f64)
            rows, cols, vals = torch.empty(11, dtype=i64), torch.empty(11, dtype=i64), torch.empty(11, dtype=f64)
            e, loss = ops.sparse_residual(U, Vt, rows, cols, vals)
            assert e.shape == (11,) and loss.shape == () and loss.dtype == f64
            R = ops.sparse_grad_rows(torch.empty(8, dtype=i32), torch.empty(11, dtype=i32), vals, Vt, 0.5)
            assert R.shape == (7, 5) and R.dtype == f64
            Q = ops.sparse_grad_cols(torch.empty(7, dtype=i32), torch.empty(11, dtype=i32), vals, U)
            assert Q.shape == (6, 5)
            Q = ops.sparse_grad_cols_atomic(rows, cols, vals, U, 6, 2.0)
            assert Q.shape == (6, 5)
            S = ops.gram_batched(torch.empty(3, 40, 9, dtype=f32))
            assert S.shape == (3, 9, 9) and S.dtype == f32
    finally:
        lib._destroy()


# ------------------------------------------------------------------------------------------
# Kernel parity on a GPU (skipped unless the extension is built and a device is visible)
# ------------------------------------------------------------------------------------------

gpu = pytest.mark.skipif(
    not (_cuda.AVAILABLE and torch.cuda.is_available()),
    reason=f"needs the built CUDA extension and a GPU ({_cuda.UNAVAILABLE_REASON or 'no device'})",
)
DEV = "cuda"
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}
# gradient rows are sums of ~nnz/m products of size ~|e|·1 ≈ 10: cancellation needs more atol
GTOL = {torch.float32: dict(rtol=1e-4, atol=1e-3), torch.float64: dict(rtol=1e-10, atol=1e-10)}


def _problem(m, n, d, nnz, dtype, idx_dtype, seed=0, misaligned=False):
    g = torch.Generator().manual_seed(seed)
    if misaligned:  # contiguous, but 4/8 bytes past a 16-byte boundary: scalar load path
        U = torch.randn(m * d + 1, generator=g, dtype=dtype)[1:].view(m, d)
        Vt = torch.randn(n * d + 1, generator=g, dtype=dtype)[1:].view(n, d)
    else:
        U = torch.randn(m, d, generator=g, dtype=dtype)
        Vt = torch.randn(n, d, generator=g, dtype=dtype)
    flat = torch.randperm(m * n, generator=g)[:nnz]
    rows, cols = (flat // n).to(idx_dtype), (flat % n).to(idx_dtype)
    vals = torch.randn(nnz, generator=g, dtype=dtype)
    return U.to(DEV), Vt.to(DEV), rows.to(DEV), cols.to(DEV), vals.to(DEV)


def _compressed(major, minor, size, *others):
    """Sort COO by (major, minor); return (ptr, minor sorted, others sorted...)."""
    order = torch.argsort(major.long() * (int(minor.max()) + 1 if minor.numel() else 1) + minor.long(), stable=True)
    counts = torch.bincount(major.long(), minlength=size)
    ptr = torch.zeros(size + 1, dtype=major.dtype, device=major.device)
    ptr[1:] = torch.cumsum(counts, 0).to(major.dtype)
    return (ptr, minor[order]) + tuple(o[order] for o in others)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("d", [1, 3, 8, 32, 64, 100, 128, 200])
def test_sparse_residual_and_grads_match_reference(dtype, idx_dtype, d):
    m, n, nnz = 97, 61, 900
    U, Vt, rows, cols, vals = _problem(m, n, d, nnz, dtype, idx_dtype, seed=d)
    e, loss = _cuda.sparse_residual(U, Vt, rows, cols, vals)
    e_ref = (U[rows.long()] * Vt[cols.long()]).sum(1) - vals
    torch.testing.assert_close(e, e_ref, **TOL[dtype])
    assert loss.dtype == dtype and loss.dim() == 0
    # float64 accumulation; float32 output is that sum rounded once
    loss_rtol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(loss.double(), 0.5 * (e.double() ** 2).sum(), rtol=loss_rtol, atol=0)

    scale = 0.75
    R_ref = torch.zeros(m, d, dtype=dtype, device=DEV).index_add_(0, rows.long(), e_ref[:, None] * Vt[cols.long()]) * scale
    Q_ref = torch.zeros(n, d, dtype=dtype, device=DEV).index_add_(0, cols.long(), e_ref[:, None] * U[rows.long()]) * scale
    row_ptr, col_idx, e_csr = _compressed(rows, cols, m, e_ref)
    R = _cuda.sparse_grad_rows(row_ptr, col_idx, e_csr, Vt, scale)
    torch.testing.assert_close(R, R_ref, **GTOL[dtype])
    col_ptr, row_idx, e_csc = _compressed(cols, rows, n, e_ref)
    Q = _cuda.sparse_grad_cols(col_ptr, row_idx, e_csc, U, scale)
    torch.testing.assert_close(Q, Q_ref, **GTOL[dtype])
    Qa = _cuda.sparse_grad_cols_atomic(rows, cols, e_ref, U, n, scale)
    torch.testing.assert_close(Qa, Q_ref, **GTOL[dtype])


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [4, 5, 64])
def test_sparse_kernels_scalar_path_on_misaligned_rows(dtype, d):
    m, n, nnz = 40, 30, 300
    U, Vt, rows, cols, vals = _problem(m, n, d, nnz, dtype, torch.int64, misaligned=True)
    assert U.data_ptr() % 16 != 0 and U.is_contiguous()
    e, _ = _cuda.sparse_residual(U, Vt, rows, cols, vals)
    torch.testing.assert_close(e, (U[rows] * Vt[cols]).sum(1) - vals, **TOL[dtype])
    row_ptr, col_idx, e_csr = _compressed(rows, cols, m, e)
    R = _cuda.sparse_grad_rows(row_ptr, col_idx, e_csr, Vt)
    R_ref = torch.zeros(m, d, dtype=dtype, device=DEV).index_add_(0, rows, e[:, None] * Vt[cols])
    torch.testing.assert_close(R, R_ref, **GTOL[dtype])


@gpu
@pytest.mark.gpu
def test_sparse_edge_cases_empty_rows_and_no_entries():
    dtype = torch.float32
    U, Vt, rows, cols, vals = _problem(10, 8, 16, 20, dtype, torch.int64)
    keep = rows < 5  # rows 5..9 become empty
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    e, _ = _cuda.sparse_residual(U, Vt, rows, cols, vals)
    row_ptr, col_idx, e_csr = _compressed(rows, cols, 10, e)
    R = _cuda.sparse_grad_rows(row_ptr, col_idx, e_csr, Vt, -2.0)
    assert torch.equal(R[5:], torch.zeros_like(R[5:]))
    assert not torch.signbit(R[5:]).any()  # exact +0, not -0 from 0 * (-2)
    empty = torch.empty(0, dtype=torch.int64, device=DEV)
    e0, loss0 = _cuda.sparse_residual(U, Vt, empty, empty, torch.empty(0, dtype=dtype, device=DEV))
    assert e0.numel() == 0 and float(loss0) == 0.0
    R0 = _cuda.sparse_grad_rows(torch.zeros(11, dtype=torch.int64, device=DEV), empty, e0, Vt)
    assert torch.equal(R0, torch.zeros(10, 16, device=DEV))


@gpu
@pytest.mark.gpu
def test_argument_errors_name_the_argument():
    U, Vt, rows, cols, vals = _problem(10, 8, 16, 20, torch.float32, torch.int64)
    with pytest.raises(RuntimeError, match="U must be a CUDA tensor"):
        _cuda.sparse_residual(U.cpu(), Vt, rows, cols, vals)
    with pytest.raises(RuntimeError, match="Vt must be"):
        _cuda.sparse_residual(U, Vt.double(), rows, cols, vals)
    with pytest.raises(RuntimeError, match="cols must be"):
        _cuda.sparse_residual(U, Vt, rows, cols.int(), vals)
    with pytest.raises(RuntimeError, match="values must have 20 entries"):
        _cuda.sparse_residual(U, Vt, rows, cols, vals[:-1])
    with pytest.raises(RuntimeError, match="U must be contiguous"):
        _cuda.sparse_residual(U.t().contiguous().t(), Vt, rows, cols, vals)
    with pytest.raises(RuntimeError, match="Y must have d <= 128"):
        _cuda.gram_batched(torch.zeros(1, 3, 129, device=DEV))


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [1, 7, 32, 33, 128])
@pytest.mark.parametrize("r", [0, 5, 1000])
def test_gram_batched(dtype, d, r):
    Y = torch.randn(3, r, d, dtype=dtype, device=DEV)
    S = _cuda.gram_batched(Y)
    ref = Y.transpose(1, 2) @ Y
    torch.testing.assert_close(S, ref, rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=1e-3 if dtype == torch.float32 else 1e-9)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("idx", [torch.int32, torch.int64])
@pytest.mark.parametrize("sort", [False, True])
def test_sparse_rq_composite_matches_index_add(dtype, idx, sort):
    """_cuda.sparse_rq (compressed rows + atomic or CSC columns): the CUDA entry of the sparse
    op's dispatch table, against index_add_ in float64."""
    U, Vt, rows, cols, vals = _problem(30, 20, 33, 400, dtype, idx)
    if sort:
        o = torch.argsort(rows.long() * 20 + cols.long())
        rows, cols = rows[o], cols[o]
    e = torch.randn(rows.numel(), dtype=dtype, device=DEV)
    for det in (False, True):
        torch.use_deterministic_algorithms(det)
        try:
            R, Q = _cuda.sparse_rq(U, Vt, rows, cols, e, 0.5, 30, 20)
        finally:
            torch.use_deterministic_algorithms(False)
        r64, c64, e64 = rows.long(), cols.long(), 0.5 * e.double()
        Rr = torch.zeros(30, 33, dtype=torch.float64, device=DEV).index_add_(0, r64, e64[:, None] * Vt.double()[c64])
        Qr = torch.zeros(20, 33, dtype=torch.float64, device=DEV).index_add_(0, c64, e64[:, None] * U.double()[r64])
        tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(R.double(), Rr, **tol)
        torch.testing.assert_close(Q.double(), Qr, **tol)


@gpu
@pytest.mark.gpu
def test_ops_trace_under_torch_compile():
    U, Vt, rows, cols, vals = _problem(20, 15, 8, 50, torch.float32, torch.int64)

    def f(U, Vt):
        e, loss = torch.ops.dlrl.sparse_residual(U, Vt, rows, cols, vals)
        return e * 2, loss

    e, loss = torch.compile(f, backend="aot_eager", fullgraph=True)(U, Vt)
    e_ref, loss_ref = f(U, Vt)
    torch.testing.assert_close(e, e_ref)
    torch.testing.assert_close(loss, loss_ref)
