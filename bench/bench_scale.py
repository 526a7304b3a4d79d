"""Scale benchmark: DLRL vs LibMF vs Surprise SVD on synthetic ratings with ML-20M's shape.

Data (``make_data``): a 138,000 x 27,000 matrix (ML-20M's users x items), ``nnz`` distinct
entries drawn uniformly, values = 3.5 + user bias + item bias + a rank-10 term + noise
(biases N(0, 0.3²), the rank-10 term has entry std 0.8, noise N(0, 0.5²)), so the best
possible RMSE is 0.5. 90% train, 10% validation. The data of a size is generated once (seeded)
and saved as .npy under ``--data-dir``; every (size, method) then runs in a fresh
subprocess that loads it, so peak memory and threads are the method's own.

Per (size, method) it records:
- ``epoch_s``: median wall time of one training epoch (DLRL: one full-batch gradient step, its
  validation RMSE included; LibMF / Surprise: one SGD sweep over the training ratings, as the
  fit time divided by the epochs, so their data set-up is spread over the epochs);
- ``fit_s`` and the validation RMSE curve; ``time_to_target_s``: the first time the
  validation RMSE is <= the target, ``--target`` or, by default, 1.02 x the best final
  validation RMSE of any method at that size (DLRL: from its per-epoch history; LibMF: its
  per-iteration validation RMSE with the fit time spread evenly over the iterations;
  Surprise: fitted once per epoch count in ``SURPRISE_EPOCHS`` checkpoints, not at all
  above ``--surprise-max``);
- ``peak_rss_bytes`` of the subprocess and ``bytes_per_rating``: (peak RSS - RSS after loading
  the data) / training ratings.

    python bench/bench_scale.py --quick                  # CI smoke run: tiny sizes, seconds
    python bench/bench_scale.py                          # 1e5, 1e6, 1e7, 2e7 (tens of minutes)
    python bench/bench_scale.py --sizes 1e5 1e6 --out bench/results

Writes ``scale_cpu.json``, ``scale_cpu.md`` (a table fragment) and ``scale_cpu.png`` (time vs
nnz) under ``--out`` (``--name`` changes the stem).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (138_000, 27_000)  # ML-20M: 138,493 users x 26,744 movies
TRUE_RANK = 10
NOISE = 0.5
SURPRISE_EPOCHS = (2, 5, 10, 20)
METHODS = ("dlrl", "libmf", "surprise")


# ----------------------------------------------------------------------------- data
def make_data(nnz: int, shape=SHAPE, seed: int = 0):
    """(rows, cols, values) int64/int64/float32 of ``nnz`` distinct entries (see module doc)."""
    m, n = shape
    rng = np.random.default_rng(seed)
    if nnz > 0.5 * m * n:
        raise ValueError(f"nnz: expected at most half of {m}x{n} entries, got {nnz}")
    keys = np.empty(0, dtype=np.int64)
    while keys.size < nnz:  # draw with a little slack, keep the distinct ones in draw order
        draw = rng.integers(0, m * n, size=int((nnz - keys.size) * 1.05) + 16, dtype=np.int64)
        allk = np.concatenate([keys, draw])
        _, first = np.unique(allk, return_index=True)
        keys = allk[np.sort(first)]
    keys = keys[:nnz]
    rows, cols = keys // n, keys % n
    bu = rng.normal(0, 0.3, m).astype(np.float32)
    bi = rng.normal(0, 0.3, n).astype(np.float32)
    U = rng.normal(0, 1, (m, TRUE_RANK)).astype(np.float32)
    V = rng.normal(0, 1, (n, TRUE_RANK)).astype(np.float32)
    low = np.einsum("ij,ij->i", U[rows], V[cols]) * (0.8 / math.sqrt(TRUE_RANK))
    noise = rng.normal(0, NOISE, nnz).astype(np.float32)
    values = (3.5 + bu[rows] + bi[cols] + low + noise).astype(np.float32)
    return rows, cols, values


def prepare(nnz: int, data_dir: Path, seed: int = 0) -> Path:
    """Generate (once) and save the split data of one size; returns its folder."""
    folder = data_dir / f"synth_{nnz}_s{seed}"
    if (folder / "done").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rows, cols, values = make_data(nnz, seed=seed)
    n_val = nnz // 10
    perm = np.random.default_rng(seed + 1).permutation(nnz)
    for part, idx in (("train", perm[n_val:]), ("val", perm[:n_val])):
        np.save(folder / f"{part}_rows.npy", rows[idx])
        np.save(folder / f"{part}_cols.npy", cols[idx])
        np.save(folder / f"{part}_values.npy", values[idx])
    (folder / "done").write_text("ok\n")
    return folder


def _load(folder: Path):
    out = {}
    for part in ("train", "val"):
        out[part] = tuple(np.load(folder / f"{part}_{k}.npy") for k in ("rows", "cols", "values"))
    return out


def _rss_peak() -> int:
    """Peak RSS of this process image (VmHWM). Not ru_maxrss: Linux carries ru_maxrss across
    fork + exec, so a child would report its parent's peak (the data generation) instead."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _rmse(pred, v):
    return float(np.sqrt(np.mean((np.asarray(pred, dtype=np.float64) - v) ** 2)))


