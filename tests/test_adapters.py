"""scikit-learn and Surprise adapters (dlrl.sklearn, dlrl.surprise) and dlrl.frames, on tiny data.

Install the extras to run them: ``pip install -e '.[test]'`` pulls scikit-learn, scikit-surprise
and pandas (CI does); a missing package skips its tests with the reason.
"""
import numpy as np
import pytest
import torch

FAST = dict(rank=3, blocks=3, epochs=20, tune=False)


def _low_rank(m=24, n=12, rank=2, missing=0.25, seed=0):
    g = np.random.default_rng(seed)
    X = g.uniform(0.2, 1.0, (m, rank)) @ g.uniform(0.2, 1.0, (rank, n))
    Xm = X.copy()
    Xm[g.random(X.shape) < missing] = np.nan
    Xm[np.arange(n) % m, np.arange(n)] = X[np.arange(n) % m, np.arange(n)]  # every column observed
    return X, Xm


# ----------------------------------------------------------------------------- scikit-learn
def test_imputer_fit_transform_fills_only_the_missing_entries():
    pytest.importorskip("sklearn", reason="scikit-learn not installed (pip install -e '.[sklearn]')")
    from dlrl.sklearn import DLRLImputer

    X, Xm = _low_rank()
    imp = DLRLImputer(**FAST)
    out = imp.fit_transform(Xm)
    obs = ~np.isnan(Xm)
    assert out.shape == X.shape and np.isfinite(out).all()
    np.testing.assert_array_equal(out[obs], Xm[obs])
    miss = ~obs
    # better than filling with the column means (a test that a no-op imputer fails)
    col_mean = np.nanmean(Xm, axis=0)
    err_dlrl = np.sqrt(np.mean((out[miss] - X[miss]) ** 2))
    err_mean = np.sqrt(np.mean((np.broadcast_to(col_mean, X.shape)[miss] - X[miss]) ** 2))
    assert err_dlrl < err_mean, (err_dlrl, err_mean)
    np.testing.assert_array_equal(imp.transform(Xm), out)


def test_imputer_transform_new_rows_and_errors():
    pytest.importorskip("sklearn", reason="scikit-learn not installed")
    from dlrl.sklearn import DLRLImputer

    X, Xm = _low_rank()
    imp = DLRLImputer(**FAST).fit(Xm[:18])
    new = imp.transform(Xm[18:])
    assert new.shape == (6, X.shape[1]) and np.isfinite(new).all()
    full = Xm[18:].copy()
    full[np.isnan(full)] = 0.5
    np.testing.assert_array_equal(imp.transform(full), full)  # nothing missing: unchanged
    with pytest.raises(ValueError, match="features"):
        imp.transform(Xm[:, :5])
    with pytest.raises(ValueError, match="inf"):
        DLRLImputer(**FAST).fit(np.where(np.isnan(Xm), np.inf, Xm))
    bad = Xm.copy()
    bad[:, 3] = np.nan
    with pytest.raises(ValueError, match="all NaN"):
        DLRLImputer(**FAST).fit(bad)


def test_imputer_params_clone_pipeline_gridsearch():
    pytest.importorskip("sklearn", reason="scikit-learn not installed")
    from sklearn.base import clone
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline

    from dlrl.sklearn import DLRLImputer

    imp = DLRLImputer(**FAST)
    assert imp.get_params()["rank"] == 3
    imp.set_params(rank=2)
    assert imp.rank == 2
    c = clone(imp)
    assert c.get_params() == imp.get_params() and c is not imp
    X, Xm = _low_rank(m=30, n=8, seed=1)
    y = X[:, 0] * 2 + X[:, 1]
    Xin = Xm.copy()
    Xin[:, 0] = np.nan
    Xin[::3, 0] = X[::3, 0]
    pipe = Pipeline([("impute", DLRLImputer(**FAST)), ("ridge", Ridge(alpha=1e-3))])
    pipe.fit(Xin, y)
    assert np.isfinite(pipe.predict(Xin)).all()
    gs = GridSearchCV(pipe, {"impute__rank": [1, 2]}, cv=2)
    gs.fit(Xin, y)
    assert gs.best_params_["impute__rank"] in (1, 2)


