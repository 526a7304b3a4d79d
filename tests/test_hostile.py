"""The hostile suite: bad and edge inputs across the ops, ``dlrl.complete``, the DLRL model and the
``dlrl`` command line, each asserting the *class* of outcome (issue 12).

Every case says what must happen:
- ``err(names...)``: a clear error -- an exception (ValueError / TypeError / ... as listed) whose
  message names the argument; for the CLI: exit status 2 and one line on stderr naming the
  option, no traceback. ``warn_ok=True`` also accepts a warning naming the argument (a value
  clamped on purpose); ``nan_ok=True`` (NaN/Inf inputs) also accepts NaN/Inf propagated
  *visibly* in the output -- never finite garbage.
- ``ok(check)``: a correct result, ``check(result)`` compares it with an independent reference.

Anything else is classified as one of: silent wrong (accepted where it should not have been, or a
wrong value), NaN/Inf (non-finite output from valid-looking input), raw traceback (an exception
that is not the clear error, or for the CLI any traceback / other exit status), hang (over the
time limit). ``python tests/test_hostile.py`` prints the tally by class (the issue's before/after
figures); pytest runs each case as one test. The CLI runs in-process through ``dlrl.cli.main``
(cheap) and, for a handful of cases, as a real subprocess.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import signal
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import dlrl_kernels as dk

CLEAR, CORRECT, WRONG, NONFINITE, RAW, HANG = ("clear error", "correct", "silent wrong", "NaN/Inf",
                                                "raw traceback", "hang")
CLASSES = (CLEAR, CORRECT, WRONG, NONFINITE, RAW, HANG)
TIME_LIMIT_S = 30  # a hang case runs for minutes; the first call of a custom op imports torch._dynamo (seconds)
ERR_TYPES = (ValueError, TypeError, FileNotFoundError, RuntimeError, OverflowError, FloatingPointError)


class _Hang(BaseException):
    pass


class Case:
    def __init__(self, cid, fn, expect, names=(), check=None, types=ERR_TYPES, warn_ok=False, nan_ok=False,
                 cli=False, post=None):
        self.id, self.fn, self.expect, self.names, self.check = cid, fn, expect, tuple(names), check
        self.types, self.warn_ok, self.nan_ok, self.cli, self.post = types, warn_ok, nan_ok, cli, post


CASES: list[Case] = []


def err(cid, fn, *names, **kw):
    CASES.append(Case(cid, fn, "error", names, **kw))


def ok(cid, fn, check, **kw):
    CASES.append(Case(cid, fn, "ok", check=check, **kw))


# ============================================================================ helpers
def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=_g(seed), dtype=dtype)


def _spd(d, seed=0, dtype=torch.float64, rank=None):
    A = _randn(d, rank or d, seed=seed)
    S = A @ A.T + (0 if rank else 0.5) * torch.eye(d, dtype=torch.float64)
    return S.to(dtype)


def _nonfinite(x):
    if isinstance(x, torch.Tensor):
        return x.is_floating_point() and not bool(torch.isfinite(x).all())
    if isinstance(x, np.ndarray):
        return np.issubdtype(x.dtype, np.floating) and not bool(np.isfinite(x).all())
    if isinstance(x, float):
        return not math.isfinite(x)
    if isinstance(x, (list, tuple)):
        return any(_nonfinite(t) for t in x)
    return False


def _has_nan(x):
    if isinstance(x, torch.Tensor):
        return x.is_floating_point() and bool(torch.isnan(x).any())
    if isinstance(x, (list, tuple)):
        return any(_has_nan(t) for t in x)
    if isinstance(x, float):
        return math.isnan(x)
    return False


def _close(a, b, rtol=1e-6, atol=1e-8):
    a = torch.as_tensor(a).double()
    b = torch.as_tensor(b).double()
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=rtol, atol=atol))


def _frac_power(S, a):
    """Reference S^a (float64 eigh; eigenvalues below d·eps·λmax count as 0)."""
    lam, Q = torch.linalg.eigh(0.5 * (S + S.T).double())
    floor = S.shape[-1] * torch.finfo(torch.float64).eps * lam.max()
    f = torch.where(lam > floor, lam.clamp_min(floor) ** a, torch.zeros_like(lam))
    return (Q * f) @ Q.T


def _prod(factors):
    P = factors[0].double()
    for f in factors[1:]:
        P = P @ f.double()
    return P


# ----------------------------------------------------------------------------- run one case
def _run(case, ctx):
    """(result, exception, warnings) of one call, under a time limit."""
    def on_alarm(signum, frame):
        raise _Hang()

    old = signal.signal(signal.SIGALRM, on_alarm) if hasattr(signal, "SIGALRM") else None
    if old is not None:
        signal.alarm(TIME_LIMIT_S)
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            try:
                return case.fn(ctx), None, list(w)
            except _Hang:
                raise
            except Exception as exc:  # classified below
                return None, exc, list(w)
    finally:
        if old is not None:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)


def _names_in(text, names):
    text = text.lower()
    return any(n.lower() in text for n in names) if names else True


def classify(case, ctx):
    """(class, detail) of one case's outcome."""
    if case.cli:
        _restore(ctx)
    try:
        res, exc, warns = _run(case, ctx)
    except _Hang:
        return HANG, f"over {TIME_LIMIT_S} s"
    if case.cli:
        return _classify_cli(case, res, exc, ctx)
    post = case.post(ctx) if case.post else None
    if post:
        return WRONG, post
    if case.expect == "error":
        if exc is not None:
            if isinstance(exc, case.types) and _names_in(str(exc), case.names):
                return CLEAR, f"{type(exc).__name__}: {exc}"
            return RAW, f"{type(exc).__name__}: {exc}"
        if case.warn_ok and any(_names_in(str(w.message), case.names) for w in warns):
            return CLEAR, "warning: " + str(warns[0].message)
        if case.nan_ok and _nonfinite(res):
            return CORRECT, "NaN/Inf propagated visibly"
        if _nonfinite(res):
            return NONFINITE, "non-finite output, no error"
        return WRONG, f"accepted, returned {type(res).__name__}"
    if exc is not None:
        return RAW, f"{type(exc).__name__}: {exc}"
    if _nonfinite(res) and not case.nan_ok:
        return NONFINITE, "non-finite output"
    try:
        good = case.check(res)
    except Exception as e:  # a check that cannot run on the result: the result is wrong
        return WRONG, f"check failed: {type(e).__name__}: {e}"
    return (CORRECT, "") if good else (WRONG, "result differs from the reference")