# ----------------------------------------------------------------------------- methods
def _fit_options(cls, args):
    """The thread count asked for, and no hyper-parameter search, where fit() has them."""
    import inspect

    params = inspect.signature(cls.fit).parameters
    kw = {}
    if "threads" in params:
        kw["threads"] = args.threads
    if "tune" in params:
        kw["tune"] = False
    return kw


def run_dlrl(data, args):
    import torch

    from dlrl.model import DLRL

    torch.set_num_threads(args.threads)
    (r, c, v), (vr, vc, vv) = data["train"], data["val"]
    # warm-up on a tiny problem: one-time imports and kernel set-up are not the fit's cost
    w = DLRL((30, 20), rank=4, blocks=args.blocks, bias=True, dtype="float32", seed=0)
    w.fit(rows=torch.arange(60) % 30, cols=torch.arange(60) % 20, values=torch.rand(60) + 3,
          epochs=2, progress=False, track_schatten=False, **_fit_options(DLRL, args))
    model = DLRL(SHAPE, rank=args.rank, blocks=args.blocks, bias=True, dtype="float32", seed=0)
    t0 = time.perf_counter()
    hist = model.fit(rows=torch.from_numpy(r), cols=torch.from_numpy(c), values=torch.from_numpy(v),
                     val=(torch.from_numpy(vr), torch.from_numpy(vc), torch.from_numpy(vv)),
                     epochs=args.epochs, progress=False, track_schatten=False, **_fit_options(DLRL, args))
    fit_s = time.perf_counter() - t0
    times = [h["time"] for h in hist]
    # history times count from the fit's start (data preparation included)
    epoch_s = float(np.median(np.diff([0.0] + times)[1:])) if len(times) > 1 else times[0]
    return {"fit_s": fit_s, "epoch_s": epoch_s, "epochs": len(hist), "threads": args.threads,
            "curve": [[h["time"], h["val_rmse"]] for h in hist],
            "final_val_rmse": hist[-1]["val_rmse"], "setup_s": times[0] - epoch_s,
            "config": dict(rank=args.rank, blocks=args.blocks, bias=True, mode="paper", lr=0.01,
                           epochs=args.epochs)}


def _capture_fd1(fn):
    """Run fn() with the C-level stdout sent to a temporary file; returns (result, text)."""
    import tempfile

    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 1)
        try:
            out = fn()
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        tmp.seek(0)
        return out, tmp.read().decode(errors="replace")


