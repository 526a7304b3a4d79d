"""One call that fills the missing entries of a matrix (the fancyimpute / scikit-learn habit)."""
from __future__ import annotations

import inspect

import numpy as np

# torch and the model are imported inside the functions: ``dlrl/__init__`` imports this module
# eagerly (so ``dlrl.complete`` is the function, never this submodule) and ``import dlrl`` must
# stay free of torch (``dlrl --help``)

#: the keywords ``complete`` itself takes (besides X and mask)
_OWN = ("rank", "blocks", "p", "mode", "epochs", "bias", "weight_decay", "patience", "activation", "tune",
        "budget_s", "keep_observed", "clip", "seed", "device", "dtype", "progress", "return_model")
#: fit() keywords passed through
_FIT = ("lr", "betas", "early_stopping", "val", "lr_factor", "min_lr_ratio", "callback")
#: parameters the validation search varies when the user fixes none of them (``tune="auto"``)
_TUNABLE = ("rank", "bias", "p", "weight_decay")

#: defaults when nothing is tuned (a ``tune=False`` call, or too few entries to hold any out):
#: measured on synthetic low-rank matrices and images mapped to [0, 1] (module doc)
DEFAULT_RANK = 10
DEFAULT_BLOCKS = 5
DEFAULT_EPOCHS = 600
DEFAULT_PATIENCE = 30


def _model_params():
    from .model import DLRL

    sig = inspect.signature(DLRL.__init__).parameters
    return [k for k, v in sig.items() if k not in ("self", "shape") and v.kind != inspect.Parameter.VAR_KEYWORD]


def _valid_names():
    return sorted(set(_OWN) | set(_FIT) | set(_model_params()))


