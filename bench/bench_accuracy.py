#!/usr/bin/env python
"""Accuracy that holds on data nobody tuned on: DLRL's defaults beside Surprise's baselines.

    python bench/bench_accuracy.py                 # full run (tens of minutes on one core)
    python bench/bench_accuracy.py --quick --out /tmp/acc.json --md /tmp/acc.md   # CI: seconds

Datasets (every one of them is evaluated on ratings no choice was made on):
- MovieLens-100K canonical 5-fold ``u1``–``u5`` (``u{k}.base`` / ``u{k}.test``) and the
  published split (``dlrl.datasets.split_published``: the torch seed-2020 permutation, 80 / 20).
- Synthetic rating sets from a known model: r_ui = clip(μ + b_u + b_i + u_uᵀv_i + ε, 1, 5),
  b_u ~ N(0, 0.4²), b_i ~ N(0, 0.5²), u, v ~ N(0, 0.8²/r), ε ~ N(0, 0.6²), entries observed
  uniformly at random at the given density, 80 / 20 split (``SYNTHETIC``; data seed fixed).

Methods (on exactly the same train / test ratings):
- ``dlrl``: the library's defaults for ratings, ``dlrl.tuning.fit_tuned(..., clip=scale,
  seed=s)``: hyper-parameters chosen by ``dlrl.tuning.choose`` on validation parts of the
  *training* ratings (one 10 % part, or pooled k-fold parts on small sets; a candidate must win
  by more than one paired standard error), then ``dlrl.tuning.MEMBERS`` fits on all training
  ratings (seeds s + 1000·j) whose predictions are averaged, blended with the item–item and
  user–user neighbourhood models of ``dlrl.neighbors`` when that blend wins on the same
  validation ratings (``dlrl.tuning.BLEND``; each row also records the DLRL part's own RMSE).
- Surprise ``BaselineOnly`` (ALS, default options), ``SVD`` (default options,
  ``random_state=s``), ``SVDpp`` (default options, seed 0 only: it is slow).
Seeds 0, 1, 2 for the seeded methods (DLRL's seed draws its init and its validation part).
RMSE is a square root over the test ratings. Results: ``bench/results/accuracy_cpu.json``
(one row per dataset × method × seed, written after every row, atomically) and the markdown
fragment ``bench/results/accuracy.md`` generated from it (``--md-only`` regenerates it).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

from dlrl._io import atomic_write_text  # noqa: E402
from dlrl.datasets import RatingData, load_movielens, split_canonical, split_published, split_random  # noqa: E402
from dlrl.metrics import rmse  # noqa: E402
from dlrl.tuning import fit_tuned  # noqa: E402

ML = Path(os.environ.get("DLRL_ML100K", REPO.parent / "shared" / "data" / "ml-100k"))
#: name: (users, items, rank, density)
SYNTHETIC = {
    "syn-500x300-r5-d5%": (500, 300, 5, 0.05),
    "syn-1000x500-r10-d2%": (1000, 500, 10, 0.02),
    "syn-300x1000-r3-d10%": (300, 1000, 3, 0.10),
    "syn-200x200-r8-d30%": (200, 200, 8, 0.30),
}
QUICK_SYNTHETIC = {"syn-60x40-r3-d40%": (60, 40, 3, 0.40)}
METHOD_ORDER = ("dlrl", "BaselineOnly", "SVD", "SVDpp")


def synthetic_ratings(name, m, n, rank, density, seed=12345):
    """A rating set from the known low-rank + bias + noise model (module doc)."""
    g = np.random.default_rng(seed)
    U = g.normal(0, 0.8 / math.sqrt(rank), (m, rank))
    V = g.normal(0, 0.8 / math.sqrt(rank), (n, rank))
    bu, bi = g.normal(0, 0.4, m), g.normal(0, 0.5, n)
    nnz = int(round(density * m * n))
    flat = g.choice(m * n, size=nnz, replace=False)
    r, c = flat // n, flat % n
    v = 3.5 + bu[r] + bi[c] + (U[r] * V[c]).sum(1) + g.normal(0, 0.6, nnz)
    v = np.clip(v, 1.0, 5.0)
    data = RatingData(torch.as_tensor(r), torch.as_tensor(c), torch.as_tensor(v, dtype=torch.float32), m, n,
                      None, None, (1.0, 5.0), name)
    return split_random(data, 0.2, seed=seed)


def datasets(quick):
    out = []
    if quick:
        for name, spec in QUICK_SYNTHETIC.items():
            out.append((name, *synthetic_ratings(name, *spec)))
        return out
    if (ML / "u1.base").is_file():
        for k in range(1, 6):
            out.append((f"ml100k-u{k}", *split_canonical(ML, k)))
        out.append(("ml100k-published", *split_published(load_movielens(ML))))
    else:
        print(f"MovieLens-100K not found at {ML}: its rows are skipped", file=sys.stderr)
    for name, spec in SYNTHETIC.items():
        out.append((name, *synthetic_ratings(name, *spec)))
    return out


def run_dlrl(train, test, seed, budget_s=None, max_epochs=None):
    """DLRL as the library's ratings defaults fit it (``dlrl.tuning.fit_tuned``: the search on
    validation parts of the training ratings, then the averaged refits). ``max_epochs``
    (--quick only) caps the search's and the refits' epochs."""
    shape = (train.n_users, train.n_items)
    clip = tuple(float(s) for s in train.scale)
    t0 = time.perf_counter()
    given = {"clip": clip}
    if max_epochs:
        given["epochs"] = max_epochs
    model, rep = fit_tuned(train.rows, train.cols, train.values, shape, seed=seed, budget_s=budget_s, **given)
    err = rmse(model.predict(test.rows, test.cols), test.values)
    blend = rep.get("blend") or {}
    # the DLRL part alone (the averaged fits without the neighbourhood blend): how much of the
    # default's accuracy is DLRL's
    dlrl_only = rmse(model.model.predict(test.rows, test.cols), test.values) if hasattr(model, "partners") else err
    members = getattr(model, "members", [model])
    chosen = {k: getattr(members[0].config, k) for k in ("blocks", "rank", "bias", "p", "weight_decay")}
    ps = [float(x) for x in chosen["p"]]
    chosen["p"] = ps[0] if len(set(ps)) == 1 else ps
    extra = {"chosen": chosen, "chosen_params": rep.get("chosen"), "fit_kwargs": rep.get("fit_kwargs_used"),
             "members": len(members), "epochs_run": [len(mm.history) for mm in members],
             "tune_seconds": rep["seconds"], "chosen_val_rmse": rep.get("chosen_val_rmse"), "folds": rep.get("folds"),
             "val_entries": rep.get("val_entries"), "rule_z": rep.get("rule_z"),
             "candidates": [{"params": c["params"], "val_rmse": c["val_rmse"], "best_epoch": c.get("best_epoch")}
                            for c in rep["candidates"]],
             "skipped": rep["skipped"], "blend": blend, "rmse_dlrl_part": dlrl_only}
    return err, time.perf_counter() - t0, extra


def run_surprise(method, train, test, seed):
    import pandas as pd
    from surprise import SVD, BaselineOnly, Dataset, Reader, SVDpp

    algo = {"BaselineOnly": lambda: BaselineOnly(verbose=False), "SVD": lambda: SVD(random_state=seed),
            "SVDpp": lambda: SVDpp(random_state=seed)}[method]()
    t0 = time.perf_counter()
    df = pd.DataFrame({"u": train.rows.numpy(), "i": train.cols.numpy(), "r": train.values.double().numpy()})
    ts = Dataset.load_from_df(df, Reader(rating_scale=tuple(train.scale))).build_full_trainset()
    algo.fit(ts)
    preds = algo.test(list(zip(test.rows.tolist(), test.cols.tolist(), test.values.double().tolist())))
    est = torch.tensor([p.est for p in preds], dtype=torch.float64)
    return rmse(est, test.values.double()), time.perf_counter() - t0, {}


IMAGES = Path(os.environ.get("DLRL_IMAGES", REPO.parent / "shared" / "data" / "images"))
#: Soft-Impute's lambda_min_ratio values tried; the best by PSNR *on the truth* is reported
#: (an oracle choice that favours the baseline)
SOFT_IMPUTE_RATIOS = (0.3, 0.1, 0.03, 0.01, 0.003, 0.001)


def run_image(name, mask_kind, seed=0, crop=None, budget_s=None):
    """DLRL (dlrl.complete defaults: parameters chosen on held-back *observed* pixels) vs
    Soft-Impute with its lambda path end chosen on the truth; PSNR over the missing pixels.
    Each colour channel is completed separately."""
    from dlrl.baselines import get_baseline
    from dlrl.complete import complete
    from dlrl.images import load_image, load_text_mask, psnr_missing, random_mask

    img = load_image(IMAGES / f"{name}.jpg")
    if crop:
        img = img[:crop, :crop]
    h, w, c = img.shape
    if mask_kind == "text":
        mask = load_text_mask(IMAGES / "text_mask.bmp", channels=c)
        if tuple(mask.shape[:2]) != (h, w):
            mask = mask[:h, :w]
    else:
        mask = random_mask((h, w, c), missing=0.4, seed=seed)
    t0 = time.perf_counter()
    dl = torch.empty_like(img)
    chosen = []
    for k in range(c):
        X = img[:, :, k].clone()
        X[~mask[:, :, k]] = float("nan")
        out, model = complete(X, seed=seed, budget_s=budget_s, return_model=True)
        dl[:, :, k] = out
        chosen.append(model.tuning and model.tuning.get("chosen"))
    t_dlrl = time.perf_counter() - t0
    best = None
    t0 = time.perf_counter()
    for ratio in SOFT_IMPUTE_RATIOS:
        si = torch.empty_like(img)
        for k in range(c):
            X = img[:, :, k].clone()
            si[:, :, k] = get_baseline("soft_impute", lambda_min_ratio=ratio).fit_complete(X, mask[:, :, k])
        p = psnr_missing(si, img, mask)
        if best is None or p > best[0]:
            best = (p, ratio)
    return {"image": name, "mask": mask_kind, "seed": seed, "shape": [h, w, c],
            "dlrl_psnr_missing": psnr_missing(dl, img, mask), "dlrl_seconds": t_dlrl, "dlrl_chosen": chosen,
            "soft_impute_psnr_missing": best[0], "soft_impute_best_lambda_min_ratio": best[1],
            "soft_impute_seconds_all_ratios": time.perf_counter() - t0}


def _load(path):
    if path.is_file():
        return json.loads(path.read_text())
    return None


def _summary(rows):
    table = {}
    for r in rows:
        table.setdefault(r["dataset"], {}).setdefault(r["method"], []).append(r["rmse"])
    out = {}
    for ds, by in table.items():
        out[ds] = {}
        for meth, vals in by.items():
            a = np.asarray(vals, dtype=float)
            out[ds][meth] = {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0, "n": int(a.size)}
    return out


def images_markdown(doc):
    lines = ["", "### Inpainting (missing-pixel PSNR, dB)", "",
             "DLRL: `dlrl.complete` defaults per colour channel (its search holds back 10 % of the *observed* "
             "pixels; the truth is never used). Soft-Impute: the best of lambda_min_ratio "
             f"{list(SOFT_IMPUTE_RATIOS)} chosen *on the truth* (an oracle that favours it). "
             f"Machine: {doc.get('machine', '?')}.", "",
             "| image | mask | size | DLRL | Soft-Impute (oracle) | DLRL − Soft-Impute | DLRL s |", "|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        d, si = r["dlrl_psnr_missing"], r["soft_impute_psnr_missing"]
        lines.append(f"| {r['image']} | {r['mask']} | {'×'.join(map(str, r['shape']))} | {d:.2f} | {si:.2f} | "
                     f"{d - si:+.2f} | {r['dlrl_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def _blend_table(rows):
    """The default's parts: the DLRL fits alone vs the default (blended where the blend won)."""
    by = {}
    for r in rows:
        if r["method"] == "dlrl" and "rmse_dlrl_part" in r:
            by.setdefault(r["dataset"], []).append(r)
    if not by:
        return []
    out = ["", "### DLRL alone and blended (dlrl.tuning.BLEND)", "",
           "The default predictor averages the DLRL fits and, where the rating matrix fits the dense neighbourhood "
           "models and the blend wins on the search's validation ratings (weights by least squares, judged out of "
           "sample on halves of those ratings, by the same one-standard-error rule), blends them with an item–item "
           "and a user–user neighbourhood model (`dlrl.neighbors`). The decision uses the validation columns only; "
           "the test columns are the outcome. RMSE, mean over seeds:", "",
           "| dataset | validation: DLRL part | validation: blend (out of sample) | blend taken | "
           "mean weights DLRL / item / user / intercept | test: DLRL part alone | test: default |",
           "|---|---|---|---|---|---|---|"]
    for ds, rs in by.items():
        used = [r for r in rs if (r.get("blend") or {}).get("used")]
        ws = np.mean([r["blend"]["weights"] for r in used], axis=0) if used else None
        wtxt = " / ".join(f"{w:.2f}" for w in ws) if ws is not None else "—"
        bl = [r.get("blend") or {} for r in rs]
        vd = [b["val_rmse_dlrl"] for b in bl if "val_rmse_dlrl" in b]
        vb = [b["val_rmse_blend_out_of_sample"] for b in bl if "val_rmse_blend_out_of_sample" in b]
        out.append(f"| {ds} | {np.mean(vd):.4f} | {np.mean(vb):.4f} | {len(used)} of {len(rs)} | {wtxt} | "
                   f"{np.mean([r['rmse_dlrl_part'] for r in rs]):.4f} | {np.mean([r['rmse'] for r in rs]):.4f} |"
                   if vd and vb else f"| {ds} | — | — | {len(used)} of {len(rs)} | {wtxt} | "
                   f"{np.mean([r['rmse_dlrl_part'] for r in rs]):.4f} | {np.mean([r['rmse'] for r in rs]):.4f} |")
    return out


