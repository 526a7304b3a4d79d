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
    fig = Figure(figsize=(panel_inches * ncols, panel_inches * nrows + 0.4 * nrows))
    FigureCanvasAgg(fig)
    for k, (img, title) in enumerate(zip(images, titles)):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        arr = _to_uint8(img)
        if arr.ndim == 2:
            ax.imshow(arr, cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(arr)
        ax.set_title(str(title), fontsize=10)
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