def run_libmf(data, args):
    (r, c, v), (vr, vc, vv) = data["train"], data["val"]
    _capture_fd1(lambda: __import__("libmf.mf"))  # it prints its .so path on import
    from libmf import mf as libmf

    # LibMF's Python binding passes indices as float32: exact below 2**24
    # (the binding reads the buffer as C-ordered (n, 3) records)
    X = np.ascontiguousarray(np.stack([r, c, v], axis=1), dtype=np.float32)
    V = np.ascontiguousarray(np.stack([vr, vc, vv], axis=1), dtype=np.float32)
    model = libmf.MF(k=args.rank, nr_threads=args.threads, nr_iters=args.libmf_iters, quiet=False)
    t0 = time.perf_counter()
    _, text = _capture_fd1(lambda: model.mf_train_test(X, V))
    fit_s = time.perf_counter() - t0
    va, col = [], None
    for line in text.splitlines():  # "iter tr_rmse va_rmse obj" then one row per iteration
        parts = line.split()
        if parts[:1] == ["iter"] and "va_rmse" in parts:
            col = parts.index("va_rmse")
        elif col is not None and len(parts) > col and parts[0].isdigit():
            va.append(float(parts[col]))
    pred = model.predict(np.ascontiguousarray(np.stack([vr, vc], axis=1), dtype=np.float32))
    final = _rmse(pred, vv)
    iters = max(len(va), 1)
    per = fit_s / iters
    curve = [[per * (k + 1), x] for k, x in enumerate(va)] or [[fit_s, final]]
    return {"fit_s": fit_s, "epoch_s": per, "epochs": iters, "threads": args.threads, "curve": curve,
            "final_val_rmse": final, "config": dict(k=args.rank, nr_iters=args.libmf_iters,
                                                    lambda_p1=0.04, lambda_q1=0.04, eta=0.1)}


def run_surprise(data, args):
    import pandas as pd
    from surprise import SVD, Dataset, Reader

    (r, c, v), (vr, vc, vv) = data["train"], data["val"]
    t0 = time.perf_counter()
    df = pd.DataFrame({"u": r, "i": c, "r": v.astype(np.float64)})
    lo, hi = float(min(v.min(), vv.min())), float(max(v.max(), vv.max()))
    trainset = Dataset.load_from_df(df, Reader(rating_scale=(lo, hi))).build_full_trainset()
    setup_s = time.perf_counter() - t0
    curve, per = [], []
    for n_ep in args.surprise_epochs:
        algo = SVD(n_factors=args.rank, n_epochs=n_ep, biased=True, random_state=0)
        t1 = time.perf_counter()
        algo.fit(trainset)
        dt = time.perf_counter() - t1
        per.append(dt / n_ep)
        # predictions through the inner ids (the public predict() is a Python call per rating)
        pred = _surprise_predict(algo, trainset, vr, vc, lo, hi)
        curve.append([setup_s + dt, _rmse(pred, vv)])
    return {"fit_s": curve[-1][0], "epoch_s": float(np.median(per)), "epochs": args.surprise_epochs[-1],
            "threads": 1, "curve": curve, "final_val_rmse": curve[-1][1], "setup_s": setup_s,
            "config": dict(n_factors=args.rank, biased=True, epochs=list(args.surprise_epochs),
                           note="one fit per epoch count; time = data set-up + that fit")}


def _surprise_predict(algo, trainset, vr, vc, lo, hi):
    uid = {raw: inner for raw, inner in trainset._raw2inner_id_users.items()}
    iid = {raw: inner for raw, inner in trainset._raw2inner_id_items.items()}
    u = np.array([uid.get(x, -1) for x in vr.tolist()])
    i = np.array([iid.get(x, -1) for x in vc.tolist()])
    pred = np.full(len(vr), trainset.global_mean)
    ku, ki = u >= 0, i >= 0
    pred[ku] += algo.bu[u[ku]]
    pred[ki] += algo.bi[i[ki]]
    both = ku & ki
    pred[both] += np.einsum("ij,ij->i", algo.pu[u[both]], algo.qi[i[both]])
    return np.clip(pred, lo, hi)


RUNNERS = {"dlrl": run_dlrl, "libmf": run_libmf, "surprise": run_surprise}


