"""bench/gpu_acceptance.sh --dry-run: every stage of the GPU acceptance run, end to end on the
CPU at tiny sizes, so the script a lent GPU's first minutes depend on cannot rot."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_completes_every_stage(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_acceptance.sh"), "--dry-run", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    summary = json.loads((tmp_path / "summary.json").read_text())
    names = [s["stage"] for s in summary["stages"]]
    assert names == ["env", "build", "cuda_tests", "triton_tests", "bench", "epoch", "compile"], names
    bad = {s["stage"]: (s["status"], (tmp_path / f"{s['stage']}.log").read_text()[-1500:])
           for s in summary["stages"] if s["status"] != "ok"}
    assert not bad, bad
    assert proc.returncode == 0, proc.stdout[-2000:]
    env_doc = json.loads((tmp_path / "env.json").read_text())
    for key in ("device", "torch", "triton", "git_commit", "date"):
        assert env_doc["versions"][key], key
    assert all(b["GB_per_s"] > 0 for b in env_doc["copy_bandwidth"])
    epoch = json.loads((tmp_path / "epoch.json").read_text())
    assert "error" not in epoch["eager"] and "error" not in epoch["compiled"], epoch
    assert (tmp_path / "bench_kernels.json").exists()
