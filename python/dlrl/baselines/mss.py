"""MSS: factored Schatten-p surrogate (Xu, Lin & Zha, "A unified convex surrogate for the
Schatten-p norm", AAAI 2017), two-factor case.

For X = U V with U (m x d), V (d x n), (||U||_* + ||V||_*) / 2 >= ||X||_{S_1/2}^{1/2}, with
equality at the best split, so the model

    min_{U,V}  lambda (||U||_* + ||V||_*) + 1/2 ||P_Omega(U V - M)||_F^2

is a Schatten-1/2 quasi-norm regularised completion that only ever takes SVDs of the thin
factors (O((m + n) d^2) per iteration instead of O(m n min(m, n))).  It is solved by
proximal alternating linearised minimisation (PALM, Bolte, Sabach & Teboulle 2014)::

    G   = P_Omega(U V - M)
    U  <- SVT_{lambda / c_U}(U - G V^T / c_U),     c_U = gamma ||V||_2^2
    G   = P_Omega(U V - M)
    V  <- SVT_{lambda / c_V}(V - U^T G / c_V),     c_V = gamma ||U||_2^2

(||V||_2^2 is the Lipschitz constant of grad_U f, since P_Omega is a projection; PALM needs
gamma > 1, default 1.1.)  ||U||_2, ||V||_2 come free from the previous SVT of that factor.

Initialisation: the leading-``rank`` SVD of P_Omega(M) / rho, rho = |Omega| / (m n) (the
inverse-probability-scaled observed matrix), split evenly: U = U_d S^{1/2}, V = S^{1/2} V_d^T.

lambda: scale-aware, lambda = ``lam`` if a number, else ``lam_ratio * s1^{3/2}`` with
s1 = sigma_1(P_Omega(M) / rho) ("auto"; lambda has the units of sigma^{3/2}: the penalty is
~ 2 lambda sum_i sigma_i(X)^{1/2}).  For one fully observed component of size s and balanced
factors the stationary point solves a^2 = s - lambda / a: components with
s < 3 (lambda/2)^{2/3} are removed and the others are biased by ~ lambda / s^{3/2} relatively;
lam_ratio = 1e-3 thus removes components below ~2 % of s1 and leaves a bias of ~0.1-1 %.

lambda is fixed by default (``lambda_decay=1``; the model as stated).  Optional continuation
(``lambda_decay < 1``): lambda starts at ``lambda0_ratio * s1^{3/2}`` and is multiplied by
``lambda_decay`` every iteration down to the final value.  It kills the spurious components
of the rank-d start within a few dozen iterations (about 5x faster on a 100 x 100 rank-5
problem), but a component shrunk to zero in both factors can never come back (U = 0 or
V = 0 in a direction is a fixed point of PALM), so a large start also deletes weak *true*
components (observed on rank-10 / condition-10 problems); hence it is off by default.

Stopping: relative change ||X_{k+1} - X_k||_F / ||X_k||_F < tol once lambda is final.

SVD: only ``svd="full"`` -- every SVD here is of a thin m x d or d x n factor, so a
truncated / randomized SVD saves nothing (and the shrinkage needs all d values);
``"truncated"`` / ``"randomized"`` raise ``ValueError``.
"""
from __future__ import annotations

import math

import torch

from ._common import BaselineCompleter

__all__ = ["MSS"]


