"""Image-completion data and metrics.

Conventions
    Images are ``(H, W, C)`` float64 tensors with values in ``0..255`` (grayscale has
    ``C = 1``).  Masks are bool tensors, **True = observed**, False = missing; an ``(H, W)``
    mask applies to every channel of an ``(H, W, C)`` image.

Metrics
    :func:`psnr_missing` measures only the missing entries (the usual figure for inpainting
    papers); :func:`psnr_full` measures every pixel and reads several dB higher on the same
    result -- always say which one you report.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

__all__ = [
    "load_image",
    "save_image",
    "side_by_side",
    "sample_image",
    "random_mask",
    "text_mask",
    "load_text_mask",
    "psnr_missing",
    "psnr_full",
    "synthetic_low_rank",
    "rsre",
    "DEFAULT_TEXT",
    "inpaint",
    "image_to_matrix",
    "LAYOUTS",
    "INPAINT_DEFAULTS",
    "INPAINT_LAYOUTS",
    "MIXED_PLAN",
    "HOLDOUTS",
]

#: Text drawn by :func:`text_mask` when none is given (repeated to fill the image).
DEFAULT_TEXT = (
    "Low-rank matrix completion recovers the missing entries of an image from the "
    "observed ones. The quick brown fox jumps over the lazy dog 0123456789."
)


def _as_tensor(x: Any, dtype=torch.float64) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def _hw(shape: Any) -> tuple[tuple[int, ...], int, int, int | None]:
    """Normalise ``shape`` (a tuple, torch.Size or a tensor/array whose shape is used)."""
    if isinstance(shape, (torch.Tensor, np.ndarray)):
        shape = tuple(shape.shape)
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(f"shape must be (H, W) or (H, W, C), got {shape!r}") from None
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"shape must be (H, W) or (H, W, C) with positive sizes, got {shape!r}")
    h, w = shape[:2]
    c = shape[2] if len(shape) == 3 else None
    return shape, h, w, c


# --------------------------------------------------------------------------------------------
# Image I/O
# --------------------------------------------------------------------------------------------


def _pil_to_tensor(img) -> torch.Tensor:
    mode = img.mode
    if mode.startswith(("I", "F")):  # 16/32-bit integer or float grayscale
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.size and arr.max() > 255 else 255.0
        arr = np.clip(arr, 0.0, top) * (255.0 / top)
    elif mode in ("1", "L", "LA", "La"):
        arr = np.asarray(img.convert("L"), dtype=np.float64)
    else:  # RGB, RGBA (alpha dropped), palette, CMYK, YCbCr ...
        arr = np.asarray(img.convert("RGB"), dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(arr))


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read a PNG/JPEG/BMP/... image as an ``(H, W, C)`` float64 tensor in ``0..255``.

    Grayscale images give ``C = 1``; colour images (palette and RGBA included, alpha
    dropped) give ``C = 3``.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return _pil_to_tensor(img)
    except UnidentifiedImageError as exc:
        raise ValueError(f"{path}: not an image file PIL can read") from exc
    except (OSError, SyntaxError) as exc:  # truncated or damaged data (PIL raises OSError)
        raise ValueError(f"{path}: the image data is truncated or damaged ({exc})") from None


def _to_uint8(image: Any) -> np.ndarray:
    arr = _as_tensor(image).numpy()
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(
            f"image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {arr.shape}"
        )
    arr = np.nan_to_num(arr, nan=0.0)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def save_image(image: Any, path: str | os.PathLike) -> Path:
    """Write an ``(H, W, C)`` (or ``(H, W)``) image with values in ``0..255`` to ``path``;
    values are rounded and clipped to ``0..255`` and the format follows the suffix."""
    from PIL import Image

    from ._io import atomic_write

    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"path: expected an image file name (.png, .jpg, .bmp, ...), got {path.name}")
    pil = Image.fromarray(_to_uint8(image))
    atomic_write(path, lambda f: pil.save(f, format=fmt))  # never a half-written image
    return path


def side_by_side(
    images: Sequence[Any],
    titles: Sequence[str],
    path: str | os.PathLike,
    ncols: int | None = None,
    panel_inches: float = 3.0,
    dpi: int = 120,
) -> Path:
    """Save a figure of ``images`` (each ``(H, W, C)`` in ``0..255``) in a row -- or a grid of
    ``ncols`` columns -- with ``titles`` above them (matplotlib, Agg backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    images, titles = list(images), list(titles)
    if not images:
        raise ValueError("side_by_side: images is empty")
    if len(titles) != len(images):
        raise ValueError(
            f"side_by_side: got {len(images)} images but {len(titles)} titles"
        )
    ncols = len(images) if ncols is None else max(1, min(int(ncols), len(images)))
    nrows = math.ceil(len(images) / ncols)
    width = max(12, int(panel_inches * 11))
    lines = max(len(textwrap.wrap(str(t), width)) or 1 for t in titles)
    fig = Figure(figsize=(panel_inches * ncols, panel_inches * nrows + (0.25 + 0.2 * lines) * nrows))
    FigureCanvasAgg(fig)
    for k, (img, title) in enumerate(zip(images, titles)):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        arr = _to_uint8(img)
        if arr.ndim == 2:
            ax.imshow(arr, cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(arr)
        # long titles wrap to the panel's width (about 11 characters per inch at this size)
        ax.set_title(textwrap.fill(str(title), width), fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    from ._io import atomic_write

    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, dpi=dpi, format=path.suffix.lstrip(".").lower() or "png"))
    return path


def sample_image(
    name: str = "astronaut", size: int | tuple[int, int] | None = None
) -> torch.Tensor:
    """A scikit-image sample (``skimage.data.<name>``) as ``(H, W, C)`` float64 in ``0..255``.

    ``size``: an int scales the image so that its longer side is ``size`` pixels (aspect kept;
    e.g. 128 turns the 512x512 astronaut into 128x128); an ``(H, W)`` pair resizes exactly.
    """
    try:
        import skimage.data as skdata
    except ImportError as exc:
        raise ImportError(
            "sample_image needs scikit-image: pip install scikit-image "
            "(or pip install 'dlrl-kernels[images]')"
        ) from exc
    from PIL import Image

    loader = getattr(skdata, str(name), None)
    if not callable(loader) or str(name).startswith("_"):
        raise ValueError(f"sample_image: skimage.data has no image named {name!r}")
    arr = np.asarray(loader())
    if arr.dtype == bool:
        arr = arr.astype(np.float64) * 255.0
    elif np.issubdtype(arr.dtype, np.floating):
        arr = arr * 255.0 if arr.max() <= 1.0 else arr
    elif arr.dtype == np.uint16:
        arr = arr / 257.0
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"sample_image: {name!r} is not a 2-D image (shape {arr.shape})")
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if size is not None:
        h, w = arr.shape[:2]
        if isinstance(size, (int, np.integer)):
            if size < 1:
                raise ValueError(f"sample_image: size must be positive, got {size!r}")
            f = size / max(h, w)
            new_h, new_w = max(1, round(h * f)), max(1, round(w * f))
        else:
            new_h, new_w = (int(s) for s in size)
        chans = []
        for c in range(arr.shape[2]):
            im = Image.fromarray(arr[:, :, c].astype(np.float32), mode="F")
            chans.append(np.asarray(im.resize((new_w, new_h), Image.Resampling.LANCZOS)))
        arr = np.clip(np.stack(chans, axis=-1).astype(np.float64), 0.0, 255.0)
    return torch.from_numpy(np.ascontiguousarray(arr))


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------


