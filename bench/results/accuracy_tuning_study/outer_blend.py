"""Outer validation of the blend (dlrl.tuning.BLEND), training ratings only: each dataset's
*training* ratings split 85/15 (tuning._split(n, 100 + seed, 0.15)); fit_tuned (defaults, blend
on) on the 85 %, RMSE on the 15 % of the blended predictor and of its DLRL part alone (the
averaged fits without the blend). No test rating is read.

    .venv/bin/python bench/results/accuracy_tuning_study/outer_blend.py OUT.jsonl ml100k-u1,ml100k-u2 0,1
"""
import json
import sys
import time

import torch

_H = __import__("pathlib").Path(__file__).resolve()
sys.path.insert(0, str(_H.parents[3] / "python"))
sys.path.insert(0, str(_H.parents[2]))
sys.path.insert(0, str(_H.parent))
torch.set_num_threads(1)
from study import train_of  # noqa: E402

from dlrl import tuning  # noqa: E402
from dlrl.metrics import rmse  # noqa: E402


def run(name, seed):
    tr = train_of(name)
    fit, val = tuning._split(tr.values.numel(), 100 + seed, 0.15)
    t = time.process_time()
    model, rep = tuning.fit_tuned(tr.rows[fit], tr.cols[fit], tr.values[fit], (tr.n_users, tr.n_items), seed=seed,
                                  clip=(1.0, 5.0))
    y = tr.values[val]
    blended = float(rmse(model.predict(tr.rows[val], tr.cols[val]), y))
    part = getattr(model, "model", model)
    alone = float(rmse(part.predict(tr.rows[val], tr.cols[val]), y))
    return {"dataset": name, "seed": seed, "outer_default": blended, "outer_dlrl_part": alone,
            "blend": rep["blend"], "cpu": time.process_time() - t}


if __name__ == "__main__":
    out, names, seeds = sys.argv[1], sys.argv[2].split(","), [int(s) for s in sys.argv[3].split(",")]
    for s in seeds:
        for name in names:
            r = run(name, s)
            open(out, "a").write(json.dumps(r) + "\n")
            print(f"{name} s{s} outer: default {r['outer_default']:.4f}  DLRL part {r['outer_dlrl_part']:.4f}  "
                  f"blend used {r['blend']['used']}  cpu {r['cpu']:.0f}s", flush=True)
