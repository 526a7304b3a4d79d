"""The DLRL model (paper §III-B, Algorithm 1; SPEC §2–4), built on ``dlrl_kernels``.

This module orchestrates math only: every heavy op (residuals, chain gradients, Gram,
fractional powers, pseudo-inverses, spectral norms) comes from ``dlrl_kernels`` and is
dispatched there to Triton / CUDA / the reference by device.

One forward pass, block k = 1..I (factors X_k, learnable W_k and η):
    ∇_k = A_kᵀ E B_kᵀ,  E = P_Ω(X_1⋯X_I − X)                    (chain_grad)
    L_k = max(σ_max(A_k)² σ_max(B_k)², ε)                         (spectral_norm_sq)
    Y_k = X_k − ∇_k/(η L_k)                                      (paper: descent)
    X̂_k = ReLU(W_k S_k^{(2−p_k)/2}),  S_k = Y_kᵀY_k (short side)  (spd_power)
    J = ½‖P_Ω(X̂_1⋯X̂_I − X)‖²                                    (masked_loss[_sparse])

Modes
- ``"published"`` reproduces the reference code (SPEC §4): step *up* the loss
  (Y = X_k + ∇_k/(ηL)), spectral norms clamped at 1e-4 before squaring, orientation
  "transpose when rows < 2·cols", the power taken *elementwise* with its shift,
  G = ½ (S + st)^{∘(p−2)/2}, st = 0.002·max|diag S|, then T = ½ W·pinv(G) (SVD pinv), and
  the published init / optimiser / schedule / stopping.
- ``"paper"`` (default): the equations as meant — descent step, true matrix power, short
  side. Eq. 23's ½ W G⁺ equals W S^{(2−p)/2} (SPEC §2). Trained as printed it does not work
  (SPEC §2: RMSE 1.9–2.3, the factor scales run away), so three choices are made on purpose,
  each measured on ML-100K (published split, 300 epochs, seed 0):
  1. ``normalize="spectral"``: S^a is divided by its largest eigenvalue, a scalar that W
     absorbs, so each block is invariant to the scale of Y_k and has gain one. (Frobenius:
     the blocks start √d too small and training stalls at RMSE 0.954; mean eigenvalue
     (SPEC's prototype): a dominant direction still grows ~d per block, initial loss 4e12.)
  2. ``init="signed"``: the fixed factors X_k are zero-mean (randn/√d). Positive factors,
     as published, make S_k = Y_kᵀY_k nearly rank one (one huge all-ones direction), so
     S_k^a is too and every block output collapses towards rank one: with them paper mode
     sits on the rank-one plateau at RMSE 0.954 whatever else is tuned.
  3. Regularisation per observed entry: Adam weight decay 1.25e-4·nnz (10 on ML-100K) and
     plateau patience 5. Without it the now-expressive model overfits (training loss keeps
     falling, test RMSE rises past 1.0).
  The outer weights are also scaled once so that the first prediction fits the data's scale
  (``_match_scale``).
Beyond the paper (both modes): global mean and user/item biases (``bias=True``),
predictions clipped to the rating scale (``clip=(lo, hi)``), validation-based early stopping.

One epoch (refresh ``"fixed"``) is a handful of large ops: S_k(η) for all blocks from the
three precomputed pieces, one ``dk.lowrank_block`` call ("from Gram": one batched d×d power
with its spectral normalisation read off the same eigen/power data, then the W products),
one sparse loss with its two SpMMs in the backward, one fused Adam step, and a device-side
plateau schedule. Nothing is read back to the host inside the loop except where the user
asked (progress refresh / checks every ``sync_every`` epochs, validation, callbacks).

Factor refresh: ``"fixed"`` (published: X_k never change) or ``"carry"`` (X_k ← detached X̂_k
after each epoch). With ``"fixed"``, X_k, ∇_k and L_k are constants, so
S_k(η) = X_kᵀX_k ∓ t (X_kᵀ∇_k + ∇_kᵀX_k) + t² ∇_kᵀ∇_k, t = 1/(ηL_k): three d×d matrices are
precomputed and each epoch touches no m×d or n×d data before the W products.
"""
from __future__ import annotations


from pathlib import Path
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import torch
from torch import nn

import dlrl_kernels as dk
from dlrl_kernels import _dispatch as dk_dispatch

from .metrics import rmse

MODES = ("paper", "published")

#: paper mode's default Adam weight decay per observed entry (1.25e-4 · 80 000 = 10 on ML-100K)
PAPER_WEIGHT_DECAY_PER_ENTRY = 1.25e-4
#: paper mode's plateau patience (published: 10)
PAPER_PATIENCE = 5
REFRESH = ("fixed", "carry")
ACTIVATIONS = ("relu", "none", "auto")
NORMALIZE = ("spectral", "frobenius", "trace", "none")
#: the default rank (capped at min(m, n) for small matrices)
DEFAULT_RANK = 20
#: constructor arguments whose explicit choice turns ``tune="auto"`` off (see ``fit``)
TUNABLE = ("rank", "weight_decay", "bias", "p", "activation")
#: activation="auto": "none" when at least this fraction of the training values is negative
#: *and* at least this fraction positive (both signs beyond noise), else "relu"
SIGNED_FRACTION = 0.05
#: intra-op threads: a fit may use 2 threads from this many observed entries on (``_threads_for``)
THREADS_MIN_NNZ = 1_000_000


