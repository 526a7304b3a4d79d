"""dlrl.distributed: the shard rule, the collectives under 2 gloo processes, and the
data-parallel fit under ``torchrun --standalone --nproc_per_node 2`` against one process.

The 2-process part launches this file itself as the torchrun worker (``--worker OUTDIR``)
once per session; each rank writes what it saw to OUTDIR and the tests read it back.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch

from dlrl import distributed as dd

HERE = Path(__file__).resolve()

# the end-to-end problem: small, float64 for the loss curve, float32 for test RMSE
SHAPE = (60, 50)
FIT_KW = dict(rank=5, blocks=3, bias=True, clip=(1.0, 5.0), seed=3)
EPOCHS = 25


def _problem(seed=11):
    """Low-rank + bias ratings on 60x50, about 40% observed, split 80/20."""
    g = torch.Generator().manual_seed(seed)
    m, n = SHAPE
    U, V = torch.randn(m, 4, generator=g, dtype=torch.float64), torch.randn(4, n, generator=g, dtype=torch.float64)
    full = 3.0 + 0.5 * (U @ V) / 2 + 0.3 * torch.randn(m, 1, generator=g, dtype=torch.float64)
    full = (full + 0.1 * torch.randn(m, n, generator=g, dtype=torch.float64)).clamp(1, 5)
    obs = torch.rand(m, n, generator=g) < 0.4
    r, c = obs.nonzero(as_tuple=True)
    v = full[r, c]
    perm = torch.randperm(r.numel(), generator=g)
    n_train = int(0.8 * r.numel())
    tr, te = perm[:n_train], perm[n_train:]
    return (r[tr], c[tr], v[tr]), (r[te], c[te], v[te])


def _fit(dtype, distributed):
    from dlrl import DLRL

    (r, c, v), (rt, ct, vt) = _problem()
    model = DLRL(SHAPE, dtype=dtype, **FIT_KW)
    import inspect

    kw = {} if distributed is None else {"distributed": distributed}
    if "tune" in inspect.signature(DLRL.fit).parameters:
        kw["tune"] = False  # the same configuration alone and distributed (no search)
    hist = model.fit(rows=r, cols=c, values=v, epochs=EPOCHS, progress=False, track_schatten=False, **kw)
    pred = model.predict(rt, ct).double()
    test_rmse = float(torch.sqrt(((pred - vt) ** 2).mean()))
    return {"losses": [h["train_loss"] for h in hist], "test_rmse": test_rmse,
            "world_size": [h.get("world_size") for h in hist][-1] if hist else None,
            "model_world_size": getattr(model, "world_size", None)}


# ------------------------------------------------------------------------------ the worker
def _worker(outdir: Path) -> int:
    """Run under torchrun: unit checks of the collectives and shards, then the fit."""
    from dlrl.model import Observations

    ctx = dd.context("auto")
    rank = ctx.rank
    unit = {"rank": rank, "world_size": ctx.world_size, "backend": ctx.backend,
            "is_main": ctx.is_main, "module_is_main": dd.is_main()}
    try:
        assert dd.context("auto") is ctx and dd.context(True) is ctx, "context is not idempotent"
        g = torch.Generator().manual_seed(100 + rank)
        a = torch.randn(3, 4, generator=g, dtype=torch.float64)
        b = torch.randn(7, generator=g, dtype=torch.float32)
        base = torch.randn(4, 6, generator=g, dtype=torch.float64)
        c = base.t()  # non-contiguous
        s = torch.tensor(float(rank + 1), dtype=torch.float64)
        ts = [a.clone(), None, b.clone(), c.clone(), s.clone()]
        before = ctx.calls
        ctx.all_reduce_(ts)
        unit["calls_for_two_dtypes"] = ctx.calls - before
        # every rank's inputs are reproducible from its seed: the expected sum
        exp = [torch.zeros_like(a), None, torch.zeros_like(b), torch.zeros_like(c), torch.zeros_like(s)]
        for q in range(ctx.world_size):
            gq = torch.Generator().manual_seed(100 + q)
            aq = torch.randn(3, 4, generator=gq, dtype=torch.float64)
            bq = torch.randn(7, generator=gq, dtype=torch.float32)
            cq = torch.randn(4, 6, generator=gq, dtype=torch.float64).t()
            for e, x in zip(exp, [aq, None, bq, cq, torch.tensor(float(q + 1), dtype=torch.float64)]):
                if e is not None:
                    e += x
        unit["all_reduce_err"] = max(float((t - e).abs().max()) for t, e in zip(ts, exp) if t is not None)
        unit["bytes_reduced"] = ctx.bytes_reduced
        bc = [torch.full((5,), float(rank), dtype=torch.float64), torch.arange(3) * (rank + 1)]
        ctx.broadcast_(bc, src=1)
        unit["broadcast_from_1"] = [bc[0].tolist(), bc[1].tolist()]
        ctx.barrier()
        # shards of one data set: disjoint, union = data, whatever the input order
        gd = torch.Generator().manual_seed(5)
        rows = torch.randint(0, 13, (101,), generator=gd)
        cols = torch.randint(0, 9, (101,), generator=gd)
        vals = torch.randn(101, generator=gd, dtype=torch.float64)
        obs = Observations(rows, cols, vals, (13, 9))
        part = ctx.shard(obs)
        perm = torch.randperm(101, generator=torch.Generator().manual_seed(rank + 77))
        part2 = ctx.shard(Observations(rows[perm], cols[perm], vals[perm], (13, 9)))
        unit["shard"] = sorted(zip(part.rows.tolist(), part.cols.tolist(), part.values.tolist()))
        unit["shard_perm_same"] = unit["shard"] == sorted(
            zip(part2.rows.tolist(), part2.cols.tolist(), part2.values.tolist()))
        unit["shard_sorted_pattern"] = part.pattern is not None
        unit["ok"] = True
    except Exception:  # report, do not hang the other rank
        unit["ok"] = False
        unit["error"] = traceback.format_exc()
    (outdir / f"unit_rank{rank}.json").write_text(json.dumps(unit))

    fit = {}
    for dtype in ("float64", "float32"):
        try:
            fit[dtype] = _fit(dtype, "auto")
        except Exception:
            fit[dtype] = {"error": traceback.format_exc()}
    (outdir / f"fit_rank{rank}.json").write_text(json.dumps(fit))
    return 0


# ------------------------------------------------------------------------------ tests
def test_shard_index_partitions_and_ignores_input_order():
    g = torch.Generator().manual_seed(1)
    rows = torch.randint(0, 17, (503,), generator=g)
    cols = torch.randint(0, 11, (503,), generator=g)  # with repeated (row, col) pairs
    vals = torch.randn(503, generator=g, dtype=torch.float64)
    shape = (17, 11)
    triples = sorted(zip(rows.tolist(), cols.tolist(), vals.tolist()))
    for world in (1, 2, 3, 4):
        parts = [dd.shard_index(rows, cols, vals, shape, r, world) for r in range(world)]
        allidx = torch.cat(parts)
        assert sorted(allidx.tolist()) == list(range(503)), f"world={world}: not a partition"
        assert max(p.numel() for p in parts) - min(p.numel() for p in parts) <= 1
        perm = torch.randperm(503, generator=torch.Generator().manual_seed(world))
        for r in range(world):
            a = sorted(zip(rows[parts[r]].tolist(), cols[parts[r]].tolist(), vals[parts[r]].tolist()))
            q = dd.shard_index(rows[perm], cols[perm], vals[perm], shape, r, world)
            b = sorted(zip(rows[perm][q].tolist(), cols[perm][q].tolist(), vals[perm][q].tolist()))
            assert a == b, f"world={world} rank={r}: shard depends on input order"
        assert sorted(t for r in range(world) for t in zip(
            rows[parts[r]].tolist(), cols[parts[r]].tolist(), vals[parts[r]].tolist())) == triples
    # round-robin over the (row, col) order: entry k of the sorted order on rank k mod world
    key = rows * 11 + cols
    srt = sorted(range(503), key=lambda i: (int(key[i]), float(vals[i])))
    assert dd.shard_index(rows, cols, vals, shape, 1, 3).tolist() == srt[1::3]
    with pytest.raises(ValueError, match="rank"):
        dd.shard_index(rows, cols, vals, shape, 3, 3)


def test_context_outside_torchrun(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert dd.context("auto") is None
    assert dd.context(False) is None and dd.context(None) is None
    with pytest.raises(RuntimeError, match="torchrun.*missing RANK"):
        dd.context(True)
    with pytest.raises(ValueError, match="distributed: expected True, False or 'auto', got 'yes'"):
        dd.context("yes")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert dd.context("auto") is None
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        dd.context("auto")
    assert dd.is_main()
    monkeypatch.setenv("RANK", "1")
    assert not dd.is_main()
    monkeypatch.setenv("RANK", "0")
    assert dd.is_main()


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory):
    """One ``torchrun --standalone --nproc_per_node 2`` of this file's worker (gloo, CPU)."""
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE), "--worker", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return out, proc


