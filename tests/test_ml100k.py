"""The accuracy bars on MovieLens-100K, published split (SPEC §4–5). Skipped without the data.

RMSE here is a square root (the published code prints an MSE under that name).
"""
import math
from pathlib import Path

import pytest
import torch

from dlrl.datasets import load_movielens, split_published
from dlrl.metrics import rmse
from dlrl.model import DLRL
from dlrl.tuning import fit_tuned

ML = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (ML / "u.data").is_file(), reason=f"MovieLens-100K not at {ML}"),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: CPU reductions then round the same way on every machine, so these runs
    reproduce the figures in the README to the last digit (the training is chaotic enough
    that a different summation order moves the third decimal)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def split():
    return split_published(load_movielens(ML))


def _fit(split, **kw):
    train, test = split
    model = DLRL(train.shape, **kw)
    model.fit(rows=train.rows, cols=train.cols, values=train.values, progress=False)
    return rmse(model.predict(test.rows, test.cols), test.values), model


@pytest.fixture(scope="module")
def published(split):
    return _fit(split, mode="published")


def test_split_is_the_published_one(split):
    train, test = split
    assert (train.nnz, test.nnz) == (80000, 20000)
    gen = torch.Generator().manual_seed(2020)
    perm = torch.randperm(100000, generator=gen)
    data = load_movielens(ML)
    torch.testing.assert_close(train.values, data.values[perm[:80000]])


def test_published_mode_reproduces_the_published_code(published):
    err, model = published
    assert len(model.history) == 300  # the published run never meets its lr stop
    assert abs(err - 0.9385) <= 0.01, err


def test_paper_mode_is_at_least_as_good_as_published(split, published):
    err, model = _fit(split, mode="paper")
    assert math.isfinite(err)
    assert err <= published[0], (err, published[0])


#: Surprise SVD (default options) on this split, test RMSE, mean over random_state 0, 1, 2
#: (bench/results/accuracy_cpu.json). An external baseline's number, not a DLRL result.
SURPRISE_SVD_PUBLISHED = 0.937


def test_defaults_beat_surprise_svd(split):
    """The library's defaults (hyper-parameters chosen by dlrl.tuning on a validation part of
    the *training* ratings, never on the test ratings) beat Surprise's SVD on the test split.
    Over seeds 0-2 the defaults score 0.899-0.903 here (bench/results/accuracy.md), so
    the bar leaves a margin of more than two seed standard deviations."""
    train, test = split
    model, report = fit_tuned(train.rows, train.cols, train.values, train.shape, seed=0, clip=(1.0, 5.0))
    assert report is not None and report["candidates"], report
    err = rmse(model.predict(test.rows, test.cols), test.values)
    assert err < SURPRISE_SVD_PUBLISHED, (err, report["chosen"])
