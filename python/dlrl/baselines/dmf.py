"""DMF: deep matrix factorisation trained by gradient descent from a small initialisation
(Arora, Cohen, Hu & Luo, NeurIPS 2019, "Implicit regularization in deep matrix
factorization"; the flatness view of seed 003: Gatmiry et al., NeurIPS 2023, "What is the
inductive bias of flatness regularization? A study of deep matrix factorization models").

Model and loss: the end-to-end matrix is a product of ``depth`` = N factors,
``P = X_1 X_2 ... X_N`` with X_1 (m x d), X_2 ... X_{N-1} (d x d), X_N (d x n), and the
factors are trained on the observed entries only::

    min  1/2 || P_Omega(X_1 ... X_N - M) ||_F^2

with no explicit regulariser: the low-rank bias is *implicit*, from depth and from the small
initialisation (gradient flow from near zero learns the singular components one after the
other, the largest first; with N >= 2 the dynamics are "rich-get-richer" so the spurious
directions stay tiny).  The loss and its gradient come from ``dlrl_kernels.masked_loss``
(dense mask), whose hand-written backward is the gradient chain product
``A_k^T E B_k^T`` (SPEC section 3): the same kernels DLRL uses, no SVD at all.

Data scaling (``normalize=True``, default): M is divided by s = sigma_1(P_Omega(M) / rho),
rho = |Omega| / (m n), estimated by 30 power iterations (matmul only, seeded), and the
estimate is multiplied back.  This makes the learning rate and the initial scale
independent of the units (pixel values 0..255, ratings 1..5, unit-scale synthetic data).

Centring (``center=True``, off by default; not part of the model): the mean of the observed
entries is subtracted first and added back to the estimate.  A large common offset (ratings
around 3.5, pixel values, non-negative data) makes sigma_1 dominate; since a component of
relative size sigma_i / sigma_1 is learnt about (sigma_1 / sigma_i)^(2 - 2/N) times more
slowly by GD, the others then stay on their plateau (e.g. U V^T with U, V ~ U[0, 1]: GD stops
at the rank-1 fit for thousands of iterations).

Initialisation: every factor has i.i.d. N(0, init_scale^2 / d) entries (d = width), so its
singular values are O(init_scale) and the initial product is O(init_scale^N) relative to
the (normalised) data.  ``init_scale="auto"`` = 10^(-2/(N-2)) for N >= 3 (0.01 for N = 3,
0.1 for N = 4, 0.22 for N = 5) and 1e-3 for N = 2.  For N >= 3 a singular value growing
from s0 needs about s0^-(1 - 2/N) / (lr rho sigma) iterations to escape zero; the rule keeps
s0^-(1 - 2/N) ~ 100 (a plateau of a few hundred iterations).  Smaller scales strengthen
the low-rank bias but lengthen the plateau; larger ones shorten it and weaken the bias
(100 x 100 rank-5 test, 50 % observed, N = 3, GD, 3 seeds: init 0.01 -> RSRE 1.5-1.9e-4 in
600-800 iterations; 0.1 -> 7e-3 after 5000; 0.3 -> 0.13).

Optimisers: ``"gd"`` (plain full-batch gradient descent, the setting of the theory) with
``lr="auto"`` = 1 / (N rho), rho = |Omega| / (m n): on the normalised problem the curvature
along the data's top component is about N rho for (near-)uniform sampling, so this is half
the stability bound, and the 1/rho keeps sparse problems off a never-ending plateau
(MovieLens-100K, rho ~ 5 %: lr = 1/N stays on the plateau for thousands of iterations,
1/(N rho) = 7 learns).  ``"adam"`` (``lr="auto"`` = 1e-3): scale-free per-entry steps,
out of the plateau sooner but with a weaker implicit bias (2-3e-3 after 5000 iterations on
the test above, where GD reaches 1.5e-4 in ~700) and fast overfitting on sparse noisy data.

Stopping: relative residual ||P_Omega(P - M)||_F / ||P_Omega M||_F < ``tol`` (free: it is
the loss), or ``max_iter`` iterations, or a non-finite loss (divergence, ``converged``
stays False).  There is no stall criterion: the initial plateau would trigger it.

History records carry ``objective`` = 1/2 ||P_Omega(P - M)||_F^2 (original units),
``residual`` (the stopping quantity) and ``rank``: the number of singular values of P above
``rank_tol * sigma_1(P)``, recomputed every ``rank_every`` iterations and at the last one
(QR of the two collapsed outer factors and a d x d ``svdvals``; monitoring only, its time
is excluded from ``time``/``fit_seconds`` like the RSRE evaluation, and it is not counted
in ``n_svd``, which stays 0).  The product P is materialised for the RSRE only when
``X_true`` is given (time excluded too).

Cost per iteration: forward P_Omega(U V - M) with U = X_1...X_{N-1} ((N-2) d^3 + m d^2 for
the prefix, m n d for U V), backward R = E V^T, Q = E^T U (2 m n d) plus small chain
products: O(m n d) like one matrix product, no factorisation.
"""
from __future__ import annotations

