#!/usr/bin/env python
"""Image inpainting: DLRL with choices made without the truth vs best-tuned Soft-Impute.

    python bench/bench_images.py                       # re1-re6, full size (300×300), both masks
    python bench/bench_images.py --size 150            # a reduced size (the mask is resized too)
    python bench/bench_images.py --validation          # also the validation table behind the defaults
    python bench/bench_images.py --only-validation     # add only that table to the existing --out JSON
    python bench/bench_images.py --ensemble-check --size 150   # add the ensemble-size check (outer pixels)
    python bench/bench_images.py --outer-check --out bench/results/images_outer.json   # layouts / ensembles
    python bench/bench_images.py --tables-from bench/results/images_outer.json   # the rows, keeping that table
    python bench/bench_images.py --seed-check 1 2          # the defaults with other seeds, into the same JSON
    python bench/bench_images.py --outer-check --set patience=5 --out bench/results/images_outer_patience5.json
    python bench/bench_images.py --outer-check --names re6 re5 re1 --set patience=50 \
        --out bench/results/images_outer_patience50.json            # the patience comparison
    python bench/bench_images.py --quick --out /tmp/i.json --md /tmp/i.md   # a smoke test (seconds)

Data: /work/shared/data/images re1.jpg ... re6.jpg (or ``--images``), each with
- ``random``: 40 % of the pixels missing (all channels of a pixel; ``random_mask(seed=0,
  per_channel=False)``);
- ``text``: the shared ``text_mask.bmp`` (a pixel is missing where the mask is not white).

Methods (the same image, mask and metric -- PSNR over the missing pixels, every channel):
- ``dlrl``: :func:`dlrl.images.inpaint` with its defaults (``INPAINT_DEFAULTS``: layout
  ``"mixed"``, the weighted mean of 12 DLRL fits -- ``MIXED_PLAN``: 4 on 8×8×3 patches as columns,
  4 on 4×4×3, 2 on 6×6×3, 2 on the channels side by side -- each stopped early on its own 10 % of
  the *observed* pixels, whole pixels held back). No choice sees the missing pixels. ``val_psnr`` is the
  members' mean validation PSNR -- the honest estimate of one member's missing-pixel PSNR.
- ``soft_impute``: Soft-Impute along a path of 20 lambdas (lambda_max down to 1e-3·lambda_max,
  warm-started, 100 iterations each), on the channels-side-by-side matrix (H × 3W) and on the
  same 4×4×3 patch matrix as DLRL; the reported value is the best PSNR over the path, i.e.
  lambda chosen *on the truth* (an oracle that favours Soft-Impute), and the path's last
  (smallest-lambda) value, which is the library default's end point.

With ``--outer-check``: the table behind ``layout="mixed"``, ``models=12`` and the seen-share
weighting -- an outer set of observed pixels shaped like the mask is held back, each member of
``MIXED_PLAN`` is fitted once on the rest, ensembles (subsets, combine rules) are scored on the
outer pixels; the truth is not used.

With ``--validation``: the held-back validation RMSE (fold 0, whole pixels, no ensemble) of a
few settings per image on the random mask -- how INPAINT_DEFAULTS were chosen (truth unused).

Results: ``bench/results/images_cpu.json`` (rows written as they finish, atomically) and the
markdown fragment ``bench/results/images.md`` generated from it. The committed JSON came from
the plain run (rows, ``--tables-from bench/results/images_outer.json``), which keeps the extra tables
already in the file: ``outer_check`` (from ``--outer-check``, also in ``images_outer.json``),
``ensemble`` (``--ensemble-check --size 150``, measured with the previous default, 4×4 patches
only) and ``validation`` (an ``--only-validation`` run, one fit per setting); ``outer_check_patience``
is built from ``images_outer.json`` and the two patience files (``images_outer_patience5.json``
was written when 5 was the default, i.e. by ``--outer-check`` without ``--set``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

from dlrl import images as im  # noqa: E402
from dlrl._io import atomic_write_text  # noqa: E402
from dlrl.baselines import SoftImpute  # noqa: E402

IMAGES = Path(os.environ.get("DLRL_IMAGES", REPO.parent / "shared" / "data" / "images"))
NAMES = ("re1", "re2", "re3", "re4", "re5", "re6")
#: settings compared on validation pixels (--validation): name -> inpaint keywords (one member)
VALIDATION_SETTINGS = {
    "channels r32": dict(layout="channels", rank=32),
    "patches r16": dict(rank=16),
    "patches r24": dict(rank=24),
    "patches r32 (default)": dict(),
    "patches r40": dict(rank=40),
    "patches r32 3 blocks": dict(blocks=3),
    "patches r32 bias": dict(bias=True),
}


def _resize(img, size):
    import numpy as np
    from PIL import Image

    if size is None or max(img.shape[:2]) == size:
        return img
    arr = img.clamp(0, 255).round().to(torch.uint8).numpy()
    h, w = arr.shape[:2]
    s = size / max(h, w)
    pil = Image.fromarray(arr).resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS)
    return torch.as_tensor(np.array(pil), dtype=torch.float64)


def _resize_mask(mask, shape):
    import numpy as np
    from PIL import Image

    if tuple(mask.shape[:2]) == tuple(shape[:2]):
        return mask
    pil = Image.fromarray(mask.numpy().astype(np.uint8) * 255)
    out = np.asarray(pil.resize((shape[1], shape[0]), Image.NEAREST)) > 127
    return torch.from_numpy(out.copy())


def soft_impute_path(img, observed, layout, max_iter=100, n_lambdas=20):
    """Missing-pixel PSNR after every lambda of the path: ({lambda: psnr}, seconds)."""
    X, back = im.image_to_matrix(img, layout)
    M, _ = im.image_to_matrix(observed[:, :, None].expand(img.shape).contiguous(), layout)
    X = X.clone()
    X[~M] = float("nan")
    last = {}

    def cb(model, rec):
        last[rec["lambda"]] = model._X_hat  # the iterate; the final one per lambda is kept

    t = time.perf_counter()
    SoftImpute(seed=0, max_iter=max_iter, n_lambdas=n_lambdas).fit(X, callback=cb)
    secs = time.perf_counter() - t
    out = {}
    for lam, Z in last.items():
        Zi = torch.where(M, X.nan_to_num(0.0), Z)
        out[lam] = im.psnr_missing(back(Zi).clamp(0, 255), img, observed)
    return out, secs


def machine():
    from dlrl.cli import machine_info  # the demo's record of the machine (CPU model, cores, load)

    return {**machine_info(), "torch": torch.__version__, "threads": torch.get_num_threads()}


def cases(a):
    text = im.load_text_mask(IMAGES / "text_mask.bmp") if (IMAGES / "text_mask.bmp").is_file() else None
    for name in a.names:
        img = _resize(im.load_image(IMAGES / f"{name}.jpg"), a.size)
        for mask in a.masks:
            if mask == "random":
                obs = im.random_mask(img.shape[:2], missing=0.4, seed=0)
            else:
                if text is None:
                    continue
                obs = _resize_mask(text, img.shape)
            yield name, mask, img, obs


def ensemble_check(names, size, extra, models=(1, 2, 4)):
    """Is the mean of several fits better than one -- judged without the truth: an *outer* 10 %
    of the observed pixels is held back, ``inpaint`` runs on the rest (its members use their own
    inner folds), and the outer pixels are scored. Astronaut at 128 px plus ``names``."""
    out = {}
    todo = [("astronaut", im.sample_image("astronaut", size=128))]
    todo += [(n, _resize(im.load_image(IMAGES / f"{n}.jpg"), size)) for n in names]
    for name, img in todo:
        obs = im.random_mask(img.shape[:2], missing=0.4, seed=0)
        idx = obs.reshape(-1).nonzero().reshape(-1)
        outer = idx[torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(123))[: idx.numel() // 10]]
        inner = obs.clone().reshape(-1)
        inner[outer] = False
        inner = inner.reshape(obs.shape)
        held = obs & ~inner
        out[name] = {}
        for k in models:
            rec = im.inpaint(img, inner, models=k, **extra)
            out[name][f"{k} fit{'s' if k > 1 else ''}"] = im.psnr_missing(rec, img, ~held)
        print(name, {k: round(v, 2) for k, v in out[name].items()}, flush=True)
    return out


#: ensembles compared by --outer-check: name -> (indices into MIXED_PLAN, combine rule)
OUTER_COMBOS = {
    "4×4 ×4, threshold (old default)": ([1, 5, 7, 11], "threshold"),
    "4×4 ×4": ([1, 5, 7, 11], "seen"),
    "8×8 ×4": ([0, 4, 6, 10], "seen"),
    "channels ×2": ([2, 8], "seen"),
    "mixed, first 4": ([0, 1, 2, 3], "seen"),
    "mixed, first 8": (list(range(8)), "seen"),
    "mixed 12, threshold": (list(range(12)), "threshold"),
    "mixed 12 (default)": (list(range(12)), "seen"),
}


#: result keys of the extra tables, kept when the comparison rows are rerun
TABLE_KEYS = ("validation", "ensemble", "outer_check", "seed_check")


def outer_holdout(obs, mask):
    """Observed pixels held back from the whole ensemble, shaped like the task: ``random`` -- 10 %
    of the observed pixels at random; ``text`` -- the missing pattern (whole strokes) shifted by
    (H/2 + 17, W/3) onto observed pixels (between the text lines, about 11 % of the pixels)."""
    h, w = obs.shape
    if mask == "random":
        idx = obs.reshape(-1).nonzero().reshape(-1)
        sel = idx[torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(123))[: idx.numel() // 10]]
        out = torch.zeros(h * w, dtype=torch.bool)
        out[sel] = True
        return out.reshape(h, w)
    return torch.roll(~obs, (h // 2 + 17, w // 3), dims=(0, 1)) & obs


def patience_table(res, files=None):
    """The outer check's default ensemble with the plateau patience of the files ``files``
    ({patience: path}) next to this run's: {case: {patience: PSNR}} over the cases they share."""
    here = Path(__file__).resolve().parent / "results"
    files = files or {5: here / "images_outer_patience5.json", 50: here / "images_outer_patience50.json"}
    cur = res.get("outer_check")
    if not cur or not all(Path(f).is_file() for f in files.values()):
        return None
    label = "mixed 12 (default)"
    runs = {p: json.loads(Path(f).read_text())["outer_check"] for p, f in files.items()}
    runs[im.INPAINT_DEFAULTS.get("patience")] = cur
    shared = [c for c in cur if all(c in r for r in runs.values())]
    return {c: {str(p): runs[p][c][label] for p in sorted(runs)} for c in shared}


