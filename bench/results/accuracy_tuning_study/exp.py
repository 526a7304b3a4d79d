"""Validation-only experiments: fold k's training ratings split 90/10 (tuning._split, seed s)."""
import sys, time, json, math, itertools
import torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3] / "python"))
torch.set_num_threads(1)
from dlrl.datasets import split_canonical
from dlrl.model import DLRL
from dlrl import tuning

_cache = {}
def data(k):
    if k not in _cache:
        _cache[k] = split_canonical(str(__import__("pathlib").Path(__file__).resolve().parents[4] / "shared" / "data" / "ml-100k"), k)[0]
    return _cache[k]

def run(k, split_seed, cfg, seed=0, epochs=300, es=10, fit_kw=None, frac=0.1):
    tr = data(k)
    fit, val = tuning._split(tr.values.numel(), split_seed, frac)
    v = (tr.rows[val], tr.cols[val], tr.values[val])
    cfg = dict(cfg)
    wdp = cfg.pop("wdp", None)
    if wdp is not None:
        cfg["weight_decay"] = wdp * fit.numel()
    t = time.process_time()
    m = DLRL((tr.n_users, tr.n_items), clip=(1., 5.), seed=seed, **cfg)
    h = m.fit(rows=tr.rows[fit], cols=tr.cols[fit], values=tr.values[fit], val=v, epochs=epochs,
              early_stopping=es, progress=False, tune=False, **(fit_kw or {}))
    vs = [x["val_rmse"] for x in h]
    pred = m.predict(v[0], v[1]).double()
    return {"val": min(vs), "ep": vs.index(min(vs)) + 1, "n": len(h), "cpu": time.process_time() - t, "pred": pred,
            "y": v[2].double()}

def rm(p, y):
    return float(((p - y) ** 2).mean().sqrt())
