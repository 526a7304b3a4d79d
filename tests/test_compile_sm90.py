"""CI gate: the Triton kernels compile for sm_90 (Hopper) without spills or shared-memory
overflow, checked on a CPU machine (``bench/compile_report.py --quick``: the first launch of
each kernel, float32, with every GPU autotune candidate). The full report, every launch and
dtype, is ``bench/results/compile_sm90.md``.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ptxas_available():
    try:
        from triton import knobs

        return os.path.exists(knobs.nvidia.ptxas.path)
    except Exception:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="triton's ptxas ships for Linux")
def test_quick_compile_report_passes_the_gate(tmp_path):
    if not _ptxas_available():
        pytest.skip("triton's bundled ptxas is not available")
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    out = tmp_path / "compile_sm90"
    proc = subprocess.run(
        # every family: the residual kernels (dense, sparse) and the small d×d GEMM / Gram
        [sys.executable, str(ROOT / "bench" / "compile_report.py"), "--quick", "--out", str(out),
         "--family", "dense", "--family", "sparse", "--family", "small",
         "--workers", "2", "--timeout", "120", "--max-seconds", "60"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.with_suffix(".json").exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.with_suffix(".json").read_text())
    bad = [(j["kernel"], j["verdict"], j["result"].get("error", "")[:200]) for j in doc["jobs"] if j["verdict"] != "ok"]
    assert not doc["driver_errors"], doc["driver_errors"]
    assert doc["jobs"], "no launch was recorded"
    assert not bad, bad
    # every kernel family is covered, with every autotune candidate
    kernels = {j["kernel"] for j in doc["jobs"]}
    assert {"_fwd_kernel", "_rq_kernel", "_sddmm_kernel", "_scatter_kernel", "_segment_kernel",
            "_bmm_kernel", "_gram_kernel"} <= kernels
    for j in doc["jobs"]:
        r = j["result"]
        assert r["spill_stores"] == 0 and r["shared_bytes"] <= doc["meta"]["smem_limit"], j
    assert proc.returncode == 0, proc.stdout[-3000:]
