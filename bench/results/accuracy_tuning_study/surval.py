import sys; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from study import *
import numpy as np, pandas as pd
from surprise import SVD, BaselineOnly, Dataset, Reader
name, seed = sys.argv[1], int(sys.argv[2])
tr = train_of(name)
fit, val = tuning._split(tr.values.numel(), 100 + seed, 0.15)
r, c, v = tr.rows[fit], tr.cols[fit], tr.values[fit]
for meth in ("BaselineOnly", "SVD"):
    sq = []
    for f, vv in tuning._folds(fit.numel(), seed):
        algo = BaselineOnly(verbose=False) if meth == "BaselineOnly" else SVD(random_state=seed)
        df = pd.DataFrame({"u": r[f].numpy(), "i": c[f].numpy(), "r": v[f].double().numpy()})
        algo.fit(Dataset.load_from_df(df, Reader(rating_scale=(1, 5))).build_full_trainset())
        est = np.array([p.est for p in algo.test(list(zip(r[vv].tolist(), c[vv].tolist(), v[vv].double().tolist())))])
        sq.append((est - v[vv].double().numpy()) ** 2)
    print(name, seed, meth, "pooled val", round(float(np.sqrt(np.concatenate(sq).mean())), 4))
