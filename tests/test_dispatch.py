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
    for name in ("dense_residual_loss", "dense_residual_rq", "sparse_residual", "sparse_rq", "gram",
                 "gram_pinv_newton", "newton_power", "newton_power_backward", "power_iteration"):
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
    with pytest.raises(RuntimeError, match="backend='cuda': op gram has no CUDA kernel"):
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
