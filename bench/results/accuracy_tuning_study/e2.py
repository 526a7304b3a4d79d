import sys; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from exp import *
import statistics as st
base = dict(blocks=3, rank=20, bias=True, p=1.0, wdp=2.5e-4)
variants = {
 "base": (base, {}),
 "lr.005": (base, dict(lr=0.005)),
 "lr.02": (base, dict(lr=0.02)),
 "pat10": (base, dict(patience=10)),
 "r40wd5": (dict(base, rank=40, wdp=5e-4), {}),
 "r40wd3.75": (dict(base, rank=40, wdp=3.75e-4), {}),
 "r10": (dict(base, rank=10), {}),
 "b2": (dict(base, blocks=2), {}),
}
sel = sys.argv[1:] or list(variants)
for name in sel:
    cfg, fk = variants[name]
    rs = [run(1, 0, cfg, seed=s, fit_kw=fk) for s in range(3)]
    vals = [r["val"] for r in rs]
    print(f"{name:10s} mean {st.mean(vals):.4f} ± {st.stdev(vals):.4f} singles {[round(v,4) for v in vals]} ep {[r['ep'] for r in rs]} ens3 {rm(sum(r['pred'] for r in rs)/3, rs[0]['y']):.4f} cpu {sum(r['cpu'] for r in rs):.1f}", flush=True)
