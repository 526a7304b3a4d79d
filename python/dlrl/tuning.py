"""Hyper-parameters chosen on validation data held out of the *training* ratings.

``choose`` is what ``DLRL.fit(..., tune=True)``, ``dlrl.complete`` and ``dlrl fit --tune`` call.
It never sees test data: it splits the training entries it is given into a fitting part and a
validation part (``VAL_FRACTION`` of them, drawn with ``seed``), fits short candidate models on
the fitting part with early stopping on the validation part, and returns the candidate with
the lowest validation RMSE. The caller then refits on *all* training entries.

The search (``GRID``) is staged, not a full product: each stage varies one parameter around
the best candidate so far — every value for ``blocks``, ``bias`` and ``p``, a line search along
the sorted values for ``weight_decay`` and ``rank`` (both neighbours of the current value, then
onwards while validation RMSE keeps improving). Order and values come from validation
measurements on ML-100K (u1.base and the published training split, 10 % held out, seed 0)
and synthetic rating sets (bench/results/accuracy.md lists every search's candidates):

1. ``blocks`` 3 or 5 — 3 blocks: validation RMSE 0.913 / 0.901 vs 0.922 / 0.909 with 5
   (u1 / published; 2 blocks 0.950 / 0.939, 4 blocks 0.921 / 0.904).
2. ``weight_decay`` — Adam L2 *per observed entry* (the training loss is a sum over the
   observed entries, so the regulariser must grow with their number); the absolute value
   returned is ``per_entry × nnz`` of the full training set. 2.5e-4 (20 on ML-100K) is the
   start; 5e-4 and up lose on ML-100K (0.936 at 3.75e-4), while a 500×300 synthetic set with
   12 ratings per user needs 1e-3 (validation 0.701 vs 0.717 at 4e-4 and 0.715 for Surprise
   SVD); 0 is for noiseless data (``dlrl.complete`` starts there).
3. ``bias`` — global mean and row / column biases on or off (on: 0.922 vs 0.949 on u1).
4. ``rank`` — the factor width d (capped at min(m, n)); moves ML-100K by < 0.01, in no
   consistent direction.
5. ``p`` — the Schatten exponent of every block (0.5 vs 1: within ±0.005).

Budget: candidates are fitted one after another, each for at most ``TUNE_MAX_EPOCHS`` epochs
with early stopping after ``TUNE_PATIENCE`` epochs without a better validation RMSE; once
``budget_s`` seconds (``DEFAULT_BUDGET_S`` if None) have passed no new candidate is started
(the report lists the skipped ones). On ML-100K (80 000 ratings) one candidate takes 1.5–6 s
on one CPU core, so the default grid (≈ 9 candidates) takes ~30 s on a core of a busy 2-core
machine and a few seconds on a GPU.
"""
from __future__ import annotations

import inspect
import math
import time
from typing import Iterable, Optional

import torch

#: share of the training entries held out for validation
VAL_FRACTION = 0.1
#: fewer observed entries than this: no search (the validation part would be a handful of entries)
MIN_ENTRIES = 50
#: each candidate's fit: at most this many epochs, early stopping after TUNE_PATIENCE without progress
TUNE_MAX_EPOCHS = 300
TUNE_PATIENCE = 10
#: seconds after which no new candidate is started when the caller gives no budget
DEFAULT_BUDGET_S = 60.0

#: the staged grid: (parameter, values). weight decay is per observed entry.
GRID = (
    ("blocks", (3, 5)),
    ("weight_decay_per_entry", (0.0, 1.25e-4, 2.5e-4, 5e-4, 1e-3, 2e-3)),
    ("bias", (True, False)),
    ("rank", (5, 10, 20, 40)),
    ("p", (0.5, 1.0)),
)
#: stages searched as a line search along their sorted values (the others: every value)
ORDERED = ("weight_decay_per_entry", "rank")
#: the starting point of the search (the first candidate), for names not fixed by the caller
START = {"blocks": 3, "weight_decay_per_entry": 2.5e-4, "bias": True, "rank": 20, "p": 1.0}


def _split(n: int, seed: int, fraction: float):
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=gen)
    n_val = min(max(int(round(fraction * n)), 1), n - 1)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def _fit_accepts(name: str) -> bool:
    from .model import DLRL

    return name in inspect.signature(DLRL.fit).parameters


_DATA_ARGS = ("X", "mask", "rows", "cols", "values", "val", "early_stopping", "progress", "resume", "checkpoint",
              "callback", "self")


def _ctor_names():
    from .model import DLRL

    params = inspect.signature(DLRL.__init__).parameters
    return {k for k, v in params.items() if k not in ("self", "shape") and v.kind not in (
        inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)}


def _rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    d = a.double() - b.double()
    return float(torch.sqrt((d * d).mean()))


