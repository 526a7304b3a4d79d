"""bench/bench_published_code.py's plumbing, with a stand-in for the published code (which is
not part of this project): the data file it writes, the driver it runs in a fresh process, the
JSON, and its errors. The real side-by-side run is bench/results/published_code_side_by_side.json."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import bench_published_code as bpc  # noqa: E402

#: a stand-in with the published code's interface: the reader's '::' format and a model whose
#: train() sleeps a little and whose predict() is the training mean
STAND_IN = {
    "data_preprocessor.py": '''
import torch
def read_rating(path, ratio):
    lines = open(path + "/ratings.txt").read().splitlines()
    rows = [tuple(int(x) for x in l.split("::")[:3]) for l in lines]
    m, n = max(r[0] for r in rows), max(r[1] for r in rows)
    R, I = torch.zeros(m, n), torch.zeros(m, n)
    for u, i, r in rows:
        R[u - 1, i - 1], I[u - 1, i - 1] = r, 1
    cut = int(len(rows) * ratio)
    tr, te = torch.zeros(m, n), torch.zeros(m, n)
    for k, (u, i, _) in enumerate(rows):
        (tr if k < cut else te)[u - 1, i - 1] = 1
    return R, I, tr, te
''',
    "DLRL.py": '''
import time, torch
class DLRL:
    def __init__(self, M, I, I_test, d, p, maxiter, lr, eta, scale, patience, decay, verbose):
        self.M, self.I = M, I
        torch.optim.lr_scheduler.ReduceLROnPlateau(torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))]),
                                                   verbose=True)  # the argument the shim drops
    def train(self):
        time.sleep(0.05)
    def predict(self):
        return torch.full_like(self.M, float((self.M * self.I).sum() / self.I.sum()))
''',
    "shrink.py": "", "util.py": ""}


def test_prepare_writes_the_published_reader_format(tmp_path):
    ml = tmp_path / "ml"
    ml.mkdir()
    (ml / "u.data").write_text("3\t5\t4\t881250949\n1\t2\t1\t891717742\n")
    assert bpc.prepare(ml, tmp_path / "work") == 2
    assert (tmp_path / "work" / "data" / "ml_100k" / "ratings.txt").read_text() == \
        "3::5::4::881250949\n1::2::1::891717742\n"
    with pytest.raises(SystemExit, match="u.data"):
        bpc.prepare(tmp_path / "nowhere", tmp_path / "work2")


def test_published_driver_runs_a_stand_in(tmp_path):
    pub = tmp_path / "pub"
    pub.mkdir()
    for name, text in STAND_IN.items():
        (pub / name).write_text(text)
    ml = tmp_path / "ml"
    ml.mkdir()
    (ml / "u.data").write_text("".join(f"{1 + k % 7}\t{1 + (3 * k) % 11}\t{1 + k % 5}\t0\n" for k in range(60)))
    work = tmp_path / "work"
    bpc.prepare(ml, work)
    res = bpc.run_published(pub, work)
    assert res["train_seconds"] >= 0.05 and res["train_cpu"] >= 0 and 0 < res["test_rmse"] < 4


def test_bad_arguments_name_the_argument(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_published_code.py"), "--published",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--published" in proc.stderr and "DLRL.py" in proc.stderr


def test_markdown_is_generated_from_the_results():
    doc = {"median": {"published code": {"train_seconds": 40.0, "train_cpu": 39.5, "test_rmse": 0.9385},
                      "dlrl mode=published": {"train_seconds": 0.5, "train_cpu": 0.49, "test_rmse": 0.9414}},
           "rounds": 3, "machine": "CPU X", "torch": "2.13.0", "date": "2026-12-01", "ratio_train_seconds": 80.0,
           "ratio_train_cpu": 80.6}
    text = bpc.markdown(doc, "r.json")
    assert "from r.json" in text and "| published code | 40.000 | 39.500 | 0.9385 |" in text and "**80×**" in text
