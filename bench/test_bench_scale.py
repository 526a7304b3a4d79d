"""CI smoke test of ``bench/bench_scale.py --quick``: every installed method runs on the tiny
size and the JSON, table and plot are written (the numbers of a quick run mean nothing; the
full run is bench/results/scale_cpu.*)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_scale_quick(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_scale.py"), "--quick", "--out",
                           str(tmp_path), "--data-dir", str(tmp_path / "data")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "scale_cpu.json").read_text())
    runs = res["runs"]
    assert {r["method"] for r in runs} == {"dlrl", "libmf", "surprise"}
    ran = [r for r in runs if "skipped" not in r]
    assert any(r["method"] == "dlrl" for r in ran)
    for r in ran:
        assert "error" not in r, r["error"]
        assert r["epoch_s"] > 0 and 0.3 < r["final_val_rmse"] < 3, r  # ratings around 3.5, noise 0.5
        assert math.isfinite(r["bytes_per_rating"]) and r["peak_rss_bytes"] > 0
        assert r["time_to_target_s"] is None or r["time_to_target_s"] > 0
    for name in ("scale_cpu.md", "scale_cpu.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "| nnz | method |" in (tmp_path / "scale_cpu.md").read_text()
