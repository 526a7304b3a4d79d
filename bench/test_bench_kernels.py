"""pytest-benchmark cases for the kernel families (small sizes; not part of CI's ``tests/``).

    python -m pytest bench/test_bench_kernels.py --benchmark-columns=median,iqr,rounds

Each case times the public op with ``backend="auto"`` (Triton / CUDA kernels on a GPU, the
reference on CPU tensors) next to the eager PyTorch composition (``impl="eager"``), on
random inputs. ``test_script_smoke`` runs ``bench_kernels.py`` end to end at tiny sizes.
"""
import math
import os
import sys

import pytest
import torch

import dlrl_kernels as dk

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DT = torch.float32


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def run(benchmark, fn):
    def call():
        out = fn()
        sync()
        return out

    call()  # warm-up (kernel compilation, allocator)
    return benchmark(call)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("impl", ["library", "eager"])
@pytest.mark.parametrize("grad", [False, True], ids=["fwd", "fwd_bwd"])
def test_dense_masked_loss(benchmark, gen, impl, grad):
    m, n, d = (4096, 4096, 32) if DEV.type == "cuda" else (512, 512, 32)
    U = (torch.randn(m, d, generator=gen, dtype=DT) / math.sqrt(d)).to(DEV).requires_grad_(grad)
    V = torch.randn(d, n, generator=gen, dtype=DT).to(DEV).requires_grad_(grad)
    X = torch.randn(m, n, generator=gen, dtype=DT).to(DEV)
    mask = (torch.rand(m, n, generator=gen) < 0.5).to(DEV)
    zero = torch.zeros((), dtype=DT, device=DEV)

    def loss():
        if impl == "library":
            return dk.masked_loss([U, V], X, mask)
        E = torch.where(mask, U @ V - X, zero)
        return 0.5 * (E * E).sum()

    def step():
        L = loss()
        if grad:
            U.grad = V.grad = None
            L.backward()
        return L

    L = run(benchmark, step)
    assert torch.isfinite(L)


@pytest.mark.parametrize("impl", ["library", "eager"])
@pytest.mark.parametrize("grad", [False, True], ids=["fwd", "fwd_bwd"])
def test_sparse_masked_loss(benchmark, gen, impl, grad):
    nnz, m, n, d = (10**6, 2**16, 2**16, 32) if DEV.type == "cuda" else (5 * 10**4, 4096, 4096, 32)
    rows = torch.randint(0, m, (nnz,), generator=gen).to(DEV)
    cols = torch.randint(0, n, (nnz,), generator=gen).to(DEV)
    vals = torch.randn(nnz, generator=gen, dtype=DT).to(DEV)
    U = (torch.randn(m, d, generator=gen, dtype=DT) / math.sqrt(d)).to(DEV).requires_grad_(grad)
    V = torch.randn(d, n, generator=gen, dtype=DT).to(DEV).requires_grad_(grad)

    def loss():
        if impl == "library":
            return dk.masked_loss_sparse([U, V], rows, cols, vals)
        e = (U[rows] * V.t()[cols]).sum(1) - vals
        return 0.5 * torch.dot(e, e)

    def step():
        L = loss()
        if grad:
            U.grad = V.grad = None
            L.backward()
        return L

    L = run(benchmark, step)
    assert torch.isfinite(L)


@pytest.mark.parametrize("impl", ["newton", "eigh"])
def test_spd_power_half(benchmark, gen, impl):
    B, d = (4096 if DEV.type == "cuda" else 64), 32
    Y = torch.randn(B, 2 * d, d, generator=gen, dtype=torch.float64)
    S = (Y.transpose(-1, -2) @ Y / (2 * d)).to(DT).to(DEV)
    out = run(benchmark, lambda: dk.spd_power(S, 0.5, method=impl))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("impl", ["library", "eager"])
def test_gram(benchmark, gen, impl):
    B = 4096 if DEV.type == "cuda" else 64
    Y = torch.randn(B, 256, 32, generator=gen, dtype=DT).to(DEV)
    fn = (lambda: dk.gram(Y)) if impl == "library" else (lambda: Y.transpose(-1, -2) @ Y)
    out = run(benchmark, fn)
    assert out.shape == (B, 32, 32)


@pytest.mark.parametrize("impl", ["newton", "svd"])
def test_pinv(benchmark, gen, impl):
    B = 4096 if DEV.type == "cuda" else 64
    G = torch.randn(B, 64, 32, generator=gen, dtype=DT).to(DEV)
    out = run(benchmark, lambda: dk.pinv(G, method=impl))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("impl", ["power", "eigh"])
def test_spectral_norm_sq(benchmark, gen, impl):
    B = 4096 if DEV.type == "cuda" else 64
    A = torch.randn(B, 256, 32, generator=gen, dtype=DT).to(DEV)
    out = run(benchmark, lambda: dk.spectral_norm_sq(A, method=impl))
    assert torch.isfinite(out).all()


def test_script_smoke(tmp_path):
    """bench_kernels.py end to end at tiny sizes: JSON metadata and one row per impl."""
    import json

    sys.path.insert(0, os.path.dirname(__file__))
    try:
        import bench_kernels
    finally:
        sys.path.pop(0)
    out = tmp_path / "k.json"
    rows = bench_kernels.main(["--tiny", "--families", "dense", "gram", "--reps", "2", "--warmup", "1",
                               "--json", str(out), "--csv", str(tmp_path / "k.csv")])
    meta = json.loads(out.read_text())
    assert {"device", "torch", "triton", "date", "copy_bandwidth_Bps"} <= set(meta)
    assert {r["impl"] for r in rows} >= {"library", "eager", "reference"}
    assert all(r["status"] == "ok" and r["median_s"] > 0 for r in rows)
    assert (tmp_path / "k.csv").read_text().startswith("family,case")
