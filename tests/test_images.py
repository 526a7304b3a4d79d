"""Tests for dlrl.images: image I/O, masks, PSNR, synthetic low-rank data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dlrl.images import (
    load_image,
    load_text_mask,
    psnr_full,
    psnr_missing,
    random_mask,
    rsre,
    sample_image,
    save_image,
    side_by_side,
    synthetic_low_rank,
    text_mask,
)

IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "images"
TEXT_MASK = IMAGES / "text_mask.bmp"


def gradient_image(h=12, w=10, c=3) -> torch.Tensor:
    y, x, ch = torch.meshgrid(torch.arange(h), torch.arange(w), torch.arange(c), indexing="ij")
    return ((y * 17 + x * 11 + ch * 40) % 256).to(torch.float64)


# ------------------------------------------------------------------------------------------
# I/O
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".bmp"])
def test_save_load_roundtrip_rgb(tmp_path, suffix):
    img = gradient_image()
    p = save_image(img, tmp_path / f"img{suffix}")
    back = load_image(p)
    assert back.shape == (12, 10, 3) and back.dtype == torch.float64
    assert torch.equal(back, img)


def test_load_jpeg_and_gray(tmp_path):
    from PIL import Image

    arr = (np.arange(64 * 48).reshape(64, 48) % 200 + 20).astype(np.uint8)
    Image.fromarray(arr, mode="L").save(tmp_path / "g.png")
    g = load_image(tmp_path / "g.png")
    assert g.shape == (64, 48, 1)
    assert torch.equal(g[:, :, 0], torch.from_numpy(arr).double())
    Image.fromarray(np.stack([arr] * 3, -1)).save(tmp_path / "c.jpg", quality=95)
    c = load_image(tmp_path / "c.jpg")
    assert c.shape == (64, 48, 3) and 0 <= c.min() and c.max() <= 255
    rgba = np.dstack([np.stack([arr] * 3, -1), np.full_like(arr, 128)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png").shape == (64, 48, 3)


def test_save_clips_and_rounds(tmp_path):
    img = torch.tensor([[[-20.0], [300.0]], [[10.4], [10.6]]], dtype=torch.float64)
    back = load_image(save_image(img, tmp_path / "x.png"))
    assert back[:, :, 0].tolist() == [[0.0, 255.0], [10.0, 11.0]]


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "junk.png").write_text("not an image")
    with pytest.raises(ValueError, match="junk.png"):
        load_image(tmp_path / "junk.png")


@pytest.mark.skipif(not (IMAGES / "re1.jpg").is_file(), reason="shared test images absent")
def test_load_shared_jpeg():
    img = load_image(IMAGES / "re1.jpg")
    assert img.shape == (300, 300, 3) and img.dtype == torch.float64
    assert 0 <= img.min() < img.max() <= 255


def test_side_by_side(tmp_path):
    img = gradient_image(16, 16)
    gray = img[:, :, :1]
    p = side_by_side([img, gray, img * 0.5], ["truth", "gray", "half"], tmp_path / "fig.png")
    assert p.is_file() and p.stat().st_size > 1000
    with pytest.raises(ValueError, match="titles"):
        side_by_side([img, img], ["one"], tmp_path / "bad.png")


def test_sample_image():
    pytest.importorskip("skimage")
    img = sample_image("astronaut", size=64)
    assert img.shape == (64, 64, 3) and img.dtype == torch.float64
    assert 0 <= img.min() and img.max() <= 255 and img.std() > 10
    cam = sample_image("camera", size=32)
    assert cam.shape == (32, 32, 1)
    with pytest.raises(ValueError, match="no_such_image"):
        sample_image("no_such_image")


# ------------------------------------------------------------------------------------------
# Masks
# ------------------------------------------------------------------------------------------


def test_random_mask_per_channel():
    m = random_mask((50, 40, 3), missing=0.4, seed=1)
    assert m.shape == (50, 40, 3) and m.dtype == torch.bool
    assert (~m).sum(dim=(0, 1)).tolist() == [800, 800, 800]  # exactly round(0.4 * H * W)
    assert not torch.equal(m[:, :, 0], m[:, :, 1])  # independent channels
    assert torch.equal(m, random_mask((50, 40, 3), missing=0.4, seed=1))
    assert not torch.equal(m, random_mask((50, 40, 3), missing=0.4, seed=2))


def test_random_mask_shared_and_2d():
    m = random_mask((30, 20, 3), missing=0.25, seed=0, per_channel=False)
    assert m.shape == (30, 20, 3)
    assert torch.equal(m[:, :, 0], m[:, :, 1]) and torch.equal(m[:, :, 0], m[:, :, 2])
    assert (~m[:, :, 0]).sum() == 150
    m2 = random_mask((30, 20), missing=0.7, seed=0)
    assert m2.shape == (30, 20) and (~m2).sum() == 420
    assert random_mask(torch.zeros(4, 5, 2), missing=0.5).shape == (4, 5, 2)
    with pytest.raises(ValueError, match="missing"):
        random_mask((4, 4), missing=1.5)
    with pytest.raises(ValueError, match="shape"):
        random_mask((4,))


def test_text_mask_generated():
    m = text_mask((300, 300, 3))
    assert m.shape == (300, 300, 3) and m.dtype == torch.bool
    frac = (~m[:, :, 0]).double().mean().item()
    assert 0.05 < frac < 0.3
    assert torch.equal(m[:, :, 0], m[:, :, 2])
    assert torch.equal(m, text_mask((300, 300, 3)))  # seed=None: fixed layout
    m1, m2 = text_mask((120, 160), seed=1), text_mask((120, 160), seed=2)
    assert m1.shape == (120, 160) and not torch.equal(m1, m2)
    assert torch.equal(m1, text_mask((120, 160), seed=1))
    with pytest.raises(ValueError, match="text"):
        text_mask((10, 10), text="   ")


def test_load_text_mask_convention(tmp_path):
    from PIL import Image

    arr = np.full((10, 8, 3), 255, np.uint8)
    arr[2, 3] = (254, 255, 255)  # one channel below 255 -> missing
    arr[5, 5] = 0
    Image.fromarray(arr).save(tmp_path / "m.bmp")
    m = load_text_mask(tmp_path / "m.bmp")
    assert m.shape == (10, 8) and (~m).sum() == 2 and not m[2, 3] and not m[5, 5]
    assert load_text_mask(tmp_path / "m.bmp", channels=3).shape == (10, 8, 3)
    with pytest.raises(FileNotFoundError, match="absent.bmp"):
        load_text_mask(tmp_path / "absent.bmp")


@pytest.mark.skipif(not TEXT_MASK.is_file(), reason=f"text mask not found at {TEXT_MASK}")
def test_shared_text_mask_about_12_percent():
    m = load_text_mask(TEXT_MASK)
    assert m.shape == (300, 300)
    frac = (~m).double().mean().item()
    assert 0.11 < frac < 0.135


# ------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------


def test_psnr_missing_hand_computed():
    truth = torch.tensor([[10.0, 20.0], [30.0, 40.0]], dtype=torch.float64)[:, :, None]
    rec = torch.tensor([[99.0, 26.0], [-5.0, 300.0]], dtype=torch.float64)[:, :, None]
    mask = torch.tensor([[True, False], [False, True]])
    # missing entries: (0,1) error 6; (1,0) -5 clipped to 0 -> error 30. MSE = (36+900)/2
    expect = 10 * math.log10(255.0**2 / 468.0)
    assert psnr_missing(rec, truth, mask) == pytest.approx(expect, abs=1e-12)
    assert psnr_missing(rec, truth, mask[:, :, None]) == pytest.approx(expect, abs=1e-12)
    assert psnr_missing(rec.numpy(), truth.numpy(), mask.numpy()) == pytest.approx(expect)
    # full: (89^2 + 36 + 900 + 215^2) / 4 (300 clipped to 255)
    full = 10 * math.log10(255.0**2 / ((89**2 + 36 + 900 + 215**2) / 4))
    assert psnr_full(rec, truth) == pytest.approx(full, abs=1e-12)
    assert psnr_missing(rec, truth, mask, peak=100.0) == pytest.approx(
        10 * math.log10(100.0**2 / ((6**2 + 30**2) / 2)), abs=1e-12  # clip at 100 too
    )


def test_psnr_missing_multichannel_mask():
    truth = gradient_image(6, 5, 3) + 1.0
    rec = truth.clone()
    mask = torch.ones(6, 5, 3, dtype=torch.bool)
    mask[1, 2, 0] = False
    mask[4, 4, 2] = False
    rec[1, 2, 0] += 8.0
    rec[4, 4, 2] += 4.0
    rec[0, 0, 1] += 100.0  # observed entry: ignored
    assert psnr_missing(rec, truth, mask) == pytest.approx(10 * math.log10(255**2 / 40.0))
    # one (H, W) mask covers every channel
    mask2 = torch.ones(6, 5, dtype=torch.bool)
    mask2[1, 2] = False
    assert psnr_missing(rec, truth, mask2) == pytest.approx(10 * math.log10(255**2 / (64 / 3)))
    assert psnr_missing(truth, truth, mask2) == math.inf


def test_psnr_errors():
    truth = gradient_image(4, 4) + 1.0
    with pytest.raises(ValueError, match="no missing entries"):
        psnr_missing(truth, truth, torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"):
        psnr_missing(truth[:3], truth, torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="observed_mask"):
        psnr_missing(truth, truth, torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="peak"):
        psnr_full(truth, truth, peak=0)


def test_synthetic_low_rank():
    d = synthetic_low_rank(m=60, n=40, rank=5, noise=0.0, missing=0.3, seed=2)
    truth, obs, mask = d["truth"], d["observed"], d["mask"]
    assert truth.shape == obs.shape == mask.shape == (60, 40) and truth.dtype == torch.float64
    assert torch.linalg.matrix_rank(truth).item() == 5
    assert torch.allclose(truth, d["U"] @ d["V"].T)
    assert (~mask).sum() == 720
    assert torch.equal(torch.isnan(obs), ~mask)
    assert torch.equal(obs[mask], truth[mask])
    assert 0.5 < d["U"].std() < 1.5  # N(0, 1) factors
    again = synthetic_low_rank(m=60, n=40, rank=5, noise=0.0, missing=0.3, seed=2)
    assert torch.equal(again["truth"], truth) and torch.equal(again["mask"], mask)
    noisy = synthetic_low_rank(m=60, n=40, rank=5, noise=0.1, missing=0.3, seed=2)
    diff = (noisy["observed"] - truth)[mask]
    assert 0.05 < diff.std() < 0.2
    f32 = synthetic_low_rank(m=10, n=10, rank=2, dtype=torch.float32)
    assert f32["truth"].dtype == torch.float32
    with pytest.raises(ValueError, match="rank"):
        synthetic_low_rank(m=5, n=5, rank=6)


def test_rsre():
    x = torch.tensor([[3.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    est = torch.tensor([[3.0, 1.0], [0.0, 4.0]], dtype=torch.float64)
    assert rsre(est, x) == pytest.approx(1.0 / 5.0)
    assert rsre(x, x) == 0.0
    with pytest.raises(ValueError, match="all zeros"):
        rsre(x, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="shape"):
        rsre(x[:1], x)


# ------------------------------------------------------------------------------------------
# Inpainting: layouts, whole-pixel validation, the ensemble
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout,patch,offset,shape", [
    ("channels", 4, (0, 0), (12, 10, 3)),
    ("patches", 4, (0, 0), (12, 8, 3)),
    ("patches", 4, (2, 2), (13, 10, 3)),  # padded to 16×12, rolled
    ("patches", 3, (1, 0), (9, 7, 1)),
])
def test_image_to_matrix_round_trip(layout, patch, offset, shape):
    from dlrl.images import image_to_matrix

    img = gradient_image(*shape)
    M, back = image_to_matrix(img, layout, patch, offset)
    assert M.dim() == 2
    if layout == "patches":
        h, w, c = shape
        assert M.shape == (patch * patch * c, -(-h // patch) * -(-w // patch))
    assert torch.equal(back(M), img)
    mask = torch.ones(shape, dtype=torch.bool)
    Mm, _ = image_to_matrix(mask, layout, patch, offset)
    # the padding is missing, every real pixel observed
    assert int(Mm.sum()) == mask.numel()
    # one patch column holds one patch: the 4×4 block at the top left, all channels
    if layout == "patches" and offset == (0, 0) and shape[0] % patch == 0:
        assert torch.equal(M[:, 0].reshape(patch, patch, shape[2]), img[:patch, :patch])


def test_image_to_matrix_errors():
    from dlrl.images import image_to_matrix

    with pytest.raises(ValueError, match="layout"):
        image_to_matrix(gradient_image(), "rows")
    with pytest.raises(ValueError, match="patch"):
        image_to_matrix(gradient_image(), "patches", patch=50)


def _smooth_image(h=24, w=24):
    y, x = torch.meshgrid(torch.linspace(0, 1, h, dtype=torch.float64),
                          torch.linspace(0, 1, w, dtype=torch.float64), indexing="ij")
    return torch.stack([200 * x * y + 20, 150 * (1 - x) + 50 * y, 100 + 80 * torch.sin(3 * x)], -1)


def test_inpaint_never_reads_the_missing_pixels():
    from dlrl.images import inpaint

    img = _smooth_image()
    obs = random_mask(img.shape, missing=0.4, seed=1, per_channel=False)
    kw = dict(models=2, epochs=30, rank=8, seed=0)
    rec, rep = inpaint(img, obs, return_report=True, **kw)
    garbage = img.clone()
    garbage[~obs] = 255.0 - garbage[~obs]  # change only the missing pixels
    rec2 = inpaint(garbage, obs, **kw)
    assert torch.equal(rec, rec2)
    assert rec.shape == img.shape and torch.equal(rec[obs], img[obs])  # observed kept
    assert psnr_missing(rec, img, obs) > 15  # a smooth image comes back roughly
    assert rep["models_run"] == 2 and len(rep["members"]) == 2
    m = rep["members"]
    # the default ensemble mixes layouts: MIXED_PLAN's first two members, 8×8 then 4×4 patches
    assert [(x["layout"], x["patch"]) for x in m] == [("patches", 8), ("patches", 4)]
    assert all(math.isfinite(x["val_psnr"]) and x["epochs_run"] <= 30 for x in m)
    assert rep["history"] and "val_rmse" in rep["history"][0]
    # one patch layout: the patch grid moves between members
    _, rep = inpaint(img, obs, return_report=True, **{**kw, "patch": 4})
    assert rep["settings"]["layout"] == "patches"
    assert [x["offset"] for x in rep["members"]] == [[0, 0], [2, 2]]


def test_inpaint_mixed_plan_on_a_small_image():
    """The mixed ensemble on an image smaller than its largest patch: patch sides shrink to the
    image, offsets stay inside the patch, the channels members are there, more members than
    validation folds reuse the folds."""
    from dlrl.images import INPAINT_FOLDS, MIXED_PLAN, _member_plan, inpaint

    plan = _member_plan({"layout": "mixed", "patch": 4}, 6, 5)
    assert len(plan) == len(MIXED_PLAN) and {lay for lay, _, _ in plan} == {"patches", "channels"}
    assert all(p <= 5 and all(0 <= o < p for o in off) for lay, p, off in plan if lay == "patches")
    img = _smooth_image(6, 5)
    obs = random_mask(img.shape[:2], missing=0.3, seed=3)
    rec, rep = inpaint(img, obs, models=INPAINT_FOLDS + 1, epochs=2, rank=2, return_report=True)
    assert rec.shape == img.shape and torch.isfinite(rec).all()
    folds = [x["fold"] for x in rep["members"]]
    assert max(folds) < INPAINT_FOLDS and folds[-1] in folds[:-1]  # member 11 reuses a fold
    assert "channels" in {x["layout"] for x in rep["members"]}


def test_inpaint_holds_back_whole_pixels():
    """Every validation fold is a set of whole pixels (all channels), disjoint from the others."""
    from dlrl.images import INPAINT_FOLDS, _pixel_folds

    obs = random_mask((20, 20), missing=0.3, seed=0)
    folds = _pixel_folds(obs, INPAINT_FOLDS, seed=0)
    allidx = torch.cat(folds)
    assert len(folds) == INPAINT_FOLDS and allidx.unique().numel() == allidx.numel() == int(obs.sum())
    assert bool(obs.reshape(-1)[allidx].all())


def test_mask_holdouts_look_like_the_mask():
    """holdout="mask": each validation set is the missing pattern shifted onto observed pixels
    (a stripe mask gives stripes), never a missing pixel, at most 10 % of the observed ones."""
    from dlrl.images import _mask_holdouts

    obs = torch.ones(40, 30, dtype=torch.bool)
    obs[10:12] = False  # two missing rows
    sets = _mask_holdouts(obs, 3, seed=0, fraction=0.1)
    assert len(sets) == 3
    for s in sets:
        assert s.numel() >= 1 and s.numel() <= round(0.1 * int(obs.sum()))
        assert bool(obs.reshape(-1)[s].all())
        rows = (s // 30).unique()
        assert rows.numel() <= 2 and rows.max() - rows.min() <= 1  # a shifted copy of the stripe
    rnd = random_mask((40, 30), missing=0.4, seed=0)
    for s in _mask_holdouts(rnd, 2, seed=1, fraction=0.1):
        assert s.numel() == round(0.1 * int(rnd.sum())) and bool(rnd.reshape(-1)[s].all())


def test_inpaint_grayscale_channels_layout_and_budget():
    from dlrl.images import inpaint

    img = _smooth_image(16, 20)[:, :, :1]
    obs = random_mask(img.shape[:2], missing=0.3, seed=2)
    rec, rep = inpaint(img, obs, layout="channels", models=3, epochs=10, rank=4, budget_s=1e-9,
                       return_report=True)
    assert rec.shape == img.shape and rep["models_run"] == 1  # the budget stops after the first
    assert rep["settings"]["layout"] == "channels"


def test_inpaint_errors():
    from dlrl.images import inpaint

    img = _smooth_image(8, 8)
    obs = random_mask(img.shape[:2], missing=0.3, seed=0)
    with pytest.raises(ValueError, match="layout"):
        inpaint(img, obs, layout="rows")
    with pytest.raises(ValueError, match="models"):
        inpaint(img, obs, models=0)
    with pytest.raises(ValueError, match="observed"):
        inpaint(img, obs[:4])
    with pytest.raises(ValueError, match="observed"):
        inpaint(img, torch.zeros(8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="rank"):
        inpaint(img, obs, rank=0)
    with pytest.raises(ValueError, match="holdout"):
        inpaint(img, obs, holdout="stripes")
    with pytest.raises(ValueError, match="patience"):
        inpaint(img, obs, patience=-1)


def test_combine_weights_members_by_what_they_saw():
    from dlrl.images import MIN_SEEN, _combine

    a = torch.full((2, 2, 1), 10.0, dtype=torch.float64)
    b = torch.full((2, 2, 1), 50.0, dtype=torch.float64)
    seen_a = torch.full_like(a, 1.0)
    seen_b = torch.full_like(b, 1.0)
    seen_b[0, 0] = 0.0  # member b's patch at (0, 0) had nothing observed
    seen_b[1, 0] = 0.25  # a quarter of it
    for rule in ("seen", "threshold"):
        out = _combine([a, b], [seen_a, seen_b], rule)
        assert out[0, 0, 0] == 10.0 and out[1, 1, 0] == 30.0
    # the default rule weights by the seen share: (1 * 10 + 0.25 * 50) / 1.25
    assert torch.isclose(_combine([a, b], [seen_a, seen_b])[1, 0, 0], torch.tensor(18.0, dtype=torch.float64))
    assert _combine([a, b], [seen_a, seen_b], "threshold")[1, 0, 0] == 30.0  # 0.25 counts fully there
    # "threshold": nobody saw (0, 0) enough: the seen-weighted mean; nobody saw it at all: the plain mean
    low = torch.full_like(a, MIN_SEEN / 2)
    out = _combine([a, b], [low, 2 * low * 0.5], "threshold")
    assert torch.allclose(out, torch.full_like(a, 30.0))
    zero = torch.zeros_like(a)
    for rule in ("seen", "threshold"):
        assert torch.allclose(_combine([a, b], [zero, zero], rule), torch.full_like(a, 30.0))
    with pytest.raises(ValueError, match="rule"):
        _combine([a, b], [zero, zero], "max")