def markdown(doc):
    summ = _summary(doc["rows"])
    methods = [m for m in METHOD_ORDER if any(m in v for v in summ.values())]
    lines = [f"<!-- generated by bench/bench_accuracy.py from {doc.get('json_name', 'accuracy_cpu.json')}; "
             "do not edit by hand -->",
             f"Test RMSE (a square root), mean ± std over seeds (n = seeds run); machine: {doc['machine']}.",
             "DLRL = the library's ratings defaults (`dlrl.tuning.fit_tuned`): hyper-parameters chosen on a "
             "validation part of the training ratings, 3 averaged fits, blended with two neighbourhood models where "
             "that wins on the same validation ratings (the DLRL part alone: the table after this one).", "",
             "| dataset | " + " | ".join(methods) + " | DLRL beats BaselineOnly & SVD |",
             "|---|" + "---|" * len(methods) + "---|"]
    ml = []
    for ds, by in summ.items():
        cells = []
        for meth in methods:
            s = by.get(meth)
            cells.append("—" if s is None else f"{s['mean']:.4f} ± {s['std']:.4f} (n={s['n']})")
        d = by.get("dlrl")
        beats = "—"
        if d is not None and "BaselineOnly" in by and "SVD" in by:
            beats = "yes" if d["mean"] < by["BaselineOnly"]["mean"] and d["mean"] < by["SVD"]["mean"] else "**no**"
        lines.append(f"| {ds} | " + " | ".join(cells) + f" | {beats} |")
        if ds.startswith("ml100k-u") and d is not None:
            ml.append(d["mean"])
    if len(ml) == 5:
        lines += ["", f"ML-100K u1–u5 mean of the DLRL fold means: {np.mean(ml):.4f} (target ≤ 0.905)."]
    lines += _blend_table(doc["rows"])
    lines += ["", "### The validation search behind DLRL's defaults (dlrl.tuning)", "",
              "Each DLRL row above chose its hyper-parameters by `dlrl.tuning.choose` on validation parts of its "
              "*training* ratings (10 % each, drawn with the row's seed; pooled k-fold parts when one part would "
              "hold fewer than 2000 ratings); the test ratings were never seen. Grid (staged: each stage varies one "
              "name around the best so far; a stage's lowest validation RMSE replaces the best only when it wins by "
              "more than one paired standard error): " + "; ".join(
                  f"{k} {list(v)}" for k, v in doc.get("grid", [])) + ". Start: " + ", ".join(
                  f"{k}={v}" for k, v in (doc.get("start") or {}).items()) + ". Then the chosen model is fitted "
              "on all training ratings with the chosen epoch count, `members` times with different seeds, and the "
              "predictions averaged (then blended where the blend won: the table above).", "",
              "| dataset | seed | chosen | fit | val RMSE (chosen) | val RMSE (start) | candidates | folds | "
              "members | search s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    notes = {}
    for r in doc["rows"]:
        if r["method"] != "dlrl" or not r.get("candidates"):
            continue
        ch = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["chosen"].items())
        codes = notes.setdefault(r.get("code"), len(notes)) if r.get("code") else None
        mark = "" if codes is None else " " + "†" * (codes + 1)
        fk = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in (r.get("fit_kwargs") or {}).items())
        lines.append(f"| {r['dataset']}{mark} | {r['seed']} | {ch} | {fk or '—'} | {r['chosen_val_rmse']:.4f} | "
                     f"{r['candidates'][0]['val_rmse']:.4f} | {len(r['candidates'])} | {r.get('folds') or 1} | "
                     f"{r.get('members') or 1} | {r['tune_seconds']:.0f} "
                     f"(budget {r.get('budget_s', doc.get('budget_s')) or 'default'}) |")
    for code, k in notes.items():
        lines += ["", "†" * (k + 1) + " searched with " + code + "."]
    for note in doc.get("notes") or []:
        lines += ["", note]
    missing = doc.get("missing") or []
    if missing:
        lines += ["", "Rows not run (time): " + ", ".join(missing) + "."]
    return "\n".join(lines) + "\n"


