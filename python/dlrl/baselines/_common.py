"""Shared machinery of the matrix-completion baselines.

Every baseline derives from :class:`BaselineCompleter`, which does

* input validation (``X``, ``mask``, ``X_true``) and the ``fit`` / ``complete`` interface,
* the SVD back-ends (``svd="full" | "truncated" | "randomized"``) and the ``n_svd`` counter,
* singular value *shrinkage* with an adaptively chosen number of computed triplets when a
  partial SVD is used,
* the per-iteration ``history`` (timing, RSRE against ``X_true``, rank), the callback, the
  optional tqdm progress bar, and ``fit_seconds``.

A method file only implements ``_run(M, mask)`` (the algorithm) and keeps its current dense
estimate in ``self._X_hat`` (or overrides ``_estimate``).

SVD back-ends
-------------
``"full"``
    ``torch.linalg.svd(A, full_matrices=False)`` of the whole matrix every time, as the
    papers do (they used MATLAB's ``svd``; SVT used PROPACK, see ``svt.py``).
``"truncated"``
    ``torch.svd_lowrank(A, q=k + oversampling, niter=power_iter)`` and keep the leading
    ``k`` triplets.  It draws its test matrix from torch's global generator; ``fit`` runs
    inside ``torch.random.fork_rng`` seeded with ``seed`` so results are reproducible and
    the caller's RNG state is left untouched.
``"randomized"``
    Our own rank-``k`` randomized range finder with subspace (power) iteration, Halko,
    Martinsson & Tropp (2011), Alg. 4.4 + 5.1, with a private ``torch.Generator`` seeded
    with ``seed`` (no Lanczos, only GEMM + thin QR + an SVD of a ``q x n`` matrix).  In the
    shrinkage steps of an iterative method it is *warm-started*: the singular vectors of
    the previous shrinkage step fill the first columns of the test matrix.  Iterates change
    slowly, so this reaches near full-SVD accuracy with ``power_iter=2``, whereas the cold
    ``torch.svd_lowrank`` of ``"truncated"`` can stall accuracy-hungry methods (SVT stalls
    near 1e-2 relative residual on a 100 x 100 rank-5 test; raise ``power_iter`` there).

With a partial SVD the number ``k`` of computed triplets for a shrinkage step starts at the
previous rank plus ``rank_increment`` (SVT paper, Sec. 5.1.1, with increment l = 5) and is
doubled until the smallest computed singular value falls below its threshold, so the
result equals the full-SVD shrinkage up to the accuracy of the partial SVD.  When
``k + oversampling`` reaches ``min(m, n)`` a full SVD is used instead (it is cheaper there).
"""
from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch

__all__ = ["BaselineCompleter", "SVD_MODES", "randomized_svd"]

SVD_MODES = ("full", "truncated", "randomized")


def randomized_svd(A: torch.Tensor, k: int, oversampling: int = 10, power_iter: int = 2,
                   generator: Optional[torch.Generator] = None, init=None):
    """Rank-``k`` randomized SVD ``A ~= U diag(S) V^T`` (Halko et al. 2011, Alg. 4.4/5.1).

    ``init = (U0, V0)``: singular vectors of a nearby matrix (e.g. the previous iterate of
    an iterative method); their columns replace the first columns of the Gaussian test
    matrix (warm start), which makes ``power_iter`` subspace iterations far more accurate
    when the matrix changes slowly between calls.

    Returns ``U (m,k)``, ``S (k,)`` (descending), ``V (n,k)``.  Works on any device/dtype.
    """
    m, n = A.shape
    transpose = m < n
    if transpose:  # work on the tall orientation: the sketch is then the smaller side
        A = A.mT
        m, n = n, m
    q = max(1, min(k + oversampling, n))
    omega = torch.randn(n, q, generator=generator, device=A.device, dtype=A.dtype)
    if init is not None:
        W = init[0] if transpose else init[1]
        if W is not None and W.dim() == 2 and W.shape[0] == n and W.shape[1] > 0:
            j = min(W.shape[1], q)
            omega[:, :j] = W[:, :j].to(dtype=A.dtype)
    Q = torch.linalg.qr(A @ omega).Q
    for _ in range(power_iter):  # subspace iteration with re-orthonormalisation
        Z = torch.linalg.qr(A.mT @ Q).Q
        Q = torch.linalg.qr(A @ Z).Q
    B = Q.mT @ A  # (q, n)
    Ub, S, Vh = torch.linalg.svd(B, full_matrices=False)
    U = Q @ Ub[:, :k]
    S = S[:k]
    V = Vh[:k].mT
    if transpose:
        U, V = V, U
    return U, S, V


