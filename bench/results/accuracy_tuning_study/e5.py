import sys; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from exp import *
import statistics as st
base = dict(blocks=3, rank=20, bias=True, p=1.0, wdp=2.5e-4)
for k in (1, 2):
    rs = [run(k, 0, base, seed=s, fit_kw=dict(lr=0.005), epochs=600) for s in range(5)]
    y = rs[0]["y"]
    for K in (1, 2, 3, 4, 5):
        print(f"u{k} lr.005 avg{K} {rm(sum(r['pred'] for r in rs[:K])/K, y):.4f}", flush=True)
    print(f"u{k} singles {[round(r['val'],4) for r in rs]} cpu {[round(r['cpu'],1) for r in rs]}", flush=True)