def _as_tensors(rows, cols, values):
    rows = torch.as_tensor(rows).long().reshape(-1)
    cols = torch.as_tensor(cols).long().reshape(-1)
    values = torch.as_tensor(values)
    if not values.is_floating_point():
        values = values.double()
    values = values.reshape(-1)
    if not (rows.numel() == cols.numel() == values.numel()):
        raise ValueError(f"rows/cols/values: expected the same length, got {rows.numel()}, {cols.numel()}, "
                         f"{values.numel()}")
    if not bool(torch.isfinite(values).all()):
        raise ValueError("values: expected finite values (no NaN / inf)")
    return rows, cols, values


def _stage_values(stage_name, values, shape):
    if stage_name == "rank":
        return sorted({min(int(v), min(shape)) for v in values})
    return list(values)


def _stage_skipped(stage_name, explicit):
    if stage_name == "weight_decay_per_entry":
        return "weight_decay" in explicit
    return stage_name in explicit


def choose(config: dict, rows, cols, values, shape, explicit: set, seed: int = 0,
           budget_s: Optional[float] = None, *, start: Optional[dict] = None) -> dict:
    """Pick DLRL hyper-parameters on a validation part of the given (training) entries.

    config: the constructor arguments the model was built with (``shape`` may be included; it
        is taken from ``shape``). explicit: names the user set (constructor or fit keywords);
        they are never varied nor returned. seed: draws the validation part (the same seed
        gives the same split and the same choice). budget_s: no new candidate is started after
        this many seconds (``DEFAULT_BUDGET_S`` if None). start: entries replacing ``START``'s
        (the first candidate; e.g. ``dlrl.complete`` starts without weight decay).
    Returns ``{"overrides": {constructor args}, "fit_kwargs": {"epochs": ...}, "report": {...}}``.
    """
    from .model import DLRL

    if not isinstance(config, dict):
        raise TypeError(f"config: expected a dict of DLRL constructor arguments, got {type(config).__name__}")
    explicit = set(explicit or ())
    try:
        m, n = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape: expected (n_rows, n_cols), got {shape!r}") from None
    rows, cols, values = _as_tensors(rows, cols, values)
    budget = DEFAULT_BUDGET_S if budget_s is None else float(budget_s)
    if not budget > 0:
        raise ValueError(f"budget_s: expected a positive number of seconds or None, got {budget_s!r}")
    nnz = values.numel()
    report = {"val_fraction": VAL_FRACTION, "seed": int(seed), "budget_s": budget, "grid": [list(g) for g in GRID],
              "start": dict(START), "max_epochs": TUNE_MAX_EPOCHS, "patience": TUNE_PATIENCE,
              "explicit": sorted(explicit), "candidates": [], "skipped": []}
    t0 = time.perf_counter()
    if nnz < MIN_ENTRIES:
        report.update(chosen=None, reason=f"only {nnz} observed entries (< {MIN_ENTRIES}): nothing held out",
                      seconds=time.perf_counter() - t0)
        return {"overrides": {}, "fit_kwargs": {}, "report": report}

    fit_idx, val_idx = _split(nnz, seed, VAL_FRACTION)
    fr, fc, fv = rows[fit_idx], cols[fit_idx], values[fit_idx]
    val = (rows[val_idx], cols[val_idx], values[val_idx])
    ctor = _ctor_names()
    config = dict(config)
    extra = config.pop("extra", None)  # asdict(DLRLConfig) keeps **extra under "extra"
    if isinstance(extra, dict):
        config = {**extra, **config}
    base = {k: v for k, v in config.items() if k in ctor}
    # fit keywords in config (lr, patience, ...) are used by every candidate; "epochs" caps them
    fixed_fit = {k: v for k, v in config.items() if k not in base and k != "epochs" and _fit_accepts(k)
                 and k not in _DATA_ARGS}
    report["ignored_config"] = sorted(k for k in config if k not in base and k not in fixed_fit
                                      and k not in ("shape", "epochs"))
    max_epochs = min(TUNE_MAX_EPOCHS, int(config["epochs"])) if config.get("epochs") else TUNE_MAX_EPOCHS
    report["max_epochs"] = max_epochs
    if _fit_accepts("tune"):
        fixed_fit["tune"] = False
    if _fit_accepts("track_schatten"):
        fixed_fit["track_schatten"] = False  # an eigvalsh per epoch that the search never reads

    def run(cand):
        cfg = dict(base)
        for k, v in cand.items():
            if k == "weight_decay_per_entry":
                if "weight_decay" not in explicit:
                    cfg["weight_decay"] = v * fit_idx.numel()
            elif k not in explicit:
                cfg[k] = v
        t = time.perf_counter()
        model = DLRL((m, n), **cfg)
        hist = model.fit(rows=fr, cols=fc, values=fv, val=val, epochs=max_epochs,
                         early_stopping=TUNE_PATIENCE, progress=False, **fixed_fit)
        scores = [h["val_rmse"] for h in hist if "val_rmse" in h and math.isfinite(h["val_rmse"])]
        score = min(scores) if scores else float("inf")
        best_epoch = min(range(len(scores)), key=scores.__getitem__) if scores else len(hist) - 1
        rec = {"params": dict(cand), "val_rmse": score, "best_epoch": best_epoch + 1, "epochs_run": len(hist),
               "seconds": time.perf_counter() - t}
        report["candidates"].append(rec)
        return rec

    unknown = set(start or {}) - set(START)
    if unknown:
        raise ValueError(f"start: expected names among {sorted(START)}, got {sorted(unknown)}")
    start = {**START, **(start or {})}
    report["start"] = dict(start)
    if "weight_decay" in explicit:
        start.pop("weight_decay_per_entry")
    for k in list(start):
        if k in explicit:
            start.pop(k)
    if "rank" in start:
        start["rank"] = min(int(start["rank"]), m, n)
    seen = {}

    def key(c):
        return tuple(sorted(c.items()))

    try:
        best = run(start)
    except FloatingPointError as err:  # a diverging start: record and keep searching
        best = {"params": dict(start), "val_rmse": float("inf"), "best_epoch": 1, "error": str(err)}
        report["candidates"].append(best)
    seen[key(start)] = best
    def attempt(cand):
        """Fit ``cand`` unless seen or out of budget; returns its record or None."""
        if key(cand) in seen:
            return seen[key(cand)]
        if time.perf_counter() - t0 > budget:
            report["skipped"].append(cand)
            return None
        try:
            rec = run(cand)
        except FloatingPointError as err:
            rec = {"params": dict(cand), "val_rmse": float("inf"), "error": str(err)}
            report["candidates"].append(rec)
        seen[key(cand)] = rec
        return rec

    for name, grid_values in GRID:
        if _stage_skipped(name, explicit) or name not in best["params"]:
            continue
        vals = _stage_values(name, grid_values, (m, n))
        cur = best["params"][name]
        if name in ORDERED:
            # a line search along the sorted values: both neighbours of the current value,
            # then onwards in the direction that improved, while it keeps improving
            vals = sorted(set(vals) | {cur})
            i = vals.index(cur)
            step_best = {}
            for d in (-1, 1):
                if 0 <= i + d < len(vals):
                    rec = attempt(dict(best["params"], **{name: vals[i + d]}))
                    if rec is not None:
                        step_best[d] = rec
            improving = [d for d, r in step_best.items() if r["val_rmse"] < best["val_rmse"]]
            if improving:
                d = min(improving, key=lambda d: step_best[d]["val_rmse"])
                best = step_best[d]
                j = i + 2 * d
                while 0 <= j < len(vals):
                    rec = attempt(dict(best["params"], **{name: vals[j]}))
                    if rec is None or not rec["val_rmse"] < best["val_rmse"]:
                        break
                    best = rec
                    j += d
        else:
            for v in vals:
                rec = attempt(dict(best["params"], **{name: v}))
                if rec is not None and rec["val_rmse"] < best["val_rmse"]:
                    best = rec
    overrides = {}
    for k, v in best["params"].items():
        if k == "weight_decay_per_entry":
            overrides["weight_decay"] = float(v) * nnz
        else:
            overrides[k] = v
    fit_kwargs = {}
    if "epochs" not in explicit and math.isfinite(best["val_rmse"]):
        fit_kwargs["epochs"] = int(best["best_epoch"])
    report.update(chosen=dict(best["params"]), chosen_val_rmse=best["val_rmse"],
                  seconds=time.perf_counter() - t0)
    return {"overrides": overrides, "fit_kwargs": fit_kwargs, "report": report}