# ----------------------------------------------------------------------------- argument checks
def _int_arg(value, name, lo=None):
    """An integer argument: ints and integral floats; 2.7, True, "3" are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not (
            isinstance(value, torch.Tensor) and value.numel() == 1):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v) or v != int(v):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    v = int(v)
    if lo is not None and v < lo:
        raise ValueError(f"{name}: expected an integer >= {lo}, got {value!r}")
    return v


def _float_arg(value, name, lo=None, lo_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ValueError(f"{name}: expected a number {'>' if lo_open else '>='} {lo}, got {value!r}")
    return v


def _index_tensor(t, name, upper, device=None):
    """Integer ids in [0, upper): integer tensors, or floats that are whole numbers (1.0 ok,
    1.9 refused: never truncated)."""
    t = torch.as_tensor(t, device=device)
    if t.dtype == torch.bool:
        raise TypeError(f"{name}: expected integer ids, got a bool tensor")
    if t.is_floating_point() or t.is_complex():
        if t.is_complex() or not bool(torch.isfinite(t).all()) or not bool((t == t.round()).all()):
            bad = t[~(torch.isfinite(t) & (t == t.round()))][:1] if not t.is_complex() else t[:1]
            raise ValueError(f"{name}: expected integer ids, got non-integer value {bad.tolist()[0] if bad.numel() else t}")
    t = t.reshape(-1).long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= upper):
        raise ValueError(f"{name}: expected indices in [0, {upper}), got range [{int(t.min())}, {int(t.max())}]")
    return t


# ----------------------------------------------------------------------------- observations
@dataclass
class Observations:
    """Observed entries, sparse (rows, cols, values) and optionally the dense mask form.

    ``sorted()`` gives the same entries in row-major order with a ``dk.SparsePattern``
    (built once, reused by every epoch's loss and backward).
    """

    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    shape: tuple
    X: Optional[torch.Tensor] = None  # dense values with NaN where missing (dense inputs)
    pattern: Optional[object] = None  # set on the sorted copy

    @property
    def nnz(self):
        return int(self.values.numel())

    def to(self, device, dtype):
        X = None if self.X is None else self.X.to(device=device, dtype=dtype)
        return Observations(self.rows.to(device), self.cols.to(device), self.values.to(device=device, dtype=dtype), self.shape, X)

    def sorted(self):
        if self.pattern is not None:
            return self
        pat = dk.sparse_pattern(self.rows, self.cols, self.shape)
        # index_select: advanced indexing (values[order]) took ~3× as long at 2·10⁶ entries
        return Observations(pat.rows, pat.cols, self.values.index_select(0, pat.order), self.shape, self.X, pat)


def as_observations(X=None, mask=None, rows=None, cols=None, values=None, shape=None) -> Observations:
    """Dense (X with NaN for missing, or X + mask) or sparse (rows, cols, values, shape)."""
    if X is not None:
        if rows is not None or cols is not None or values is not None:
            raise ValueError("X: give either a dense X (with mask or NaN) or rows/cols/values, not both")
        X = torch.as_tensor(X)
        if not X.is_floating_point():
            X = X.double()
        if X.dim() != 2:
            raise ValueError(f"X: expected a 2-D matrix, got shape {tuple(X.shape)}")
        if mask is None:
            obs = ~torch.isnan(X)
        else:
            mask = torch.as_tensor(mask, device=X.device)
            if tuple(mask.shape) != tuple(X.shape):
                raise ValueError(f"mask: expected shape {tuple(X.shape)} (same as X), got {tuple(mask.shape)}")
            obs = mask.bool()
            if torch.isnan(X[obs]).any():
                raise ValueError("X: expected no NaN at observed entries (mask True)")
        if torch.isinf(X[obs]).any():
            raise ValueError("X: expected finite observed values, got inf")
        r, c = obs.nonzero(as_tuple=True)
        if r.numel() == 0:
            raise ValueError("X: expected at least one observed entry, got none")
        Xn = torch.where(obs, X, torch.full_like(X, float("nan")))
        return Observations(r, c, X[r, c], tuple(X.shape), Xn)
    if rows is None or cols is None or values is None:
        raise ValueError("rows/cols/values: expected all three (or a dense X), got a partial set")
    if shape is None:
        raise ValueError("shape: expected (n_rows, n_cols) with sparse observations, got None")
    m, n = shape
    values = torch.as_tensor(values)
    if not values.is_floating_point():
        values = values.double()
    values = values.reshape(-1)
    rows = _index_tensor(rows, "rows", m)
    cols = _index_tensor(cols, "cols", n)
    if rows.numel() == 0:
        raise ValueError("values: expected at least one observed entry, got none")
    if not (rows.numel() == cols.numel() == values.numel()):
        raise ValueError(f"values: expected rows, cols and values of one length, got {rows.numel()}, "
                         f"{cols.numel()}, {values.numel()}")
    if torch.isnan(values).any():
        raise ValueError("values: expected no NaN")
    if torch.isinf(values).any():
        raise ValueError("values: expected finite values, got inf")
    return Observations(rows, cols, values, (int(m), int(n)))


# ----------------------------------------------------------------------------- config
@dataclass
class DLRLConfig:
    shape: tuple
    rank: int = DEFAULT_RANK
    blocks: int = 5
    p: Sequence[float] = (1.0,)
    mode: str = "paper"
    refresh: str = "fixed"
    bias: bool = False
    clip: Optional[tuple] = None
    eta0: float = 0.1
    init: str = "auto"  # "published" (rand/identity/rand) | "signed" | "scaled" | "auto" (mode's own)
    loss: str = "sum"  # reduction of the training loss: "sum" (paper Eq. 26) or "mean"
    method: str = "auto"  # spd_power method: "auto" | "eigh" | "newton"
    backend: str = "auto"
    dtype: str = "float32"
    seed: int = 0
    normalize: str = "spectral"  # paper mode: how S^a is made scale-free (see dk.lowrank_block)
    weight_decay: Optional[float] = None  # Adam L2; None: the mode's default (see fit)
    activation: str = "auto"  # "relu" (paper) | "none" | "auto" (chosen from the data at fit time)
    scale_init: bool = True  # paper mode: fit the initial product's scale to the data (_match_scale)
    dense: bool = False  # use the dense masked loss when a dense X was given (no biases)
    explicit: tuple = ()  # constructor arguments the user gave (tune="auto" reads it)

    def p_list(self):
        ps = list(self.p) if isinstance(self.p, (list, tuple)) else [float(self.p)]
        if len(ps) == 1:
            ps = ps * self.blocks
        if len(ps) != self.blocks:
            raise ValueError(f"p: expected 1 or {self.blocks} exponents (one per block), got {len(ps)}")
        for v in ps:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 2:
                raise ValueError(f"p: expected every block exponent in (0, 2], got {v!r}")
        return [float(v) for v in ps]

    def ctor_args(self):
        """The constructor arguments that rebuild this configuration."""
        d = asdict(self)
        d.pop("explicit")
        return d


def _dtype(name):
    return {"float32": torch.float32, "float64": torch.float64}[name]


def _same(a, b):
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - tensors, odd types: count as given
        return False

_CTOR_DEFAULTS = dict(rank=None, blocks=5, p=None, mode="paper", refresh="fixed", bias=None, clip=None, eta0=0.1,
                      init="auto", loss="sum", method="auto", backend="auto", dtype="float32", seed=0,
                      normalize="spectral", weight_decay=None, activation=None, scale_init=True, dense=False)


# ----------------------------------------------------------------------------- model
class DLRL(nn.Module):
    """Differentiable low-rank learning for matrix completion.

    >>> model = DLRL((943, 1682), rank=20, blocks=5)            # doctest: +SKIP
    >>> hist = model.fit(rows=r, cols=c, values=v)               # doctest: +SKIP
    >>> model.predict(r_test, c_test)                            # doctest: +SKIP

    rank: d (default 20, capped at min(m, n); an explicit rank above min(m, n) is clamped with a
    warning). activation: "relu" (the paper's blocks), "none" (linear blocks, for signed data)
    or "auto" (default: decided from the training values at fit time, see ``fit``). Unknown
    keyword arguments are refused with the list of valid names.
    """

    def __init__(self, shape, rank=None, blocks=5, p=None, mode="paper", refresh="fixed", bias=None,
                 clip=None, eta0=0.1, init="auto", loss="sum", method="auto", backend="auto",
                 dtype="float32", seed=0, normalize="spectral", weight_decay=None, activation=None,
                 scale_init=True, dense=False, device=None, **unknown):
        super().__init__()
        if unknown:
            valid = ", ".join(["shape", *_CTOR_DEFAULTS, "device"])
            raise TypeError(f"DLRL: unknown keyword argument(s) {sorted(unknown)}; valid names: {valid}")
        given = dict(rank=rank, blocks=blocks, p=p, mode=mode, refresh=refresh, bias=bias, clip=clip, eta0=eta0,
                     init=init, loss=loss, method=method, backend=backend, dtype=dtype, seed=seed,
                     normalize=normalize, weight_decay=weight_decay, activation=activation,
                     scale_init=scale_init, dense=dense)
        explicit = tuple(sorted(k for k, v in given.items() if v is not None and not (
            k not in TUNABLE and k != "rank" and _same(v, _CTOR_DEFAULTS[k]))))
        self._build(shape, given, explicit, device)

    # ------------------------------------------------------------------ construction
    def _build(self, shape, given, explicit, device=None):
        g = dict(given)
        try:
            shape = tuple(shape)
        except TypeError:
            raise TypeError(f"shape: expected (n_rows, n_cols), got {shape!r}") from None
        if len(shape) != 2:
            raise ValueError(f"shape: expected (n_rows, n_cols), got {shape!r}")
        m, n = (_int_arg(s, "shape", lo=1) for s in shape)
        mode, refresh = g["mode"], g["refresh"]
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if refresh not in REFRESH:
            raise ValueError(f"refresh: expected one of {REFRESH}, got {refresh!r}")
        blocks = _int_arg(g["blocks"], "blocks")
        if blocks < 2:
            raise ValueError(f"blocks: expected at least 2 blocks (X_1 m×d … X_I d×n), got {g['blocks']!r}")
        if g["rank"] is None:
            rank = min(DEFAULT_RANK, m, n)
        else:
            rank = _int_arg(g["rank"], "rank")
            if rank < 1:
                raise ValueError(f"rank: expected a positive integer, got {g['rank']!r}")
            if rank > min(m, n):
                import warnings

                warnings.warn(f"rank: {rank} is above min(m, n) = {min(m, n)} for shape {(m, n)}; using "
                              f"rank={min(m, n)}", stacklevel=3)
                rank = min(m, n)
        if g["loss"] not in ("sum", "mean"):
            raise ValueError(f"loss: expected 'sum' or 'mean', got {g['loss']!r}")
        dtype = g["dtype"]
        if isinstance(dtype, torch.dtype):
            if dtype not in (torch.float32, torch.float64):
                raise ValueError(f"dtype: expected float32 or float64, got {dtype}")
            dtype = {torch.float32: "float32", torch.float64: "float64"}[dtype]
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
        if g["normalize"] not in NORMALIZE and g["normalize"] is not None:
            raise ValueError(f"normalize: expected one of {NORMALIZE}, got {g['normalize']!r}")
        activation = "auto" if g["activation"] is None else g["activation"]
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
        if mode == "published" and activation == "none":
            raise ValueError("activation: mode='published' has ReLU blocks (as published); got 'none'")
        clip = g["clip"]
        if clip is not None:
            try:
                lo, hi = (float(x) for x in clip)
            except (TypeError, ValueError):
                raise ValueError(f"clip: expected (low, high), got {clip!r}") from None
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"clip: expected finite (low, high) with low < high, got {clip!r}")
            clip = (lo, hi)
        eta0 = _float_arg(g["eta0"], "eta0", lo=0.0, lo_open=True)
        wd = g["weight_decay"]
        if wd is not None:
            wd = _float_arg(wd, "weight_decay", lo=0.0)
        if g["init"] not in ("auto", "published", "scaled", "signed"):
            raise ValueError(f"init: expected 'auto', 'published', 'scaled' or 'signed', got {g['init']!r}")
        if g["method"] not in ("auto", "eigh", "newton"):
            raise ValueError(f"method: expected 'auto', 'eigh' or 'newton', got {g['method']!r}")
        if g["backend"] not in ("auto", "reference", "triton", "cuda", "cpu"):
            raise ValueError(f"backend: expected 'auto', 'reference', 'triton', 'cuda' or 'cpu', got {g['backend']!r}")
        p = 1.0 if g["p"] is None else g["p"]
        seed = _int_arg(g["seed"], "seed")
        self.config = DLRLConfig((m, n), rank, blocks, tuple(p) if isinstance(p, (list, tuple)) else (p,),
                                 mode, refresh, bool(g["bias"]), clip, eta0, g["init"], g["loss"], g["method"],
                                 g["backend"], dtype, seed, g["normalize"] or "none", wd, activation,
                                 bool(g["scale_init"]), bool(g["dense"]), tuple(explicit))
        self.ps = self.config.p_list()
        dt = _dtype(dtype)
        d = rank
        gen = torch.Generator().manual_seed(seed)
        shapes = [(m, d)] + [(d, d)] * (blocks - 2) + [(d, n)]
        init_kind = ("published" if mode == "published" else "signed") if g["init"] == "auto" else g["init"]
        Xs, Ws = [], []
        for k, (r, c) in enumerate(shapes):
            if 0 < k < blocks - 1:
                Xs.append(torch.eye(d, dtype=dt))
                Ws.append(torch.eye(d, dtype=dt))
            elif init_kind == "signed":
                # zero-mean factors: S_k = Y_kᵀY_k is well conditioned (≈ (m/d)·I), so Adam on W_k
                # is not slowed down by the one dominant all-ones direction positive factors give
                Xs.append(torch.randn(r, c, generator=gen, dtype=dt) / math.sqrt(d))
                Ws.append(torch.rand(r, c, generator=gen, dtype=dt) / math.sqrt(d))
            elif init_kind == "published":
                Xs.append(torch.rand(r, c, generator=gen, dtype=dt))
                Ws.append(torch.rand(r, c, generator=gen, dtype=dt))
            else:
                # small positive factors whose product has entries of order one
                Xs.append(torch.rand(r, c, generator=gen, dtype=dt) / math.sqrt(d))
                Ws.append(torch.rand(r, c, generator=gen, dtype=dt) / math.sqrt(d))
        for k, X in enumerate(Xs):
            self.register_buffer(f"X{k}", X)
        self.W = nn.ParameterList([nn.Parameter(w) for w in Ws])
        self.eta = nn.Parameter(torch.tensor(eta0, dtype=dt))
        bias = bool(g["bias"])
        self.mu = nn.Parameter(torch.zeros((), dtype=dt), requires_grad=bias)
        self.bu = nn.Parameter(torch.zeros(m, dtype=dt), requires_grad=bias)
        self.bi = nn.Parameter(torch.zeros(n, dtype=dt), requires_grad=bias)
        # cold start: rows / columns with no training entry get no factor term (their W rows
        # never saw data); they are predicted from the biases, or from the training mean
        self.register_buffer("row_seen", torch.ones(m, dtype=torch.bool))
        self.register_buffer("col_seen", torch.ones(n, dtype=torch.bool))
        self.register_buffer("train_mean", torch.zeros((), dtype=dt))
        self._prep = None
        self._expo = None
        self.activation_used = None if activation == "auto" else activation
        self.history: list = []
        self.fit_seconds = 0.0
        self.backend_used = None
        self.stop_reason = None
        self.interrupted = False
        self.world_size = 1
        self.threads_used = None
        self.tuning_report = None
        self._opt = None
        self._sched = None
        self._best = None
        self._carry_best = None
        if device is not None:
            self.to(device)

    def _reconfigure(self, **overrides):
        """Rebuild the model with some constructor arguments changed (tuning); the arguments
        the user gave stay as they were and count as explicit."""
        args = self.config.ctor_args()
        shape = args.pop("shape")
        unknown = set(overrides) - set(args)
        if unknown:
            raise TypeError(f"_reconfigure: unknown constructor argument(s) {sorted(unknown)}")
        args.update(overrides)
        device = self.device
        self._build(shape, args, self.config.explicit, device)
        return self

    # ------------------------------------------------------------------ structure
    @property
    def factors(self):
        return [getattr(self, f"X{k}") for k in range(self.config.blocks)]

    def _transposed(self, k):
        r, c = self.factors[k].shape
        if self.config.mode == "published":
            return r < 2 * c  # the reference code's orientation rule
        return r < c  # short side (SPEC §2 step 5)

    @property
    def dtype(self):
        return self.eta.dtype

    @property
    def device(self):
        return self.eta.device

    @property
    def activation(self):
        """The block activation in use ("relu" / "none"); "auto" resolves at fit time."""
        return self.activation_used or ("relu" if self.config.activation == "auto" else self.config.activation)

    # ------------------------------------------------------------------ per-data constants
    def _baseline(self, obs: Observations):
        if not self.config.bias:
            return None
        return self.mu + self.bu[obs.rows] + self.bi[obs.cols]

    @torch.no_grad()
    def _prepare(self, obs: Observations, ctx=None):
        """∇_k, L_k and the three d×d pieces of S_k(η) for the current factors (constants).

        Y_k = X_k + t_k ∇_k with t_k = c_k/η, so S_k = Y_kᵀY_k = G0 + t_k G1 + t_k² G2 with
        G0 = X_kᵀX_k, G1 = X_kᵀ∇_k + ∇_kᵀX_k, G2 = ∇_kᵀ∇_k (short side). Stacked over the
        blocks ([I, d, d]) so that each epoch runs one batched power. No host sync. Under a
        distributed context the ∇_k (sums over observed entries) are summed over the ranks
        before the pieces are formed.
        """
        cfg = self.config
        obs = obs.sorted()
        Xs = self.factors
        target = obs.values
        base = self._baseline(obs)
        if base is not None:
            target = target - base.detach()
        pat = obs.pattern
        e = dk.masked_residual_sparse(Xs, obs.rows, obs.cols, target, backend=cfg.backend, pattern=pat)
        m, n = cfg.shape
        from dlrl_kernels.ops import masked_residual_sparse as _mrs
        from dlrl_kernels.ops.chain import _prefixes, grads_from_rq

        be = _mrs.TABLE.resolve(cfg.backend, e.device, triton_ok=True, cuda_ok=True)[0]
        prefixes = _prefixes(Xs)
        # the backend's R, Q (native CPU: one pass each, ~5× the CSR SpMMs at 2·10⁶ entries)
        R, Q = _mrs.rq(prefixes[-1], Xs[-1].t().contiguous(), obs.rows, obs.cols, e, 1.0, be,
                       "masked_residual_sparse", pat.crow, pat.ccol, pat.col_order, pat.rows_by_col)
        grads = grads_from_rq(Xs, prefixes, R, Q)
        if ctx is not None:
            ctx.all_reduce_(grads)
        pre, suf = dk.chain_products(Xs)
        sign = 1.0 if cfg.mode == "published" else -1.0  # published steps *up* the loss
        one = torch.ones((), dtype=self.dtype, device=self.device)
        G0, G1, G2, Ls = [], [], [], []
        for k in range(cfg.blocks):
            la = one if pre[k] is None else dk.spectral_norm_sq(pre[k], method="eigh")
            lb = one if suf[k] is None else dk.spectral_norm_sq(suf[k], method="eigh")
            if cfg.mode == "published":
                # the reference code clamps each spectral norm at 1e-4 before squaring
                na = one if pre[k] is None else la.sqrt().clamp_min(1e-4)
                nb = one if suf[k] is None else lb.sqrt().clamp_min(1e-4)
                L = (na * nb) ** 2
            else:
                L = (la * lb).clamp_min(1e-8)
            X, G = Xs[k], grads[k]
            if self._transposed(k):
                X, G = X.t(), G.t()
            XtG = X.t() @ G
            G0.append(X.t() @ X)
            G1.append(XtG + XtG.t())
            G2.append(G.t() @ G)
            Ls.append(L.reshape(()))
        Lt = torch.stack(Ls).to(self.dtype)
        prep = {"G0": torch.stack(G0), "G1": torch.stack(G1), "G2": torch.stack(G2), "c": sign / Lt, "L": Lt}
        self._prep = prep
        return prep

    # ------------------------------------------------------------------ forward
    def _eta_bounds(self):
        # published: clamp to [0, 1] in the forward pass; paper: projected into (0, 1]
        return (0.0 if self.config.mode == "published" else 1e-3), 1.0

    def _eta_value(self):
        return self.eta.clamp(*self._eta_bounds())

    def _exponents(self):
        if self._expo is None or self._expo.device != self.device or self._expo.dtype != self.dtype:
            ps = torch.tensor(self.ps, dtype=self.dtype, device=self.device)
            self._expo = ((ps - 2.0) / 2.0)[:, None, None]  # published: elementwise (p−2)/2
        return self._expo

    def _gram(self, prep):
        return self._gram_parts(prep)[0]

    def _gram_parts(self, prep):
        """(S, t, η̃): S = G0 + t·G1 + t²·G2 with t = c/η̃ (one per block, [I, 1, 1]) and η̃ the
        clamped η (``_eta_value``); the autograd-free step needs t and η̃ for ∂η."""
        eta = self._eta_value()
        t = (prep["c"] / eta)[:, None, None]
        return prep["G0"] + t * prep["G1"] + (t * t) * prep["G2"], t, eta

    def _eta_grad(self, gS, prep, t, eta):
        """∂J/∂η for ∂J/∂S of ``_gram_parts``' S (its t and clamped η̃): Σ_k ⟨∂S_k, G1_k +
        2t_k G2_k⟩·(−t_k/η̃) where η lies inside the clamp's range (its rule: the bounds
        included), else 0 — what autograd would derive; the native twin is ``cpu.eta_grad``."""
        gt = (gS * (prep["G1"] + (2.0 * t) * prep["G2"])).sum((-1, -2))
        lo, hi = self._eta_bounds()
        inside = (self.eta >= lo) & (self.eta <= hi)
        return torch.where(inside, -(gt * t.reshape(-1)).sum() / eta,
                           torch.zeros((), dtype=eta.dtype, device=eta.device)).reshape(self.eta.shape)

    def _eta_fns(self, native):
        """(gram, eta_grad) for the autograd-free step: ``_gram_parts`` / ``_eta_grad``, or with
        ``native`` their C twins (``cpu.eta_gram`` / ``cpu.eta_grad``: one call each instead of
        ~15 small torch ops per epoch). Both read the current prep (refresh "carry" replaces it)."""
        if not native:
            return self._gram_parts, self._eta_grad
        from dlrl_kernels import cpu

        lo, hi = self._eta_bounds()
        eta = self.eta

        def gram(prep):
            S, t = cpu.eta_gram(prep["G0"], prep["G1"], prep["G2"], prep["c"], eta, lo, hi)
            return S, t, None

        def eta_grad(gS, prep, t, _):
            return cpu.eta_grad(gS, prep["G1"], prep["G2"], t, eta, lo, hi)

        return gram, eta_grad

    def _power_args(self, S):
        """paper mode: ``block_power``'s arguments after S — (a, normalize, method, rtol, backend)
        as the op is called for these operators (the eigh route when any exponent needs it)."""
        from dlrl_kernels.ops.lowrank_block import TABLE
        from dlrl_kernels.ops.spd_power import resolve_method

        cfg = self.config
        a = [(2.0 - p) / 2.0 for p in self.ps]
        be, _ = TABLE.resolve(cfg.backend, S.device, cuda_ok=False)
        meths = {resolve_method(cfg.method, ak, S.device, be) for ak in set(a)}
        return a, cfg.normalize, "eigh" if "eigh" in meths else "newton", None, be

    def _orientation(self, d):
        """(wide, activation): per block whether it computes act(W_kᵀ N_k)ᵀ (the published code's
        rule, or the short side), and the activation."""
        cfg = self.config
        if cfg.mode == "published":
            return [self._transposed(k) for k in range(cfg.blocks)], "relu"
        return [W.shape[-1] != d for W in self.W], self.activation

    def _published_operators(self, S):
        """M_k = ½·pinv(½·(S_k + st_k)^∘((p_k−2)/2)), st_k = 0.002·max|diag S_k| — one
        ``dlrl::published_operator`` node (the registered op without the public ``pinv``'s
        per-call NaN scan, a host sync every epoch: a NaN G shows up in the loss, checked at the
        fit's sync points)."""
        from dlrl_kernels.ops import pinv as _pinv

        name = _pinv.published_backend(self.config.backend, str(S.device))
        try:
            # G is symmetric (an elementwise function of the symmetric S): the eigh route gives
            # the published SVD pseudo-inverse (same cut-off) at half the cost
            return _pinv.published_op(S, self._exponents(), name)[0]
        except RuntimeError as err:
            self._published_failure(S, err)

    @staticmethod
    def _published_failure(S, err):
        """Re-raise an eigh failure of the published operator as the FloatingPointError it means
        when S or its shifted power holds NaN / negative entries."""
        if bool(torch.isfinite(S).all()) and not bool((S + 0.002 * S.diagonal(dim1=-2, dim2=-1).abs().amax(-1)[
                :, None, None] < 0).any()):
            raise err
        raise FloatingPointError(
            "mode='published': the elementwise power (S + st)^((p-2)/2) hit a negative entry of "
            "S = YᵀY (the published code has the same failure); use mode='paper' (true matrix power)"
        ) from err

    def _operator_fn(self, S_like):
        """(forward, backward) of the block operators without autograd: forward(S) → (N, saved),
        backward(S, saved, ∂N) → ∂S — the functions the ops ``published_operator`` /
        ``block_power`` register with autograd, resolved as ``block_operators`` resolves them.
        The implementation choice depends only on S's device and dtype (``S_like``: a tensor
        like S, prep's G0), so it is made here, once per fit, not every epoch."""
        cfg = self.config
        if cfg.mode == "published":
            from dlrl_kernels.ops import pinv as _pinv

            expo = self._exponents()
            name = _pinv.published_backend(cfg.backend, str(S_like.device))

            def fwd(S):
                try:
                    M, Q, inv = _pinv._published_impl(S, expo, name)
                except RuntimeError as err:
                    self._published_failure(S, err)
                return M, (Q, inv)

            def bwd(S, saved, gN):
                Q, inv = saved
                return _pinv.published_grad(S, expo, Q, inv, gN, name)

            return fwd, bwd
        import types

        from dlrl_kernels.ops import lowrank_block as _lb

        args = self._power_args(S_like)

        def fwd(S):
            out = _lb._block_power_impl(S, *args)
            return out[0], out

        def bwd(S, out, gN):  # the op's backward, with the context its setup would have saved
            a, normalize, method, rtol, be = args
            ctx = types.SimpleNamespace(saved_tensors=(S, *out), a=list(a), normalize=normalize, method=method,
                                        rtol=rtol, impl=be)
            return _lb._backward(ctx, gN, None, None, None, None)[0]

        return fwd, bwd

    def _step_plan(self, obs):
        """What ``_manual_step`` needs that does not change within a fit — the orientation flags,
        activation, the operators' functions, the sparse backend, η's clamp bound — or None when
        the autograd-free step does not apply (no sorted pattern, the fused loss off or not
        fusable). Built once per fit: at ML-100K's size even these lookups show in an epoch."""
        cfg = self.config
        if obs.pattern is None or os.environ.get("DLRL_MANUAL", "1") == "0" or \
                (not cfg.bias and obs.X is not None and cfg.dense):
            return None  # (dense=True: the user chose the dense loss kernel, which ``loss`` runs)
        from dlrl_kernels.ops import chain_loss as _cl
        from dlrl_kernels.ops import masked_residual_sparse as _mrs

        prep = self._need_prep(None)
        wide, act = self._orientation(prep["G0"].shape[-1])
        cols = self._bias_columns()
        if not self._fusable((prep["G0"], wide, None if cols is None else cols[0])):
            return None
        be = _mrs.TABLE_LOSS.resolve(cfg.backend, obs.values.device, triton_ok=True, cuda_ok=True)[0]
        # where each weight's gradient lies in the op's flat ∂W: (W, shape, contiguous strides, offset) —
        # as_strided views of it cost ~1.5 µs each where slicing and .view cost ~8 µs per weight
        views, off = [], 0
        for W in self.W:
            views.append((W, W.shape, tuple(math.prod(W.shape[i + 1:]) for i in range(W.dim())), off))
            off += W.numel()
        impl = _cl.loss_and_grads
        if be == "cpu":  # the native loss writes ∂N, ∂W into buffers kept for the fit (see loss_and_grads)
            import functools

            G0 = prep["G0"]
            impl = functools.partial(impl, out=(torch.empty(G0.shape, dtype=G0.dtype), G0.new_empty(off)))
        return {"wide": wide, "act": act, "ops": self._operator_fn(prep["G0"]), "backend": be, "impl": impl,
                "Ws": list(self.W), "eta": self._eta_fns(be == "cpu" and prep["G0"].device.type == "cpu"),
                "grad_views": views}

    @torch.no_grad()
    def _manual_step(self, obs, nnz, plan=None):
        """One training step's loss and gradients without the autograd engine: returns J (0-d)
        with every trainable parameter's ``.grad`` set, or None where the fused loss does not
        apply (then the caller runs ``loss`` + ``backward``).

        The same functions autograd would call, in the order it would call them — the gram
        S = G0 + t·G1 + t²·G2 (t = c/η, η clamped as ``_eta_value``), the operators' forward
        (``_operator_fn``: the published operator or ``block_power``), ``chain_loss_sparse``'s
        forward (which already holds the adjoints of N, every W and the bias columns), the
        operators' backward to ∂S — and by hand only the two steps autograd would have derived:
        ∂η (``_eta_grad``; on the CPU the gram and ∂η are one C call each, ``_eta_fns``) and the
        bias columns' adjoints to μ, b_u, b_i. Why: at
        ML-100K's size the engine, its nodes and the ops' Python wrappers cost ~15–30 % of a
        CPU epoch (measured side by side); ``tests/test_fast_step.py`` holds this step to the
        autograd gradients in float64. ``DLRL_MANUAL=0`` turns it off. ``plan``: ``_step_plan(obs)``
        (built here when not given)."""
        cfg = self.config
        plan = self._step_plan(obs) if plan is None else plan
        if plan is None:
            return None
        pat = obs.pattern
        prep = self._prep
        cols = self._bias_columns()
        ue, ve = cols if cols is not None else (None, None)
        Ws = plan["Ws"]
        gram, eta_grad = plan["eta"]
        S, t, eta = gram(prep)
        fwd, bwd = plan["ops"]
        N, saved = fwd(S)
        J, gN, gW, gue, gve = plan["impl"](N, Ws, plan["wide"], ue, ve, plan["act"], obs.rows, obs.cols, obs.values,
                                           plan["backend"], True, pat.crow, pat.ccol, pat.col_order, pat.rows_by_col)
        if cfg.loss == "mean":
            s = 1.0 / nnz
            J, gN, gW = J * s, gN * s, gW * s
            if cols is not None:
                gue, gve = gue * s, gve * s
        self.eta.grad = eta_grad(bwd(S, saved, gN), prep, t, eta)
        for W, shape, stride, off in plan["grad_views"]:
            W.grad = gW.as_strided(shape, stride, off)
        if cols is not None:
            self.bu.grad = gue.select(1, 0).contiguous()
            self.mu.grad = self.bu.grad.sum()  # (μ is 0-d)
            self.bi.grad = gve.select(1, 1).contiguous()
        return J

    def _need_prep(self, prep):
        prep = self._prep if prep is None else prep
        if prep is None:
            raise RuntimeError("block_outputs: call fit() (or prepare()) first: the factors' gradients are not known yet")
        return prep

    def block_operators(self, prep=None):
        """The d×d right factors M_k of every block, stacked: X̂_k = act(W_k M_k) (short side).

        paper: M_k = S_k^{(2−p_k)/2} / c_k (Eq. 23's ½ W G⁺ up to a scale W absorbs; c_k the
        normalisation, spectral by default); published: M_k = ½ pinv(½ (S_k + st)^{∘(p_k−2)/2}).
        """
        prep = self._need_prep(prep)
        S = self._gram(prep)
        if self.config.mode == "published":
            return self._published_operators(S)
        from dlrl_kernels.ops.lowrank_block import block_power

        return block_power(S, *self._power_args(S))[0]

    def block_outputs(self, prep=None):
        """[X̂_1, …, X̂_I] for the current W, η (differentiable): one ``dk.lowrank_block`` call."""
        prep = self._need_prep(prep)
        cfg = self.config
        S = self._gram(prep)
        if cfg.mode == "published":
            M = self._published_operators(S)
            outs = []
            for k, Mk in enumerate(M.unbind(0)):
                if self._transposed(k):
                    outs.append(torch.relu(self.W[k].t() @ Mk).t())
                else:
                    outs.append(torch.relu(self.W[k] @ Mk))
            return outs
        return dk.lowrank_block(None, list(self.W), self.ps, method=cfg.method, normalize=cfg.normalize,
                                backend=cfg.backend, S=S, activation=self.activation)

    def forward(self, obs: Observations):
        """The training loss J on ``obs`` (an :class:`Observations`, ``.sorted()`` for speed)."""
        return self.loss(obs)

    def _sparse_residual(self, outs, obs: Observations, op_name="masked_residual_sparse"):
        """e = P_Ω(X̂_1⋯X̂_I) − values through the registered op ``dlrl::masked_residual_sparse``.

        Inside a fit the observations were validated once (``as_observations``) and the
        factors are the model's own, so the per-call checks of the public wrapper (a scan of
        every value and factor for NaN/Inf: host syncs every epoch) are skipped by calling
        the registered op directly; the public ``dk`` wrapper is the fallback (no pattern, or
        an op of another signature)."""
        pat = obs.pattern
        if pat is not None and len(outs) > 1 and _raw_op("masked_residual_sparse", 11):
            from dlrl_kernels.ops import masked_residual_sparse as _mrs
            from dlrl_kernels.ops.chain import outer_factors

            table = _mrs.TABLE if op_name == "masked_residual_sparse" else _mrs.TABLE_LOSS
            be = table.resolve(self.config.backend, obs.values.device, triton_ok=True, cuda_ok=True)[0]
            U, V = outer_factors(outs)
            return _mrs.residual_op(U, V.t().contiguous(), obs.rows, obs.cols, obs.values, be, op_name, pat.crow,
                                    pat.ccol, pat.col_order, pat.rows_by_col)
        return dk.masked_residual_sparse(outs, obs.rows, obs.cols, obs.values, backend=self.config.backend,
                                         pattern=pat)

    def _residual(self, outs, obs: Observations):
        e = self._sparse_residual(outs, obs)
        if not self.config.bias:
            return e
        # the biases enter the residual directly
        return e + (self.mu + self.bu[obs.rows] + self.bi[obs.cols])

    def _outer(self, outs):
        """(U, Vᵀ) of the product X̂_1⋯X̂_I: U = X̂_1 (X̂_2⋯X̂_{I−1}) — the d×d middle product
        first, so one m×d·d×d matmul instead of I−2 — and Vᵀ = X̂_Iᵀ (n×d contiguous), with
        the bias columns appended (``_bias_columns``). The same arithmetic as the
        ``block_chain`` node the training loss uses; this composed form serves given outputs."""
        from dlrl_kernels.ops.block_chain import chain_factors

        U, Vt, _ = chain_factors(outs)
        cols = self._bias_columns()
        if cols is not None:
            U, Vt = torch.cat([U, cols[0]], 1), torch.cat([Vt, cols[1]], 1)
        return U, Vt

    def _bias_columns(self):
        """With biases, the columns appended to U and Vᵀ: U' = [U, μ + b_u, 1], V' = [V, 1, b_i],
        so that U'V'ᵀ = UVᵀ + μ + b_u + b_i and the sparse kernel adds the biases with no
        nnz-long gathers or scatters (their gradients are the kernel's two SpMMs' extra
        columns). None without biases."""
        if not self.config.bias:
            return None
        m, n = self.config.shape
        key = (m, n, self.bu.dtype, self.bu.device)
        if getattr(self, "_ones_key", None) != key:
            self._ones = (self.bu.new_ones(m), self.bu.new_ones(n))
            self._ones_key = key
        return torch.stack([self.mu + self.bu, self._ones[0]], 1), torch.stack([self._ones[1], self.bi], 1)

    def _chain_layout(self):
        """(N, wide, u_extra, v_extra, activation): the operators and how ``block_chain`` /
        ``chain_loss_sparse`` apply them (the published code's orientation rule, or the short side)."""
        N = self.block_operators()
        wide, act = self._orientation(N.shape[-1])
        ue, ve = self._bias_columns() or (None, None)
        return N, wide, ue, ve, act

    def _fusable(self, layout):
        """Whether the fused loss op applies to ``layout`` (a tall first and a wide last weight:
        every layout but tiny problems'). Off with ``DLRL_FUSED=0`` (for A/B timing)."""
        if os.environ.get("DLRL_FUSED", "1") == "0":
            return False
        from dlrl_kernels.ops.chain_loss import fusable

        return fusable(layout[0], self.W, layout[1], layout[2])

    def _chain_factors(self, layout=None):
        """(U', V'ᵀ) of the product of every block's output, biases as extra columns — the
        operators N_k (``block_operators``) and then one ``dk.block_chain`` node for all the W
        products, activations, the chain and the bias columns (same values as
        ``_outer(block_outputs())``, a fraction of the autograd nodes: see block_chain's doc)."""
        from dlrl_kernels.ops.block_chain import block_chain

        N, wide, ue, ve, act = self._chain_layout() if layout is None else layout
        return block_chain(N, list(self.W), act, ue, ve, wide=wide)

    def loss(self, obs: Observations, outs=None, nnz=None):
        """Training loss J (Eq. 26): ½‖P_Ω(X̂ − X)‖² ("sum") or its per-entry mean (over
        ``nnz`` entries: the global count under data-parallel training)."""
        cfg = self.config
        pat = obs.pattern
        dense = not cfg.bias and obs.X is not None and cfg.dense
        chain = outs is None and not dense and pat is not None and cfg.blocks > 1 and _raw_op("masked_loss_sparse", 11)
        outs = self.block_outputs() if outs is None and not chain else outs
        if dense:
            J = dk.masked_loss(outs, obs.X, backend=cfg.backend)
        elif chain or (pat is not None and len(outs) > 1 and _raw_op("masked_loss_sparse", 11)):
            # the registered loss op on (U, Vᵀ) directly: the SDDMM and both SpMMs in its
            # forward, the loss's scale applied in its backward (inside a fit the observations
            # were validated once, so the public wrapper's per-call NaN scans — host syncs — are
            # skipped); with no block outputs given, (U, Vᵀ) come from one block_chain node
            from dlrl_kernels.ops import masked_residual_sparse as _mrs

            be = _mrs.TABLE_LOSS.resolve(cfg.backend, obs.values.device, triton_ok=True, cuda_ok=True)[0]
            layout = self._chain_layout() if chain else None
            if layout is not None and self._fusable(layout):
                # one node from the operators to J: the outer blocks, the loss and their backward
                # in one native pass on the CPU (ops/chain_loss.py)
                from dlrl_kernels.ops.chain_loss import chain_loss_op

                N, wide, ue, ve, act = layout
                J = chain_loss_op(N, list(self.W), wide, ue, ve, act, obs.rows, obs.cols, obs.values, be,
                                  _mrs.wants_grad(N, *self.W), pat.crow, pat.ccol, pat.col_order, pat.rows_by_col)[0]
            else:
                U, Vt = self._chain_factors(layout) if chain else self._outer(outs)
                J = _mrs.loss_op(U, Vt, obs.rows, obs.cols, obs.values, be, _mrs.wants_grad(U, Vt), pat.crow,
                                 pat.ccol, pat.col_order, pat.rows_by_col)[0]
        elif not cfg.bias:
            e = self._sparse_residual(outs, obs, "masked_loss_sparse")
            J = 0.5 * torch.dot(e, e)
        else:
            e = self._residual(outs, obs)
            J = 0.5 * torch.dot(e, e)
        return J / (obs.nnz if nnz is None else nnz) if cfg.loss == "mean" else J

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def _collapsed(self):
        outs = self.block_outputs()
        U = outs[0]
        for M in outs[1:-1]:
            U = U @ M
        return U, outs[-1]

    def _from_dataframe(self, df, mask, rows, cols, values):
        """fit(df): a pandas DataFrame with columns user / item / rating (any hashable ids,
        mapped to sorted row / column indices by ``dlrl.frames.from_dataframe``; the maps are
        kept in ``user_ids`` / ``item_ids`` for ``predict_ids`` and saved with the model)."""
        if mask is not None or rows is not None or cols is not None or values is not None:
            raise ValueError("X: a DataFrame carries its own ids and ratings; give no mask/rows/cols/values with it")
        from .frames import from_dataframe

        r, c, v, (nu, ni), uid, iid = from_dataframe(df)
        m, n = self.config.shape
        if nu > m or ni > n:
            raise ValueError(f"X: the DataFrame has {nu} users × {ni} items, more than the model's shape {(m, n)}; "
                             f"build it with DLRL(({nu}, {ni}), ...) (see dlrl.frames.from_dataframe)")
        self.user_ids, self.item_ids = uid, iid
        return None, r, c, v

    @torch.no_grad()
    def predict_ids(self, users, items):
        """Predictions by original id after ``fit(df)`` (a ValueError names the first id that
        was not in the training DataFrame)."""
        if getattr(self, "user_ids", None) is None:
            raise ValueError("predict_ids: the model was not fitted on a DataFrame (no id maps); use predict(rows, cols)")
        from .frames import to_indices

        r, c = to_indices(users, items, self.user_ids, self.item_ids)
        return self.predict(r, c)

    @torch.no_grad()
    def predict(self, rows, cols):
        """Predicted entries at (rows, cols); biases added and clipped if configured. Ids must
        be integers (or whole-number floats) in range."""
        m, n = self.config.shape
        rows = _index_tensor(rows, "rows", m, device=self.device)
        cols = _index_tensor(cols, "cols", n, device=self.device)
        if rows.numel() != cols.numel():
            raise ValueError(f"cols: expected as many ids as rows ({rows.numel()}), got {cols.numel()}")
        U, V = self._collapsed()
        pred = self._entries(U, V, rows, cols)
        warm = self._warm(self.row_seen[rows], self.col_seen[cols])
        if self.config.bias:
            pred = torch.where(warm, pred, torch.zeros_like(pred)) + self.mu + self.bu[rows] + self.bi[cols]
        else:
            pred = torch.where(warm, pred, self.train_mean.expand_as(pred))
        if self.config.clip is not None:
            pred = pred.clamp(*self.config.clip)
        return pred

    def _entries(self, U, V, rows, cols):
        """(U V)[rows, cols] through the sparse residual op's kernel (the native one on a CPU: a
        single pass, where the row gathers below cost two nnz×d temporaries — the validation
        RMSE of every epoch at 2·10⁶ entries)."""
        from dlrl_kernels.ops import masked_residual_sparse as _mrs

        if rows.numel() and len(self.factors) > 1:
            be = _mrs.TABLE.resolve(self.config.backend, U.device, triton_ok=True, cuda_ok=True)[0]
            zeros = torch.zeros(rows.numel(), dtype=U.dtype, device=U.device)
            return _mrs.TABLE.load(be).sparse_residual(U.contiguous(), V.t().contiguous(), rows, cols, zeros)
        return (U[rows] * V.t()[cols]).sum(1)

    def _warm(self, rows_seen, cols_seen):
        """Entries whose row and column both had training data. mode="published" predicts
        every entry from the factors, as the published code does (measured on ML-100K's
        published split, 39 cold test ratings: 0.9433 as published, 0.9399 with the
        fallback)."""
        warm = rows_seen & cols_seen
        if self.config.mode == "published":
            # (not torch.broadcast_shapes: it imports torch's symbolic-shape machinery, ~1.3 s of a
            # `dlrl fit` process)
            return torch.ones_like(warm)
        return warm

    @torch.no_grad()
    def complete(self, max_entries=int(5e8)):
        """The dense completed matrix (refused above ``max_entries`` entries)."""
        m, n = self.config.shape
        if m * n > max_entries:
            raise ValueError(f"complete: the dense result has {m * n} entries, above max_entries={max_entries}; use predict()")
        U, V = self._collapsed()
        P = U @ V
        warm = self._warm(self.row_seen[:, None], self.col_seen[None, :])
        P = torch.where(warm, P, torch.zeros_like(P) if self.config.bias else self.train_mean.expand_as(P))
        if self.config.bias:
            P = P + self.mu + self.bu[:, None] + self.bi[None, :]
        if self.config.clip is not None:
            P = P.clamp(*self.config.clip)
        return P

    def _schatten_tensor(self, outs):
        with torch.no_grad():
            # all blocks' small Grams in one batched eigvalsh (they are d×d whatever m, n are)
            grams = torch.stack([o.t() @ o if o.shape[0] >= o.shape[1] else o @ o.t() for o in outs])
            lam = torch.linalg.eigvalsh(grams.double()).clamp_min(0)
            ps = torch.tensor(self.ps, dtype=torch.float64, device=lam.device)[:, None]
            return (lam ** (ps / 2)).sum()

    def schatten_sum(self, outs=None):
        """Σ_k ‖X̂_k‖_{S_pk}^{pk} (paper Figs. 9–10)."""
        outs = self.block_outputs() if outs is None else outs
        return float(self._schatten_tensor([o.detach() for o in outs]))

    # ------------------------------------------------------------------ training
    def fit(self, X=None, mask=None, rows=None, cols=None, values=None, val=None, epochs=None, lr=None,
            betas=None, weight_decay=None, patience=None, lr_factor=0.1, min_lr_ratio=1e-3, early_stopping=None,
            progress=True, resume=None, checkpoint=None, checkpoint_every=50, callback=None, track_schatten=False,
            threads=None, distributed="auto", tune="auto", force=False, sync_every=10):
        """Train W_k and η (and the biases) with Adam and a plateau schedule.

        Observations: dense ``X`` (NaN = missing, or with ``mask``) or ``rows, cols, values``
        (ids: integers, or whole-number floats; 1.9 is refused, never truncated), or a pandas
        DataFrame ``X`` with columns user / item / rating and any ids (mapped to sorted indices,
        kept in ``user_ids`` / ``item_ids``; predict by id with ``predict_ids``).
        ``val``: optional (rows, cols, values) used for validation RMSE and early stopping.
        Defaults follow the mode: published — 300 epochs, Adam(lr 0.01, betas (0.9, 0.92),
        weight_decay 0.15), plateau schedule (factor 0.1, patience 10) on the training loss,
        stop when lr < 1e-3·lr₀; paper — the same except weight decay 1.25e-4 per observed entry
        and patience 5. ``early_stopping``: stop after this many epochs without a better
        validation RMSE and return exactly the best-validation model (needs ``val``).

        Speed: the epoch runs without host syncs; the loss history stays on the device and is
        read every ``sync_every`` epochs (also where the stop rule and the loss's finiteness
        are checked: after the lr falls below the floor the remaining epochs up to that check
        are frozen — lr 0 — and dropped from the history, so the result equals stopping at
        once). ``val``, ``callback`` and ``refresh="carry"`` read every epoch.
        ``track_schatten``: record Σ‖X̂_k‖_{S_p}^p per epoch (an eigvalsh per epoch; off by default).

        Threads (``threads=None``): a fit sets torch's intra-op threads for its own duration
        (restored after): 1 thread below ``THREADS_MIN_NNZ`` (10⁶) observed entries, or when
        the machine has no idle core (1-minute load average + 1 > cores); else min(2, cores).
        Measured on the shared 2-core machine (load average ≈ 10, bias on, d = 20, ms per
        epoch, 1 vs 2 threads): 3·10⁴ entries 92 vs 849, 10⁵ 149 vs 2963, 4·10⁵ 251 vs 1286,
        10⁶ 577 vs 1811 — with busy neighbours, OpenMP's spin-waiting makes 2 threads 3–20×
        slower at every size, so a second thread is only used on an idle machine and large
        problems. ``threads=k`` overrides.

        Files: ``checkpoint``: written (atomically, every ``checkpoint_every`` epochs and at
        the end, by the main rank only); the path is checked before training: an existing file
        needs ``force=True`` unless it is the ``resume`` file. ``resume``: a checkpoint saved by
        ``save``/``checkpoint``; training continues exactly where it stopped (bit-exact against
        an uninterrupted run with the same dtype and threads). Ctrl-C: the epochs done are kept,
        a final checkpoint is written if one was asked for, ``stop_reason="interrupted"``,
        ``interrupted=True``, and the KeyboardInterrupt is raised again.

        ``refresh="carry"``: the state with the lowest training loss is kept; if the loss rose
        above it by the end, that state is restored with a warning.

        ``activation="auto"`` (model): resolved here from the training values — "none" when at
        least ``SIGNED_FRACTION`` (5 %) of them are negative and 5 % positive, else "relu";
        recorded in ``activation_used``.

        ``tune``: None/False — no search; True — ``dlrl.tuning.choose`` picks the constructor
        arguments the user did not fix on a validation part of these training entries, the
        model is rebuilt with them and fitted on all entries (report in ``tuning_report``);
        "auto" (default) — tune only in paper mode, when none of rank / weight_decay / bias /
        p / activation was given, no resume and no distributed run, and ``dlrl.tuning`` exists.

        ``distributed``: "auto"/True/False, see ``dlrl.distributed.context``; under torchrun
        the observed entries are sharded over the ranks and the per-data constants, gradients
        and loss are summed over them (``world_size`` records the count).

        Returns the history (one dict per epoch).
        """
        cfg = self.config
        m, n = cfg.shape
        given_fit = {k for k, v in (("epochs", epochs), ("lr", lr), ("betas", betas), ("weight_decay", weight_decay),
                                    ("patience", patience)) if v is not None}
        epochs = 300 if epochs is None else _int_arg(epochs, "epochs", lo=0)
        lr = 0.01 if lr is None else _float_arg(lr, "lr", lo=0.0, lo_open=True)
        if betas is None:
            betas = (0.9, 0.92)
        else:
            try:
                betas = tuple(float(b) for b in betas)
            except (TypeError, ValueError):
                raise ValueError(f"betas: expected two numbers in [0, 1), got {betas!r}") from None
            if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
                raise ValueError(f"betas: expected two numbers in [0, 1), got {betas!r}")
        if weight_decay is not None:
            weight_decay = _float_arg(weight_decay, "weight_decay", lo=0.0)
        if patience is not None:
            patience = _int_arg(patience, "patience", lo=0)
        lr_factor = _float_arg(lr_factor, "lr_factor", lo=0.0, lo_open=True)
        if lr_factor >= 1:
            raise ValueError(f"lr_factor: expected a number in (0, 1), got {lr_factor!r}")
        min_lr_ratio = _float_arg(min_lr_ratio, "min_lr_ratio", lo=0.0)
        if early_stopping is not None:
            early_stopping = _int_arg(early_stopping, "early_stopping", lo=1)
            if val is None:
                raise ValueError("early_stopping: expected a validation set val=(rows, cols, values) with it, got val=None")
        checkpoint_every = _int_arg(checkpoint_every, "checkpoint_every", lo=1)
        sync_every = _int_arg(sync_every, "sync_every", lo=1)
        if threads is not None:
            threads = _int_arg(threads, "threads", lo=1)
        if tune not in (None, True, False, "auto"):
            raise ValueError(f"tune: expected None, True, False or 'auto', got {tune!r}")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback: expected a callable, got {type(callback).__name__}")
        if _is_dataframe(X):
            X, rows, cols, values = self._from_dataframe(X, mask, rows, cols, values)
        obs = as_observations(X, mask, rows, cols, values, shape=cfg.shape)
        if obs.shape != cfg.shape:
            raise ValueError(f"X: expected shape {cfg.shape} (the model's), got {obs.shape}")
        val = self._check_val(val)
        state = None
        if resume is not None:
            state = _read_checkpoint(resume, "resume", map_location=self.device)
            self._check_compatible(state, resume)
        if checkpoint is not None:
            same = resume is not None and Path(resume).exists() and Path(resume).resolve() == Path(checkpoint).resolve()
            from ._io import check_output_path

            check_output_path(checkpoint, "checkpoint", force=bool(force) or same)

        ctx = None
        if distributed not in (None, False):
            try:
                from . import distributed as _dist
            except ImportError:
                _dist = None
            ctx = None if _dist is None else _dist.context(distributed)
        self.world_size = 1 if ctx is None else int(ctx.world_size)

        prev_threads = torch.get_num_threads()
        nthreads = threads if threads is not None else _threads_for(obs.nnz)
        torch.set_num_threads(nthreads)
        self.threads_used = nthreads
        try:
            if state is None and self._want_tune(tune, ctx):
                epochs, tuned_lr = self._tune(obs, epochs, given_fit, dict(lr=lr, betas=betas,
                                                                           weight_decay=weight_decay,
                                                                           patience=patience),
                                              epochs_given="epochs" in given_fit)
                if tuned_lr is not None:
                    lr = tuned_lr
            return self._fit_loop(obs, val, epochs, lr, betas, weight_decay, patience, lr_factor, min_lr_ratio,
                                  early_stopping, progress, state, checkpoint, checkpoint_every, callback,
                                  track_schatten, sync_every, ctx)
        finally:
            torch.set_num_threads(prev_threads)

    # .................................................................. fit helpers
    def _check_val(self, val):
        if val is None:
            return None
        m, n = self.config.shape
        try:
            vr, vc, vv = val
        except (TypeError, ValueError):
            raise ValueError("val: expected a (rows, cols, values) triple") from None
        vr = _index_tensor(vr, "val rows", m, device=self.device)
        vc = _index_tensor(vc, "val cols", n, device=self.device)
        vv = torch.as_tensor(vv, device=self.device).reshape(-1)
        if not vv.is_floating_point():
            vv = vv.double()
        if not (vr.numel() == vc.numel() == vv.numel()) or vr.numel() == 0:
            raise ValueError(f"val: expected non-empty rows, cols, values of one length, got {vr.numel()}, "
                             f"{vc.numel()}, {vv.numel()}")
        if not bool(torch.isfinite(vv).all()):
            raise ValueError("val: expected finite validation values (no NaN / inf)")
        return vr, vc, vv.to(self.dtype)

    def _check_compatible(self, state, path):
        saved = state["config"]
        mine = self.config.ctor_args()
        for k in ("shape", "rank", "blocks", "mode", "refresh", "bias", "dtype"):
            a, b = saved.get(k), mine.get(k)
            if k == "shape":
                a, b = tuple(a), tuple(b)
            if a != b:
                raise ValueError(f"resume: {path} holds a model with {k}={a!r}, this model has {k}={b!r}")

    def _want_tune(self, tune, ctx):
        if not tune:
            return False
        if tune == "auto":
            if ctx is not None or self.config.mode != "paper":
                return False
            if set(self.config.explicit) & set(TUNABLE):
                return False
            try:
                import importlib.util

                return importlib.util.find_spec("dlrl.tuning") is not None
            except (ImportError, ValueError):
                return False
        return True

    def _tune(self, obs, epochs, given_fit, fit_args, epochs_given):
        from . import tuning

        cfg_dict = self.config.ctor_args()
        for k in given_fit:
            cfg_dict[k] = fit_args.get(k, epochs if k == "epochs" else None)
        if epochs_given:
            cfg_dict["epochs"] = epochs
        explicit = set(self.config.explicit) | set(given_fit)
        extra = {}
        if hasattr(tuning, "RATINGS_FIT") and "lr" not in given_fit:
            extra["fit_defaults"] = dict(tuning.RATINGS_FIT)  # the fit settings the search was validated with
        if hasattr(tuning, "MIN_VAL"):
            extra["min_val"] = tuning.MIN_VAL  # pooled validation parts on small data
        if hasattr(tuning, "RATINGS_GRID"):
            extra["grid"] = tuning.RATINGS_GRID  # the grid fit_tuned / bench_accuracy validated (no blocks stage)
        res = tuning.choose(cfg_dict, obs.rows, obs.cols, obs.values, self.config.shape, explicit=explicit,
                            seed=self.config.seed, **extra)
        overrides = dict(res.get("overrides", {}))
        if overrides:
            self._reconfigure(**overrides)
        self.tuning_report = res.get("report")
        fk = res.get("fit_kwargs", {}) or {}
        if "epochs" in fk and not epochs_given:
            epochs = _int_arg(fk["epochs"], "epochs", lo=0)
        lr = fk.get("lr") if "lr" not in given_fit else None
        return epochs, (None if lr is None else _float_arg(lr, "lr", lo=0.0, lo_open=True))

    def _resolve_activation(self, pos_frac, neg_frac):
        if self.config.activation != "auto":
            self.activation_used = self.config.activation
        elif self.config.mode == "published":
            self.activation_used = "relu"
        else:
            signed = pos_frac >= SIGNED_FRACTION and neg_frac >= SIGNED_FRACTION
            self.activation_used = "none" if signed else "relu"
        return self.activation_used

    def _fit_loop(self, obs, val, epochs, lr, betas, weight_decay, patience, lr_factor, min_lr_ratio,
                  early_stopping, progress, state, checkpoint, checkpoint_every, callback, track_schatten,
                  sync_every, ctx):
        cfg = self.config
        m, n = cfg.shape
        dev, dt = self.device, self.dtype
        obs = obs.to(dev, dt)
        obs = ctx.shard(obs) if ctx is not None else obs.sorted()
        is_main = ctx is None or ctx.is_main
        # global statistics of the training entries (one reduction under data parallelism)
        v64 = obs.values.double()
        stats = torch.stack([v64.sum(), torch.tensor(float(obs.nnz), dtype=torch.float64, device=dev),
                             (v64 > 0).sum().double(), (v64 < 0).sum().double()])
        outside = torch.zeros((), dtype=torch.float64, device=dev)
        if cfg.clip is not None:
            lo, hi = cfg.clip
            outside = ((v64 < lo) | (v64 > hi)).sum().double()
        stats = torch.cat([stats, outside[None]])
        rc = torch.bincount(obs.rows, minlength=m)
        cc = torch.bincount(obs.cols, minlength=n)
        if ctx is not None:
            ctx.all_reduce_([stats, rc, cc])
        vsum, nnz_g, npos, nneg, nout = stats.tolist()
        nnz_g = int(nnz_g)
        if cfg.clip is not None and nout > 0:
            frac = nout / nnz_g
            msg = (f"clip: expected the training values inside {cfg.clip}, got {int(nout)} of {nnz_g} "
                   f"({100 * frac:.1f} %) outside (values in [{float(v64.min())}, {float(v64.max())}])")
            if frac > 0.05:
                raise ValueError(msg)
            import warnings

            warnings.warn(msg, stacklevel=3)
        if state is None:
            self._resolve_activation(npos / nnz_g, nneg / nnz_g)
        if weight_decay is None:
            weight_decay = cfg.weight_decay
        if weight_decay is None:
            # published: its 0.15. paper: an L2 weight per observed entry (the loss is a sum
            # over the observed entries, so the data term grows with nnz and so must this)
            weight_decay = 0.15 if cfg.mode == "published" else PAPER_WEIGHT_DECAY_PER_ENTRY * nnz_g
        if patience is None:
            patience = 10 if cfg.mode == "published" else PAPER_PATIENCE
        self.backend_used = _backend_name(cfg.backend, dev)

        # ------------------------------------------------ state: fresh or resumed
        t_start = time.perf_counter()
        start = 0
        best = {"rmse": float("inf"), "epoch": -1, "state": None, "prep": None}
        if state is not None:
            self.load_state_dict(state["model"])
            self.history = list(state["history"])
            self.activation_used = state.get("activation") or self.activation
            start = int(state["epoch"]) + 1
            self.fit_seconds = float(state.get("fit_seconds", 0.0))
            if state.get("best"):
                best = dict(state["best"])
            prep = state.get("prep")
            if prep is not None:
                self._prep = {k: v.to(dev) for k, v in prep.items()}
            else:
                self._prepare(obs, ctx)
        else:
            self.fit_seconds = 0.0
            self.history = []
            with torch.no_grad():
                self.row_seen.copy_(rc > 0)
                self.col_seen.copy_(cc > 0)
                self.train_mean.fill_(vsum / nnz_g)
                if cfg.bias:
                    self.mu.fill_(vsum / nnz_g)
        # fit time counts from here: the per-data preparation is part of the fit
        t0 = t_start - self.fit_seconds
        if state is None:
            self._prepare(obs, ctx)
            if cfg.mode == "paper" and cfg.scale_init:
                self._match_scale(obs, ctx)

        params = [p for p in self.parameters() if p.requires_grad]
        from .optim import FusedAdam, fused_supported

        fused = fused_supported(dev)
        if fused:  # torch's fused Adam kernel without torch.optim (see dlrl.optim: no dynamo import)
            opt = FusedAdam(params, lr=torch.tensor(lr, dtype=torch.float64, device=dev), betas=betas,
                            weight_decay=weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)
        # the native bookkeeping only with the native kernels (backend='reference' keeps torch throughout)
        sched = _Plateau(lr, lr_factor, patience, min_lr_ratio * lr, dev,
                         native=None if self.backend_used == "cpu" else False)
        if state is not None and state.get("optimizer") is not None:
            opt.load_state_dict(state["optimizer"])
            if state.get("scheduler") is not None:
                sched.load_state_dict(state["scheduler"])
        elif state is not None:
            import warnings

            warnings.warn(f"resume: {state.get('_path')} holds no optimiser state (an old checkpoint); training "
                          "continues with a fresh Adam state, so it is not an exact continuation", stacklevel=3)
        self._opt, self._sched = opt, sched
        adam_lr = opt.param_groups[0]["lr"]
        if fused:
            sched.apply(adam_lr)
        self._best = best
        self.stop_reason = "epochs"
        self.interrupted = False
        if start > 0 and bool(sched.stopped):
            self.stop_reason = "lr"
            return self.history

        carry = cfg.refresh == "carry"
        carry_best = {"loss": float("inf"), "epoch": -1, "state": None, "prep": None}
        if state is not None and state.get("carry_best"):
            carry_best = dict(state["carry_best"])
        self._carry_best = carry_best
        every_epoch = val is not None or callback is not None or carry
        pend = []
        snap = [p.detach().clone() for p in params]
        bar = _progress(range(start, epochs), progress)
        last = start - 1

        def flush():
            """Read the pending epochs' figures (one host sync), check them, extend the history."""
            nonlocal pend, snap
            if not pend:
                return None
            k = len(pend)
            # (a non-finite J is found here, in the figures read anyway: no per-epoch isfinite)
            figs = torch.cat([torch.stack([r[1] for r in pend]).double(), torch.stack([r[2] for r in pend]).double(),
                              torch.stack([r[3] for r in pend]),
                              *([torch.stack([r[4] for r in pend])] if track_schatten else [])]).tolist()
            J, eta, lrs = figs[:k], figs[k:2 * k], figs[2 * k:3 * k]
            sch = figs[3 * k:] if track_schatten else None
            recs, stop = [], None
            for i, r in enumerate(pend):
                if not math.isfinite(J[i]):
                    stop = ("nonfinite", r[0], J[i])
                    break
                rec = {"epoch": r[0], "train_loss": J[i], "eta": eta[i], "lr": lrs[i], "time": r[5]}
                if sch is not None:
                    rec["schatten"] = sch[i]
                recs.append(rec)
                if lrs[i] < min_lr_ratio * lr:
                    stop = ("lr", r[0], None)
                    break
            pend = []
            if stop is not None and stop[0] == "nonfinite":
                with torch.no_grad():
                    for p, s in zip(params, snap):
                        p.copy_(s)
                raise FloatingPointError(
                    f"training loss became {stop[2]} at epoch {stop[1]}; the model is left at epoch "
                    f"{self.history[-1]['epoch'] if self.history else 'none (initial state)'}; try a smaller lr, "
                    "mode='paper', or float64" + (" (mode='published': the elementwise power (S + st)^((p-2)/2) "
                                                   "hits negative entries of S = YᵀY, as in the published code)"
                                                   if cfg.mode == "published" else ""))
            self.history.extend(recs)
            snap = [p.detach().clone() for p in params]
            return stop

        plan = self._step_plan(obs)  # the autograd-free step's fixed parts (None: loss + backward)
        try:
            for epoch in bar:
                if carry and epoch > 0:
                    with torch.no_grad():
                        for k, o in enumerate(self.block_outputs()):
                            getattr(self, f"X{k}").copy_(o)
                    self._prepare(obs, ctx)
                opt.zero_grad(set_to_none=True)
                # the block outputs themselves are only needed to track the Schatten sum;
                # otherwise the loss builds (U, Vᵀ) in one block_chain node
                outs = self.block_outputs() if track_schatten else None
                J = self._manual_step(obs, nnz_g, plan) if plan is not None and outs is None else None
                if J is None:
                    J = self.loss(obs, outs, nnz=nnz_g)
                    J.backward()
                Jd = J.detach() if J.requires_grad else J  # (the autograd-free step's J has no graph)
                if ctx is not None:
                    Jd = Jd.clone()
                    ctx.all_reduce_([p.grad for p in params] + [Jd])
                if carry:
                    jv = float(Jd)
                    if jv < carry_best["loss"]:  # the state that gave this loss (before the step)
                        carry_best = {"loss": jv, "epoch": epoch, "state": _clone_state(self.state_dict()),
                                      "prep": {k: v.clone() for k, v in self._prep.items()}}
                        self._carry_best = carry_best
                opt.step()
                sched.step(Jd, adam_lr if fused else None)
                if not fused:
                    opt.param_groups[0]["lr"] = float(sched.lr)
                sch = self._schatten_tensor([o.detach() for o in outs]) if track_schatten else None
                pend.append((epoch, Jd, self._eta_value().detach(), sched.lr.clone(), sch,
                             time.perf_counter() - t0))
                last = epoch
                want_ck = checkpoint is not None and (epoch + 1) % checkpoint_every == 0
                if not (every_epoch or want_ck or (epoch + 1) % sync_every == 0 or epoch == epochs - 1):
                    continue
                stop = flush()
                rec = self.history[-1] if self.history else None
                if val is not None and rec is not None and rec["epoch"] == epoch:
                    rec["val_rmse"] = rmse(self.predict(val[0], val[1]), val[2])
                    if rec["val_rmse"] < best["rmse"]:
                        best = {"rmse": rec["val_rmse"], "epoch": epoch, "state": _clone_state(self.state_dict()),
                                "prep": {k: v.clone() for k, v in self._prep.items()}}
                        self._best = best
                if callback is not None and rec is not None and rec["epoch"] == epoch:
                    callback(rec)
                if hasattr(bar, "set_postfix") and rec is not None:
                    bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in rec.items()
                                     if k in ("train_loss", "val_rmse", "eta")})
                self.fit_seconds = time.perf_counter() - t0
                if want_ck and is_main and stop is None:
                    self.save(checkpoint)
                if stop is not None:
                    self.stop_reason = "lr"
                    break
                if early_stopping is not None and epoch - best["epoch"] >= early_stopping:
                    self.stop_reason = "early_stopping"
                    break
        except KeyboardInterrupt:
            pend = [r for r in pend if r[0] <= last]
            try:
                if pend:
                    flush()
            except FloatingPointError:
                pass
            self.fit_seconds = time.perf_counter() - t0
            self.stop_reason = "interrupted"
            self.interrupted = True
            if checkpoint is not None and is_main:
                self.save(checkpoint)
            raise
        self.fit_seconds = time.perf_counter() - t0
        if checkpoint is not None and is_main:
            # the training state of the last epoch (before any best-state restore below), so
            # that resuming from it continues this run exactly
            self.save(checkpoint)
        if early_stopping is not None and best["state"] is not None:
            self._restore(best)
        if carry and early_stopping is None and carry_best["state"] is not None and self.history:
            final = self.history[-1]["train_loss"]
            # the loss of the state after the last step is not known (it is the next epoch's),
            # so the state returned is always the one whose loss is the lowest recorded (when
            # that is the last epoch, its step is undone: a seed-dependent test caught the
            # returned state not matching any recorded loss)
            self._restore(carry_best)
            if final > carry_best["loss"]:
                if final > 1.1 * carry_best["loss"]:
                    import warnings

                    warnings.warn(f"refresh='carry': the training loss rose from {carry_best['loss']:.6g} (epoch "
                                  f"{carry_best['epoch']}) to {final:.6g} (epoch {self.history[-1]['epoch']}); "
                                  f"the state of epoch {carry_best['epoch']} is kept", stacklevel=3)
                self.stop_reason = "carry_best"
        return self.history

    @torch.no_grad()
    def _restore(self, snap):
        self.load_state_dict(snap["state"])
        self._prep = {k: v.clone() for k, v in snap["prep"].items()}

    @torch.no_grad()
    def _match_scale(self, obs: Observations, ctx=None):
        """Scale the outer weights so that the initial product fits the data's scale.

        Each X̂_k = act(W_k M_k) is positively homogeneous in W_k, so multiplying W_1 and W_I
        by √α multiplies the prediction by α; α is the least-squares scalar of the initial
        predictions against the targets on the observed entries. Without it the normalised
        blocks start orders of magnitude below the ratings and Adam spends the first hundred
        epochs (and the plateau schedule its patience) just growing the scale.
        """
        outs = self.block_outputs()
        e = dk.masked_residual_sparse(outs, obs.rows, obs.cols, torch.zeros_like(obs.values),
                                      backend=self.config.backend, pattern=obs.pattern)
        target = obs.values - (self.mu + self.bu[obs.rows] + self.bi[obs.cols]) if self.config.bias else obs.values
        dots = torch.stack([torch.dot(e, e), torch.dot(e, target)]).double()
        if ctx is not None:
            ctx.all_reduce_([dots])
        pp, pt = dots.tolist()
        alpha = pt / pp if pp > 0 else 0.0
        if alpha > 0 and math.isfinite(alpha):
            self.W[0].mul_(math.sqrt(alpha))
            self.W[-1].mul_(math.sqrt(alpha))

    # ------------------------------------------------------------------ persistence
    def save(self, path, optimizer=None, scheduler=None, epoch=None, best=None):
        """An atomic checkpoint: config, weights and factors, the per-data constants, the
        optimiser and schedule state of the last fit, the history and the best-validation
        state — everything ``fit(resume=path)`` needs to continue exactly."""
        from ._io import atomic_torch_save

        opt = optimizer if optimizer is not None else self._opt
        sched = scheduler if scheduler is not None else self._sched
        best = best if best is not None else self._best
        atomic_torch_save({
            "format": CHECKPOINT_FORMAT,
            "version": 2,
            "config": {**self.config.ctor_args(), "explicit": list(self.config.explicit)},
            "model": self.state_dict(),
            "optimizer": None if opt is None else opt.state_dict(),
            "scheduler": None if sched is None else (sched.state_dict() if hasattr(sched, "state_dict") else None),
            "epoch": (self.history[-1]["epoch"] if self.history else -1) if epoch is None else int(epoch),
            "history": self.history,
            "best": best,
            "carry_best": getattr(self, "_carry_best", None),  # refresh="carry": its lowest-loss state
            "fit_seconds": self.fit_seconds,
            "prep": self._prep,  # per-data constants: exact resume, and a loaded model predicts at once
            "activation": self.activation_used,
            "stop_reason": self.stop_reason,
            "world_size": self.world_size,
            "tuning_report": _plain(self.tuning_report),
            "ids": _ids_payload(getattr(self, "user_ids", None), getattr(self, "item_ids", None)),
        }, path)
        return path

    @classmethod
    def load(cls, path, device=None):
        """A model from ``save``/``checkpoint`` (a clear ValueError naming the file if it is
        missing, truncated, not a checkpoint or not a DLRL one)."""
        state = _read_checkpoint(path, "path", map_location=device or "cpu")
        cfg = dict(state["config"])
        explicit = tuple(cfg.pop("explicit", ()) or ())
        extra = cfg.pop("extra", None) or {}  # version 1 checkpoints
        for k in ("scale_init", "dense"):
            if k in extra:
                cfg[k] = extra[k]
        shape = cfg.pop("shape")
        model = cls.__new__(cls)
        nn.Module.__init__(model)
        try:
            model._build(shape, {**_CTOR_DEFAULTS, **cfg}, explicit)
            model.load_state_dict(state["model"])
        except (TypeError, ValueError, RuntimeError, KeyError) as err:
            raise ValueError(f"path: {path} is not a usable DLRL checkpoint ({err})") from None
        model.history = list(state.get("history") or [])
        model.fit_seconds = float(state.get("fit_seconds", 0.0) or 0.0)
        model._prep = state.get("prep")
        model.activation_used = state.get("activation") or model.activation_used
        model.stop_reason = state.get("stop_reason")
        model.world_size = state.get("world_size", 1)
        model.tuning_report = state.get("tuning_report")
        model._best = state.get("best")
        ids = state.get("ids")
        if ids:
            import numpy as np

            model.user_ids, model.item_ids = np.asarray(ids["user"]), np.asarray(ids["item"])
        if device is not None:
            model.to(device)
        return model

    def prepare(self, X=None, mask=None, rows=None, cols=None, values=None):
        """Compute the per-data constants without training (for a loaded model's predict)."""
        obs = as_observations(X, mask, rows, cols, values, shape=self.config.shape).to(self.device, self.dtype)
        if self.activation_used is None:
            v = obs.values
            self._resolve_activation(float((v > 0).double().mean()), float((v < 0).double().mean()))
        self._prepare(obs)
        return self