class MSS(BaselineCompleter):
    """Two-factor Schatten-1/2 completion by PALM.

    Parameters
    ----------
    rank : int, default 50
        Factor width d (an upper bound on the rank; clipped to min(m, n)).
    lam : float or "auto", default "auto"
        Final regularisation weight lambda; "auto" = lam_ratio * s1^{3/2}.
    lam_ratio : float, default 1e-3
    lambda_decay : float in (0, 1], default 1.0
        Continuation factor per iteration (1 = fixed lambda, the default).
    lambda0_ratio : float, default 0.1
        Start of the continuation, lambda0 = lambda0_ratio * s1^{3/2} (if above the final).
    gamma : float > 1, default 1.1
        PALM step factor (c = gamma * Lipschitz constant).
    max_iter : int, default 2000
    tol : float, default 1e-6
    svd : "full" only.
    seed, progress : see :class:`~dlrl.baselines._common.BaselineCompleter`.
    """

    name = "mss"
    supported_svd = ("full",)

    def __init__(self, rank=50, lam="auto", lam_ratio=1e-3, lambda_decay=1.0,
                 lambda0_ratio=0.1, gamma=1.1, *, svd="full", max_iter=2000, tol=1e-6,
                 seed=0, progress=False):
        super().__init__(svd=svd, max_iter=max_iter, tol=tol, seed=seed, progress=progress)
        if int(rank) < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if not (lam == "auto" or (isinstance(lam, (int, float)) and lam >= 0)):
            raise ValueError(f"lam must be 'auto' or a non-negative number, got {lam!r}")
        if not lam_ratio >= 0:
            raise ValueError(f"lam_ratio must be >= 0, got {lam_ratio}")
        if not 0 < lambda_decay <= 1:
            raise ValueError(f"lambda_decay must be in (0, 1], got {lambda_decay}")
        if not lambda0_ratio >= 0:
            raise ValueError(f"lambda0_ratio must be >= 0, got {lambda0_ratio}")
        if not gamma > 1:
            raise ValueError(f"gamma must be > 1 (PALM), got {gamma}")
        self.rank = int(rank)
        self.lam = lam
        self.lam_ratio = float(lam_ratio)
        self.lambda_decay = float(lambda_decay)
        self.lambda0_ratio = float(lambda0_ratio)
        self.gamma = float(gamma)

    def _unsupported_svd_reason(self):
        return ("MSS only takes SVDs of the thin m x d and d x n factors, where a "
                "truncated/randomized SVD brings nothing; use svd='full'")

    def _repr_keys(self):
        return ["rank", "lam", "lam_ratio", "lambda_decay", "lambda0_ratio", "gamma"] + super()._repr_keys()

    def _estimate(self):
        return self.U_ @ self.V_

    def _run(self, M, mask):
        m, n = M.shape
        d = min(self.rank, m, n)
        rho = float(mask.sum().item()) / (m * n)
        zero = torch.zeros((), dtype=M.dtype, device=M.device)
        U0, S0, V0 = self._svd(M / rho)
        U0, S0, V0 = U0[:, :d], S0[:d], V0[:, :d]
        s1 = float(S0[0])
        scale = s1 if s1 > 0 else 1.0
        lam_final = float(self.lam) if self.lam != "auto" else self.lam_ratio * scale ** 1.5
        if self.lambda_decay < 1:
            lam = self.lambda0_ratio * scale ** 1.5
            lam = max(lam, lam_final)
        else:
            lam = lam_final
        self.lambda_, self.lambda0_ = lam_final, lam
        root = S0.sqrt()
        U = U0 * root                 # m x d
        V = (V0 * root).mT            # d x n
        nU = float(root[0]) if d else 0.0   # ||U||_2 = ||V||_2 = sqrt(s1) at the start
        nV = nU
        X = U @ V
        X_norm = torch.linalg.vector_norm(X)
        self.U_, self.V_ = U, V
        for _ in range(self.max_iter):
            g = self.gamma
            # --- U step
            cU = g * max(nV * nV, 1e-300)
            G = torch.where(mask, X - M, zero)
            Uu, su, Vu, ru = self._shrink(U - (G @ V.mT) / cU, lam / cU)
            U = self._compose(Uu, su, Vu)
            nU = float(su[0]) if ru else 0.0
            # --- V step
            cV = g * max(nU * nU, 1e-300)
            G = torch.where(mask, U @ V - M, zero)
            Uv, sv, Vv, rv = self._shrink(V - (U.mT @ G) / cV, lam / cV)
            V = self._compose(Uv, sv, Vv)
            nV = float(sv[0]) if rv else 0.0
            X_new = U @ V
            new_norm = torch.linalg.vector_norm(X_new)
            rel_change = self._rel(torch.linalg.vector_norm(X_new - X), X_norm)
            resid = torch.linalg.vector_norm(torch.where(mask, X_new - M, zero))
            objective = 0.5 * float(resid) ** 2 + lam * float(su.sum() + sv.sum())
            X, X_norm = X_new, new_norm
            self.U_, self.V_ = U, V
            final = lam <= lam_final * (1 + 1e-12)
            stop = self._record(X, min(ru, rv), objective=objective, rel_change=rel_change,
                                **{"lambda": lam})
            if not math.isfinite(objective) or stop:
                break
            if ru == 0 or rv == 0:  # everything shrunk away: X = 0 is a fixed point
                self.converged = final
                if final:
                    break
            if final and rel_change < self.tol:
                self.converged = True
                break
            lam = max(lam * self.lambda_decay, lam_final)
