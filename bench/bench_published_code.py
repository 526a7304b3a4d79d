#!/usr/bin/env python
"""The published DLRL code's training loop beside this library's, side by side in one run.

The published code (github.com/chenzl23/DLRL) is not part of this project and is not
redistributed: pass a checkout of it with ``--published DIR`` (its ``DLRL.py``, ``shrink.py``,
``util.py``, ``data_preprocessor.py``). The script

- writes ML-100K's ``u.data`` in the ``user::item::rating::time`` form its reader expects into a
  temporary folder (``data/ml_100k/ratings.txt``) and runs, in a fresh process with one
  thread, its model with the settings of its demo (SPEC §4: d = 20, five blocks with p = 1,
  300 epochs, Adam lr 0.01, η₀ 0.1, plateau patience 10, factor 0.1, seed 2020), timing
  ``model.train()`` only (``train_seconds``; ``train_cpu`` = that call's process CPU time);
  one shim: torch ≥ 2.7's ``ReduceLROnPlateau`` lost the ``verbose`` argument it passes, which
  is dropped;
- runs this library's ``DLRL(mode="published")`` for 300 epochs on the published split in a
  fresh process with one thread (``fit_seconds``: the fit, data preparation included; the
  same process CPU time);
- alternates the two ``--rounds`` times (the machine's speed drifts: only ratios of
  neighbouring runs mean something) and reports medians and the ratio of the medians.

Test RMSE is a square root for both (the published code prints an MSE under "Test RMSE").

    python bench/bench_published_code.py --published /path/to/DLRL --rounds 3 \\
        --json bench/results/published_code_side_by_side.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
from dlrl._io import atomic_write_text  # noqa: E402

ML = Path(os.environ.get("DLRL_ML100K", ROOT.parent / "shared" / "data" / "ml-100k"))
PUBLISHED_FILES = ("DLRL.py", "shrink.py", "util.py", "data_preprocessor.py")

#: the published model, driven with its demo's settings; prints one JSON line
_PUBLISHED_DRIVER = textwrap.dedent("""
    import json, random, sys, time
    import numpy as np, torch
    torch.set_num_threads(1)
    _Plateau = torch.optim.lr_scheduler.ReduceLROnPlateau
    class _NoVerbose(_Plateau):  # torch >= 2.7 has no 'verbose' argument
        def __init__(self, *args, verbose=None, **kw):
            super().__init__(*args, **kw)
    torch.optim.lr_scheduler.ReduceLROnPlateau = _NoVerbose
    from data_preprocessor import read_rating
    from DLRL import DLRL
    random.seed(2020); np.random.seed(2020); torch.manual_seed(2020)
    R, mask, train_mask, test_mask = read_rating("data/ml_100k", 0.8)
    model = DLRL(R, train_mask, test_mask, 20, torch.ones(5), 300, 0.01, 0.1, scale=1, patience=10, decay=0.1,
                 verbose=10 ** 9)
    t0, c0 = time.perf_counter(), time.process_time()
    model.train()
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    with torch.no_grad():
        P = model.predict()
    mse = float(((R - P) ** 2 * test_mask).sum() / test_mask.sum())
    print("RESULT " + json.dumps({"train_seconds": secs, "train_cpu": cpu, "test_rmse": mse ** 0.5}))
""")

#: this library, published mode, 300 epochs, one thread; prints one JSON line
_OURS_DRIVER = textwrap.dedent("""
    import json, sys, time
    import torch
    torch.set_num_threads(1)
    from dlrl.datasets import load_movielens, split_published
    from dlrl.metrics import rmse
    from dlrl.model import DLRL
    train, test = split_published(load_movielens(sys.argv[1]))
    model = DLRL(train.shape, mode="published", seed=0)
    c0 = time.process_time()
    model.fit(rows=train.rows, cols=train.cols, values=train.values, epochs=300, progress=False, tune=False,
              threads=1)
    cpu = time.process_time() - c0
    err = rmse(model.predict(test.rows, test.cols), test.values)
    print("RESULT " + json.dumps({"train_seconds": model.fit_seconds, "train_cpu": cpu, "test_rmse": err,
                                  "epochs": len(model.history)}))