CHECKPOINT_FORMAT = "dlrl-checkpoint"
_RAW_OPS: dict = {}


@dk_dispatch.constant_result
def _raw_op(name, n_args):
    """Whether ``torch.ops.dlrl.<name>`` is registered with the signature the model calls it
    with (checked once); otherwise the model uses the public ``dk`` wrapper. A constant for
    torch.compile (evaluated at trace time: a fit that never called ``loss`` — the autograd-free
    step — leaves the check to the first traced call)."""
    if name not in _RAW_OPS:
        ok = False
        try:
            import dlrl_kernels.ops.masked_residual_sparse  # noqa: F401  (registers the ops)
            import dlrl_kernels.ops.pinv  # noqa: F401
            from dlrl_kernels.ops import masked_residual_sparse as _mrs, pinv as _pinv

            schema = getattr(torch.ops.dlrl, name).default._schema
            ok = len(schema.arguments) == n_args and hasattr(_mrs, "TABLE_LOSS") and hasattr(_pinv, "TABLE")
        except (ImportError, AttributeError, RuntimeError):
            ok = False
        _RAW_OPS[name] = ok
    return _RAW_OPS[name]
_CHECKPOINT_KEYS = ("config", "model", "history", "epoch")


def _read_checkpoint(path, name, map_location="cpu"):
    """Load and check a DLRL checkpoint; every failure is a ValueError naming the file."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{name}: {path} does not exist")
    if p.is_dir():
        raise ValueError(f"{name}: {path} is a folder, expected a checkpoint file")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated zip, garbage, foreign pickle: one clear message
        raise ValueError(f"{name}: {path} is not a readable DLRL checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200] if str(err) else 'no detail'})") from None
    if not isinstance(state, dict) or any(k not in state for k in _CHECKPOINT_KEYS):
        keys = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{name}: {path} is not a DLRL checkpoint (expected the keys {list(_CHECKPOINT_KEYS)}, "
                         f"got {keys})")
    if not isinstance(state["config"], dict) or "shape" not in state["config"]:
        raise ValueError(f"{name}: {path} is not a DLRL checkpoint (no model configuration)")
    state["_path"] = str(path)
    return state


def _plain(obj):
    """Plain Python data (what a weights_only checkpoint may hold): numpy scalars and other
    numbers become float/int, unknown objects their str."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_plain(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    try:
        f = float(obj)
        return int(f) if f.is_integer() and "int" in type(obj).__name__ else f
    except (TypeError, ValueError):
        return str(obj)


