"""A Surprise algorithm: ``DLRLAlgo`` (``pip install dlrl-kernels[surprise]``).

>>> from surprise import Dataset                                   # doctest: +SKIP
>>> from surprise.model_selection import cross_validate            # doctest: +SKIP
>>> cross_validate(DLRLAlgo(), Dataset.load_builtin("ml-100k"))    # doctest: +SKIP

``fit(trainset)`` trains DLRL on the trainset's inner ids (rows = users, columns = items),
predictions clipped to the trainset's rating scale, the way ``dlrl.tuning.fit_tuned`` fits
ratings: unless parameters are given (or ``tune=False``), they are chosen by
``dlrl.tuning.choose`` on validation parts of the trainset's ratings, then
``dlrl.tuning.MEMBERS`` fits with different seeds are averaged (``members=1``: one fit) and,
where the blend wins on the same validation ratings, blended with item–item and user–user
neighbourhood models (``blend=False``: DLRL alone; ``dlrl.tuning.fit_tuned``). ``estimate(u, i)``
reads the completed matrix; unknown users / items raise ``PredictionImpossible`` (Surprise then
predicts its global mean).
"""
from __future__ import annotations

import numpy as np
import torch

try:
    from surprise import AlgoBase, PredictionImpossible
except ImportError as err:  # pragma: no cover - exercised only without scikit-surprise
    raise ImportError("dlrl.surprise needs scikit-surprise: pip install 'dlrl-kernels[surprise]'") from err

from .tuning import fit_tuned


class DLRLAlgo(AlgoBase):
    """DLRL as a Surprise prediction algorithm.

    Keyword arguments are DLRL constructor arguments (rank, blocks, p, bias, weight_decay, ...)
    or fit arguments (epochs, lr, patience), or ``members`` (fits averaged) / ``blend`` (the
    neighbourhood blend, on by default); the ones given are
    kept, the rest tuned unless ``tune=False``. ``seed`` draws the init and the validation part; ``budget_s`` caps the search.
    """

    def __init__(self, tune=True, seed=0, budget_s=None, verbose=False, **params):
        AlgoBase.__init__(self)
        self.tune = tune
        self.seed = seed
        self.budget_s = budget_s
        self.verbose = verbose
        self.params = params

    def fit(self, trainset):
        AlgoBase.fit(self, trainset)
        ratings = np.array(list(trainset.all_ratings()), dtype=np.float64)
        if ratings.size == 0:
            raise ValueError("trainset: expected at least one rating, got none")
        rows = torch.as_tensor(ratings[:, 0].astype(np.int64))
        cols = torch.as_tensor(ratings[:, 1].astype(np.int64))
        values = torch.as_tensor(ratings[:, 2])
        shape = (trainset.n_users, trainset.n_items)
        params = dict(self.params)
        params.setdefault("clip", tuple(float(s) for s in trainset.rating_scale))
        if "rank" in params:
            params["rank"] = min(int(params["rank"]), *shape)
        self.model, self.tuning = fit_tuned(rows, cols, values, shape, seed=self.seed, budget_s=self.budget_s,
                                            progress=self.verbose, tune=self.tune, **params)
        self.completed = self.model.complete().double().cpu().numpy()
        return self

    def estimate(self, u, i):
        if not (self.trainset.knows_user(u) and self.trainset.knows_item(i)):
            raise PredictionImpossible("User and/or item is unknown.")
        return float(self.completed[u, i])
