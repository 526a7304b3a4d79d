"""Scratch: a separate Adam weight decay for the bias terms (mu, bu, bi), by wrapping torch.optim.Adam
(no change to model.py). BW = bias wd / factor wd."""
import sys, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import inner2 as inner
import dlrl.optim
_orig = dlrl.optim.FusedAdam
STATE = {"model": None, "bw": 1.0, "mu_wd": None}
def Adam(params, lr, betas, weight_decay):
    params = list(params); m = STATE["model"]
    bias = {id(m.bu), id(m.bi)}; mu = {id(m.mu)}
    g1 = [p for p in params if id(p) not in bias | mu]
    g2 = [p for p in params if id(p) in bias]
    g3 = [p for p in params if id(p) in mu]
    groups = [{"params": g1}]
    if g2: groups.append({"params": g2, "weight_decay": weight_decay * STATE["bw"]})
    if g3: groups.append({"params": g3, "weight_decay": weight_decay if STATE["mu_wd"] is None else STATE["mu_wd"]})
    opt = _orig(groups, lr=lr, betas=betas, weight_decay=weight_decay)
    assert all(g["lr"] is opt.param_groups[0]["lr"] for g in opt.param_groups)
    return opt
dlrl.optim.FusedAdam = Adam
_DLRL = inner.DLRL
class DLRL(_DLRL):
    def fit(self, *a, **k):
        STATE["model"] = self
        return super().fit(*a, **k)
inner.DLRL = DLRL
base = inner.base
for name, bw, mu_wd, cfg in [("ctl", 1.0, None, base), ("bw0.25", 0.25, None, base), ("bw0.5", 0.5, None, base), ("bw2", 2.0, None, base),
                             ("bw4", 4.0, None, base), ("mu0", 1.0, 0.0, base), ("bw0", 0.0, 0.0, base),
                             ("bw.5wd3", 0.5 * 2.5 / 3.5, None, dict(base, wdp=3.5e-4)),
                             ("bw2wd2", 2.0 * 2.5 / 1.8, None, dict(base, wdp=1.8e-4))]:
    inner.V[name] = (cfg, dict(lr=0.005), 600)
    inner.BWCFG = getattr(inner, "BWCFG", {}); inner.BWCFG[name] = (bw, mu_wd)
_run = inner.run
def run(k, name, seed):
    if name in inner.BWCFG:
        STATE["bw"], STATE["mu_wd"] = inner.BWCFG[name]
    else:
        STATE["bw"], STATE["mu_wd"] = 1.0, None
    return _run(k, name, seed)
if __name__ == "__main__":
    import statistics as st
    ks = [int(x) for x in sys.argv[1].split(",")]
    for name in sys.argv[3:]:
        for k in ks:
            rs = [run(k, name, s) for s in range(int(sys.argv[2]))]
            vals = [r["val"] for r in rs]
            print(f"u{k} {name:12s} {st.mean(vals):.4f} ± {st.stdev(vals) if len(vals)>1 else 0:.4f} ens{len(rs)} {inner.rm(sum(r['pred'] for r in rs)/len(rs), rs[0]['y']):.4f} ep {[r['ep'] for r in rs]} cpu {sum(r['cpu'] for r in rs):.1f}", flush=True)