def _classify_cli(case, res, exc, ctx):
    if exc is not None:
        return RAW, f"{type(exc).__name__} escaped main(): {exc}"
    rc, out, errtext = res
    post = case.post(ctx) if case.post else None
    if post:
        return WRONG, post
    if "Traceback" in errtext or "Traceback" in out:
        return RAW, errtext.strip().splitlines()[-1] if errtext.strip() else "traceback"
    if case.expect == "error":
        lines = [ln for ln in errtext.strip().splitlines() if ln.strip()]
        if rc == 0:
            return WRONG, "accepted (exit 0)"
        if rc == 2 and len(lines) == 1 and _names_in(lines[0], case.names):
            return CLEAR, lines[0]
        return RAW, f"exit {rc}: {' | '.join(lines)[:300]}"
    if rc != 0:
        return RAW, f"exit {rc}: {errtext.strip()[:300]}"
    try:
        good = case.check((rc, out, errtext))
    except Exception as e:
        return WRONG, f"check failed: {type(e).__name__}: {e}"
    return (CORRECT, "") if good else (WRONG, "output differs from the expectation")


# ============================================================================ the ops
F64, F32 = torch.float64, torch.float32
U3, V3 = _randn(7, 3, seed=1), _randn(3, 5, seed=2)
X75 = _randn(7, 5, seed=3)
M75 = torch.rand(7, 5, generator=_g(4)) < 0.6


def _nan_at(t, i=0, j=0, v=float("nan")):
    t = t.clone()
    t[i, j] = v
    return t


# masked_residual / masked_loss (dense)
err("mr-factors-tensor", lambda c: dk.masked_residual(U3, X75, M75), "factors")
err("mr-factors-empty", lambda c: dk.masked_residual([], X75, M75), "factors")
err("mr-factor-int", lambda c: dk.masked_residual([U3.long(), V3], X75, M75), "factors[0]")
err("mr-chain-mismatch", lambda c: dk.masked_residual([U3, _randn(4, 5)], X75, M75), "factors[1]")
err("mr-dtype-mix", lambda c: dk.masked_residual([U3, V3.float()], X75, M75), "factors[1]")
err("mr-X-shape", lambda c: dk.masked_residual([U3, V3], _randn(5, 7), M75), "X")
err("mr-X-1d", lambda c: dk.masked_residual([U3, V3], _randn(35), M75), "X")
err("mr-mask-shape", lambda c: dk.masked_residual([U3, V3], X75, M75.T), "mask")
err("mr-mask-list", lambda c: dk.masked_residual([U3, V3], X75, M75.tolist()), "mask")
err("mr-X-nan-observed", lambda c: dk.masked_residual([U3, V3], _nan_at(X75), torch.ones(7, 5, dtype=torch.bool)),
    "X", nan_ok=True)
err("mr-factor-nan", lambda c: dk.masked_residual([_nan_at(U3), V3], X75, M75), "factors[0]", nan_ok=True)
err("mr-factor-inf", lambda c: dk.masked_residual([_nan_at(U3, v=float("inf")), V3], X75, M75), "factors[0]",
    nan_ok=True)
err("ml-X-inf-observed", lambda c: dk.masked_loss([U3, V3], _nan_at(X75, v=float("inf")),
                                                  torch.ones(7, 5, dtype=torch.bool)), "X", nan_ok=True)
err("ml-factor-nan", lambda c: dk.masked_loss([U3, _nan_at(V3)], X75, M75), "factors[1]", nan_ok=True)
ok("mr-f64-vs-ref", lambda c: dk.masked_residual([U3, V3], X75, M75),
   lambda E: _close(E, M75 * (_prod([U3, V3]) - X75)))
ok("mr-f32-3factors", lambda c: dk.masked_residual([U3.float(), _randn(3, 3, seed=5, dtype=F32), V3.float()],
                                                   X75.float(), M75),
   lambda E: _close(E, M75 * (_prod([U3, _randn(3, 3, seed=5, dtype=F32), V3]) - X75), rtol=1e-4, atol=1e-4))
ok("mr-nan-means-missing", lambda c: dk.masked_residual([U3, V3], X75.masked_fill(~M75, float("nan"))),
   lambda E: _close(E, M75 * (_prod([U3, V3]) - X75)))
ok("ml-value-vs-ref", lambda c: dk.masked_loss([U3, V3], X75, M75),
   lambda L: _close(L, 0.5 * ((M75 * (_prod([U3, V3]) - X75)) ** 2).sum()))
ok("ml-rank-deficient", lambda c: dk.masked_loss([U3[:, :1].expand(7, 3).contiguous(), V3], X75, M75),
   lambda L: _close(L, 0.5 * ((M75 * (_prod([U3[:, :1].expand(7, 3), V3]) - X75)) ** 2).sum()))

# masked_residual_sparse / masked_loss_sparse / sparse_pattern
R6 = torch.tensor([0, 1, 2, 6, 4, 3])
C6 = torch.tensor([0, 4, 2, 1, 3, 0])
VAL6 = _randn(6, seed=7)
err("mrs-rows-float", lambda c: dk.masked_residual_sparse([U3, V3], R6.double() + 0.9, C6, VAL6), "rows")
err("mrs-rows-range", lambda c: dk.masked_residual_sparse([U3, V3], R6 + 5, C6, VAL6), "rows")
err("mrs-rows-negative", lambda c: dk.masked_residual_sparse([U3, V3], R6 - 3, C6, VAL6), "rows")
err("mrs-cols-range", lambda c: dk.masked_residual_sparse([U3, V3], R6, C6 + 3, VAL6), "cols")
err("mrs-values-length", lambda c: dk.masked_residual_sparse([U3, V3], R6, C6, VAL6[:4]), "values")
err("mrs-values-2d", lambda c: dk.masked_residual_sparse([U3, V3], R6, C6, VAL6[:, None]), "values")
err("mrs-values-int", lambda c: dk.masked_residual_sparse([U3, V3], R6, C6, VAL6.long()), "values")
err("mrs-values-nan", lambda c: dk.masked_residual_sparse([U3, V3], R6, C6, _nan_at(VAL6[:, None])[:, 0]),
    "values", nan_ok=True)
err("mls-values-inf", lambda c: dk.masked_loss_sparse([U3, V3], R6, C6, _nan_at(VAL6[:, None], v=float("inf"))[:, 0]),
    "values", nan_ok=True)
err("mls-factor-nan", lambda c: dk.masked_loss_sparse([_nan_at(U3), V3], R6, C6, VAL6), "factors[0]", nan_ok=True)
err("sp-rows-float", lambda c: dk.sparse_pattern(R6.double() + 0.9, C6, (7, 5)), "rows")
err("sp-shape-negative", lambda c: dk.sparse_pattern(R6, C6, (-7, 5)), "shape")
err("sp-rows-range", lambda c: dk.sparse_pattern(R6, C6, (3, 5)), "rows")
ok("mrs-vs-dense", lambda c: dk.masked_residual_sparse([U3, V3], R6, C6, VAL6),
   lambda e: _close(e, _prod([U3, V3])[R6, C6] - VAL6))
ok("mls-vs-dense", lambda c: dk.masked_loss_sparse([U3, V3], R6, C6, VAL6),
   lambda L: _close(L, 0.5 * ((_prod([U3, V3])[R6, C6] - VAL6) ** 2).sum()))
