"""Outer-validation study: the training ratings of a bench dataset are split 85/15 (outer seed);
the defaults variant is run on the 85 % and scored on the 15 % (test split never touched)."""
import sys, time, math, json
import torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3] / "python")); sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
torch.set_num_threads(1)
from bench_accuracy import synthetic_ratings, SYNTHETIC
from dlrl.datasets import split_canonical, split_published, load_movielens
from dlrl import tuning
from dlrl.metrics import rmse

def train_of(name):
    if name.startswith("ml100k-u"):
        return split_canonical(str(__import__("pathlib").Path(__file__).resolve().parents[4] / "shared" / "data" / "ml-100k"), int(name[-1]))[0]
    if name == "ml100k-published":
        return split_published(load_movielens(str(__import__("pathlib").Path(__file__).resolve().parents[4] / "shared" / "data" / "ml-100k")))[0]
    return synthetic_ratings(name, *SYNTHETIC[name])[0]

VARIANTS = {
  "old": dict(min_val=0, z=0.0, fit={}, members=1),
  "old3": dict(min_val=0, z=0.0, fit={}, members=3),
  "z1": dict(min_val=0, z=1.0, fit={}, members=1),
  "z1lr": dict(min_val=0, z=1.0, fit={"lr": 0.005}, members=1),
  "z1lrkf": dict(min_val=2000, z=1.0, fit={"lr": 0.005}, members=1),
  "z0lrkf": dict(min_val=2000, z=0.0, fit={"lr": 0.005}, members=1),
  "new1": dict(min_val=2000, z=1.0, fit={"lr": 0.005}, members=1),
  "new3": dict(min_val=2000, z=1.0, fit={"lr": 0.005}, members=3),
}

def run(name, variant, seed, budget=None):
    tr = train_of(name)
    fit, val = tuning._split(tr.values.numel(), 100 + seed, 0.15)
    if variant in ("SVD", "BaselineOnly"):
        import numpy as np, pandas as pd
        from surprise import SVD, BaselineOnly, Dataset, Reader
        algo = BaselineOnly(verbose=False) if variant == "BaselineOnly" else SVD(random_state=seed)
        r, c, v = tr.rows, tr.cols, tr.values
        df = pd.DataFrame({"u": r[fit].numpy(), "i": c[fit].numpy(), "r": v[fit].double().numpy()})
        algo.fit(Dataset.load_from_df(df, Reader(rating_scale=(1, 5))).build_full_trainset())
        est = np.array([p.est for p in algo.test(list(zip(r[val].tolist(), c[val].tolist(), v[val].double().tolist())))])
        e = float(np.sqrt(((est - v[val].double().numpy()) ** 2).mean()))
        return {"dataset": name, "variant": variant, "seed": seed, "outer_val_rmse": e, "single": e, "two": e, "chosen": None,
                "fit_kwargs": None, "n_cand": 0, "tune_s": 0, "wall": 0, "cpu": 0, "folds": 0}
    v = VARIANTS[variant]
    tuning.MIN_VAL = v["min_val"]
    tuning.SELECT_Z = v["z"]
    tuning.RATINGS_FIT = v["fit"]
    t = time.perf_counter(); c = time.process_time()
    # fit_tuned reads the module globals at call time except default args: pass explicitly
    res = tuning.choose({"clip": (1.0, 5.0), "seed": seed}, tr.rows[fit], tr.cols[fit], tr.values[fit],
                        (tr.n_users, tr.n_items), {"clip", "seed"}, seed=seed, budget_s=budget,
                        fit_defaults=v["fit"], z=v["z"], min_val=v["min_val"])
    model, _ = tuning.fit_tuned(tr.rows[fit], tr.cols[fit], tr.values[fit], (tr.n_users, tr.n_items), seed=seed,
                                members=v["members"], tune=False, clip=(1.0, 5.0), **res["overrides"], **res["fit_kwargs"])
    err = float(rmse(model.predict(tr.rows[val], tr.cols[val]), tr.values[val]))
    single = float(rmse(model.members[0].predict(tr.rows[val], tr.cols[val]), tr.values[val])) if hasattr(model, "members") else err
    two = float(rmse((model.members[0].predict(tr.rows[val], tr.cols[val]) + model.members[1].predict(tr.rows[val], tr.cols[val])) / 2, tr.values[val])) if hasattr(model, "members") else err
    rep = res["report"]
    return {"dataset": name, "variant": variant, "seed": seed, "outer_val_rmse": err, "single": single, "two": two, "chosen": rep["chosen"],
            "fit_kwargs": res["fit_kwargs"], "n_cand": len(rep["candidates"]), "tune_s": rep["seconds"],
            "wall": time.perf_counter() - t, "cpu": time.process_time() - c, "folds": rep.get("folds")}

if __name__ == "__main__":
    out = sys.argv[1]; name = sys.argv[2]; variants = sys.argv[3].split(","); seeds = [int(s) for s in sys.argv[4].split(",")]
    budget = float(sys.argv[5]) if len(sys.argv) > 5 else None
    for var in variants:
        for s in seeds:
            r = run(name, var, s, budget)
            with open(out, "a") as f:
                f.write(json.dumps(r) + "\n")
            print(f"{name} {var:8s} s{s} outer single {r['single']:.4f} avg2 {r['two']:.4f} avg3 {r['outer_val_rmse']:.4f} chosen {r['chosen']} {r['fit_kwargs']} cand {r['n_cand']} folds {r['folds']} tune {r['tune_s']:.0f}s cpu {r['cpu']:.0f}s", flush=True)