# ----------------------------------------------------------------------------- Surprise
def _surprise_data(n_users=30, n_items=20, seed=0):
    pd = pytest.importorskip("pandas", reason="pandas not installed")
    surprise = pytest.importorskip("surprise", reason="scikit-surprise not installed (pip install -e '.[surprise]')")
    g = np.random.default_rng(seed)
    bu, bi = g.normal(0, 0.5, n_users), g.normal(0, 0.5, n_items)
    rows = []
    for u in range(n_users):
        for i in g.choice(n_items, size=12, replace=False):
            rows.append((f"u{u}", f"i{i}", float(np.clip(np.round(3 + bu[u] + bi[i] + g.normal(0, 0.3)), 1, 5))))
    df = pd.DataFrame(rows, columns=["user", "item", "rating"])
    return surprise, surprise.Dataset.load_from_df(df, surprise.Reader(rating_scale=(1, 5))), df


def test_surprise_algo_fit_estimate_and_cross_validate():
    surprise, data, _ = _surprise_data()
    from surprise.model_selection import cross_validate

    from dlrl.surprise import DLRLAlgo

    algo = DLRLAlgo(bias=True, **FAST)
    trainset = data.build_full_trainset()
    algo.fit(trainset)
    est = algo.estimate(0, 0)
    assert 1.0 <= est <= 5.0
    pred = algo.predict("u0", "never-seen-item")
    assert pred.details["was_impossible"]
    res = cross_validate(DLRLAlgo(bias=True, **FAST), data, measures=["rmse"], cv=2, verbose=False)
    base = cross_validate(surprise.NormalPredictor(), data, measures=["rmse"], cv=2, verbose=False)
    assert np.isfinite(res["test_rmse"]).all()
    # biases alone separate users / items here: DLRL must beat random guessing by far
    assert res["test_rmse"].mean() < base["test_rmse"].mean(), (res["test_rmse"], base["test_rmse"])


# ----------------------------------------------------------------------------- DataFrames
def test_from_dataframe_maps_ids_and_checks_columns():
    pd = pytest.importorskip("pandas", reason="pandas not installed")
    from dlrl.frames import from_dataframe, to_indices

    df = pd.DataFrame({"u": ["bob", "alice", "bob", "carol"], "m": [10, 7, 7, 10], "r": [4.0, 3.5, 2.0, 5.0]})
    rows, cols, values, shape, uids, iids = from_dataframe(df, user="u", item="m", rating="r")
    assert shape == (3, 2)
    assert list(uids) == ["alice", "bob", "carol"] and list(iids) == [7, 10]
    assert rows.tolist() == [1, 0, 1, 2] and cols.tolist() == [1, 0, 0, 1]
    torch.testing.assert_close(values, torch.tensor([4.0, 3.5, 2.0, 5.0], dtype=torch.float64))
    r, c = to_indices(["carol"], [7], uids, iids)
    assert r.tolist() == [2] and c.tolist() == [0]
    with pytest.raises(ValueError, match="dave"):
        to_indices(["dave"], [7], uids, iids)
    with pytest.raises(ValueError, match="rating"):
        from_dataframe(df, user="u", item="m", rating="stars")
    with pytest.raises(ValueError, match="finite"):
        from_dataframe(df.assign(r=[1.0, np.nan, 2.0, 3.0]), user="u", item="m", rating="r")


# ----------------------------------------------------------------------------- bench --quick
def test_bench_accuracy_quick_runs_and_writes_json_and_markdown(tmp_path):
    """CI smoke test of bench/bench_accuracy.py --quick (one tiny synthetic set, seed 0): every
    method gives a finite RMSE and the markdown is generated from the JSON. The numbers of a
    quick run mean nothing; the full run's are bench/results/accuracy.md."""
    pytest.importorskip("surprise", reason="scikit-surprise not installed")
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out, md = tmp_path / "acc.json", tmp_path / "acc.md"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(repo / "bench" / "bench_accuracy.py"), "--quick", "--budget", "2",
                           "--out", str(out), "--md", str(md)], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert {r["method"] for r in doc["rows"]} == {"dlrl", "BaselineOnly", "SVD"}
    assert all(np.isfinite(r["rmse"]) and 0 < r["rmse"] < 4 for r in doc["rows"])
    text = md.read_text()
    assert "| dataset |" in text and "syn-60x40" in text
