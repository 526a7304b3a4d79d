"""Measured accuracy of every core op against independent float64 references (CPU, reference
backend; ``--backend triton`` with TRITON_INTERPRET=1 measures the Triton kernels instead).

Prints a markdown table: op, case, dtype, worst relative error over ``--trials`` fresh random
inputs (Frobenius norm of the error over the norm of the reference).

    python bench/op_accuracy.py                  # about a minute on 2 cores
    python bench/op_accuracy.py --json bench/results/op_accuracy_cpu.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dlrl_kernels as dk  # noqa: E402


def rel(x, ref):
    x, ref = x.double(), ref.double()
    return float(torch.linalg.norm((x - ref).reshape(-1)) / torch.linalg.norm(ref.reshape(-1)).clamp_min(1e-300))


def spd(g, d, cond, rank=None, batch=4):
    Q, _ = torch.linalg.qr(torch.randn(batch, d, d, generator=g, dtype=torch.float64))
    lam = torch.logspace(0, -math.log10(cond), d, dtype=torch.float64)
    if rank is not None:
        lam[rank:] = 0
    return (Q * lam) @ Q.transpose(-1, -2)


def eig_power(S, a, rtol=1e-12):
    lam, Q = torch.linalg.eigh(S.double())
    keep = lam > rtol * lam[..., -1:]
    f = torch.where(keep, torch.where(keep, lam, torch.ones_like(lam)) ** a, torch.zeros_like(lam))
    return (Q * f[..., None, :]) @ Q.transpose(-1, -2)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--backend", default="reference")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    g = torch.Generator().manual_seed(a.seed)
    be = a.backend
    rows = []

    def record(op, case, dtype, errs):
        rows.append({"op": op, "case": case, "dtype": str(dtype).replace("torch.", ""), "max_rel_err": max(errs)})

    for dtype in (torch.float64, torch.float32):
        # masked residual / loss / gradients, dense and sparse, against a float64 dense product
        for dims in ([37, 20, 45], [61, 16, 16, 16, 29], [1, 20, 33]):
            errs, gerrs, serrs = [], [], []
            for _ in range(a.trials):
                F = [torch.randn(dims[k], dims[k + 1], generator=g, dtype=torch.float64) for k in range(len(dims) - 1)]
                X = torch.randn(dims[0], dims[-1], generator=g, dtype=torch.float64)
                M = torch.rand(X.shape, generator=g) < 0.6
                P = torch.linalg.multi_dot(F) if len(F) > 2 else F[0] @ F[1]
                E = torch.where(M, P - X, torch.zeros_like(X))
                Fd = [f.to(dtype).requires_grad_() for f in F]
                L = dk.masked_loss(Fd, X.to(dtype), M, backend=be)
                L.backward()
                errs.append(rel(dk.masked_residual([f.detach() for f in Fd], X.to(dtype), M, backend=be), E))
                # gradient of ½‖E‖² w.r.t. X_k is A_kᵀ E B_kᵀ
                for k, f in enumerate(Fd):
                    A = torch.eye(dims[0], dtype=torch.float64)
                    for h in F[:k]:
                        A = A @ h
                    B = torch.eye(dims[-1], dtype=torch.float64)
                    for h in reversed(F[k + 1:]):
                        B = h @ B
                    gerrs.append(rel(f.grad, A.t() @ E @ B.t()))
                r, c = M.nonzero(as_tuple=True)
                e = dk.masked_residual_sparse([f.detach() for f in Fd], r, c, X[r, c].to(dtype), backend=be)
                serrs.append(rel(e, (P - X)[r, c]))
            case = f"chain {dims}"
            record("masked_residual", case, dtype, errs)
            record("masked_loss backward (A_kᵀEB_kᵀ)", case, dtype, gerrs)
            record("masked_residual_sparse", case, dtype, serrs)

        # gram
        errs = []
        for _ in range(a.trials):
            Y = torch.randn(3, 1000, 33, generator=g, dtype=torch.float64)
            errs.append(rel(dk.gram(Y.to(dtype), backend=be), Y.transpose(-1, -2) @ Y))
        record("gram", "3×1000×33", dtype, errs)

        # spd_power: Newton–Schulz and eigh vs float64 eigh, the SPEC bar (κ ≤ 1e4, d ∈ {16..128})
        for method in ("newton", "eigh"):
            for d in (16, 20, 48, 80, 128):
                for pw in (0.5, 0.25, 0.75, -0.5, -1.0):
                    errs = []
                    for _ in range(a.trials):
                        S = spd(g, d, 1e4, batch=2)
                        errs.append(rel(dk.spd_power(S.to(dtype), pw, method=method, backend=be), eig_power(S, pw)))
                    record(f"spd_power {method}", f"d={d} κ=1e4 a={pw}", dtype, errs)
            errs = []
            for _ in range(a.trials):
                S = spd(g, 48, 1e2, rank=20, batch=2)
                errs.append(rel(dk.spd_power(S.to(dtype), -1.0, method=method, backend=be), eig_power(S, -1.0, 1e-6)))
            record(f"spd_power {method}", "d=48 rank 20 a=-1 (range)", dtype, errs)

        # pinv: well conditioned, ill conditioned (κ(G) = 1e3: float32's Gram route resolves
        # κ² ≈ 1e6 only to ≈ eps·κ², documented), rank deficient tall and wide
        for method in ("newton", "svd"):
            for shape, rank, cond in (((40, 30), None, 10.0), ((40, 30), None, 1e3), ((40, 30), 12, 10.0),
                                      ((25, 60), 7, 10.0)):
                errs = []
                for _ in range(a.trials):
                    k = rank or min(shape)
                    U, _ = torch.linalg.qr(torch.randn(shape[0], k, generator=g, dtype=torch.float64))
                    V, _ = torch.linalg.qr(torch.randn(shape[1], k, generator=g, dtype=torch.float64))
                    s = torch.logspace(0, -math.log10(cond), k, dtype=torch.float64)
                    G = (U * s) @ V.t()
                    errs.append(rel(dk.pinv(G.to(dtype), method=method, backend=be), torch.linalg.pinv(G, rtol=1e-10)))
                record(f"pinv {method}", f"{shape} rank {rank or 'full'} κ={cond:g}", dtype, errs)

        # spectral norm
        for method in ("eigh", "power"):
            errs = []
            for _ in range(a.trials):
                A = torch.randn(500, 24, generator=g, dtype=torch.float64)
                errs.append(rel(dk.spectral_norm_sq(A.to(dtype), method=method, iters=100, backend=be),
                                torch.linalg.matrix_norm(A, ord=2) ** 2))
            record(f"spectral_norm_sq {method}", "500×24", dtype, errs)

        # lowrank_block
        for shape in ((300, 20), (20, 300)):
            for p in (0.5, 1.0, 1.5, 2.0):
                errs = []
                for _ in range(a.trials):
                    Y = torch.randn(*shape, generator=g, dtype=torch.float64)
                    W = torch.randn(*shape, generator=g, dtype=torch.float64)
                    tall = shape[0] >= shape[1]
                    Yt, Wt = (Y, W) if tall else (Y.t(), W.t())
                    ref = torch.relu(Wt @ eig_power(Yt.t() @ Yt, (2 - p) / 2))
                    ref = ref if tall else ref.t()
                    out = dk.lowrank_block(Y.to(dtype), W.to(dtype), p, backend=be)
                    errs.append(rel(out, ref))
                record("lowrank_block", f"{shape} p={p}", dtype, errs)

    print(f"| op | case | dtype | worst relative error ({a.trials} draws) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['op']} | {r['case']} | {r['dtype']} | {r['max_rel_err']:.1e} |")
    if a.json:
        meta = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "backend": be, "device": "cpu",
                "trials": a.trials, "seed": a.seed}
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
