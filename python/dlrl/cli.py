"""The command line: ``dlrl fit``, ``dlrl inpaint``, ``dlrl demo`` (also ``python -m dlrl``)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

D = argparse.ArgumentDefaultsHelpFormatter


# ----------------------------------------------------------------------------- shared options
def _model_options(p: argparse.ArgumentParser, images=False):
    """Model and training options. ``images``: the defaults of ``dlrl.complete`` (inpaint, demo)."""
    g = p.add_argument_group("model")
    g.add_argument("--mode", choices=["paper", "published"], default="paper",
                   help="paper: the equations as meant (descent step, true matrix power, normalised); "
                        "published: the reference code's behaviour point by point (SPEC §4)")
    g.add_argument("--rank", type=int, default=10 if images else 20, help="inner dimension d of the factors")
    g.add_argument("--blocks", type=int, default=5, help="number of low-rank blocks I (factors X_1..X_I)")
    g.add_argument("--p", type=float, nargs="+", default=[1.0],
                   help="block exponents p_k in (0, 2]: one for all blocks or one per block (1/p = Σ 1/p_k)")
    g.add_argument("--refresh", choices=["fixed", "carry"], default="fixed",
                   help="fixed: the factors X_k never change (as published); carry: X_k <- X̂_k after each epoch")
    if images:
        g.add_argument("--no-bias", dest="bias", action="store_false",
                       help="no global mean / row / column biases (default: learn them)")
    else:
        g.add_argument("--bias", action="store_true", help="learn a global mean and user/item biases (beyond the paper)")
    g.add_argument("--loss", choices=["sum", "mean"], default="sum", help="training loss reduction (paper Eq. 26: sum)")
    g.add_argument("--seed", type=int, default=0, help="seed of the factor / weight initialisation")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=600 if images else 300, help="maximum number of epochs")
    t.add_argument("--lr", type=float, default=0.01, help="Adam learning rate")
    t.add_argument("--weight-decay", type=float, default=0.0 if images else None,
                   help="Adam (L2) weight decay" + ("" if images else
                        "; default: the mode's (published 0.15; paper 1.25e-4 per observed rating)"))
    t.add_argument("--patience", type=int, default=30 if images else None,
                   help="ReduceLROnPlateau patience in epochs" + ("" if images else "; default: published 10, paper 5"))
    t.add_argument("--early-stopping", type=int, default=None, metavar="N",
                   help="stop after N epochs without a better validation RMSE and keep the best weights "
                        "(needs --val-fraction > 0)")
    t.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... or auto (cuda when available)")
    t.add_argument("--backend", choices=["auto", "reference", "triton", "cuda"], default="auto",
                   help="kernel backend (auto: Triton/CUDA on GPU tensors, pure PyTorch on CPU)")
    t.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="training precision")
    t.add_argument("--quiet", action="store_true", help="no progress bar")


def _device(name):
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _model_kwargs(a, **extra):
    p = a.p[0] if len(a.p) == 1 else list(a.p)
    kw = dict(rank=a.rank, blocks=a.blocks, p=p, mode=a.mode, refresh=a.refresh, bias=a.bias, loss=a.loss,
              seed=a.seed, backend=a.backend, dtype=a.dtype, device=_device(a.device))
    kw.update(extra)
    return kw


def _fit_kwargs(a):
    return dict(epochs=a.epochs, lr=a.lr, weight_decay=a.weight_decay, patience=a.patience,
                early_stopping=a.early_stopping, progress=not a.quiet)


def _plot_history(history, path, title):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.2), dpi=110)
    FigureCanvasAgg(fig)
    ep = [h["epoch"] for h in history]
    panels = [("train_loss", "training loss (½‖P_Ω(X̂−X)‖²)", True), ("val_rmse", "validation RMSE", False),
              ("schatten", "Σ_k ‖X̂_k‖_{S_pk}^{pk}", True)]
    panels = [pn for pn in panels if any(pn[0] in h for h in history)]
    for i, (key, label, logy) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        xs = [e for e, h in zip(ep, history) if key in h]
        ax.plot(xs, [h[key] for h in history if key in h])
        ax.set_xlabel("epoch")
        ax.set_title(label, fontsize=9)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path


# ----------------------------------------------------------------------------- fit
def _load_split(a):
    from . import datasets as ds

    path = Path(a.ratings)
    if not path.exists():
        raise SystemExit(f"dlrl fit: RATINGS: no such file or folder: {path}")
    if a.split.startswith("canonical"):
        k = a.split.split(":", 1)[1] if ":" in a.split else "1"
        folder = path if path.is_dir() else path.parent
        return ds.split_canonical(folder, k)
    if a.format == "movielens" or (a.format == "auto" and (path.is_dir() or path.name in ("u.data", "ratings.dat", "ratings.csv"))):
        data = ds.load_movielens(path)
    else:
        scale = tuple(a.scale) if a.scale else None
        data = ds.load_ratings(path, sep=a.sep, scale=scale, duplicates=a.duplicates)
    if a.split == "published":
        return ds.split_published(data)
    if a.split == "random":
        return ds.split_random(data, test_fraction=a.test_fraction, seed=a.split_seed)
    if a.split == "per-user":
        return ds.split_per_user(data, holdout=a.holdout, seed=a.split_seed)
    raise SystemExit(f"dlrl fit: --split: expected published, random, per-user or canonical:K, got {a.split!r}")


def cmd_fit(a):
    import torch

    from . import datasets as ds
    from .metrics import mae, rmse
    from .model import DLRL

    train, test = _load_split(a)
    val = None
    if a.val_fraction > 0:
        train, valset = ds.train_val_split(train, val_fraction=a.val_fraction, seed=a.split_seed)
        val = (valset.rows, valset.cols, valset.values)
    elif a.early_stopping:
        raise SystemExit("dlrl fit: --early-stopping needs --val-fraction > 0")
    clip = None if a.no_clip else tuple(train.scale)
    kw = _model_kwargs(a, clip=clip)
    if a.resume:
        model = DLRL.load(a.resume, device=kw["device"])
    else:
        model = DLRL(train.shape, **kw)
    print(f"dlrl fit: {train.name}: {train.shape[0]}×{train.shape[1]}, {train.nnz} training ratings, "
          f"{test.nnz} test ratings, scale {train.scale}", flush=True)
    model.fit(rows=train.rows, cols=train.cols, values=train.values, val=val, resume=a.resume,
              checkpoint=a.save, **_fit_kwargs(a))
    with torch.no_grad():
        pred = model.predict(test.rows, test.cols).float().cpu()
    res = {
        "test_rmse": rmse(pred, test.values),
        "test_mae": mae(pred, test.values),
        "fit_seconds": model.fit_seconds,
        "epochs": len(model.history),
        "stop_reason": getattr(model, "stop_reason", None),
        "backend": model.backend_used,
        "device": str(model.device),
        "mode": model.config.mode,
        "config": {k: v for k, v in vars(a).items() if k not in ("func",)},
        "train_nnz": train.nnz,
        "test_nnz": test.nnz,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(f"test RMSE {res['test_rmse']:.4f}   test MAE {res['test_mae']:.4f}   fit {res['fit_seconds']:.2f} s   "
          f"{res['epochs']} epochs ({res['stop_reason']})   backend {res['backend']} on {res['device']}   mode {res['mode']}")
    if a.save:  # fit() wrote it (optimiser and schedule included) every 50 epochs and at the end
        print(f"checkpoint: {a.save} (continue with --resume {a.save})")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2, default=str))
        print(f"wrote {a.json}")
    if a.plot:
        _plot_history(model.history, a.plot, f"DLRL ({res['mode']}) on {train.name}: test RMSE {res['test_rmse']:.4f}")
        print(f"wrote {a.plot}")
    return res


# ----------------------------------------------------------------------------- inpaint
def inpaint_image(img, observed, a, progress=None):
    """Complete every channel of ``img`` (H, W, C) observed where ``observed`` is True."""
    import torch

    from .complete import complete

    rec = img.clone()
    for ch in range(img.shape[2]):
        X = img[:, :, ch].clone()
        X[~observed[:, :, ch]] = float("nan")
        rec[:, :, ch] = complete(X, **_model_kwargs(a), epochs=a.epochs, lr=a.lr, weight_decay=a.weight_decay,
                                 patience=a.patience, progress=(not a.quiet) if progress is None else progress)
    return rec.clamp(0, 255).to(torch.float64)


def cmd_inpaint(a):
    from . import images as im

    img = im.load_image(a.image) if a.image != "sample" else im.sample_image("astronaut", size=a.size)
    if a.size and a.image != "sample":
        img = _resize(img, a.size)
    if a.mask:
        observed = im.load_text_mask(a.mask, channels=img.shape[2])
        kind = f"mask file {a.mask}"
    elif a.text is not None:
        observed = im.text_mask(img.shape, text=a.text or im.DEFAULT_TEXT)
        kind = "text mask"
    else:
        observed = im.random_mask(img.shape, missing=a.missing, seed=a.seed)
        kind = f"{a.missing:.0%} missing at random"
    t0 = time.perf_counter()
    rec = inpaint_image(img, observed, a)
    secs = time.perf_counter() - t0
    psnr = im.psnr_missing(rec, img, observed)
    shown = img.clone()
    shown[~observed] = 255.0
    out = Path(a.out)
    im.save_image(rec, out)
    fig = out.with_name(out.stem + "_side_by_side.png")
    im.side_by_side([img, shown, rec], ["original", f"observed ({kind})", f"DLRL: {psnr:.2f} dB on missing pixels"], fig)
    print(f"inpaint: {img.shape[0]}×{img.shape[1]}×{img.shape[2]}, {kind}: PSNR over the missing pixels "
          f"{psnr:.2f} dB, {secs:.1f} s; wrote {out} and {fig}")
    return {"psnr_missing": psnr, "seconds": secs, "out": str(out), "figure": str(fig)}


def _resize(img, size):
    import numpy as np
    import torch
    from PIL import Image

    arr = img.clamp(0, 255).round().to(torch.uint8).numpy()
    pil = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    h, w = arr.shape[:2]
    s = size / max(h, w)
    pil = pil.resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS)
    out = torch.as_tensor(np.asarray(pil), dtype=torch.float64)
    return out[:, :, None] if out.dim() == 2 else out


# ----------------------------------------------------------------------------- demo
def cmd_demo(a):
    from . import images as im
    from .complete import complete
    from .model import PAPER_BEST

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    print("dlrl demo: DLRL matrix completion on data that needs no download.\n", flush=True)
    opts = dict(_model_kwargs(a), epochs=a.epochs, lr=a.lr, weight_decay=a.weight_decay, patience=a.patience)

    # 1. synthetic low-rank matrix
    prob = im.synthetic_low_rank(100, 100, rank=5, noise=0.0, missing=0.5, seed=a.seed)
    t0 = time.perf_counter()
    X_hat, model = complete(prob["observed"], return_model=True, progress=not a.quiet, **opts)
    secs = time.perf_counter() - t0
    err = im.rsre(X_hat, prob["truth"])
    print(f"[1] synthetic 100×100 rank-5 matrix, 50 % missing: RSRE {err:.4f} "
          f"(‖X̂ − X‖_F / ‖X‖_F over all entries), {len(model.history)} epochs, {secs:.1f} s")
    _plot_history(model.history, out / "synthetic_loss.png", f"synthetic 100×100 rank 5: RSRE {err:.4f}")

    # 2. image inpainting on a scikit-image sample, channel by channel
    img = im.sample_image("astronaut", size=a.size)
    observed = im.random_mask(img.shape, missing=0.4, seed=a.seed)
    t0 = time.perf_counter()
    rec = inpaint_image(img, observed, a, progress=False)
    secs = time.perf_counter() - t0
    psnr = im.psnr_missing(rec, img, observed)
    shown = img.clone()
    shown[~observed] = 255.0
    im.save_image(rec, out / "astronaut_recovered.png")
    im.side_by_side([img, shown, rec], ["original", "observed (40 % missing)", f"DLRL: {psnr:.2f} dB (missing px)"],
                    out / "astronaut_side_by_side.png")
    print(f"[2] astronaut {img.shape[0]}×{img.shape[1]}×3, 40 % of pixels missing per channel: PSNR over the "
          f"missing pixels {psnr:.2f} dB, {secs:.1f} s")

    # 3. MovieLens-100K if it is at hand (the demo never downloads)
    ml = _find_ml100k(a.ml100k)
    if ml is not None:
        print(f"[3] MovieLens-100K at {ml}: published 80/20 split, paper mode with biases "
              f"(the documented best configuration):", flush=True)
        fa = build_parser().parse_args(["fit", str(ml), "--bias", "--weight-decay", str(PAPER_BEST["weight_decay"]),
                                        "--json", str(out / "ml100k.json"), "--plot", str(out / "ml100k_loss.png")]
                                       + (["--quiet"] if a.quiet else []))
        cmd_fit(fa)
    else:
        print("[3] MovieLens-100K not found (pass --ml100k FOLDER, or run `dlrl fit FOLDER`): skipped")
    print(f"\nfigures and results are in {out}/")
    return 0


def _find_ml100k(given):
    cands = [Path(given)] if given else []
    here = Path(__file__).resolve()
    cands += [p / "shared" / "data" / "ml-100k" for p in list(here.parents)[:5]]
    cands += [Path.cwd() / ".." / "shared" / "data" / "ml-100k"]
    for c in cands:
        if (c / "u.data").is_file():
            return c.resolve()
    return None


# ----------------------------------------------------------------------------- parser
def build_parser():
    ap = argparse.ArgumentParser(prog="dlrl", formatter_class=D,
                                 description="Differentiable low-rank matrix completion (DLRL) on CPU or GPU.")
    sub = ap.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fit", formatter_class=D, help="train on a ratings file and report test RMSE",
                       description="Train DLRL on a ratings file (MovieLens folder or file, or any "
                                   "'user item rating' text file) and report the test RMSE (a square root).")
    f.add_argument("ratings", help="MovieLens folder (ml-100k, ml-1m, ...) or a ratings file")
    f.add_argument("--format", choices=["auto", "movielens", "generic"], default="auto",
                   help="auto: MovieLens when the path is a folder or u.data/ratings.dat/ratings.csv, else generic")
    f.add_argument("--sep", default=None, help="field separator of a generic file (default: detected)")
    f.add_argument("--scale", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="rating scale of a generic file (default: inferred from the data)")
    f.add_argument("--duplicates", choices=["last", "mean", "error"], default="last",
                   help="what a repeated (user, item) pair does")
    f.add_argument("--split", default="published",
                   help="published (seed 2020 randperm, first 80 %% train), random, per-user, canonical:K (u1..u5, ua, ub)")
    f.add_argument("--test-fraction", type=float, default=0.2, help="test fraction of --split random")
    f.add_argument("--holdout", type=float, default=1, help="ratings per user held out by --split per-user")
    f.add_argument("--split-seed", type=int, default=0, help="seed of the random / per-user / validation split")
    f.add_argument("--val-fraction", type=float, default=0.0,
                   help="fraction of the training ratings held out for validation RMSE (and early stopping)")
    f.add_argument("--no-clip", action="store_true", help="do not clip predictions to the rating scale")
    _model_options(f)
    f.add_argument("--json", default=None, metavar="OUT.json", help="write the results (test_rmse, fit_seconds, ...)")
    f.add_argument("--plot", default=None, metavar="OUT.png", help="plot loss, validation RMSE and Schatten sums")
    f.add_argument("--save", default=None, metavar="MODEL.pt", help="checkpoint file (also written during training)")
    f.add_argument("--resume", default=None, metavar="MODEL.pt", help="continue training from a checkpoint")
    f.set_defaults(func=cmd_fit)

    i = sub.add_parser("inpaint", formatter_class=D, help="fill missing pixels of an image",
                       description="Complete an image channel by channel and print the PSNR over the missing pixels.")
    i.add_argument("image", help="a PNG/JPEG file, or 'sample' for scikit-image's astronaut")
    m = i.add_mutually_exclusive_group()
    m.add_argument("--missing", type=float, default=0.4, help="fraction of pixels missing at random (per channel)")
    m.add_argument("--text", nargs="?", const="", default=None,
                   help="render this text over the image as the mask (no value: a default paragraph)")
    m.add_argument("--mask", default=None, help="mask image file: a pixel is missing where any channel is below 255")
    i.add_argument("--size", type=int, default=None, help="resize so that the longer side has this many pixels")
    i.add_argument("--out", default="inpainted.png", help="recovered image; a _side_by_side.png figure is written next to it")
    _model_options(i, images=True)
    i.set_defaults(func=cmd_inpaint)

    d = sub.add_parser("demo", formatter_class=D, help="a two-minute tour on data at hand",
                       description="Complete a synthetic low-rank matrix and a sample image; fit MovieLens-100K "
                                   "too when it is at hand (never downloads).")
    d.add_argument("--out", default="dlrl_demo", help="folder for figures and results")
    d.add_argument("--size", type=int, default=128, help="longer side of the sample image")
    d.add_argument("--ml100k", default=None, help="MovieLens-100K folder (default: look for ../shared/data/ml-100k)")
    _model_options(d, images=True)
    d.set_defaults(func=cmd_demo)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as exc:
        print(f"dlrl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
