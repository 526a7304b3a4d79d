"""dlrl.neighbors: the item–item / user–user neighbourhood models against a plain-loop twin of
their definition (module doc), Surprise's KNNBaseline where installed, and bad input."""
import math

import pytest
import torch

from dlrl.neighbors import ItemKNN, UserKNN, fits


def _ratings(gen, m, n, density):
    mask = torch.rand(m, n, generator=gen) < density
    mask[0, :] = False  # a user with no rating
    mask[:, 1] = False  # an item with no rating
    mask[2, 3] = True
    r, c = mask.nonzero().unbind(1)
    U, V = torch.randn(m, 2, generator=gen, dtype=torch.float64), torch.randn(n, 2, generator=gen, dtype=torch.float64)
    v = 3 + (U[r] * V[c]).sum(1) + 0.5 * torch.randn(r.numel(), generator=gen, dtype=torch.float64)
    return r, c, v.clamp(1, 5)


def _loop_twin(r, c, v, shape, k, shrinkage, reg_item, reg_user, epochs):
    """The model spelled out with Python loops over dictionaries, in float64."""
    m, n = shape
    R = {(int(a), int(b)): float(x) for a, b, x in zip(r, c, v)}
    mu = sum(R.values()) / len(R)
    bu, bi = [0.0] * m, [0.0] * n
    for _ in range(epochs):
        for i in range(n):
            us = [(a, x) for (a, b), x in R.items() if b == i]
            bi[i] = sum(x - mu - bu[a] for a, x in us) / (reg_item + len(us))
        for u in range(m):
            its = [(b, x) for (a, b), x in R.items() if a == u]
            bu[u] = sum(x - mu - bi[b] for b, x in its) / (reg_user + len(its))
    e = {(a, b): x - mu - bu[a] - bi[b] for (a, b), x in R.items()}
    users_of = {i: {a for (a, b) in R if b == i} for i in range(n)}

    def sim(i, j):
        if i == j:
            return 1.0
        common = users_of[i] & users_of[j]
        if len(common) < 2:
            return 0.0
        num = sum(e[(u, i)] * e[(u, j)] for u in common)
        si = sum(e[(u, i)] ** 2 for u in common)
        sj = sum(e[(u, j)] ** 2 for u in common)
        if si * sj == 0:
            return 0.0
        return (len(common) - 1) / (len(common) - 1 + shrinkage) * num / math.sqrt(si * sj)

    def predict(u, i):
        rated = [b for (a, b) in R if a == u]
        nb = sorted(((sim(i, j), j) for j in rated), key=lambda t: -t[0])[:k]
        ws = [(s, j) for s, j in nb if s > 0]
        tot = sum(s for s, _ in ws)
        adj = sum(s * e[(u, j)] for s, j in ws) / tot if tot > 0 else 0.0
        return mu + bu[u] + bi[i] + adj

    return predict


@pytest.mark.parametrize("shape,k,shrinkage", [((13, 11), 3, 0.0), ((9, 17), 40, 5.0), ((16, 16), 1, 100.0)])
def test_item_knn_matches_its_loop_twin(gen, shape, k, shrinkage):
    r, c, v = _ratings(gen, *shape, 0.5)
    kw = dict(k=k, shrinkage=shrinkage, reg_item=2.0, reg_user=3.0, baseline_epochs=4)
    model = ItemKNN(**kw).fit(r, c, v, shape)
    twin = _loop_twin(r, c, v, shape, **{k_: kw[k_] for k_ in ("k", "shrinkage", "reg_item", "reg_user")},
                      epochs=kw["baseline_epochs"])
    rows, cols = torch.meshgrid(torch.arange(shape[0]), torch.arange(shape[1]), indexing="ij")
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    want = torch.tensor([twin(int(a), int(b)) for a, b in zip(rows, cols)], dtype=torch.float64)
    got = model.predict(rows, cols)
    # the similarities are stored in float32: agreement to float32 rounding
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
    torch.testing.assert_close(model.complete().reshape(-1), got, rtol=0, atol=1e-12)
    assert got.dtype == torch.float64 and bool(torch.isfinite(got).all())


def test_user_knn_is_item_knn_of_the_transpose(gen):
    shape = (12, 19)
    r, c, v = _ratings(gen, *shape, 0.45)
    user = UserKNN(k=5, reg_item=2.0, reg_user=7.0).fit(r, c, v, shape)
    item_t = ItemKNN(k=5, reg_item=7.0, reg_user=2.0).fit(c, r, v, shape[::-1])
    assert (user.reg_item, user.reg_user) == (2.0, 7.0)  # fit leaves the user's settings as given
    torch.testing.assert_close(user.predict(r, c), item_t.predict(c, r), rtol=0, atol=0)
    torch.testing.assert_close(user.complete(), item_t.complete().T, rtol=0, atol=0)
    # the user-side similarity really is a different model from the item side
    assert not torch.allclose(user.complete(), ItemKNN(k=5, reg_item=2.0, reg_user=7.0).fit(r, c, v, shape).complete())