def _is_dataframe(X):
    return X is not None and type(X).__name__ == "DataFrame" and hasattr(X, "columns")


def _ids_payload(user_ids, item_ids):
    """The id maps as plain lists (a weights_only checkpoint holds no numpy objects); ids that
    are not ints / floats / strings are kept as their str."""
    if user_ids is None or item_ids is None:
        return None

    def plain(a):
        return [x.item() if hasattr(x, "item") else (x if isinstance(x, (int, float, str)) else str(x)) for x in a]

    return {"user": plain(user_ids), "item": plain(item_ids)}


def _clone_state(sd):
    return {k: v.detach().clone() for k, v in sd.items()}


class _Plateau:
    """``ReduceLROnPlateau(mode="min", threshold=1e-4 relative, cooldown=0)`` kept on the
    device (no host sync per epoch), plus the stop rule lr < ``min_lr``.

    Same decisions as torch's scheduler: an epoch is better when J < best·(1 − 1e-4); after
    more than ``patience`` epochs without one the lr is multiplied by ``factor`` (if that
    changes it by more than 1e-8) and the count restarts.

    On the CPU (``native``: by default when the native kernels are available) one epoch is one
    C call on the state tensors, in place (``dlrl_kernels.cpu.plateau_step``) instead of ~20 ops
    on 0-d tensors; elsewhere the torch code below, its twin (``tests/test_optim.py`` holds the
    two to the same decisions).
    """

    def __init__(self, lr, factor, patience, min_lr, device, native=None):
        f64 = dict(dtype=torch.float64, device=device)
        self.lr = torch.tensor(float(lr), **f64)
        self.best = torch.tensor(float("inf"), **f64)
        self.bad = torch.zeros((), dtype=torch.int64, device=device)
        self.stopped = torch.zeros((), dtype=torch.bool, device=device)
        self.factor, self.patience, self.min_lr = float(factor), int(patience), float(min_lr)
        if native is None:
            native = self.lr.is_cpu and dk_dispatch.native_status()[0]
        self.native = bool(native)

    def step(self, J, adam_lr=None):
        """One epoch with loss J (0-d); ``adam_lr`` (0-d float64 or None) receives the lr Adam
        should use: the schedule's, 0 once stopped."""
        if self.native and J.is_cpu:
            from dlrl_kernels import cpu

            cpu.plateau_step(J, self.lr, self.best, self.bad, self.stopped, self.factor, self.patience, self.min_lr,
                             adam_lr)
            return
        J = J.double()
        better = J < self.best * (1.0 - 1e-4)
        self.best = torch.where(better, J, self.best)
        bad = torch.where(better, torch.zeros_like(self.bad), self.bad + 1)
        reduce = bad > self.patience
        new = self.lr * self.factor
        self.lr = torch.where(reduce & (self.lr - new > 1e-8), new, self.lr)
        self.bad = torch.where(reduce, torch.zeros_like(bad), bad)
        self.stopped = self.stopped | (self.lr < self.min_lr)
        if adam_lr is not None:
            self.apply(adam_lr)

    def apply(self, adam_lr):
        """adam_lr ← the lr Adam should use (0 once stopped), on the device."""
        adam_lr.copy_(torch.where(self.stopped, torch.zeros_like(self.lr), self.lr))

    def state_dict(self):
        return {"lr": self.lr.clone(), "best": self.best.clone(), "bad": self.bad.clone(),
                "stopped": self.stopped.clone(), "factor": self.factor, "patience": self.patience,
                "min_lr": self.min_lr}

    def load_state_dict(self, sd):
        # copies of the right dtypes: the native step writes the state in place
        dev = self.lr.device
        self.lr = sd["lr"].to(dev, torch.float64).clone().reshape(())
        self.best = sd["best"].to(dev, torch.float64).clone().reshape(())
        self.bad = sd["bad"].to(dev, torch.int64).clone().reshape(())
        self.stopped = sd["stopped"].to(dev, torch.bool).clone().reshape(())


def _threads_for(nnz):
    """Intra-op threads for a fit with ``nnz`` observed entries (see ``DLRL.fit``): one thread
    below ``THREADS_MIN_NNZ`` entries, and also above it when the machine has no idle core
    (1-minute load average + 1 > cores), where OpenMP's spin-waiting threads fight the other
    processes; else min(2, cores)."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if nnz < THREADS_MIN_NNZ or cores < 2:
        return 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return 1 if load + 1 > cores else min(2, cores)


def _backend_name(backend, device):
    from dlrl_kernels import _dispatch

    from dlrl_kernels.ops import masked_residual_sparse as _mrs

    return _mrs.TABLE_LOSS.resolve(backend, torch.device(device), triton_ok=True, cuda_ok=True)[0]


def _progress(it, enabled):
    if not enabled:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return it
    return tqdm(it, desc="DLRL", unit="epoch", leave=False)