ok("mls-duplicates-count-twice", lambda c: dk.masked_loss_sparse([U3, V3], torch.tensor([1, 1]), torch.tensor([2, 2]),
                                                                 VAL6[:2]),
   lambda L: _close(L, 0.5 * ((_prod([U3, V3])[1, 2] - VAL6[:2]) ** 2).sum()))


def _values_grad(c):
    v = VAL6.clone().requires_grad_(True)
    dk.masked_loss_sparse([U3, V3], R6, C6, v).backward()
    return v.grad


# either differentiate values (grad = -(P - v)) or refuse requires_grad naming values
CASES.append(Case("mls-values-requires-grad", _values_grad, "ok",
                  check=lambda gv: gv is not None and _close(gv, -(_prod([U3, V3])[R6, C6] - VAL6))))

# gram
err("gram-int", lambda c: dk.gram(torch.ones(4, 3, dtype=torch.long)), "Y")
err("gram-1d", lambda c: dk.gram(_randn(5)), "Y")
err("gram-list", lambda c: dk.gram([[1.0, 2.0]]), "Y")
err("gram-nan", lambda c: dk.gram(_nan_at(_randn(6, 3))), "Y", nan_ok=True)
ok("gram-vs-ref", lambda c: dk.gram(_randn(9, 4, seed=3)), lambda G: _close(G, _randn(9, 4, seed=3).T @ _randn(9, 4, seed=3)))
ok("gram-batched-f32", lambda c: dk.gram(_randn(2, 9, 4, seed=3, dtype=F32)),
   lambda G: _close(G, _randn(2, 9, 4, seed=3, dtype=F32).double().mT @ _randn(2, 9, 4, seed=3, dtype=F32).double(),
                    rtol=1e-4, atol=1e-4))

# pinv
err("pinv-int", lambda c: dk.pinv(torch.eye(3, dtype=torch.long)), "G")
err("pinv-1d", lambda c: dk.pinv(_randn(4)), "G")
err("pinv-method", lambda c: dk.pinv(_spd(4), method="qr"), "method")
err("pinv-nan", lambda c: dk.pinv(_nan_at(_spd(4))), "G", nan_ok=True)
err("pinv-inf", lambda c: dk.pinv(_nan_at(_spd(4), v=float("inf"))), "G", nan_ok=True)
err("pinv-newton-nan", lambda c: dk.pinv(_nan_at(_spd(4)), method="newton"), "G", nan_ok=True)
err("pinv-rtol-negative", lambda c: dk.pinv(_spd(4), rtol=-1.0), "rtol")
err("pinv-max-iters-zero", lambda c: dk.pinv(_spd(4), method="newton", max_iters=0), "max_iters")
ok("pinv-svd-spd", lambda c: dk.pinv(_spd(5)), lambda P: _close(P, torch.linalg.pinv(_spd(5)), rtol=1e-8, atol=1e-10))
ok("pinv-newton-spd", lambda c: dk.pinv(_spd(5), method="newton"),
   lambda P: _close(P, torch.linalg.pinv(_spd(5)), rtol=1e-6, atol=1e-8))
ok("pinv-rank-deficient", lambda c: dk.pinv(_spd(6, rank=3)),
   lambda P: _close(P, torch.linalg.pinv(_spd(6, rank=3), hermitian=True), rtol=1e-6, atol=1e-8))
ok("pinv-newton-tiny-f32", lambda c: dk.pinv(1e-30 * torch.eye(3, dtype=F32), method="newton"),
   lambda P: _close(P, 1e30 * torch.eye(3, dtype=F64), rtol=1e-3, atol=0))
ok("pinv-newton-huge-f32", lambda c: dk.pinv(1e30 * torch.eye(3, dtype=F32), method="newton"),
   lambda P: _close(P, 1e-30 * torch.eye(3, dtype=F64), rtol=1e-3, atol=0))
ok("pinv-rect", lambda c: dk.pinv(_randn(6, 3, seed=9)), lambda P: _close(P, torch.linalg.pinv(_randn(6, 3, seed=9))))

# spd_power
err("spd-a-out-of-range", lambda c: dk.spd_power(_spd(4), 2.0), "a")
err("spd-a-nan", lambda c: dk.spd_power(_spd(4), float("nan")), "a")
err("spd-a-string", lambda c: dk.spd_power(_spd(4), "half"), "a")
err("spd-S-nonsquare", lambda c: dk.spd_power(_randn(4, 3), 0.5), "S")
err("spd-S-int", lambda c: dk.spd_power(torch.eye(3, dtype=torch.long), 0.5), "S")
err("spd-method", lambda c: dk.spd_power(_spd(4), 0.5, method="svd"), "method")
err("spd-S-nan-eigh", lambda c: dk.spd_power(_nan_at(_spd(4)), 0.5, method="eigh"), "S", nan_ok=True)
err("spd-S-nan-newton", lambda c: dk.spd_power(_nan_at(_spd(4)), 0.5, method="newton"), "S", nan_ok=True)
err("spd-S-inf-newton", lambda c: dk.spd_power(_nan_at(_spd(4), v=float("inf")), 0.5, method="newton"), "S",
    nan_ok=True)
err("spd-S-inf-eigh", lambda c: dk.spd_power(_nan_at(_spd(4), v=float("inf")), 0.5, method="eigh"), "S",
    nan_ok=True)
err("spd-indefinite-eigh", lambda c: dk.spd_power(torch.diag(torch.tensor([-5.0, 1.0], dtype=F64)), 0.5,
                                                  method="eigh"), "S", warn_ok=True)
err("spd-indefinite-newton", lambda c: dk.spd_power(torch.diag(torch.tensor([-5.0, 1.0], dtype=F64)), 0.5,
                                                    method="newton"), "S", warn_ok=True)
err("spd-iters-zero", lambda c: dk.spd_power(_spd(4), 0.5, method="newton", iters=0), "iters")
err("spd-rtol-negative", lambda c: dk.spd_power(_spd(4), 0.5, rtol=-1.0), "rtol")
ok("spd-eigh-sqrt", lambda c: dk.spd_power(_spd(5), 0.5, method="eigh"), lambda P: _close(P, _frac_power(_spd(5), 0.5)))
ok("spd-newton-sqrt", lambda c: dk.spd_power(_spd(5), 0.5, method="newton"),
   lambda P: _close(P, _frac_power(_spd(5), 0.5), rtol=1e-6, atol=1e-8))
ok("spd-newton-quarter-f32", lambda c: dk.spd_power(_spd(5, dtype=F32), 0.25, method="newton"),
   lambda P: _close(P, _frac_power(_spd(5), 0.25), rtol=2e-3, atol=2e-3))
ok("spd-eigh-inverse-sqrt", lambda c: dk.spd_power(_spd(5), -0.5, method="eigh"),
   lambda P: _close(P, _frac_power(_spd(5), -0.5)))
