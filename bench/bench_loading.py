"""Loading and splitting ratings files: the vectorised fast path against the general parser.

- ML-100K (``u.data``, 100,000 lines): ``load_movielens`` + ``split_published``, fast path and
  general parser side by side in one run (median of ``--repeats``).
- A generated ``u.data``-style file of ``--lines`` lines (default 2·10⁷, written once under
  /tmp, not committed): ``load_ratings(scale=(1, 5))`` + ``split_random``, fast path only (the
  general parser is timed on the first 10⁶ lines and scaled, it would take minutes).

    python bench/bench_loading.py                         # ML-100K + 2e7 lines
    python bench/bench_loading.py --lines 0               # ML-100K only
    python bench/bench_loading.py --json bench/results/scale_loading_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

import dlrl.datasets as ds  # noqa: E402

ML100K = ROOT.parent / "shared" / "data" / "ml-100k"


def _general(fn):
    real = ds._read_table_fast
    ds._read_table_fast = lambda *a, **k: None
    try:
        return fn()
    finally:
        ds._read_table_fast = real


def _time(fn, repeats):
    """Median wall time and median CPU time of this process (the CPU time is what the work
    costs when the shared machine is oversubscribed)."""
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def make_file(path: Path, lines: int, seed: int = 0):
    """u.data-style lines: user, item (ML-20M-like id ranges), rating 1..5, timestamp."""
    if path.exists() and path.stat().st_size > 0:
        return
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        for start in range(0, lines, 1_000_000):
            k = min(1_000_000, lines - start)
            u = rng.integers(1, 138_001, k)
            i = rng.integers(1, 27_001, k)
            r = rng.integers(1, 6, k)
            t = rng.integers(789_652_009, 1_427_784_002, k)
            f.write("".join(f"{a}\t{b}\t{c}\t{d}\n" for a, b, c, d in zip(u.tolist(), i.tolist(),
                                                                       r.tolist(), t.tolist())))
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=float, default=2e7)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    res = {"command": "python bench/bench_loading.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "python": platform.python_version(), "numpy": np.__version__,
           "loadavg_at_start": os.getloadavg(), "cores": os.cpu_count()}

    def ml100k():
        d = ds.load_movielens(ML100K)
        ds.split_published(d)

    fast, fast_cpu = _time(ml100k, args.repeats)
    slow, slow_cpu = _time(lambda: _general(ml100k), args.repeats)
    res["ml100k"] = {"fast_s": fast, "general_s": slow, "speedup": slow / fast,
                     "fast_cpu_s": fast_cpu, "general_cpu_s": slow_cpu}
    print(f"ML-100K load + published split: fast {fast * 1e3:.1f} ms (CPU {fast_cpu * 1e3:.1f} ms), "
          f"general {slow * 1e3:.1f} ms (CPU {slow_cpu * 1e3:.1f} ms): {slow / fast:.1f}x", flush=True)

    n = int(args.lines)
    if n:
        path = Path(f"/tmp/dlrl_ratings_{n}.tsv")
        t = time.perf_counter()
        make_file(path, n)
        res["generated_s"] = time.perf_counter() - t
        t, c = time.perf_counter(), time.process_time()
        d = ds.load_ratings(path, scale=(1, 5))
        load_s, load_cpu = time.perf_counter() - t, time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        ds.split_random(d, 0.1, seed=0)
        split_s, split_cpu = time.perf_counter() - t, time.process_time() - c
        res["big"] = {"lines": n, "bytes": path.stat().st_size, "nnz_after_duplicates": d.nnz,
                      "load_s": load_s, "split_s": split_s, "load_cpu_s": load_cpu, "split_cpu_s": split_cpu}
        print(f"{n:.0e} lines ({path.stat().st_size / 1e6:.0f} MB): load {load_s:.2f} s (CPU {load_cpu:.2f} s), "
              f"split {split_s:.2f} s (CPU {split_cpu:.2f} s), nnz {d.nnz}", flush=True)
        del d
        # the general parser on the first 1e6 lines, scaled
        head = Path(f"/tmp/dlrl_ratings_{n}_head1e6.tsv")
        if not head.exists():
            with open(path) as src, open(head, "w") as dst:
                for k, line in enumerate(src):
                    if k >= 1_000_000:
                        break
                    dst.write(line)
        t = time.perf_counter()
        _general(lambda: ds.load_ratings(head, scale=(1, 5)))
        g = time.perf_counter() - t
        t = time.perf_counter()
        ds.load_ratings(head, scale=(1, 5))
        f = time.perf_counter() - t
        res["head_1e6"] = {"general_s": g, "fast_s": f, "speedup": g / f}
        print(f"first 1e6 lines: fast {f:.3f} s, general {g:.2f} s ({g / f:.1f}x)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
