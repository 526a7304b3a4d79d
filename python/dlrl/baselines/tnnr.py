"""TNNR-APGL: truncated nuclear norm regularisation (Hu, Zhang, Ye, Li & He, IEEE TPAMI 35(9),
2013), the accelerated proximal gradient line-search variant (their Alg. 3 inside Alg. 1).

The truncated nuclear norm ||X||_r = sum_{i>r} sigma_i(X) = ||X||_* - max_{AA^T=BB^T=I} tr(A X B^T)
leaves the r largest singular values unpenalised.  Outer loop l (Alg. 1)::

    U, S, V = SVD(X_l);  A_l = U[:, :r]^T,  B_l = V[:, :r]^T
    X_{l+1} = argmin_X ||X||_* - tr(A_l X B_l^T) + (lambda / 2) ||P_Omega(X - M)||_F^2

solved by APGL (Alg. 3), warm-started at X_l, with t_1 = 1::

    X_{k+1} = D_{t_k}( Y_k + t_k (A_l^T B_l - lambda P_Omega(Y_k - M)) )
    t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2
    Y_{k+1} = X_{k+1} + ((t_k - 1) / t_{k+1}) (X_{k+1} - X_k)

(the paper uses t_k both as the step size and as the FISTA momentum sequence; we follow it,
except that the step used in the gradient/threshold is capped, ``step = min(t_k, step_cap)``,
with ``step_cap="auto"`` = 1/lambda, the inverse Lipschitz constant of the data term.  The
uncapped sequence grows like k/2 and diverges once lambda t_k > 2 if the inner loop has not
converged by then (e.g. lambda = 1 diverges after a few iterations on a 100 x 100 test); at
the paper's lambda = 0.06 the inner loop typically converges before t_k reaches 1/lambda, so
the cap rarely changes the iterates.  ``step_cap=None`` gives the paper's uncapped iteration.)

Stopping: inner ||X_{k+1} - X_k||_F / ||X_k||_F < tol or ``max_iter`` inner iterations;
outer ||X_{l+1} - X_l||_F / ||X_l||_F < outer_tol or ``max_outer`` outer iterations (the paper
uses absolute epsilons; relative ones are scale free).  X_1 = P_Omega(M) as in the paper.

Defaults: ``lam = 0.06`` (the paper's image-inpainting value, pixel values in [0, 255]... the
model's exact-recovery fixed point does not depend on lambda when the data have rank <= r,
but its speed does: the data term acts with weight lambda * t_k), ``r = 5`` (the truncation
must be set to the expected rank; the paper sweeps r = 1..20 per image).

SVD: full, or adaptive partial SVDs (shrinkage keeps the top singular values above t_k, the
rest are cut; the top-r vectors of the next outer step are reused from the last shrinkage
of the inner loop, so each outer step costs no extra SVD).  History records ``outer``,
``rel_change``, ``objective`` = ||X||_* - tr(A X B^T) + lambda/2 ||P_Omega(X - M)||^2 (at X_{k+1}).
"""
from __future__ import annotations

import math

import torch

from ._common import BaselineCompleter

__all__ = ["TNNR"]


