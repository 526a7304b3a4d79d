"""The DLRL module: structure, exactness of the fixed-factor shortcut, gradients, persistence."""
import math
import warnings

import numpy as np
import pytest
import torch
from dlrl_kernels import cpu as dk_cpu

import dlrl
from dlrl.model import DLRL, as_observations


def problem(gen, m=23, n=31, rank=3, frac=0.5, dtype=torch.float64):
    U = torch.rand(m, rank, generator=gen, dtype=dtype)
    V = torch.rand(rank, n, generator=gen, dtype=dtype)
    X = U @ V + 0.5
    obs = torch.rand(m, n, generator=gen) < frac
    obs[0, 0] = True
    r, c = obs.nonzero(as_tuple=True)
    return X, obs, r, c, X[r, c]


# ------------------------------------------------------------------ argument checks
@pytest.mark.parametrize("kw, word", [
    (dict(mode="svd"), "mode"), (dict(refresh="never"), "refresh"), (dict(rank=0), "rank"),
    (dict(blocks=1), "blocks"), (dict(p=2.5), "p"), (dict(p=[1.0, 1.0]), "p"), (dict(loss="max"), "loss"),
])
def test_bad_arguments_name_themselves(kw, word):
    with pytest.raises(ValueError, match=word):
        DLRL((10, 12), **kw)


def test_bad_observations(gen):
    X, obs, r, c, v = problem(gen)
    model = DLRL(X.shape, rank=4, dtype="float64")
    with pytest.raises(ValueError, match="rows"):
        model.fit(rows=r + X.shape[0], cols=c, values=v, epochs=1, progress=False)
    bad = v.clone()
    bad[3] = float("nan")
    with pytest.raises(ValueError, match="values"):
        model.fit(rows=r, cols=c, values=bad, epochs=1, progress=False)
    with pytest.raises(ValueError, match="observed"):
        model.fit(X=torch.full(X.shape, float("nan"), dtype=torch.float64), epochs=1, progress=False)
    with pytest.raises(ValueError, match="mask"):
        model.fit(X=X, mask=obs[:, :-1], epochs=1, progress=False)


# ------------------------------------------------------------------ the fixed-factor shortcut
@pytest.mark.parametrize("mode", ["paper", "published"])
def test_prepared_gram_equals_direct_step(gen, mode):
    """S_k(η) = G0 + tG1 + t²G2 must equal (X_k + t∇_k)ᵀ(X_k + t∇_k) on the short side, with
    ∇_k = A_kᵀ E B_kᵀ computed independently here (dense, float64)."""
    X, obs, r, c, v = problem(gen)
    model = DLRL(X.shape, rank=4, blocks=4, mode=mode, dtype="float64", seed=int(torch.randint(0, 999, (1,), generator=gen)))
    o = as_observations(rows=r, cols=c, values=v, shape=X.shape).sorted()
    prep = model._prepare(o)
    Fs = model.factors
    P = Fs[0]
    for F in Fs[1:]:
        P = P @ F
    E = torch.zeros_like(X)
    E[r, c] = P[r, c] - v
    eta = 0.37
    ident_m, ident_n = torch.eye(X.shape[0], dtype=X.dtype), torch.eye(X.shape[1], dtype=X.dtype)
    for k, Xk in enumerate(Fs):
        A = ident_m
        for F in Fs[:k]:
            A = A @ F
        B = ident_n
        for F in reversed(Fs[k + 1:]):
            B = F @ B
        grad = A.t() @ E @ B.t()
        la = 1.0 if k == 0 else torch.linalg.matrix_norm(A, ord=2).item()
        lb = 1.0 if k == len(Fs) - 1 else torch.linalg.matrix_norm(B, ord=2).item()
        if mode == "published":
            la, lb = max(la, 1e-4), max(lb, 1e-4)
        L = max((la * lb) ** 2, 1e-8)
        sign = 1.0 if mode == "published" else -1.0
        Y = Xk + sign * grad / (eta * L)
        if model._transposed(k):
            Y = Y.t()
        S_direct = Y.t() @ Y
        t = prep["c"][k] / eta
        S = prep["G0"][k] + t * prep["G1"][k] + t * t * prep["G2"][k]
        torch.testing.assert_close(S, S_direct, rtol=1e-9, atol=1e-9)


