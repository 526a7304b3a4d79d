"""pytest-benchmark cases for the baselines and DLRL at small sizes (not part of CI's tests/).

    python -m pytest bench/test_bench_baselines.py --benchmark-only -p no:cacheprovider
    python -m pytest bench/test_bench_baselines.py --benchmark-only --benchmark-json out.json

Per-iteration cost is what these measure: every case runs a fixed number of iterations
(``max_iter``, tolerance 0 so nothing stops early) on a fixed problem, single-threaded.
The end-to-end comparison (accuracy, time to accuracy) is ``bench/bench_baselines.py``.
"""
import pytest
import torch

from dlrl.baselines import get_baseline
from dlrl.images import synthetic_low_rank

ITERS = 20


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _problem(m, n, rank, missing=0.5, dtype=torch.float64):
    p = synthetic_low_rank(m, n, rank, noise=0.0, missing=missing, seed=0, dtype=dtype)
    return p["observed"], p["mask"], p["truth"]


CASES = [("svt", {}), ("svt", {"svd": "randomized"}), ("soft_impute", {"n_lambdas": 1}),
         ("soft_impute", {"n_lambdas": 1, "svd": "randomized"}), ("irnn", {}),
         ("irnn", {"svd": "randomized"}), ("mss", {}), ("tnnr", {"r": 5, "max_outer": 1}),
         ("dmf", {}), ("dmf", {"optimizer": "adam"}), ("dmf", {"rank": 10})]


@pytest.mark.parametrize("shape", [(100, 100), (300, 300)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}"
                                                for n, kw in CASES])
def test_baseline_iterations(benchmark, name, kw, shape):
    X, mask, truth = _problem(*shape, rank=5)
    benchmark.group = f"baselines {shape[0]}x{shape[1]}, {ITERS} iterations"

    def run():
        model = get_baseline(name, max_iter=ITERS, tol=0.0, **kw).fit(X, mask)
        return model

    model = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert model.n_iter >= ITERS
    benchmark.extra_info["n_svd"] = model.n_svd
    benchmark.extra_info["s_per_iter"] = model.fit_seconds / model.n_iter


@pytest.mark.parametrize("blocks", [2, 5, 10])
@pytest.mark.parametrize("shape,rank", [((100, 100), 20), ((300, 300), 80)],
                         ids=["100x100-d20", "300x300-d80"])
def test_dlrl_epochs(benchmark, blocks, shape, rank):
    from dlrl.model import DLRL

    X, mask, truth = _problem(*shape, rank=5)
    X = X.abs()  # DLRL's ReLU blocks produce non-negative products
    benchmark.group = f"DLRL {shape[0]}x{shape[1]} d={rank}, {ITERS} epochs"

    def run():
        model = DLRL(shape, rank=rank, blocks=blocks)
        model.fit(X=X, epochs=ITERS, progress=False)
        return model

    model = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert len(model.history) >= 1


@pytest.mark.parametrize("depth", [2, 3, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_dmf_masked_loss_step(benchmark, depth, dtype):
    """One DMF iteration's core: dlrl_kernels.masked_loss forward + hand-written backward."""
    import dlrl_kernels as dk

    X, mask, _ = _problem(300, 300, 5, dtype=dtype)
    X = torch.where(mask, X, torch.zeros_like(X))
    g = torch.Generator().manual_seed(0)
    dims = [300] + [100] * (depth - 1) + [300]
    factors = [(0.1 * torch.randn(dims[k], dims[k + 1], generator=g, dtype=dtype)).requires_grad_()
               for k in range(depth)]
    benchmark.group = "DMF masked_loss fwd+bwd, 300x300, width 100"

    def step():
        for f in factors:
            f.grad = None
        loss = dk.masked_loss(factors, X, mask)
        loss.backward()
        return loss

    loss = benchmark(step)
    assert torch.isfinite(loss.detach())
