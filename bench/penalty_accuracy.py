"""Accuracy of ``lowrank_penalty`` against its SVD twin, per h and dtype (docs/lowrank_penalty.md).

For every h (Schatten at p = 0.5, 1, 1.5, 2) and dtype, on ``--trials`` fresh random batches of
``--batch`` matrices of shape ``--shape`` (default 3 × 64×48), with singular values log-spaced from
σ₁ = 4 down to σ₁/κ in random singular bases (so that the MCP / SCAD breakpoints 1, 3, 3.7 of the
default thresh = 1 fall inside the spectrum), it reports the worst relative error

    value: |R − R_ref| / |R_ref|        gradient: ‖∇R − ∇R_ref‖_F / ‖∇R_ref‖_F

per matrix, where R_ref is ``lowrank_penalty_exact`` evaluated in float64 on the same (rounded)
input. Three settings: κ = 10, κ = 1e3 (full rank), and rank-deficient (rank d/4, κ = 10 on the
nonzero part); for the latter the reference is the SVD twin on the r×r core C = U_rᵀ S V_r of
S = U_r C V_rᵀ: value Σ_{σ>0} h(σ) and gradient U_r diag(h'(σ_r)) V_rᵀ, the minimum-norm
(sub)gradient (the twin's gradient on S itself holds a block h'(σ₀)·U_0 V_0ᵀ for the
rounding-level null σ₀, unbounded for Schatten p < 1). Prints markdown tables; default gamma.

    python bench/penalty_accuracy.py [--trials 3] [--seed 0] [--shape 64 48] [--batch 3]
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch

from dlrl_kernels import lowrank_penalty, lowrank_penalty_exact

H_CASES = [
    ("nuclear", {}),
    ("schatten", {"p": 0.5}),
    ("schatten", {"p": 1.0}),
    ("schatten", {"p": 1.5}),
    ("schatten", {"p": 2.0}),
    ("log", {}),
    ("geman", {}),
    ("laplace", {}),
    ("etp", {}),
    ("gamma_nuclear", {}),
    ("mcp", {}),
    ("scad", {}),
]
SETTINGS = [("κ=10", 10.0, None), ("κ=1e3", 1e3, None), ("rank d/4", 10.0, "quarter")]


def label(h, kw):
    return f"schatten p={kw['p']:g}" if h == "schatten" else h


def make(gen, batch, m, n, cond, rank=None, sigma1=4.0):
    """(S float64, U_r, V_r): U_r diag(σ) V_rᵀ with σ log-spaced in [σ₁/cond, σ₁], rank r."""
    k = min(m, n)
    r = k if rank is None else rank
    U, _ = torch.linalg.qr(torch.randn(*batch, m, r, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(*batch, n, r, generator=gen, dtype=torch.float64))
    s = sigma1 * torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), r, dtype=torch.float64)
    return (U * s[..., None, :]) @ V.transpose(-1, -2), U, V


def errors(S64, U, V, dtype, h, kw, rank_deficient):
    """Per-matrix relative (value, gradient) errors, flattened over the batch."""
    S = S64.to(dtype).requires_grad_()
    v = lowrank_penalty(S, h=h, **kw)
    (g,) = torch.autograd.grad(v.sum(), S)
    if rank_deficient:  # SVD twin on the r×r core C = U_rᵀ S V_r, gradient mapped back
        Sr = (U.transpose(-1, -2) @ S.detach().double() @ V).requires_grad_()
    else:
        Sr = S.detach().double().requires_grad_()
    ve = lowrank_penalty_exact(Sr, h=h, **kw)
    (ge,) = torch.autograd.grad(ve.sum(), Sr)
    if rank_deficient:
        ge = U @ ge @ V.transpose(-1, -2)
    ev = ((v.double() - ve).abs() / ve.abs()).reshape(-1)
    eg = (torch.linalg.matrix_norm(g.double() - ge) / torch.linalg.matrix_norm(ge)).reshape(-1)
    return ev, eg


def measure(trials=3, seed=0, shape=(64, 48), batch=(3,), dtypes=(torch.float64, torch.float32)):
    """{(label, dtype, setting): (max value error, max gradient error)}."""
    gen = torch.Generator().manual_seed(seed)
    m, n = shape
    out = {}
    for dtype in dtypes:
        for sname, cond, rk in SETTINGS:
            for h, kw in H_CASES:
                worst_v, worst_g = 0.0, 0.0
                for _ in range(trials):
                    rank = None if rk is None else max(1, min(m, n) // 4)
                    S64, U, V = make(gen, batch, m, n, cond, rank)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        ev, eg = errors(S64, U, V, dtype, h, kw, rk is not None)
                    worst_v = max(worst_v, float(ev.detach().max()))
                    worst_g = max(worst_g, float(eg.max()))
                out[(label(h, kw), dtype, sname)] = (worst_v, worst_g)
    return out


def table(res, dtype):
    names = [s[0] for s in SETTINGS]
    head = "| h | " + " | ".join(f"{s} value | {s} grad" for s in names) + " |"
    sep = "|---|" + "---:|" * (2 * len(names))
    rows = [head, sep]
    for h, kw in H_CASES:
        lab = label(h, kw)
        cells = []
        for s in names:
            ev, eg = res[(lab, dtype, s)]
            cells += [f"{ev:.1e}", f"{eg:.1e}"]
        rows.append(f"| {lab} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shape", type=int, nargs=2, default=(64, 48))
    ap.add_argument("--batch", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest at these sizes)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    res = measure(a.trials, a.seed, tuple(a.shape), (a.batch,))
    m, n = a.shape
    print(
        f"Worst relative error over {a.trials} trials × {a.batch} matrices of {m}×{n} "
        f"(σ₁ = 4, default gamma / thresh; seed {a.seed}; torch {torch.__version__})\n"
    )
    for dtype in (torch.float64, torch.float32):
        print(f"**{str(dtype).replace('torch.', '')}**\n")
        print(table(res, dtype))
        print()
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