ok("spd-singular-sqrt", lambda c: dk.spd_power(_spd(6, rank=2), 0.5, method="eigh"),
   lambda P: _close(P, _frac_power(_spd(6, rank=2), 0.5), rtol=1e-6, atol=1e-6))
ok("spd-newton-tiny-f32", lambda c: dk.spd_power(1e-30 * torch.eye(3, dtype=F32), 0.5, method="newton"),
   lambda P: _close(P, 1e-15 * torch.eye(3, dtype=F64), rtol=1e-3, atol=0))
ok("spd-newton-huge-f32", lambda c: dk.spd_power(1e30 * torch.eye(3, dtype=F32), 0.5, method="newton"),
   lambda P: _close(P, 1e15 * torch.eye(3, dtype=F64), rtol=1e-3, atol=0))
ok("spd-eigh-newton-agree", lambda c: (dk.spd_power(_spd(6, seed=3), 0.75, method="eigh"),
                                       dk.spd_power(_spd(6, seed=3), 0.75, method="newton")),
   lambda pq: _close(pq[0], pq[1], rtol=1e-6, atol=1e-8))

# spectral_norm_sq
err("sn-iters-zero", lambda c: dk.spectral_norm_sq(_randn(6, 4), method="power", iters=0), "iters")
err("sn-iters-negative", lambda c: dk.spectral_norm_sq(_randn(6, 4), method="power", iters=-3), "iters")
err("sn-iters-float", lambda c: dk.spectral_norm_sq(_randn(6, 4), method="power", iters=2.5), "iters")
err("sn-method", lambda c: dk.spectral_norm_sq(_randn(6, 4), method="lanczos"), "method")
err("sn-1d", lambda c: dk.spectral_norm_sq(_randn(6)), "A")
err("sn-nan", lambda c: dk.spectral_norm_sq(_nan_at(_randn(6, 4))), "A", nan_ok=True)
ok("sn-eigh", lambda c: dk.spectral_norm_sq(_randn(6, 4, seed=2), method="eigh"),
   lambda s: _close(s, torch.linalg.matrix_norm(_randn(6, 4, seed=2), ord=2) ** 2))
ok("sn-power", lambda c: dk.spectral_norm_sq(_randn(6, 4, seed=2), method="power", iters=300),
   lambda s: _close(s, torch.linalg.matrix_norm(_randn(6, 4, seed=2), ord=2) ** 2, rtol=1e-5))
ok("sn-power-huge-iters-stops", lambda c: dk.spectral_norm_sq(_randn(6, 4, seed=2), method="power", iters=10 ** 8),
   lambda s: _close(s, torch.linalg.matrix_norm(_randn(6, 4, seed=2), ord=2) ** 2, rtol=1e-5))

# lowrank_block
Y64, W64 = _randn(8, 3, seed=11), _randn(8, 3, seed=12)


def _block_ref(Y, W, p):
    wide = Y.shape[0] < Y.shape[1]
    if wide:
        Y, W = Y.T, W.T
    T = torch.relu(W.double() @ _frac_power(Y.double().T @ Y.double(), (2 - p) / 2))
    return T.T if wide else T


err("lb-p-zero", lambda c: dk.lowrank_block(Y64, W64, 0.0), "p")
err("lb-p-three", lambda c: dk.lowrank_block(Y64, W64, 3.0), "p")
err("lb-p-nan", lambda c: dk.lowrank_block(Y64, W64, float("nan")), "p")
err("lb-W-shape", lambda c: dk.lowrank_block(Y64, W64[:5], 1.0), "W")
err("lb-W-dtype", lambda c: dk.lowrank_block(Y64, W64.float(), 1.0), "W")
err("lb-normalize", lambda c: dk.lowrank_block(Y64, W64, 1.0, normalize="max"), "normalize")
err("lb-Y-nan", lambda c: dk.lowrank_block(_nan_at(Y64), W64, 1.0), "Y", nan_ok=True)
ok("lb-p1", lambda c: dk.lowrank_block(Y64, W64, 1.0), lambda T: _close(T, _block_ref(Y64, W64, 1.0)))
ok("lb-p05-wide", lambda c: dk.lowrank_block(Y64.T.contiguous(), W64.T.contiguous(), 0.5),
   lambda T: _close(T, _block_ref(Y64.T, W64.T, 0.5)))
ok("lb-p2-identity-power", lambda c: dk.lowrank_block(Y64, W64, 2.0), lambda T: _close(T, torch.relu(W64)))

# chain_products / chain_grad
err("cp-not-list", lambda c: dk.chain_products(U3), "factors")
err("cp-mismatch", lambda c: dk.chain_products([U3, _randn(4, 2)]), "factors[1]")
err("cg-E-shape", lambda c: dk.chain_grad([U3, V3], _randn(5, 7)), "E")
err("cg-E-list", lambda c: dk.chain_grad([U3, V3], X75.tolist()), "E")
ok("cg-vs-ref", lambda c: dk.chain_grad([U3, _randn(3, 3, seed=8), V3], X75),
   lambda gs: all(_close(g, r) for g, r in zip(gs, [X75 @ (_randn(3, 3, seed=8) @ V3).T,
                                                     U3.T @ X75 @ V3.T, (U3 @ _randn(3, 3, seed=8)).T @ X75])))

# lowrank_penalty
err("pen-h", lambda c: dk.lowrank_penalty(_randn(5, 4), h="bogus"), "h")
err("pen-p", lambda c: dk.lowrank_penalty(_randn(5, 4), h="schatten", p=3.0), "p")
err("pen-gamma", lambda c: dk.lowrank_penalty(_randn(5, 4), h="log", gamma=-1.0), "gamma")
err("pen-probes", lambda c: dk.lowrank_penalty(_randn(5, 4), probes=0), "probes")
err("pen-S-int", lambda c: dk.lowrank_penalty(torch.ones(5, 4, dtype=torch.long)), "S")
err("pen-S-nan", lambda c: dk.lowrank_penalty(_nan_at(_randn(5, 4))), "S", nan_ok=True)
ok("pen-nuclear", lambda c: dk.lowrank_penalty(_randn(6, 4, seed=4)),
   lambda r: _close(r, torch.linalg.svdvals(_randn(6, 4, seed=4)).sum(), rtol=1e-6))
ok("pen-exact-schatten", lambda c: dk.lowrank_penalty_exact(_randn(6, 4, seed=4), h="schatten", p=0.5),
   lambda r: _close(r, (torch.linalg.svdvals(_randn(6, 4, seed=4)) ** 0.5).sum(), rtol=1e-6))


# ============================================================================ dlrl.complete
def _low_rank(m, n, r, seed=0, missing=0.3):
    g = _g(seed)
    T = torch.randn(m, r, generator=g, dtype=F64) @ torch.randn(r, n, generator=g, dtype=F64)
    mask = torch.rand(m, n, generator=g) >= missing
    return T, T.masked_fill(~mask, float("nan")), mask


