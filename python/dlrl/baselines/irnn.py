"""IRNN: Iteratively Reweighted Nuclear Norm (Lu, Tang, Yan & Lin, CVPR 2014; IEEE TIP 2016)
with the l_p (Schatten-p type) surrogate g(s) = lambda s^p, 0 < p < 1.

Problem: min_X  sum_i g(sigma_i(X)) + f(X),  f(X) = 1/2 ||P_Omega(X - M)||_F^2.

Iteration (their Alg. 1)::

    w_i     = dg(sigma_i(X^k)) = lambda p (sigma_i(X^k) + eps)^(p - 1)    (non-decreasing in i)
    X^{k+1} = sum_i max(sigma_i(Y) - w_i / mu, 0) u_i v_i^T,   Y = X^k - grad f(X^k) / mu
            = WSVT of X^k - P_Omega(X^k - M) / mu

with mu = 1.1 > L(grad f) = 1.  Because the weights are non-decreasing in i, the weighted
singular value thresholding has this closed form (their Thm. 4).  ``eps`` keeps the
supergradient finite at sigma = 0 (indices beyond the current rank get the largest weight,
lambda p eps^(p-1)).

lambda continuation (as in the authors' released code): start at ``lambda0`` and multiply by
``lambda_decay`` (0.9) after every iteration until ``lambda_min``; then iterate at
``lambda_min`` until the relative change ||X^{k+1} - X^k||_F / ||X^k||_F < tol.  Scale-aware
defaults, with s1 = sigma_1(P_Omega M):

* ``eps = 1e-3 * s1``  (relative to the data scale);
* ``lambda0 = s1 * eps^(1-p) / p``, so the initial threshold for a zero singular value,
  lambda0 p eps^(p-1) / mu = s1 / mu, admits (almost) nothing: X^0 = 0 and singular
  directions enter one after another as lambda decreases;
* ``lambda_min = 1e-5 * lambda0`` (the code's stopping level lambda_init * tol).

Set ``lambda_decay=1`` for a fixed lambda (then start from X^0 = 0 and use ``lambda0``).

SVD: full, or partial SVDs whose size adapts to the current rank (valid since the thresholds
are non-decreasing).  History: ``objective`` = f(X) + lambda sum_i sigma_i(X)^p, ``rel_change``,
``lambda``.
"""
from __future__ import annotations

import math

import torch

from ._common import BaselineCompleter

__all__ = ["IRNN"]


class IRNN(BaselineCompleter):
    """IRNN with the l_p penalty and lambda continuation.

    Parameters
    ----------
    p : float in (0, 1), default 0.5
    lambda0 : float or None, default None
        Initial lambda; None = s1 eps^(1-p) / p (module docstring).
    lambda_decay : float in (0, 1], default 0.9
    lambda_min : float or None, default None
        Final lambda; None = 1e-5 * lambda0.
    mu : float, default 1.1
        Proximal constant, must exceed the Lipschitz constant 1 of grad f.
    eps : float or None, default None
        Smoothing of the supergradient; None = 1e-3 * sigma_1(P_Omega M).
    max_iter : int, default 500
    tol : float, default 1e-5
        Relative change, checked only once lambda has reached lambda_min.
    svd, seed, progress, oversampling, power_iter, rank_increment
        See :class:`~dlrl.baselines._common.BaselineCompleter`.
    """

    name = "irnn"

    def __init__(self, p=0.5, lambda0=None, lambda_decay=0.9, lambda_min=None, mu=1.1,
                 eps=None, *, svd="full", max_iter=500, tol=1e-5, seed=0, progress=False,
                 oversampling=10, power_iter=2, rank_increment=5):
        super().__init__(svd=svd, max_iter=max_iter, tol=tol, seed=seed, progress=progress,
                         oversampling=oversampling, power_iter=power_iter,
                         rank_increment=rank_increment)
        if not 0 < p < 1:
            raise ValueError(f"p must be in (0, 1), got {p}")
        if lambda0 is not None and not lambda0 > 0:
            raise ValueError(f"lambda0 must be positive, got {lambda0}")
        if not 0 < lambda_decay <= 1:
            raise ValueError(f"lambda_decay must be in (0, 1], got {lambda_decay}")
        if lambda_min is not None and not lambda_min >= 0:
            raise ValueError(f"lambda_min must be >= 0, got {lambda_min}")
        if not mu > 1:
            raise ValueError(f"mu must exceed the Lipschitz constant 1, got {mu}")
        if eps is not None and not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.p = float(p)
        self.lambda0 = lambda0
        self.lambda_decay = float(lambda_decay)
        self.lambda_min = lambda_min
        self.mu = float(mu)
        self.eps = eps

    def _repr_keys(self):
        return ["p", "lambda0", "lambda_decay", "lambda_min", "mu", "eps"] + super()._repr_keys()

    def _run(self, M, mask):
        p, mu = self.p, self.mu
        s1 = float(self._top_sigma(M))
        scale = s1 if s1 > 0 else 1.0
        eps = float(self.eps) if self.eps is not None else 1e-3 * scale
        lam = float(self.lambda0) if self.lambda0 is not None else scale * eps ** (1 - p) / p
        lam_min = float(self.lambda_min) if self.lambda_min is not None else 1e-5 * lam
        lam_min = min(lam_min, lam)
        self.eps_, self.lambda0_, self.lambda_min_ = eps, lam, lam_min

        zero = torch.zeros((), dtype=M.dtype, device=M.device)
        X = torch.zeros_like(M)
        X_norm = torch.zeros((), dtype=M.dtype, device=M.device)
        sig = torch.zeros(0, dtype=M.dtype, device=M.device)  # sigma(X^k), descending
        r = 0
        self._X_hat = X
        for _ in range(self.max_iter):
            w_sig = lam * p * (sig + eps) ** (p - 1)          # weights of the current rank
            w_zero = lam * p * eps ** (p - 1)                 # weight of sigma = 0
            Y = X - torch.where(mask, X - M, zero) / mu

            def thresholds(S, _w=w_sig, _w0=w_zero):
                k = S.numel()
                t = torch.full((k,), _w0, dtype=S.dtype, device=S.device)
                j = min(k, _w.numel())
                t[:j] = _w[:j]
                return t / mu

            U, s, V, r = self._shrink(Y, thresholds, k_hint=r)
            X_new = self._compose(U, s, V)
            new_norm = torch.linalg.vector_norm(X_new)
            rel_change = self._rel(torch.linalg.vector_norm(X_new - X), X_norm)
            resid = torch.linalg.vector_norm(torch.where(mask, X_new - M, zero))
            objective = 0.5 * float(resid) ** 2 + lam * float((s ** p).sum())
            X, X_norm, sig = X_new, new_norm, s
            self._X_hat = X
            at_min = lam <= lam_min * (1 + 1e-12)
            stop = self._record(X, r, objective=objective, rel_change=rel_change, **{"lambda": lam})
            if not math.isfinite(objective) or stop:
                break
            if at_min and rel_change < self.tol:
                self.converged = True
                break
            lam = max(lam * self.lambda_decay, lam_min)