""")


def _result(proc, what):
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{what}: no result (exit {proc.returncode}); stderr tail:\n{proc.stderr[-2000:]}")


def run_published(published: Path, work: Path):
    env = dict(os.environ, PYTHONPATH=str(published), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _PUBLISHED_DRIVER], cwd=work, env=env, capture_output=True,
                          text=True)
    return _result(proc, "published code")


def run_ours(ml: Path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "python")]), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _OURS_DRIVER, str(ml)], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    return _result(proc, "dlrl")


def prepare(ml: Path, work: Path):
    """ML-100K's u.data as the published reader's ``user::item::rating::time`` lines, file order kept."""
    src = ml / "u.data"
    if not src.is_file():
        raise SystemExit(f"--ml100k: expected MovieLens-100K's u.data in {ml}, not found")
    out = work / "data" / "ml_100k"
    out.mkdir(parents=True)
    lines = ["::".join(line.split("\t")) for line in src.read_text().splitlines() if line.strip()]
    (out / "ratings.txt").write_text("\n".join(lines) + "\n")
    return len(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--published", required=True, help="a checkout of github.com/chenzl23/DLRL (not included)")
    ap.add_argument("--ml100k", default=str(ML), help="MovieLens-100K folder (u.data)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating runs of each (default 3)")
    ap.add_argument("--json", default=None, help="write the results here (atomically)")
    ap.add_argument("--md", default=None, help="and a markdown table generated from them (README section)")
    args = ap.parse_args(argv)
    published = Path(args.published).resolve()
    missing = [f for f in PUBLISHED_FILES if not (published / f).is_file()]
    if missing:
        ap.error(f"--published: expected the published code's {', '.join(PUBLISHED_FILES)} in {published}, "
                 f"missing {', '.join(missing)}")
    if args.rounds < 1:
        ap.error(f"--rounds: expected at least 1, got {args.rounds}")
    if args.json and Path(args.json).resolve().parent == published:
        ap.error("--json: expected a path outside the published code's folder")
    runs = {"published code": [], "dlrl mode=published": []}
    with tempfile.TemporaryDirectory(prefix="dlrl_published_") as tmp:
        n = prepare(Path(args.ml100k), Path(tmp))
        for k in range(args.rounds):
            for name in runs:
                res = run_published(published, Path(tmp)) if name == "published code" else run_ours(Path(args.ml100k))
                runs[name].append(res)
                print(f"round {k + 1}: {name:20s} train {res['train_seconds']:.2f} s (CPU {res['train_cpu']:.2f} s), "
                      f"test RMSE {res['test_rmse']:.4f}", flush=True)
    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("train_seconds", "train_cpu", "test_rmse")}
           for name, rs in runs.items()}
    ratio = med["published code"]["train_seconds"] / med["dlrl mode=published"]["train_seconds"]
    ratio_cpu = med["published code"]["train_cpu"] / med["dlrl mode=published"]["train_cpu"]
    print(f"training loop, median of {args.rounds}: published code {med['published code']['train_seconds']:.2f} s, "
          f"dlrl {med['dlrl mode=published']['train_seconds']:.3f} s: {ratio:.1f}× (CPU time {ratio_cpu:.1f}×)")
    if args.json:
        from _env import device_name

        import torch

        doc = {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "date": time.strftime("%Y-%m-%d %H:%M"),
               "machine": device_name("cpu") + ", 1 thread", "python": platform.python_version(),
               "torch": torch.__version__, "ratings": n, "rounds": args.rounds, "runs": runs, "median": med,
               "ratio_train_seconds": ratio, "ratio_train_cpu": ratio_cpu,
               "note": "published code: its model.train() with its demo's settings (one shim: ReduceLROnPlateau "
                       "without 'verbose'); dlrl: DLRL(mode='published').fit, 300 epochs, data preparation "
                       "included; alternating fresh processes, one thread each"}
        atomic_write_text(args.json, json.dumps(doc, indent=1))
        if args.md:
            atomic_write_text(args.md, markdown(doc, Path(args.json).name))
    return 0


def markdown(doc, json_name):
    med = doc["median"]
    lines = [f"<!-- generated by bench/bench_published_code.py from {json_name}; do not edit by hand -->",
             f"The published code's training loop beside this library's, ML-100K, 300 epochs, one thread, "
             f"{doc['rounds']} alternating runs each in fresh processes, medians ({doc['machine']}, torch "
             f"{doc['torch']}, {doc['date']}):", "",
             "| system | training loop (s) | its CPU time (s) | test RMSE |", "|---|---|---|---|"]
    for name, m in med.items():
        lines.append(f"| {name} | {m['train_seconds']:.3f} | {m['train_cpu']:.3f} | {m['test_rmse']:.4f} |")
    lines += ["", f"Ratio: **{doc['ratio_train_seconds']:.0f}×** ({doc['ratio_train_cpu']:.0f}× in CPU time). "
              f"Command: `python bench/bench_published_code.py --published <checkout of github.com/chenzl23/DLRL> "
              f"--rounds {doc['rounds']} --json ... --md ...`."]
    return "\n".join(lines) + "\n"



if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
