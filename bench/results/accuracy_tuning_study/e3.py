import sys; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from exp import *
import statistics as st
base = dict(blocks=3, rank=20, bias=True, p=1.0, wdp=2.5e-4)
V = {
 "lr.005e600": (base, dict(lr=0.005), 600),
 "lr.003e900": (base, dict(lr=0.003), 900),
 "lr.005r10e600": (dict(base, rank=10), dict(lr=0.005), 600),
 "lr.005wd3.5": (dict(base, wdp=3.5e-4), dict(lr=0.005), 600),
 "lr.005wd1.8": (dict(base, wdp=1.8e-4), dict(lr=0.005), 600),
 "lr.005r40": (dict(base, rank=40), dict(lr=0.005), 600),
 "lr.005b5": (dict(base, blocks=5), dict(lr=0.005), 600),
}
V.update({
 "none": (dict(base, activation="none"), {}, 300),
 "none.005": (dict(base, activation="none"), dict(lr=0.005), 600),
 "none.005wd5": (dict(base, activation="none", wdp=5e-4), dict(lr=0.005), 600),
 "none.005wd1": (dict(base, activation="none", wdp=1e-3), dict(lr=0.005), 600),
 "none.005r40wd5": (dict(base, activation="none", wdp=5e-4, rank=40), dict(lr=0.005), 600),
})
V.update({
 "b999": (base, dict(betas=(0.9, 0.999)), 300),
 "b999.005": (base, dict(betas=(0.9, 0.999), lr=0.005), 600),
 "b99": (base, dict(betas=(0.9, 0.99)), 300),
 "eta.5": (dict(base, eta0=0.5), dict(lr=0.005), 600),
 "p.5": (dict(base, p=0.5), dict(lr=0.005), 600),
 "nobias": (dict(base, bias=False), dict(lr=0.005), 600),
})
V["base"] = (base, {}, 300)
k = int(sys.argv[1])
for name in sys.argv[2:]:
    cfg, fk, ep = V[name]
    rs = [run(k, 0, cfg, seed=s, fit_kw=fk, epochs=ep) for s in range(3)]
    vals = [r["val"] for r in rs]
    print(f"u{k} {name:14s} mean {st.mean(vals):.4f} ± {st.stdev(vals):.4f} singles {[round(v,4) for v in vals]} ep {[r['ep'] for r in rs]} ens3 {rm(sum(r['pred'] for r in rs)/3, rs[0]['y']):.4f} cpu {sum(r['cpu'] for r in rs):.1f}", flush=True)
