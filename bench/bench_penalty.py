"""Timing: ``lowrank_penalty`` (matmul-only) vs ``lowrank_penalty_exact`` (SVD), value + backward.

For each square size n, S is an n×n matrix with a low-rank signal plus noise (rank n/16 signal,
Gaussian noise 0.1 per entry: the spectrum of a matrix being completed); both penalties are
evaluated and differentiated (``R(S).backward()``) on it, alternately, ``--repeats`` times after
one warm-up each (so the two see the same machine state), and the medians are reported with
their ratio (exact / penalty: > 1 means the SVD-free penalty is faster). On CUDA every timing
is bracketed by ``torch.cuda.synchronize()``.

    python bench/bench_penalty.py [--quick] [--json OUT] [--h nuclear] [--dtype float32]
        [--sizes 256 512 ...] [--repeats 5] [--device cpu|cuda] [--threads N]

``--quick`` stops at n = 1024. Prints a markdown table; ``--json OUT`` also writes the rows
(each with device, torch version, date, dtype, h, threads).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import sys
import time

import torch

from dlrl_kernels import lowrank_penalty, lowrank_penalty_exact

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _env import device_name  # noqa: E402

SIZES = (256, 512, 1024, 2048, 4096)


def make_input(n, dtype, device, gen):
    r = max(1, n // 16)
    A = torch.randn(n, r, generator=gen, dtype=torch.float64)
    B = torch.randn(n, r, generator=gen, dtype=torch.float64)
    S = A @ B.T / r**0.5 + 0.1 * torch.randn(n, n, generator=gen, dtype=torch.float64)
    return S.to(dtype=dtype, device=device)


def timed(fn, S, device, kw):
    X = S.detach().clone().requires_grad_()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    v = fn(X, **kw)
    v.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t, float(v.detach())


def bench_size(n, h, kw, dtype, device, repeats, gen):
    S = make_input(n, dtype, device, gen)
    pk = dict(h=h, **kw)
    timed(lowrank_penalty, S, device, pk)  # warm-up (plans, allocator, kernels)
    timed(lowrank_penalty_exact, S, device, pk)
    tp, te = [], []
    for _ in range(repeats):
        t, vp = timed(lowrank_penalty, S, device, pk)
        tp.append(t)
        t, ve = timed(lowrank_penalty_exact, S, device, pk)
        te.append(t)
    mp, me = statistics.median(tp), statistics.median(te)
    return {
        "n": n,
        "h": h,
        "kwargs": kw,
        "dtype": str(dtype).replace("torch.", ""),
        "device": device_name(device),
        "torch": torch.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "penalty_s": mp,
        "exact_s": me,
        "ratio_exact_over_penalty": me / mp,
        "penalty_all_s": tp,
        "exact_all_s": te,
        "value_rel_diff": abs(vp - ve) / abs(ve),
    }


def table(rows):
    out = [
        "| n | h | dtype | lowrank_penalty + backward (ms) | SVD exact + backward (ms) | exact / penalty | value rel. diff |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['n']} | {r['h']} | {r['dtype']} | {1e3 * r['penalty_s']:.1f} | {1e3 * r['exact_s']:.1f} "
            f"| {r['ratio_exact_over_penalty']:.2f} | {r['value_rel_diff']:.1e} |"
        )
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="stop at n = 1024")
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--h", default="nuclear", help="penalty h (default nuclear)")
    ap.add_argument("--p", type=float, default=0.5, help="Schatten p (h=schatten)")
    ap.add_argument("--gamma", type=float, default=None)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per size (3 from n = 2048 on)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="OUT", default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    dtype = getattr(torch, a.dtype)
    sizes = [n for n in a.sizes if not (a.quick and n > 1024)]
    kw = {}
    if a.h == "schatten":
        kw["p"] = a.p
    if a.gamma is not None:
        kw["gamma"] = a.gamma
    gen = torch.Generator().manual_seed(a.seed)
    rows = []
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    for n in sizes:
        reps = a.repeats if n < 2048 else min(a.repeats, 3)
        row = bench_size(n, a.h, kw, dtype, device, reps, gen)
        rows.append(row)
        print(
            f"n={n}: penalty {1e3 * row['penalty_s']:.1f} ms, exact {1e3 * row['exact_s']:.1f} ms "
            f"(ratio {row['ratio_exact_over_penalty']:.2f})",
            file=sys.stderr,
            flush=True,
        )
    total = time.perf_counter() - t0
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    load = "" if load0 is None else f", load average {load0:.1f} → {load1:.1f} (other processes compete)"
    print(f"{rows[0]['device']}, torch {torch.__version__}, {rows[0]['date']}, total {total:.0f} s{load}\n")
    print(table(rows))
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            meta = {"command": " ".join(["bench/bench_penalty.py", *(argv or sys.argv[1:])]), "total_s": total}
            meta["loadavg_1min_start_end"] = [load0, load1]
            json.dump({**meta, "rows": rows}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
