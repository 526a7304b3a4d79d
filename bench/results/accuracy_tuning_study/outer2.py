"""(The "la" variant needs the weight-decay look-ahead of python/dlrl/tuning.py at commit e1bcb1f, since removed.)
Outer validation: the bench dataset's *training* ratings split 85/15 (outer seed, tuning._split(n, 100+seed, 0.15));
fit_tuned-equivalent procedure on the 85 %, RMSE on the 15 %. Variants toggle tuning constants."""
import sys, time, json
import torch
_H = __import__("pathlib").Path(__file__).resolve(); sys.path.insert(0, str(_H.parents[3] / "python")); sys.path.insert(0, str(_H.parents[2])); sys.path.insert(0, str(_H.parent))
torch.set_num_threads(1)
from study import train_of
from dlrl import tuning
from dlrl.metrics import rmse
G0 = tuning.GRID  # the full grid (with blocks); fit_tuned now passes RATINGS_GRID: patch it too
NOB = tuple(g for g in G0 if g[0] != "blocks")
VAR = {"cur": dict(LOOKAHEAD=(), GRID=G0), "la": dict(LOOKAHEAD=("weight_decay_per_entry",), GRID=G0),
       "nob": dict(LOOKAHEAD=(), GRID=NOB), "nop": dict(LOOKAHEAD=(), GRID=tuple(g for g in NOB if g[0] != "p")), "nobla": dict(LOOKAHEAD=("weight_decay_per_entry",), GRID=NOB)}
def run(name, var, seed):
    for k, v in VAR[var].items():
        setattr(tuning, k, v)
    tuning.RATINGS_GRID = tuning.GRID
    tr = train_of(name)
    fit, val = tuning._split(tr.values.numel(), 100 + seed, 0.15)
    t = time.process_time()
    model, rep = tuning.fit_tuned(tr.rows[fit], tr.cols[fit], tr.values[fit], (tr.n_users, tr.n_items), seed=seed, clip=(1.0, 5.0))
    e = float(rmse(model.predict(tr.rows[val], tr.cols[val]), tr.values[val]))
    return {"dataset": name, "var": var, "seed": seed, "outer": e, "chosen": rep["chosen"], "val": rep["chosen_val_rmse"],
            "cands": [(c["params"].get("weight_decay_per_entry"), round(c["val_rmse"], 4)) for c in rep["candidates"]],
            "skipped": len(rep["skipped"]), "tune_s": rep["seconds"], "cpu": time.process_time() - t}
if __name__ == "__main__":
    out, name, vs, seeds = sys.argv[1], sys.argv[2], sys.argv[3].split(","), [int(s) for s in sys.argv[4].split(",")]
    for s in seeds:
        for v in vs:
            r = run(name, v, s)
            open(out, "a").write(json.dumps(r) + "\n")
            print(f"{name} {v:4s} s{s} outer {r['outer']:.4f} val {r['val']:.4f} chosen {r['chosen']} cands {r['cands']} skipped {r['skipped']} tune {r['tune_s']:.0f}s cpu {r['cpu']:.0f}", flush=True)
