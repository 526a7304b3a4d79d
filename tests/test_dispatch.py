"""Backend dispatch (``dlrl_kernels/_dispatch.py``): which implementation actually runs.

Each test records the calls that reach the Triton modules (monkeypatched spies), so "auto
picks the reference on CPU" is checked by what ran, not only by ``resolve``'s answer.
"""
import pytest
import torch

import dlrl_kernels as dk
from dlrl_kernels import _dispatch
from dlrl_kernels._triton import masked_residual as k_dense
from dlrl_kernels._triton import masked_residual_sparse as k_sparse
from dlrl_kernels._triton import small_matrix as k_small

CPU = torch.device("cpu")


@pytest.fixture
def spy(monkeypatch):
    """Wrap every public Triton entry point; returns the list of names that were called."""
    calls = []
    for mod, names in (
        (k_dense, ("dense_residual_loss", "dense_residual_rq")),
        (k_sparse, ("sparse_residual", "sparse_rq")),
        (k_small, ("gram", "gram_pinv_newton", "newton_power", "newton_power_backward", "power_iteration")),
    ):
        for name in names:
            if not hasattr(mod, name):  # the small-matrix module is being redesigned (issue 11)
                continue
            orig = getattr(mod, name)

            def wrapped(*a, __orig=orig, __name=name, **kw):
                calls.append(__name)
                return __orig(*a, **kw)

            monkeypatch.setattr(mod, name, wrapped)
    return calls


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("DLRL_BACKEND", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def problem(gen, m=9, n=7, d=4):
    U = torch.randn(m, d, generator=gen, dtype=torch.float64, requires_grad=True)
    V = torch.randn(d, n, generator=gen, dtype=torch.float64, requires_grad=True)
    X = torch.randn(m, n, generator=gen, dtype=torch.float64)
    return [U, V], X


def run_all_ops(gen, backend=None):
    """Every op family once (forward + backward where differentiable)."""
    kw = {} if backend is None else {"backend": backend}
    fs, X = problem(gen)
    dk.masked_loss(fs, X, torch.rand(9, 7, generator=gen) < 0.5, **kw).backward()
    rows = torch.randint(0, 9, (20,), generator=gen)
    cols = torch.randint(0, 7, (20,), generator=gen)
    dk.masked_loss_sparse(fs, rows, cols, torch.randn(20, generator=gen, dtype=torch.float64), **kw).backward()
    Y = torch.randn(2, 12, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    dk.gram(Y, **kw).sum().backward()
    dk.spectral_norm_sq(Y, method="power", **kw)
    dk.spd_power(Y.detach().transpose(-1, -2) @ Y.detach(), 0.5, method="newton", **kw)
    dk.pinv(Y.detach(), method="newton", **kw)
    dk.lowrank_block(Y, Y.detach().clone(), 1.0, method="newton", **kw).sum().backward()


def test_auto_picks_reference_on_cpu_even_under_the_interpreter(gen, spy, clean_env):
    assert _dispatch.interpret_mode()
    for op in ("masked_loss", "masked_loss_sparse", "gram", "spd_power", "pinv"):
        assert _dispatch.resolve("auto", CPU, op, triton_ok=True, cuda_ok=True) == "reference"
    run_all_ops(gen)  # default backend="auto"
    run_all_ops(gen, "auto")
    assert spy == []


def test_explicit_triton_runs_the_kernels(gen, spy, clean_env):
    run_all_ops(gen, "triton")
    for name in ("dense_residual_loss", "dense_residual_rq", "sparse_residual", "sparse_rq"):
        assert name in spy, name
    for name in ("gram", "gram_pinv_newton", "newton_power", "newton_power_backward", "power_iteration"):
        if hasattr(k_small, name):
            assert name in spy, name


def test_env_override_of_auto(gen, spy, monkeypatch, clean_env):
    monkeypatch.setenv("DLRL_BACKEND", "triton")
    assert _dispatch.resolve("auto", CPU, "masked_loss") == "triton"
    fs, X = problem(gen)
    dk.masked_loss(fs, X)
    assert spy == ["dense_residual_loss"]
    # an explicit choice is not overridden by the environment
    dk.masked_loss(fs, X, backend="reference")
    assert spy == ["dense_residual_loss"]
    monkeypatch.setenv("DLRL_BACKEND", "reference")
    dk.masked_loss(fs, X)
    assert spy == ["dense_residual_loss"]
    dk.masked_loss(fs, X, backend="triton")
    assert spy == ["dense_residual_loss"] * 2


def test_env_override_to_cuda_fails_clearly(gen, monkeypatch, clean_env):
    if _dispatch.cuda_ext_status()[0] and torch.cuda.is_available():
        pytest.skip("the CUDA extension is available here")
    monkeypatch.setenv("DLRL_BACKEND", "cuda")
    fs, X = problem(gen)
    with pytest.raises(RuntimeError, match="backend='cuda'"):
        dk.masked_loss_sparse(fs, torch.tensor([0]), torch.tensor([1]), torch.ones(1, dtype=torch.float64))


@pytest.mark.parametrize("bad", ["tpu", "Triton", "", "gpu"])
def test_unknown_env_value(gen, monkeypatch, clean_env, bad):
    monkeypatch.setenv("DLRL_BACKEND", bad)
    fs, X = problem(gen)
    with pytest.raises(ValueError, match=f"DLRL_BACKEND: expected one of .*got {bad!r}"):
        dk.masked_loss(fs, X)


@pytest.mark.parametrize("bad", ["tpu", "Triton", "", None])
def test_unknown_backend_argument_names_it(gen, clean_env, bad):
    fs, X = problem(gen)
    Y = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    calls = [
        lambda: dk.masked_loss(fs, X, backend=bad),
        lambda: dk.masked_residual_sparse(fs, torch.tensor([0]), torch.tensor([1]), torch.ones(1, dtype=torch.float64), backend=bad),
        lambda: dk.gram(Y, backend=bad),
        lambda: dk.pinv(Y, backend=bad),
        lambda: dk.spd_power(Y.t() @ Y, 0.5, backend=bad),
        lambda: dk.spectral_norm_sq(Y, backend=bad),
        lambda: dk.lowrank_block(Y, Y, 1.0, backend=bad),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=f"backend: expected one of .*got {bad!r}"):
            call()


def test_forced_cuda_without_extension(gen, clean_env):
    ok, why = _dispatch.cuda_ext_status()
    if ok and torch.cuda.is_available():
        pytest.skip("the CUDA extension is available here")
    fs, X = problem(gen)
    args = (fs, torch.tensor([0]), torch.tensor([1]), torch.ones(1, dtype=torch.float64))
    msg = "unavailable" if not ok else "on cpu tensors"
    for op in (dk.masked_loss_sparse, dk.masked_residual_sparse):
        with pytest.raises(RuntimeError, match=f"backend='cuda' requested for {op.__name__}.*{msg}"):
            op(*args, backend="cuda")
    # ops without a CUDA kernel say so instead
    with pytest.raises(RuntimeError, match="backend='cuda': op masked_loss has no CUDA kernel"):
        dk.masked_loss(fs, X, backend="cuda")
    gram_table = _dispatch.TABLES.get("gram")
    has_cuda = gram_table is not None and gram_table.has("cuda")
    with pytest.raises(RuntimeError, match="requested for gram" if has_cuda else "backend='cuda': op gram has no CUDA kernel"):
        dk.gram(X, backend="cuda")


def test_forced_triton_on_cpu_needs_the_interpreter(gen, monkeypatch, clean_env):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    fs, X = problem(gen)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        dk.masked_loss(fs, X, backend="triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        dk.spd_power(X.t() @ X, 0.5, backend="triton")
    # auto still works (reference)
    dk.masked_loss(fs, X)


def test_single_factor_has_no_triton_kernel(gen, clean_env):
    X = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="has no Triton kernel"):
        dk.masked_loss([X.clone()], X, backend="triton")
    dk.masked_loss([X.clone()], X, backend="auto")


def test_triton_unimportable_is_reported(monkeypatch, clean_env):
    monkeypatch.setattr(_dispatch, "triton_status", lambda: (False, "triton is not importable (test)"))
    with pytest.raises(RuntimeError, match="triton is not importable"):
        _dispatch.resolve("triton", CPU, "gram")
    assert _dispatch.resolve("auto", torch.device("cuda"), "gram") == "reference"


def test_describe(clean_env):
    info = dk.backend_info()
    assert info["torch"] == torch.__version__
    assert info["triton_interpret"] is True
    assert set(info) >= {"triton", "cuda_extension", "cuda_extension_reason", "cuda_device"}


# ----------------------------------------------------------------------------- op tables
# Every OpTable (``_dispatch.TABLES``) is walked with a stand-in CUDA extension: the raw ops of
# ``dlrl_kernels._cuda`` implemented in torch, so the composite entries built on them (e.g.
# the sparse ``sparse_rq`` from the compressed-row / atomic kernels) really run here.
import importlib  # noqa: E402
import inspect  # noqa: E402
import pkgutil  # noqa: E402

import dlrl_kernels.ops  # noqa: E402
from dlrl_kernels import _cuda  # noqa: E402


def _import_all_ops():
    for info in pkgutil.iter_modules(dlrl_kernels.ops.__path__):
        importlib.import_module(f"dlrl_kernels.ops.{info.name}")
    return dict(_dispatch.TABLES)


def _fake_compressed(ptr, idx, e, dense, scale=1.0):
    owner = torch.repeat_interleave(torch.arange(ptr.numel() - 1), (ptr[1:] - ptr[:-1]).long())
    out = torch.zeros(ptr.numel() - 1, dense.shape[1], dtype=dense.dtype)
    return out.index_add_(0, owner, scale * e[:, None] * dense[idx.long()])


def _fake_residual(U, Vt, rows, cols, values):
    e = (U[rows.long()] * Vt[cols.long()]).sum(1) - values
    return e, 0.5 * (e * e).sum()


FAKE_CUDA_OPS = {
    "sparse_residual": _fake_residual,
    "sparse_grad_rows": _fake_compressed,
    "sparse_grad_cols": _fake_compressed,
    "sparse_grad_cols_atomic": lambda rows, cols, e, U, n, scale=1.0: torch.zeros(n, U.shape[1], dtype=U.dtype).index_add_(
        0, cols.long(), scale * e[:, None] * U[rows.long()]),
    "gram_batched": lambda Y: Y.transpose(-1, -2) @ Y,
}


def _reset_tables():
    for t in _dispatch.TABLES.values():
        t.reset()
    _dispatch.cuda_ext_status.cache_clear()


@pytest.fixture
def fake_cuda(monkeypatch):
    """dlrl_kernels._cuda as if the extension were built, its raw ops implemented in torch."""
    monkeypatch.setattr(_cuda, "AVAILABLE", True)
    monkeypatch.setattr(_cuda, "UNAVAILABLE_REASON", "")
    monkeypatch.setattr(_cuda, "_op", lambda name: FAKE_CUDA_OPS[name])
    _reset_tables()
    yield
    monkeypatch.undo()
    _reset_tables()


def _required(fn):
    ps = [p for p in inspect.signature(fn).parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return [p.name for p in ps if p.default is inspect.Parameter.empty], [p for p in ps if p.default is not inspect.Parameter.empty]


def test_every_cuda_op_has_a_stand_in():
    assert set(_cuda.OPS) <= set(FAKE_CUDA_OPS), "add a torch stand-in for the new CUDA op to FAKE_CUDA_OPS"


def test_every_table_entry_loads_with_the_reference_signature(fake_cuda, clean_env):
    tables = _import_all_ops()
    for op in ("masked_residual", "masked_loss", "masked_residual_sparse", "masked_loss_sparse"):
        assert op in tables, f"no OpTable for {op}"
    for op, table in tables.items():
        ref = table.load("reference")
        for backend in ("reference", "triton", "cuda"):
            if not table.has(backend):
                continue
            impl = table.load(backend)
            for name in table.interface:
                fn = getattr(impl, name)
                assert callable(fn), (op, backend, name)
                want, _ = _required(getattr(ref, name))
                got, extra = _required(fn)
                assert got == want, f"{op}/{backend}.{name}: parameters {got}, the reference has {want}"


@pytest.mark.parametrize("extension", [True, False])
def test_auto_only_picks_entries_that_exist(extension, request, clean_env):
    if extension:
        request.getfixturevalue("fake_cuda")
    tables = _import_all_ops()
    for op, table in tables.items():
        for dev in (CPU, torch.device("cuda")):
            for triton_ok in (True, False):
                for cuda_ok in (True, False):
                    name, impl = table.resolve("auto", dev, triton_ok=triton_ok, cuda_ok=cuda_ok)
                    assert table.has(name), (op, dev, name)
                    assert impl is table.load(name)
                    if dev.type == "cpu":
                        # the native CPU kernel when the op has one and it compiled here
                        want = "cpu" if table.has("cpu") and _dispatch.native_status()[0] else "reference"
                        assert name == want, (op, name)
                    elif extension and cuda_ok and table.has("cuda"):
                        assert name == "cuda", op


def _sparse_case(gen, idx_dtype, sort):
    m, n, d, nnz = 11, 9, 5, 40
    U = torch.randn(m, d, generator=gen, dtype=torch.float64)
    Vt = torch.randn(n, d, generator=gen, dtype=torch.float64)
    rows = torch.randint(0, m, (nnz,), generator=gen)
    cols = torch.randint(0, n, (nnz,), generator=gen)
    if sort:
        o = torch.argsort(rows * n + cols)
        rows, cols = rows[o], cols[o]
    return U, Vt, rows.to(idx_dtype), cols.to(idx_dtype), torch.randn(nnz, generator=gen, dtype=torch.float64), m, n


@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("sort", [False, True])
@pytest.mark.parametrize("deterministic", [False, True])
def test_cuda_sparse_entry_matches_the_reference(gen, fake_cuda, idx_dtype, sort, deterministic):
    from dlrl_kernels.ops import masked_residual_sparse as ops_sparse

    U, Vt, rows, cols, values, m, n = _sparse_case(gen, idx_dtype, sort)
    impl, ref = ops_sparse.TABLE.load("cuda"), ops_sparse.TABLE.load("reference")
    e = impl.sparse_residual(U, Vt, rows, cols, values)
    torch.testing.assert_close(e, ref.sparse_residual(U, Vt, rows, cols, values))
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        got = impl.sparse_rq(U, Vt, rows, cols, e, 0.5, m, n)
    finally:
        torch.use_deterministic_algorithms(prev)
    want = ref.sparse_rq(U, Vt, rows, cols, e, 0.5, m, n)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_cuda_sparse_backward_runs_through_the_table(gen, fake_cuda):
    """The former crash: the sparse backward on the CUDA entry (``_cuda().sparse_rq`` did not
    exist). Forward and backward of the custom op with backend "cuda" on the stand-in."""
    U, Vt, rows, cols, values, m, n = _sparse_case(gen, torch.int64, False)
    U.requires_grad_(True)
    Vt.requires_grad_(True)
    none4 = (None, None, None, None)
    e = torch.ops.dlrl.masked_residual_sparse(U, Vt, rows, cols, values, "cuda", "masked_loss_sparse", *none4)
    (0.5 * e @ e).backward()
    U2, Vt2 = U.detach().clone().requires_grad_(), Vt.detach().clone().requires_grad_()
    e2 = torch.ops.dlrl.masked_residual_sparse(U2, Vt2, rows, cols, values, "reference", "masked_loss_sparse", *none4)
    (0.5 * e2 @ e2).backward()
    torch.testing.assert_close(U.grad, U2.grad)
    torch.testing.assert_close(Vt.grad, Vt2.grad)