def random_mask(
    shape: Any, missing: float = 0.4, seed: int = 0, per_channel: bool = True
) -> torch.Tensor:
    """A bool observed-mask (True = observed) with exactly ``round(missing * H * W)`` missing
    pixels, chosen uniformly at random.

    ``shape`` is ``(H, W)`` or ``(H, W, C)`` (or a tensor whose shape is used).  With
    ``per_channel=True`` each channel of an ``(H, W, C)`` shape gets its own independent
    mask; with ``False`` one ``(H, W)`` mask is repeated over the channels.  The result has
    ``shape``; the same seed gives the same mask.
    """
    shape, h, w, c = _hw(shape)
    missing = float(missing)
    if not 0.0 <= missing <= 1.0:
        raise ValueError(f"random_mask: missing must be a fraction in [0, 1], got {missing!r}")
    n_layers = c if (c is not None and per_channel) else 1
    k = int(round(missing * h * w))
    gen = torch.Generator().manual_seed(int(seed))
    scores = torch.rand((n_layers, h * w), generator=gen)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    mask = (ranks >= k).reshape(n_layers, h, w).permute(1, 2, 0)  # (H, W, layers)
    if c is None:
        return mask[:, :, 0].contiguous()
    if n_layers == 1:
        mask = mask.expand(h, w, c)
    return mask.contiguous()


def _broadcast_channels(mask2d: torch.Tensor, c: int | None) -> torch.Tensor:
    if c is None:
        return mask2d
    return mask2d[:, :, None].expand(*mask2d.shape, c).contiguous()


