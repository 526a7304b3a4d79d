"""An item–item neighbourhood model with baselines, the partner of DLRL in the ratings blend.

Why it is here: DLRL (like every matrix factorisation) predicts from a few global factors; a
neighbourhood model predicts a rating from the same user's ratings of the most similar items —
information a rank-20 product smooths away. Their errors are only partly correlated, so a
blend, its weight chosen on validation ratings (``dlrl.tuning.fit_tuned``), beats either
alone (the evidence is in ``dlrl.tuning``'s module doc).

The model (Koren, "Factor in the neighbors", 2010, §2.2; the same one Surprise calls
KNNBaseline with the pearson_baseline similarity):

- baselines b_ui = μ + b_u + b_i, fitted by alternating regularised least squares
  (``baseline_epochs`` rounds; item biases with penalty ``reg_item``, user biases ``reg_user``);
- e_ui = r_ui − b_ui on the observed entries; similarity of items i, j over their common users
  U_ij: ρ_ij = Σ e_ui e_uj / √(Σ e_ui² · Σ e_uj²) (both sums over U_ij), shrunk towards 0 by
  (|U_ij| − 1) / (|U_ij| − 1 + ``shrinkage``); 0 when |U_ij| < 2; ρ_ii = 1 (it only matters for
  the predictions of observed entries);
- r̂_ui = b_ui + Σ_{j ∈ N} ρ_ij e_uj / Σ_{j ∈ N} ρ_ij, N = the ``k`` items rated by u with the
  largest ρ_ij, of which only those with ρ_ij > 0 count (none: the baseline alone).

:class:`UserKNN` is the same model on the transposed ratings (similar users instead of similar
items). The similarities are computed densely (three n×n products over an m×n residual
matrix), so the models are for rating sets whose items (users) and m×n fit in memory:
:func:`fits` says whether a shape does (``MAX_ITEMS``, ``MAX_CELLS``); beyond that the blend is
not offered (``fit_tuned``).
"""
from __future__ import annotations

import torch

#: the dense similarity work is O(m·n²); beyond these the neighbourhood model is not used
MAX_ITEMS = 8000
MAX_CELLS = 5e7


def fits(shape) -> bool:
    """Whether the dense neighbourhood models (item–item and user–user) handle a rating matrix
    of this shape."""
    m, n = (int(s) for s in shape)
    return max(m, n) <= MAX_ITEMS and m * n <= MAX_CELLS


