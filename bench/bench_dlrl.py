"""DLRL fit time and test RMSE on MovieLens-100K (published split), side by side in one run.

Rows:
- ``eager-dense (published algorithm)``: a plain eager PyTorch implementation of the
  published algorithm as SPEC §4 describes it — dense m×n mask and residual, every epoch
  recomputes the chain products, the block gradients, SVD spectral norms and SVD
  pseudo-inverses, autograd through all of it. This is the speed reference (the published
  code itself needs 31.5 s for its 300 epochs on the 2-core CI machine, SPEC §5).
- ``dlrl mode=published``: the library reproducing the same algorithm (fixed factors: the
  gradients, Lipschitz constants and the three d×d pieces of S_k(η) are computed once).
- ``dlrl mode=paper``, and paper mode with biases and clipping to the rating scale (no value
  chosen on the test split: ``tune=False``, every other setting is the library default).

``--before FILE``: also time an older ``python/dlrl/model.py`` (e.g. ``git show
<rev>:python/dlrl/model.py > /tmp/model_before.py``) on the same rows, interleaved with the
current one in the same process, so the before/after ratio is measured side by side.

Every row trains once untimed on a few epochs first (imports, allocator, thread pools), then
the timed fit. ``fit_seconds`` is the wall time of ``fit`` (data preparation included);
``cpu_seconds`` the process CPU time of the same call (with one thread it is the wall time the
fit would take on an idle core — the number to compare on a shared machine).

    python bench/bench_dlrl.py --threads 1                     # full: 300 epochs each
    python bench/bench_dlrl.py --quick              # 30 epochs each (a smoke run)
    python bench/bench_dlrl.py --threads 1 --skip-eager --before /tmp/model_before.py --json out.json
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

from dlrl.datasets import load_movielens, split_published  # noqa: E402
from dlrl.metrics import rmse  # noqa: E402
from dlrl.model import DLRL  # noqa: E402

#: the configurations timed (README "Results"); nothing here was chosen on the test split
CONFIGS = {
    "dlrl mode=published": dict(mode="published"),
    "dlrl mode=paper": dict(mode="paper"),
    "dlrl paper + biases + clip": dict(mode="paper", bias=True, clip=(1.0, 5.0)),
}


# ----------------------------------------------------------------------------- eager reference
def eager_published(train, test, shape, epochs=300, d=20, blocks=5, p=1.0, seed=0, dtype=torch.float32):
    """The published algorithm, dense and eager (see module doc). Returns (test_rmse, seconds, epochs)."""
    m, n = shape
    t0 = time.perf_counter()
    X = torch.zeros(m, n, dtype=dtype)
    H = torch.zeros(m, n, dtype=dtype)
    X[train.rows, train.cols] = train.values.to(dtype)
    H[train.rows, train.cols] = 1.0
    g = torch.Generator().manual_seed(seed)
    Xs = [torch.rand(m, d, generator=g, dtype=dtype)] + [torch.eye(d, dtype=dtype) for _ in range(blocks - 2)] + \
         [torch.rand(d, n, generator=g, dtype=dtype)]
    Ws = [torch.nn.Parameter(torch.rand(m, d, generator=g, dtype=dtype))] + \
         [torch.nn.Parameter(torch.eye(d, dtype=dtype)) for _ in range(blocks - 2)] + \
         [torch.nn.Parameter(torch.rand(d, n, generator=g, dtype=dtype))]
    eta = torch.nn.Parameter(torch.tensor(0.1, dtype=dtype))
    opt = torch.optim.Adam([*Ws, eta], lr=0.01, betas=(0.9, 0.92), weight_decay=0.15)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.1, patience=10)

    def chain(fs):
        """X_a⋯X_b, or None for an empty product (identity: norm 1, nothing to multiply)."""
        out = None
        for f in fs:
            out = f if out is None else out @ f
        return out

    def forward():
        e = eta.clamp(0.0, 1.0)
        P = chain(Xs)
        R = H * (X - P)
        outs = []
        for k in range(blocks):
            A = chain(Xs[:k])
            B = chain(Xs[k + 1:])
            grad = R if A is None else A.t() @ R
            grad = grad if B is None else grad @ B.t()
            sa = torch.linalg.svdvals(A)[0].clamp_min(1e-4) if A is not None else 1.0
            sb = torch.linalg.svdvals(B)[0].clamp_min(1e-4) if B is not None else 1.0
            Y = Xs[k] - grad / (e * (sa * sb) ** 2)
            W = Ws[k]
            flip = Y.shape[0] < 2 * Y.shape[1]
            if flip:
                Y, W = Y.t(), W.t()
            S = Y.t() @ Y
            st = 0.002 * S.diagonal().abs().max()
            G = 0.5 * torch.pow(S + st, (p - 2.0) / 2.0)
            T = 0.5 * W @ torch.linalg.pinv(G)
            out = torch.relu(T)
            outs.append(out.t() if flip else out)
        return outs

    done = 0
    for _ in range(epochs):
        opt.zero_grad()
        outs = forward()
        Ph = chain(outs)
        J = 0.5 * ((H * (Ph - X)) ** 2).sum()
        J.backward()
        opt.step()
        sched.step(float(J.detach()))
        done += 1
        if opt.param_groups[0]["lr"] < 1e-3 * 0.01:
            break
    secs = time.perf_counter() - t0
    with torch.no_grad():
        Ph = chain(forward())
        err = rmse(Ph[test.rows, test.cols], test.values)
    return err, secs, done


def run_dlrl(train, test, shape, epochs, kw, cls=DLRL, threads=None):
    model = cls(shape, **kw)
    sig = inspect.signature(cls.fit).parameters
    fit_kw = {"tune": False} if "tune" in sig else {}
    if threads and "threads" in sig:
        fit_kw["threads"] = threads
    c0 = time.process_time()
    model.fit(rows=train.rows, cols=train.cols, values=train.values, epochs=epochs, progress=False, **fit_kw)
    cpu = time.process_time() - c0
    return rmse(model.predict(test.rows, test.cols), test.values), model.fit_seconds, len(model.history), model, cpu


def time_processes(data, k, epochs):
    """Wall time of ``k`` whole ``dlrl fit DATA --mode published`` processes, one after another
    (what a user waits for: start, imports, loading and splitting the ratings, the fit, the test
    evaluation, exit), with the fit's own ``fit_seconds`` and test RMSE from its JSON."""
    import subprocess
    import tempfile

    exe = Path(sys.executable).with_name("dlrl")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "dlrl"]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fit.json"
        args = [*cmd, "fit", data, "--mode", "published", "--split", "published", "--epochs", str(epochs), "--threads",
                "1", "--quiet", "--json", str(out), "--force"]
        for _ in range(k):
            t0 = time.perf_counter()
            subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            res = json.loads(out.read_text())
            runs.append({"wall_seconds": wall, "fit_seconds": res.get("fit_seconds"), "test_rmse": res.get("test_rmse")})
            print(f"whole process: {wall:.2f} s (fit {runs[-1]['fit_seconds']:.2f} s, RMSE {runs[-1]['test_rmse']:.4f})",
                  flush=True)
    walls = sorted(r["wall_seconds"] for r in runs)
    return {"command": " ".join(["dlrl", *args[len(cmd):-3]]), "runs": runs, "median_wall_seconds": walls[len(walls) // 2],
            "min_wall_seconds": walls[0]}


def load_model_module(path):
    """An older model.py as module ``dlrl._model_before`` (its relative imports resolve in dlrl)."""
    spec = importlib.util.spec_from_file_location("dlrl._model_before", path)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "dlrl"
    sys.modules["dlrl._model_before"] = mod
    spec.loader.exec_module(mod)
    return mod


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ml-100k"), help="ML-100K folder")
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--quick", action="store_true", help="30 epochs per row")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--skip-eager", action="store_true", help="leave out the slow eager reference row")
    ap.add_argument("--before", default=None, help="an older model.py to time side by side (see module doc)")
    ap.add_argument("--repeats", type=int, default=1, help="timed fits per row (the minimum is reported)")
    ap.add_argument("--process", type=int, default=0, metavar="K",
                    help="also time K whole `dlrl fit DATA --mode published` processes (start to exit: "
                         "interpreter, imports, loading, splitting, 300 epochs, evaluation)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    before = load_model_module(a.before) if a.before else None
    if a.threads:
        torch.set_num_threads(a.threads)
    epochs = 30 if a.quick else a.epochs
    data = load_movielens(a.data)
    train, test = split_published(data)
    shape = data.shape
    rows = []

    # warm-up (imports: Adam pulls in torch._dynamo on first use; thread pools)
    run_dlrl(train, test, shape, 3, dict(mode="paper"))
    if before is not None:
        run_dlrl(train, test, shape, 3, dict(mode="paper"), before.DLRL)
    if not a.skip_eager:
        eager_published(train, test, shape, epochs=2)
        err, secs, ep = eager_published(train, test, shape, epochs=epochs)
        rows.append({"system": "eager-dense (published algorithm)", "test_rmse": err, "fit_seconds": secs, "epochs": ep})
        print(f"{rows[-1]['system']:<34} RMSE {err:.4f}  {secs:8.2f} s  {ep} epochs", flush=True)
    for name, kw in CONFIGS.items():
        versions = [("before", before.DLRL)] if before is not None else []
        versions.append(("after" if before is not None else None, DLRL))
        best = {}
        for _ in range(max(1, a.repeats)):
            for tag, cls in versions:  # interleaved: the load of a shared machine hits both alike
                err, secs, ep, model, cpu = run_dlrl(train, test, shape, epochs, kw, cls, a.threads)
                if tag not in best or cpu < best[tag][4]:
                    best[tag] = (err, secs, ep, model, cpu)
        for tag, _ in versions:
            err, secs, ep, model, cpu = best[tag]
            label = name if tag is None else f"{name} [{tag}]"
            rows.append({"system": label, "test_rmse": err, "fit_seconds": secs, "cpu_seconds": cpu, "epochs": ep,
                         "backend": model.backend_used, "stop_reason": model.stop_reason,
                         "threads": getattr(model, "threads_used", None) or torch.get_num_threads()})
            print(f"{label:<44} RMSE {err:.4f}  {secs:8.2f} s wall  {cpu:8.2f} s cpu  {ep} epochs", flush=True)
        if before is not None:
            rows[-1]["cpu_speedup_vs_before"] = best["before"][4] / best["after"][4]
            rows[-1]["wall_speedup_vs_before"] = best["before"][1] / best["after"][1]
    process = time_processes(a.data, a.process, epochs) if a.process else None
    base = rows[0]["fit_seconds"] if not a.skip_eager else None
    print("\n| system | test RMSE | fit time (s) | CPU time (s) | epochs | speed-up vs eager |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        sp = f"{base / r['fit_seconds']:.0f}×" if base else "—"
        r["speedup_vs_eager"] = base / r["fit_seconds"] if base else None
        cpu = f"{r['cpu_seconds']:.2f}" if "cpu_seconds" in r else "—"
        print(f"| {r['system']} | {r['test_rmse']:.4f} | {r['fit_seconds']:.2f} | {cpu} | {r['epochs']} | {sp} |")
    if a.json:
        meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__, "threads": torch.get_num_threads(),
                "machine": platform.platform(), "cpu": platform.processor() or platform.machine(),
                "device": "cpu", "data": "MovieLens-100K, published split (seed 2020 randperm, 80/20)",
                "epochs": epochs, "before": a.before, "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        out = {"meta": meta, "rows": rows}
        if process:
            out["process"] = process
        Path(a.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {a.json}")


def render_md(results_json, before_after_json=None):
    """The README table (markdown) from a committed ``--json`` run (and, optionally, the
    interleaved before/after file): generated, never typed by hand."""
    d = json.loads(Path(results_json).read_text())
    meta, rows = d["meta"], d["rows"]
    base = next((r["fit_seconds"] for r in rows if r["system"].startswith("eager")), None)
    load = meta.get("load_average")
    out = [f"MovieLens-100K, {meta['data'].split(', ', 1)[-1]}, {meta['epochs']} epochs a fit, {meta['threads']} thread(s), "
           f"torch {meta['torch']}, {meta['date']}" + (f", load average {load[0]:.1f} at the end" if load else "") +
           f". Command: `python bench/bench_dlrl.py --threads 1 --repeats 2"
           + (f" --process {len(d['process']['runs'])}" if d.get("process") else "")
           + f" --json {Path(results_json).as_posix()}`"
           " (rows side by side in one process; best of the repeats).", "",
           "| system | test RMSE | fit time (s) | speed-up vs eager dense |", "|---|---|---|---|"]
    for r in rows:
        sp = f"{base / r['fit_seconds']:.1f}×" if base else "—"
        out.append(f"| {r['system']} | {r['test_rmse']:.4f} | {r['fit_seconds']:.2f} | {sp} |")
    proc = d.get("process")
    if proc:
        out += ["", f"Whole process, `{proc['command']}` (start to exit: interpreter, `import torch`, loading and "
                    f"splitting the ratings, the fit, the test evaluation), {len(proc['runs'])} runs one after another: "
                    f"median **{proc['median_wall_seconds']:.2f} s**, fastest {proc['min_wall_seconds']:.2f} s "
                    f"(the fit itself {min(r['fit_seconds'] for r in proc['runs']):.2f}–"
                    f"{max(r['fit_seconds'] for r in proc['runs']):.2f} s of it)."]
    if before_after_json:
        ba = json.loads(Path(before_after_json).read_text())
        busy_any = bool(ba.get("busy_neighbour", {}).get("rows"))
        out += ["", f"Before/after ({ba['meta']['before']} vs {ba['meta']['after']}; interleaved in the same minutes, "
                    f"best CPU seconds of {ba['meta'].get('rounds', 2)}"
                    + ("; then beside one core-spinning process" if busy_any else "")
                    + (f"; command: `{ba['meta']['command']}`" if ba["meta"].get("command") else "") + "):", "",
                "| system | before (s) | after (s) | speed-up | busy neighbour: before → after (s) |", "|---|---|---|---|---|"]
        busy = ba.get("busy_neighbour", {}).get("rows", {})
        for r in ba["rows"]:
            b = busy.get(r["system"], {})
            bs = (f"{b['before']['fit_seconds']:.2f} → {b['after']['fit_seconds']:.2f}"
                  if "before" in b and "after" in b else "—")
            out.append(f"| {r['system']} | {r['best_cpu_before']:.2f} | {r['best_cpu_after']:.2f} | "
                       f"{r['speedup']:.2f}× | {bs} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--render-md":
        # python bench/bench_dlrl.py --render-md RESULTS.json [BEFORE_AFTER.json] OUT.md
        args = sys.argv[2:]
        Path(args[-1]).write_text(render_md(args[0], args[1] if len(args) > 2 else None))
        print(f"wrote {args[-1]}")
    else:
        main()