def _font(font_size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def text_mask(
    shape: Any,
    text: str = DEFAULT_TEXT,
    seed: int | None = None,
    font_size: int | None = None,
    line_spacing: float = 1.35,
) -> torch.Tensor:
    """A bool observed-mask with ``text`` written over the whole image area, black on white
    with PIL's default font (False where a text pixel is, i.e. where the rendered pixel is
    not pure white, antialiasing included -- the convention of :func:`load_text_mask`).

    The words of ``text`` are wrapped to the image width (with a small margin) and repeated
    until the lines, ``line_spacing * font_size`` pixels apart, fill the image height.
    ``font_size`` defaults to ``max(8, H // 12)``, which gives roughly 11-20 % missing
    pixels (about 15 % at 300 x 300; the paper's mask has about 12 %).  ``seed=None`` gives
    a fixed layout; an int starts at a random word and shifts the lines by a random offset.
    Returns ``(H, W)`` or ``(H, W, C)`` like ``shape`` (the same mask on every channel).
    """
    from PIL import Image, ImageDraw

    shape, h, w, c = _hw(shape)
    words = str(text).split()
    if not words:
        raise ValueError("text_mask: text is empty")
    font_size = max(8, h // 12) if font_size is None else int(font_size)
    if font_size < 1:
        raise ValueError(f"text_mask: font_size must be positive, got {font_size!r}")
    if not line_spacing > 0:
        raise ValueError(f"text_mask: line_spacing must be positive, got {line_spacing!r}")
    rng = np.random.default_rng(seed) if seed is not None else None
    font = _font(font_size)
    canvas = Image.new("L", (w, h), 255)
    draw = ImageDraw.Draw(canvas)
    margin = max(1, w // 20)
    step = max(1, int(round(line_spacing * font_size)))
    y = max(1, h // 30)
    k = 0
    if rng is not None:
        y = int(rng.integers(0, max(1, step // 2) + 1))
        k = int(rng.integers(0, len(words)))
    while y < h:
        line = words[k % len(words)]  # always at least one word per line
        k += 1
        while True:
            cand = line + " " + words[k % len(words)]
            if draw.textlength(cand, font=font) > w - 2 * margin:
                break
            line = cand
            k += 1
        draw.text((margin, y), line, fill=0, font=font)
        y += step
    observed = np.asarray(canvas) == 255
    return _broadcast_channels(torch.from_numpy(observed.copy()), c)


def load_text_mask(path: str | os.PathLike, channels: int | None = None) -> torch.Tensor:
    """Read a mask image: a pixel is missing where any channel is below 255 (e.g. black
    antialiased text on white), observed where every channel is 255.

    Returns a bool ``(H, W)`` mask (True = observed), or ``(H, W, channels)`` when given.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask image not found: {path}")
    from PIL import UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("L", "RGB"):
                img = img.convert("RGB" if img.mode in ("RGBA", "P", "CMYK") else "L")
            arr = np.asarray(img)
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not an image file PIL can read") from None
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"{path}: the mask image is truncated or damaged ({exc})") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    observed = (arr >= 255).all(axis=-1)
    return _broadcast_channels(torch.from_numpy(observed.copy()), channels)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _prepare(recovered, truth, peak, fname):
    rec = _as_tensor(recovered)
    tru = _as_tensor(truth)
    if rec.shape != tru.shape:
        raise ValueError(
            f"{fname}: recovered has shape {tuple(rec.shape)} but truth has {tuple(tru.shape)}"
        )
    peak = float(peak)
    if not peak > 0:
        raise ValueError(f"{fname}: peak must be positive, got {peak!r}")
    if torch.isnan(rec).any():
        raise ValueError(f"{fname}: recovered contains NaN")
    return rec.clamp(0.0, peak), tru, peak


def _psnr(sq_err: torch.Tensor, peak: float) -> float:
    mse = float(sq_err.mean())
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(peak * peak / mse)


def psnr_missing(recovered: Any, truth: Any, observed_mask: Any, peak: float = 255.0) -> float:
    """PSNR in dB over the **missing** entries only (where ``observed_mask`` is False).

    ``recovered`` is clipped to ``[0, peak]`` first; the MSE is the mean squared error over
    the missing entries of all channels (an ``(H, W)`` mask applies to every channel);
    PSNR = 10 log10(peak^2 / MSE) (``inf`` for an exact recovery).

    Raises ValueError when nothing is missing or the shapes do not match.
    """
    rec, tru, peak = _prepare(recovered, truth, peak, "psnr_missing")
    mask = observed_mask if isinstance(observed_mask, torch.Tensor) else torch.as_tensor(
        np.asarray(observed_mask)
    )
    mask = mask.detach().cpu()
    if mask.dtype != torch.bool:
        mask = mask != 0
    if mask.dim() == tru.dim() - 1 and tuple(mask.shape) == tuple(tru.shape[:-1]):
        mask = mask.unsqueeze(-1)
    try:
        mask = mask.expand(tru.shape)
    except RuntimeError:
        raise ValueError(
            f"psnr_missing: observed_mask has shape {tuple(mask.shape)}, which does not match "
            f"the image shape {tuple(tru.shape)}"
        ) from None
    missing = ~mask
    if not bool(missing.any()):
        raise ValueError(
            "psnr_missing: observed_mask has no missing entries (it is True everywhere), so "
            "there is nothing to measure; use psnr_full for the whole image"
        )
    return _psnr((rec[missing] - tru[missing]) ** 2, peak)


def psnr_full(recovered: Any, truth: Any, peak: float = 255.0) -> float:
    """PSNR in dB over **all** entries (every pixel and channel); ``recovered`` is clipped
    to ``[0, peak]`` first."""
    rec, tru, peak = _prepare(recovered, truth, peak, "psnr_full")
    if tru.numel() == 0:
        raise ValueError("psnr_full: empty image")
    return _psnr((rec - tru) ** 2, peak)


# --------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------


def synthetic_low_rank(
    m: int = 100,
    n: int = 100,
    rank: int = 20,
    noise: float = 0.0,
    missing: float = 0.5,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> dict:
    """A random rank-``rank`` ``m x n`` completion problem.

    ``U`` (m x rank) and ``V`` (n x rank) have i.i.d. N(0, 1) entries and
    ``truth = U @ V.T``; ``observed = truth + noise * N(0, 1)`` with NaN at the
    ``round(missing * m * n)`` randomly chosen missing entries; ``mask`` is True where
    observed.  Returns a dict with ``truth``, ``observed``, ``mask``, ``U``, ``V`` and
    ``rank``.
    """
    m, n, rank = int(m), int(n), int(rank)
    if m < 1 or n < 1 or rank < 1:
        raise ValueError(
            f"synthetic_low_rank: m, n and rank must be positive, got {m}, {n}, {rank}"
        )
    if rank > min(m, n):
        raise ValueError(f"synthetic_low_rank: rank={rank} exceeds min(m, n)={min(m, n)}")
    if float(noise) < 0:
        raise ValueError(f"synthetic_low_rank: noise must be >= 0, got {noise!r}")
    gen = torch.Generator().manual_seed(int(seed))
    u = torch.randn(m, rank, generator=gen, dtype=torch.float64)
    v = torch.randn(n, rank, generator=gen, dtype=torch.float64)
    truth = u @ v.T
    observed = truth + float(noise) * torch.randn(m, n, generator=gen, dtype=torch.float64)
    mask = random_mask((m, n), missing=missing, seed=int(seed) + 1)
    observed = observed.masked_fill(~mask, float("nan"))
    return {
        "truth": truth.to(dtype),
        "observed": observed.to(dtype),
        "mask": mask,
        "U": u.to(dtype),
        "V": v.to(dtype),
        "rank": rank,
    }


def rsre(estimate: Any, truth: Any) -> float:
    """Relative squared-root error ``||X_hat - X||_F / ||X||_F``."""
    est = _as_tensor(estimate)
    tru = _as_tensor(truth)
    if est.shape != tru.shape:
        raise ValueError(
            f"rsre: estimate has shape {tuple(est.shape)} but truth has {tuple(tru.shape)}"
        )
    denom = float(torch.linalg.vector_norm(tru))
    if denom == 0.0:
        raise ValueError("rsre: truth is all zeros, the relative error is undefined")
    return float(torch.linalg.vector_norm(est - tru)) / denom


# --------------------------------------------------------------------------------------------
# Inpainting with DLRL: a layout, whole-pixel validation, a cross-validation ensemble
# --------------------------------------------------------------------------------------------

#: how an (H, W, C) image becomes a matrix: "patches" -- every non-overlapping p×p×C patch is one
#: column (p²C rows); "channels" -- the channels side by side, H × (C·W)
LAYOUTS = ("patches", "channels")
#: inpaint's layouts: LAYOUTS, or "mixed" (the default): the members of the ensemble use different
#: matrices, MIXED_PLAN
INPAINT_LAYOUTS = ("mixed",) + LAYOUTS
#: the members of the default ("mixed") ensemble, in order: (layout, patch side, grid offset);
#: 4 × 8×8 patches, 4 × 4×4 patches, 2 × 6×6 patches (grids shifted by half a patch) and 2 × the
#: channels side by side (H × 3W), interleaved so that a shorter ensemble (``models < 12`` or a
#: ``budget_s``) still mixes layouts. Why mixed: see INPAINT_DEFAULTS.
MIXED_PLAN = (("patches", 8, (0, 0)), ("patches", 4, (0, 0)), ("channels", 4, (0, 0)), ("patches", 6, (0, 0)),
              ("patches", 8, (4, 4)), ("patches", 4, (2, 2)), ("patches", 8, (0, 4)), ("patches", 4, (0, 2)),
              ("channels", 4, (0, 0)), ("patches", 6, (3, 3)), ("patches", 8, (4, 0)), ("patches", 4, (2, 0)))
#: inpainting defaults, chosen on validation pixels (held back from the *observed* ones, whole
#: pixels at a time; the truth never enters).
#: rank / blocks / biases / lr / weight decay: validation PSNR of one fit (fold 0), mean over
#: re1-re6 at 300×300×3 with 40 % of the pixels missing (bench/results/images.md has the table):
#: 4×4 patches, rank 32, 2 blocks, no biases 29.21 dB; the channels side by side (H × 3W) 27.93;
#: rank 16 / 24 / 40: 28.63 / 29.07 / 29.10; 3 blocks 29.09; biases 29.09. On the astronaut
#: (128×128×3) the patch layout's validation RMSE is 0.111 vs 0.132 for the channel layout.
#: Adam weight decay only hurt (channels layout, astronaut: validation RMSE 0.166 / 0.216 / 0.331
#: at 1 / 3 / 10 vs 0.132 without); lr 0.03 reaches the validation minimum in ~100 epochs (0.01:
#: not within 300).
#: layout "mixed" and models 12: judged on an *outer* set of observed pixels held back from the
#: ensemble (random mask: 10 % random observed pixels; text mask: the text strokes shifted onto
#: observed pixels, whole strokes -- random pixels next to a stroke are far easier and would not
#: show that a 4×4 grid loses wholly covered patches), re1-re6 at 300 px, both masks, each member
#: fitted once and the ensembles scored on the outer pixels (``bench_images.py --outer-check``;
#: the table in bench/results/images.md; with patience 5, the previous default, in
#: images_outer_patience5.json). Mean outer-pixel PSNR over the 12 cases (patience 5): the previous
#: default (4×4 patches, 4 shifted grids, threshold weighting) 27.50 dB; 4×4 ×4 with the seen-share
#: weighting 27.68; 8×8 ×4 29.47; channels ×2 27.33; the mix's first 4 / 8 / all 12 members 29.38 /
#: 29.83 / 30.03 (text mask 29.34 vs 25.08 for the previous default, random 30.73 vs 29.91); with
#: patience 20 the 12-member mix gives 30.08. The 12-member mix is the best, or within 0.03 dB of the
#: best, on 11 of the 12 cases (re6 text: 8×8 ×4 46.01 vs 44.42 -- a smooth, layered image). 4×4 patches alone lose on the
#: text mask because strokes cover whole 4×4 patches (columns with no data); 8×8 patches and the
#: channel layout see every column. Cost: 12 fits instead of 4 (385 s for the 144 fits of the
#: check at 300 px, i.e. ~32 s per image at 1 thread on a shared 2-core machine).
#: patience (of DLRL.fit's plateau schedule on the training loss; paper mode's own is 5): the same
#: outer check on re1, re5, re6 × both masks, 12 members, with patience 5 / 20 / 50 (files
#: bench/results/images_outer_patience5.json, images_outer.json, images_outer_patience50.json):
#: mean 33.08 / 33.18 / 33.13 dB (re6 random 41.20 / 41.62 / 41.43; the others within 0.1 dB -- only
#: the smooth images' fits run into the schedule); over all 12 cases 20 gives 30.08 vs 30.03 for 5,
#: no case lower by more than 0.01 dB.
INPAINT_DEFAULTS = {"layout": "mixed", "patch": 4, "rank": 32, "blocks": 2, "bias": False,
                    "weight_decay": 0.0, "lr": 0.03, "epochs": 1000, "early_stopping": 30, "patience": 20,
                    "models": 12}
#: share of the observed pixels held back for validation by each ensemble member (1 / folds)
INPAINT_FOLDS = 10
#: how each member's validation pixels are drawn: "random" (default) -- disjoint random parts of
#: the observed pixels; "mask" -- the missing-pixel pattern shifted onto observed pixels (the
#: shape of the real task: strokes for a text mask), at most 1/INPAINT_FOLDS of them. For a
#: random mask the two draw alike. On the text mask (re1 / re2 at 150 px) "mask" makes the
#: validation PSNR an honest estimate (27.34 / 21.75 dB vs 27.62 / 21.97 on the missing pixels;
#: "random" reads 29.79 / 23.01 vs 28.38 / 22.12) but its members stop earlier and the result is
#: 0.2-0.8 dB lower, so "random" stays the default and "mask" is there for an honest estimate
HOLDOUTS = ("random", "mask")


def _grid_offsets(patch: int) -> list:
    """Patch-grid shifts of the ensemble members: the grid moves by half a patch so that no two
    members cut the image at the same seams (their errors differ, the average gains)."""
    s = patch // 2
    offs = [(0, 0), (s, s), (0, s), (s, 0)] if s > 0 else [(0, 0)]
    return offs


def image_to_matrix(image: torch.Tensor, layout: str = "patches", patch: int = 4,
                    offset: tuple = (0, 0)) -> tuple:
    """The matrix DLRL completes for ``image`` (``(H, W, C)``, any dtype, bool masks too) and the
    function that maps such a matrix back to ``(H, W, C)``.

    ``"channels"``: ``H × (C·W)``, ``[channel 0 | channel 1 | ...]``.  ``"patches"``: the image is
    padded at the bottom/right to a multiple of ``patch`` (the padding is returned as missing when
    the input is a bool mask, as zeros otherwise), rolled by ``offset`` (circularly), and every
    non-overlapping ``patch × patch × C`` block becomes one column: ``patch²·C × n_patches``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    if image.dim() != 3:
        raise ValueError(f"image: expected (H, W, C), got shape {tuple(image.shape)}")
    h, w, c = image.shape
    if layout == "channels":
        def back(Z):
            return Z.reshape(h, c, w).permute(0, 2, 1)
        return image.permute(0, 2, 1).reshape(h, c * w), back
    p = int(patch)
    if p < 1 or p > min(h, w):
        raise ValueError(f"patch: expected a patch side in [1, {min(h, w)}] for a {h}×{w} image, got {patch!r}")
    hp, wp = -(-h // p) * p, -(-w // p) * p
    canvas = torch.zeros((hp, wp, c), dtype=image.dtype)
    canvas[:h, :w] = image
    dy, dx = (int(o) for o in offset)
    canvas = torch.roll(canvas, (dy, dx), dims=(0, 1))
    nh, nw = hp // p, wp // p
    M = canvas.reshape(nh, p, nw, p, c).permute(1, 3, 4, 0, 2).reshape(p * p * c, nh * nw)

    def back(Z):
        full = Z.reshape(p, p, c, nh, nw).permute(3, 0, 4, 1, 2).reshape(hp, wp, c)
        return torch.roll(full, (-dy, -dx), dims=(0, 1))[:h, :w]

    return M, back


def _pixel_folds(observed_px: torch.Tensor, folds: int, seed: int) -> list:
    """The observed pixels (flat indices) in ``folds`` disjoint random parts (seeded)."""
    idx = observed_px.reshape(-1).nonzero().reshape(-1)
    perm = idx[torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(int(seed)))]
    return list(perm.chunk(folds))


def _mask_holdouts(observed_px: torch.Tensor, count: int, seed: int, fraction: float) -> list:
    """``count`` validation sets shaped like the mask: the missing-pixel pattern shifted
    (circularly) by a random offset of at least an eighth of the image, intersected with the
    observed pixels, then thinned at random to at most ``fraction`` of them. A random mask
    gives random pixels; a text mask gives text-like strokes, so validation is as hard as the
    real task (random pixels next to a stroke are easier to fill than the stroke)."""
    h, w = observed_px.shape
    gen = torch.Generator().manual_seed(int(seed))
    missing = ~observed_px
    n_obs = int(observed_px.sum())
    cap = max(1, int(round(fraction * n_obs)))
    out = []
    for _ in range(count):
        best = None
        for _try in range(8):  # an offset whose shifted pattern lands mostly on observed pixels
            dy = int(torch.randint(max(1, h // 8), max(2, h - h // 8 + 1), (1,), generator=gen))
            dx = int(torch.randint(max(1, w // 8), max(2, w - w // 8 + 1), (1,), generator=gen))
            cand = (torch.roll(missing, (dy, dx), dims=(0, 1)) & observed_px).reshape(-1).nonzero().reshape(-1)
            if best is None or cand.numel() > best.numel():
                best = cand
            if cand.numel() >= cap:
                break
        if best.numel() > cap:
            best = best[torch.randperm(best.numel(), generator=gen)[:cap]]
        out.append(best.sort().values)
    return out


#: rule "threshold": a member's pixel counts fully in the ensemble mean when at least this share
#: of its patch (matrix column) was observed in that member's training pixels; below, it only
#: fills in where no member saw enough (text masks cover whole 4×4 patches now and then)
MIN_SEEN = 0.25
#: how _combine weights the members at a pixel: "seen" (default) -- by the share of that pixel's
#: matrix column the member saw in training (a column with little data is poorly completed);
#: "threshold" -- 1 at or above MIN_SEEN, 1e-3 × the share below (the previous rule). On the outer
#: check behind INPAINT_DEFAULTS (12 members, re1-re6 at 300 px): "seen" 30.03 vs "threshold"
#: 29.84 dB mean; text mask 29.34 vs 28.95, random mask 30.73 vs 30.73.
COMBINE_RULES = ("seen", "threshold")


def _combine(preds: list, seens: list, rule: str = "seen") -> torch.Tensor:
    """The ensemble's weighted mean (weights: ``COMBINE_RULES``); a pixel whose columns no member
    saw at all gets the plain mean."""
    if rule not in COMBINE_RULES:
        raise ValueError(f"rule: expected one of {COMBINE_RULES}, got {rule!r}")
    P = torch.stack(preds)
    S = torch.stack(seens)
    w = S if rule == "seen" else torch.where(S >= MIN_SEEN, torch.ones_like(S), 1e-3 * S)
    tot = w.sum(0)
    mean = P.mean(0)
    return torch.where(tot > 0, (w * P).sum(0) / tot.clamp_min(1e-300), mean)


def _fit_member(target: torch.Tensor, obs: torch.Tensor, held_px: torch.Tensor, layout: str, patch: int,
                offset: tuple, cfg: dict, *, seed: int, dtype: str = "float32", threads: int | None = 1,
                patience: int | None = None, model_options: dict | None = None) -> tuple:
    """One ensemble member: ``target`` (``(H, W, C)``, scaled) as the ``layout``/``patch``/``offset``
    matrix, fitted by DLRL on the observed entries (``obs``, ``(H, W, C)`` bool) outside the pixels
    ``held_px`` (flat pixel indices, all channels held back) and stopped early on those. Returns
    ``(prediction (H, W, C) float64, seen share of its column (H, W, C), best validation RMSE, history)``."""
    from .model import DLRL

    h, w, c = target.shape
    fdt = torch.float64 if dtype == "float64" else torch.float32
    X, back = image_to_matrix(target, layout, patch, offset)
    M, _ = image_to_matrix(obs, layout, patch, offset)
    held = torch.zeros(h * w, dtype=torch.bool)
    held[held_px] = True
    H, _ = image_to_matrix(held.reshape(h, w, 1).expand(h, w, c).contiguous(), layout, patch, offset)
    H = H & M
    fr, fc = (M & ~H).nonzero(as_tuple=True)
    vr, vc = H.nonzero(as_tuple=True)
    model = DLRL(tuple(X.shape), rank=min(int(cfg["rank"]), *X.shape), blocks=int(cfg["blocks"]),
                 bias=bool(cfg["bias"]), seed=int(seed), dtype=dtype, **(model_options or {}))
    hist = model.fit(rows=fr, cols=fc, values=X[fr, fc].to(fdt), val=(vr, vc, X[vr, vc].to(fdt)),
                     epochs=int(cfg["epochs"]), early_stopping=int(cfg["early_stopping"]), lr=float(cfg["lr"]),
                     weight_decay=float(cfg["weight_decay"]),
                     patience=cfg.get("patience") if patience is None else patience, progress=False, tune=False,
                     threads=threads)
    scores = [r["val_rmse"] for r in hist if "val_rmse" in r and math.isfinite(r["val_rmse"])]
    best = min(scores) if scores else float("inf")
    P = back(model.complete().to("cpu", torch.float64))
    # how much of each column (patch) this member saw: a column with (almost) nothing observed
    # cannot be completed by a low-rank model (its factor is untrained), so such pixels are taken
    # from the members whose other grid / layout put them in a better-seen column (``_combine``)
    seen = back((M & ~H).double().mean(dim=0, keepdim=True).expand(M.shape).contiguous())
    return P, seen, best, hist


def _member_plan(cfg: dict, h: int, w: int) -> list:
    """``(layout, patch, offset)`` of each ensemble member (cycled when ``models`` is longer):
    ``"mixed"`` -- ``MIXED_PLAN`` (patch sides above the image's shorter side shrink to it);
    ``"patches"`` -- ``cfg["patch"]`` with the grid shifted by half a patch between members;
    ``"channels"`` -- the one matrix (members differ in fold and seed)."""
    if cfg["layout"] == "channels":
        return [("channels", int(cfg["patch"]), (0, 0))]
    if cfg["layout"] == "patches":
        return [("patches", int(cfg["patch"]), off) for off in _grid_offsets(int(cfg["patch"]))]
    side = min(h, w)
    plan = []
    for lay, pat, off in MIXED_PLAN:
        p = min(int(pat), side)
        plan.append((lay, p, tuple(o % p for o in off)))
    return plan


def inpaint(image: Any, observed: Any, *, layout: str | None = None, patch: int | None = None,
            models: int | None = None, holdout: str = "random", rank: int | None = None, blocks: int | None = None,
            bias: bool | None = None, weight_decay: float | None = None, lr: float | None = None,
            epochs: int | None = None, early_stopping: int | None = None, patience: int | None = None,
            budget_s: float | None = None,
            seed: int = 0, threads: int | None = 1, progress: bool = False, keep_observed: bool = True,
            return_report: bool = False, **model_options):
    """Fill the missing pixels of ``image`` (``(H, W, C)`` in ``0..255``; ``observed`` True where
    known, ``(H, W)`` or ``(H, W, C)``) with DLRL -- nothing here looks at the missing pixels.

    How (defaults in ``INPAINT_DEFAULTS``, each chosen on held-back *observed* pixels):
    - each ensemble member completes the image as a matrix (:func:`image_to_matrix`):
      ``layout="mixed"`` (default) -- member ``k`` uses ``MIXED_PLAN[k % 12]``: 8×8, 4×4 and 6×6
      patches as columns (grids shifted by half a patch between members) and the channels side by
      side (H × C·W); ``"patches"`` -- ``patch``×``patch``×C patches (given ``patch`` alone means
      this), the grid shifted by half a patch between members; ``"channels"`` -- H × C·W;
    - each ensemble member ``k`` holds back its own validation pixels -- ``holdout="random"``
      (default): part ``k % 10`` of 10 disjoint random parts of the observed pixels; ``"mask"``: the
      missing-pixel pattern shifted onto observed pixels (strokes for a text mask), at most
      10 % of the observed pixels -- is fitted on the other observed pixels and stopped early on
      its held-back ones (validation holds back *whole pixels*, like the mask: holding back single
      channel values lets the other channels of the same pixel give the answer away and makes
      the validation error look ~2 dB better than the real one);
    - the result is the weighted mean of the ``models`` members (a cross-validation ensemble; the
      members' errors differ), each member's pixel weighted by the share of its matrix column
      (patch) the member saw in training (``_combine``: a wholly covered patch is a column with
      no data -- text masks do that -- and another layout or grid fills it); with ``budget_s``
      no new member starts after that many seconds (at least one runs).
    ``rank`` / ``blocks`` / ``bias`` / ``weight_decay`` / ``lr`` / ``epochs`` / ``early_stopping``
    / ``patience`` (the plateau schedule's, see ``DLRL.fit``)
    override the defaults; other keywords go to :class:`dlrl.DLRL` (``p``, ``mode``, ``dtype``,
    ``activation``, ``device``, ...).  ``threads``: intra-op threads of each fit (1: see
    ``DLRL.fit``).  Returns the completed ``(H, W, C)`` float64 image (observed pixels as given
    when ``keep_observed``), and with ``return_report`` also a dict: the settings, each member's
    validation RMSE / PSNR (``val_psnr``: an honest estimate of one member's missing-pixel PSNR),
    epochs and seconds, and member 0's training history.
    """
    import time

    img = _as_tensor(image)
    if img.dim() == 2:
        img = img[:, :, None]
    if img.dim() != 3:
        raise ValueError(f"image: expected (H, W) or (H, W, C), got shape {tuple(img.shape)}")
    h, w, c = img.shape
    obs = observed if isinstance(observed, torch.Tensor) else torch.as_tensor(np.asarray(observed))
    obs = obs.detach().cpu()
    if obs.dtype != torch.bool:
        obs = obs != 0
    if obs.dim() == 2:
        obs = obs[:, :, None]
    if tuple(obs.shape[:2]) != (h, w) or obs.shape[2] not in (1, c):
        raise ValueError(f"observed: expected a mask of shape ({h}, {w}) or ({h}, {w}, {c}), got {tuple(observed.shape)}")
    obs = obs.expand(h, w, c).contiguous()
    if not bool(obs.any()):
        raise ValueError("observed: expected at least one observed pixel, got none")
    if bool(torch.isnan(img[obs]).any()):
        raise ValueError("image: expected no NaN at observed pixels")
    cfg = dict(INPAINT_DEFAULTS)
    if layout is None and patch is not None:
        layout = "patches"  # a patch side given alone means that one patch layout
    for k, v in (("layout", layout), ("patch", patch), ("models", models), ("rank", rank), ("blocks", blocks),
                 ("bias", bias), ("weight_decay", weight_decay), ("lr", lr), ("epochs", epochs),
                 ("early_stopping", early_stopping), ("patience", patience)):
        if v is not None:
            cfg[k] = v
    if cfg["layout"] not in INPAINT_LAYOUTS:
        raise ValueError(f"layout: expected one of {INPAINT_LAYOUTS}, got {cfg['layout']!r}")
    for k in ("models", "patch", "rank", "epochs", "early_stopping", "patience"):
        v = cfg[k]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (0 if k == "patience" else 1):
            raise ValueError(f"{k}: expected a {'non-negative' if k == 'patience' else 'positive'} integer, got {v!r}")
    if budget_s is not None and not float(budget_s) > 0:
        raise ValueError(f"budget_s: expected a positive number of seconds or None, got {budget_s!r}")
    if holdout not in HOLDOUTS:
        raise ValueError(f"holdout: expected one of {HOLDOUTS}, got {holdout!r}")
    any_obs = obs.any(dim=-1)  # a pixel with at least one observed channel
    if holdout == "random":
        folds = _pixel_folds(any_obs, INPAINT_FOLDS, seed)
    else:
        folds = _mask_holdouts(any_obs, int(cfg["models"]), seed, 1.0 / INPAINT_FOLDS)
    if min(f.numel() for f in folds) < 1 or int(any_obs.sum()) < INPAINT_FOLDS:
        raise ValueError(f"observed: expected at least {INPAINT_FOLDS} observed pixels (validation needs "
                         f"{INPAINT_FOLDS} parts), got {int(any_obs.sum())}")
    vals = img[obs]
    lo, hi = float(vals.min()), float(vals.max())
    span = hi - lo if hi > lo else 1.0
    target = (img - lo) / span
    plan = _member_plan(cfg, h, w)
    dtype = model_options.pop("dtype", "float32")
    members, preds, seens, history = [], [], [], None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(cfg["models"]), desc="DLRL inpaint", unit="model", leave=False)
    t0 = time.perf_counter()
    try:
        for k in range(int(cfg["models"])):
            if k > 0 and budget_s is not None and time.perf_counter() - t0 > float(budget_s):
                break
            t1 = time.perf_counter()
            lay, pat, off = plan[k % len(plan)]
            P, seen, best, hist = _fit_member(target, obs, folds[k % len(folds)], lay, pat, off, cfg,
                                              seed=int(seed) + k, dtype=dtype, threads=threads,
                                              model_options=model_options)
            preds.append(P)
            seens.append(seen)
            if history is None:
                history = list(hist)
            scores = [r["val_rmse"] for r in hist if "val_rmse" in r and math.isfinite(r["val_rmse"])]
            rmse255 = best * span
            members.append({"layout": lay, "patch": pat, "offset": list(off), "fold": k % len(folds),
                            "val_rmse": best,
                            "val_psnr": 20 * math.log10(255.0 / rmse255) if rmse255 > 0 else math.inf,
                            "best_epoch": (scores.index(best) + 1) if scores else None, "epochs_run": len(hist),
                            "seconds": time.perf_counter() - t1})
            if bar is not None:
                bar.set_postfix_str(f"val {members[-1]['val_psnr']:.2f} dB")
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    rec = (_combine(preds, seens) * span + lo).clamp(lo, hi)
    if keep_observed:
        rec = torch.where(obs, img, rec)
    if not return_report:
        return rec
    report = {"settings": {**cfg, "holdout": holdout, "folds": INPAINT_FOLDS, "budget_s": budget_s, "dtype": dtype, **model_options},
              "members": members, "models_run": len(members), "seconds": time.perf_counter() - t0,
              "mean_val_psnr": float(np.mean([m["val_psnr"] for m in members])), "history": history}
    return rec, report
