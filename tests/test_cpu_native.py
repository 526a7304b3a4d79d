"""The native CPU kernels (``dlrl_kernels/cpu``) against their pure-PyTorch twin.

Fresh random inputs every run (the seed is printed on failure), odd shapes, unsorted and
duplicate indices, int32 and int64 indices, float32 and float64, compared with a float64
evaluation; a float64 gradcheck of the op through the native backward; the two-thread split;
and the switch-off (``DLRL_NATIVE=0``) that makes ``auto`` fall back to the reference.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import dlrl_kernels as dk
from dlrl_kernels import _dispatch, cpu
from dlrl_kernels.ops import masked_residual_sparse as mrs

pytestmark = pytest.mark.skipif(not cpu.status()[0], reason=f"native CPU kernels unavailable: {cpu.status()[1]}")


def _seed():
    return int.from_bytes(os.urandom(4), "little")


def _case(seed, m, n, d, nnz, dtype, idx_dtype=torch.int64, sort=False, ill=False):
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(m, d, generator=g, dtype=torch.float64)
    Vt = torch.randn(n, d, generator=g, dtype=torch.float64)
    if ill:  # rank-deficient and badly scaled factors
        U[:, d // 2:] = 0.0 if d > 1 else U[:, d // 2:]
        U = U * torch.logspace(-3, 3, d, dtype=torch.float64)
    rows = torch.randint(0, m, (nnz,), generator=g)
    cols = torch.randint(0, n, (nnz,), generator=g)
    if sort:
        o = torch.argsort(rows * n + cols)
        rows, cols = rows[o], cols[o]
    values = torch.randn(nnz, generator=g, dtype=torch.float64)
    e = torch.randn(nnz, generator=g, dtype=torch.float64)
    return (U.to(dtype), Vt.to(dtype), rows.to(idx_dtype), cols.to(idx_dtype), values.to(dtype), e.to(dtype))


def _truth(U, Vt, rows, cols, values, e, scale, m, n):
    U, Vt, values, e = U.double(), Vt.double(), values.double(), e.double()
    r, c = rows.long(), cols.long()
    res = (U[r] * Vt[c]).sum(1) - values
    R = torch.zeros(m, U.shape[1], dtype=torch.float64).index_add_(0, r, scale * e[:, None] * Vt[c])
    Q = torch.zeros(n, U.shape[1], dtype=torch.float64).index_add_(0, c, scale * e[:, None] * U[r])
    return res, R, Q


def _tol(dtype, ref):
    scale = float(ref.abs().max()) if ref.numel() else 1.0
    return (1e-5 if dtype == torch.float32 else 1e-12) * max(scale, 1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m,n,d,nnz", [(1, 1, 1, 1), (7, 5, 3, 40), (13, 11, 8, 200), (31, 17, 20, 500),
                                       (9, 40, 33, 300), (50, 3, 7, 1000)])
@pytest.mark.parametrize("variant", ["unsorted", "sorted-int32", "ill"])
def test_native_matches_float64_truth(dtype, m, n, d, nnz, variant):
    seed = _seed()
    U, Vt, rows, cols, values, e = _case(seed, m, n, d, nnz, dtype, torch.int32 if "int32" in variant else torch.int64,
                                         sort="sorted" in variant, ill=variant == "ill")
    res, R, Q = _truth(U, Vt, rows, cols, values, e, 0.75, m, n)
    got = cpu.sparse_residual(U, Vt, rows, cols, values)
    gR, gQ = cpu.sparse_rq(U, Vt, rows, cols, e, 0.75, m, n)
    assert got.dtype == dtype and gR.dtype == dtype and gQ.dtype == dtype, f"seed {seed}"
    for name, a, b in (("e", got, res), ("R", gR, R), ("Q", gQ, Q)):
        err = float((a.double() - b).abs().max()) if b.numel() else 0.0
        assert err <= _tol(dtype, b) * d, f"{name}: error {err:.3g} (seed {seed}, {variant}, {dtype}, d={d})"
    # and the pure-PyTorch twin agrees with the same truth (the test compares like with like)
    ref = mrs.REFERENCE
    torch.testing.assert_close(ref.sparse_residual(U, Vt, rows.long(), cols.long(), values).double(), res,
                               rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=_tol(dtype, res) * d,
                               msg=lambda s: f"{s} (seed {seed})")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m,n,d,nnz", [(1, 1, 1, 1), (7, 5, 3, 40), (13, 11, 8, 200), (9, 40, 33, 300),
                                       (50, 3, 7, 1000), (3, 2, 200, 30)])
@pytest.mark.parametrize("variant", ["unsorted", "sorted-int32", "ill"])
def test_one_pass_loss_grad_matches_float64_truth(dtype, m, n, d, nnz, variant):
    """sparse_loss_grad (the training loss's forward: e, ½Σe², R, Q in one pass) against a
    float64 evaluation; d = 200 takes the generic (unspecialised) build."""
    seed = _seed()
    U, Vt, rows, cols, values, _ = _case(seed, m, n, d, nnz, dtype, torch.int32 if "int32" in variant else torch.int64,
                                         sort="sorted" in variant, ill=variant == "ill")
    res = (U.double()[rows.long()] * Vt.double()[cols.long()]).sum(1) - values.double()
    _, R, Q = _truth(U, Vt, rows, cols, values, res, 1.0, m, n)
    J, e, gR, gQ = cpu.sparse_loss_grad(U, Vt, rows, cols, values)
    assert J.dtype == torch.float64 and e.dtype == gR.dtype == gQ.dtype == dtype, f"seed {seed}"
    want_J = 0.5 * float(res @ res)
    assert abs(float(J) - want_J) <= (1e-5 if dtype == torch.float32 else 1e-12) * d * max(want_J, 1.0), \
        f"J {float(J)} vs {want_J} (seed {seed}, {variant}, {dtype})"
    for name, a, b in (("e", e, res), ("R", gR, R), ("Q", gQ, Q)):
        err = float((a.double() - b).abs().max())
        assert err <= _tol(dtype, b) * d, f"{name}: error {err:.3g} (seed {seed}, {variant}, {dtype}, d={d})"


def test_one_pass_two_threads_match_one(monkeypatch):
    """The split run (second half into its own R, Q, added) equals one thread to rounding: the
    sums over a row that straddles the split are added in another order."""
    seed = _seed()
    m, n, d, nnz = 60, 45, 20, 5000
    U, Vt, rows, cols, values, _ = _case(seed, m, n, d, nnz, torch.float64, sort=True)
    one = cpu.sparse_loss_grad(U, Vt, rows, cols, values)
    monkeypatch.setattr(cpu, "PARALLEL_MIN_NNZ", 10)
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = cpu.sparse_loss_grad(U, Vt, rows, cols, values)
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(one[1], two[1]), f"seed {seed}"  # e: per entry, bit-equal
    for a, b in zip((one[0], one[2], one[3]), (two[0], two[2], two[3])):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-12 * float(a.abs().max()), msg=lambda s: f"{s} (seed {seed})")


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_loss_op_gradcheck_when_the_residual_is_also_used(backend):
    """The loss op's backward with both outputs used downstream (∂L/∂J from the forward's
    R, Q, plus ∂L/∂e through another R, Q pass) and with grad off in the forward (recomputed)."""
    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    m, n, d, nnz = 7, 6, 4, 23
    U = torch.randn(m, d, generator=g, dtype=torch.float64, requires_grad=True)
    Vt = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    rows = torch.randint(0, m, (nnz,), generator=g)
    cols = torch.randint(0, n, (nnz,), generator=g)
    values = torch.randn(nnz, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(nnz, generator=g, dtype=torch.float64)
    none4 = (None, None, None, None)

    def f(a, b, v):
        J, e, _, _ = mrs.loss_op(a, b, rows, cols, v, backend, True, *none4)
        return 0.3 * J + (w * e).sum()

    assert torch.autograd.gradcheck(f, (U, Vt, values)), f"seed {seed} ({backend})"

    def f_nograd(a, b, v):  # with_grad=False: the backward computes R, Q itself
        return mrs.loss_op(a, b, rows, cols, v, backend, False, *none4)[0]

    assert torch.autograd.gradcheck(f_nograd, (U, Vt, values)), f"seed {seed} ({backend})"
    with torch.no_grad():
        J, e, R, Q = mrs.loss_op(U, Vt, rows, cols, values, backend, mrs.wants_grad(U, Vt), *none4)
    assert R.shape[0] == 0 and Q.shape[0] == 0, "no_grad: the gradients must not be computed"


def test_native_two_threads_match_one(monkeypatch):
    seed = _seed()
    m, n, d, nnz = 60, 45, 20, 5000
    U, Vt, rows, cols, values, e = _case(seed, m, n, d, nnz, torch.float64, sort=True)
    one = (cpu.sparse_residual(U, Vt, rows, cols, values), *cpu.sparse_rq(U, Vt, rows, cols, e, 1.5, m, n))
    monkeypatch.setattr(cpu, "PARALLEL_MIN_NNZ", 10)
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = (cpu.sparse_residual(U, Vt, rows, cols, values), *cpu.sparse_rq(U, Vt, rows, cols, e, 1.5, m, n))
    finally:
        torch.set_num_threads(prev)
    for a, b in zip(one, two):  # same per-entry arithmetic, only split differently: bit-equal
        assert torch.equal(a, b), f"seed {seed}"


def test_native_op_gradcheck_float64():
    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    m, n, d, nnz = 6, 5, 3, 17
    Xs = [torch.randn(m, d, generator=g, dtype=torch.float64, requires_grad=True),
          torch.randn(d, d, generator=g, dtype=torch.float64, requires_grad=True),
          torch.randn(d, n, generator=g, dtype=torch.float64, requires_grad=True)]
    rows = torch.randint(0, m, (nnz,), generator=g)
    cols = torch.randint(0, n, (nnz,), generator=g)
    values = torch.randn(nnz, generator=g, dtype=torch.float64, requires_grad=True)

    def f(a, b, c, v):
        return dk.masked_residual_sparse([a, b, c], rows, cols, v, backend="cpu")

    assert torch.autograd.gradcheck(f, (*Xs, values)), f"seed {seed}"
    pat = mrs.sparse_pattern(rows, cols, (m, n))
    vp = values.detach()[pat.order].requires_grad_()

    def loss(a, b, c, v):
        return dk.masked_loss_sparse([a, b, c], pat.rows, pat.cols, v, backend="cpu", pattern=pat)

    assert torch.autograd.gradcheck(loss, (*Xs, vp)), f"seed {seed}"


def test_native_and_reference_give_the_same_loss_and_gradients():
    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    m, n, d, nnz = 40, 30, 20, 600
    pat_rows = torch.randint(0, m, (nnz,), generator=g)
    pat_cols = torch.randint(0, n, (nnz,), generator=g)
    pat = mrs.sparse_pattern(pat_rows, pat_cols, (m, n))
    values = torch.randn(nnz, generator=g, dtype=torch.float32)
    base = [torch.randn(m, d, generator=g), torch.randn(d, d, generator=g), torch.randn(d, n, generator=g)]
    out = {}
    for be in ("cpu", "reference"):
        Xs = [x.clone().requires_grad_() for x in base]
        J = dk.masked_loss_sparse(Xs, pat.rows, pat.cols, values, backend=be, pattern=pat)
        J.backward()
        out[be] = (J.detach(), *[x.grad for x in Xs])
    for a, b in zip(out["cpu"], out["reference"]):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-4 * float(b.abs().max()),
                                   msg=lambda s: f"{s} (seed {seed})")


def test_nan_in_the_factors_stays_visible():
    U = torch.randn(4, 3, dtype=torch.float64)
    U[2, 1] = float("nan")
    Vt = torch.randn(5, 3, dtype=torch.float64)
    rows = torch.tensor([0, 2, 3])
    cols = torch.tensor([1, 4, 0])
    e = cpu.sparse_residual(U, Vt, rows, cols, torch.zeros(3, dtype=torch.float64) + 0.5)
    assert torch.isnan(e[1]) and torch.isfinite(e[[0, 2]]).all()
    R, Q = cpu.sparse_rq(U, Vt, rows, cols, torch.ones(3, dtype=torch.float64), 1.0, 4, 5)
    assert torch.isnan(Q[4]).any() and torch.isfinite(R).all()


def test_auto_picks_native_on_cpu_and_backend_cpu_is_refused_elsewhere():
    name, _ = mrs.TABLE.resolve("auto", torch.device("cpu"))
    assert name == "cpu"
    # an op without a native kernel runs its reference (the CPU path) under backend="cpu"
    assert _dispatch.resolve("cpu", torch.device("cpu"), "spd_power", cpu_ok=False) == "reference"
    with pytest.raises(RuntimeError, match="on cuda"):
        _dispatch.resolve("cpu", torch.device("cuda"), "masked_residual_sparse", cpu_ok=True)


def test_switched_off_falls_back_to_the_reference(tmp_path):
    code = ("import torch; from dlrl_kernels import _dispatch, cpu; "
            "from dlrl_kernels.ops import masked_residual_sparse as m; "
            "print(cpu.status()[0], m.TABLE.resolve('auto', torch.device('cpu'))[0]);"
            "import pytest\n"
            "try:\n    m.TABLE.resolve('cpu', torch.device('cpu'))\nexcept RuntimeError as e:\n    print('refused', e)")
    env = {**os.environ, "DLRL_NATIVE": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "False reference"
    assert "DLRL_NATIVE=0" in out.stdout


def test_build_failure_is_reported_not_raised(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("DLRL_CACHE_DIR", str(tmp_path / "cache"))
    lib, why = cpu._build()
    assert lib is None and "compiler" in why


def test_builds_from_scratch_into_an_empty_cache(tmp_path, monkeypatch):
    """What a fresh machine does: compile (generic and one specialised build) into an empty
    cache, load, and reuse the cached file on the next build."""
    monkeypatch.setenv("DLRL_CACHE_DIR", str(tmp_path / "cache"))
    for d in (0, 13):
        lib, why = cpu._build(d)
        assert lib is not None, why
        assert lib.dlrl_native_dim() == d
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 2 and all(f.endswith(".so") for f in files), files
    lib, _ = cpu._build(13)  # cached: no compiler needed now
    assert lib is not None