class ItemKNN:
    """Item–item neighbourhood model with baselines (module doc). ``fit(rows, cols, values,
    shape)`` then ``predict(rows, cols)``; unseen users / items get the baseline parts they
    have (an unseen item has b_i = 0 and no similar items). CPU tensors: ids and values on
    another device are brought to the CPU, predictions are CPU float64."""

    def __init__(self, k: int = 40, shrinkage: float = 100.0, reg_item: float = 10.0, reg_user: float = 15.0,
                 baseline_epochs: int = 10, clip=None):
        from .model import _float_arg, _int_arg

        self.k = _int_arg(k, "k", lo=1)
        self.shrinkage = _float_arg(shrinkage, "shrinkage", lo=0.0)
        # > 0: a user or item without ratings gets bias 0 / (reg + 0)
        self.reg_item = _float_arg(reg_item, "reg_item", lo=0.0, lo_open=True)
        self.reg_user = _float_arg(reg_user, "reg_user", lo=0.0, lo_open=True)
        self.baseline_epochs = _int_arg(baseline_epochs, "baseline_epochs", lo=1)
        if clip is not None:
            lo, hi = (float(c) for c in clip)
            if not lo < hi:
                raise ValueError(f"clip: expected (low, high) with low < high, got {clip!r}")
            clip = (lo, hi)
        self.clip = clip
        self.shape = None

    def fit(self, rows, cols, values, shape):
        rows, cols, values, (m, n) = self._checked(rows, cols, values, shape)
        return self._fit(rows, cols, values, m, n, self.reg_item, self.reg_user)

    @staticmethod
    def _checked(rows, cols, values, shape):
        """The training entries as tensors, checked (the argument named in every error)."""
        from .tuning import _as_tensors

        try:
            m, n = (int(s) for s in shape)
        except (TypeError, ValueError):
            raise ValueError(f"shape: expected (n_rows, n_cols), got {shape!r}") from None
        if max(m, n) > MAX_ITEMS or m * n > MAX_CELLS:
            raise ValueError(f"shape: the dense neighbourhood models take at most {MAX_ITEMS} rows or columns and "
                             f"{MAX_CELLS:.0e} cells, got {m}×{n}")
        rows, cols, values = (t.cpu() for t in _as_tensors(rows, cols, values, (m, n)))
        if rows.numel() == 0:
            raise ValueError("values: expected at least one rating, got none")
        flat = rows * n + cols
        if torch.unique(flat).numel() != flat.numel():
            raise ValueError("rows/cols: expected each (row, col) at most once, got duplicates")
        return rows, cols, values, (m, n)

    def _fit(self, rows, cols, values, m, n, reg_item, reg_user):
        """The model of module doc on checked entries; ``reg_item`` penalises the column biases."""
        v = values.double()
        mu = float(v.mean())
        cu = torch.bincount(rows, minlength=m).double()
        ci = torch.bincount(cols, minlength=n).double()
        bu = torch.zeros(m, dtype=torch.float64)
        bi = torch.zeros(n, dtype=torch.float64)
        for _ in range(self.baseline_epochs):  # item biases first, then users (alternating LS)
            bi = torch.zeros(n, dtype=torch.float64).index_add_(0, cols, v - mu - bu[rows]) / (reg_item + ci)
            bu = torch.zeros(m, dtype=torch.float64).index_add_(0, rows, v - mu - bi[cols]) / (reg_user + cu)
        e = v - mu - bu[rows] - bi[cols]
        # dense residual and mask: m×n float32 each (MAX_CELLS bounds them); the three n×n sums,
        # in float32 and in place (peak ≈ 2 n×n float32 arrays beside E and H: 0.5 GB at MAX_ITEMS)
        E = torch.zeros(m, n, dtype=torch.float32)
        H = torch.zeros(m, n, dtype=torch.float32)
        E[rows, cols] = e.float()
        H[rows, cols] = 1.0
        rho = E.T @ E
        sq = (E * E).T @ H  # sq[i, j] = Σ_{u ∈ U_ij} e_ui²
        del E
        # ÷ √(Σ e_ui²) · √(Σ e_uj²) over the common users (roots first: no float32 overflow; a zero
        # sum has a zero numerator, so the clamp only avoids 0/0)
        sq.sqrt_().clamp_(min=1e-30)
        rho.div_(sq).div_(sq.T)
        del sq
        support = H.T @ H
        del H
        # shrink by (|U_ij| − 1) / (|U_ij| − 1 + shrinkage); fewer than 2 common users: 0
        support.sub_(1.0).clamp_(min=0.0)
        rho.mul_(support).div_(support.add_(self.shrinkage).clamp_(min=1e-12))
        rho.fill_diagonal_(1.0)  # an item is its own nearest neighbour (in-sample predictions, as Surprise)
        self.shape = (m, n)
        self.mu, self.bu, self.bi = mu, bu, bi
        self._sim = rho
        # each user's rated items and residuals (CSR by user): predictions are grouped by user
        order = torch.argsort(rows * n + cols)
        self._items = cols[order]
        self._resid = e[order].float()
        self._ptr = torch.zeros(m + 1, dtype=torch.long)
        self._ptr[1:] = torch.cumsum(cu.long(), 0)
        return self

    def _adjust(self, u: int, targets=None):
        """The neighbourhood term Σ ρ e / Σ ρ of user u for the target items (all when None)."""
        a, b = int(self._ptr[u]), int(self._ptr[u + 1])
        n_out = self.shape[1] if targets is None else targets.numel()
        if a == b:
            return torch.zeros(n_out, dtype=torch.float64)
        items, resid = self._items[a:b], self._resid[a:b]
        # [rated, targets]: ρ is symmetric, so the rated items' rows hold every target's column
        sim = self._sim.index_select(0, items) if targets is None else self._sim[items[:, None], targets]
        if sim.shape[0] > self.k:
            sim, idx = sim.topk(self.k, dim=0)
            resid = resid[idx]
        else:
            resid = resid[:, None].expand_as(sim)
        w = sim.clamp_min(0.0).double()  # only positive similarities count
        wsum = w.sum(0)
        num = (w * resid.double()).sum(0)
        return torch.where(wsum > 0, num / wsum.clamp_min(1e-300), torch.zeros_like(wsum))

    def _finish(self, out):
        return out.clamp(*self.clip) if self.clip is not None else out

    def _pairs(self, rows, cols, shape):
        """(row, col) query pairs as checked index tensors."""
        from .model import _index_tensor

        if self.shape is None:
            raise RuntimeError("predict: call fit() first")
        rows = _index_tensor(torch.as_tensor(rows).cpu(), "rows", shape[0])
        cols = _index_tensor(torch.as_tensor(cols).cpu(), "cols", shape[1])
        if rows.numel() != cols.numel():
            raise ValueError(f"rows/cols: expected the same length, got {rows.numel()} and {cols.numel()}")
        return rows, cols

    def predict(self, rows, cols):
        """r̂ for the (row, col) pairs (float64)."""
        return self._predict(*self._pairs(rows, cols, self.shape))

    @torch.no_grad()
    def _predict(self, rows, cols):
        out = self.mu + self.bu[rows] + self.bi[cols]
        order = torch.argsort(rows, stable=True)
        users, counts = torch.unique_consecutive(rows[order], return_counts=True)
        start = 0
        for u, cnt in zip(users.tolist(), counts.tolist()):
            sel = order[start:start + cnt]
            start += cnt
            out[sel] += self._adjust(u, cols[sel])
        return self._finish(out)

    @torch.no_grad()
    def complete(self):
        """The full m×n matrix of predictions (float64)."""
        if self.shape is None:
            raise RuntimeError("complete: call fit() first")
        m, n = self.shape
        out = self.mu + self.bu[:, None] + self.bi[None, :]
        for u in range(m):
            out[u] += self._adjust(u)
        return self._finish(out)


class UserKNN(ItemKNN):
    """The user–user twin of :class:`ItemKNN`: the same model on the transposed ratings (a
    user's rating predicted from the most similar users' ratings of the same item); the
    baseline penalties keep their meaning (``reg_user`` for the user biases)."""

    def fit(self, rows, cols, values, shape):
        rows, cols, values, (m, n) = self._checked(rows, cols, values, shape)
        # ItemKNN's model on the transpose: its columns are the users here
        return self._fit(cols, rows, values, n, m, self.reg_user, self.reg_item)

    def predict(self, rows, cols):
        r, c = self._pairs(rows, cols, self.shape[::-1])
        return self._predict(c, r)

    def complete(self):
        return super().complete().T


#: the neighbourhood models ``dlrl.tuning.fit_tuned`` blends with DLRL, in the order of their weights
PARTNERS = (ItemKNN, UserKNN)
