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

Factor refresh: ``"fixed"`` (published: X_k never change) or ``"carry"`` (X_k ← detached X̂_k
after each epoch). With ``"fixed"``, X_k, ∇_k and L_k are constants, so
S_k(η) = X_kᵀX_k ∓ t (X_kᵀ∇_k + ∇_kᵀX_k) + t² ∇_kᵀ∇_k, t = 1/(ηL_k): three d×d matrices are
precomputed and each epoch touches no m×d or n×d data before the W products.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import torch
from torch import nn

import dlrl_kernels as dk

from .metrics import rmse

MODES = ("paper", "published")

#: paper mode's default Adam weight decay per observed entry (1.25e-4 · 80 000 = 10 on ML-100K)
PAPER_WEIGHT_DECAY_PER_ENTRY = 1.25e-4
#: paper mode's plateau patience (published: 10)
PAPER_PATIENCE = 5
#: the documented configuration that beats SVD++ on ML-100K (README "Results")
PAPER_BEST = dict(mode="paper", bias=True, clip=(1.0, 5.0), weight_decay=20.0)
REFRESH = ("fixed", "carry")


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
        return Observations(pat.rows, pat.cols, self.values[pat.order], self.shape, self.X, pat)


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
        r, c = obs.nonzero(as_tuple=True)
        if r.numel() == 0:
            raise ValueError("X: expected at least one observed entry, got none")
        Xn = torch.where(obs, X, torch.full_like(X, float("nan")))
        return Observations(r, c, X[r, c], tuple(X.shape), Xn)
    if rows is None or cols is None or values is None:
        raise ValueError("rows/cols/values: expected all three (or a dense X), got a partial set")
    rows, cols, values = torch.as_tensor(rows), torch.as_tensor(cols), torch.as_tensor(values)
    if shape is None:
        raise ValueError("shape: expected (n_rows, n_cols) with sparse observations, got None")
    if rows.numel() == 0:
        raise ValueError("values: expected at least one observed entry, got none")
    if not values.is_floating_point():
        values = values.double()
    if torch.isnan(values).any():
        raise ValueError("values: expected no NaN")
    m, n = shape
    if int(rows.min()) < 0 or int(rows.max()) >= m:
        raise ValueError(f"rows: expected indices in [0, {m}), got range [{int(rows.min())}, {int(rows.max())}]")
    if int(cols.min()) < 0 or int(cols.max()) >= n:
        raise ValueError(f"cols: expected indices in [0, {n}), got range [{int(cols.min())}, {int(cols.max())}]")
    return Observations(rows.long(), cols.long(), values, (int(m), int(n)))


# ----------------------------------------------------------------------------- config
@dataclass
class DLRLConfig:
    shape: tuple
    rank: int = 20
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
    normalize: str = "spectral"  # paper mode: how S^a is made scale-free (see _normalize)
    weight_decay: Optional[float] = None  # Adam L2; None: the mode's default (see fit)
    extra: dict = field(default_factory=dict)

    def p_list(self):
        ps = list(self.p) if isinstance(self.p, (list, tuple)) else [float(self.p)]
        if len(ps) == 1:
            ps = ps * self.blocks
        if len(ps) != self.blocks:
            raise ValueError(f"p: expected 1 or {self.blocks} exponents (one per block), got {len(ps)}")
        for v in ps:
            if not 0 < v <= 2:
                raise ValueError(f"p: expected every block exponent in (0, 2], got {v}")
        return ps


def _dtype(name):
    return {"float32": torch.float32, "float64": torch.float64}[name]


