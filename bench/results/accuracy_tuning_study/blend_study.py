import sys, time, torch, math, json
sys.path.insert(0, "/work/main/python"); sys.path.insert(0, "/work/main/bench")
torch.set_num_threads(1)
from bench_accuracy import ML, synthetic_ratings, SYNTHETIC
from dlrl.datasets import split_canonical, split_published, load_movielens
from dlrl import tuning as T
from dlrl.model import DLRL
from dlrl.neighbors import ItemKNN
from dlrl.metrics import rmse
name = sys.argv[1]; seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
if name.startswith("u"):
    train, test = split_canonical(ML, int(name[1]))
elif name == "pub":
    train, test = split_published(load_movielens(ML))
else:
    train, test = synthetic_ratings(name, *SYNTHETIC[name])
shape = (train.n_users, train.n_items); clip = (1.0, 5.0)
r, c, v = T._as_tensors(train.rows, train.cols, train.values)
t0 = time.time()
res = T.choose({"clip": clip, "seed": seed}, r, c, v, shape, {"clip", "seed"}, seed=seed, fit_defaults=T.RATINGS_FIT,
               min_val=T.MIN_VAL, grid=T.RATINGS_GRID)
ts = time.time() - t0
val = res["validation"]
kp, up, ys = [], [], []
for f, vi in val["folds"]:
    knn = ItemKNN(clip=clip).fit(r[f], c[f], v[f], shape)
    kp.append(knn.predict(r[vi], c[vi])); ys.append(v[vi].double())
    uk = ItemKNN(clip=clip, reg_item=15, reg_user=10).fit(c[f], r[f], v[f], shape[::-1])
    up.append(uk.predict(c[vi], r[vi]))
kp, up, y, dp = torch.cat(kp), torch.cat(up), torch.cat(ys), val["pred"]
Xv = torch.stack([dp, kp, up, torch.ones_like(dp)], 1)
w3 = torch.linalg.lstsq(Xv, y[:, None]).solution[:, 0]
print("3-way w", w3.tolist(), "val", float(rmse(Xv @ w3, y)), "val uknn", float(rmse(up, y)))
d = dp - kp
alpha = float(((dp - y) * d).sum() / (d * d).sum()); alpha = min(max(alpha, 0.0), 1.0)
vb = (1 - alpha) * dp + alpha * kp
print(name, seed, "val dlrl", float(rmse(dp, y)), "val knn", float(rmse(kp, y)), "alpha", alpha, "val blend", float(rmse(vb, y)))
ctor = dict(clip=clip, **res["overrides"]); fk = dict(res["fit_kwargs"], tune=False)
ms = []
for j in range(3):
    mdl = DLRL(shape, **dict(ctor, seed=seed + 1000 * j)); mdl.fit(rows=r, cols=c, values=v, progress=False, **fk); ms.append(mdl)
ens = T.SeedAverage(ms)
yt = test.values.double()
pe = ens.predict(test.rows, test.cols).double()
knn = ItemKNN(clip=clip).fit(r, c, v, shape)
pk = knn.predict(test.rows, test.cols)
pb = (1 - alpha) * pe + alpha * pk
uk = ItemKNN(clip=clip, reg_item=15, reg_user=10).fit(c, r, v, shape[::-1])
pu = uk.predict(test.cols, test.rows)
p3 = (torch.stack([pe, pk, pu, torch.ones_like(pe)], 1) @ w3).clamp(*clip)
orac = min((float(rmse((1 - a) * pe + a * pk, yt)), a) for a in [i / 20 for i in range(21)])
rec = dict(name=name, seed=seed, ens=float(rmse(pe, yt)), single=float(rmse(ms[0].predict(test.rows, test.cols).double(), yt)),
           knn=float(rmse(pk, yt)), alpha=alpha, blend=float(rmse(pb, yt)), uknn=float(rmse(pu, yt)), blend3=float(rmse(p3, yt)), w3=w3.tolist(), oracle=orac, secs=time.time() - t0, search=ts)
print(json.dumps(rec), flush=True)
with open("/tmp/exp/blend_val3.jsonl", "a") as fh: fh.write(json.dumps(rec) + "\n")
