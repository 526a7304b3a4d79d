"""One DLRL training epoch (forward + backward + optimizer step) on a synthetic problem, eager
and torch.compile'd, for bench/gpu_acceptance.sh. Default: 138,000 × 27,000, 2·10⁷ observed
entries (the MovieLens-20M shape); --dry-run: 300 × 200, 5,000 entries on the CPU.

Uses the public API only: ``dlrl.DLRL(shape, rank=...)`` and ``model.loss(obs)`` with
``dlrl.model.as_observations(...).sorted()``; the epoch is one full-batch step with
``torch.optim.Adam``. Writes JSON (times: first call — includes compilation — and the median of
the following steps, CUDA-synchronised)."""
from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
from pathlib import Path

import torch


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def run(m, n, nnz, rank, steps, device, compiled, seed=0, compile_backend="inductor"):
    import dlrl
    from dlrl.model import as_observations

    g = torch.Generator(device="cpu").manual_seed(seed)
    flat = torch.randperm(m * n, generator=g)[:nnz] if m * n <= 5e7 else torch.unique(torch.randint(0, m * n, (int(nnz * 1.02),), generator=g))[:nnz]
    rows, cols = flat // n, flat % n
    values = torch.randn(rows.numel(), generator=g) + 3.0
    model = dlrl.DLRL((m, n), rank=rank).to(device)
    obs = as_observations(rows=rows.to(device), cols=cols.to(device), values=values.to(device), shape=(m, n)).sorted()
    model.prepare(rows=rows, cols=cols, values=values)  # per-data constants, as fit() computes them
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.compile(model.loss, backend=compile_backend) if compiled else model.loss
    times = []
    for i in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        J = loss_fn(obs)
        J.backward()
        opt.step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"first_s": times[0], "median_rest_s": statistics.median(times[1:]) if len(times) > 1 else None,
            "steps": steps, "loss": float(J.detach()), "nnz": int(rows.numel()),
            "peak_mem_GiB": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--json", default=None)
    ap.add_argument("--compile-backend", default=None,
                    help="torch.compile backend (default inductor; aot_eager with --dry-run: graph capture without C++ builds)")
    a = ap.parse_args(argv)
    backend = a.compile_backend or ("aot_eager" if a.dry_run else "inductor")
    dev = torch.device("cuda" if torch.cuda.is_available() and not a.dry_run else "cpu")
    m, n, nnz = (300, 200, 5000) if a.dry_run else (138_000, 27_000, 20_000_000)
    doc = {"shape": [m, n], "nnz": nnz, "rank": a.rank, "device": str(dev), "compile_backend": backend}
    for mode in ("eager", "compiled"):
        try:
            doc[mode] = run(m, n, nnz, a.rank, a.steps, dev, mode == "compiled", compile_backend=backend)
        except Exception as exc:
            doc[mode] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
        print(mode, json.dumps(doc[mode])[:500], flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(doc, indent=1))
    return 0 if all("error" not in doc[k] for k in ("eager", "compiled")) else 1


if __name__ == "__main__":
    raise SystemExit(main())
