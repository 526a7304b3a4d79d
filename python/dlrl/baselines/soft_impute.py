"""Soft-Impute (Mazumder, Hastie & Tibshirani, JMLR 11, 2010), Algorithm 1.

For each lambda of a decreasing path, warm-started from the previous solution::

    repeat  Z <- S_lambda( P_Omega(M) + P_Omega^perp(Z) )      (soft-thresholded SVD)
    until   ||Z_new - Z_old||_F / ||Z_old||_F < tol

which minimises 1/2 ||P_Omega(M - Z)||_F^2 + lambda ||Z||_*.

``lambdas``:

* a number: a single lambda (started from Z = 0);
* a sequence: used as the path, sorted in decreasing order;
* ``None`` (default): ``n_lambdas`` (10) values spaced geometrically from
  lambda_max = sigma_1(P_Omega M) (the smallest lambda whose solution is Z = 0) down to
  ``lambda_min_ratio * lambda_max`` (default 1e-3, i.e. a hundredfold further than the
  "lambda_max / 100" sometimes quoted: with exactly low-rank data the bias of the
  last solution is proportional to its lambda, and 1e-3 brings it below 1 % RSRE).

``max_iter`` caps the iterations *per lambda* (the total cap is ``max_iter * len(path)``);
the returned estimate is the solution at the last (smallest) lambda.  We keep dense
iterates (the paper's sparse + low-rank trick matters only for very large matrices; the
partial SVD back-ends already avoid the full SVD).  History records carry ``lambda``,
``rel_change`` and ``objective`` = 1/2 ||P_Omega(M - Z)||_F^2 + lambda ||Z||_*.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._common import BaselineCompleter

__all__ = ["SoftImpute"]


class SoftImpute(BaselineCompleter):
    """Soft-Impute with a warm-started lambda path.

    Parameters
    ----------
    lambdas : float, sequence of floats or None, default None
        Regularisation value(s); None = automatic geometric path (module docstring).
    n_lambdas : int, default 10
    lambda_min_ratio : float, default 1e-3
    max_iter : int, default 100
        Iterations per lambda.
    tol : float, default 1e-4
        On ||Z_new - Z_old||_F / ||Z_old||_F (the square root of the paper's criterion).
    svd, seed, progress, oversampling, power_iter, rank_increment
        See :class:`~dlrl.baselines._common.BaselineCompleter`.
    """

    name = "soft_impute"

    def __init__(self, lambdas=None, n_lambdas=10, lambda_min_ratio=1e-3, *, svd="full",
                 max_iter=100, tol=1e-4, seed=0, progress=False, oversampling=10,
                 power_iter=2, rank_increment=5):
        super().__init__(svd=svd, max_iter=max_iter, tol=tol, seed=seed, progress=progress,
                         oversampling=oversampling, power_iter=power_iter,
                         rank_increment=rank_increment)
        if lambdas is not None:
            vals = [lambdas] if not isinstance(lambdas, (Sequence, torch.Tensor)) else list(lambdas)
            vals = [float(v) for v in vals]
            if not vals or any(not (v >= 0 and math.isfinite(v)) for v in vals):
                raise ValueError(f"lambdas must be non-negative finite numbers, got {lambdas!r}")
            lambdas = sorted(vals, reverse=True)
        if int(n_lambdas) < 1:
            raise ValueError(f"n_lambdas must be >= 1, got {n_lambdas}")
        if not 0 < lambda_min_ratio <= 1:
            raise ValueError(f"lambda_min_ratio must be in (0, 1], got {lambda_min_ratio}")
        self.lambdas = lambdas
        self.n_lambdas = int(n_lambdas)
        self.lambda_min_ratio = float(lambda_min_ratio)

    def _repr_keys(self):
        return ["lambdas", "n_lambdas", "lambda_min_ratio"] + super()._repr_keys()

    def _progress_total(self):
        n = len(self.lambdas) if self.lambdas is not None else self.n_lambdas
        return self.max_iter * n

    def _path(self, M):
        if self.lambdas is not None:
            return list(self.lambdas)
        lam_max = float(self._top_sigma(M))
        K = self.n_lambdas
        if K == 1:
            return [lam_max * self.lambda_min_ratio]
        return [lam_max * self.lambda_min_ratio ** (k / (K - 1)) for k in range(K)]

    def _run(self, M, mask):
        path = self._path(M)
        self.lambda_path_ = path
        Z = torch.zeros_like(M)
        Z_norm = torch.zeros((), dtype=M.dtype, device=M.device)
        r = 0
        self._X_hat = Z
        self.converged = True
        for lam in path:
            lam_converged = False
            for _ in range(self.max_iter):
                filled = torch.where(mask, M, Z)  # P_Omega(M) + P_Omega^perp(Z)
                U, s, V, r = self._shrink(filled, lam, k_hint=r)
                Z_new = self._compose(U, s, V)
                new_norm = torch.linalg.vector_norm(Z_new)
                rel_change = self._rel(torch.linalg.vector_norm(Z_new - Z), Z_norm)
                resid = torch.linalg.vector_norm(torch.where(mask, M - Z_new, torch.zeros_like(M)))
                objective = 0.5 * float(resid) ** 2 + lam * float(s.sum())
                Z, Z_norm = Z_new, new_norm
                self._X_hat = Z
                stop = self._record(Z, r, objective=objective, rel_change=rel_change, **{"lambda": lam})
                if not math.isfinite(objective):
                    self.converged = False
                    return
                if stop:
                    self.converged = False
                    return
                if rel_change < self.tol:
                    lam_converged = True
                    break
            self.converged = self.converged and lam_converged