T12, X12, M12 = _low_rank(12, 10, 2)


def _complete(X, **kw):
    from dlrl import complete

    kw.setdefault("epochs", 5)
    kw.setdefault("tune", False)
    return complete(X, **kw)


def _kept(out, X=X12):
    out = torch.as_tensor(out)
    obs = ~torch.isnan(torch.as_tensor(X))
    return out.shape == X.shape and bool(torch.isfinite(out).all()) and _close(out[obs], torch.as_tensor(X)[obs])


err("cpl-unknown-kwarg", lambda c: _complete(X12, epochz=5), "epochz", types=(TypeError, ValueError))
err("cpl-rank-float", lambda c: _complete(X12, rank=2.7), "rank")
err("cpl-rank-zero", lambda c: _complete(X12, rank=0), "rank")
err("cpl-rank-above-min", lambda c: _complete(X12, rank=11), "rank", warn_ok=True)
err("cpl-epochs-negative", lambda c: _complete(X12, epochs=-1), "epochs")
err("cpl-blocks-one", lambda c: _complete(X12, blocks=1), "blocks")
err("cpl-patience-zero", lambda c: _complete(X12, patience=0), "patience")
err("cpl-p-three", lambda c: _complete(X12, p=3.0), "p")
err("cpl-mode", lambda c: _complete(X12, mode="fast"), "mode")
err("cpl-tune-string", lambda c: _complete(X12, tune="yes"), "tune")
err("cpl-X-3d", lambda c: _complete(torch.ones(2, 3, 4)), "X")
err("cpl-X-all-nan", lambda c: _complete(torch.full((4, 3), float("nan"))), "X")
err("cpl-X-inf", lambda c: _complete(_nan_at(X12.nan_to_num(0.5), v=float("inf"))), "X")
err("cpl-X-strings", lambda c: _complete([["a", "b"], ["c", "d"]]), "X")
err("cpl-mask-shape", lambda c: _complete(X12.nan_to_num(0.0), mask=M12.T), "mask")
err("cpl-mask-nan-observed", lambda c: _complete(X12, mask=torch.ones_like(M12)), "X")
ok("cpl-small-5x5-default-rank", lambda c: _complete(_low_rank(5, 5, 1)[1]), lambda o: _kept(o, _low_rank(5, 5, 1)[1]))
ok("cpl-tiny-3x4-tuned", lambda c: _complete(_low_rank(3, 4, 1)[1], tune="auto"), lambda o: _kept(o, _low_rank(3, 4, 1)[1]))
ok("cpl-numpy-in-numpy-out", lambda c: _complete(X12.numpy()), lambda o: isinstance(o, np.ndarray) and _kept(o))
ok("cpl-list-input", lambda c: _complete(X12.tolist()), lambda o: isinstance(o, np.ndarray) and _kept(o))
ok("cpl-int-tensor", lambda c: _complete(torch.arange(20).reshape(4, 5), mask=torch.rand(4, 5, generator=_g(1)) > 0.3),
   lambda o: o.shape == (4, 5) and bool(torch.isfinite(o).all()))
ok("cpl-keep-observed", lambda c: _complete(X12, rank=2), _kept)
ok("cpl-clip-range", lambda c: _complete(X12, rank=2),
   lambda o: float(o.min()) >= float(X12.nan_to_num(1e9).min()) - 1e-9
   and float(o.max()) <= float(X12.nan_to_num(-1e9).max()) + 1e-9)
ok("cpl-constant-matrix", lambda c: _complete(torch.full((6, 5), 3.0).masked_fill(M12[:6, :5] == 0, float("nan"))),
   lambda o: _close(o, torch.full((6, 5), 3.0), rtol=1e-6, atol=1e-6))


# ============================================================================ the DLRL model
def _obs(m=12, n=10, seed=0, nnz=60, lo=1, hi=5):
    g = _g(seed)
    idx = torch.randperm(m * n, generator=g)[:nnz]
    vals = torch.randint(lo, hi + 1, (nnz,), generator=g).double()
    return idx // n, idx % n, vals


R_, C_, V_ = _obs()


def _model(**kw):
    from dlrl import DLRL

    shape = kw.pop("shape", (12, 10))
    kw.setdefault("rank", 3)
    return DLRL(shape, **kw)


def _fit(model=None, rows=R_, cols=C_, values=V_, **kw):
    model = model if model is not None else _model(dtype="float64")
    kw.setdefault("epochs", 3)
    kw.setdefault("progress", False)
    model.fit(rows=rows, cols=cols, values=values, **kw)
    return model


err("dlrl-unknown-kwarg", lambda c: _model(biass=True), "biass", types=(TypeError, ValueError))
err("dlrl-rank-float", lambda c: _model(rank=2.7), "rank")
err("dlrl-rank-zero", lambda c: _model(rank=0), "rank")
err("dlrl-rank-above-min", lambda c: _fit(_model(shape=(30, 25), rank=35)), "rank", warn_ok=True)
err("dlrl-blocks-one", lambda c: _model(blocks=1), "blocks")
err("dlrl-blocks-float", lambda c: _model(blocks=3.5), "blocks")
err("dlrl-mode", lambda c: _model(mode="fast"), "mode")
err("dlrl-refresh", lambda c: _model(refresh="sometimes"), "refresh")
err("dlrl-p-three", lambda c: _model(p=3.0), "p")
err("dlrl-p-list-length", lambda c: _model(p=[1.0, 0.5]), "p")
err("dlrl-loss", lambda c: _model(loss="max"), "loss")
err("dlrl-init", lambda c: _model(init="zeros"), "init")
err("dlrl-normalize", lambda c: _model(normalize="max"), "normalize")
err("dlrl-dtype", lambda c: _model(dtype="float16"), "dtype")
err("dlrl-shape-negative", lambda c: _model(shape=(-3, 4)), "shape")
err("dlrl-shape-3d", lambda c: _model(shape=(3, 4, 5)), "shape")
err("dlrl-clip-reversed", lambda c: _model(clip=(5, 1)), "clip")
err("dlrl-eta0-nan", lambda c: _model(eta0=float("nan")), "eta0")
err("fit-rows-float", lambda c: _fit(rows=R_.double() + 0.9), "rows")
err("fit-rows-range", lambda c: _fit(rows=R_ + 20), "rows")
err("fit-cols-negative", lambda c: _fit(cols=C_ - 20), "cols")
err("fit-values-nan", lambda c: _fit(values=_nan_at(V_[:, None])[:, 0]), "values")
err("fit-values-inf", lambda c: _fit(values=_nan_at(V_[:, None], v=float("inf"))[:, 0]), "values")
err("fit-values-length", lambda c: _fit(values=V_[:10]), "values")
err("fit-epochs-negative", lambda c: _fit(epochs=-1), "epochs")
err("fit-epochs-float", lambda c: _fit(epochs=2.5), "epochs")
err("fit-lr-negative", lambda c: _fit(lr=-0.01), "lr")
err("fit-lr-nan", lambda c: _fit(lr=float("nan")), "lr")
err("fit-weight-decay-negative", lambda c: _fit(weight_decay=-1.0), "weight_decay")
err("fit-patience-negative", lambda c: _fit(patience=-1), "patience")
err("fit-early-stopping-no-val", lambda c: _fit(early_stopping=5), "early_stopping")
err("fit-early-stopping-zero", lambda c: _fit(early_stopping=0, val=(R_[:5], C_[:5], V_[:5])), "early_stopping")
err("fit-val-ragged", lambda c: _fit(val=(R_[:5], C_[:4], V_[:5])), "val")
err("fit-val-out-of-range", lambda c: _fit(val=(R_[:5] + 50, C_[:5], V_[:5])), "val")
err("fit-clip-scale-mismatch", lambda c: _fit(_model(clip=(1, 5), dtype="float64"), values=V_ + 12), "clip",
    warn_ok=True)