def full_markdown(doc, out):
    """The ratings markdown, plus the inpainting table when ``<out stem>_images.json`` exists
    (every write of the markdown keeps it: a ratings run must not drop the images section), else
    a pointer to bench_images' table (the inpainting defaults are measured there)."""
    text = markdown(doc)
    img = _load(out.with_name(out.stem + "_images.json"))
    if img and img.get("rows"):
        text += images_markdown(img)
    else:
        text += ("\n### Inpainting\n\nMissing-pixel PSNR of `dlrl.images.inpaint`'s defaults beside truth-tuned "
                 "Soft-Impute: `bench/results/images.md` (`bench/bench_images.py`).\n")
    return text


def main_images(args, out):
    """Inpainting rows, written to ``<out stem>_images.json`` after every image."""
    from _env import device_name

    path = out.with_name(out.stem + "_images.json") if not out.stem.endswith("_images") else out
    doc = (_load(path) if args.resume else None) or {"rows": []}
    doc.update(machine=device_name("cpu") + ", shared with other jobs", command=" ".join(sys.argv))
    names = args.images or [f"re{k}" for k in range(1, 7)]
    done = {(r["image"], r["mask"]) for r in doc["rows"]}
    for name in names:
        for kind in args.masks:
            if (name, kind) in done:
                continue
            row = run_image(name, kind, crop=args.crop, budget_s=args.budget)
            doc["rows"].append(row)
            atomic_write_text(path, json.dumps(doc, indent=1))
            print(f"{name} {kind}: DLRL {row['dlrl_psnr_missing']:.2f} dB ({row['dlrl_seconds']:.0f} s), "
                  f"Soft-Impute best {row['soft_impute_psnr_missing']:.2f} dB", flush=True)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one tiny synthetic set, seed 0, no SVD++ (CI: seconds)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "accuracy_cpu.json"))
    ap.add_argument("--md", default=str(REPO / "bench" / "results" / "accuracy.md"))
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--only", nargs="+", default=None, help="dataset names to run (default: all)")
    ap.add_argument("--methods", nargs="+", default=None, choices=METHOD_ORDER)
    ap.add_argument("--no-svdpp", action="store_true")
    ap.add_argument("--budget", type=float, default=None, help="dlrl.tuning budget_s (default: the library's)")
    ap.add_argument("--resume", action="store_true", help="keep the rows already in --out, run the others")
    ap.add_argument("--md-only", action="store_true", help="regenerate --md from --out and exit")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--note", action="append", default=None, help="a line for the markdown (repeatable)")
    ap.add_argument("--images", nargs="*", default=None,
                    help="inpainting instead of ratings: these images (default re1..re6), 40%% random and text masks")
    ap.add_argument("--masks", nargs="+", default=["random", "text"], choices=["random", "text"])
    ap.add_argument("--crop", type=int, default=None, help="images: top-left crop size (quick runs)")
    args = ap.parse_args(argv)
    out, md = Path(args.out), Path(args.md)
    if args.md_only:
        doc = _load(out)
        if doc is None:
            ap.error(f"--md-only: {out} does not exist")
        from dlrl import tuning

        doc.setdefault("grid", [list(g) for g in tuning.RATINGS_GRID])
        doc.setdefault("start", dict(tuning.START))
        atomic_write_text(md, full_markdown(doc, out))
        return 0
    torch.set_num_threads(args.threads)
    if args.images is not None:
        return main_images(args, out)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    methods = list(args.methods or METHOD_ORDER)
    if args.quick or args.no_svdpp:
        methods = [m for m in methods if m != "SVDpp"]
    try:
        import surprise  # noqa: F401
    except ImportError:
        print("scikit-surprise is not installed (pip install -e '.[bench]'): its rows are skipped", file=sys.stderr)
        methods = [m for m in methods if m == "dlrl"]
    from _env import device_name

    doc = (_load(out) if args.resume else None) or {"rows": []}
    from dlrl import tuning

    doc.update(grid=[list(g) for g in tuning.RATINGS_GRID], start=dict(tuning.START))
    doc.update(machine=device_name("cpu") + f", {args.threads} thread(s), shared with other jobs",
               torch=torch.__version__, python=platform.python_version(), command=" ".join(sys.argv),
               json_name=out.name)
    if args.note:
        doc["notes"] = list(args.note)
    done = {(r["dataset"], r["method"], r["seed"]) for r in doc["rows"]}
    todo = []
    for name, train, test in datasets(args.quick):
        if args.only and name not in args.only:
            continue
        for meth in methods:
            if meth == "SVDpp":
                continue  # last: slow
            for s in ([0] if meth == "BaselineOnly" else seeds):
                todo.append((name, train, test, meth, s))
    if "SVDpp" in methods:
        for name, train, test in datasets(False):
            if not args.only or name in args.only:
                todo.append((name, train, test, "SVDpp", 0))
    missing = [f"{n}/{m}/seed{s}" for n, _, _, m, s in todo if (n, m, s) not in done]
    for name, train, test, meth, s in todo:
        if (name, meth, s) in done:
            continue
        if meth == "dlrl":
            err, secs, extra = run_dlrl(train, test, s, args.budget, 40 if args.quick else None)
        else:
            err, secs, extra = run_surprise(meth, train, test, s)
        row = {"dataset": name, "method": meth, "seed": s, "rmse": err, "seconds": secs,
               **({"budget_s": args.budget} if meth == "dlrl" else {}),
               "n_train": train.nnz if hasattr(train, "nnz") else int(train.values.numel()),
               "n_test": int(test.values.numel()), **extra}
        doc["rows"].append(row)
        missing.remove(f"{name}/{meth}/seed{s}")
        doc["missing"] = missing
        doc["summary"] = _summary(doc["rows"])
        atomic_write_text(out, json.dumps(doc, indent=1))
        atomic_write_text(md, full_markdown(doc, out))
        print(f"{name:24s} {meth:12s} seed {s}: RMSE {err:.4f}  ({secs:.1f} s)", flush=True)
    doc["missing"] = missing
    doc["summary"] = _summary(doc["rows"])
    atomic_write_text(out, json.dumps(doc, indent=1))
    atomic_write_text(md, full_markdown(doc, out))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
