"""Hyper-parameters chosen on validation data held out of the *training* ratings.

``choose`` is what ``DLRL.fit(..., tune=True)``, ``dlrl.complete``, ``dlrl fit --tune`` and
``fit_tuned`` (the Surprise adapter, bench/bench_accuracy.py) call. It never sees test data:
it holds out a validation part of the training entries it is given (``VAL_FRACTION`` of them,
drawn with ``seed``; on the ratings path, when that part would hold fewer than ``MIN_VAL``
entries, k disjoint parts in turn, pooled), fits candidate models on the rest with early
stopping on the held-out part, and returns the chosen candidate and its best epoch count. The
caller then refits on *all* training entries; ``fit_tuned`` refits ``MEMBERS`` times with
different seeds, averages the predictions (:class:`SeedAverage`) and, where it wins on the same
validation entries, blends them with two neighbourhood models (:class:`Blend`).

The search (``GRID``) is staged, not a full product: each stage varies one parameter around
the best candidate so far — a line search along the sorted values for ``weight_decay`` and
``rank`` (both neighbours of the current value, then onwards while the validation RMSE keeps
falling), every value for ``bias``, ``blocks`` and ``p``; the ratings path (``fit_tuned``) uses
``RATINGS_GRID``, the same without the ``blocks`` stage. Exploration follows point estimates,
but the stage's lowest validation RMSE replaces the best so far only if it wins by more than
``SELECT_Z`` paired standard errors (``better``: per-entry squared errors of the two on the
same validation entries), so a candidate that only looks better on a noisy part is not taken.

Evidence (validation only; bench/results/accuracy_tuning_study.md has the tables and commands).
"Inner" = fit on 90 % of ML-100K u{k}.base, early stopping and RMSE on the other 10 % (seed-0
part), init seeds 0/1/2, start configuration; "outer" = the whole procedure run on 85 % of a
training set and scored on its other 15 % (outer seeds 0/1/2).

- Adam lr 0.005 on the ratings path (``RATINGS_FIT``; the fit's own default is 0.01): inner RMSE,
  u1–u5 mean of the seed means 0.9134 vs 0.9162 at 0.01, seed spread on u1 ± 0.0006 vs ± 0.0097
  (lr 0.01 lands some inits in a worse basin: u1 seed 1 0.928); outer u1 (single fit) 0.9155 vs
  0.9226. It needs ~2× the epochs (``TUNE_MAX_EPOCHS`` 600). lr 0.003 (≤ 900 epochs): u1
  0.9113 ± 0.0004, not worth 1.7× the time; Adam betas (0.9, 0.999) 0.9128 — no gain.
- ``MEMBERS`` = 3 averaged refits: inner u1–u5 mean 0.9102 (average of 3 seeds) vs 0.9134
  (single) at lr 0.005; outer u1 0.9141 vs 0.9155.
- ``weight_decay`` per observed entry (the training loss is a sum over the observed entries;
  the absolute value returned is ``per_entry × nnz`` of the full training set): 2.5e-4 (20 on
  ML-100K) is the start; inner u1: 1.8e-4 0.9128, 2.5e-4 0.9116, 3.5e-4 0.9237 ± 0.0083 (some
  inits' ReLU factors die: at 5e-4 with rank 40, 0.9595 = the bias-only level). A 500×300 set
  with ~11 ratings per user needs 1e-3 (pooled validation 0.7092 vs 0.7192 at 2.5e-4; Surprise
  SVD 0.7085 on the same parts); 0 is for noiseless data (``dlrl.complete`` starts there).
- ``blocks`` 3 (inner u1 at lr 0.005: 0.9116 vs 0.9253 with 5, 0.9215 with 4; 2 blocks 0.9466).
  No blocks stage on the ratings path (``RATINGS_GRID``): 5 blocks won 0 of the 30 searches of
  the accuracy run of 2026-12-01 03:20 and its candidate took budget from the p stage; outer
  validation on syn-500x300's training ratings, outer seeds 0–5, 3 averaged refits: 0.6931
  without the stage vs 0.6967 with it (paired per seed: 4 equal within 0.001, 2 better by
  0.014 and 0.008);
  ``bias`` on (0.922 vs 0.949 on u1); ``rank`` 20 (10: 0.9115 ± 0.0010, 40: 0.9178 ± 0.0094);
  ``p`` 1 (0.5: 0.9121 ± 0.0015); activation ReLU (linear blocks, "none": 0.9222). The p stage
  stays in ``RATINGS_GRID``: where the search picked p 0.5 (outer protocol), ML-100K lost
  (u1 0.9212 vs 0.9174 with p 1, u2 0.9047 vs 0.9023) and syn-500x300 gained (0.7069 vs 0.7207;
  another seed equal); ~0.001 on ML-100K does not buy the 0.005 still missing there.
- Tried on the inner protocol (u1 and u2, init seeds 0/1/2, the mean of the three fits'
  predictions) and not adopted, none better than the start beyond run-to-run noise (the same
  configuration's u2 value moved 0.9119 → 0.9158 between two versions of model.py that are
  equal to rounding): lr 0.003 / 0.002, rank 10 / 30, rank 10 or 40 with decay 3e-4, decay
  2e-4 / 3e-4, p 0.5, p per block (1, 1, 0.5) / (0.5, 1, 1), 4 blocks, eta0 0.5 / 0.02, init
  "scaled" / "published", normalize "frobenius" / "trace", refresh "carry", scale_init off,
  Adam betas (0.5, 0.9), plateau patience 2, early-stopping patience 20, averaging members of
  different configurations; a separate Adam decay for the user / item biases (×0.25 … ×4 the
  factors'; u1–u5 at ×0.5: 0.9110 vs 0.9113) or none on μ (0.9108). A weight-decay line search
  that looks two steps ahead when both neighbours are worse: outer syn-500x300 0.6962 vs 0.6966.
- Pooled parts (``MIN_VAL`` 2000): a 10 % part of 600 ratings has a standard error of about
  0.02 in RMSE, more than the differences between candidates; 4 pooled parts halve it.

Blend (``BLEND``, ``_blend_weights``): the averaged fits are blended with an item–item and a
user–user neighbourhood model with baselines (``dlrl.neighbors``; Koren's KNNBaseline with
pearson-baseline similarities, k = 40, shrinkage 100 — the textbook settings, not tuned here),
weights by least squares with an intercept on the search's validation entries (the chosen
candidate's validation predictions beside the partners fitted on each fold's fit part), taken
only when the blend wins out of sample (weights fitted on one half of those entries, scored on
the other, and back) by the one-standard-error rule. Why: the neighbourhood models use what a
rank-20 product smooths away (a user's own ratings of the most similar items), so their errors
are only partly correlated with DLRL's. Outer validation (training ratings only: the whole
procedure on 85 % of a training set, RMSE on its other 15 %, outer seed 0;
accuracy_tuning_study/outer_blend.py): blended vs the DLRL part alone, ML-100K u1 0.9141 vs
0.9213, u2 0.9114 vs 0.9181, u3 0.9125 vs 0.9197, u4 0.9029 vs 0.9090, u5 0.9019 vs 0.9069,
syn-500x300 0.6798 vs 0.6878, syn-200x200 0.6178 vs 0.6181 (the blend taken in all 7). The
decision is made per rating set on its validation entries, never on test ratings; the committed accuracy run (bench/results/accuracy.md) lists,
for every row, that decision, the validation RMSE of the DLRL part and of the blend (out of
sample), the weights, and the DLRL part's own test RMSE beside the default's.

Budget: candidates are fitted one after another (each for at most ``TUNE_MAX_EPOCHS`` epochs,
early stopping after ``TUNE_PATIENCE`` epochs without a better validation RMSE); once
``budget_s`` seconds (``DEFAULT_BUDGET_S`` = 30 if None) have passed no new candidate is
started (the report lists the skipped ones). With the faster epoch of the training-step issue
a ML-100K candidate takes ~2–3 s on one core of this 2-core machine (shared): the whole ratings
grid (7–8 candidates) runs in 13–22 s, plus 3 refits (accuracy run of 2026-12-01 06:17). The
budget is wall-clock, so on a loaded machine a later stage can be skipped (the search is then
not reproducible across machine loads; the report lists what was skipped).
"""
from __future__ import annotations