def test_clip_and_unseen_entries(gen):
    shape = (10, 8)
    r, c, v = _ratings(gen, *shape, 0.6)
    model = ItemKNN(k=4, clip=(2.0, 4.0)).fit(r, c, v, shape)
    full = model.complete()
    assert float(full.min()) >= 2.0 and float(full.max()) <= 4.0
    free = ItemKNN(k=4).fit(r, c, v, shape)
    # user 0 has no rating: its row is μ + b_i (its b_u is 0 and no neighbour exists)
    torch.testing.assert_close(free.complete()[0], free.mu + free.bi, rtol=0, atol=1e-12)


def test_matches_surprise_knnbaseline(gen):
    pd = pytest.importorskip("pandas")
    surprise = pytest.importorskip("surprise")
    shape = (30, 25)
    r, c, v = _ratings(gen, *shape, 0.4)
    df = pd.DataFrame({"u": r.numpy(), "i": c.numpy(), "r": v.numpy()})
    ts = surprise.Dataset.load_from_df(df, surprise.Reader(rating_scale=(1, 5))).build_full_trainset()
    rows, cols = torch.meshgrid(torch.arange(shape[0]), torch.arange(shape[1]), indexing="ij")
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    for user_based, cls in ((False, ItemKNN), (True, UserKNN)):
        algo = surprise.KNNBaseline(k=6, sim_options={"name": "pearson_baseline", "user_based": user_based},
                                    verbose=False)
        algo.fit(ts)
        # every cell, the unseen user and item included (both fall back to their baseline parts)
        want = torch.tensor([algo.predict(a, b).est for a, b in zip(rows.tolist(), cols.tolist())],
                            dtype=torch.float64)
        model = cls(k=6, clip=(1, 5)).fit(r, c, v, shape)
        torch.testing.assert_close(model.predict(rows, cols), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kw,match", [({"k": 0}, "k"), ({"k": 2.5}, "k"), ({"shrinkage": -1}, "shrinkage"),
                                      ({"reg_item": float("nan")}, "reg_item"), ({"baseline_epochs": 0}, "baseline"),
                                      ({"clip": (5, 1)}, "clip")])
def test_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        ItemKNN(**kw)


def test_bad_data(gen):
    r, c, v = _ratings(gen, 6, 5, 0.6)
    with pytest.raises(RuntimeError, match="fit"):
        ItemKNN().predict(r, c)
    with pytest.raises(ValueError, match=r"rows: expected indices in \[0, 3\)"):
        ItemKNN().fit(r, c, v, (3, 5))
    with pytest.raises(ValueError, match="duplicates"):
        ItemKNN().fit(torch.cat([r, r[:1]]), torch.cat([c, c[:1]]), torch.cat([v, v[:1]]), (6, 5))
    with pytest.raises(ValueError, match="finite"):
        ItemKNN().fit(r, c, torch.full_like(v, float("nan")), (6, 5))
    with pytest.raises(ValueError, match="shape"):
        ItemKNN().fit(r, c, v, (6, 10 ** 6))
    model = ItemKNN().fit(r, c, v, (6, 5))
    with pytest.raises(ValueError, match=r"cols: expected indices in \[0, 5\)"):
        model.predict(torch.tensor([0]), torch.tensor([5]))
    with pytest.raises(ValueError, match="same length"):
        model.predict(torch.tensor([0, 1]), torch.tensor([0]))
    assert fits((943, 1682)) and not fits((138_000, 27_000)) and not fits((10, 10 ** 5))


def test_constant_ratings_give_the_constant_without_nan(gen):
    """Every residual is 0: every similarity is 0/0, which must come out 0 (no neighbour), not NaN."""
    shape = (9, 7)
    r, c, v = _ratings(gen, *shape, 0.6)
    for cls in (ItemKNN, UserKNN):
        full = cls(k=3, shrinkage=0.0).fit(r, c, torch.full_like(v, 3.25), shape).complete()
        torch.testing.assert_close(full, torch.full(shape, 3.25, dtype=torch.float64), rtol=0, atol=1e-12)


def test_ids_are_never_truncated_and_errors_name_the_user_side(gen):
    r, c, v = _ratings(gen, 6, 5, 0.6)
    with pytest.raises(ValueError, match="rows"):
        ItemKNN().fit(r.double() + 0.5, c, v, (6, 5))
    user = UserKNN().fit(r, c, v, (6, 5))
    with pytest.raises(ValueError, match="cols"):
        user.predict(torch.tensor([0]), torch.tensor([1.5]))
    with pytest.raises(ValueError, match=r"rows: expected indices in \[0, 6\)"):
        user.predict(torch.tensor([6]), torch.tensor([0]))
    assert user.complete().shape == (6, 5)
