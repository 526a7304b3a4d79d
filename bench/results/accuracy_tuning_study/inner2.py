"""Inner validation: fit on 90% of u{k}.base (tuning._split seed 0), ES on the other 10%. Caches predictions."""
import sys, time, json, math, os, statistics as st
import torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3] / "python"))
torch.set_num_threads(1)
from dlrl.datasets import split_canonical
from dlrl.model import DLRL
from dlrl import tuning
D = "/tmp/dlrl_inner2_cache"; os.makedirs(D, exist_ok=True)
_c = {}
def data(k):
    if k not in _c:
        _c[k] = split_canonical(str(__import__("pathlib").Path(__file__).resolve().parents[4] / "shared" / "data" / "ml-100k"), k)[0]
    return _c[k]
base = dict(blocks=3, rank=20, bias=True, p=1.0, wdp=2.5e-4)
V = {
 "base": (base, dict(lr=0.005), 600),
 "lr003": (base, dict(lr=0.003), 900),
 "r10": (dict(base, rank=10), dict(lr=0.005), 600),
 "r10wd3": (dict(base, rank=10, wdp=3e-4), dict(lr=0.005), 600),
 "r40wd3": (dict(base, rank=40, wdp=3e-4), dict(lr=0.005), 600),
 "r30": (dict(base, rank=30), dict(lr=0.005), 600),
 "wd2": (dict(base, wdp=2e-4), dict(lr=0.005), 600),
 "wd3": (dict(base, wdp=3e-4), dict(lr=0.005), 600),
 "p.5": (dict(base, p=0.5), dict(lr=0.005), 600),
 "b4": (dict(base, blocks=4), dict(lr=0.005), 600),
 "eta.5": (dict(base, eta0=0.5), dict(lr=0.005), 600),
 "eta.02": (dict(base, eta0=0.02), dict(lr=0.005), 600),
 "b999": (base, dict(lr=0.005, betas=(0.9,0.999)), 600),
 "es20": (base, dict(lr=0.005), 600),
 "lr002": (base, dict(lr=0.002), 1500),
 "init_scaled": (dict(base, init="scaled"), dict(lr=0.005), 600),
 "nfrob": (dict(base, normalize="frobenius"), dict(lr=0.005), 600),
 "ntrace": (dict(base, normalize="trace"), dict(lr=0.005), 600),
 "carry": (dict(base, refresh="carry"), dict(lr=0.005), 600),
 "noscale": (dict(base, scale_init=False), dict(lr=0.005), 600),
 "init_pub": (dict(base, init="published"), dict(lr=0.005), 600),
 "pat2": (base, dict(lr=0.005, patience=2, lr_factor=0.5), 600),
 "b5_9": (base, dict(lr=0.005, betas=(0.5,0.9)), 600),
 "p115": (dict(base, p=[1.0,1.0,0.5]), dict(lr=0.005), 600),
 "p511": (dict(base, p=[0.5,1.0,1.0]), dict(lr=0.005), 600),
 "pat20": (base, dict(lr=0.005, patience=20), 600),
}
def run(k, name, seed):
    f = f"{D}/u{k}_{name}_{seed}.pt"
    if os.path.exists(f):
        return torch.load(f)
    cfg, fk, ep = V[name]
    tr = data(k)
    fit, val = tuning._split(tr.values.numel(), 0, 0.1)
    v = (tr.rows[val], tr.cols[val], tr.values[val])
    cfg = dict(cfg); wdp = cfg.pop("wdp")
    cfg["weight_decay"] = wdp * fit.numel()
    t = time.process_time(); w = time.perf_counter()
    m = DLRL((tr.n_users, tr.n_items), clip=(1., 5.), seed=seed, **cfg)
    es = 20 if name == "es20" else 10
    h = m.fit(rows=tr.rows[fit], cols=tr.cols[fit], values=tr.values[fit], val=v, epochs=ep,
              early_stopping=es, progress=False, tune=False, **fk)
    vs = [x["val_rmse"] for x in h]
    pred = m.predict(v[0], v[1]).double()
    r = {"val": min(vs), "ep": vs.index(min(vs)) + 1, "n": len(h), "cpu": time.process_time() - t,
         "wall": time.perf_counter() - w, "pred": pred, "y": v[2].double()}
    torch.save(r, f)
    return r
def rm(p, y): return float(((p - y) ** 2).mean().sqrt())
if __name__ == "__main__":
    ks = [int(x) for x in sys.argv[1].split(",")]
    seeds = range(int(sys.argv[2]))
    for name in sys.argv[3:]:
        for k in ks:
            rs = [run(k, name, s) for s in seeds]
            vals = [r["val"] for r in rs]
            print(f"u{k} {name:12s} {st.mean(vals):.4f} ± {st.stdev(vals) if len(vals)>1 else 0:.4f} ens{len(rs)} {rm(sum(r['pred'] for r in rs)/len(rs), rs[0]['y']):.4f} ep {[r['ep'] for r in rs]} cpu {sum(r['cpu'] for r in rs):.1f} wall {sum(r['wall'] for r in rs):.1f}", flush=True)
