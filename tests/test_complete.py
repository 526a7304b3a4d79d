"""dlrl.complete: argument checks, small matrices, and the defaults on signed low-rank data."""
import inspect

import numpy as np
import pytest
import torch

from dlrl.complete import complete
from dlrl.model import DLRL


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_unknown_keyword_lists_the_valid_names():
    X = np.arange(12.0).reshape(3, 4)
    X[0, 0] = np.nan
    with pytest.raises(TypeError, match=r"epochz.*valid names.*'epochs'"):
        complete(X, epochz=5)


@pytest.mark.parametrize("kw, match", [
    (dict(rank=0), "rank"), (dict(rank=5), "rank"), (dict(epochs=2.5), "epochs"), (dict(tune="yes"), "tune"),
])
def test_bad_values_name_the_argument(kw, match):
    X = np.random.default_rng(0).random((4, 3))
    X[1, 1] = np.nan
    with pytest.raises((ValueError, TypeError), match=match):
        complete(X, **kw)


def test_small_matrix_is_completed():
    """6×4 (fewer than 10 rows and columns), rank one, a quarter missing: the untuned defaults
    cap the rank at min(m, n) and beat filling with the column means."""
    g = np.random.default_rng(1)
    X = np.outer(g.uniform(1, 2, 6), g.uniform(1, 2, 4))
    Xm = X.copy()
    miss = np.zeros(X.shape, bool)
    miss[[0, 1, 3, 4, 5], [1, 2, 0, 3, 1]] = True
    Xm[miss] = np.nan
    out, model = complete(Xm, return_model=True, epochs=150)
    assert model.config.rank <= 4
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[~miss], X[~miss])
    col_mean = np.broadcast_to(np.nanmean(Xm, axis=0), X.shape)
    assert np.abs(out[miss] - X[miss]).mean() < np.abs(col_mean[miss] - X[miss]).mean()


@pytest.mark.slow
def test_defaults_recover_a_signed_rank5_matrix():
    """Issue 14 item 4: Gaussian rank-5 100×100, 30 % missing, dlrl.complete's defaults
    (validation search on the observed entries; activation from the data's sign)."""
    if "activation" not in inspect.signature(DLRL.__init__).parameters:
        pytest.skip("needs DLRL(activation=...) (model.py): ReLU blocks alone reach RSRE ~0.05 here")
    g = np.random.default_rng(0)
    X = g.standard_normal((100, 5)) @ g.standard_normal((5, 100))
    Xm = X.copy()
    Xm[g.random(X.shape) < 0.3] = np.nan
    out, model = complete(Xm, return_model=True)
    rsre = np.linalg.norm(out - X) / np.linalg.norm(X)
    assert rsre <= 0.05, (rsre, model.tuning and model.tuning["chosen"])
