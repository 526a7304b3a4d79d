"""CI smoke test of ``bench/bench_baselines.py --quick``: every method runs in every section and
the outputs are written.  The numbers of a quick run mean nothing (tiny problems, a few
iterations); the full run's are in bench/README.md."""
import csv
import math
import os
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "bench_baselines.py"
METHODS = {"dlrl", "svt", "soft_impute", "irnn", "mss", "tnnr", "dmf"}
SECTIONS = {"synthetic", "movielens", "images"}


def _run(args, timeout):
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _rows(out):
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def _check_rows(rows, sections):
    assert rows
    for r in rows:
        for key in ("fit_s", "s_per_iter", "value"):
            v = float(r[key])
            assert math.isfinite(v), (r["section"], r["method"], key, r[key])
        assert int(r["n_iter"]) >= 1 and not r["stop"].startswith("error"), r
    for sec in sections:
        got = {r["method"] for r in rows if r["section"] == sec}
        assert METHODS <= got, (sec, sorted(METHODS - got))
    expected = {"synthetic": "rsre", "movielens": "test_rmse", "images": "psnr_missing_db"}
    assert {(r["section"], r["metric"]) for r in rows} == {(s, expected[s]) for s in sections}


def test_bench_baselines_quick(tmp_path):
    out = tmp_path / "bb"
    proc = _run(["--out", str(out)], timeout=85)
    rows = _rows(out)
    _check_rows(rows, SECTIONS)
    # the synthetic sweep has DLRL at several block counts (p = 1/blocks)
    assert len({r["params"] for r in rows if r["section"] == "synthetic" and r["method"] == "dlrl"}) >= 2
    ml = [r for r in rows if r["section"] == "movielens"]
    assert all(0.5 < float(r["value"]) < 5 for r in ml)          # an RMSE on a 1..5 scale
    for name in ("results.md", "curves.json", "error_vs_time.png", "fig3_sweep.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert list(out.glob("images_*.png"))
    md = (out / "results.md").read_text()
    assert "torch" in md and "psnr_missing_db" in md and "DMF" in md
    assert "DLRL" in proc.stdout


def test_bench_baselines_quick_without_shared_data(tmp_path):
    """Without the shared data the quick run uses stand-ins (and says so)."""
    out = tmp_path / "bb"
    _run(["--out", str(out), "--data", str(tmp_path / "no-data"), "--sections",
          "movielens,images", "--no-plots"], timeout=60)
    rows = _rows(out)
    _check_rows(rows, {"movielens", "images"})
    assert "stand-in" in (out / "results.md").read_text()