def test_paper_mode_steps_down_published_steps_up(gen):
    X, obs, r, c, v = problem(gen)
    for mode, sign in (("paper", -1), ("published", 1)):
        model = DLRL(X.shape, rank=4, mode=mode, dtype="float64")
        model.prepare(rows=r, cols=c, values=v)
        assert torch.all(torch.sign(model._prep["c"]) == sign)


# ------------------------------------------------------------------ gradients of the whole model
@pytest.mark.parametrize("mode", ["paper", "published"])
@pytest.mark.parametrize("bias", [False, True])
def test_model_gradcheck(gen, mode, bias):
    """Hand-written backwards inside (sparse loss, spd_power / pinv) vs finite differences."""
    X, obs, r, c, v = problem(gen, m=9, n=11, rank=2, frac=0.7)
    if mode == "published":
        # targets below the (positive) initial product: the residual, hence ∇_k and Y_k, stay
        # non-negative, so the published elementwise power (S + st)^(-1/2) stays real
        v = 0.01 * v
    model = DLRL(X.shape, rank=3, blocks=3, mode=mode, bias=bias, dtype="float64",
                 seed=int(torch.randint(0, 999, (1,), generator=gen)))
    o = as_observations(rows=r, cols=c, values=v, shape=X.shape).sorted()
    model._prepare(o)
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        model.eta.fill_(0.9 if mode == "published" else 0.3)
        for p in params[:-1]:
            p.add_(0.05 * torch.rand(p.shape, generator=gen, dtype=p.dtype))  # no ReLU kinks at 0

    names = [n for n, p in model.named_parameters() if p.requires_grad]

    def loss_of(*ps):  # DLRL.forward(obs) is the training loss J
        return torch.func.functional_call(model, dict(zip(names, ps)), (o,), strict=False)

    inputs = tuple(p.detach().clone().requires_grad_() for p in params)
    assert torch.autograd.gradcheck(loss_of, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------ training behaviour
def test_fit_decreases_loss_and_records_history(gen):
    X, obs, r, c, v = problem(gen)
    model = DLRL(X.shape, rank=6, dtype="float64")
    hist = model.fit(rows=r, cols=c, values=v, val=(r[:20], c[:20], v[:20]), epochs=40, progress=False,
                     track_schatten=True)
    assert hist[-1]["train_loss"] < 0.5 * hist[0]["train_loss"]
    for key in ("epoch", "train_loss", "val_rmse", "schatten", "eta", "lr"):
        assert key in hist[0], key
    assert all(0 < h["eta"] <= 1 for h in hist)
    # the Schatten sum is Σ_k Σ_i σ_i(X̂_k)^{p_k}, checked with an SVD here
    outs = model.block_outputs()
    ref = sum(float((torch.linalg.svdvals(o) ** p).sum()) for o, p in zip(outs, model.ps))
    assert math.isclose(model.schatten_sum(), ref, rel_tol=1e-8)
    assert model.fit_seconds > 0 and model.backend_used == ("cpu" if dk_cpu.status()[0] else "reference")


def test_dense_and_sparse_inputs_train_identically(gen):
    X, obs, r, c, v = problem(gen)
    Xn = X.clone()
    Xn[~obs] = float("nan")
    a = DLRL(X.shape, rank=5, dtype="float64")
    b = DLRL(X.shape, rank=5, dtype="float64")
    c_ = DLRL(X.shape, rank=5, dtype="float64")
    ha = a.fit(X=Xn, epochs=8, progress=False)
    hb = b.fit(rows=r, cols=c, values=v, epochs=8, progress=False)
    hc = c_.fit(X=X, mask=obs, epochs=8, progress=False)
    for x, y, z in zip(ha, hb, hc):
        assert math.isclose(x["train_loss"], y["train_loss"], rel_tol=1e-10)
        assert math.isclose(x["train_loss"], z["train_loss"], rel_tol=1e-10)


def test_carry_refresh_changes_factors_fixed_does_not(gen):
    X, obs, r, c, v = problem(gen)
    for refresh in ("fixed", "carry"):
        model = DLRL(X.shape, rank=4, refresh=refresh, dtype="float64")
        before = [f.clone() for f in model.factors]
        seen = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # carry may warn that it kept an earlier state
            model.fit(rows=r, cols=c, values=v, epochs=3, progress=False,
                      callback=lambda rec: seen.append([f.clone() for f in model.factors]))
        same = all(torch.equal(x, y) for x, y in zip(before, seen[-1]))
        assert same == (refresh == "fixed")


def test_carry_keeps_its_best_state_and_warns_when_the_loss_rises(gen):
    """refresh="carry" can diverge (issue 12: 3 of 4 small runs); the fit returns the state with
    the lowest training loss, and says so when the loss rose by more than 10 %."""
    X, obs, r, c, v = problem(gen)
    model = DLRL(X.shape, rank=4, refresh="carry", dtype="float64")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        hist = model.fit(rows=r, cols=c, values=v, epochs=12, progress=False)
    losses = [h["train_loss"] for h in hist]
    best = min(losses)
    o = as_observations(rows=r, cols=c, values=v, shape=X.shape).sorted()
    with torch.no_grad():
        now = float(model.loss(o))
    assert now == pytest.approx(best, rel=1e-10)
    rose = losses[-1] > 1.1 * best
    assert rose == any("carry" in str(x.message) for x in w)


def test_predict_complete_and_clip(gen):
    X, obs, r, c, v = problem(gen)
    lo, hi = float(v.min()), float(v.max())
    model = DLRL(X.shape, rank=4, bias=True, clip=(lo, hi), dtype="float64")
    model.fit(rows=r, cols=c, values=v, epochs=5, progress=False)
    full = model.complete()
    assert full.shape == X.shape
    assert float(full.min()) >= lo and float(full.max()) <= hi
    torch.testing.assert_close(model.predict(r, c), full[r, c])
    with pytest.raises(ValueError, match="rows"):
        model.predict(torch.tensor([X.shape[0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="max_entries"):
        model.complete(max_entries=10)


def test_block_outputs_before_fit_is_a_clear_error():
    with pytest.raises(RuntimeError, match="fit"):
        DLRL((5, 6), rank=2).block_outputs()


# ------------------------------------------------------------------ persistence
def test_resume_continues_exactly(gen, tmp_path):
    X, obs, r, c, v = problem(gen)
    full = DLRL(X.shape, rank=4, dtype="float64")
    h_full = full.fit(rows=r, cols=c, values=v, epochs=12, progress=False)

    part = DLRL(X.shape, rank=4, dtype="float64")
    ck = tmp_path / "ck.pt"
    part.fit(rows=r, cols=c, values=v, epochs=5, progress=False, checkpoint=ck, checkpoint_every=5)
    resumed = DLRL.load(ck)
    h_res = resumed.fit(rows=r, cols=c, values=v, epochs=12, progress=False, resume=ck)
    assert [h["epoch"] for h in h_res] == list(range(12))
    for x, y in zip(h_full, h_res):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-12)
    for p, q in zip(full.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_save_load_predicts_the_same(gen, tmp_path):
    X, obs, r, c, v = problem(gen)
    model = DLRL(X.shape, rank=4, bias=True, dtype="float64")
    model.fit(rows=r, cols=c, values=v, epochs=4, progress=False)
    model.save(tmp_path / "m.pt")
    loaded = DLRL.load(tmp_path / "m.pt")
    torch.testing.assert_close(loaded.predict(r, c), model.predict(r, c))


# ------------------------------------------------------------------ dlrl.complete
def test_complete_numpy_in_numpy_out(gen):
    X, obs, r, c, v = problem(gen)
    Xn = X.numpy().copy()
    Xn[~obs.numpy()] = np.nan
    out = dlrl.complete(Xn, rank=4, epochs=30)
    assert isinstance(out, np.ndarray) and out.shape == Xn.shape
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[obs.numpy()], Xn[obs.numpy()])  # observed entries kept
    lo, hi = np.nanmin(Xn), np.nanmax(Xn)
    assert out.min() >= lo - 1e-12 and out.max() <= hi + 1e-12


def test_complete_errors():
    with pytest.raises(ValueError, match="observed"):
        dlrl.complete(np.full((4, 5), np.nan))
    with pytest.raises(ValueError, match="2-D"):
        dlrl.complete(np.ones(5))
    with pytest.raises(ValueError, match="mask"):
        dlrl.complete(np.ones((4, 5)), mask=np.ones((5, 4), bool))


# ------------------------------------------------------------------ torch.compile
def test_torch_compile_of_a_dlrl_forward_backward_runs_on_cpu(gen):
    """The training step (hand-written autograd.Functions inside) traces under torch.compile
    with the reference backend and gives the eager loss and gradients."""
    X, obs, r, c, v = problem(gen)
    model = DLRL(X.shape, rank=4, dtype="float64", backend="reference")
    o = as_observations(rows=r, cols=c, values=v, shape=X.shape).sorted()
    model._prepare(o)

    def step():
        J = model.loss(o)
        J.backward()
        return J

    J_ref = step()
    g_ref = [p.grad.clone() for p in model.W] + [model.eta.grad.clone()]
    for p in model.parameters():
        p.grad = None
    J = torch.compile(step, backend="aot_eager")()
    torch.testing.assert_close(J, J_ref)
    for p, g in zip([*model.W, model.eta], g_ref):
        torch.testing.assert_close(p.grad, g)


@pytest.mark.parametrize("bias", [False, True])
def test_cold_rows_and_columns_are_predicted_from_biases_or_the_mean(gen, bias):
    """A user / item with no training entry gets no factor term: the training mean (no
    biases) or μ + the known side's bias."""
    X, obs, r, c, v = problem(gen, m=20, n=25)
    keep = (r != 3) & (c != 7)
    r, c, v = r[keep], c[keep], v[keep]
    model = DLRL(X.shape, rank=4, bias=bias, dtype="float64")
    model.fit(rows=r, cols=c, values=v, epochs=10, progress=False)
    assert not model.row_seen[3] and not model.col_seen[7] and model.row_seen[r].all()
    pred = model.predict(torch.tensor([3, 3, 0]), torch.tensor([0, 7, 7]))
    full = model.complete()
    if bias:
        expect = torch.stack([model.mu + model.bu[3] + model.bi[0], model.mu + model.bu[3] + model.bi[7],
                              model.mu + model.bu[0] + model.bi[7]]).detach()
    else:
        expect = torch.full((3,), float(v.mean()), dtype=torch.float64)
    torch.testing.assert_close(pred, expect)
    torch.testing.assert_close(full[3, 0], pred[0])
    warm = model.predict(torch.tensor([0]), torch.tensor([0]))
    assert not torch.allclose(warm, expect[:1])  # warm entries keep their factor term


def test_fit_on_a_dataframe_maps_ids_and_predicts_by_id(gen, tmp_path):
    pd = pytest.importorskip("pandas")
    X, obs, r, c, v = problem(gen)
    users = np.array([f"u{i:03d}" for i in range(X.shape[0])])[r.numpy()]
    items = (1000 + c.numpy() * 7)  # integer ids with gaps
    df = pd.DataFrame({"user": users, "item": items, "rating": v.numpy()})
    model = DLRL(X.shape, rank=3, dtype="float64", seed=1)
    model.fit(df, epochs=5, progress=False, tune=False)
    ref = DLRL(X.shape, rank=3, dtype="float64", seed=1)
    ref.fit(rows=r, cols=c, values=v, epochs=5, progress=False, tune=False)  # same ids, in sorted order
    got = model.predict_ids(["u003", "u010"], [1000 + 7 * 2, 1000 + 7 * 5])
    torch.testing.assert_close(got, ref.predict(torch.tensor([3, 10]), torch.tensor([2, 5])))
    with pytest.raises(ValueError, match="'nobody'"):
        model.predict_ids(["nobody"], [1000])
    p = model.save(tmp_path / "m.pt")
    loaded = DLRL.load(p)
    torch.testing.assert_close(loaded.predict_ids(["u003"], [1014]), model.predict_ids(["u003"], [1014]))
    with pytest.raises(ValueError, match="more than the model's shape"):
        DLRL((3, 3), rank=2).fit(df, epochs=1, progress=False, tune=False)
    with pytest.raises(ValueError, match="DataFrame"):
        DLRL(X.shape, rank=2).fit(df, mask=obs, epochs=1, progress=False, tune=False)
    with pytest.raises(ValueError, match="predict_ids"):
        ref.predict_ids(["u003"], [1014])
