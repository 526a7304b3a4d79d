"""Sparse loss + backward at m = n = 200 000, nnz = 2·10⁶, d = 32 stays under 1 GB peak.

Measured in a fresh subprocess as the growth of peak RSS (ru_maxrss) over the RSS after the
inputs exist, so torch's own import and the inputs are not counted; a dense m×n float32
would be 160 GB, so any accidental densification fails loudly.
"""
import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, resource, time, torch
    import dlrl_kernels as dk
    torch.manual_seed(0)
    m = n = 200_000; nnz = 2_000_000; d = 32
    rows = torch.randint(0, m, (nnz,)); cols = torch.randint(0, n, (nnz,))
    vals = torch.randn(nnz)
    U = (torch.randn(m, d) / d**0.5).requires_grad_()
    M = torch.eye(d).requires_grad_()
    V = (torch.randn(d, n) / d**0.5).requires_grad_()
    import gc; gc.collect()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open('/proc/self/status') as f:
        cur = [int(l.split()[1]) for l in f if l.startswith('VmRSS')][0]
    t = time.perf_counter()
    loss = dk.masked_loss_sparse([U, M, V], rows, cols, vals)
    loss.backward()
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rss_before_kb": cur, "peak_kb": peak, "growth_mb": (peak - max(base, cur)) / 1024,
                      "seconds": dt, "finite": bool(torch.isfinite(U.grad).all())}))
    """
)


def test_sparse_loss_and_backward_memory():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(res)
    assert res["finite"]
    assert res["growth_mb"] < 1024, res