def _read(out, proc, stem):
    files = [out / f"{stem}_rank{r}.json" for r in range(2)]
    if not all(f.exists() for f in files):
        pytest.fail(f"torchrun did not produce {stem} results (exit {proc.returncode}):\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return [json.loads(f.read_text()) for f in files]


def test_collectives_and_shards_under_torchrun(torchrun_run):
    out, proc = torchrun_run
    u0, u1 = _read(out, proc, "unit")
    for u in (u0, u1):
        assert u["ok"], u.get("error")
        assert u["world_size"] == 2 and u["backend"] == "gloo"
        assert u["all_reduce_err"] < 1e-6  # float32 member; float64 members are exact sums of 2
        assert u["calls_for_two_dtypes"] == 2  # one flattened call per dtype
        assert u["broadcast_from_1"] == [[1.0] * 5, [0, 2, 4]]
        assert u["shard_perm_same"] and u["shard_sorted_pattern"]
    # bytes: 12 + 24 + 1 float64 and 7 float32
    assert u0["bytes_reduced"] == (12 + 24 + 1) * 8 + 7 * 4
    assert (u0["is_main"], u0["module_is_main"], u1["is_main"], u1["module_is_main"]) == (True, True, False, False)
    assert abs(len(u0["shard"]) - len(u1["shard"])) <= 1 and len(u0["shard"]) + len(u1["shard"]) == 101
    g = torch.Generator().manual_seed(5)
    rows = torch.randint(0, 13, (101,), generator=g)
    cols = torch.randint(0, 9, (101,), generator=g)
    vals = torch.randn(101, generator=g, dtype=torch.float64)
    assert sorted(map(tuple, u0["shard"] + u1["shard"])) == sorted(zip(rows.tolist(), cols.tolist(), vals.tolist()))


def _model_has_hooks():
    import inspect

    from dlrl import DLRL

    return "distributed" in inspect.signature(DLRL.fit).parameters


@pytest.mark.xfail(not _model_has_hooks(), reason="DLRL.fit has no distributed= hook yet (model.py, helper H3)",
                   strict=False)
def test_two_process_fit_matches_one_process(torchrun_run):
    out, proc = torchrun_run
    f0, f1 = _read(out, proc, "fit")
    for f in (f0, f1):
        for dtype in ("float64", "float32"):
            assert "error" not in f[dtype], f[dtype]["error"]
    one64 = _fit("float64", None)
    one32 = _fit("float32", None)
    two64, two32 = f0["float64"], f0["float32"]
    assert two64["world_size"] == 2 or two64["model_world_size"] == 2
    assert len(two64["losses"]) == len(one64["losses"]) == EPOCHS
    for e, (a, b) in enumerate(zip(two64["losses"], one64["losses"])):
        assert math.isclose(a, b, rel_tol=1e-9), f"epoch {e}: 2-process loss {a!r} vs 1-process {b!r}"
    # both ranks hold the same model: identical losses and test RMSE
    assert f1["float64"]["losses"] == two64["losses"] and f1["float64"]["test_rmse"] == two64["test_rmse"]
    assert abs(two32["test_rmse"] - one32["test_rmse"]) <= 1e-3, (two32["test_rmse"], one32["test_rmse"])
    assert abs(two64["test_rmse"] - one64["test_rmse"]) <= 1e-9 * one64["test_rmse"]


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--worker":
    sys.exit(_worker(Path(sys.argv[2])))


def test_cli_fit_under_torchrun_matches_one_process(tmp_path):
    """`torchrun … -m dlrl fit FILE --json` (the README's line): rank 0 alone writes, the JSON
    reports world_size 2 and the test RMSE of one process (float32: within 1e-3)."""
    g = torch.Generator().manual_seed(5)
    m, n = 40, 30
    U, V = torch.rand(m, 3, generator=g), torch.rand(3, n, generator=g)
    full = (1 + 4 * (U @ V) / (U @ V).max()).round().clamp(1, 5)
    keep = torch.rand(m, n, generator=g) < 0.5
    r, c = keep.nonzero(as_tuple=True)
    lines = [f"{int(a) + 1}\t{int(b) + 1}\t{int(full[a, b])}\t0" for a, b in zip(r, c)]
    data = tmp_path / "ratings.data"
    data.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    common = [str(data), "--no-tune", "--epochs", "15", "--quiet"]
    one = subprocess.run([sys.executable, "-m", "dlrl", "fit", *common, "--json", str(tmp_path / "one.json")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "dlrl", "fit", *common, "--json", str(tmp_path / "two.json")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    a = json.loads((tmp_path / "one.json").read_text())
    b = json.loads((tmp_path / "two.json").read_text())
    assert a["world_size"] == 1 and b["world_size"] == 2
    assert abs(a["test_rmse"] - b["test_rmse"]) <= 1e-3, (a["test_rmse"], b["test_rmse"])
    # one "wrote" line: rank 1 printed nothing of its own
    assert two.stdout.count("wrote ") == 1, two.stdout