import inspect
import math
import time
from typing import Optional

import torch

#: share of the training entries held out for validation (one part per fold)
VAL_FRACTION = 0.1
#: the ratings path (``fit_tuned``; ``choose(min_val=...)``): a validation part smaller than
#: this many entries is too noisy alone, so disjoint parts of VAL_FRACTION each are held out in
#: turn (k-fold, at most MAX_FOLDS) and pooled. ``choose``'s own default is one part (min_val=0:
#: ``dlrl.complete`` and ``DLRL.fit`` keep their cost)
MIN_VAL = 2000
MAX_FOLDS = 5
#: fewer observed entries than this: no search (the validation part would be a handful of entries)
MIN_ENTRIES = 50
#: each candidate's fit: at most this many epochs, early stopping after TUNE_PATIENCE without progress
TUNE_MAX_EPOCHS = 600
TUNE_PATIENCE = 10
#: seconds after which no new candidate is started when the caller gives no budget
DEFAULT_BUDGET_S = 30.0
#: a candidate replaces the best so far only if its pooled validation MSE is lower by more than
#: SELECT_Z paired standard errors (per-entry squared errors of the two, same entries)
SELECT_Z = 1.0
#: fit keywords the ratings path (``fit_tuned``, the benchmark) uses for the candidates and the
#: refit unless the caller gives them: Adam lr 0.005 (the fit's 0.01 lands some seeds in a
#: worse basin; see the module doc)
RATINGS_FIT = {"lr": 0.005}
#: ``fit_tuned``: fits averaged in the returned predictor (seeds ``seed + 1000·j``)
MEMBERS = 3
#: ``fit_tuned``: blend the averaged fits with the neighbourhood models of ``dlrl.neighbors``
#: (item–item and user–user, where the matrix fits them) when the blend wins on the
#: validation entries of the search (``_blend_weights``; module doc)
BLEND = True

