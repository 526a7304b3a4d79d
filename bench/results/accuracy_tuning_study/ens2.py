import sys, torch, itertools, glob
D="/tmp/dlrl_inner2_cache"
def load(k,n,s): return torch.load(f"{D}/u{k}_{n}_{s}.pt")
def rm(p,y): return float(((p-y)**2).mean().sqrt())
combos = [x.split("+") for x in sys.argv[2:]]
for k in [int(x) for x in sys.argv[1].split(",")]:
    for c in combos:
        ps=[]; 
        for n in c:
            name, _, seeds = n.partition(":")
            seeds = range(int(seeds)) if seeds else range(3)
            ps += [load(k,name,s) for s in seeds]
        print(f"u{k} {'+'.join(c):50s} n={len(ps)} {rm(sum(r['pred'] for r in ps)/len(ps), ps[0]['y']):.4f}")
