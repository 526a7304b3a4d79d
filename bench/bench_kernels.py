"""Kernel benchmarks: every kernel family, library op vs eager PyTorch vs the reference backend.

For each family the same random inputs (never zeros) are timed with

- ``library``   the public op as a user calls it (``backend="auto"``: Triton / CUDA kernels on a
                GPU, the pure-PyTorch reference on CPU tensors),
- ``eager``     the plain PyTorch composition one would write without the library (dense: form
                P = U V and mask it; sparse: gather factor rows; powers: ``torch.linalg.eigh``),
- ``reference`` the library's reference backend (``backend="reference"``),
- on a GPU also ``triton`` (forced) and kernel-level variants: the dense backward's "fused"
  (one pass over X, atomics into Q) vs "split" (two atomic-free passes) and the sparse
  scatter's "atomic" / "csr" / "deterministic" variants.

Timing: median over ``--reps`` runs after ``--warmup`` runs; CUDA events on a GPU,
``time.perf_counter`` on CPU; the implementations of a case are interleaved round by round.
Inputs are drawn once per family from a seeded generator.

Throughput columns. Dense and sparse residuals are memory-bound: GB/s uses the *minimal*
traffic of the op (dense: X and the mask once per pass over the m×n grid; sparse: per observed
entry the two indices, the value and the residual, plus the indices and residual again in the
backward — factor rows are assumed cached), and is also given as a percentage of the
device-to-device (or, on CPU, memory-to-memory) copy bandwidth measured at the start of the
same run. Sparse rows also give nnz/s, small-matrix rows matrices/s.

Sizes (``--quick`` on CPU in brackets): dense masked loss m = n = 16384, d = 32 on a GPU
(CPU 4096 [1024]); sparse nnz = 1e8, m = n = 2²⁰, d = 32 (CPU 4e6 [2e5], m = n = 2¹⁶ [2¹⁴]);
batched d = 32 work on 4096 matrices (CPU 512 [128]): S^½ Newton (kernel) vs eigh route,
Gram of 256×32 blocks, pinv of 64×32 blocks, σ_max² by power iteration vs eigvalsh.

    python bench/bench_kernels.py [--quick] [--json OUT] [--csv OUT] [--dtype float32]
        [--device cpu|cuda] [--families dense sparse power gram pinv spectral] [--reps N]
        [--threads N]

``--quick`` on CPU also defaults to one torch thread (see ``--threads``).

An eager composition that runs out of GPU memory is reported as "OOM" (itself a result: the
library never materialises the nnz×d gathers or the m×n product).
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
import time

import torch

import dlrl_kernels as dk

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _env import device_name  # noqa: E402

FAMILIES = ("dense", "sparse", "power", "gram", "pinv", "spectral")


# ----------------------------------------------------------------------------- environment
def triton_version():
    try:
        import triton

        return triton.__version__
    except Exception as exc:  # pragma: no cover - depends on the machine
        return f"unavailable ({exc})"


def sizes(device, quick, tiny=False):
    if tiny:  # smoke test of the script itself (bench/test_bench_kernels.py)
        return dict(dense=(96, 80, 32), sparse=(2000, 300, 200, 32), batch=8)
    if device.type == "cuda":
        return dict(dense=(16384, 16384, 32), sparse=(10**8, 2**20, 2**20, 32), batch=4096)
    if quick:
        return dict(dense=(1024, 1024, 32), sparse=(2 * 10**5, 2**14, 2**14, 32), batch=128)
    return dict(dense=(4096, 4096, 32), sparse=(4 * 10**6, 2**16, 2**16, 32), batch=512)


# ----------------------------------------------------------------------------- timing
class Timer:
    """Interleaved timing of the implementations of one case: each is warmed up, then every
    round runs each implementation once (load changes and drift hit all of them alike)."""

    def __init__(self, device, warmup, reps, budget_s):
        self.device, self.warmup, self.reps, self.budget_s = device, warmup, reps, budget_s

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def once(self, fn):
        if self.device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            return a.elapsed_time(b) / 1e3
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    def _oom(self, exc):
        if not is_oom(exc):
            raise exc
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return "OOM"

    def case(self, impls):
        """{name: list of seconds, or "OOM"} for [(name, fn), ...]."""
        out, live = {}, []
        for name, fn in impls:
            try:
                for _ in range(self.warmup):
                    fn()
                self.sync()
                out[name] = []
                live.append((name, fn))
            except RuntimeError as exc:
                out[name] = self._oom(exc)
        t_start = time.perf_counter()
        for i in range(self.reps):
            for name, fn in list(live):
                try:
                    out[name].append(self.once(fn))
                except RuntimeError as exc:
                    out[name] = self._oom(exc)
                    live.remove((name, fn))
            # CPU: slow cases stop after 3 rounds once the budget is used (bounds --quick)
            if i >= 2 and time.perf_counter() - t_start > self.budget_s:
                break
        return out


def copy_bandwidth(device, timer, nbytes):
    """Bytes moved per second by dst.copy_(src) (read + write) on ``device``."""
    n = nbytes // 4
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    t = statistics.median(timer.case([("copy", lambda: dst.copy_(src))])["copy"])
    return 2 * n * 4 / t


def is_oom(exc):
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def esize(dtype):
    return torch.empty((), dtype=dtype).element_size()


# ----------------------------------------------------------------------------- families
def fam_dense(sz, dtype, dev, gen, on_gpu):
    m, n, d = sz["dense"]
    U = (torch.randn(m, d, generator=gen, dtype=dtype) / math.sqrt(d)).to(dev)
    V = torch.randn(d, n, generator=gen, dtype=dtype).to(dev)
    X = torch.randn(m, n, generator=gen, dtype=dtype).to(dev)
    mask = (torch.rand(m, n, generator=gen) < 0.5).to(dev)
    es = esize(dtype)
    one_pass = m * n * (es + 1) + (m + n) * d * es
    Ug, Vg = U.clone().requires_grad_(), V.clone().requires_grad_()
    zero = torch.zeros((), dtype=dtype, device=dev)

    def eager_loss(u, v):
        E = torch.where(mask, u @ v - X, zero)
        return 0.5 * (E * E).sum()

    def fb(loss_fn):
        def run():
            Ug.grad = Vg.grad = None
            loss_fn(Ug, Vg).backward()

        return run

    backends = ["auto", "reference"] + (["triton"] if on_gpu else [])
    label = {"auto": "library", "reference": "reference", "triton": "triton"}
    cases = []
    fwd = [(label[b], (lambda b=b: dk.masked_loss([U, V], X, mask, backend=b))) for b in backends]
    fwd.insert(1, ("eager", lambda: eager_loss(U, V)))
    cases.append(("masked_loss fwd", f"m={m} n={n} d={d} 50% observed", fwd, one_pass, None))
    fwbw = [(label[b], fb(lambda u, v, b=b: dk.masked_loss([u, v], X, mask, backend=b))) for b in backends]
    fwbw.insert(1, ("eager", fb(eager_loss)))
    if on_gpu:
        from dlrl_kernels._triton import masked_residual as k

        for variant in ("fused", "split"):
            fwbw.append(
                (f"triton RQ only ({variant})", lambda variant=variant: k.dense_residual_rq(U, V, X, mask, 1.0, variant=variant))
            )
    cases.append(("masked_loss fwd+bwd", f"m={m} n={n} d={d}", fwbw, 2 * one_pass, None))
    return cases


def fam_sparse(sz, dtype, dev, gen, on_gpu):
    nnz, m, n, d = sz["sparse"]
    g_dev = torch.Generator(device=dev).manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    rows = torch.randint(0, m, (nnz,), generator=g_dev, device=dev, dtype=torch.int64).to(torch.int32)
    cols = torch.randint(0, n, (nnz,), generator=g_dev, device=dev, dtype=torch.int64).to(torch.int32)
    vals = torch.randn(nnz, generator=g_dev, device=dev, dtype=dtype)
    U = (torch.randn(m, d, generator=gen, dtype=dtype) / math.sqrt(d)).to(dev)
    V = torch.randn(d, n, generator=gen, dtype=dtype).to(dev)
    r64, c64 = rows.long(), cols.long()  # eager indexing wants int64: converted once, not timed
    es, isz = esize(dtype), 4
    fwd_bytes = nnz * (2 * isz + 2 * es)
    bwd_bytes = nnz * (2 * isz + es)
    Ug, Vg = U.clone().requires_grad_(), V.clone().requires_grad_()

    def eager_loss(u, v):
        e = (u[r64] * v.t()[c64]).sum(1) - vals
        return 0.5 * torch.dot(e, e)

    def fb(loss_fn):
        def run():
            Ug.grad = Vg.grad = None
            loss_fn(Ug, Vg).backward()

        return run

    backends = ["auto", "reference"] + (["triton"] if on_gpu else [])
    label = {"auto": "library", "reference": "reference", "triton": "triton"}
    cases = []
    fwd = [(label[b], (lambda b=b: dk.masked_loss_sparse([U, V], rows, cols, vals, backend=b))) for b in backends]
    fwd.insert(1, ("eager", lambda: eager_loss(U, V)))
    desc = f"nnz={nnz:.0e} m={m} n={n} d={d} int32 idx"
    cases.append(("masked_loss_sparse fwd", desc, fwd, fwd_bytes, nnz))
    fwbw = [(label[b], fb(lambda u, v, b=b: dk.masked_loss_sparse([u, v], rows, cols, vals, backend=b))) for b in backends]
    fwbw.insert(1, ("eager", fb(eager_loss)))
    if on_gpu:
        from dlrl_kernels._triton import masked_residual_sparse as k

        Vt = V.t().contiguous()
        e = torch.randn(nnz, generator=g_dev, device=dev, dtype=dtype)
        for variant in ("atomic", "csr", "deterministic"):
            fwbw.append(
                (f"triton RQ only ({variant})",
                 lambda variant=variant: k.sparse_rq(U, Vt, rows, cols, e, 1.0, m, n, variant=variant))
            )
    cases.append(("masked_loss_sparse fwd+bwd", desc, fwbw, fwd_bytes + bwd_bytes, nnz))
    # the training path: positions sorted once into a pattern (the reference then runs one
    # sampled product over the CSR and two CSR SpMMs; the native CPU kernel one pass each)
    pat = dk.sparse_pattern(r64, c64, (m, n))
    pv = vals[pat.order]
    fwbw_p = [(label[b], fb(lambda u, v, b=b: dk.masked_loss_sparse([u, v], pat.rows, pat.cols, pv, backend=b,
                                                                      pattern=pat))) for b in backends]
    cases.append(("masked_loss_sparse fwd+bwd, pattern", desc.replace("int32 idx", "sorted pattern"), fwbw_p,
                  fwd_bytes + bwd_bytes, nnz))
    return cases


def rand_spd_batch(B, d, dtype, dev, gen):
    Y = torch.randn(B, 2 * d, d, generator=gen, dtype=torch.float64)
    S = Y.transpose(-1, -2) @ Y / (2 * d) + 1e-3 * torch.eye(d, dtype=torch.float64)
    return S.to(dtype).to(dev)


def fam_power(sz, dtype, dev, gen, on_gpu):
    B, d, a = sz["batch"], 32, 0.5
    S = rand_spd_batch(B, d, dtype, dev, gen)
    C = torch.randn(B, d, d, generator=gen, dtype=dtype).to(dev)
    Sg = S.clone().requires_grad_()

    def eager(s):
        lam, Q = torch.linalg.eigh(0.5 * (s + s.transpose(-1, -2)))
        return (Q * lam.clamp_min(0).pow(a)[..., None, :]) @ Q.transpose(-1, -2)

    def fb(fn):
        def run():
            Sg.grad = None
            fn(Sg).backward(C)

        return run

    impls = [
        ("library newton", lambda s: dk.spd_power(s, a, method="newton")),
        ("library eigh", lambda s: dk.spd_power(s, a, method="eigh")),
        ("eager eigh", eager),
        ("reference newton", lambda s: dk.spd_power(s, a, method="newton", backend="reference")),
    ]
    if on_gpu:
        impls.append(("triton newton", lambda s: dk.spd_power(s, a, method="newton", backend="triton")))
    desc = f"{B} × {d}×{d}, a=1/2"
    return [
        ("spd_power fwd", desc, [(nm, (lambda f=f: f(S))) for nm, f in impls], None, None),
        ("spd_power fwd+bwd", desc, [(nm, fb(f)) for nm, f in impls], None, None),
    ]


def fam_gram(sz, dtype, dev, gen, on_gpu):
    B, r, d = sz["batch"], 256, 32
    Y = torch.randn(B, r, d, generator=gen, dtype=dtype).to(dev)
    impls = [
        ("library", lambda: dk.gram(Y)),
        ("eager", lambda: Y.transpose(-1, -2) @ Y),
        ("reference", lambda: dk.gram(Y, backend="reference")),
    ]
    if on_gpu:
        impls.append(("triton", lambda: dk.gram(Y, backend="triton")))
    return [("gram", f"{B} × {r}×{d}", impls, B * (r * d + d * d) * esize(dtype), None)]


def fam_pinv(sz, dtype, dev, gen, on_gpu):
    B, r, c = sz["batch"], 64, 32
    G = torch.randn(B, r, c, generator=gen, dtype=dtype).to(dev)
    impls = [
        ("library newton", lambda: dk.pinv(G, method="newton")),
        ("library svd", lambda: dk.pinv(G, method="svd")),
        ("eager linalg.pinv", lambda: torch.linalg.pinv(G)),
        ("reference newton", lambda: dk.pinv(G, method="newton", backend="reference")),
    ]
    if on_gpu:
        impls.append(("triton newton", lambda: dk.pinv(G, method="newton", backend="triton")))
    return [("pinv", f"{B} × {r}×{c}", impls, None, None)]


def fam_spectral(sz, dtype, dev, gen, on_gpu):
    B, r, d = sz["batch"], 256, 32
    A = torch.randn(B, r, d, generator=gen, dtype=dtype).to(dev)
    impls = [
        ("library power", lambda: dk.spectral_norm_sq(A, method="power")),
        ("library eigh", lambda: dk.spectral_norm_sq(A, method="eigh")),
        ("eager eigvalsh", lambda: torch.linalg.eigvalsh(A.transpose(-1, -2) @ A)[..., -1]),
        ("reference power", lambda: dk.spectral_norm_sq(A, method="power", backend="reference")),
    ]
    if on_gpu:
        impls.append(("triton power", lambda: dk.spectral_norm_sq(A, method="power", backend="triton")))
    return [("spectral_norm_sq", f"{B} × {r}×{d}, 30 power steps", impls, None, None)]


BUILDERS = dict(dense=fam_dense, sparse=fam_sparse, power=fam_power, gram=fam_gram, pinv=fam_pinv, spectral=fam_spectral)


# ----------------------------------------------------------------------------- output
def fmt_rate(x, unit):
    if x is None:
        return "—"
    for p, s in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= p:
            return f"{x / p:.2f} {s}{unit}"
    return f"{x:.2f} {unit}"


def print_tables(rows, out=sys.stdout):
    by_case = {}
    for r in rows:
        by_case.setdefault((r["family"], r["case"]), []).append(r)
    for (fam, case), rs in by_case.items():
        print(f"\n### {case}  ({rs[0]['problem']})", file=out)
        print("| impl | median ms | GB/s | % of copy | nnz/s | matrices/s | eager / impl |", file=out)
        print("|---|---:|---:|---:|---:|---:|---:|", file=out)
        for r in rs:
            if r["status"] != "ok":
                print(f"| {r['impl']} | {r['status']} | | | | | |", file=out)
                continue
            gb = "—" if r["gbps"] is None else f"{r['gbps']:.1f}"
            pc = "—" if r["pct_of_copy"] is None else f"{r['pct_of_copy']:.0f} %"
            sp = "—" if r["speedup_vs_eager"] is None else f"{r['speedup_vs_eager']:.2f}×"
            print(
                f"| {r['impl']} | {1e3 * r['median_s']:.3f} | {gb} | {pc} | {fmt_rate(r['nnz_per_s'], '')} "
                f"| {fmt_rate(r['matrices_per_s'], '')} | {sp} |",
                file=out,
            )


CSV_FIELDS = ["family", "case", "problem", "impl", "status", "median_s", "reps", "gbps", "pct_of_copy",
              "nnz_per_s", "matrices_per_s", "speedup_vs_eager", "dtype", "device", "date"]


# ----------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU: smaller problems and fewer repeats (< 2 min)")
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # smoke test of the script
    ap.add_argument("--with-triton", action="store_true",
                    help="add the Triton rows on CPU too (needs TRITON_INTERPRET=1; checks the script, times nothing useful)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--warmup", type=int, default=None, help="untimed runs per impl (GPU 3, CPU 2)")
    ap.add_argument("--reps", type=int, default=None,
                    help="timed runs per impl (GPU 20, CPU 7; on CPU a case stops after 3 once it used its time budget)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's; 1 with --quick on CPU: on a shared machine "
                         "multi-threaded small ops stall in OpenMP barriers and the timings mean nothing)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="OUT", default=None)
    ap.add_argument("--csv", metavar="OUT", default=None)
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    if a.threads is None and (a.quick or a.tiny) and dev.type == "cpu":
        a.threads = 1
    if a.threads:
        torch.set_num_threads(a.threads)
    on_gpu = dev.type == "cuda"
    dtype = getattr(torch, a.dtype)
    warmup = a.warmup if a.warmup is not None else (3 if on_gpu else 2)
    reps = a.reps if a.reps is not None else (20 if on_gpu else (3 if a.tiny else 7))
    budget = 1e9 if on_gpu else (3.0 if a.quick else 10.0)
    timer = Timer(dev, warmup, reps, budget)
    gen = torch.Generator().manual_seed(a.seed)
    sz = sizes(dev, a.quick, a.tiny)
    date = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()

    copy_bytes = (1 << 30) if on_gpu else ((1 << 24) if a.tiny else (1 << 28))
    copy_bw = copy_bandwidth(dev, Timer(dev, 2, 10 if on_gpu else 5, budget), copy_bytes)
    print(f"copy bandwidth ({'device-to-device' if on_gpu else 'memory-to-memory'}, "
          f"{copy_bytes >> 20} MiB): {copy_bw / 1e9:.1f} GB/s", file=sys.stderr, flush=True)

    rows = []
    for fam in a.families:
        cases = BUILDERS[fam](sz, dtype, dev, gen, on_gpu or a.with_triton)
        for case, problem, impls, nbytes, nnz in cases:
            eager_t = None
            case_rows = []
            timings = timer.case(impls)
            for impl, _ in impls:
                row = dict(family=fam, case=case, problem=problem, impl=impl, status="ok", median_s=None, reps=0,
                           samples_s=[], gbps=None, pct_of_copy=None, nnz_per_s=None, matrices_per_s=None,
                           speedup_vs_eager=None, dtype=a.dtype, device=device_name(dev), date=date)
                samples = timings[impl]
                if isinstance(samples, str):
                    row["status"] = samples
                    case_rows.append(row)
                    continue
                t = statistics.median(samples)
                row.update(median_s=t, reps=len(samples), samples_s=samples)
                if nbytes is not None:
                    row["gbps"] = nbytes / t / 1e9
                    row["pct_of_copy"] = 100 * nbytes / t / copy_bw
                if nnz is not None:
                    row["nnz_per_s"] = nnz / t
                if fam in ("power", "gram", "pinv", "spectral"):
                    row["matrices_per_s"] = sz["batch"] / t
                if impl.startswith("eager"):
                    eager_t = t
                case_rows.append(row)
                print(f"  {case:28s} {impl:28s} {1e3 * t:10.3f} ms", file=sys.stderr, flush=True)
            for row in case_rows:
                if eager_t is not None and row["median_s"]:
                    row["speedup_vs_eager"] = eager_t / row["median_s"]
            rows.extend(case_rows)
        if on_gpu:
            torch.cuda.empty_cache()

    total = time.perf_counter() - t0
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    meta = {
        "command": " ".join(["python bench/bench_kernels.py", *(sys.argv[1:] if argv is None else argv)]),
        "device": device_name(dev),
        "device_type": dev.type,
        "torch": torch.__version__,
        "triton": triton_version(),
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": date,
        "dtype": a.dtype,
        "quick": a.quick,
        "threads": torch.get_num_threads(),
        "warmup": warmup,
        "reps": reps,
        "timing": "CUDA events, median" if on_gpu else "time.perf_counter, median",
        "copy_bandwidth_Bps": copy_bw,
        "copy_bytes": copy_bytes,
        "sizes": sz,
        "backends": dk.backend_info(),
        "bytes_model": {
            "dense": "per pass over the m×n grid: X (dtype) + mask (1 byte) per entry, + U and V once; fwd+bwd = 2 passes",
            "sparse": "fwd: per entry 2 int32 indices + value + residual; bwd: 2 indices + residual (factor rows assumed cached)",
            "gram": "Y read once + the d×d results written",
        },
        "total_s": total,
        "loadavg_1min_start_end": [load0, load1],
    }
    print(f"\n{meta['device']}, torch {meta['torch']}, triton {meta['triton']}, {date}, {a.dtype}, "
          f"copy {copy_bw / 1e9:.1f} GB/s, total {total:.0f} s"
          + ("" if load0 is None else f", load average {load0:.1f} → {load1:.1f}"))
    print_tables(rows)
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump({**meta, "rows": rows}, f, indent=1)
            f.write("\n")
    if a.csv:
        os.makedirs(os.path.dirname(os.path.abspath(a.csv)), exist_ok=True)
        with open(a.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    return rows


if __name__ == "__main__":
    main()
