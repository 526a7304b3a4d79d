import sys, json; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from study import *
name, seed = sys.argv[1], int(sys.argv[2])
cfgs = [json.loads(a) for a in sys.argv[3:]]
tr = train_of(name)
fit, val = tuning._split(tr.values.numel(), 100 + seed, 0.15)
for c in cfgs:
    c = dict(dict(blocks=3, rank=20, bias=True, p=1.0), **c)
    lr = c.pop("lr", 0.005)
    wdp = c.pop("wdp", 2.5e-4)
    expl = set(c) | {"clip", "seed", "weight_decay", "lr"}
    n_fit = tuning._folds(fit.numel(), seed)[0][0].numel()
    res = tuning.choose(dict(c, clip=(1.0, 5.0), seed=seed, lr=lr, weight_decay=wdp * n_fit), tr.rows[fit], tr.cols[fit], tr.values[fit],
                        (tr.n_users, tr.n_items), expl, seed=seed)
    r = res["report"]["candidates"][0]
    print(name, seed, c, "wdp", wdp, "lr", lr, "val", round(r["val_rmse"], 4), r["best_epoch"], r["epochs_run"], round(r["seconds"], 1), flush=True)