def complete(X, mask=None, rank=None, blocks=None, p=None, mode="paper", epochs=None, bias=None,
             weight_decay=None, patience=None, activation=None, tune="auto", budget_s=None,
             keep_observed=True, clip=True, seed=0, device=None, dtype=None, progress=False,
             return_model=False, **options):
    """``X`` with its missing entries filled by a DLRL model.

    X: an m×n array or tensor; missing entries are NaN, or the False entries of ``mask``.
    The observed values are mapped affinely onto [0, 1] before training (lowest observed
    value → 0, highest → 1) and back afterwards; ``clip`` keeps the result inside the
    observed range; ``keep_observed`` returns the observed entries unchanged.

    Choices (``None`` = chosen here):
    - ``tune="auto"`` (default): when none of rank / bias / p / weight_decay is given, they
      are chosen by :func:`dlrl.tuning.choose` on a validation part of the *observed*
      entries (never on anything else), and the model is refitted on all of them.
      ``tune=True`` searches the ones not given; ``tune=False`` uses the defaults below.
    - ``activation``: ``"none"`` when the observed values have both signs (a ReLU product
      cannot represent negative entries of a signed low-rank matrix), else ``"relu"`` (the
      paper's); passed only if this DLRL accepts ``activation``.
    - untuned defaults: rank min(10, m, n), 5 blocks (fewer for tiny matrices: rank is
      capped at min(m, n)), p 1, biases on, no weight decay, up to 600 epochs with plateau
      patience 30.
    Other keywords go to :class:`dlrl.DLRL` (``refresh``, ``loss``, ...) or, for ``lr``,
    ``betas``, ``early_stopping``, ``val``, to ``fit``; an unknown keyword is an error that
    lists the valid names.
    Returns the completed matrix with X's type (numpy in, numpy out), and the model too when
    ``return_model`` (its ``tuning`` attribute holds the search's report, if any).
    """
    import torch

    from .model import DLRL

    model_names = _model_params()
    unknown = [k for k in options if k not in _FIT and k not in model_names]
    if unknown:
        raise TypeError(f"complete: unknown keyword(s) {sorted(unknown)}; valid names are {_valid_names()}")
    if tune not in ("auto", True, False):
        raise ValueError(f"tune: expected 'auto', True or False, got {tune!r}")
    was_numpy = not isinstance(X, torch.Tensor)
    try:
        Xt = torch.as_tensor(np.asarray(X, dtype=float) if was_numpy else X)
    except (TypeError, ValueError) as err:
        raise TypeError(f"X: expected a 2-D numeric array or tensor, got {type(X).__name__} ({err})") from None
    if not Xt.is_floating_point():
        Xt = Xt.double()
    if Xt.dim() != 2:
        raise ValueError(f"X: expected a 2-D matrix, got shape {tuple(Xt.shape)}")
    if mask is None:
        obs = ~torch.isnan(Xt)
    else:
        obs = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).bool().to(Xt.device)
        if obs.shape != Xt.shape:
            raise ValueError(f"mask: expected shape {tuple(Xt.shape)} (same as X), got {tuple(obs.shape)}")
        if torch.isnan(Xt[obs]).any():
            raise ValueError("X: expected no NaN at observed entries (mask True)")
    if not bool(obs.any()):
        raise ValueError("X: expected at least one observed entry, got none")
    vals = Xt[obs]
    if not bool(torch.isfinite(vals).all()):
        raise ValueError("X: expected finite observed values, got inf")
    m, n = Xt.shape
    for name, v in (("rank", rank), ("blocks", blocks), ("epochs", epochs), ("patience", patience)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
            raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    if rank is not None and rank > min(m, n):
        raise ValueError(f"rank: expected at most min(m, n) = {min(m, n)} for a {m}×{n} matrix, got {rank}")
    lo, hi = float(vals.min()), float(vals.max())
    span = hi - lo if hi > lo else 1.0
    rows, cols = obs.nonzero(as_tuple=True)
    target = (vals.double() - lo) / span
    fit_kw = {k: options.pop(k) for k in _FIT if k in options}
    if dtype is None:
        dtype = "float64" if Xt.dtype == torch.float64 else "float32"

    given = {k: v for k, v in (("rank", rank), ("bias", bias), ("p", p), ("weight_decay", weight_decay))
             if v is not None}
    cfg = dict(rank=min(DEFAULT_RANK, m, n) if rank is None else int(rank),
               blocks=DEFAULT_BLOCKS if blocks is None else int(blocks), p=1.0 if p is None else p, mode=mode,
               bias=True if bias is None else bool(bias), seed=seed, dtype=dtype, device=device, **options)
    if "activation" in model_names:
        cfg["activation"] = activation if activation is not None else ("none" if lo < 0 < hi else "relu")
    elif activation is not None:
        raise ValueError("activation: this DLRL has no activation choice (ReLU blocks only)")
    wd = 0.0 if weight_decay is None else float(weight_decay)
    epochs = DEFAULT_EPOCHS if epochs is None else int(epochs)
    patience = DEFAULT_PATIENCE if patience is None else int(patience)
    search = (tune is True) or (tune == "auto" and not given)
    report = None
    if search:
        from .tuning import choose

        explicit = set(given) | {k for k in options} | {k for k in fit_kw}
        if blocks is not None:
            explicit.add("blocks")
        tcfg = dict(cfg)
        tcfg.pop("device", None)
        tcfg.update(patience=patience, epochs=epochs)
        if "weight_decay" in given:
            tcfg["weight_decay"] = wd
        # dense matrices (images, synthetic low-rank) start without weight decay: noiseless or
        # nearly so, they lose accuracy to any shrinkage (the ratings' start has 2.5e-4 per entry);
        # and with DEFAULT_BLOCKS (5) blocks, not the ratings' 3: on the demo's exactly rank-5
        # 100×100 matrix (50 % observed) 3 blocks stall at validation RMSE 0.105 from the first
        # epoch on, whatever the weight decay, while 5 blocks reach 0.0014 (seed 0)
        res = choose(tcfg, rows, cols, target, (m, n), explicit, seed=seed, budget_s=budget_s,
                     start={"weight_decay_per_entry": 0.0, "blocks": DEFAULT_BLOCKS})
        report = res["report"]
        for k, v in res["overrides"].items():
            if k == "weight_decay":
                wd = float(v)
            else:
                cfg[k] = v
        epochs = int(res["fit_kwargs"].get("epochs", epochs))
    model = DLRL((m, n), **cfg)
    fit_kw.update(weight_decay=wd, patience=patience)
    if "tune" in inspect.signature(model.fit).parameters:
        fit_kw["tune"] = False
    model.fit(rows=rows, cols=cols, values=target.to(torch.float64 if dtype == "float64" else torch.float32),
              epochs=epochs, progress=progress, **fit_kw)
    model.tuning = report
    P = model.complete().to(Xt.device, torch.float64) * span + lo
    if clip:
        P = P.clamp(lo, hi)
    out = P.to(Xt.dtype)
    if keep_observed:
        out = torch.where(obs, Xt, out)
    if was_numpy:
        out = out.cpu().numpy()
    return (out, model) if return_model else out
