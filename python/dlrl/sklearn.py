"""A scikit-learn imputer: ``DLRLImputer`` fills the NaN entries of a samples × features array.

Works with ``clone``, ``Pipeline`` and ``GridSearchCV`` (``pip install dlrl-kernels[sklearn]``).
Matrix completion is transductive: the model learns the rows it is fitted on. ``transform``
of the fitted array returns its completion; ``transform`` of other rows completes them
*jointly* with the fitted rows (one more fit on the stacked rows, same hyper-parameters), so
new rows borrow strength from the training rows exactly as in ``fit``. Rows without a NaN are
returned unchanged without any fit.
"""
from __future__ import annotations

import numpy as np

try:
    from sklearn.base import BaseEstimator, TransformerMixin
    from sklearn.utils.validation import check_is_fitted
except ImportError as err:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError("dlrl.sklearn needs scikit-learn: pip install 'dlrl-kernels[sklearn]'") from err

from .complete import complete


class DLRLImputer(TransformerMixin, BaseEstimator):
    """Fill missing values (NaN) with a DLRL low-rank completion (``dlrl.complete``).

    Parameters left at None are chosen by ``dlrl.complete`` (on a validation part of the
    observed entries when ``tune="auto"`` and none of rank / bias / p / weight_decay is set).
    """

    def __init__(self, rank=None, blocks=None, p=None, bias=None, weight_decay=None, epochs=None, activation=None,
                 tune="auto", budget_s=None, keep_observed=True, seed=0, mode="paper", progress=False):
        self.rank = rank
        self.blocks = blocks
        self.p = p
        self.bias = bias
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.activation = activation
        self.tune = tune
        self.budget_s = budget_s
        self.keep_observed = keep_observed
        self.seed = seed
        self.mode = mode
        self.progress = progress

    def _check(self, X, fitting):
        try:
            X = np.array(X, dtype=np.float64, copy=True)
        except (TypeError, ValueError) as err:
            raise ValueError(f"X: expected a numeric 2-D array (NaN = missing), got {type(X).__name__}: {err}") from None
        if X.ndim != 2:
            raise ValueError(f"X: expected a 2-D array (samples × features), got {X.ndim}-D with shape {X.shape}")
        if np.isinf(X).any():
            raise ValueError("X: expected finite values or NaN (missing), got inf")
        if not fitting and X.shape[1] != self.n_features_in_:
            raise ValueError(f"X: expected {self.n_features_in_} features (as in fit), got {X.shape[1]}")
        return X

    def _complete(self, X):
        kw = dict(rank=self.rank, blocks=self.blocks, p=self.p, bias=self.bias, weight_decay=self.weight_decay,
                  epochs=self.epochs, tune=self.tune, budget_s=self.budget_s, keep_observed=self.keep_observed,
                  seed=self.seed, mode=self.mode, progress=self.progress)
        if self.activation is not None:
            kw["activation"] = self.activation
        if self.rank is not None:
            kw["rank"] = min(int(self.rank), *X.shape)
        return complete(X, **kw)

    def fit(self, X, y=None):
        X = self._check(X, True)
        self.n_features_in_ = X.shape[1]
        if np.isnan(X).all(axis=0).any():
            cols = np.flatnonzero(np.isnan(X).all(axis=0)).tolist()
            raise ValueError(f"X: expected every feature observed at least once, features {cols} are all NaN")
        self.X_fit_ = X
        self.completed_ = self._complete(X) if np.isnan(X).any() else X.copy()
        return self

    def transform(self, X):
        check_is_fitted(self, "completed_")
        X = self._check(X, False)
        if not np.isnan(X).any():
            return X
        if X.shape == self.X_fit_.shape and np.array_equal(X, self.X_fit_, equal_nan=True):
            return self.completed_.copy()
        stacked = np.vstack([self.X_fit_, X])
        return self._complete(stacked)[self.X_fit_.shape[0]:]

    def fit_transform(self, X, y=None, **fit_params):
        return self.fit(X, y).completed_.copy()