def child(args):
    """One (size, method) in this process; prints one JSON line."""
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    sys.path.insert(0, str(ROOT / "python"))
    data = _load(Path(args.child_data))
    n_train = len(data["train"][2])
    if args.child_method == "dlrl":  # import torch before the baseline: same footing for RSS
        import torch  # noqa: F401
    base = _rss_now()
    res = RUNNERS[args.child_method](data, args)
    peak = _rss_peak()
    res.update(peak_rss_bytes=peak, rss_after_data_bytes=base,
               bytes_per_rating=(peak - base) / n_train, n_train=n_train, n_val=len(data["val"][2]))
    print("RESULT " + json.dumps(res), flush=True)


# ----------------------------------------------------------------------------- data parallel
def dp_worker(args):
    """``torchrun --nproc_per_node P bench/bench_scale.py --dp --sizes N``: the data-parallel
    epoch (issue 15) on one size. Each rank holds its shard of the training ratings; an epoch
    is the loss on the shard, backward, one all-reduce of the parameter gradients and the
    loss, the Adam step. Uses ``DLRL.fit(distributed=...)`` when the model has it; otherwise
    it runs that epoch itself with the model's public pieces (block_outputs, loss) and the
    per-data constants of its own shard (the timing of an epoch is the same; the constants'
    one-off all-reduce is then counted with tensors of the same shapes as the ∇_k).
    Rank 0 writes ``{name}_dp_w{P}.json`` under ``--out``."""
    import inspect

    import torch

    sys.path.insert(0, str(ROOT / "python"))
    from dlrl import distributed as dd
    from dlrl.model import DLRL, Observations

    torch.set_num_threads(args.threads)
    ctx = dd.context(True)
    nnz = int(args.sizes[0])
    folder = Path(args.data_dir) / f"synth_{nnz}_s0"
    if ctx.is_main and not (folder / "done").exists():
        prepare(nnz, Path(args.data_dir))
    ctx.barrier()
    r, c, v = _load(folder)["train"]
    obs = Observations(torch.from_numpy(r), torch.from_numpy(c), torch.from_numpy(v), SHAPE)
    t0 = time.perf_counter()
    shard = ctx.shard(obs)
    shard_s = time.perf_counter() - t0
    del obs
    model = DLRL(SHAPE, rank=args.rank, blocks=args.blocks, bias=True, dtype="float32", seed=0)
    params_all = [p for p in model.parameters() if p.requires_grad]
    param_floats = sum(p.numel() for p in params_all)
    m, n = SHAPE
    d, blocks = args.rank, args.blocks
    grad_floats = m * d + n * d + (blocks - 2) * d * d  # the ∇_k have the W_k's shapes
    res = {"world_size": ctx.world_size, "backend": ctx.backend, "nnz_train": len(v),
           "shard_nnz": shard.nnz, "shard_s": shard_s, "threads": args.threads,
           "param_floats": param_floats, "expected_bytes_per_epoch": (param_floats + 1) * 4,
           # ∇_k (float32), row/column counts (int64), 5 statistics and 2 dot products (float64)
           "expected_setup_bytes": grad_floats * 4 + (m + n) * 8 + 7 * 8}
    if "distributed" in inspect.signature(DLRL.fit).parameters:
        ctx.reset_counters()
        counted = []  # (bytes, calls) after each epoch
        hist = model.fit(rows=torch.from_numpy(r), cols=torch.from_numpy(c), values=torch.from_numpy(v),
                         epochs=args.dp_epochs, progress=False, track_schatten=False, distributed=True,
                         callback=lambda rec: counted.append((ctx.bytes_reduced, ctx.calls)),
                         **_fit_options(DLRL, args))  # fit shards the entries itself
        times = np.diff([0.0] + [h["time"] for h in hist])
        per_epoch = np.diff([b for b, _ in counted])
        res.update(path="DLRL.fit(distributed=True)", epoch_s=float(np.median(times[1:])),
                   bytes_reduced_total=ctx.bytes_reduced, calls_total=ctx.calls,
                   bytes_each_epoch_counted=per_epoch.tolist(),
                   calls_each_epoch_counted=np.diff([k for _, k in counted]).tolist(),
                   setup_bytes_counted=counted[0][0] - int(np.median(per_epoch)) if len(counted) > 1 else None,
                   train_loss=[h["train_loss"] for h in hist])
    else:
        t0 = time.perf_counter()
        model._prepare(shard)
        setup = [torch.zeros(m, d), torch.zeros(d, n)] + [torch.zeros(d, d) for _ in range(blocks - 2)]
        setup += [torch.zeros(m), torch.zeros(n), torch.zeros(3)]  # seen counts, nnz, sum, ...
        ctx.reset_counters()
        ctx.all_reduce_(setup)
        setup_bytes = ctx.bytes_reduced
        prep_s = time.perf_counter() - t0
        opt = torch.optim.Adam(params_all, lr=0.01)
        times, losses = [], []
        ctx.reset_counters()
        for _ in range(args.dp_epochs):
            t1 = time.perf_counter()
            opt.zero_grad(set_to_none=False)
            outs = model.block_outputs()
            J = model.loss(shard, outs)
            J.backward()
            Jd = J.detach().reshape(1).clone()
            ctx.all_reduce_([p.grad for p in params_all] + [Jd])
            opt.step()
            times.append(time.perf_counter() - t1)
            losses.append(float(Jd))
        res.update(path="manual epoch (model has no distributed= hook yet)", epoch_s=float(np.median(times[1:])),
                   epoch_times=times, prep_s=prep_s, setup_bytes_counted=setup_bytes,
                   bytes_reduced_total=ctx.bytes_reduced, calls_total=ctx.calls, train_loss=losses)
    res["bytes_per_epoch_counted"] = res["bytes_reduced_total"] / args.dp_epochs
    res["calls_per_epoch"] = res["calls_total"] / args.dp_epochs
    if ctx.is_main:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        res["machine"] = _machine()
        res["command"] = f"torchrun --standalone --nproc_per_node {ctx.world_size} bench/bench_scale.py --dp " + \
            " ".join(sys.argv[2:])
        path = out / f"{args.name}_dp_w{ctx.world_size}.json"
        path.write_text(json.dumps(res, indent=1))
        print(json.dumps({k: res[k] for k in ("world_size", "shard_nnz", "epoch_s", "bytes_per_epoch_counted",
                                              "expected_bytes_per_epoch", "calls_per_epoch")}))