#: the staged grid: (parameter, values). weight decay is per observed entry.
GRID = (
    ("weight_decay_per_entry", (0.0, 6.25e-5, 1.25e-4, 2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3)),
    ("bias", (True, False)),
    ("rank", (10, 20, 40)),
    ("blocks", (3, 5)),
    ("p", (0.5, 1.0)),
)
#: the ratings path's grid (``fit_tuned``; ``choose(grid=...)``): no blocks stage, 3 blocks (the
#: start) unless the caller fixes them — 5 blocks never won a ratings search (0 of 30 in the
#: committed accuracy run; inner u1 0.9253 vs 0.9116) and its candidate used budget that the
#: p stage then lacked (outer validation on syn-500x300, module doc)
RATINGS_GRID = tuple(g for g in GRID if g[0] != "blocks")
#: stages searched as a line search along their sorted values (the others: every value)
ORDERED = ("weight_decay_per_entry", "rank")
#: the starting point of the search (the first candidate), for names not fixed by the caller
START = {"blocks": 3, "weight_decay_per_entry": 2.5e-4, "bias": True, "rank": 20, "p": 1.0}


def _split(n: int, seed: int, fraction: float):
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=gen)
    n_val = min(max(int(round(fraction * n)), 1), n - 1)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def _folds(n: int, seed: int, fraction: float = VAL_FRACTION, min_val: Optional[int] = None):
    """[(fit_idx, val_idx), ...]: one split when its validation part has at least ``min_val``
    (default ``MIN_VAL``) entries, else k disjoint validation parts of the same size (one
    permutation, drawn with ``seed``; the first is ``_split``'s) with
    k = min(MAX_FOLDS, ⌈min_val / part⌉)."""
    min_val = MIN_VAL if min_val is None else int(min_val)
    n_val = min(max(int(round(fraction * n)), 1), n - 1)
    k = 1 if n_val >= min_val else min(MAX_FOLDS, math.ceil(min_val / n_val), max(n // n_val, 1))
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=gen)
    out = []
    for j in range(k):
        val = perm[j * n_val:(j + 1) * n_val]
        fit = torch.cat([perm[:j * n_val], perm[(j + 1) * n_val:]])
        out.append((fit.sort().values, val.sort().values))
    return out


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


def _as_tensors(rows, cols, values, shape=None):
    """rows, cols (integer ids, inside ``shape`` when given: never truncated) and values (finite)."""
    from .model import _index_tensor

    m, n = (2 ** 62, 2 ** 62) if shape is None else shape
    rows, cols = _index_tensor(rows, "rows", m), _index_tensor(cols, "cols", n)
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


def better(cand: dict, best: dict, z: float = SELECT_Z) -> bool:
    """True when ``cand``'s validation error is lower than ``best``'s by more than ``z`` paired
    standard errors: d = per-entry squared error of cand − of best (same validation entries),
    mean(d) + z·sd(d)/√N < 0. A non-finite best loses to any finite candidate."""
    if not math.isfinite(cand.get("val_rmse", math.inf)):
        return False
    if not math.isfinite(best.get("val_rmse", math.inf)):
        return True
    a, b = cand.get("_sq"), best.get("_sq")
    if a is None or b is None:
        return cand["val_rmse"] < best["val_rmse"]
    d = a - b
    se = float(d.std()) / math.sqrt(d.numel()) if d.numel() > 1 else 0.0
    return float(d.mean()) + z * se < 0


def choose(config: dict, rows, cols, values, shape, explicit: set, seed: int = 0,
           budget_s: Optional[float] = None, *, start: Optional[dict] = None,
           fit_defaults: Optional[dict] = None, z: float = SELECT_Z, min_val: int = 0,
           grid: Optional[tuple] = None) -> dict:
    """Pick DLRL hyper-parameters on validation parts of the given (training) entries.

    config: the constructor arguments the model was built with (``shape`` may be included; it
        is taken from ``shape``); fit keywords in it (lr, patience, ...) are used by every
        candidate, ``epochs`` caps them. explicit: names the user set (constructor or fit
        keywords); they are never varied nor returned. seed: draws the validation parts (the
        same seed gives the same parts and the same choice). budget_s: no new candidate is
        started after this many seconds (``DEFAULT_BUDGET_S`` if None). start: entries
        replacing ``START``'s (the first candidate; e.g. ``dlrl.complete`` starts without
        weight decay). fit_defaults: fit keywords (e.g. ``RATINGS_FIT``) the candidates use
        when ``config`` has none; returned in ``fit_kwargs`` for the refit. z: the selection
        rule's number of paired standard errors (0: plain lowest validation RMSE). min_val:
        pool k-fold validation parts when one part would hold fewer entries (``_folds``; 0:
        always one part; ``fit_tuned`` passes ``MIN_VAL``). grid: the stages, ``(name, values)``
        pairs in search order (default ``GRID``; ``fit_tuned`` passes ``RATINGS_GRID``).
    Returns ``{"overrides": {constructor args}, "fit_kwargs": {"epochs": ..., ...}, "report": {...}}``.
    """
    from .model import DLRL

    if not isinstance(config, dict):
        raise TypeError(f"config: expected a dict of DLRL constructor arguments, got {type(config).__name__}")
    explicit = set(explicit or ())
    try:
        m, n = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape: expected (n_rows, n_cols), got {shape!r}") from None
    rows, cols, values = _as_tensors(rows, cols, values, (m, n))
    budget = DEFAULT_BUDGET_S if budget_s is None else float(budget_s)
    if not budget > 0:
        raise ValueError(f"budget_s: expected a positive number of seconds or None, got {budget_s!r}")
    z = float(z)
    if not (math.isfinite(z) and z >= 0):
        raise ValueError(f"z: expected a finite number >= 0, got {z!r}")
    if fit_defaults is not None and not isinstance(fit_defaults, dict):
        raise TypeError(f"fit_defaults: expected a dict of fit keywords, got {type(fit_defaults).__name__}")
    grid = GRID if grid is None else grid
    try:
        grid = tuple((str(g[0]), tuple(g[1])) for g in grid)
    except (TypeError, IndexError):
        raise ValueError(f"grid: expected (name, values) pairs, got {grid!r}") from None
    if not grid or any(len(g[1]) == 0 or g[0] not in START for g in grid):
        raise ValueError(f"grid: expected (name, non-empty values) pairs with names among {sorted(START)}, got {grid!r}")
    nnz = values.numel()
    report = {"val_fraction": VAL_FRACTION, "seed": int(seed), "budget_s": budget, "grid": [list(g) for g in grid],
              "start": dict(START), "max_epochs": TUNE_MAX_EPOCHS, "patience": TUNE_PATIENCE, "rule_z": z,
              "explicit": sorted(explicit), "candidates": [], "skipped": []}
    t0 = time.perf_counter()
    if nnz < MIN_ENTRIES:
        report.update(chosen=None, reason=f"only {nnz} observed entries (< {MIN_ENTRIES}): nothing held out",
                      seconds=time.perf_counter() - t0)
        return {"overrides": {}, "fit_kwargs": {}, "report": report}

    if isinstance(min_val, bool) or not isinstance(min_val, int) or min_val < 0:
        raise ValueError(f"min_val: expected an integer >= 0 (validation entries), got {min_val!r}")
    folds = _folds(nnz, seed, min_val=min_val)
    report["folds"] = len(folds)
    report["val_entries"] = int(sum(v.numel() for _, v in folds))
    parts = [((rows[f], cols[f], values[f]), (rows[v], cols[v], values[v])) for f, v in folds]
    n_fit = folds[0][0].numel()
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
    chosen_fit = {}
    for k, v in (fit_defaults or {}).items():
        if k in _DATA_ARGS or k == "epochs" or not _fit_accepts(k):
            raise ValueError(f"fit_defaults: expected DLRL.fit keywords other than epochs / data, got {k!r}")
        if k not in fixed_fit and k not in explicit:
            fixed_fit[k] = chosen_fit[k] = v
    report["fit_defaults"] = dict(chosen_fit)
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
                    cfg["weight_decay"] = v * n_fit
            elif k not in explicit:
                cfg[k] = v
        t = time.perf_counter()
        sq, preds, best_epochs, runs = [], [], [], []
        for (fr, fc, fv), val in parts:
            model = DLRL((m, n), **cfg)
            hist = model.fit(rows=fr, cols=fc, values=fv, val=val, epochs=max_epochs,
                             early_stopping=TUNE_PATIENCE, progress=False, **fixed_fit)
            scores = [h["val_rmse"] for h in hist if "val_rmse" in h and math.isfinite(h["val_rmse"])]
            if not scores:
                raise FloatingPointError("no finite validation RMSE")
            best_epochs.append(min(range(len(scores)), key=scores.__getitem__) + 1)
            runs.append(len(hist))
            # the model is the best-validation state (early stopping restores it)
            pred = model.predict(val[0], val[1]).double()
            err = pred - val[2].double()
            sq.append(err * err)
            preds.append(pred)
        sq = torch.cat(sq)
        rec = {"params": dict(cand), "val_rmse": math.sqrt(float(sq.mean())),
               "best_epoch": int(sorted(best_epochs)[len(best_epochs) // 2]), "epochs_run": runs,
               "seconds": time.perf_counter() - t, "_sq": sq, "_pred": torch.cat(preds).cpu()}
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

    def attempt(cand, first=False):
        """Fit ``cand`` unless seen or out of budget; returns its record or None."""
        if key(cand) in seen:
            return seen[key(cand)]
        if not first and time.perf_counter() - t0 > budget:
            report["skipped"].append(cand)
            return None
        try:
            rec = run(cand)
        except FloatingPointError as err:  # a diverging candidate: record it and keep searching
            rec = {"params": dict(cand), "val_rmse": float("inf"), "best_epoch": 1, "error": str(err)}
            report["candidates"].append(rec)
        seen[key(cand)] = rec
        return rec

    best = attempt(start, first=True)
    for name, grid_values in grid:
        if _stage_skipped(name, explicit) or name not in best["params"]:
            continue
        vals = _stage_values(name, grid_values, (m, n))
        cur = best["params"][name]
        tried = []
        if name in ORDERED:
            # a line search along the sorted values: both neighbours of the current value, then
            # onwards in the direction of the lower validation RMSE while it keeps falling
            vals = sorted(set(vals) | {cur})
            i = vals.index(cur)
            step = {}
            for d in (-1, 1):
                if 0 <= i + d < len(vals):
                    rec = attempt(dict(best["params"], **{name: vals[i + d]}))
                    if rec is not None:
                        step[d] = rec
                        tried.append(rec)
            lower = [d for d, r in step.items() if r["val_rmse"] < best["val_rmse"]]
            if lower:
                d = min(lower, key=lambda d: step[d]["val_rmse"])
                last, j = step[d], i + 2 * d
                while 0 <= j < len(vals):
                    rec = attempt(dict(best["params"], **{name: vals[j]}))
                    if rec is None:
                        break
                    tried.append(rec)
                    if not rec["val_rmse"] < last["val_rmse"]:
                        break
                    last, j = rec, j + d
        else:
            for v in vals:
                rec = attempt(dict(best["params"], **{name: v}))
                if rec is not None:
                    tried.append(rec)
        # the stage's lowest validation RMSE replaces the best so far only if it wins by the
        # rule (more than z paired standard errors): exploration by point estimates, choice
        # robust to validation noise
        tried = [r for r in tried if r is not best and math.isfinite(r["val_rmse"])]
        if tried:
            win = min(tried, key=lambda r: r["val_rmse"])
            if better(win, best, z):
                best = win
    chosen_pred = best.get("_pred")
    for rec in report["candidates"]:
        rec.pop("_sq", None)
        rec.pop("_pred", None)
    overrides = {}
    for k, v in best["params"].items():
        if k == "weight_decay_per_entry":
            overrides["weight_decay"] = float(v) * nnz
        else:
            overrides[k] = v
    fit_kwargs = dict(chosen_fit)
    if "epochs" not in explicit and math.isfinite(best["val_rmse"]):
        fit_kwargs["epochs"] = int(best["best_epoch"])
    report.update(chosen=dict(best["params"]), chosen_val_rmse=best["val_rmse"],
                  seconds=time.perf_counter() - t0)
    # the chosen candidate's validation predictions, in the order of the folds' validation
    # entries (for a blend fitted on the same entries: ``fit_tuned``)
    return {"overrides": overrides, "fit_kwargs": fit_kwargs, "report": report,
            "validation": {"folds": folds, "pred": chosen_pred}}


class _LeadFit:
    """``config``, ``history`` and ``stop_reason`` of a combined predictor are its first DLRL
    fit's (``members[0]``)."""

    @property
    def config(self):
        return self.members[0].config

    @property
    def history(self):
        return self.members[0].history

    @property
    def stop_reason(self):
        return self.members[0].stop_reason


class SeedAverage(_LeadFit):
    """The mean prediction of DLRL fits that differ only in their seed (``fit_tuned``).

    ``predict`` / ``complete`` average the members' (clipped) predictions; ``members`` holds
    the fitted :class:`dlrl.DLRL` models; ``config``, ``history`` and ``stop_reason`` are the
    first member's, ``fit_seconds`` the members' total."""

    def __init__(self, members):
        members = list(members)
        if not members:
            raise ValueError("members: expected at least one fitted DLRL, got none")
        self.members = members
        self.tuning = None

    def __len__(self):
        return len(self.members)

    @property
    def fit_seconds(self):
        return sum(float(getattr(mm, "fit_seconds", 0.0)) for mm in self.members)

    @torch.no_grad()
    def predict(self, rows, cols):
        out = self.members[0].predict(rows, cols).double()
        for mm in self.members[1:]:
            out = out + mm.predict(rows, cols).double()
        return (out / len(self.members)).to(self.members[0].dtype)

    @torch.no_grad()
    def complete(self, *args, **kwargs):
        out = self.members[0].complete(*args, **kwargs).double()
        for mm in self.members[1:]:
            out = out + mm.complete(*args, **kwargs).double()
        return (out / len(self.members)).to(self.members[0].dtype)


class Blend(_LeadFit):
    """``w_0·DLRL + w_1·item-kNN + w_2·user-kNN + b``, clipped to ``clip``: the predictor
    ``fit_tuned`` returns when the blend wins on validation entries (``_blend_weights``).
    ``model`` is the DLRL part (:class:`dlrl.DLRL` or :class:`SeedAverage`); ``partners`` the
    fitted ``dlrl.neighbors`` models; ``weights`` (float64, len(partners) + 2). ``members``,
    ``config``, ``history``, ``stop_reason`` and ``fit_seconds`` are the DLRL part's."""

    def __init__(self, model, partners, weights, clip=None):
        self.model = model
        self.partners = list(partners)
        self.weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        if self.weights.numel() != len(self.partners) + 2:
            raise ValueError(f"weights: expected {len(self.partners) + 2} numbers (DLRL, each partner, the "
                             f"intercept), got {self.weights.numel()}")
        self.clip = clip
        self.tuning = None

    @property
    def members(self):
        return getattr(self.model, "members", [self.model])

    @property
    def fit_seconds(self):
        return self.model.fit_seconds

    def _combine(self, d, partner_out):
        """w_0·d + Σ w_k·partner_k + b, clipped, on d's device and in d's dtype (one float64
        accumulator: at m×n sizes the temporaries of a plain sum would double the memory)."""
        w = self.weights.tolist()
        out = d.double().mul_(w[0]).add_(w[-1])
        for wk, p in zip(w[1:-1], self.partners):
            out.add_(partner_out(p).to(out.device), alpha=wk)
        if self.clip is not None:
            out.clamp_(*self.clip)
        return out.to(d.dtype)

    @torch.no_grad()
    def predict(self, rows, cols):
        d = self.model.predict(rows, cols)
        rows, cols = torch.as_tensor(rows).cpu(), torch.as_tensor(cols).cpu()  # the partners are CPU models
        return self._combine(d, lambda p: p.predict(rows, cols))

    @torch.no_grad()
    def complete(self, *args, **kwargs):
        return self._combine(self.model.complete(*args, **kwargs), lambda p: p.complete())


def _blend_weights(res, rows, cols, values, shape, clip, seed, z: float = SELECT_Z):
    """The blend of DLRL with the neighbourhood models, fitted on the search's validation
    entries: each fold's partners are fitted on its fit part and predict its validation part,
    beside the chosen candidate's validation predictions (``choose``'s ``validation``); the
    weights are least squares with an intercept. The blend is taken only if it wins by the
    selection rule (``better``, ``z`` paired standard errors) with its errors measured out of
    sample: weights fitted on one random half of the validation entries, scored on the other,
    and back. Returns (weights or None, report entry).

    Known biases, accepted: the DLRL validation predictions are one fit's, early-stopped on those
    same entries (slightly optimistic), while the weights are then applied to the average of
    ``MEMBERS`` fits, whose predictions vary less — so DLRL's weight is, if anything, low. The
    partners' fits are not counted against the search's ``budget_s`` (≈ 1–3 s on ML-100K; a few
    seconds per fold at MAX_ITEMS).
    """
    from .neighbors import PARTNERS, fits

    val = res.get("validation") or {}
    pred = val.get("pred")
    if pred is None:
        return None, {"used": False, "reason": "no validation predictions (nothing was searched)"}
    if not fits(shape):
        return None, {"used": False, "reason": f"{shape[0]}×{shape[1]} is beyond the dense neighbourhood models"}
    rows, cols, values = rows.cpu(), cols.cpu(), values.cpu()
    flat = rows * int(shape[1]) + cols
    if torch.unique(flat).numel() != flat.numel():
        return None, {"used": False, "reason": "duplicate (row, col) entries: the neighbourhood models need one "
                                               "rating per pair"}
    t0 = time.perf_counter()
    feats, ys = [], []
    for f, v in val["folds"]:
        feats.append(torch.stack([cls(clip=clip).fit(rows[f], cols[f], values[f], shape).predict(rows[v], cols[v])
                                  for cls in PARTNERS], 1))
        ys.append(values[v].double())
    y = torch.cat(ys)
    X = torch.cat([pred.double()[:, None], torch.cat(feats), torch.ones_like(y)[:, None]], 1)

    def lstsq(idx):
        return torch.linalg.lstsq(X[idx], y[idx, None]).solution[:, 0]

    def predict(w, idx):
        out = X[idx] @ w
        return out.clamp(*clip) if clip is not None else out

    gen = torch.Generator().manual_seed(int(seed) + 7)
    perm = torch.randperm(y.numel(), generator=gen)
    halves = (perm[:y.numel() // 2], perm[y.numel() // 2:])
    sq = torch.empty_like(y)
    for a, b in (halves, halves[::-1]):
        sq[b] = (predict(lstsq(a), b) - y[b]) ** 2
    base_sq = (X[:, 0] - y) ** 2
    cand = {"val_rmse": math.sqrt(float(sq.mean())), "_sq": sq}
    base = {"val_rmse": math.sqrt(float(base_sq.mean())), "_sq": base_sq}
    w = lstsq(torch.arange(y.numel()))
    used = better(cand, base, z)
    info = {"used": bool(used), "partners": [cls.__name__ for cls in PARTNERS], "weights": w.tolist(),
            "val_rmse_dlrl": base["val_rmse"], "val_rmse_blend_out_of_sample": cand["val_rmse"],
            "val_entries": int(y.numel()), "seconds": time.perf_counter() - t0}
    return (w if used else None), info


def fit_tuned(rows, cols, values, shape, seed: int = 0, budget_s: Optional[float] = None, progress: bool = False,
              members: Optional[int] = None, blend: Optional[bool] = None, **given):
    """A DLRL predictor fitted the way the library's defaults fit ratings: the parameters in
    ``given`` (constructor arguments, or ``epochs`` / ``lr`` / ``patience`` for fit) are kept,
    the others are chosen by :func:`choose` (with ``RATINGS_FIT``) on validation parts of
    these entries unless ``tune=False`` is in ``given``; then ``members`` (default ``MEMBERS``)
    fits on all the entries with seeds ``seed + 1000·j``, averaged (:class:`SeedAverage`; one
    member: the plain :class:`dlrl.DLRL`). ``blend`` (default ``BLEND``; only after a search):
    when the rating matrix fits ``dlrl.neighbors`` and the blend wins on the search's
    validation entries (``_blend_weights``), the averaged fits are blended with the item–item
    and user–user neighbourhood models refitted on all the entries (:class:`Blend`; the
    report's ``blend`` entry says what was decided and why). Returns ``(model, report)``
    (report None when nothing was searched). Used by the Surprise adapter and the benchmark.
    """
    from .model import DLRL

    members = MEMBERS if members is None else members
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise ValueError(f"members: expected a positive integer (fits averaged), got {members!r}")
    blend = BLEND if blend is None else blend
    if not isinstance(blend, bool):
        raise ValueError(f"blend: expected True, False or None (the default, {BLEND}), got {blend!r}")
    tune = given.pop("tune", True)
    fit_names = set(inspect.signature(DLRL.fit).parameters) - _ctor_names()
    fit_kw = {k: given.pop(k) for k in list(given) if k in fit_names and k not in _DATA_ARGS}
    ctor = dict(given, seed=seed)
    report = None
    if tune:
        res = choose({**ctor, **fit_kw}, rows, cols, values, shape, set(given) | set(fit_kw) | {"seed"},
                     seed=seed, budget_s=budget_s, fit_defaults=RATINGS_FIT, min_val=MIN_VAL, grid=RATINGS_GRID)
        ctor.update(res["overrides"])
        for k, v in res["fit_kwargs"].items():
            fit_kw.setdefault(k, v)
        report = res["report"]
    if _fit_accepts("tune"):
        fit_kw["tune"] = False
    fitted = []
    for j in range(members):
        model = DLRL(tuple(shape), **dict(ctor, seed=int(seed) + 1000 * j))
        model.fit(rows=rows, cols=cols, values=values, progress=progress, **fit_kw)
        model.tuning = report
        fitted.append(model)
    model = fitted[0] if members == 1 else SeedAverage(fitted)
    if report is not None:
        report["members"] = members
        report["fit_kwargs_used"] = {k: v for k, v in fit_kw.items() if k != "tune"}
        report["blend"] = {"used": False, "reason": "blend=False"}
        if blend:
            r, c, v = _as_tensors(rows, cols, values, tuple(shape))
            clip = ctor.get("clip")
            w, report["blend"] = _blend_weights(res, r, c, v, tuple(shape), clip, seed)
            if w is not None:
                from .neighbors import PARTNERS

                model = Blend(model, [cls(clip=clip).fit(r, c, v, tuple(shape)) for cls in PARTNERS], w, clip)
    model.tuning = report
    return model, report
