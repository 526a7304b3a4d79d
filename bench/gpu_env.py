"""Device, versions and measured copy bandwidth, for bench/gpu_acceptance.sh (JSON on stdout
or --json). Bandwidth: device-to-device ``Tensor.copy_`` of random float32 data (never zeros),
timed with CUDA events, median of --reps; bytes moved = 2 × size (read + write). On a CPU
(--dry-run) the same with perf_counter at a small size."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _cmd(args):
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception as exc:  # tool missing
        return f"unavailable ({type(exc).__name__})"


def versions() -> dict:
    try:
        import triton

        tv = triton.__version__
    except Exception as exc:
        tv = f"not importable ({exc})"
    out = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": _cmd(["git", "-C", str(ROOT), "rev-parse", "HEAD"]),
        "git_dirty": bool(_cmd(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": tv,
        "nvcc": _cmd(["nvcc", "--version"]).splitlines()[-1] if _cmd(["nvcc", "--version"]) else None,
        "cuda_available": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} threads)",
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update({"capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
                    "memory_GiB": round(p.total_memory / 2**30, 1), "driver": _cmd(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])})
    return out


def copy_bandwidth(nbytes: int, reps: int) -> dict:
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    n = nbytes // 4
    src = torch.rand(n, device=dev) + 0.5  # random, never zeros
    dst = torch.empty_like(src)
    times = []
    for i in range(reps + 3):
        if dev == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            dst.copy_(src)
            b.record()
            b.synchronize()
            t = a.elapsed_time(b) / 1e3
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            t = time.perf_counter() - t0
        if i >= 3:  # warm-up
            times.append(t)
    assert torch.equal(dst, src)
    med = statistics.median(times)
    return {"bytes": n * 4, "reps": reps, "median_s": med, "GB_per_s": 2 * n * 4 / med / 1e9,
            "min_s": min(times), "max_s": max(times), "timer": "cuda events" if dev == "cuda" else "perf_counter"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    doc = {"versions": versions()}
    doc["copy_bandwidth"] = [copy_bandwidth(s, a.reps) for s in ((1 << 20, 1 << 24) if a.dry_run else (1 << 28, 1 << 30))]
    text = json.dumps(doc, indent=1)
    if a.json:
        Path(a.json).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