def fit_tuned(rows, cols, values, shape, seed: int = 0, budget_s: Optional[float] = None, progress: bool = False,
              **given):
    """A DLRL fitted the way the library's defaults fit it: the parameters in ``given``
    (constructor arguments, or ``epochs`` / ``lr`` / ``patience`` for fit) are kept, the
    others are chosen by :func:`choose` on a validation part of these entries unless
    ``tune=False`` is in ``given``; then one fit on all the entries. Returns ``(model, report)``
    (report None when nothing was searched). Used by the Surprise adapter and the benchmark.
    """
    import inspect as _inspect

    from .model import DLRL

    tune = given.pop("tune", True)
    fit_names = set(_inspect.signature(DLRL.fit).parameters) - _ctor_names()
    fit_kw = {k: given.pop(k) for k in list(given) if k in fit_names and k not in _DATA_ARGS}
    ctor = dict(given, seed=seed)
    report = None
    if tune:
        res = choose({**ctor, **fit_kw}, rows, cols, values, shape, set(given) | set(fit_kw) | {"seed"},
                     seed=seed, budget_s=budget_s)
        ctor.update(res["overrides"])
        for k, v in res["fit_kwargs"].items():
            fit_kw.setdefault(k, v)
        report = res["report"]
    model = DLRL(tuple(shape), **ctor)
    if _fit_accepts("tune"):
        fit_kw["tune"] = False
    model.fit(rows=rows, cols=cols, values=values, progress=progress, **fit_kw)
    model.tuning = report
    return model, report
