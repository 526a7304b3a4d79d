"""Training state (issue 12): exact resume for every mode/option, early stopping returns the
best-validation model, checkpoints are atomic and checked, bad ones are named, Ctrl-C keeps a
valid checkpoint, and bad arguments get a clear error."""
import itertools
import math
import warnings

import pytest
import torch

from dlrl.model import DLRL


def problem(gen, m=30, n=25, nnz=420, scale=1.0):
    idx = torch.randperm(m * n, generator=gen)[:nnz]
    r, c = idx // n, idx % n
    U = torch.rand(m, 3, generator=gen, dtype=torch.float64)
    V = torch.rand(3, n, generator=gen, dtype=torch.float64)
    v = scale * ((U @ V)[r, c] + 0.5)
    return (m, n), r, c, v


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _fit(model, r=None, c=None, v=None, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("tune", False)
    kw.setdefault("rows", r)
    kw.setdefault("cols", c)
    kw.setdefault("values", v)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(**kw)


COMBOS = list(itertools.product(["paper", "published"], [False, True], ["fixed", "carry"]))


@pytest.mark.parametrize("mode, bias, refresh", COMBOS)
def test_resume_is_bit_exact(gen, tmp_path, mode, bias, refresh):
    """5 epochs + checkpoint + resume to 12 == 12 epochs uninterrupted: every loss, η, lr and
    every parameter/buffer bit for bit (float64, same thread count)."""
    shape, r, c, v = problem(gen, scale=0.01 if mode == "published" else 1.0)
    kw = dict(rank=4, mode=mode, bias=bias, refresh=refresh, dtype="float64", seed=3)
    full = DLRL(shape, **kw)
    try:
        h_full = _fit(full, r, c, v, epochs=12, patience=2)
    except FloatingPointError as err:
        # the published elementwise power (S + st)^((p-2)/2) needs S ≥ 0 entrywise; after a carry
        # refresh it usually is not (the published code has no refresh): a clear error, no state
        assert mode == "published" and refresh == "carry", err
        pytest.skip(f"published + carry diverged as documented: {err}")
    ck = tmp_path / "ck.pt"
    part = DLRL(shape, **kw)
    _fit(part, r, c, v, epochs=5, patience=2, checkpoint=ck, checkpoint_every=5)
    resumed = DLRL.load(ck)
    h_res = _fit(resumed, r, c, v, epochs=12, patience=2, resume=ck, checkpoint=ck)
    strip = [{k: x for k, x in h.items() if k != "time"} for h in h_full]
    assert [{k: x for k, x in h.items() if k != "time"} for h in h_res] == strip
    for k, x in _params(full).items():  # (carry: both runs restore the same best state)
        assert torch.equal(x, _params(resumed)[k]), k


def test_save_then_resume_readme_flow_is_exact(gen, tmp_path):
    """model.save(p) after a fit, then fit(resume=p): continues exactly (the optimiser and
    schedule of the last fit are in the file)."""
    shape, r, c, v = problem(gen)
    kw = dict(rank=4, bias=True, dtype="float64")
    full = DLRL(shape, **kw)
    h_full = _fit(full, r, c, v, epochs=9)
    m = DLRL(shape, **kw)
    _fit(m, r, c, v, epochs=4)
    p = tmp_path / "m.pt"
    m.save(p)
    h = _fit(m, r, c, v, epochs=9, resume=p)
    assert [x["train_loss"] for x in h] == [x["train_loss"] for x in h_full]
    loaded = DLRL.load(p)
    h2 = _fit(loaded, r, c, v, epochs=9, resume=p)
    assert [x["train_loss"] for x in h2] == [x["train_loss"] for x in h_full]


@pytest.mark.parametrize("bias, refresh", [(False, "fixed"), (True, "fixed"), (True, "carry")])
def test_early_stopping_returns_the_best_validation_model(gen, bias, refresh):
    shape, r, c, v = problem(gen)
    val = (r[:60], c[:60], v[:60])
    fr, fc, fv = r[60:], c[60:], v[60:]
    model = DLRL(shape, rank=4, bias=bias, refresh=refresh, dtype="float64")
    h = _fit(model, fr, fc, fv, epochs=60, val=val, early_stopping=3, lr=0.05)
    best = min(x["val_rmse"] for x in h)
    now = math.sqrt(float(((model.predict(val[0], val[1]) - val[2]) ** 2).mean()))
    assert now == pytest.approx(best, rel=1e-12, abs=1e-12)


def test_checkpoint_path_checked_before_training(gen, tmp_path):
    shape, r, c, v = problem(gen)
    ck = tmp_path / "ck.pt"
    ck.write_bytes(b"precious")
    model = DLRL(shape, rank=4, dtype="float64")
    with pytest.raises(ValueError, match="checkpoint"):
        _fit(model, r, c, v, epochs=3, checkpoint=ck)
    assert model.history == [] and ck.read_bytes() == b"precious"  # nothing trained, nothing written
    with pytest.raises(ValueError, match="checkpoint"):
        _fit(model, r, c, v, epochs=3, checkpoint=tmp_path / "no" / "such" / "ck.pt")
    _fit(model, r, c, v, epochs=3, checkpoint=ck, force=True)
    assert DLRL.load(ck).history[-1]["epoch"] == 2
    # the resume file may be the checkpoint of the same fit
    _fit(DLRL.load(ck), r, c, v, epochs=5, checkpoint=ck, resume=ck)
    assert DLRL.load(ck).history[-1]["epoch"] == 4


@pytest.mark.parametrize("content, why", [
    (b"not a checkpoint at all\n" * 10, "garbage"),
    (None, "truncated"),
    ("foreign", "foreign"),
])
def test_bad_checkpoints_name_the_file(gen, tmp_path, content, why):
    shape, r, c, v = problem(gen)
    p = tmp_path / f"{why}.pt"
    if content is None:
        good = tmp_path / "good.pt"
        m = DLRL(shape, rank=4, dtype="float64")
        _fit(m, r, c, v, epochs=2)
        m.save(good)
        data = good.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif content == "foreign":
        torch.save({"weights": torch.ones(3)}, p)
    else:
        p.write_bytes(content)
    with pytest.raises(ValueError, match=f"{why}.pt"):
        DLRL.load(p)
    with pytest.raises(ValueError, match=f"{why}.pt"):
        _fit(DLRL(shape, rank=4, dtype="float64"), r, c, v, epochs=2, resume=p)
    with pytest.raises(ValueError, match="nope.pt"):
        DLRL.load(tmp_path / "nope.pt")


def test_resume_of_another_model_is_refused(gen, tmp_path):
    shape, r, c, v = problem(gen)
    m = DLRL(shape, rank=4, dtype="float64")
    _fit(m, r, c, v, epochs=2)
    m.save(tmp_path / "m.pt")
    with pytest.raises(ValueError, match="rank"):
        _fit(DLRL(shape, rank=3, dtype="float64"), r, c, v, epochs=3, resume=tmp_path / "m.pt")


def test_keyboard_interrupt_keeps_a_valid_checkpoint_and_resumes_exactly(gen, tmp_path):
    shape, r, c, v = problem(gen)
    kw = dict(rank=4, bias=True, dtype="float64")
    full = DLRL(shape, **kw)
    h_full = _fit(full, r, c, v, epochs=10, callback=lambda rec: None)

    def stop_at_3(rec):
        if rec["epoch"] == 3:
            raise KeyboardInterrupt

    ck = tmp_path / "ck.pt"
    m = DLRL(shape, **kw)
    with pytest.raises(KeyboardInterrupt):
        _fit(m, r, c, v, epochs=10, checkpoint=ck, checkpoint_every=100, callback=stop_at_3)
    assert m.interrupted and m.stop_reason == "interrupted" and len(m.history) == 4
    loaded = DLRL.load(ck)
    assert loaded.history[-1]["epoch"] == 3 and loaded.stop_reason == "interrupted"
    h = _fit(loaded, r, c, v, epochs=10, resume=ck)
    assert [x["train_loss"] for x in h] == [x["train_loss"] for x in h_full]


def test_atomic_save_leaves_no_temporary(gen, tmp_path):
    shape, r, c, v = problem(gen)
    m = DLRL(shape, rank=4, dtype="float64")
    _fit(m, r, c, v, epochs=2)
    m.save(tmp_path / "a.pt")
    m.save(tmp_path / "a.pt")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.pt"]


# ------------------------------------------------------------------ arguments
@pytest.mark.parametrize("kw, word", [
    (dict(biass=True), "biass"), (dict(rank=2.7), "rank"), (dict(rank=0), "rank"), (dict(blocks=3.5), "blocks"),
    (dict(clip=(5, 1)), "clip"), (dict(clip=(1, float("nan"))), "clip"), (dict(eta0=float("nan")), "eta0"),
    (dict(dtype="float16"), "dtype"), (dict(activation="tanh"), "activation"), (dict(normalize="max"), "normalize"),
])
def test_bad_constructor_arguments(kw, word):
    with pytest.raises((ValueError, TypeError), match=word):
        DLRL((10, 12), **kw)


def test_unknown_keyword_lists_the_valid_names():
    with pytest.raises(TypeError) as e:
        DLRL((10, 12), biass=True)
    assert "bias" in str(e.value) and "rank" in str(e.value)


def test_bad_fit_arguments(gen):
    shape, r, c, v = problem(gen)
    m = DLRL(shape, rank=4, dtype="float64")
    cases = [
        (dict(epochs=-1), "epochs"), (dict(epochs=2.5), "epochs"), (dict(lr=-0.1), "lr"),
        (dict(weight_decay=-1.0), "weight_decay"), (dict(patience=-2), "patience"),
        (dict(early_stopping=5), "early_stopping"), (dict(rows=r.double() + 0.9), "rows"),
        (dict(val=(r[:5], c[:4], v[:5])), "val"), (dict(val=(r[:5] + 100, c[:5], v[:5])), "val"),
        (dict(sync_every=0), "sync_every"), (dict(tune="maybe"), "tune"),
    ]
    for kw, word in cases:
        args = dict(rows=r, cols=c, values=v, epochs=2)
        args.update(kw)
        with pytest.raises((ValueError, TypeError), match=word):
            _fit(m, **args)
    assert m.history == []
    with pytest.raises(ValueError, match="rows"):
        _fit(m, r, c, v, epochs=1)
        m.predict(torch.tensor([1.9]), torch.tensor([0]))
    # whole-number float ids are ids
    _fit(m, r.double(), c.double(), v, epochs=1)
    torch.testing.assert_close(m.predict(r[:5].double(), c[:5].double()), m.predict(r[:5], c[:5]))


def test_clip_far_from_the_data_is_refused(gen):
    shape, r, c, v = problem(gen)
    m = DLRL(shape, rank=4, clip=(1, 5), dtype="float64")
    with pytest.raises(ValueError, match="clip"):
        _fit(m, r, c, v + 12, epochs=2)


def test_rank_above_min_is_clamped_with_a_warning_and_default_rank_fits_small_inputs():
    with pytest.warns(UserWarning, match="rank"):
        m = DLRL((30, 25), rank=35)
    assert m.config.rank == 25
    g = torch.Generator().manual_seed(0)
    for shape in ((5, 7), (8, 40)):
        idx = torch.randperm(shape[0] * shape[1], generator=g)[:20]
        r, c = idx // shape[1], idx % shape[1]
        v = torch.rand(20, generator=g, dtype=torch.float64) * 4 + 1
        m = DLRL(shape, dtype="float64")
        _fit(m, r, c, v, epochs=3)
        assert torch.isfinite(m.predict(r, c)).all() and m.config.rank == min(shape)


def test_activation_auto_follows_the_sign_of_the_data(gen):
    shape, r, c, v = problem(gen)
    m = DLRL(shape, rank=4, dtype="float64")
    _fit(m, r, c, v, epochs=2)
    assert m.activation_used == "relu"
    signed = torch.randn(v.shape, generator=gen, dtype=torch.float64)
    m = DLRL(shape, rank=4, dtype="float64")
    _fit(m, r, c, signed, epochs=2)
    assert m.activation_used == "none"
    out = m.block_outputs()
    assert any((o < 0).any() for o in out)  # no ReLU
    m = DLRL(shape, rank=4, activation="relu", dtype="float64")
    _fit(m, r, c, signed, epochs=2)
    assert m.activation_used == "relu"


# ------------------------------------------------------------------ hooks for tuning / distributed
def test_tune_hook_calls_choose_and_reconfigures(gen, monkeypatch):
    import dlrl.tuning as tuning

    calls = []

    def fake_choose(config, rows, cols, values, shape, explicit, seed=0, **kw):
        calls.append((dict(config), set(explicit)))
        return {"overrides": {"blocks": 3, "bias": True}, "fit_kwargs": {"epochs": 4}, "report": {"fake": 1}}

    monkeypatch.setattr(tuning, "choose", fake_choose)
    shape, r, c, v = problem(gen)
    m = DLRL(shape, dtype="float64")
    h = _fit(m, r, c, v, tune="auto")
    assert len(calls) == 1 and m.config.blocks == 3 and m.config.bias and len(h) == 4
    assert m.tuning_report == {"fake": 1}
    m = DLRL(shape, rank=4, dtype="float64")  # the user fixed rank: "auto" does not tune
    _fit(m, r, c, v, tune="auto", epochs=2)
    assert len(calls) == 1
    _fit(m, r, c, v, tune=True, epochs=2)  # True tunes; rank stays the user's
    assert len(calls) == 2 and "rank" in calls[-1][1] and m.config.rank == 4


def test_distributed_hook_uses_the_context(gen, monkeypatch):
    """With a (single-rank) context the fit shards through it, sums through it and records
    world_size; the result equals the plain fit."""
    import dlrl.distributed as dist_mod

    class FakeCtx:
        world_size, rank, is_main = 1, 0, True

        def __init__(self):
            self.reduced = 0

        def shard(self, obs):
            return obs.sorted()

        def all_reduce_(self, tensors):
            self.reduced += 1
            return tensors

    ctx = FakeCtx()
    monkeypatch.setattr(dist_mod, "context", lambda how: ctx if how else None)
    shape, r, c, v = problem(gen)
    a = DLRL(shape, rank=4, bias=True, dtype="float64")
    ha = _fit(a, r, c, v, epochs=5, distributed=True)
    b = DLRL(shape, rank=4, bias=True, dtype="float64")
    hb = _fit(b, r, c, v, epochs=5, distributed=False)
    assert ctx.reduced >= 5 and a.world_size == 1
    assert [x["train_loss"] for x in ha] == [x["train_loss"] for x in hb]
