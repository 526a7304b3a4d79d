"""The command line: help, fit on a made-up ratings file (JSON, plot, checkpoint, resume), inpaint."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from dlrl.cli import build_parser, main


def _ratings_file(path, gen, m=40, n=30, nnz=700):
    U = torch.rand(m, 3, generator=gen)
    V = torch.rand(3, n, generator=gen)
    R = (1 + 4 * (U @ V) / 3).clamp(1, 5).round()
    idx = torch.randperm(m * n, generator=gen)[:nnz]
    lines = [f"u{int(i) // n}\ti{int(i) % n}\t{int(R.view(-1)[i])}" for i in idx]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("cmd", [[], ["fit"], ["inpaint"], ["demo"]])
def test_help_explains_every_option(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(cmd + ["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: dlrl" in out
    if cmd:
        assert "(default:" in out


def test_fit_writes_json_plot_and_resumable_checkpoint(tmp_path, gen, capsys):
    data = _ratings_file(tmp_path / "r.tsv", gen)
    out, png, ck = tmp_path / "r.json", tmp_path / "loss.png", tmp_path / "m.pt"
    rc = main(["fit", str(data), "--split", "random", "--epochs", "12", "--rank", "4", "--quiet",
               "--val-fraction", "0.1", "--json", str(out), "--plot", str(png), "--save", str(ck)])
    assert rc == 0
    res = json.loads(out.read_text())
    for key in ("test_rmse", "fit_seconds", "epochs", "backend", "mode"):
        assert key in res, key
    assert res["epochs"] == 12 and res["backend"] == "reference" and res["mode"] == "paper"
    assert np.isfinite(res["test_rmse"]) and 0 < res["test_rmse"] < 4
    assert png.stat().st_size > 5000 and ck.exists()
    printed = capsys.readouterr().out
    assert "test RMSE" in printed and "fit" in printed and "backend reference" in printed

    rc = main(["fit", str(data), "--split", "random", "--epochs", "20", "--rank", "4", "--quiet",
               "--val-fraction", "0.1", "--resume", str(ck), "--json", str(out)])
    assert rc == 0
    assert json.loads(out.read_text())["epochs"] == 20  # 12 done before + 8 more


def test_fit_reports_bad_input_as_an_error(tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\t1\t4\n2\t1\tfive\n")
    rc = main(["fit", str(bad), "--split", "random", "--epochs", "2", "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "line 2" in err
    with pytest.raises(SystemExit, match="no such file"):
        main(["fit", str(tmp_path / "missing.tsv")])


def test_inpaint_writes_image_and_figure(tmp_path, capsys):
    from PIL import Image

    yy, xx = np.mgrid[0:24, 0:20]
    img = np.stack([(xx * 12) % 256, (yy * 10) % 256, ((xx + yy) * 6) % 256], -1).astype(np.uint8)
    src = tmp_path / "img.png"
    Image.fromarray(img).save(src)
    out = tmp_path / "rec.png"
    rc = main(["inpaint", str(src), "--missing", "0.3", "--epochs", "20", "--rank", "4", "--quiet", "--out", str(out)])
    assert rc == 0
    assert Image.open(out).size == (20, 24)
    assert (tmp_path / "rec_side_by_side.png").exists()
    assert "PSNR over the missing pixels" in capsys.readouterr().out


def test_module_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "dlrl", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "fit" in proc.stdout and "inpaint" in proc.stdout
