"""DLRL: differentiable low-rank matrix completion, on the ``dlrl_kernels`` ops.

>>> import dlrl
>>> X_filled = dlrl.complete(X_with_nans, rank=20)          # doctest: +SKIP
>>> model = dlrl.DLRL((n_users, n_items), bias=True)        # doctest: +SKIP
>>> history = model.fit(rows=r, cols=c, values=v)            # doctest: +SKIP
"""
from .complete import complete
from .model import DLRL, Observations, as_observations

__version__ = "0.1.0"
__all__ = ["DLRL", "complete", "Observations", "as_observations"]