class TNNR(BaselineCompleter):
    """Truncated nuclear norm regularisation, APGL inner solver.

    Parameters
    ----------
    r : int, default 5
        Number of leading singular values left unpenalised (expected rank).
    lam : float, default 0.06
        Weight lambda of the data term.
    max_outer : int, default 10
    outer_tol : float, default 1e-4
    step_cap : float, "auto" or None, default "auto"
        Upper bound on the step t_k; "auto" = 1/lam, None = paper's uncapped sequence.
    max_iter : int, default 200
        Inner (APGL) iterations per outer step; total cap max_outer * max_iter.
    tol : float, default 1e-5
        Inner relative change.
    svd, seed, progress, oversampling, power_iter, rank_increment
        See :class:`~dlrl.baselines._common.BaselineCompleter`.
    """

    name = "tnnr"

    def __init__(self, r=5, lam=0.06, max_outer=10, outer_tol=1e-4, step_cap="auto", *,
                 svd="full", max_iter=200, tol=1e-5, seed=0, progress=False, oversampling=10,
                 power_iter=2, rank_increment=5):
        super().__init__(svd=svd, max_iter=max_iter, tol=tol, seed=seed, progress=progress,
                         oversampling=oversampling, power_iter=power_iter,
                         rank_increment=rank_increment)
        if int(r) < 0:
            raise ValueError(f"r must be >= 0, got {r}")
        if not lam > 0:
            raise ValueError(f"lam must be positive, got {lam}")
        if int(max_outer) < 1:
            raise ValueError(f"max_outer must be >= 1, got {max_outer}")
        if not outer_tol >= 0:
            raise ValueError(f"outer_tol must be >= 0, got {outer_tol}")
        if step_cap is not None and step_cap != "auto" and not step_cap > 0:
            raise ValueError(f"step_cap must be positive, got {step_cap}")
        self.r = int(r)
        self.lam = float(lam)
        self.max_outer = int(max_outer)
        self.outer_tol = float(outer_tol)
        self.step_cap = step_cap

    def _repr_keys(self):
        return ["r", "lam", "max_outer", "outer_tol", "step_cap"] + super()._repr_keys()

    def _progress_total(self):
        return self.max_outer * self.max_iter

    def _run(self, M, mask):
        lam = self.lam
        cap = (1.0 / lam) if self.step_cap == "auto" else self.step_cap
        self.step_cap_ = cap
        zero = torch.zeros((), dtype=M.dtype, device=M.device)
        minmn = min(M.shape)
        r_tr = min(self.r, minmn)
        X = M.clone()                                     # X_1 = P_Omega(M)
        # singular vectors of X_1 (later ones come from the last shrinkage)
        if self.svd == "full":
            U, S, V = self._svd(X)
        else:
            U, S, V = self._svd(X, max(r_tr, 1))
        rank = int((S > 0).sum().item())
        self._X_hat = X
        self.outer_iters_ = 0
        for outer in range(self.max_outer):
            k = min(r_tr, U.shape[1])
            AB = U[:, :k] @ V[:, :k].mT                   # A_l^T B_l
            X_l = X
            X_l_norm = torch.linalg.vector_norm(X_l)
            X_prev, Y, t = X, X, 1.0
            X_prev_norm = X_l_norm
            inner_done = False
            for _ in range(self.max_iter):
                step = t if cap is None else min(t, float(cap))
                G = AB - lam * torch.where(mask, Y - M, zero)
                Uk, s, Vk, rank = self._shrink(Y + step * G, step, k_hint=rank)
                X = self._compose(Uk, s, Vk)
                X_norm = torch.linalg.vector_norm(X)
                rel_change = self._rel(torch.linalg.vector_norm(X - X_prev), X_prev_norm)
                resid = torch.linalg.vector_norm(torch.where(mask, X - M, zero))
                # tr(A X B^T) = sum_ij (U_i^T X V_j) over the top-k pairs, X = Uk s Vk^T
                tr = ((U[:, :k].mT @ Uk) * s) @ (Vk.mT @ V[:, :k])
                objective = float(s.sum()) - float(torch.diagonal(tr).sum()) + 0.5 * lam * float(resid) ** 2
                self._X_hat = X
                stop = self._record(X, rank, objective=objective, rel_change=rel_change,
                                    outer=outer + 1, step=step)
                if not math.isfinite(objective) or stop:
                    self.outer_iters_ = outer + 1
                    return
                t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
                Y = X + ((t - 1.0) / t_next) * (X - X_prev)
                t = t_next
                X_prev, X_prev_norm = X, X_norm
                if rel_change < self.tol:
                    inner_done = True
                    break
            self.outer_iters_ = outer + 1
            U, V = Uk, Vk                                  # singular vectors of X_{l+1}
            outer_change = self._rel(torch.linalg.vector_norm(X - X_l), X_l_norm)
            if outer_change < self.outer_tol and inner_done:
                self.converged = True
                return
