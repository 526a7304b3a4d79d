"""dlrl.tuning: the validation search only sees training entries, respects the user's
choices, is deterministic by seed and picks the lowest validation RMSE."""
import math

import pytest
import torch

from dlrl import tuning
from dlrl.tuning import choose


def _ratings(m=40, n=30, density=0.5, seed=0, noise=0.3):
    g = torch.Generator().manual_seed(seed)
    U, V = torch.randn(m, 2, generator=g), torch.randn(n, 2, generator=g)
    bu, bi = 0.5 * torch.randn(m, generator=g), 0.5 * torch.randn(n, generator=g)
    obs = (torch.rand(m, n, generator=g) < density).nonzero()
    r, c = obs[:, 0], obs[:, 1]
    v = 3 + bu[r] + bi[c] + 0.5 * (U[r] * V[c]).sum(1) + noise * torch.randn(r.numel(), generator=g)
    return r, c, v.clamp(1, 5), (m, n)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny problems: one thread (OpenMP threads spin-wait on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# only the weight-decay stage runs (3-6 short candidates): a few seconds
FIXED = {"rank": 4, "blocks": 3, "bias": True, "p": 1.0}


def _choose(seed=0, **kw):
    r, c, v, shape = _ratings()
    return choose(dict(FIXED, epochs=15, clip=(1.0, 5.0)), r, c, v, shape, set(FIXED) | {"clip", "epochs"},
                  seed=seed, **kw)


def test_explicit_parameters_are_kept_and_the_best_candidate_is_chosen():
    res = _choose()
    rep = res["report"]
    assert set(res["overrides"]) == {"weight_decay"}, res["overrides"]
    tried = [c["params"] for c in rep["candidates"]]
    assert all(set(p) == {"weight_decay_per_entry"} for p in tried), tried
    grid = list(dict(tuning.GRID)["weight_decay_per_entry"])
    wds = sorted(p["weight_decay_per_entry"] for p in tried)
    # a line search: a contiguous run of the grid containing the start and both its neighbours
    i = grid.index(tuning.START["weight_decay_per_entry"])
    assert set(grid[i - 1:i + 2]) <= set(wds)
    assert wds == grid[grid.index(wds[0]):grid.index(wds[0]) + len(wds)]
    # noise-aware choice: the start, or a candidate with a lower validation RMSE (one that won
    # by more than a paired standard error)
    start = next(c for c in rep["candidates"] if c["params"]["weight_decay_per_entry"] == grid[i])
    chosen = next(c for c in rep["candidates"] if c["params"] == rep["chosen"])
    assert chosen["val_rmse"] <= start["val_rmse"]
    best = chosen
    # the absolute weight decay is per entry × all training entries (the refit's count)
    r, c, v, shape = _ratings()
    assert math.isclose(res["overrides"]["weight_decay"], best["params"]["weight_decay_per_entry"] * v.numel())
    assert "epochs" not in res["fit_kwargs"]  # the caller fixed epochs
    assert all(math.isfinite(c["val_rmse"]) and c["val_rmse"] < 2.0 for c in rep["candidates"])
    assert rep["val_fraction"] == tuning.VAL_FRACTION and rep["seed"] == 0 and rep["seconds"] > 0


def test_same_seed_same_choice():
    a, b = _choose(seed=3), _choose(seed=3)
    assert a["overrides"] == b["overrides"]
    assert [c["val_rmse"] for c in a["report"]["candidates"]] == [c["val_rmse"] for c in b["report"]["candidates"]]


def test_validation_part_is_a_seeded_subset_of_the_training_entries():
    fit1, val1 = tuning._split(1000, 0, 0.1)
    fit2, val2 = tuning._split(1000, 0, 0.1)
    _, val3 = tuning._split(1000, 1, 0.1)
    assert torch.equal(val1, val2) and not torch.equal(val1, val3)
    assert val1.numel() == 100 and fit1.numel() == 900
    assert torch.equal(torch.cat([fit1, val1]).sort().values, torch.arange(1000))


def test_fit_kwargs_epochs_is_the_best_validation_epoch():
    r, c, v, shape = _ratings(seed=1)
    explicit = {"rank", "blocks", "bias", "p", "weight_decay", "clip"}
    res = choose(dict(FIXED, weight_decay=5.0, clip=(1.0, 5.0), epochs=30), r, c, v, shape, explicit)
    (cand,) = res["report"]["candidates"]
    assert res["overrides"] == {}
    assert res["fit_kwargs"]["epochs"] == cand["best_epoch"] <= 30


def test_budget_stops_starting_candidates():
    res = _choose(budget_s=1e-6)
    rep = res["report"]
    assert len(rep["candidates"]) == 1 and len(rep["skipped"]) == 2  # the start's two neighbours


def test_too_few_entries_searches_nothing():
    r, c, v, shape = _ratings(m=6, n=5, density=0.5)
    res = choose({}, r, c, v, shape, set())
    assert res["overrides"] == {} and res["fit_kwargs"] == {}
    assert "observed entries" in res["report"]["reason"]


@pytest.mark.parametrize("bad, match", [
    (dict(shape=(3,)), "shape"),
    (dict(values=torch.tensor([1.0, float("nan")])), "values"),
    (dict(values=torch.tensor([1.0])), "same length"),
    (dict(budget_s=0), "budget_s"),
    (dict(config=[1]), "config"),
])
def test_bad_arguments_name_themselves(bad, match):
    args = dict(config={}, rows=torch.tensor([0, 1]), cols=torch.tensor([0, 1]), values=torch.tensor([1.0, 2.0]),
                shape=(2, 2), explicit=set())
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        choose(**args)


def test_selection_rule_needs_a_win_beyond_the_paired_standard_error():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(400, generator=g, dtype=torch.float64)
    rec = lambda sq: {"val_rmse": math.sqrt(float(sq.mean())), "_sq": sq}  # noqa: E731
    best = rec(base)
    noisy = rec(base + 0.02 * torch.randn(400, generator=g, dtype=torch.float64) - 0.0005)
    clear = rec(base - 0.01)
    assert noisy["val_rmse"] < best["val_rmse"] and not tuning.better(noisy, best)
    assert tuning.better(noisy, best, z=0.0)  # z = 0: the plain lowest RMSE
    assert tuning.better(clear, best)
    assert tuning.better(best, {"val_rmse": float("inf")}) and not tuning.better({"val_rmse": float("inf")}, best)


def test_small_data_pools_disjoint_validation_folds():
    folds = tuning._folds(6000, 0, min_val=2000)  # 600 per part < MIN_VAL: ceil(2000 / 600) = 4 parts
    assert len(folds) == 4
    vals = torch.cat([v for _, v in folds])
    assert vals.unique().numel() == 2400  # disjoint
    for fit, val in folds:
        assert torch.equal(torch.cat([fit, val]).sort().values, torch.arange(6000))
    big = tuning._folds(40000, 3, min_val=2000)
    assert len(big) == 1
    assert all(torch.equal(a, b) for a, b in zip(big[0], tuning._split(40000, 3, tuning.VAL_FRACTION)))
    assert len(tuning._folds(6000, 0, min_val=0)) == 1
    # choose pools the parts: a set of 600 entries (60 per part) with min_val 100 -> 2 parts
    r, c, v, shape = _ratings(seed=5)
    explicit = {"rank", "blocks", "bias", "p", "weight_decay", "clip"}
    res = choose(dict(FIXED, weight_decay=5.0, clip=(1.0, 5.0), epochs=8), r, c, v, shape, explicit, min_val=100)
    n_val = round(tuning.VAL_FRACTION * v.numel())
    assert res["report"]["folds"] == 2 and res["report"]["val_entries"] == 2 * n_val
    (cand,) = res["report"]["candidates"]
    assert len(cand["epochs_run"]) == 2 and math.isfinite(cand["val_rmse"])


def test_fit_defaults_are_used_and_returned_unless_given():
    r, c, v, shape = _ratings(seed=2)
    explicit = {"rank", "blocks", "bias", "p", "weight_decay", "clip"}
    cfg = dict(FIXED, weight_decay=5.0, clip=(1.0, 5.0), epochs=10)
    res = choose(cfg, r, c, v, shape, explicit, fit_defaults={"lr": 0.005})
    assert res["fit_kwargs"]["lr"] == 0.005 and res["report"]["fit_defaults"] == {"lr": 0.005}
    res = choose(dict(cfg, lr=0.02), r, c, v, shape, explicit | {"lr"}, fit_defaults={"lr": 0.005})
    assert "lr" not in res["fit_kwargs"]  # the caller's lr wins and is not returned
    with pytest.raises(ValueError, match="fit_defaults"):
        choose(cfg, r, c, v, shape, explicit, fit_defaults={"values": 1})
    with pytest.raises(ValueError, match="z"):
        choose(cfg, r, c, v, shape, explicit, z=-1)
    with pytest.raises(ValueError, match="min_val"):
        choose(cfg, r, c, v, shape, explicit, min_val=-1)


def test_fit_tuned_averages_its_members():
    r, c, v, shape = _ratings(seed=4)
    model, report = tuning.fit_tuned(r, c, v, shape, seed=1, members=2, tune=False, **FIXED, epochs=8,
                                     clip=(1.0, 5.0))
    assert report is None and len(model) == 2
    seeds = [mm.config.seed for mm in model.members]
    assert seeds == [1, 1001]
    want = (model.members[0].predict(r, c).double() + model.members[1].predict(r, c).double()) / 2
    torch.testing.assert_close(model.predict(r, c).double(), want)
    torch.testing.assert_close(model.complete().double()[r, c], want)
    single, _ = tuning.fit_tuned(r, c, v, shape, seed=1, members=1, tune=False, **FIXED, epochs=8, clip=(1.0, 5.0))
    assert not isinstance(single, tuning.SeedAverage)
    with pytest.raises(ValueError, match="members"):
        tuning.fit_tuned(r, c, v, shape, members=0, tune=False)


def test_grid_argument_orders_the_stages_and_the_ratings_grid_has_no_blocks_stage():
    r, c, v, shape = _ratings(seed=6)
    explicit = {"rank", "p", "weight_decay", "clip"}
    cfg = dict(rank=4, p=1.0, weight_decay=5.0, clip=(1.0, 5.0), epochs=6)
    res = choose(cfg, r, c, v, shape, explicit, grid=(("bias", (True, False)),))
    tried = [p["params"] for p in res["report"]["candidates"]]
    # the start (3 blocks, bias on) and the bias stage only: no blocks candidate
    assert sorted(p["bias"] for p in tried) == [False, True] and {p["blocks"] for p in tried} == {3}
    assert res["report"]["grid"] == [["bias", (True, False)]]
    assert "blocks" not in dict(tuning.RATINGS_GRID)
    assert [g for g in tuning.GRID if g[0] != "blocks"] == list(tuning.RATINGS_GRID)
    for bad in ((("depth", (1, 2)),), (("bias", ()),), 5):
        with pytest.raises(ValueError, match="grid"):
            choose(cfg, r, c, v, shape, explicit, grid=bad)


def _fake_search(v, seed=0):
    folds = tuning._folds(v.numel(), seed, min_val=0)
    val = torch.cat([f[1] for f in folds])
    return folds, val


def test_blend_weights_take_the_blend_only_when_it_wins_out_of_sample():
    r, c, v, shape = _ratings(seed=8, m=45, n=35)
    folds, val = _fake_search(v)
    # validation predictions that are the truth: the partners cannot add anything
    w, info = tuning._blend_weights({"validation": {"folds": folds, "pred": v[val].double()}}, r, c, v, shape,
                                    (1.0, 5.0), seed=0)
    assert w is None and info["used"] is False and info["partners"] == ["ItemKNN", "UserKNN"]
    # the global mean as "DLRL": the neighbourhood models (biases + neighbours) win by far
    flat = torch.full((val.numel(),), float(v.mean()), dtype=torch.float64)
    w, info = tuning._blend_weights({"validation": {"folds": folds, "pred": flat}}, r, c, v, shape, (1.0, 5.0),
                                    seed=0)
    assert w is not None and info["used"] is True and w.numel() == 4
    assert info["val_rmse_blend_out_of_sample"] < info["val_rmse_dlrl"] and info["val_entries"] == val.numel()
    # nothing searched, or a matrix beyond the dense models: no blend, and the report says why
    assert tuning._blend_weights({}, r, c, v, shape, None, 0)[0] is None
    w, info = tuning._blend_weights({"validation": {"folds": folds, "pred": flat}}, r, c, v, (10, 10 ** 6), None, 0)
    assert w is None and "beyond" in info["reason"]


def test_fit_tuned_wires_the_blend(monkeypatch):
    from dlrl.neighbors import ItemKNN, UserKNN

    r, c, v, shape = _ratings(seed=9)
    kw = dict(FIXED, epochs=8, clip=(1.0, 5.0), members=1, seed=2)
    weights = torch.tensor([0.5, 0.3, 0.25, -0.2], dtype=torch.float64)
    seen = {}

    def fake(res, rows, cols, values, shp, clip, seed, z=tuning.SELECT_Z):
        seen.update(pred=res["validation"]["pred"], clip=clip, seed=seed)
        return weights, {"used": True}

    monkeypatch.setattr(tuning, "_blend_weights", fake)
    model, report = tuning.fit_tuned(r, c, v, shape, **kw)
    assert isinstance(model, tuning.Blend) and report["blend"] == {"used": True} and model.tuning is report
    assert seen["clip"] == (1.0, 5.0) and seen["seed"] == 2 and seen["pred"].numel() == report["val_entries"]
    # the partners are refitted on all the entries; the prediction is the weighted sum, clipped
    parts = [model.model.predict(r, c).double(), ItemKNN(clip=(1.0, 5.0)).fit(r, c, v, shape).predict(r, c),
             UserKNN(clip=(1.0, 5.0)).fit(r, c, v, shape).predict(r, c)]
    want = (weights[-1] + sum(w * p for w, p in zip(weights[:-1].tolist(), parts))).clamp(1.0, 5.0)
    torch.testing.assert_close(model.predict(r, c).double(), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model.complete().double()[r, c], want, rtol=1e-6, atol=1e-6)
    assert model.members == [model.model] and model.config is model.model.config
    monkeypatch.setattr(tuning, "_blend_weights", lambda *a, **k: (None, {"used": False, "reason": "test"}))
    model, report = tuning.fit_tuned(r, c, v, shape, **kw)
    assert not isinstance(model, tuning.Blend) and report["blend"]["used"] is False
    model, report = tuning.fit_tuned(r, c, v, shape, blend=False, **kw)
    assert not isinstance(model, tuning.Blend) and report["blend"] == {"used": False, "reason": "blend=False"}
    with pytest.raises(ValueError, match="blend"):
        tuning.fit_tuned(r, c, v, shape, blend="yes", **kw)
    with pytest.raises(ValueError, match="weights"):
        tuning.Blend(model, [], [1.0])


def test_ratings_path_is_reachable_from_the_package():
    import dlrl
    from dlrl import neighbors

    assert dlrl.tuning.fit_tuned is tuning.fit_tuned and dlrl.neighbors.ItemKNN is neighbors.ItemKNN
    with pytest.raises(AttributeError, match="no_such_name"):
        dlrl.no_such_name


def test_choose_returns_validation_predictions_aligned_with_the_folds():
    """``validation.pred`` lines up with the folds' validation entries, in fold order: its RMSE
    against those entries' values is the chosen candidate's reported validation RMSE."""
    r, c, v, shape = _ratings(seed=10)
    res = choose(dict(FIXED, epochs=6, clip=(1.0, 5.0), weight_decay=5.0), r, c, v, shape,
                 set(FIXED) | {"clip", "epochs", "weight_decay"}, seed=3, min_val=400)
    folds, pred = res["validation"]["folds"], res["validation"]["pred"]
    assert len(folds) > 1 and pred.device.type == "cpu"
    target = torch.cat([v[vi] for _, vi in folds]).double()
    assert math.isclose(math.sqrt(float(((pred - target) ** 2).mean())), res["report"]["chosen_val_rmse"],
                        rel_tol=1e-12)


def test_blend_skips_duplicate_pairs_and_partners_need_positive_penalties():
    from dlrl.neighbors import ItemKNN

    r, c, v, shape = _ratings(seed=11)
    folds, val = _fake_search(v)
    flat = torch.full((val.numel(),), float(v.mean()), dtype=torch.float64)
    r2, c2, v2 = torch.cat([r, r[:1]]), torch.cat([c, c[:1]]), torch.cat([v, v[:1]])
    w, info = tuning._blend_weights({"validation": {"folds": folds, "pred": flat}}, r2, c2, v2, shape, None, 0)
    assert w is None and "duplicate" in info["reason"]
    for name in ("reg_item", "reg_user"):
        with pytest.raises(ValueError, match=name):
            ItemKNN(**{name: 0.0})
