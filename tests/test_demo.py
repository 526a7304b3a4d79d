"""`dlrl demo --quick` (tiny sizes, a smoke test of every part's outputs) and bench/update_readme.py."""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from dlrl.cli import bias_only_predictor, main

ROOT = Path(__file__).resolve().parents[1]


def _update_readme():
    spec = importlib.util.spec_from_file_location("update_readme", ROOT / "bench" / "update_readme.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_demo_quick_writes_json_table_and_pictures(tmp_path, capsys):
    out = tmp_path / "demo"
    copy = tmp_path / "copy.json"
    md = tmp_path / "frag.md"
    rc = main(["demo", "--quick", "--quiet", "--threads", "1", "--out", str(out), "--json-copy", str(copy),
               "--md-copy", str(md)])
    assert rc == 0
    rep = json.loads((out / "demo.json").read_text())
    assert json.loads(copy.read_text()) == rep
    assert rep["quick"] is True and rep["machine"]["cores"] >= 1 and rep["machine"]["cpu"]
    assert {"dlrl", "torch", "python"} <= set(rep["versions"])
    parts = {p["part"]: p for p in rep["parts"]}
    assert set(parts) == {"synthetic", "image", "ml100k"} and "skipped" in parts["ml100k"]
    for name in ("synthetic", "image"):
        p = parts[name]
        assert "Soft-Impute" in p["baseline"] and p["dlrl_seconds"] > 0 and p["seconds"] >= p["dlrl_seconds"]
        assert torch.isfinite(torch.tensor([p["dlrl"], p["baseline"]["Soft-Impute"]])).all()
    assert 0 < parts["synthetic"]["baseline"]["Soft-Impute"] < 1  # RSRE of a real completion
    img = parts["image"]  # the inpainting record: every member with its validation score
    assert img["dlrl_inpaint"]["models_run"] >= 1 and "history" not in img["dlrl_inpaint"]
    assert all(math.isfinite(mb["val_psnr"]) for mb in img["dlrl_inpaint"]["members"])
    assert rep["startup_seconds"] is None or rep["startup_seconds"] >= 0
    for fig in ("synthetic_loss.png", "astronaut_side_by_side.png", "astronaut_loss.png", "astronaut_dlrl.png"):
        assert (out / fig).stat().st_size > 1000, fig
    table = (out / "demo.md").read_text()
    assert table == md.read_text() and table.startswith("| part |") and "Soft-Impute" in table
    printed = capsys.readouterr().out
    assert "| synthetic |" in printed
    # the copies are outputs: not replaced without --force
    assert main(["demo", "--quick", "--quiet", "--out", str(out), "--json-copy", str(copy)]) == 2
    assert "--json-copy" in capsys.readouterr().err


def test_demo_help_explains():
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0


def test_bias_only_predictor_recovers_pure_biases():
    from dlrl.datasets import RatingData

    g = torch.Generator().manual_seed(0)
    m, n = 60, 40
    bu, bi = torch.randn(m, generator=g, dtype=torch.float64) * 0.5, torch.randn(n, generator=g, dtype=torch.float64) * 0.5
    idx = torch.randperm(m * n, generator=g)[:1500]
    r, c = idx // n, idx % n
    v = 3.0 + bu[r] + bi[c]
    data = RatingData(rows=r, cols=c, values=v, n_users=m, n_items=n, user_ids=None, item_ids=None,
                      scale=(0.0, 6.0), name="biases")
    predict, lam = bias_only_predictor(data)
    err = (predict(r, c) - v).pow(2).mean().sqrt()
    assert lam in (1.0, 3.0, 10.0, 25.0) and float(err) < 0.1


def test_update_readme_regenerates_and_checks(tmp_path):
    ur = _update_readme()
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "a.md").write_text("| x |\n|---|\n| 1 |\n")
    (tmp_path / "b.md").write_text("second")
    readme = tmp_path / "README.md"
    readme.write_text("# T\nintro\n<!-- BEGIN generated: bench/results/a.md -->\nold\n"
                      "<!-- END generated: bench/results/a.md -->\nmiddle\n"
                      "<!-- BEGIN generated: b.md -->\n<!-- END generated: b.md -->\nend\n")
    args = ["--readme", str(readme), "--root", str(tmp_path)]
    assert ur.main(args + ["--check"]) == 1
    assert ur.main(args) == 0
    text = readme.read_text()
    assert "| 1 |" in text and "old" not in text and "second\n" in text and text.endswith("end\n")
    assert text.startswith("# T\nintro\n") and "middle" in text
    assert ur.main(args + ["--check"]) == 0
    assert ur.main(args) == 0 and readme.read_text() == text  # idempotent
    (tmp_path / "b.md").write_text("changed")
    assert ur.main(args + ["--check"]) == 1
    readme.write_text("<!-- BEGIN generated: a.md -->\n")
    assert ur.main(args) == 2
    readme.write_text("<!-- BEGIN generated: nothere.md -->\n<!-- END generated: nothere.md -->\n")
    assert ur.main(args + ["--check"]) == 2


def test_readme_generated_sections_are_current():
    ur = _update_readme()
    assert ur.main(["--check"]) == 0, "README.md is stale: run python bench/update_readme.py"


def test_demo_ml_part_on_a_small_ratings_folder(tmp_path):
    """The MovieLens part end to end on a made-up u.data (low rank + biases): the DLRL fits, the
    baselines, the RMSE-vs-epoch figure and the JSON record of every choice."""
    g = torch.Generator().manual_seed(0)
    m, n = 60, 50
    u, v = torch.randn(m, 2, generator=g), torch.randn(n, 2, generator=g)
    full = (3.2 + 0.5 * torch.randn(m, 1, generator=g) + 0.4 * torch.randn(1, n, generator=g) + 0.5 * u @ v.T)
    keep = torch.rand(m, n, generator=g) < 0.5
    rows, cols = keep.nonzero(as_tuple=True)
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    lines = [f"{int(r) + 1}\t{int(c) + 1}\t{int(full[r, c].clamp(1, 5).round())}\t0" for r, c in zip(rows, cols)]
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    import argparse

    from dlrl.cli import _demo_ml100k

    out = tmp_path / "demo"
    out.mkdir()
    ml = _demo_ml100k(argparse.Namespace(quiet=True, seed=0, threads=1), out, folder)
    ml = json.loads(json.dumps(ml))  # what demo.json holds
    assert "bias-only" in ml["baseline"] and math.isfinite(ml["dlrl"]) and 0 < ml["dlrl"] < 2
    assert ml["dlrl_config"]["blocks"] >= 2 and len(ml["dlrl_members"]) == ml["dlrl_config"]["models"]
    assert all(mb["val_rmse"] > 0 and mb["epochs_run"] >= 1 for mb in ml["dlrl_members"])
    assert (out / "ml100k_rmse.png").stat().st_size > 1000