def outer_check(a, extra):
    """The ensembles of OUTER_COMBOS judged without the truth: ``outer_holdout`` pixels are held
    back, every member of MIXED_PLAN is fitted once on the rest exactly as ``inpaint`` (seed 0)
    fits it (its own inner fold, seed, early stopping), and each ensemble is scored on the outer
    pixels (PSNR in dB over those pixels, all channels)."""
    out, members = {}, {}
    cfg = {**im.INPAINT_DEFAULTS, **{k: v for k, v in extra.items() if k in im.INPAINT_DEFAULTS}}
    for name, mask, img, obs in cases(a):
        h, w, c = img.shape
        held = outer_holdout(obs, mask)
        inner2d = obs & ~held
        inner = inner2d[:, :, None].expand(h, w, c).contiguous()
        folds = im._pixel_folds(inner2d, im.INPAINT_FOLDS, 0)
        vals = img[inner]
        lo, hi = float(vals.min()), float(vals.max())
        target = (img - lo) / (hi - lo)
        plan = im._member_plan(cfg, h, w)
        preds, seens, info = [], [], []
        for k, (lay, pat, off) in enumerate(plan):
            t, c0 = time.perf_counter(), time.process_time()
            P, seen, best, hist = im._fit_member(target, inner, folds[k % len(folds)], lay, pat, off, cfg, seed=k,
                                                 patience=extra.get("patience"))
            preds.append(P * (hi - lo) + lo)
            seens.append(seen)
            rec = torch.where(inner, img, preds[-1].clamp(0, 255))
            info.append({"layout": lay, "patch": pat, "offset": list(off), "epochs_run": len(hist),
                         "inner_val_psnr": 20 * math.log10(255.0 / (best * (hi - lo))),
                         "outer_psnr": im.psnr_missing(rec, img, ~held),
                         "seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c0})
        key = f"{name} {mask}"
        out[key] = {}
        for label, (idx, rule) in OUTER_COMBOS.items():
            P = im._combine([preds[i] for i in idx], [seens[i] for i in idx], rule)
            out[key][label] = im.psnr_missing(torch.where(inner, img, P.clamp(0, 255)), img, ~held)
        members[key] = info
        print(key, {k: round(v, 2) for k, v in out[key].items()},
              f"{sum(m['seconds'] for m in info):.0f} s", flush=True)
    return out, members


def _dlrl_note(res):
    d = res.get("inpaint_defaults", {})
    if d.get("layout") == "mixed":
        return (f"layout 'mixed': the weighted mean of {d.get('models')} fits -- 4 on 8×8×3 patches as columns, "
                "4 on 4×4×3, 2 on 6×6×3 (grids shifted between members) and 2 on the channels side by side (H×3W) -- "
                "each stopped early on its own 10 % of the *observed* pixels, each pixel weighted by the share of its "
                "column the member saw")
    return (f"layout {d.get('layout')!r}, {d.get('patch')}×{d.get('patch')}×3 patches as columns, the mean of "
            f"{d.get('models')} fits, each stopped early on its own 10 % of the *observed* pixels")


def seed_check(a, extra, seeds):
    """inpaint's defaults with other seeds (other folds, initialisations and grid members' order is
    the same): missing-pixel PSNR per case and seed, beside the Soft-Impute oracle of ``--out``'s rows."""
    out = {}
    for name, mask, img, obs in cases(a):
        key = f"{name} {mask}"
        out[key] = {}
        for sd in seeds:
            t = time.perf_counter()
            rec = im.inpaint(img, obs, seed=sd, **extra)
            out[key][str(sd)] = im.psnr_missing(rec, img, obs)
            print(key, "seed", sd, round(out[key][str(sd)], 2), f"{time.perf_counter() - t:.0f} s", flush=True)
    return out


def to_markdown(res):
    rows = res["rows"]
    m = res["machine"]
    out = ["<!-- generated by bench/bench_images.py from images_cpu.json; do not edit by hand -->", "",
           "### Image inpainting (missing-pixel PSNR, dB)", "",
           f"DLRL: `dlrl.images.inpaint` defaults ({_dlrl_note(res)}; the truth is never used; 'DLRL val' = the members' mean "
           f"validation PSNR on their held-back random pixels: a fair estimate for the random mask, optimistic for "
           f"the text mask, whose strokes are harder than random pixels -- `holdout='mask'` gives the honest one). "
           f"Soft-Impute: the best lambda of a 20-value path chosen *on the "
           f"truth* (an oracle that favours it), on the channels-side-by-side matrix (H×3W) and on the same patch "
           f"matrix as DLRL; 'last' = the path's end (the library default's end point). Images {res['size_note']}; "
           f"CPU {m['cpu']}, {m['threads']} thread(s), load average {m['load_average_at_start'][0]} at start "
           f"(a machine shared with other jobs: times are indicative).", "",
           "| image | mask | size | DLRL | DLRL val | Soft-Impute oracle (H×3W) | Soft-Impute oracle (patches) | "
           "Soft-Impute last (patches) | DLRL − best oracle | DLRL s | Soft-Impute s |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    wins = 0
    for r in rows:
        best = max(r["si_oracle_channels"], r["si_oracle_patches"])
        d = r["dlrl"] - best
        wins += d >= 0
        out.append(f"| {r['image']} | {r['mask']} | {r['shape']} | {r['dlrl']:.2f} | {r['dlrl_val_psnr']:.2f} | "
                   f"{r['si_oracle_channels']:.2f} | {r['si_oracle_patches']:.2f} | {r['si_last_patches']:.2f} | "
                   f"{d:+.2f} | {r['dlrl_seconds']:.0f} | {r['si_seconds']:.0f} |")
    if rows:
        mean = sum(r["dlrl"] - max(r["si_oracle_channels"], r["si_oracle_patches"]) for r in rows) / len(rows)
        out += ["", f"DLRL ≥ the better oracle-tuned Soft-Impute on {wins} of {len(rows)} cases; mean difference "
                    f"{mean:+.2f} dB."]
    ens = res.get("ensemble")
    if ens:
        names = list(next(iter(ens.values())).keys())
        out += ["", "#### Ensemble size, judged on held-back observed pixels (measured with the previous default, "
                    "4×4 patches only; an outer 10 % of the observed pixels "
                    "held back from `inpaint`, random mask; PSNR on those pixels in dB; the truth is not used; "
                    "astronaut 128 px, re1-re6 at "
                    f"{res.get('ensemble_size_note', 'the size given')})", "",
                "| image | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for img, d in ens.items():
            out.append(f"| {img} | " + " | ".join(f"{d[k]:.2f}" for k in names) + " |")
    oc = res.get("outer_check")
    if oc:
        names = list(next(iter(oc.values())).keys())
        out += ["", "#### Layouts and ensembles, judged on held-back observed pixels (the table behind `layout='mixed'`, "
                    "`models=12` and the seen-share weighting)", "",
                "An outer set of *observed* pixels is held back from the ensemble (random mask: 10 % of the observed "
                "pixels at random; text mask: the text strokes shifted onto observed pixels between the lines, whole "
                "strokes -- about 11 % of the pixels); every member of `MIXED_PLAN` is fitted once on the rest as "
                "`inpaint` fits it, and each ensemble is scored on the outer pixels (PSNR in dB; the truth is not "
                "used). '4×4 ×4, threshold' is the previous default's ensemble (4×4 patches, 4 shifted grids, a member "
                "counting fully where it saw ≥ 25 % of the patch; here with the plateau patience of this table, 20 -- "
                "bench/results/images_outer_patience5.json has the whole table with the previous patience 5); 'seen' weighting = each member's pixel weighted by the share "
                f"of its column it saw. Images {res.get('outer_check_size_note', '300 px')}; "
                f"{res.get('outer_check_seconds_note', '')}", "",
                "| case | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for case, d in oc.items():
            out.append(f"| {case} | " + " | ".join(f"{d[k]:.2f}" for k in names) + " |")
        for sel, lab in (("text", "mean, text"), ("random", "mean, random"), ("", "mean, all")):
            ds = [d for case, d in oc.items() if case.endswith(sel)]
            out.append(f"| {lab} | " + " | ".join(f"{sum(d[k] for d in ds) / len(ds):.2f}" for k in names) + " |")
    sc = res.get("seed_check")
    if sc:
        rows = {(r["image"], r["mask"]): r for r in res["rows"]}
        seeds = list(next(iter(sc.values())).keys())
        out += ["", "#### Other seeds (missing-pixel PSNR in dB of `inpaint`'s defaults with `seed=` 0 -- the table above "
                    "-- and " + ", ".join(seeds) + "; other validation folds and initialisations)", "",
                "| image | mask | seed 0 | " + " | ".join(f"seed {s}" for s in seeds) +
                " | best Soft-Impute oracle | worst seed − oracle |", "|---|---|---|" + "---|" * len(seeds) + "---|---|"]
        wins = total = 0
        for case, d in sc.items():
            name, mask = case.split()
            r = rows.get((name, mask))
            if r is None:
                continue
            best = max(r["si_oracle_channels"], r["si_oracle_patches"])
            vals = [r["dlrl"]] + [d[s] for s in seeds]
            wins += sum(v >= best for v in vals)
            total += len(vals)
            out.append(f"| {name} | {mask} | {r['dlrl']:.2f} | " + " | ".join(f"{d[s]:.2f}" for s in seeds) +
                       f" | {best:.2f} | {min(vals) - best:+.2f} |")
        out += ["", f"DLRL ≥ the better oracle-tuned Soft-Impute in {wins} of {total} (case, seed) runs."]
    # two sub-tables of the same form: {row: {column: PSNR}} under a heading, with a mean row
    for key, first, title, label in (
            ("outer_check_patience", "case",
             "Plateau patience, judged the same way (the 12-member default ensemble; outer-pixel PSNR in dB; "
             "`DLRL.fit`'s plateau schedule on the training loss cuts the lr ×0.1 after `patience` epochs without "
             "a better loss and stops after three cuts; paper mode's own patience is 5)", "patience {}"),
            ("validation", "image",
             "Validation table behind rank / blocks / biases (random mask; held-back fold 0, whole "
             "pixels, one fit on 4×4 patches unless said; 'default' = the previous default; validation PSNR in "
             "dB, higher is better; the truth is not used)", "{}")):
        table = res.get(key)
        if table:
            cols = list(next(iter(table.values())).keys())
            out += ["", f"#### {title}", ""]
            out += _table_with_mean(first, table, cols, [label.format(c) for c in cols])
    return "\n".join(out) + "\n"


def _table_with_mean(first, table, keys, headers):
    """Markdown rows: one per entry of ``table`` ({row: {key: dB}}), the columns ``keys`` under
    ``headers``, and a last row with each column's mean."""
    out = [f"| {first} | " + " | ".join(headers) + " |", "|---|" + "---|" * len(keys)]
    for row, d in table.items():
        out.append(f"| {row} | " + " | ".join(f"{d[k]:.2f}" for k in keys) + " |")
    out.append("| mean | " + " | ".join(f"{sum(d[k] for d in table.values()) / len(table):.2f}" for k in keys) + " |")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=None, help="longer side (default: the images' own, 300)")
    ap.add_argument("--names", nargs="+", default=list(NAMES))
    ap.add_argument("--masks", nargs="+", default=["random", "text"], choices=["random", "text"])
    ap.add_argument("--validation", action="store_true", help="also the validation table behind the defaults")
    ap.add_argument("--only-validation", action="store_true",
                    help="only the validation table (into --out; the comparison rows are not run)")
    ap.add_argument("--ensemble-check", action="store_true",
                    help="only the outer-validation check of the ensemble size (into --out's 'ensemble' key)")
    ap.add_argument("--outer-check", action="store_true",
                    help="only the outer-validation table of layouts / ensembles (into --out's 'outer_check' key)")
    ap.add_argument("--tables-from", nargs="*", default=[], metavar="JSON",
                    help="copy the extra tables (validation, ensemble, outer_check) from these result files")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override inpaint settings (e.g. patience=20 early_stopping=60; numbers only) -- for "
                         "exploring; the committed results use the defaults")
    ap.add_argument("--seed-check", nargs="+", type=int, default=None, metavar="SEED",
                    help="only inpaint's defaults with these seeds (into --out's 'seed_check' key, beside its rows)")
    ap.add_argument("--quick", action="store_true", help="re1 at 48 px, few epochs (a smoke test)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "images_cpu.json"))
    ap.add_argument("--md", default=str(REPO / "bench" / "results" / "images.md"))
    ap.add_argument("--resume", action="store_true", help="keep the rows already in --out, run the others")
    ap.add_argument("--md-only", action="store_true", help="regenerate the markdown from --out")
    a = ap.parse_args(argv)
    if a.md_only:
        atomic_write_text(a.md, to_markdown(json.loads(Path(a.out).read_text())))
        return 0
    torch.set_num_threads(1)
    extra = {}
    if a.quick:
        a.size, a.names, extra = 48, ["re1"], dict(epochs=30)
    for kv in a.set:
        k, _, v = kv.partition("=")
        extra[k] = float(v) if "." in v or "e" in v else int(v)
    res = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M %Z"), "size": a.size,
           "size_note": f"resized to {a.size} px (longer side)" if a.size else "at full size (300×300×3)",
           "inpaint_defaults": dict(im.INPAINT_DEFAULTS), "quick": a.quick, "rows": [],
           **({"overrides": dict(extra)} if a.set else {})}
    if a.ensemble_check:
        res = json.loads(Path(a.out).read_text()) if Path(a.out).is_file() else res
        res["ensemble"] = ensemble_check(a.names, a.size, extra)
        res["ensemble_size_note"] = f"{a.size} px" if a.size else "300 px"
        atomic_write_text(a.out, json.dumps(res, indent=2))
        atomic_write_text(a.md, to_markdown(res))
        print(f"wrote {a.out} and {a.md}")
        return 0
    if a.seed_check:
        res = json.loads(Path(a.out).read_text()) if Path(a.out).is_file() else res
        res["seed_check"] = seed_check(a, extra, a.seed_check)
        atomic_write_text(a.out, json.dumps(res, indent=2))
        atomic_write_text(a.md, to_markdown(res))
        print(f"wrote {a.out} and {a.md}")
        return 0
    if a.outer_check:
        res = json.loads(Path(a.out).read_text()) if Path(a.out).is_file() else res
        t = time.perf_counter()
        res["outer_check"], res["outer_check_members"] = outer_check(a, extra)
        if not a.set:
            res["outer_check_patience"] = patience_table(res)
        secs = sum(m["seconds"] for ms in res["outer_check_members"].values() for m in ms)
        res["outer_check_size_note"] = f"{a.size} px" if a.size else "300 px"
        res["outer_check_seconds_note"] = (f"12 member fits per case, {secs:.0f} s in all at 1 thread "
                                           f"({time.strftime('%Y-%m-%d %H:%M %Z')}, a shared 2-core machine).")
        res["outer_check_wall_s"] = time.perf_counter() - t
        atomic_write_text(a.out, json.dumps(res, indent=2))
        atomic_write_text(a.md, to_markdown(res))
        print(f"wrote {a.out} and {a.md}")
        return 0
    if a.only_validation:  # added to the rows already in --out (if any), which are kept
        a.validation = True
        a.masks = []
        if Path(a.out).is_file():
            old = json.loads(Path(a.out).read_text())
            res = {**old, "validation_machine": res["machine"], "validation_date": res["date"]}
    # the extra tables (--validation, --ensemble-check, --outer-check) of --out and of --tables-from
    # are kept: a plain run replaces only the comparison rows
    for src in [a.out] * (not a.only_validation) + list(a.tables_from):
        if Path(src).is_file():
            old = json.loads(Path(src).read_text())
            res.update({k: v for k, v in old.items() if k.startswith(TABLE_KEYS)})
    if res.get("outer_check") and not a.set:
        res["outer_check_patience"] = patience_table(res) or res.get("outer_check_patience")
    done = set()
    if a.resume and Path(a.out).is_file():
        old = json.loads(Path(a.out).read_text())
        res["rows"] = [r for r in old.get("rows", []) if r.get("size") == a.size]
        res["resumed_from"] = {"date": old.get("date"), "machine": old.get("machine")}
        done = {(r["image"], r["mask"]) for r in res["rows"]}
    for name, mask, img, obs in cases(a):
        if (name, mask) in done:
            continue
        t = time.perf_counter()
        rec, rep = im.inpaint(img, obs, return_report=True, **extra)
        t_dlrl = time.perf_counter() - t
        row = {"image": name, "mask": mask, "size": a.size, "shape": "×".join(str(s) for s in img.shape),
               "missing_fraction": float((~obs).double().mean()), "dlrl": im.psnr_missing(rec, img, obs),
               "dlrl_val_psnr": rep["mean_val_psnr"], "dlrl_seconds": t_dlrl,
               "dlrl_members": rep["members"]}
        si_t = 0.0
        for layout in ("channels", "patches"):
            path, secs = soft_impute_path(img, obs, layout, max_iter=20 if a.quick else 100,
                                          n_lambdas=5 if a.quick else 20)
            si_t += secs
            best = max(path, key=path.get)
            row[f"si_oracle_{layout}"] = path[best]
            row[f"si_oracle_lambda_{layout}"] = best
            row[f"si_last_{layout}"] = list(path.values())[-1]
        row["si_seconds"] = si_t
        res["rows"].append(row)
        print(f"{name} {mask}: DLRL {row['dlrl']:.2f} (val {row['dlrl_val_psnr']:.2f}, {t_dlrl:.0f} s); Soft-Impute "
              f"oracle channels {row['si_oracle_channels']:.2f} patches {row['si_oracle_patches']:.2f}", flush=True)
        atomic_write_text(a.out, json.dumps(res, indent=2))
    if a.validation:
        res["validation"] = {}
        for name in a.names:
            img = _resize(im.load_image(IMAGES / f"{name}.jpg"), a.size)
            obs = im.random_mask(img.shape[:2], missing=0.4, seed=0)
            res["validation"][name] = {}
            for label, kw in VALIDATION_SETTINGS.items():
                _, rep = im.inpaint(img, obs, models=1, return_report=True, **{**extra, **kw})
                res["validation"][name][label] = rep["members"][0]["val_psnr"]
            print(name, {k: round(v, 2) for k, v in res["validation"][name].items()}, flush=True)
            atomic_write_text(a.out, json.dumps(res, indent=2))
    atomic_write_text(a.md, to_markdown(res))
    print(f"wrote {a.out} and {a.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