# ----------------------------------------------------------------------------- model
class DLRL(nn.Module):
    """Differentiable low-rank learning for matrix completion.

    >>> model = DLRL((943, 1682), rank=20, blocks=5)            # doctest: +SKIP
    >>> hist = model.fit(rows=r, cols=c, values=v)               # doctest: +SKIP
    >>> model.predict(r_test, c_test)                            # doctest: +SKIP
    """

    def __init__(self, shape, rank=20, blocks=5, p=1.0, mode="paper", refresh="fixed", bias=False,
                 clip=None, eta0=0.1, init="auto", loss="sum", method="auto", backend="auto",
                 dtype="float32", seed=0, normalize="spectral", weight_decay=None, device=None, **extra):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if refresh not in REFRESH:
            raise ValueError(f"refresh: expected one of {REFRESH}, got {refresh!r}")
        if int(rank) < 1:
            raise ValueError(f"rank: expected a positive integer, got {rank}")
        if int(blocks) < 2:
            raise ValueError(f"blocks: expected at least 2 blocks (X_1 m×d … X_I d×n), got {blocks}")
        if loss not in ("sum", "mean"):
            raise ValueError(f"loss: expected 'sum' or 'mean', got {loss!r}")
        if isinstance(dtype, torch.dtype):
            dtype = {torch.float32: "float32", torch.float64: "float64"}[dtype]
        self.config = DLRLConfig(tuple(int(s) for s in shape), int(rank), int(blocks),
                                 tuple(p) if isinstance(p, (list, tuple)) else (float(p),),
                                 mode, refresh, bool(bias), tuple(clip) if clip else None, float(eta0),
                                 init, loss, method, backend, dtype, int(seed), normalize,
                                 None if weight_decay is None else float(weight_decay), dict(extra))
        _normalize(torch.eye(2), normalize)  # validates the name
        self.ps = self.config.p_list()
        dt = _dtype(dtype)
        m, n = self.config.shape
        d = self.config.rank
        g = torch.Generator().manual_seed(self.config.seed)
        shapes = [(m, d)] + [(d, d)] * (blocks - 2) + [(d, n)]
        init_kind = ("published" if mode == "published" else "signed") if init == "auto" else init
        Xs, Ws = [], []
        if init_kind not in ("published", "scaled", "signed"):
            raise ValueError(f"init: expected 'auto', 'published', 'scaled' or 'signed', got {init!r}")
        for k, (r, c) in enumerate(shapes):
            if 0 < k < blocks - 1:
                Xs.append(torch.eye(d, dtype=dt))
                Ws.append(torch.eye(d, dtype=dt))
            elif init_kind == "signed":
                # zero-mean factors: S_k = Y_kᵀY_k is well conditioned (≈ (m/d)·I), so Adam on W_k
                # is not slowed down by the one dominant all-ones direction positive factors give
                Xs.append(torch.randn(r, c, generator=g, dtype=dt) / math.sqrt(d))
                Ws.append(torch.rand(r, c, generator=g, dtype=dt) / math.sqrt(d))
            elif init_kind == "published":
                Xs.append(torch.rand(r, c, generator=g, dtype=dt))
                Ws.append(torch.rand(r, c, generator=g, dtype=dt))
            else:
                # small positive factors whose product has entries of order one
                Xs.append(torch.rand(r, c, generator=g, dtype=dt) / math.sqrt(d))
                Ws.append(torch.rand(r, c, generator=g, dtype=dt) / math.sqrt(d))
        for k, X in enumerate(Xs):
            self.register_buffer(f"X{k}", X)
        self.W = nn.ParameterList([nn.Parameter(w) for w in Ws])
        self.eta = nn.Parameter(torch.tensor(float(eta0), dtype=dt))
        self.mu = nn.Parameter(torch.zeros((), dtype=dt), requires_grad=bool(bias))
        self.bu = nn.Parameter(torch.zeros(m, dtype=dt), requires_grad=bool(bias))
        self.bi = nn.Parameter(torch.zeros(n, dtype=dt), requires_grad=bool(bias))
        # cold start: rows / columns with no training entry get no factor term (their W rows
        # never saw data); they are predicted from the biases, or from the training mean
        self.register_buffer("row_seen", torch.ones(m, dtype=torch.bool))
        self.register_buffer("col_seen", torch.ones(n, dtype=torch.bool))
        self.register_buffer("train_mean", torch.zeros((), dtype=dt))
        self._prep = None
        self.history: list = []
        self.fit_seconds = 0.0
        self.backend_used = None
        if device is not None:
            self.to(device)

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

    # ------------------------------------------------------------------ per-data constants
    def _baseline(self, obs: Observations):
        if not self.config.bias:
            return None
        return self.mu + self.bu[obs.rows] + self.bi[obs.cols]

    @torch.no_grad()
    def _prepare(self, obs: Observations):
        """∇_k, L_k and the three d×d pieces of S_k(η) for the current factors (constants).

        Y_k = X_k + t_k ∇_k with t_k = c_k/η, so S_k = Y_kᵀY_k = G0 + t_k G1 + t_k² G2 with
        G0 = X_kᵀX_k, G1 = X_kᵀ∇_k + ∇_kᵀX_k, G2 = ∇_kᵀ∇_k (short side). Stacked over the
        blocks ([I, d, d]) so that each epoch runs one batched power / pseudo-inverse.
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
        E = torch.sparse_csr_tensor(pat.crow, pat.cols, e, (m, n), check_invariants=False)
        grads = dk.chain_grad(Xs, E)
        pre, suf = dk.chain_products(Xs)
        sign = 1.0 if cfg.mode == "published" else -1.0  # published steps *up* the loss
        G0, G1, G2, c, Ls = [], [], [], [], []
        for k in range(cfg.blocks):
            if cfg.mode == "published":
                na = 1.0 if pre[k] is None else max(math.sqrt(float(dk.spectral_norm_sq(pre[k], method="eigh"))), 1e-4)
                nb = 1.0 if suf[k] is None else max(math.sqrt(float(dk.spectral_norm_sq(suf[k], method="eigh"))), 1e-4)
                L = (na * nb) ** 2
            else:
                la = 1.0 if pre[k] is None else float(dk.spectral_norm_sq(pre[k], method="eigh"))
                lb = 1.0 if suf[k] is None else float(dk.spectral_norm_sq(suf[k], method="eigh"))
                L = max(la * lb, 1e-8)
            X, G = Xs[k], grads[k]
            if G.layout != torch.strided:
                G = G.to_dense()
            if self._transposed(k):
                X, G = X.t(), G.t()
            XtG = X.t() @ G
            G0.append(X.t() @ X)
            G1.append(XtG + XtG.t())
            G2.append(G.t() @ G)
            c.append(sign / L)
            Ls.append(L)
        prep = {"G0": torch.stack(G0), "G1": torch.stack(G1), "G2": torch.stack(G2),
                "c": torch.tensor(c, dtype=self.dtype, device=self.device), "L": Ls}
        self._prep = prep
        return prep

    # ------------------------------------------------------------------ forward
    def _eta_value(self):
        # published: clamp to [0, 1] in the forward pass; paper: projected into (0, 1]
        lo = 0.0 if self.config.mode == "published" else 1e-3
        return self.eta.clamp(lo, 1.0)

    def _exponents(self):
        if getattr(self, "_expo", None) is None or self._expo.device != self.device:
            ps = torch.tensor(self.ps, dtype=self.dtype, device=self.device)
            self._expo = ((ps - 2.0) / 2.0)[:, None, None]  # published: elementwise (p−2)/2
        return self._expo

    def block_operators(self, prep=None):
        """The d×d right factors M_k of every block, stacked: X̂_k = ReLU(W_k M_k) (short side).

        paper: M_k = S_k^{(2−p_k)/2} / ‖S_k^{(2−p_k)/2}‖_F (Eq. 23's ½ W G⁺ up to a scale W absorbs);
        published: M_k = ½ pinv(½ (S_k + st)^{∘(p_k−2)/2}) with the elementwise power.
        """
        cfg = self.config
        prep = self._prep if prep is None else prep
        if prep is None:
            raise RuntimeError("block_outputs: call fit() (or prepare()) first: the factors' gradients are not known yet")
        t = (prep["c"] / self._eta_value())[:, None, None]
        S = prep["G0"] + t * prep["G1"] + (t * t) * prep["G2"]
        if cfg.mode == "published":
            st = 0.002 * S.diagonal(dim1=-2, dim2=-1).abs().amax(-1)
            G = 0.5 * torch.pow(S + st[:, None, None], self._exponents())
            if not bool(torch.isfinite(G).all()):
                raise FloatingPointError(
                    "mode='published': the elementwise power (S + st)^((p-2)/2) hit a negative entry of "
                    "S = YᵀY (the published code has the same failure); use mode='paper' (true matrix power)"
                )
            return 0.5 * dk.pinv(G, method="svd")
        groups = {}
        for k, p in enumerate(self.ps):
            groups.setdefault((2.0 - p) / 2.0, []).append(k)
        if len(groups) == 1:
            a = next(iter(groups))
            P = dk.spd_power(S, a, method=cfg.method, backend=cfg.backend)
        else:
            parts = [None] * cfg.blocks
            for a, ks in groups.items():
                Pa = dk.spd_power(S[ks], a, method=cfg.method, backend=cfg.backend)
                for j, k in enumerate(ks):
                    parts[k] = Pa[j]
            P = torch.stack(parts)
        return _normalize(P, cfg.normalize)

    def block_outputs(self, prep=None):
        """[X̂_1, …, X̂_I] for the current W, η (differentiable)."""
        M = self.block_operators(prep)
        outs = []
        for k in range(self.config.blocks):
            if self._transposed(k):
                outs.append(torch.relu(self.W[k].t() @ M[k]).t())
            else:
                outs.append(torch.relu(self.W[k] @ M[k]))
        return outs

    def forward(self, obs: Observations):
        """The training loss J on ``obs`` (an :class:`Observations`, ``.sorted()`` for speed)."""
        return self.loss(obs)

    def _residual(self, outs, obs: Observations):
        target = obs.values
        be = self.config.backend
        if not self.config.bias:
            return dk.masked_residual_sparse(outs, obs.rows, obs.cols, target, backend=be, pattern=obs.pattern)
        e = dk.masked_residual_sparse(outs, obs.rows, obs.cols, target, backend=be, pattern=obs.pattern)
        # the biases enter the residual directly (the op does not differentiate its values)
        return e + (self.mu + self.bu[obs.rows] + self.bi[obs.cols])

    def loss(self, obs: Observations, outs=None):
        """Training loss J (Eq. 26): ½‖P_Ω(X̂ − X)‖² ("sum") or its per-entry mean."""
        outs = self.block_outputs() if outs is None else outs
        if not self.config.bias and obs.X is not None and self.config.extra.get("dense", False):
            J = dk.masked_loss(outs, obs.X, backend=self.config.backend)
        elif not self.config.bias:
            J = dk.masked_loss_sparse(outs, obs.rows, obs.cols, obs.values, backend=self.config.backend,
                                      pattern=obs.pattern)
        else:
            e = self._residual(outs, obs)
            J = 0.5 * (e * e).sum()
        return J / obs.nnz if self.config.loss == "mean" else J

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def _collapsed(self):
        outs = self.block_outputs()
        U = outs[0]
        for M in outs[1:-1]:
            U = U @ M
        return U, outs[-1]

    @torch.no_grad()
    def predict(self, rows, cols):
        """Predicted entries at (rows, cols); biases added and clipped if configured."""
        rows = torch.as_tensor(rows, device=self.device).long()
        cols = torch.as_tensor(cols, device=self.device).long()
        m, n = self.config.shape
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= m):
            raise ValueError(f"rows: expected indices in [0, {m}), got range [{int(rows.min())}, {int(rows.max())}]")
        if cols.numel() and (int(cols.min()) < 0 or int(cols.max()) >= n):
            raise ValueError(f"cols: expected indices in [0, {n}), got range [{int(cols.min())}, {int(cols.max())}]")
        U, V = self._collapsed()
        pred = (U[rows] * V.t()[cols]).sum(1)
        warm = self._warm(self.row_seen[rows], self.col_seen[cols])
        if self.config.bias:
            pred = torch.where(warm, pred, torch.zeros_like(pred)) + self.mu + self.bu[rows] + self.bi[cols]
        else:
            pred = torch.where(warm, pred, self.train_mean.expand_as(pred))
        if self.config.clip is not None:
            pred = pred.clamp(*self.config.clip)
        return pred

    def _warm(self, rows_seen, cols_seen):
        """Entries whose row and column both had training data. mode="published" predicts
        every entry from the factors, as the published code does (measured on ML-100K's
        published split, 39 cold test ratings: 0.9433 as published, 0.9399 with the
        fallback)."""
        if self.config.mode == "published":
            return torch.ones(torch.broadcast_shapes(rows_seen.shape, cols_seen.shape), dtype=torch.bool,
                              device=rows_seen.device)
        return rows_seen & cols_seen

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

    def schatten_sum(self, outs=None):
        """Σ_k ‖X̂_k‖_{S_pk}^{pk} (paper Figs. 9–10)."""
        with torch.no_grad():
            outs = self.block_outputs() if outs is None else outs
            # all blocks' small Grams in one batched eigvalsh (they are d×d whatever m, n are)
            grams = torch.stack([o.t() @ o if o.shape[0] >= o.shape[1] else o @ o.t() for o in outs])
            lam = torch.linalg.eigvalsh(grams.double()).clamp_min(0)
            ps = torch.tensor(self.ps, dtype=torch.float64, device=lam.device)[:, None]
            return float((lam ** (ps / 2)).sum())

    # ------------------------------------------------------------------ training
    def fit(self, X=None, mask=None, rows=None, cols=None, values=None, val=None, epochs=None, lr=None,
            betas=None, weight_decay=None, patience=None, lr_factor=0.1, min_lr_ratio=1e-3, early_stopping=None,
            progress=True, resume=None, checkpoint=None, checkpoint_every=50, callback=None, track_schatten=True):
        """Train W_k and η (and the biases) with Adam and a plateau schedule.

        Observations: dense ``X`` (NaN = missing, or with ``mask``) or ``rows, cols, values``.
        ``val``: optional (rows, cols, values) used for validation RMSE and early stopping.
        Defaults follow the mode: published — 300 epochs, Adam(lr 0.01, betas (0.9, 0.92),
        weight_decay 0.15), ReduceLROnPlateau(factor 0.1, patience 10) on the training loss,
        stop when lr < 1e-3·lr₀; paper — the same unless given. ``early_stopping``: stop after
        this many epochs without a better validation RMSE and restore the best weights.
        ``resume``: a checkpoint path saved by ``save``/``checkpoint``; training continues
        exactly where it stopped. Returns the history (one dict per epoch).
        """
        obs = as_observations(X, mask, rows, cols, values, shape=self.config.shape)
        if obs.shape != self.config.shape:
            raise ValueError(f"X: expected shape {self.config.shape} (the model's), got {obs.shape}")
        obs = obs.to(self.device, self.dtype).sorted()
        if val is not None:
            vr, vc, vv = (torch.as_tensor(t, device=self.device) for t in val)
            val = (vr.long(), vc.long(), vv.to(self.dtype))
        epochs = 300 if epochs is None else int(epochs)
        lr = 0.01 if lr is None else float(lr)
        betas = (0.9, 0.92) if betas is None else tuple(betas)
        if weight_decay is None:
            weight_decay = self.config.weight_decay
        if weight_decay is None:
            # published: its 0.15. paper: an L2 weight per observed entry (the loss is a sum
            # over the observed entries, so the data term grows with nnz and so must this)
            weight_decay = 0.15 if self.config.mode == "published" else PAPER_WEIGHT_DECAY_PER_ENTRY * obs.nnz
        weight_decay = float(weight_decay)
        if patience is None:
            patience = 10 if self.config.mode == "published" else PAPER_PATIENCE
        patience = int(patience)
        state = None
        if resume is not None:
            state = torch.load(resume, map_location=self.device, weights_only=False)
            self.load_state_dict(state["model"])
            self.history = state["history"]
        if state is None:
            with torch.no_grad():
                m, n = self.config.shape
                self.row_seen.copy_(torch.bincount(obs.rows, minlength=m) > 0)
                self.col_seen.copy_(torch.bincount(obs.cols, minlength=n) > 0)
                self.train_mean.fill_(obs.values.mean())
                if self.config.bias:
                    self.mu.fill_(obs.values.mean())
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=lr_factor, patience=patience)
        start = 0
        best = {"rmse": float("inf"), "state": None, "epoch": -1}
        if state is not None:
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            start = state["epoch"] + 1
            best = state.get("best", best)
            self.fit_seconds = state.get("fit_seconds", 0.0)
        # fit time counts from here: the per-data preparation is part of the fit
        t0 = time.perf_counter() - self.fit_seconds
        self._prepare(obs)
        if state is None and self.config.mode == "paper" and self.config.extra.get("scale_init", True):
            self._match_scale(obs)
        self.backend_used = _backend_name(self.config.backend, self.device)
        bar = _progress(range(start, epochs), progress)
        stop_reason = "epochs"
        for epoch in bar:
            if self.config.refresh == "carry" and epoch > start:
                with torch.no_grad():
                    for k, o in enumerate(self.block_outputs()):
                        getattr(self, f"X{k}").copy_(o)
                self._prepare(obs)
            opt.zero_grad(set_to_none=True)
            outs = self.block_outputs()
            J = self.loss(obs, outs)
            if not torch.isfinite(J):
                raise FloatingPointError(
                    f"training loss became {float(J)} at epoch {epoch}; try a smaller lr, mode='paper', or float64"
                )
            J.backward()
            opt.step()
            jv = float(J.detach())
            sched.step(jv)
            rec = {"epoch": epoch, "train_loss": jv, "eta": float(self._eta_value().detach()),
                   "lr": opt.param_groups[0]["lr"], "time": time.perf_counter() - t0}
            if val is not None:
                rec["val_rmse"] = rmse(self.predict(val[0], val[1]), val[2])
                if rec["val_rmse"] < best["rmse"]:
                    best = {"rmse": rec["val_rmse"], "state": copy.deepcopy(self.state_dict()), "epoch": epoch}
            if track_schatten:
                rec["schatten"] = self.schatten_sum([o.detach() for o in outs])
            self.history.append(rec)
            if callback is not None:
                callback(rec)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in rec.items() if k in ("train_loss", "val_rmse", "eta")})
            self.fit_seconds = time.perf_counter() - t0
            if checkpoint is not None and (epoch + 1) % checkpoint_every == 0:
                self.save(checkpoint, opt, sched, epoch, best)
            if opt.param_groups[0]["lr"] < min_lr_ratio * lr:
                stop_reason = "lr"
                break
            if early_stopping is not None and val is not None and epoch - best["epoch"] >= early_stopping:
                stop_reason = "early_stopping"
                break
        self.fit_seconds = time.perf_counter() - t0
        if early_stopping is not None and best["state"] is not None:
            self.load_state_dict(best["state"])
            self._prepare(obs) if self.config.refresh == "fixed" else None
        self.stop_reason = stop_reason
        if checkpoint is not None:
            self.save(checkpoint, opt, sched, self.history[-1]["epoch"] if self.history else -1, best)
        return self.history

    @torch.no_grad()
    def _match_scale(self, obs: Observations):
        """Scale the outer weights so that the initial product fits the data's scale.

        Each X̂_k = ReLU(W_k M_k) is positively homogeneous in W_k, so multiplying W_1 and W_I
        by √α multiplies the prediction by α; α is the least-squares scalar of the initial
        predictions against the targets on the observed entries. Without it the normalised
        blocks start orders of magnitude below the ratings and Adam spends the first hundred
        epochs (and the plateau schedule its patience) just growing the scale.
        """
        outs = self.block_outputs()
        e = dk.masked_residual_sparse(outs, obs.rows, obs.cols, torch.zeros_like(obs.values),
                                      backend=self.config.backend, pattern=obs.pattern)
        target = obs.values - (self.mu + self.bu[obs.rows] + self.bi[obs.cols]) if self.config.bias else obs.values
        pp = float(torch.dot(e, e))
        alpha = float(torch.dot(e, target)) / pp if pp > 0 else 0.0
        if alpha > 0 and math.isfinite(alpha):
            self.W[0].mul_(math.sqrt(alpha))
            self.W[-1].mul_(math.sqrt(alpha))

    # ------------------------------------------------------------------ persistence
    def save(self, path, optimizer=None, scheduler=None, epoch=None, best=None):
        """A checkpoint: config, weights and factors, optimiser and schedule, history."""
        torch.save({
            "config": asdict(self.config),
            "model": self.state_dict(),
            "optimizer": None if optimizer is None else optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "epoch": (self.history[-1]["epoch"] if self.history else -1) if epoch is None else epoch,
            "history": self.history,
            "best": best,
            "fit_seconds": self.fit_seconds,
            "prep": self._prep,  # per-data constants, so a loaded model can predict at once
            "version": 1,
        }, path)

    @classmethod
    def load(cls, path, device=None):
        state = torch.load(path, map_location=device or "cpu", weights_only=False)
        cfg = dict(state["config"])
        extra = cfg.pop("extra", {}) or {}
        model = cls(**cfg, **extra)
        model.load_state_dict(state["model"])
        model.history = state["history"]
        model.fit_seconds = state.get("fit_seconds", 0.0)
        model._prep = state.get("prep")
        if device is not None:
            model.to(device)
        return model

    def prepare(self, X=None, mask=None, rows=None, cols=None, values=None):
        """Compute the per-data constants without training (for a loaded model's predict)."""
        obs = as_observations(X, mask, rows, cols, values, shape=self.config.shape).to(self.device, self.dtype)
        self._prepare(obs)
        return self


def _normalize(P, how):
    """Scale-free block output (see module doc): S^a / ‖S^a‖_F, or / its mean eigenvalue."""
    tiny = torch.finfo(P.dtype).tiny
    if how == "frobenius":
        return P / torch.linalg.matrix_norm(P, keepdim=True).clamp_min(tiny)
    if how == "spectral":
        # P is PSD: its largest eigenvalue is its spectral norm
        return P / torch.linalg.matrix_norm(P, ord=2, keepdim=True).clamp_min(tiny)
    if how == "trace":
        mean_eig = P.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None]
        return P / mean_eig.clamp_min(tiny)
    if how in (None, "none"):
        return P
    raise ValueError(f"normalize: expected 'frobenius', 'spectral', 'trace' or 'none', got {how!r}")


def _backend_name(backend, device):
    from dlrl_kernels import _dispatch

    return _dispatch.resolve(backend, torch.device(device), "masked_loss_sparse", triton_ok=True, cuda_ok=True)


def _progress(it, enabled):
    if not enabled:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return it
    return tqdm(it, desc="DLRL", unit="epoch", leave=False)