def _as_float_tensor(x, name):
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except Exception as exc:  # pragma: no cover - exotic inputs
            raise ValueError(f"{name} must be a tensor (or array-like), got {type(x)!r}") from exc
    return x


class BaselineCompleter:
    """Base class of the matrix-completion baselines (see module docstring).

    Parameters common to every baseline
    -----------------------------------
    svd : {"full", "truncated", "randomized"}
        SVD back-end (module docstring).  Methods that cannot use a partial SVD list only
        ``"full"`` in ``supported_svd`` and raise ``ValueError`` for the others.
    max_iter : int
        Iteration cap (its exact meaning, e.g. per path value, is documented per method).
    tol : float
        Stopping tolerance of the method's own criterion.
    seed : int
        Seeds the random test matrices of the partial SVDs (and any random init).
    progress : bool
        Show a tqdm progress bar.
    oversampling, power_iter : int
        Partial-SVD parameters: ``q = k + oversampling`` columns, ``power_iter`` subspace
        iterations (``niter`` of ``torch.svd_lowrank``).
    rank_increment : int
        Extra triplets requested over the previous rank in adaptive partial SVDs.

    Attributes after ``fit``
    ------------------------
    history : list of dict
        One record per iteration with ``iter``, ``time`` (seconds since the start of
        ``fit``, ``time.perf_counter``, *excluding* the time spent evaluating ``rsre``),
        ``rank`` and ``objective`` and/or ``rel_change`` (plus method-specific keys), and
        ``rsre`` = ||X_hat - X_true||_F / ||X_true||_F and ``rsre_missing`` (the same on the
        unobserved entries only) when ``X_true`` was given.  ``X_hat`` is the raw current
        iterate (observed entries not overwritten).
    n_svd : int
        Number of SVDs (full or partial; each adaptive retry counts) performed.
    n_iter : int
        Iterations done (``len(history)``).
    fit_seconds : float
        Wall time of ``fit`` minus the RSRE evaluation time (so it matches ``history``).
    """

    supported_svd = SVD_MODES
    name = "baseline"

    def __init__(self, *, svd: str = "full", max_iter: int = 500, tol: float = 1e-4,
                 seed: int = 0, progress: bool = False, oversampling: int = 10,
                 power_iter: int = 2, rank_increment: int = 5):
        if svd not in SVD_MODES:
            raise ValueError(f"svd must be one of {SVD_MODES}, got {svd!r}")
        if svd not in self.supported_svd:
            raise ValueError(
                f"svd={svd!r} is not supported by {type(self).__name__}: "
                f"{self._unsupported_svd_reason()}")
        if int(max_iter) < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}")
        if not tol >= 0:
            raise ValueError(f"tol must be >= 0, got {tol}")
        if int(oversampling) < 0 or int(power_iter) < 0 or int(rank_increment) < 1:
            raise ValueError("oversampling and power_iter must be >= 0, rank_increment >= 1")
        self.svd = svd
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.seed = int(seed)
        self.progress = bool(progress)
        self.oversampling = int(oversampling)
        self.power_iter = int(power_iter)
        self.rank_increment = int(rank_increment)
        self._reset()

    # ------------------------------------------------------------------ hooks
    def _unsupported_svd_reason(self) -> str:  # pragma: no cover - overridden
        return "only a full SVD applies to this method"

    def _run(self, M: torch.Tensor, mask: torch.Tensor) -> None:  # pragma: no cover
        raise NotImplementedError

    def _progress_total(self) -> Optional[int]:
        return self.max_iter

    def _estimate(self) -> torch.Tensor:
        return self._X_hat

    # ------------------------------------------------------------------ public API
    def _reset(self):
        self.history = []
        self.n_svd = 0
        self.n_iter = 0
        self.fit_seconds = 0.0
        self.converged = False
        self._X_hat = None
        self._fitted = False
        self._warm = None

    def fit(self, X, mask=None, X_true=None, callback: Optional[Callable] = None):
        """Fit on the partially observed matrix ``X``.

        Parameters
        ----------
        X : Tensor (m, n), float32 or float64
            Observed values; entries where ``mask`` is False are ignored (may be NaN).
        mask : bool Tensor (m, n) or None
            True = observed.  ``None``: the non-NaN entries of ``X`` are observed.
        X_true : Tensor (m, n) or None
            Ground truth; when given, ``history`` records ``rsre`` every iteration.
        callback : callable(model, record) or None
            Called after every iteration with the history record; returning ``True``
            stops the fit.
        """
        X, mask, X_true = self._validate(X, mask, X_true)
        self._reset()
        self.shape = tuple(X.shape)
        self.mask_ = mask
        M = torch.where(mask, X, torch.zeros((), dtype=X.dtype, device=X.device))
        self.X_obs_ = M
        self._X_true = X_true
        if X_true is not None:
            self._true_norm = torch.linalg.vector_norm(X_true)
            miss = ~mask
            self._n_missing = int(miss.sum().item())
            self._true_norm_missing = torch.linalg.vector_norm(X_true[miss]) if self._n_missing else None
        self._callback = callback
        self._stop_requested = False
        self._device = X.device
        self._gen = torch.Generator(device=X.device)
        self._gen.manual_seed(self.seed)

        bar = None
        if self.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=self._progress_total(), desc=type(self).__name__, leave=False)
        self._bar = bar
        cuda = X.device.type == "cuda"
        devices = [X.device.index if X.device.index is not None else torch.cuda.current_device()] if cuda else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.random.default_generator.manual_seed(self.seed)
                if cuda:
                    with torch.cuda.device(X.device):
                        torch.cuda.manual_seed(self.seed)
                self._sync()
                self._eval_overhead = 0.0
                self._t0 = time.perf_counter()
                with torch.no_grad():
                    self._run(M, mask)
                self._sync()
                self.fit_seconds = time.perf_counter() - self._t0 - self._eval_overhead
        finally:
            if bar is not None:
                bar.close()
            self._bar = None
            self._callback = None
        self.n_iter = len(self.history)
        self._fitted = True
        self._X_true = None
        return self

    def complete(self, keep_observed: bool = True) -> torch.Tensor:
        """Completed matrix (m, n): observed entries as given (if ``keep_observed``),
        missing entries filled with the estimate."""
        if not self._fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() first")
        X_hat = self._estimate()
        if keep_observed:
            X_hat = torch.where(self.mask_, self.X_obs_, X_hat)
        return X_hat

    def fit_complete(self, X, mask=None, **kwargs) -> torch.Tensor:
        return self.fit(X, mask, **kwargs).complete()

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _validate(X, mask, X_true):
        X = _as_float_tensor(X, "X")
        if X.dim() != 2:
            raise ValueError(f"X must be 2-D (m, n), got shape {tuple(X.shape)}")
        if X.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"X must be float32 or float64, got {X.dtype}")
        if X.numel() == 0:
            raise ValueError("X is empty")
        if mask is None:
            mask = ~torch.isnan(X)
        else:
            mask = _as_float_tensor(mask, "mask")
            if tuple(mask.shape) != tuple(X.shape):
                raise ValueError(
                    f"mask must have the same shape as X {tuple(X.shape)}, got {tuple(mask.shape)}")
            if mask.dtype != torch.bool:
                if mask.dtype.is_complex or not bool(((mask == 0) | (mask == 1)).all()):
                    raise ValueError(f"mask must be a bool tensor (True = observed), got {mask.dtype}")
                mask = mask != 0
            mask = mask.to(X.device)
        if not bool(mask.any()):
            raise ValueError("mask has no observed entries (all False / X all NaN)")
        if not bool(torch.isfinite(X[mask]).all()):
            raise ValueError("X has NaN or inf at observed entries (where mask is True)")
        if X_true is not None:
            X_true = _as_float_tensor(X_true, "X_true")
            if tuple(X_true.shape) != tuple(X.shape):
                raise ValueError(
                    f"X_true must have the same shape as X {tuple(X.shape)}, got {tuple(X_true.shape)}")
            X_true = X_true.to(device=X.device, dtype=X.dtype)
            if not bool(torch.isfinite(X_true).all()):
                raise ValueError("X_true has NaN or inf entries")
            if float(torch.linalg.vector_norm(X_true)) == 0.0:
                raise ValueError("X_true is all zeros; the relative error is undefined")
        return X, mask, X_true

    # ------------------------------------------------------------------ SVD helpers
    def _sync(self):
        if getattr(self, "_device", None) is not None and self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    def _svd(self, A: torch.Tensor, k: Optional[int] = None, init=None):
        """(U, S, V) of ``A``: all triplets (``k=None`` or full mode) or the leading ``k``.
        ``init``: optional warm start ``(U0, V0)`` for the ``"randomized"`` back-end."""
        self.n_svd += 1
        minmn = min(A.shape)
        if k is None or self.svd == "full" or k + self.oversampling >= minmn:
            U, S, Vh = torch.linalg.svd(A, full_matrices=False)
            V = Vh.mT
            if k is not None and self.svd != "full":
                U, S, V = U[:, :k], S[:k], V[:, :k]
            return U, S, V
        if self.svd == "truncated":
            U, S, V = torch.svd_lowrank(A, q=k + self.oversampling, niter=self.power_iter)
            return U[:, :k], S[:k], V[:, :k]
        return randomized_svd(A, k, self.oversampling, self.power_iter, self._gen, init=init)

    def _shrink(self, A: torch.Tensor, thresholds, k_hint: int = 0, warm: bool = True):
        """Singular value shrinkage ``sum_i max(s_i - t_i, 0) u_i v_i^T``.

        ``thresholds(S)`` returns the threshold per singular value (same length as ``S``;
        a float is allowed for a constant threshold) and must be non-decreasing in the
        index, so that a partial SVD can stop once ``s_k <= t_k``.

        Returns ``(U, s, V, r)``: the ``r`` leading singular vectors with the shrunk
        (positive) values ``s`` (``r`` may be 0).  With ``warm`` (randomized back-end) the
        singular vectors of the previous ``_shrink`` call of the same shape seed the sketch.
        """
        thr_fn = thresholds if callable(thresholds) else (lambda S, _t=thresholds: _t)
        minmn = min(A.shape)
        if self.svd == "full":
            U, S, V = self._svd(A)
            T = thr_fn(S)
        else:
            k = max(1, min(minmn, int(k_hint) + self.rank_increment))
            init = self._warm if warm and self._warm is not None and \
                self._warm[0].shape[0] == A.shape[0] and self._warm[1].shape[0] == A.shape[1] else None
            while True:
                U, S, V = self._svd(A, k, init=init)
                T = thr_fn(S)
                t_last = T[-1] if isinstance(T, torch.Tensor) and T.dim() > 0 else T
                if k >= minmn or bool(S[-1] <= t_last):
                    break
                k = min(minmn, 2 * k)
        s = torch.clamp(S - T, min=0)
        r = int((s > 0).sum().item())
        if warm and self.svd == "randomized":
            self._warm = (U, V)
        return U[:, :r], s[:r], V[:, :r], r

    @staticmethod
    def _compose(U, s, V):
        return (U * s) @ V.mT

    def _top_sigma(self, A: torch.Tensor) -> torch.Tensor:
        """Largest singular value of ``A`` (one partial SVD; full SVD in full mode)."""
        U, S, V = self._svd(A, None if self.svd == "full" else 1)
        return S[0]

    # ------------------------------------------------------------------ history
    def _record(self, estimate: torch.Tensor, rank: int, **values) -> bool:
        """Append a history record; returns True when the callback asked to stop."""
        self._sync()
        now = time.perf_counter()
        rec = {"iter": len(self.history) + 1, "time": now - self._t0 - self._eval_overhead,
               "rank": int(rank)}
        for key, val in values.items():
            if val is None:
                continue
            if isinstance(val, torch.Tensor):
                val = float(val.item())
            rec[key] = val
        if self._X_true is not None:
            diff = estimate - self._X_true
            rec["rsre"] = float(torch.linalg.vector_norm(diff) / self._true_norm)
            if self._n_missing:
                rec["rsre_missing"] = float(
                    torch.linalg.vector_norm(diff[~self.mask_]) / self._true_norm_missing)
        self.history.append(rec)
        stop = False
        if self._callback is not None:
            stop = bool(self._callback(self, rec))
        if self._bar is not None:
            self._bar.update(1)
            post = {k: f"{rec[k]:.3g}" for k in ("objective", "rel_change", "rsre") if k in rec}
            post["rank"] = rec["rank"]
            self._bar.set_postfix(post, refresh=False)
        self._eval_overhead += time.perf_counter() - now
        self._stop_requested = self._stop_requested or stop
        return stop

    # ------------------------------------------------------------------ misc helpers
    @staticmethod
    def _rel(num: torch.Tensor, den: torch.Tensor) -> float:
        den = float(den)
        num = float(num)
        if den == 0.0:
            return 0.0 if num == 0.0 else math.inf
        return num / den

    def __repr__(self):
        keys = [k for k in self._repr_keys()]
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in keys)
        return f"{type(self).__name__}({args})"

    def _repr_keys(self):
        return ["svd", "max_iter", "tol", "seed"]
