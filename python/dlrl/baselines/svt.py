"""Singular Value Thresholding (Cai, Candès & Shen, SIAM J. Optim. 20(4), 2010).

Iteration (their eq. (3.2) with the "kicking" start of Sec. 5.1.2)::

    Y^0 = k0 * delta * P_Omega(M),   k0 = ceil(tau / (delta * ||P_Omega(M)||_2))
    X^k = D_tau(Y^{k-1})                         (singular value shrinkage)
    Y^k = Y^{k-1} + delta * P_Omega(M - X^k)

stopped when ||P_Omega(X^k - M)||_F / ||P_Omega(M)||_F < tol (their eq. (5.5)).

Defaults (paper, Sec. 5.1.1): delta = 1.2 * m n / |Omega|, tol = 1e-4.  Their threshold
tau = 5 n (square n x n; 5 sqrt(mn) in general) was tuned for test matrices with *unit-scale*
singular structure; it is not scale invariant (scaling M by c needs tau scaled by c).  Our
default ``tau="auto"`` is::

    tau = 5 * sqrt(m n) * rms(observed entries)

i.e. the paper's value for unit-RMS entries, rescaled with the data (RMS rather than the
standard deviation so that data with a large common offset -- whose leading singular value
carries that offset -- still get a threshold on the scale of their singular values).  Pass a
number to use a fixed tau, e.g. ``tau=5*n`` for the paper's exact choice.

SVD: ``"full"`` shrinks with a full SVD of Y every iteration.  ``"truncated"`` /
``"randomized"`` compute only the leading singular triplets with the paper's own rank
predictor (Sec. 5.1.1: start from the previous rank + l, l = 5, enlarge until the smallest
computed singular value is <= tau; we double instead of adding l), as the paper did with
PROPACK.
"""
from __future__ import annotations

import math

import torch

from ._common import BaselineCompleter

__all__ = ["SVT"]


class SVT(BaselineCompleter):
    """Singular Value Thresholding.

    Parameters
    ----------
    tau : float or "auto", default "auto"
        Shrinkage threshold; "auto" = 5 sqrt(mn) * RMS of the observed entries.
    delta : float or None, default None
        Step size; None = 1.2 * m n / |Omega| (the paper's choice).
    k0 : int or None, default None
        Kicking steps; None = ceil(tau / (delta ||P_Omega M||_2)) (paper Sec. 5.1.2).
    max_iter : int, default 1000
    tol : float, default 1e-4
        On the relative residual ||P_Omega(X^k - M)||_F / ||P_Omega M||_F.
    svd, seed, progress, oversampling, power_iter, rank_increment
        See :class:`~dlrl.baselines._common.BaselineCompleter`.

    History records carry ``residual`` (the stopping quantity; also stored as
    ``objective``) and ``rel_change`` = ||X^k - X^{k-1}||_F / ||X^k||_F.
    """

    name = "svt"

    def __init__(self, tau="auto", delta=None, k0=None, *, svd="full", max_iter=1000,
                 tol=1e-4, seed=0, progress=False, oversampling=10, power_iter=2,
                 rank_increment=5):
        super().__init__(svd=svd, max_iter=max_iter, tol=tol, seed=seed, progress=progress,
                         oversampling=oversampling, power_iter=power_iter,
                         rank_increment=rank_increment)
        if not (tau == "auto" or (isinstance(tau, (int, float)) and tau > 0)):
            raise ValueError(f"tau must be 'auto' or a positive number, got {tau!r}")
        if delta is not None and not delta > 0:
            raise ValueError(f"delta must be positive, got {delta!r}")
        if k0 is not None and int(k0) < 0:
            raise ValueError(f"k0 must be >= 0, got {k0!r}")
        self.tau = tau
        self.delta = delta
        self.k0 = k0

    def _repr_keys(self):
        return ["tau", "delta", "k0"] + super()._repr_keys()

    def _run(self, M, mask):
        m, n = M.shape
        n_obs = int(mask.sum().item())
        norm_obs = torch.linalg.vector_norm(M)
        if self.tau == "auto":
            rms = float(norm_obs) / math.sqrt(n_obs)
            tau = 5.0 * math.sqrt(m * n) * (rms if rms > 0 else 1.0)
        else:
            tau = float(self.tau)
        delta = float(self.delta) if self.delta is not None else 1.2 * m * n / n_obs
        if self.k0 is None:
            s1 = float(self._top_sigma(M))
            k0 = math.ceil(tau / (delta * s1)) if s1 > 0 else 0
        else:
            k0 = int(self.k0)
        self.tau_, self.delta_, self.k0_ = tau, delta, k0

        maskf = mask.to(M.dtype)
        Y = (k0 * delta) * M
        X_prev = None
        r = 0
        if float(norm_obs) == 0.0:  # all observed entries zero: X = 0 solves it exactly
            self._X_hat = torch.zeros_like(M)
            self._record(self._X_hat, 0, objective=0.0, residual=0.0, rel_change=0.0)
            self.converged = True
            return
        for _ in range(self.max_iter):
            U, s, V, r = self._shrink(Y, tau, k_hint=r)
            X = self._compose(U, s, V)
            R = maskf * (M - X)  # P_Omega(M - X^k)
            residual = self._rel(torch.linalg.vector_norm(R), norm_obs)
            rel_change = (self._rel(torch.linalg.vector_norm(X - X_prev), torch.linalg.vector_norm(X))
                          if X_prev is not None else None)
            self._X_hat = X
            stop = self._record(X, r, objective=residual, residual=residual, rel_change=rel_change)
            if not math.isfinite(residual):
                break
            if residual < self.tol:
                self.converged = True
                break
            if stop:
                break
            Y = Y + delta * R
            X_prev = X