err("fit-checkpoint-bad-folder", lambda c: _fit(checkpoint=str(Path(c["tmp"]) / "no" / "such" / "m.pt")),
    "checkpoint")
err("predict-rows-float", lambda c: _fit().predict(R_.double() + 0.9, C_), "rows")
err("predict-rows-range", lambda c: _fit().predict(R_ + 20, C_), "rows")


def _load(c, content: bytes):
    from dlrl import DLRL

    p = Path(c["tmp"]) / f"ck_{abs(hash(content)) % 10 ** 8}.pt"
    p.write_bytes(content)
    return DLRL.load(p)


def _truncated_ck(c):
    from dlrl import DLRL

    p = Path(c["tmp"]) / "full.pt"
    _fit().save(p)
    data = p.read_bytes()
    q = Path(c["tmp"]) / "trunc.pt"
    q.write_bytes(data[: len(data) // 2])
    return DLRL.load(q)


def _foreign_ck(c):
    from dlrl import DLRL

    p = Path(c["tmp"]) / "foreign.pt"
    torch.save({"weights": torch.ones(3)}, p)
    return DLRL.load(p)


err("load-garbage", lambda c: _load(c, b"not a checkpoint at all\n" * 10), "ck_", types=ERR_TYPES + (OSError,))
err("load-truncated", _truncated_ck, "trunc.pt", types=ERR_TYPES + (OSError,))
err("load-foreign", _foreign_ck, "foreign.pt", types=ERR_TYPES + (OSError, KeyError))
err("load-missing", lambda c: __import__("dlrl").DLRL.load(Path(c["tmp"]) / "nope.pt"), "nope.pt",
    types=ERR_TYPES + (OSError,))


def _save_then_resume(c):
    p = Path(c["tmp"]) / "readme_flow.pt"
    model = _fit()
    model.save(p)
    model.fit(rows=R_, cols=C_, values=V_, epochs=5, progress=False, resume=p)
    return model


def _default_rank_small(c):
    from dlrl import DLRL

    r, cc, v = _obs(10, 8, nnz=40)
    model = DLRL((10, 8), dtype="float64")
    model.fit(rows=r, cols=cc, values=v, epochs=3, progress=False)
    return model.predict(r, cc)


ok("readme-save-then-resume", _save_then_resume, lambda m: len(m.history) == 5)
ok("dlrl-default-rank-small", _default_rank_small, lambda p: p.shape == (40,))
ok("dlrl-fit-predict", lambda c: _fit(epochs=5).predict(R_, C_), lambda p: p.shape == R_.shape)
ok("dlrl-history-length", lambda c: _fit(epochs=4).history, lambda h: len(h) == 4 and all(math.isfinite(e["train_loss"]) for e in h))
ok("dlrl-bias-float32", lambda c: _fit(_model(bias=True), epochs=3).predict(R_, C_), lambda p: p.dtype == torch.float32)
ok("dlrl-clip-respected", lambda c: _fit(_model(clip=(1, 5), dtype="float64"), epochs=3).predict(R_, C_),
   lambda p: float(p.min()) >= 1 and float(p.max()) <= 5)


# ============================================================================ the command line
def _ratings(path, m=40, n=30, nnz=700, seed=0):
    g = _g(seed)
    U, V = torch.rand(m, 3, generator=g), torch.rand(3, n, generator=g)
    R = (1 + 4 * (U @ V) / 3).clamp(1, 5).round()
    idx = torch.randperm(m * n, generator=g)[:nnz]
    path.write_text("".join(f"u{int(i) // n}\ti{int(i) % n}\t{int(R.view(-1)[i])}\n" for i in idx))
    return path


def _png(path, h=10, w=8, seed=0):
    from PIL import Image

    arr = (torch.rand(h, w, 3, generator=_g(seed)) * 255).to(torch.uint8).numpy()
    Image.fromarray(arr).save(path)
    return path


def make_ctx(tmp):
    tmp = Path(tmp)
    ctx = {"tmp": str(tmp)}
    ctx["ratings"] = str(_ratings(tmp / "ratings.tsv"))
    ctx["ratings_bytes"] = Path(ctx["ratings"]).read_bytes()
    ctx["img"] = str(_png(tmp / "img.png"))
    ctx["img_bytes"] = Path(ctx["img"]).read_bytes()
    data = Path(ctx["img"]).read_bytes()
    (tmp / "trunc.png").write_bytes(data[: len(data) // 2])
    _png(tmp / "mask_small.png", h=5, w=5)
    (tmp / "notimage.png").write_text("hello, not an image\n")
    (tmp / "garbage.tsv").write_bytes(bytes(range(256)) * 8)
    (tmp / "bad.pt").write_bytes(b"garbage checkpoint" * 20)
    (tmp / "exists.json").write_text('{"keep": true}')
    (tmp / "exists.png").write_bytes(b"keep")
    ctx["exists_json"] = str(tmp / "exists.json")
    ctx["exists_png"] = str(tmp / "exists.png")
    return ctx


def _restore(ctx):
    """Put the CLI cases' input and existing files back (a failing case may have destroyed them)."""
    Path(ctx["ratings"]).write_bytes(ctx["ratings_bytes"])
    Path(ctx["img"]).write_bytes(ctx["img_bytes"])
    Path(ctx["exists_json"]).write_text('{"keep": true}')
    Path(ctx["exists_png"]).write_bytes(b"keep")


def cli_main(argv):
    """Run ``dlrl.cli.main(argv)`` in-process: (exit status, stdout, stderr)."""
    from dlrl.cli import main

    out, errb = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(errb):
        try:
            rc = main(argv)
        except SystemExit as e:
            code = e.code
            if isinstance(code, str):  # what the interpreter would do: print it, exit 1
                errb.write(code + "\n")
                rc = 1
            else:
                rc = 0 if code is None else code
    return int(rc or 0), out.getvalue(), errb.getvalue()


FAST = ["--epochs", "3", "--quiet", "--rank", "3", "--split", "random"]


def fit_case(cid, extra, *names, expect="error", check=None, post=None, data="ratings"):
    def fn(c):
        args = [c[data] if data in c else str(Path(c["tmp"]) / data)] + [a.format(**c) for a in extra]
        base = [a for a in FAST if a not in ()]
        # options given by the case win over the fast defaults
        given = {a for a in extra if a.startswith("--")}
        fast, i = [], 0
        while i < len(base):
            if base[i] in given:
                i += 1 if base[i] == "--quiet" else 2
                continue
            fast.append(base[i])
            i += 1
        return cli_main(["fit"] + args + fast)

    CASES.append(Case(cid, fn, expect, names, check=check, cli=True, post=post))


def _input_intact(key):
    def post(c):
        p = Path(c[key])
        if not p.exists() or p.read_bytes() != c[key + "_bytes"]:
            return f"the input {p.name} was overwritten or removed"
        return None
    return post


def _file_kept(key, content):
    def post(c):
        if Path(c[key]).read_bytes() != content:
            return f"{Path(c[key]).name} was overwritten without --force"
        return None
    return post


fit_case("cli-fit-epochs-negative", ["--epochs", "-5"], "--epochs")
fit_case("cli-fit-epochs-zero", ["--epochs", "0"], "--epochs")
fit_case("cli-fit-val-negative", ["--val-fraction", "-0.1"], "--val-fraction")
fit_case("cli-fit-val-one", ["--val-fraction", "1.0"], "--val-fraction")
fit_case("cli-fit-early-stopping-zero", ["--early-stopping", "0", "--val-fraction", "0.1"], "--early-stopping")
fit_case("cli-fit-early-stopping-no-val", ["--early-stopping", "5"], "--early-stopping")
fit_case("cli-fit-rank-zero", ["--rank", "0"], "--rank")
fit_case("cli-fit-rank-35-on-30", ["--rank", "35"], "--rank")
fit_case("cli-fit-blocks-one", ["--blocks", "1"], "--blocks")
fit_case("cli-fit-p-three", ["--p", "3"], "--p")
fit_case("cli-fit-lr-negative", ["--lr", "-1"], "--lr")
fit_case("cli-fit-lr-nan", ["--lr", "nan"], "--lr")
fit_case("cli-fit-weight-decay-negative", ["--weight-decay", "-1"], "--weight-decay")
fit_case("cli-fit-patience-negative", ["--patience", "-1"], "--patience")
fit_case("cli-fit-device-cuda", ["--device", "cuda"], "--device")
fit_case("cli-fit-device-bogus", ["--device", "tpu7"], "--device")
fit_case("cli-fit-epochs-text", ["--epochs", "many"], "--epochs")
fit_case("cli-fit-test-fraction-negative", ["--test-fraction", "-0.2"], "--test-fraction")
fit_case("cli-fit-test-fraction-one", ["--test-fraction", "1.0"], "--test-fraction")
fit_case("cli-fit-test-fraction-default-split", ["--test-fraction", "0.3", "--split", "published"],
         "--test-fraction", "--split")
fit_case("cli-fit-holdout-negative", ["--holdout", "-1", "--split", "per-user"], "--holdout")
fit_case("cli-fit-scale-reversed", ["--scale", "5", "1"], "--scale")
fit_case("cli-fit-split-bogus", ["--split", "sideways"], "--split")
fit_case("cli-fit-resume-garbage", ["--resume", "{tmp}/bad.pt"], "--resume")
fit_case("cli-fit-resume-missing", ["--resume", "{tmp}/none.pt"], "--resume")
fit_case("cli-fit-missing-file", [], "ratings", "no such", data="missing.tsv")
fit_case("cli-fit-garbage-file", [], "garbage.tsv", "ratings", data="garbage.tsv")
fit_case("cli-fit-save-over-input", ["--save", "{ratings}"], "--save", post=_input_intact("ratings"))
fit_case("cli-fit-json-over-input", ["--json", "{ratings}"], "--json", post=_input_intact("ratings"))
fit_case("cli-fit-plot-over-input", ["--plot", "{ratings}"], "--plot", post=_input_intact("ratings"))
fit_case("cli-fit-json-exists", ["--json", "{exists_json}"], "--json",
         post=_file_kept("exists_json", b'{"keep": true}'))
fit_case("cli-fit-plot-exists", ["--plot", "{exists_png}"], "--plot", post=_file_kept("exists_png", b"keep"))
fit_case("cli-fit-save-no-folder", ["--save", "{tmp}/no/such/m.pt"], "--save")
fit_case("cli-fit-json-no-folder", ["--json", "{tmp}/no/such/r.json"], "--json")
fit_case("cli-fit-plot-is-folder", ["--plot", "{tmp}"], "--plot")
fit_case("cli-fit-threads-zero", ["--threads", "0"], "--threads")
fit_case("cli-fit-force-overwrites", ["--json", "{tmp}/forced.json", "--force"], expect="ok",
         check=lambda r: "test RMSE" in r[1])


def _fit_json_then_force(c):
    p = Path(c["tmp"]) / "twice.json"
    p.write_text("old")
    rc, out, errtext = cli_main(["fit", c["ratings"], "--json", str(p), "--force"] + FAST)
    import json

    return rc, json.loads(p.read_text()), errtext


CASES.append(Case("cli-fit-force-json-valid", _fit_json_then_force, "ok", cli=True,
                  check=lambda r: "test_rmse" in r[1] and math.isfinite(r[1]["test_rmse"])))
fit_case("cli-fit-ok-json", ["--json", "{tmp}/ok.json"], expect="ok", check=lambda r: "test RMSE" in r[1])


def inpaint_case(cid, extra, *names, expect="error", check=None, post=None, image="{img}"):
    def fn(c):
        return cli_main(["inpaint", image.format(**c)] + [a.format(**c) for a in extra]
                        + ["--epochs", "3", "--quiet", "--rank", "2"])

    CASES.append(Case(cid, fn, expect, names, check=check, cli=True, post=post))


inpaint_case("cli-inpaint-out-over-input", ["--out", "{img}"], "--out", post=_input_intact("img"))
inpaint_case("cli-inpaint-out-exists", ["--out", "{exists_png}"], "--out", post=_file_kept("exists_png", b"keep"))
inpaint_case("cli-inpaint-size-zero", ["--size", "0", "--out", "{tmp}/s0.png"], "--size")
inpaint_case("cli-inpaint-size-negative", ["--size", "-4", "--out", "{tmp}/s1.png"], "--size")
inpaint_case("cli-inpaint-missing-above-one", ["--missing", "1.5", "--out", "{tmp}/m1.png"], "--missing")
inpaint_case("cli-inpaint-missing-negative", ["--missing", "-0.1", "--out", "{tmp}/m2.png"], "--missing")
inpaint_case("cli-inpaint-truncated", ["--out", "{tmp}/t.png"], "trunc.png", "image", image="{tmp}/trunc.png")
inpaint_case("cli-inpaint-not-image", ["--out", "{tmp}/n.png"], "notimage.png", "image", image="{tmp}/notimage.png")
inpaint_case("cli-inpaint-missing-file", ["--out", "{tmp}/x.png"], "nothere.png", "image",
             image="{tmp}/nothere.png")
inpaint_case("cli-inpaint-mask-wrong-size", ["--mask", "{tmp}/mask_small.png", "--out", "{tmp}/w.png"], "--mask")
inpaint_case("cli-inpaint-mask-missing", ["--mask", "{tmp}/nomask.png", "--out", "{tmp}/w2.png"], "--mask")
inpaint_case("cli-inpaint-out-no-folder", ["--out", "{tmp}/no/such/o.png"], "--out")
inpaint_case("cli-inpaint-rank-zero", ["--rank", "0", "--out", "{tmp}/r0.png"], "--rank")
inpaint_case("cli-inpaint-ok", ["--out", "{tmp}/good.png"], expect="ok", check=lambda r: "PSNR" in r[1])


def _cli(cid, argv, *names, expect="error", check=None):
    CASES.append(Case(cid, lambda c: cli_main([a.format(**c) for a in argv]), expect, names, check=check, cli=True))


_cli("cli-demo-size-zero", ["demo", "--size", "0", "--out", "{tmp}/demo0"], "--size")
_cli("cli-demo-out-is-file", ["demo", "--out", "{exists_json}"], "--out")
_cli("cli-no-command", [], "command")
_cli("cli-unknown-command", ["train"], "train", "command")
_cli("cli-unknown-option", ["fit", "{ratings}", "--epochz", "3"], "--epochz")
_cli("cli-version", ["--version"], expect="ok", check=lambda r: "0." in r[1] + r[2])


# ============================================================================ pytest
@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return make_ctx(tmp_path_factory.mktemp("hostile"))


#: cases that fail because of code this suite's author does not own: the owner and the fix needed
KNOWN: dict = {}


def _param(case):
    if case.id in KNOWN:
        return pytest.param(case, id=case.id, marks=pytest.mark.xfail(strict=False, reason=KNOWN[case.id]))
    return pytest.param(case, id=case.id)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_hostile(case, ctx):
    cls, detail = classify(case, ctx)
    want = CLEAR if case.expect == "error" else CORRECT
    accepted = {want, CORRECT} if case.nan_ok else {want}  # NaN propagated visibly is accepted there
    assert cls in accepted, f"{cls}: {detail}"


def test_suite_is_large_enough():
    assert len(CASES) >= 150, len(CASES)


# real subprocesses: the exit status and stderr a shell user sees
def _dlrl(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "dlrl", *args], capture_output=True, text=True, timeout=timeout)


def test_subprocess_bad_option_is_one_line_exit_2(ctx):
    proc = _dlrl("fit", ctx["ratings"], "--epochs", "-5")
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--epochs" in lines[0] and "Traceback" not in proc.stderr


def test_subprocess_missing_file_and_debug_traceback(ctx):
    missing = str(Path(ctx["tmp"]) / "absent.tsv")
    proc = _dlrl("fit", missing)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "absent.tsv" in proc.stderr
    proc = _dlrl("--debug", "fit", ctx["ratings"], "--resume", str(Path(ctx["tmp"]) / "bad.pt"), "--epochs", "2",
                 "--quiet")
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_subprocess_version_and_demo_help():
    import dlrl

    proc = _dlrl("--version")
    assert proc.returncode == 0 and dlrl.__version__ in proc.stdout
    proc = _dlrl("demo", "--help")
    assert proc.returncode == 0 and "--quick" in proc.stdout and "baseline" in proc.stdout.lower()


# ============================================================================ property test
try:
    from hypothesis import HealthCheck, given, note, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    given = None


if given is not None:
    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(seed=st.integers(0, 2 ** 31 - 1), m=st.integers(1, 9), n=st.integers(1, 9), d=st.integers(1, 5),
           blocks=st.integers(1, 4), double=st.booleans(), nnz=st.integers(1, 30))
    def test_ops_match_references_on_random_valid_inputs(seed, m, n, d, blocks, double, nnz):
        note(f"seed={seed}")
        print(f"hostile property test: seed={seed} m={m} n={n} d={d} blocks={blocks} float64={double}")
        dt = F64 if double else F32
        tol = dict(rtol=1e-9, atol=1e-9) if double else dict(rtol=2e-4, atol=2e-4)
        g = _g(seed)
        dims = [m] + [d] * (blocks - 1) + [n]
        factors = [torch.randn(dims[k], dims[k + 1], generator=g, dtype=dt) for k in range(blocks)]
        P = _prod(factors)
        X = torch.randn(m, n, generator=g, dtype=dt)
        mask = torch.rand(m, n, generator=g) < 0.6
        assert _close(dk.masked_residual(factors, X, mask), mask * (P - X.double()), **tol)
        assert _close(dk.masked_loss(factors, X, mask), 0.5 * ((mask * (P - X.double())) ** 2).sum(),
                      rtol=tol["rtol"] * 10, atol=tol["atol"] * 10)
        rows = torch.randint(0, m, (nnz,), generator=g)
        cols = torch.randint(0, n, (nnz,), generator=g)
        vals = torch.randn(nnz, generator=g, dtype=dt)
        assert _close(dk.masked_residual_sparse(factors, rows, cols, vals), P[rows, cols] - vals.double(), **tol)
        Y = torch.randn(m + d, d, generator=g, dtype=F64)
        S = Y.T @ Y + 0.1 * torch.eye(d, dtype=F64)
        assert _close(dk.gram(Y), Y.T @ Y, rtol=1e-9, atol=1e-9)
        assert _close(dk.spd_power(S, 0.5, method="eigh"), _frac_power(S, 0.5), rtol=1e-7, atol=1e-9)
        assert _close(dk.spd_power(S, 0.5, method="newton"), _frac_power(S, 0.5), rtol=1e-6, atol=1e-8)
        assert _close(dk.pinv(S), torch.linalg.inv(S), rtol=1e-6, atol=1e-8)
        assert _close(dk.spectral_norm_sq(Y, method="eigh"), torch.linalg.matrix_norm(Y, ord=2) ** 2, rtol=1e-9)


# ============================================================================ the tally
def tally(verbose=False):
    with tempfile.TemporaryDirectory() as tmp:
        ctx_ = make_ctx(tmp)
        counts = {k: 0 for k in CLASSES}
        rows = []
        for case in CASES:
            cls, detail = classify(case, ctx_)
            counts[cls] += 1
            rows.append((case.id, cls, detail))
    if verbose:
        for cid, cls, detail in rows:
            print(f"{cls:14s} {cid:40s} {detail[:150]}")
    print(f"{len(CASES)} cases: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return counts, rows


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    tally(verbose="-v" in sys.argv)