import math
import time

import torch

import dlrl_kernels as dk

from ._common import BaselineCompleter

__all__ = ["DMF"]

OPTIMIZERS = ("gd", "adam")


class DMF(BaselineCompleter):
    """Deep matrix factorisation by gradient descent (module docstring).

    Parameters
    ----------
    depth : int, default 3
        Number N of factors (>= 1; N = 1 is plain least squares on the observed entries,
        which leaves the missing entries at their initial ~0 values).
    rank : int or None, default None
        Width d of the inner dimensions; None = min(m, n) (no explicit rank constraint: the
        low-rank bias is implicit).
    init_scale : float or "auto", default "auto"
        Scale of the factors' random initialisation (module docstring).
    optimizer : {"gd", "adam"}, default "gd"
    lr : float or "auto", default "auto"
        Learning rate on the normalised problem: 1/(N rho) for GD (rho = observed
        fraction), 1e-3 for Adam.
    normalize : bool, default True
        Divide the data by the sigma_1 estimate of P_Omega(M)/rho (module docstring).
    center : bool, default False
        Subtract the mean of the observed entries first (module docstring).
    rank_tol : float, default 1e-3
        Relative threshold of the recorded numerical rank.
    rank_every : int, default 25
        The rank is recomputed every ``rank_every`` iterations (and at the last one).
    backend : str, default "auto"
        ``dlrl_kernels`` backend of ``masked_loss``.
    max_iter : int, default 5000
    tol : float, default 1e-4
        On the relative residual over the observed entries.
    svd : "full"
        Accepted for interface uniformity only: DMF computes no SVD.
    seed, progress
        See :class:`~dlrl.baselines._common.BaselineCompleter` (``seed`` also draws the
        initial factors and the power-iteration start).

    Attributes after ``fit``: ``factors_`` (list of the N trained factors, normalised
    units), ``scale_`` (the data scale s), ``offset_`` (the subtracted mean, 0 unless
    ``center``), ``lr_``, ``init_scale_``.
    """

    name = "dmf"
    supported_svd = ("full",)

    def __init__(self, depth=3, rank=None, init_scale="auto", optimizer="gd", lr="auto",
                 normalize=True, center=False, rank_tol=1e-3, rank_every=25, backend="auto", *,
                 svd="full", max_iter=5000, tol=1e-4, seed=0, progress=False):
        super().__init__(svd=svd, max_iter=max_iter, tol=tol, seed=seed, progress=progress)
        if int(depth) < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if rank is not None and int(rank) < 1:
            raise ValueError(f"rank must be >= 1 or None, got {rank}")
        if not (init_scale == "auto" or (isinstance(init_scale, (int, float)) and init_scale > 0
                                         and math.isfinite(init_scale))):
            raise ValueError(f"init_scale must be 'auto' or a positive number, got {init_scale!r}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if not (lr == "auto" or (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr))):
            raise ValueError(f"lr must be 'auto' or a positive number, got {lr!r}")
        if not rank_tol >= 0:
            raise ValueError(f"rank_tol must be >= 0, got {rank_tol}")
        if int(rank_every) < 1:
            raise ValueError(f"rank_every must be >= 1, got {rank_every}")
        self.depth = int(depth)
        self.rank = None if rank is None else int(rank)
        self.init_scale = init_scale
        self.optimizer = optimizer
        self.lr = lr
        self.normalize = bool(normalize)
        self.center = bool(center)
        self.rank_tol = float(rank_tol)
        self.rank_every = int(rank_every)
        self.backend = backend

    def _unsupported_svd_reason(self):
        return "DMF computes no SVD (gradient descent on the factors); leave svd='full'"

    def _repr_keys(self):
        return ["depth", "rank", "init_scale", "optimizer", "lr", "normalize", "center",
                "max_iter", "tol", "seed"]

    # ------------------------------------------------------------------ helpers
    def default_init_scale(self) -> float:
        N = self.depth
        return 1e-3 if N <= 2 else 10.0 ** (-2.0 / (N - 2))

    def _power_sigma(self, A: torch.Tensor, iters: int = 30) -> float:
        """Largest singular value of A by power iteration (matmul only, seeded)."""
        v = torch.randn(A.shape[1], generator=self._gen, device=A.device, dtype=A.dtype)
        s = 0.0
        for _ in range(iters):
            nv = torch.linalg.vector_norm(v)
            if float(nv) == 0.0:
                return 0.0
            u = A @ (v / nv)
            v = A.mT @ u
            s = math.sqrt(float(torch.linalg.vector_norm(v)))
        return s

    def _collapsed(self, factors):
        U = factors[0]
        for F in factors[1:-1]:
            U = U @ F
        return U, factors[-1]

    def _product(self, factors):
        if len(factors) == 1:
            return factors[0]
        U, V = self._collapsed(factors)
        return U @ V

    def _numerical_rank(self, factors) -> int:
        if len(factors) == 1:
            s = torch.linalg.svdvals(factors[0])
        else:
            U, V = self._collapsed(factors)
            Ru = torch.linalg.qr(U).R            # U = Qu Ru,  V^T = Qv Rv
            Rv = torch.linalg.qr(V.mT).R         # => sigma(U V) = sigma(Ru Rv^T)
            s = torch.linalg.svdvals(Ru @ Rv.mT)
        if s.numel() == 0 or float(s[0]) == 0.0 or not bool(torch.isfinite(s).all()):
            return 0
        return int((s > self.rank_tol * s[0]).sum().item())

    def _estimate(self):
        return self._product(self.factors_) * self.scale_ + self.offset_

    # ------------------------------------------------------------------ algorithm
    def _run(self, M, mask):
        m, n = M.shape
        N = self.depth
        d = min(m, n) if self.rank is None else self.rank
        rho = float(mask.sum().item()) / (m * n)
        self.offset_ = float(M.sum() / mask.sum()) if self.center else 0.0
        if self.offset_:
            M = torch.where(mask, M - self.offset_, torch.zeros((), dtype=M.dtype, device=M.device))
        s = self._power_sigma(M / rho) if self.normalize else 1.0
        s = s if s > 0 and math.isfinite(s) else 1.0
        self.scale_ = s
        Ms = M / s
        init = self.default_init_scale() if self.init_scale == "auto" else float(self.init_scale)
        lr = (1.0 / (N * rho) if self.optimizer == "gd" else 1e-3) if self.lr == "auto" else float(self.lr)
        self.init_scale_, self.lr_ = init, lr
        dims = [m] + [d] * (N - 1) + [n]
        factors = []
        for k in range(N):
            F = torch.randn(dims[k], dims[k + 1], generator=self._gen, device=M.device, dtype=M.dtype)
            factors.append((F * (init / math.sqrt(d))).requires_grad_(True))
        self.factors_ = [F.detach() for F in factors]
        if self.optimizer == "gd":
            opt = torch.optim.SGD(factors, lr=lr)
        else:
            opt = torch.optim.Adam(factors, lr=lr)
        norm_obs = float(torch.linalg.vector_norm(Ms))
        rank = 0
        for it in range(self.max_iter):
            with torch.enable_grad():
                opt.zero_grad(set_to_none=True)
                J = dk.masked_loss(factors, Ms, mask, backend=self.backend)
                J.backward()
            self.factors_ = [F.detach() for F in factors]
            loss = float(J.detach())
            residual = self._rel(math.sqrt(max(2.0 * loss, 0.0)), norm_obs)
            finite = math.isfinite(loss)
            done = finite and residual < self.tol
            last = done or not finite or it == self.max_iter - 1
            # monitoring (excluded from the timing): the rank, and the product for the RSRE
            t_mon = time.perf_counter()
            if finite and (it % self.rank_every == 0 or last):
                rank = self._numerical_rank(self.factors_)
            est = (self._product(self.factors_) * s + self.offset_) if self._X_true is not None else None
            self._eval_overhead += time.perf_counter() - t_mon
            # the record describes the current iterate; the step is taken only if we go on,
            # so the last record is the returned estimate
            stop = self._record(est, rank, objective=loss * s * s, residual=residual)
            if not finite:
                break
            if done:
                self.converged = True
                break
            if stop or last:
                break
            opt.step()
