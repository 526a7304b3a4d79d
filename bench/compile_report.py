"""Compile every Triton launch of dlrl_kernels for sm_90 (Hopper) without a GPU, and report.

Why: under ``TRITON_INTERPRET=1`` (CI) a kernel's *arithmetic* is tested, but nothing about
the GPU code — registers, spills, shared memory, compile time — is seen until a GPU runs it.
Triton compiles ahead of time for a target without a driver (``triton.compile(ASTSource,
target=GPUTarget("cuda", 90, 32))``, with the ``ptxas`` inside the triton wheel), so this
script does that for every launch the library can make.

How, in three steps:

1. **record** (a subprocess, ``TRITON_INTERPRET=1``): the real launchers and public ops are
   driven on small CPU tensors (float32 and float64, odd d, masks / NaN, every variant,
   int32 and int64 indices, the 64-bit-index path forced on); every kernel launch is caught
   at ``InterpretedFunction.run``: kernel, argument types and divisibility (triton's own
   ``native_specialize_impl``, i.e. the specialisation a GPU launch would get), constexprs
   and launch options. Autotuned kernels are expanded to *every* GPU candidate of their
   ``dlrl_kernels._triton.configs(...)`` list (``ConfigList.gpu``), not only the single CPU
   config the interpreter runs. Kernels are found generically: any ``@triton.jit`` function
   in a ``dlrl_kernels._triton`` module that the drivers launch is reported; jit functions
   that were never launched are listed (helpers, or a coverage gap).
2. **compile** (worker subprocesses, interpreter off, a fresh triton cache, a per-job time
   limit): ``triton.compile`` for ``GPUTarget("cuda", 90, 32)``; ptxas' ``-v`` log
   (``TRITON_DUMP_PTXAS_LOG``) gives registers, spill stores / loads and stack; Triton's
   metadata gives the dynamic shared memory; the PTX tells whether ``mma`` / ``wgmma`` is
   used and counts the approximate float32 ``sqrt`` / ``div`` instructions (the interpreter
   computes those exactly, a GPU does not).
3. **report**: ``bench/results/compile_sm90.json`` (every job, with versions and the git
   commit) and ``compile_sm90.md`` (a summary per kernel, then every job). Exit status 1
   when any job failed to compile, spilled, asked for more than 232,448 B of shared memory
   (the sm_90 per-block limit) or compiled slower than ``--max-seconds``.

``--quick`` (CI, ``tests/test_compile_sm90.py``): float32, one d, and the first launch of each
kernel only, with every autotune candidate of that launch; writes to ``--out`` (default a temporary
folder for --quick, so CI never rewrites the committed results).

    python bench/compile_report.py              # full report -> bench/results/compile_sm90.*
    python bench/compile_report.py --quick --out /tmp/x
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMEM_LIMIT = 232_448  # bytes of shared memory one block may use on sm_90 (cudaDevAttrMaxSharedMemoryPerBlockOptin)
OPTION_KEYS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


# =============================================================================== 1. record
def _spec(value):
    """(type, divisibility attr) of one runtime argument, as a GPU launch would specialise it."""
    from triton.backends.compiler import BaseBackend
    from triton._C.libtriton import native_specialize_impl

    ty, attr = native_specialize_impl(BaseBackend, value, False, True, True)[:2]
    return ty, attr


def _record_launches(quick: bool, families=None) -> dict:
    import torch
    import triton  # noqa: F401
    from triton.runtime.interpreter import InterpretedFunction

    launches = []
    errors = []
    state = {"driver": None}
    orig_run = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        fn = self.fn
        names = list(self.arg_names)
        bound = dict(zip(names, args))
        opts = {}
        for k, v in kwargs.items():
            if k in names:
                bound[k] = v
            else:
                opts[k] = v
        spec = {}
        for k in names:
            v = bound.get(k)
            if isinstance(v, torch.Tensor):
                spec[k] = {"tensor": list(_spec(v))}
            elif isinstance(v, (bool, int, float, str)) or v is None:
                spec[k] = {"value": v}
            else:  # tl dtypes and the like: record their text
                spec[k] = {"value": str(v)}
        launches.append({
            "module": fn.__module__, "kernel": fn.__name__, "args": spec,
            "options": {k: v for k, v in opts.items() if k in OPTION_KEYS and v is not None},
            "driver": state["driver"],
        })
        return orig_run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = run
    for name, fn in _drivers(quick):
        if families and name.split()[0] not in families:
            continue
        state["driver"] = name
        try:
            fn()
        except Exception as exc:  # a driver that fails is reported, the others still run
            errors.append({"driver": name, "error": f"{type(exc).__name__}: {exc}"[:2000]})
    InterpretedFunction.run = orig_run
    return {"launches": launches, "driver_errors": errors, "inventory": _inventory()}


def _inventory() -> dict:
    """Every jit function of the dlrl_kernels._triton modules, and the autotune space of each
    autotuned one (the ``ConfigList.gpu`` candidates)."""
    import importlib
    import pkgutil

    import dlrl_kernels._triton as pkg

    out = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for attr, obj in vars(mod).items():
            base, autotuned = obj, None
            if hasattr(obj, "configs") and hasattr(obj, "fn"):  # triton.runtime.Autotuner
                autotuned = getattr(obj.configs, "gpu", None) or list(obj.configs)
                base = obj.fn
            inner = getattr(base, "fn", None)
            if not callable(inner) or getattr(inner, "__module__", None) != mod.__name__:
                continue
            if type(base).__name__ not in ("InterpretedFunction", "JITFunction"):
                continue
            key = f"{mod.__name__}:{inner.__name__}"
            out[key] = {"module": mod.__name__, "kernel": inner.__name__, "autotune": None}
            if autotuned is not None:
                out[key]["autotune"] = [
                    {"kwargs": dict(c.kwargs), **{k: getattr(c, k, None) for k in OPTION_KEYS if getattr(c, k, None) is not None}}
                    for c in autotuned
                ]
    return out


def _drivers(quick: bool):
    """(name, thunk) pairs; each thunk drives real launchers on small CPU tensors."""
    import torch

    import dlrl_kernels as dk
    from dlrl_kernels._triton import masked_residual as dense
    from dlrl_kernels._triton import masked_residual_sparse as sparse

    g = torch.Generator().manual_seed(0)
    dtypes = (torch.float32,) if quick else (torch.float32, torch.float64)
    # d picks BLOCK_D (rq: 32 / 64 / 128; fwd and sparse: d-chunks of 16 / 64) and whether d is
    # divisible by 16 (a specialisation of its own)
    dense_ds = (33,) if quick else (33, 64, 100)
    sparse_ds = (33,)
    small_ds = (20,) if quick else (16, 20, 33, 64, 128)

    def rnd(*shape, dtype):
        return torch.randn(*shape, generator=g, dtype=dtype)

    def dense_driver(d, dtype):
        def go():
            m, n = 37, 29
            U, V, X = rnd(m, d, dtype=dtype), rnd(d, n, dtype=dtype), rnd(m, n, dtype=dtype)
            mask = torch.rand(m, n, generator=g) < 0.6
            Xn = X.masked_fill(~mask, float("nan"))
            for mk, XX in ((mask, X), (None, Xn)):
                dense.dense_residual_loss(U, V, XX, mk, True)
                dense.dense_residual_loss(U, V, XX, mk, False)
                dense.dense_residual_rq(U, V, XX, mk, 0.5, variant="fused", split=1)
                dense.dense_residual_rq(U, V, XX, mk, 0.5, variant="fused", split=2)  # R by atomics
                dense.dense_residual_rq(U, V, XX, mk, 0.5, variant="split")
        return go

    def sparse_driver(d, dtype, idx_dtype, force64):
        def go():
            m, n, nnz = 23, 19, 90
            U, Vt = rnd(m, d, dtype=dtype), rnd(n, d, dtype=dtype)
            rows = torch.randint(0, m, (nnz,), generator=g).to(idx_dtype)
            cols = torch.randint(0, n, (nnz,), generator=g).to(idx_dtype)
            vals = rnd(nnz, dtype=dtype)
            orig = sparse._idx64
            if force64:  # the >2^31-element path, unreachable at test sizes otherwise
                sparse._idx64 = lambda *a: True
            try:
                e = sparse.sparse_residual(U, Vt, rows, cols, vals)
                for variant in ("atomic", "csr", "deterministic"):
                    sparse.sparse_rq(U, Vt, rows, cols, e, 0.5, m, n, variant=variant)
                    order = torch.argsort(rows.long() * n + cols.long())  # sorted rows: no permutation
                    sparse.sparse_rq(U, Vt, rows[order], cols[order], e[order], 0.5, m, n, variant=variant)
            finally:
                sparse._idx64 = orig
        return go

    def small_driver(d, dtype):
        # The small d×d ops are _newton's iterations over one batched GEMM (bmm) plus the Gram;
        # which launches exist depends on the tile shapes only, not on how many steps run, so
        # the GEMM is driven directly at every (BM, BN, BK, epilogue) it can take for this d
        # (an interpreted Newton solve at d = 128 makes hundreds of slow launches), and the
        # public ops end to end at the smallest d.
        from dlrl_kernels._triton import small_matrix as sm

        def go():
            Y = rnd(2, d + 3, d, dtype=dtype)
            sm.gram(Y)
            for k in sorted({16, d}):
                A, Bm = rnd(2, d, k, dtype=dtype), rnd(2, k, d, dtype=dtype)
                for diag, scale in ((0.0, 1.0), (1.5, 1.0), (0.0, -0.5), (1.5, -0.5)):
                    sm.bmm(A, Bm, diag=diag, scale=scale)
            if d <= 32:
                S = Y.transpose(-1, -2) @ Y / (d + 3)
                S.requires_grad_(True)
                dk.gram(Y, backend="triton")
                dk.pinv(S.detach(), method="newton", backend="triton")
                dk.spd_power(S, 0.5, method="newton", backend="triton").sum().backward()
                dk.spectral_norm_sq(Y, method="power", backend="triton")
        return go

    out = []
    for dtype in dtypes:
        tag = str(dtype).replace("torch.", "")
        for d in dense_ds:
            out.append((f"dense d={d} {tag}", dense_driver(d, dtype)))
        for d in sparse_ds:
            for idx in (torch.int64,):
                out.append((f"sparse d={d} {tag} {str(idx)[6:]}", sparse_driver(d, dtype, idx, False)))
        if not quick:
            out.append((f"sparse d=33 {tag} int64 IDX64", sparse_driver(33, dtype, torch.int64, True)))
        for d in small_ds:
            out.append((f"small d={d} {tag}", small_driver(d, dtype)))
    return out


# =============================================================================== 2. plan
def _plan(recorded: dict, quick: bool = False) -> list:
    """Unique compile jobs: each launch, and for autotuned kernels each GPU candidate.
    quick: only the first launch of each kernel (still with every autotune candidate)."""
    inv = recorded["inventory"]
    jobs, seen, first = [], set(), set()
    for L in recorded["launches"]:
        key = f"{L['module']}:{L['kernel']}"
        if quick:
            if key in first:
                continue
            first.add(key)
        space = (inv.get(key) or {}).get("autotune")
        variants = []
        if space:
            tuned = set().union(*(set(c["kwargs"]) for c in space))
            base_args = {k: v for k, v in L["args"].items() if k not in tuned}
            for c in space:
                args = dict(base_args)
                args.update({k: {"value": v} for k, v in c["kwargs"].items()})
                opts = {k: c[k] for k in OPTION_KEYS if k in c}
                variants.append((args, opts, True))
        else:
            variants.append((L["args"], L["options"], False))
        for args, opts, tuned_flag in variants:
            ident = json.dumps([key, args, opts], sort_keys=True, default=str)
            if ident in seen:
                continue
            seen.add(ident)
            jobs.append({"module": L["module"], "kernel": L["kernel"], "args": args, "options": opts,
                         "autotuned": tuned_flag, "driver": L["driver"]})
    return jobs


# =============================================================================== 3. compile (worker)
_PTXAS_RE = {
    "registers": re.compile(r"Used (\d+) registers"),
    "stack_bytes": re.compile(r"(\d+) bytes stack frame"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "static_smem": re.compile(r"(\d+) bytes smem"),
}


def _find_jit(module: str, kernel: str):
    import importlib

    mod = importlib.import_module(module)
    for obj in vars(mod).values():
        base = obj
        while not type(base).__name__ == "JITFunction" and hasattr(base, "fn"):
            base = base.fn
        if type(base).__name__ == "JITFunction" and base.fn.__name__ == kernel:
            return base
    raise LookupError(f"{module}:{kernel} not found as a JITFunction")


def compile_job(job: dict, arch: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    jit = _find_jit(job["module"], job["kernel"])
    signature, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(jit.params):
        a = job["args"].get(p.name)
        if a is None:
            raise KeyError(f"argument {p.name} was not recorded")
        if p.is_constexpr:
            signature[p.name] = "constexpr"
            constexprs[(i,)] = a.get("value")
            continue
        if "tensor" in a:
            ty, attr = a["tensor"]
        else:
            ty, attr = _spec(a["value"])
        if ty == "constexpr":  # an int argument equal to 1: specialised away, as at launch
            signature[p.name] = "constexpr"
            constexprs[(i,)] = attr
            continue
        signature[p.name] = ty
        if attr == "D":
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(jit, signature, constexprs, attrs)
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        ck = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(job["options"]))
    secs = time.perf_counter() - t0
    log = out.getvalue()
    res = {"compile_s": round(secs, 2), "shared_bytes": int(ck.metadata.shared)}
    for k, rx in _PTXAS_RE.items():
        m = rx.search(log)
        res[k] = int(m.group(1)) if m else None
    ptx = ck.asm.get("ptx", "")
    res["wgmma"] = "wgmma." in ptx
    res["mma"] = bool(re.search(r"\bmma\.sync", ptx))
    res["atomics"] = ptx.count("atom.") + ptx.count("red.")
    res["approx_sqrt_f32"] = len(re.findall(r"sqrt\.approx(?:\.ftz)?\.f32", ptx))
    res["approx_div_f32"] = len(re.findall(r"div\.(?:full|approx)(?:\.ftz)?\.f32", ptx))
    res["num_warps"] = ck.metadata.num_warps
    res["num_stages"] = getattr(ck.metadata, "num_stages", None)
    if res["registers"] is None:
        res["ptxas_log"] = log[-2000:]
    return res


def _worker(arch: int) -> None:
    """Read one job (JSON) per stdin line, write one result per stdout line."""
    real_stdout = sys.stdout
    for line in sys.stdin:
        job = json.loads(line)
        try:
            res = {"ok": True, **compile_job(job, arch)}
        except Exception as exc:
            res = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[-3000:]}
        real_stdout.write(json.dumps(res) + "\n")
        real_stdout.flush()


class _Worker:
    def __init__(self, env, arch):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", "--arch", str(arch)], env=env, cwd=str(ROOT),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def run(self, job, timeout):
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            return {"ok": False, "error": f"timeout: not compiled after {timeout:.0f} s (killed)", "timeout": True}
        if line is None:
            return {"ok": False, "error": "compile worker died (ptxas out of memory?)", "crashed": True}
        return json.loads(line)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _compile_all(jobs, arch, workers, timeout, cache_dir):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env.update({"TRITON_CACHE_DIR": cache_dir, "TRITON_DUMP_PTXAS_LOG": "1", "TRITON_ALWAYS_COMPILE": "1",
                "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "python"), env.get("PYTHONPATH", "")])})
    todo: queue.Queue = queue.Queue()
    for i, j in enumerate(jobs):
        todo.put(i)
    results = [None] * len(jobs)

    def loop():
        w = _Worker(env, arch)
        while True:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                break
            r = w.run(jobs[i], timeout)
            results[i] = r
            done = sum(x is not None for x in results)
            print(f"  [{done}/{len(jobs)}] {jobs[i]['kernel']} {_short(jobs[i])}: "
                  + (f"{r.get('registers')} regs, {r.get('spill_stores')} B spilled, {r.get('shared_bytes')} B smem, "
                     f"{r.get('compile_s')} s" if r["ok"] else r["error"].splitlines()[0][:160]), flush=True)
            if not r["ok"] and (r.get("timeout") or r.get("crashed")):
                w = _Worker(env, arch)
        w.kill()

    threads = [threading.Thread(target=loop) for _ in range(max(1, workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# =============================================================================== 4. report
def _dtype_of(job):
    tys = [a["tensor"][0] for a in job["args"].values() if "tensor" in a]
    return "fp64" if "*fp64" in tys else ("fp32" if "*fp32" in tys else "-")


def _short(job):
    """constexprs and launch options in a few words."""
    skip = {"PREC"}
    parts = [_dtype_of(job)]
    for k, a in job["args"].items():
        if "value" in a and k.isupper() and k not in skip:
            v = a["value"]
            parts.append(f"{k}={int(v) if isinstance(v, bool) else v}")
    parts += [f"w{job['options'].get('num_warps', '')}", f"s{job['options'].get('num_stages', '')}"]
    idx = [a["tensor"][0] for k, a in job["args"].items() if "tensor" in a and a["tensor"][0] in ("*i32", "*i64")]
    if idx:
        parts.append("idx " + idx[0][1:])
    return " ".join(parts)


def _verdict(r, max_seconds):
    if not r["ok"]:
        return "compile error" if not r.get("timeout") else "timeout"
    bad = []
    if r.get("registers") is None:
        bad.append("no ptxas log")
    if (r.get("spill_stores") or 0) > 0:
        bad.append("spills")
    if r["shared_bytes"] + (r.get("static_smem") or 0) > SMEM_LIMIT:
        bad.append("smem")
    if r["compile_s"] > max_seconds:
        bad.append("slow")
    return ", ".join(bad) or "ok"


def _versions():
    import torch
    import triton

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "dlrl_kernels"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = "", False
    from triton import knobs

    try:
        ptxas = subprocess.run([knobs.nvidia.ptxas.path, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    except Exception:
        ptxas = "?"
    return {"torch": torch.__version__, "triton": triton.__version__, "ptxas": ptxas, "python": platform.python_version(),
            "git_commit": commit, "dlrl_kernels_dirty": dirty, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "host_cpus": os.cpu_count()}


def _write_md(path, meta, rows, summary, unlaunched, driver_errors):
    L = [f"# Triton kernels compiled for sm_{meta['arch']} (no GPU needed)", "",
         f"Generated by `{meta['command']}` on {meta['date']} — triton {meta['triton']}, torch {meta['torch']}, "
         f"{meta['ptxas']}, commit `{meta['git_commit'][:12]}`{' (+ uncommitted kernel changes)' if meta['dlrl_kernels_dirty'] else ''}. "
         f"{meta['n_jobs']} compile jobs (every launch the drivers made × every GPU autotune candidate), "
         f"{meta['workers']} worker(s) on a shared {meta['host_cpus']}-CPU machine: compile seconds are upper bounds.",
         "",
         f"Gate: compiles, 0 spill stores, shared memory ≤ {SMEM_LIMIT:,} B, compile ≤ {meta['max_seconds']:.0f} s. "
         f"**{meta['n_bad']} job(s) fail the gate.**", "",
         "## Per kernel (worst over its jobs)", "",
         "| kernel | jobs | fail | max regs | max spill stores (B) | max smem (B) | max compile (s) | mma/wgmma | approx f32 sqrt/div |",
         "|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        L.append(f"| `{s['kernel']}` | {s['jobs']} | {s['bad']} | {s['max_registers']} | {s['max_spill_stores']} | "
                 f"{s['max_shared']:,} | {s['max_compile_s']} | {s['mma']} | {s['approx']} |")
    if unlaunched:
        L += ["", "Jit functions never launched by the drivers (device helpers called from kernels, or not covered): "
              + ", ".join(f"`{u}`" for u in unlaunched) + "."]
    if driver_errors:
        L += ["", "## Driver errors (launches of these drivers are missing)", ""]
        L += [f"- {e['driver']}: `{e['error'][:300]}`" for e in driver_errors]
    L += ["", "## Every job", "",
          "| kernel | config | regs | spill st/ld (B) | smem (B) | compile (s) | mma | verdict |", "|---|---|---|---|---|---|---|---|"]
    for j, r in rows:
        if r["ok"]:
            L.append(f"| `{j['kernel']}` | {_short(j)} | {r['registers']} | {r['spill_stores']}/{r['spill_loads']} | "
                     f"{r['shared_bytes'] + (r.get('static_smem') or 0):,} | {r['compile_s']} | "
                     f"{'wgmma' if r['wgmma'] else ('mma' if r['mma'] else '-')} | {_verdict(r, meta['max_seconds'])} |")
        else:
            L.append(f"| `{j['kernel']}` | {_short(j)} | - | - | - | - | - | {r['error'].splitlines()[0][:120]} |")
    Path(path).write_text("\n".join(L) + "\n")


def _summary(rows, max_seconds):
    by = {}
    for j, r in rows:
        by.setdefault(j["kernel"], []).append((j, r))
    out = []
    for k, lst in sorted(by.items()):
        ok = [r for _, r in lst if r["ok"]]
        out.append({
            "kernel": k, "jobs": len(lst), "bad": sum(_verdict(r, max_seconds) != "ok" for _, r in lst),
            "max_registers": max((r["registers"] or 0 for r in ok), default=None),
            "max_spill_stores": max((r["spill_stores"] or 0 for r in ok), default=None),
            "max_shared": max((r["shared_bytes"] + (r.get("static_smem") or 0) for r in ok), default=0),
            "max_compile_s": max((r["compile_s"] for r in ok), default=None),
            "mma": "wgmma" if any(r["wgmma"] for r in ok) else ("mma" if any(r["mma"] for r in ok) else "-"),
            "approx": f"{max((r['approx_sqrt_f32'] for r in ok), default=0)}/{max((r['approx_div_f32'] for r in ok), default=0)}",
        })
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI subset: one d per family (every autotune candidate)")
    ap.add_argument("--out", default=None, help="output prefix (default bench/results/compile_sm90, or a temp dir with --quick)")
    ap.add_argument("--arch", type=int, default=90, help="compute capability ×10 (default 90: H100/H200)")
    ap.add_argument("--workers", type=int, default=max(1, min(4, (os.cpu_count() or 2) // 2)))
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per compile job before it is killed")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="gate: slowest allowed compile")
    ap.add_argument("--kernel", action="append", default=None, help="only jobs of this kernel (repeatable)")
    ap.add_argument("--family", action="append", default=None, choices=["dense", "sparse", "small"],
                    help="only these driver families (repeatable; default all)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--record", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.worker:
        _worker(a.arch)
        return 0
    if a.record:
        sys.path[:0] = [str(ROOT), str(ROOT / "python")]
        rec = _record_launches(a.quick, a.family)
        Path(a.record).write_text(json.dumps(rec, default=str))
        return 0

    out = Path(a.out) if a.out else (Path(tempfile.mkdtemp(prefix="compile_sm90_")) / "compile_sm90" if a.quick
                                      else ROOT / "bench" / "results" / "compile_sm90")
    out.parent.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dlrl_compile_") as tmp:
        rec_path = Path(tmp) / "launches.json"
        env = dict(os.environ, TRITON_INTERPRET="1")
        cmd = [sys.executable, __file__, "--record", str(rec_path)] + (["--quick"] if a.quick else [])
        for f in a.family or []:
            cmd += ["--family", f]
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, cwd=ROOT, check=True)
        rec = json.loads(rec_path.read_text())
        print(f"compile_report: {len(rec['launches'])} launches recorded in {time.perf_counter() - t0:.0f} s "
              f"({len(rec['driver_errors'])} driver errors)", flush=True)
        for e in rec["driver_errors"]:
            print(f"  driver error: {e['driver']}: {e['error'][:300]}", flush=True)
        jobs = _plan(rec, a.quick)
        if a.kernel:
            jobs = [j for j in jobs if j["kernel"] in a.kernel]
        print(f"compile_report: {len(jobs)} compile jobs for sm_{a.arch}, {a.workers} worker(s)", flush=True)
        results = _compile_all(jobs, a.arch, a.workers, a.timeout, str(Path(tmp) / "cache"))
    rows = list(zip(jobs, results))
    launched = {f"{L['module']}:{L['kernel']}" for L in rec["launches"]}
    unlaunched = sorted(k.split(":")[1] for k in rec["inventory"] if k not in launched)
    summary = _summary(rows, a.max_seconds)
    n_bad = sum(_verdict(r, a.max_seconds) != "ok" for _, r in rows)
    import triton  # noqa: F401  (versions)

    meta = {**_versions(), "arch": a.arch, "quick": a.quick, "workers": a.workers, "max_seconds": a.max_seconds,
            "smem_limit": SMEM_LIMIT, "n_jobs": len(jobs), "n_bad": n_bad,
            "wall_s": round(time.perf_counter() - t_start, 1),
            "command": "python bench/compile_report.py" + (" --quick" if a.quick else "")
            + "".join(f" --family {f}" for f in a.family or [])}
    doc = {"meta": meta, "summary": summary, "unlaunched_jit_functions": unlaunched,
           "driver_errors": rec["driver_errors"],
           "jobs": [{**j, "result": r, "verdict": _verdict(r, a.max_seconds)} for j, r in rows]}
    tmp_json = out.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(doc, indent=1, default=str))
    os.replace(tmp_json, out.with_suffix(".json"))
    _write_md(out.with_suffix(".md.tmp"), meta, rows, summary, unlaunched, rec["driver_errors"])
    os.replace(out.with_suffix(".md.tmp"), out.with_suffix(".md"))
    print(f"compile_report: {len(jobs)} jobs, {n_bad} failing the gate, {meta['wall_s']} s; "
          f"wrote {out.with_suffix('.json')} and .md", flush=True)
    for s in summary:
        print(f"  {s['kernel']:28s} jobs {s['jobs']:3d} bad {s['bad']:3d} regs {s['max_registers']} "
              f"spills {s['max_spill_stores']} smem {s['max_shared']} compile {s['max_compile_s']} s")
    return 1 if n_bad or rec["driver_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
