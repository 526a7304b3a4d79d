"""Before/after of the DLRL fit on ML-100K: an older commit against this tree, interleaved.

    python bench/bench_dlrl_ab.py REV --rounds 2 --json bench/results/dlrl_ml100k_cpu_ab.json

Checks REV out into a temporary git worktree and runs ``bench/bench_dlrl.py --skip-eager
--threads 1`` alternately in that worktree and in this tree (``rounds`` times each, one process
at a time, the older tree first in every round), each process with its own tree first on
``PYTHONPATH`` so that both ``dlrl`` and ``dlrl_kernels`` come from it (each process prints the
paths it imported, recorded in the JSON). Reports, per configuration, the best CPU seconds of
the rounds for each side and their ratio — the two sides see the same machine in the same
minutes, which is what makes the ratio meaningful on a noisy machine. The JSON has the layout
``bench_dlrl.render_md`` reads as its before/after file.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_tree(tree: Path, data: str, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), str(tree / "python")]))
    probe = ("import dlrl, dlrl_kernels, sys; print(dlrl.__file__); print(dlrl_kernels.__file__)")
    paths = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tree, check=True, capture_output=True,
                           text=True).stdout.split()
    subprocess.run([sys.executable, str(tree / "bench" / "bench_dlrl.py"), "--skip-eager", "--threads", "1",
                    "--data", data, "--json", str(out)], env=env, cwd=tree, check=True, stdout=subprocess.DEVNULL)
    res = json.loads(out.read_text())
    res["imported"] = paths
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rev", help="the older commit (any git revision)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ml-100k"))
    ap.add_argument("--json", required=True)
    a = ap.parse_args(argv)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout.strip())
    with tempfile.TemporaryDirectory() as tmp:
        wt = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(wt), a.rev], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            runs = {"before": [], "after": []}
            for r in range(a.rounds):
                for side, tree in (("before", wt), ("after", ROOT)):
                    res = run_tree(tree, a.data, Path(tmp) / f"{side}{r}.json")
                    runs[side].append(res)
                    print(f"round {r} {side}: " + ", ".join(f"{row['system']} {row['cpu_seconds']:.2f} s"
                                                        for row in res["rows"]), flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=ROOT, capture_output=True)
    rows = []
    for i, row in enumerate(runs["after"][0]["rows"]):
        name = row["system"]
        b = [next(x for x in res["rows"] if x["system"] == name) for res in runs["before"]]
        f = [next(x for x in res["rows"] if x["system"] == name) for res in runs["after"]]
        bb, ba = min(x["cpu_seconds"] for x in b), min(x["cpu_seconds"] for x in f)
        rows.append({"system": name, "cpu_before": [x["cpu_seconds"] for x in b],
                     "cpu_after": [x["cpu_seconds"] for x in f], "best_cpu_before": bb, "best_cpu_after": ba,
                     "speedup": bb / ba, "test_rmse_before": b[0]["test_rmse"], "test_rmse_after": f[0]["test_rmse"]})
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "before": a.rev, "after": head + (" + uncommitted" if dirty else ""),
            "rounds": a.rounds, "machine": platform.platform(), "threads": 1,
            "imported": {"before": runs["before"][0]["imported"], "after": runs["after"][0]["imported"]},
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "command": f"python bench/bench_dlrl_ab.py {a.rev} --rounds {a.rounds} --json {a.json}"}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    for r in rows:
        print(f"{r['system']:<32} {r['best_cpu_before']:.2f} → {r['best_cpu_after']:.2f} s CPU ({r['speedup']:.2f}×)")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