# ----------------------------------------------------------------------------- driver
def _versions():
    import torch

    v = {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__}
    for mod in ("libmf", "surprise"):
        try:
            from importlib.metadata import version

            v[mod] = version({"libmf": "libmf", "surprise": "scikit-surprise"}[mod])
        except Exception:
            v[mod] = None
    return v


def _machine():
    sys.path.insert(0, str(ROOT / "bench"))
    from _env import device_name

    load = os.getloadavg()
    return {"cpu": device_name("cpu"), "cores": os.cpu_count(), "loadavg_at_start": load,
            "platform": platform.platform()}


def _missing_module(method):
    import importlib.util

    mod = {"dlrl": "torch", "libmf": "libmf", "surprise": "surprise"}[method]
    return None if importlib.util.find_spec(mod) is not None else mod


def time_to(curve, target):
    for t, x in curve:
        if x <= target:
            return t
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", type=float, default=[1e5, 1e6, 1e7, 2e7])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--quick", action="store_true", help="CI smoke run: 1e4 ratings, few epochs")
    ap.add_argument("--epochs", type=int, default=60, help="DLRL epochs (default 60)")
    ap.add_argument("--libmf-iters", type=int, default=20)
    ap.add_argument("--surprise-epochs", nargs="+", type=int, default=list(SURPRISE_EPOCHS))
    ap.add_argument("--surprise-max", type=float, default=1e6,
                    help="largest nnz given to Surprise (its Python data set-up is slow)")
    ap.add_argument("--rank", type=int, default=20)
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--target", type=float, default=None, help="validation RMSE target (default: see doc)")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per (size, method) subprocess")
    ap.add_argument("--data-dir", default="/tmp/dlrl_scale_data")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--name", default="scale_cpu")
    ap.add_argument("--dp", action="store_true", help="data-parallel epoch under torchrun (see dp_worker)")
    ap.add_argument("--dp-epochs", type=int, default=6)
    ap.add_argument("--merge-memory", nargs=2, metavar=("RESULTS", "MEMORY"),
                    help="rewrite RESULTS (json) with the peak memory of MEMORY (json), then its .md")
    ap.add_argument("--child-method", help=argparse.SUPPRESS)
    ap.add_argument("--child-data", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_method:
        return child(args)
    if args.dp:
        return dp_worker(args)
    if args.merge_memory:
        res_path, mem_path = map(Path, args.merge_memory)
        results = merge_memory(json.loads(res_path.read_text()), json.loads(mem_path.read_text()))
        res_path.write_text(json.dumps(results, indent=1))
        res_path.with_suffix(".md").write_text(table(results))
        return results
    if args.quick:
        args.sizes = [1e4]  # (LibMF's scheduler hung on 2e3 ratings spread over 138k x 27k)
        args.epochs = min(args.epochs, 8)
        args.libmf_iters = min(args.libmf_iters, 5)
        args.surprise_epochs = [1, 3]
        args.rank = min(args.rank, 8)
    sizes = [int(s) for s in args.sizes]
    data_dir = Path(args.data_dir)
    results = {"command": "python bench/bench_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "machine": _machine(), "versions": _versions(), "shape": SHAPE, "true_rank": TRUE_RANK,
               "noise": NOISE, "threads": args.threads, "runs": []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for nnz in sizes:
        folder = prepare(nnz, data_dir)
        for method in args.methods:
            missing = _missing_module(method)
            if missing:
                results["runs"].append({"nnz": nnz, "method": method, "skipped": f"{missing} is not installed"})
                continue
            if method == "surprise" and nnz > args.surprise_max:
                results["runs"].append({"nnz": nnz, "method": method, "skipped":
                                        f"nnz > --surprise-max={args.surprise_max:.0e}"})
                continue
            cmd = [sys.executable, __file__, "--child-method", method, "--child-data", str(folder),
                   "--epochs", str(args.epochs), "--libmf-iters", str(args.libmf_iters),
                   "--rank", str(args.rank), "--blocks", str(args.blocks), "--threads", str(args.threads),
                   "--surprise-epochs", *map(str, args.surprise_epochs)]
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
                line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode != 0 or not line:
                    rec = {"error": f"exit {proc.returncode}: {proc.stderr[-1500:]}"}
                else:
                    rec = json.loads(line[-1][len("RESULT "):])
            except subprocess.TimeoutExpired:
                rec = {"error": f"timed out after {args.timeout:.0f} s"}
            rec.update(nnz=nnz, method=method, wall_s=time.perf_counter() - t0)
            results["runs"].append(rec)
            print(f"nnz={nnz:>9} {method:9s} " + (
                rec["error"][:300] if "error" in rec else
                f"epoch {rec['epoch_s']:.4f} s  fit {rec['fit_s']:.1f} s  val {rec['final_val_rmse']:.4f}  "
                f"{rec['bytes_per_rating']:.0f} B/rating, peak {rec['peak_rss_bytes'] / 2**20:.0f} MB"), flush=True)
            _finish(results, args, out)  # keep what finished
    _finish(results, args, out)
    return results


def _finish(results, args, out):
    by_size = {}
    for r in results["runs"]:
        if "curve" in r:
            by_size.setdefault(r["nnz"], []).append(r)
    for nnz, rs in by_size.items():
        target = args.target if args.target is not None else 1.02 * min(r["final_val_rmse"] for r in rs)
        dl = next((r for r in rs if r["method"] == "dlrl"), None)
        for r in rs:
            r["target_val_rmse"] = target
            r["time_to_target_s"] = time_to(r["curve"], target)
            if dl is not None and r is not dl:
                r["dlrl_epoch_ratio"] = dl["epoch_s"] / r["epoch_s"]
                if dl["time_to_target_s"] is not None and r["time_to_target_s"]:
                    r["dlrl_time_to_target_ratio"] = dl["time_to_target_s"] / r["time_to_target_s"]
    path = out / f"{args.name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, path)
    (out / f"{args.name}.md").write_text(table(results))
    try:
        plot(results, out / f"{args.name}.png")
    except Exception as exc:  # a plot must not lose the numbers
        print(f"plot failed: {exc}", file=sys.stderr)


def merge_memory(results, memory):
    """Take peak RSS and bytes per rating from a memory run (``--name ..._memory``, same sizes,
    few epochs) into ``results``: for a run whose own figures came from ru_maxrss (inherited
    from the driver, see _rss_peak)."""
    mem = {(r["nnz"], r["method"]): r for r in memory["runs"] if "peak_rss_bytes" in r}
    for r in results["runs"]:
        m = mem.get((r["nnz"], r["method"]))
        if "peak_rss_bytes" in r:
            r["peak_rss_bytes_ru_maxrss"] = r.pop("peak_rss_bytes")
            r["bytes_per_rating_ru_maxrss"] = r.pop("bytes_per_rating")
        if m is not None:
            r["peak_rss_bytes"] = m["peak_rss_bytes"]
            r["bytes_per_rating"] = m["bytes_per_rating"]
    results["memory_note"] = (
        "Peak RSS and bytes/rating: from the memory run (same data, VmHWM of each method's process, "
        f"`{memory['command']}`); this run's own figures (ru_maxrss, which Linux carries over from the "
        "driver across fork + exec) are kept as *_ru_maxrss in the JSON and are not valid.")
    return results


def _fmt(x, spec):
    return "—" if x is None else format(x, spec)


def table(results) -> str:
    lines = [f"Synthetic ratings, {SHAPE[0]:,} × {SHAPE[1]:,} (ML-20M's shape), rank-{TRUE_RANK} + biases + "
             f"noise σ={NOISE}; 90/10 train/validation; {results['threads']} thread(s); "
             f"{results['machine']['cpu']}, load average at start {results['machine']['loadavg_at_start'][0]:.2f} "
             f"(shared machine). Command: `{results['command']}`.", "",
             *([results["memory_note"], ""] if results.get("memory_note") else []),
             "| nnz | method | epoch (s) | DLRL epoch ÷ this | fit (s) | epochs | final val RMSE | "
             "target | time to target (s) | DLRL ÷ this | peak RSS (MB) | bytes / rating |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["runs"]:
        if "curve" not in r:
            why = r.get("skipped") or r.get("error", "")[:80].replace("|", "/").replace("\n", " ")
            lines.append(f"| {r['nnz']:.0e} | {r['method']} | {why} |||||||||| |")
            continue
        lines.append(
            f"| {r['nnz']:.0e} | {r['method']} | {r['epoch_s']:.4g} | {_fmt(r.get('dlrl_epoch_ratio'), '.3g')} | "
            f"{r['fit_s']:.3g} | {r['epochs']} | {r['final_val_rmse']:.4f} | {_fmt(r.get('target_val_rmse'), '.4f')} | "
            f"{_fmt(r.get('time_to_target_s'), '.3g')} | {_fmt(r.get('dlrl_time_to_target_ratio'), '.3g')} | "
            f"{_fmt(None if r.get('peak_rss_bytes') is None else r['peak_rss_bytes'] / 2**20, '.0f')} | "
            f"{_fmt(r.get('bytes_per_rating'), '.0f')} |")
    return "\n".join(lines) + "\n"


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method, marker in zip(METHODS, "osd"):
        rs = [r for r in results["runs"] if r["method"] == method and "curve" in r]
        if not rs:
            continue
        x = [r["nnz"] for r in rs]
        axes[0].loglog(x, [r["epoch_s"] for r in rs], marker=marker, label=method)
        tt = [(r["nnz"], r["time_to_target_s"]) for r in rs if r.get("time_to_target_s")]
        if tt:
            axes[1].loglog(*zip(*tt), marker=marker, label=method)
    axes[0].set(xlabel="training + validation ratings (nnz)", ylabel="seconds per epoch", title="epoch time")
    axes[1].set(xlabel="nnz", ylabel="seconds", title="time to the validation-RMSE target")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"{SHAPE[0]:,}×{SHAPE[1]:,} synthetic, {results['threads']} thread(s), shared 2-core CPU",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
