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
    assert res["epochs"] == 12 and res["backend"] in ("reference", "cpu") and res["mode"] == "paper"  # "cpu": the native CPU kernels
    assert np.isfinite(res["test_rmse"]) and 0 < res["test_rmse"] < 4
    assert png.stat().st_size > 5000 and ck.exists()
    printed = capsys.readouterr().out
    assert "test RMSE" in printed and "fit" in printed and f"backend {res['backend']}" in printed

    rc = main(["fit", str(data), "--split", "random", "--epochs", "20", "--rank", "4", "--quiet",
               "--val-fraction", "0.1", "--resume", str(ck), "--json", str(out), "--force"])
    assert rc == 0
    assert json.loads(out.read_text())["epochs"] == 20  # 12 done before + 8 more


def test_fit_reports_bad_input_as_an_error(tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\t1\t4\n2\t1\tfive\n")
    rc = main(["fit", str(bad), "--split", "random", "--epochs", "2", "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "line 2" in err
    assert main(["fit", str(tmp_path / "missing.tsv")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_inpaint_writes_image_and_figure(tmp_path, capsys):
    from PIL import Image

    yy, xx = np.mgrid[0:24, 0:20]
    img = np.stack([(xx * 12) % 256, (yy * 10) % 256, ((xx + yy) * 6) % 256], -1).astype(np.uint8)
    src = tmp_path / "img.png"
    Image.fromarray(img).save(src)
    out = tmp_path / "rec.png"
    rc = main(["inpaint", str(src), "--missing", "0.3", "--epochs", "20", "--rank", "4", "--quiet", "--out", str(out)])
    assert rc == 0
    assert main(["inpaint", str(src), "--out", str(src), "--epochs", "2", "--quiet"]) == 2  # never over the input
    assert rc == 0
    assert Image.open(out).size == (20, 24)
    assert (tmp_path / "rec_side_by_side.png").exists()
    assert "PSNR over the missing pixels" in capsys.readouterr().out


def test_module_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "dlrl", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "fit" in proc.stdout and "inpaint" in proc.stdout


def test_fast_exit_keeps_status_and_flushes_output(tmp_path, gen):
    """``dlrl`` ends with os._exit after main (see cli.run): the exit status must be main's and
    everything printed — to a pipe, so block-buffered — must arrive."""
    data = tmp_path / "r.txt"
    r = torch.randint(0, 20, (400,), generator=gen)
    c = torch.randint(0, 15, (400,), generator=gen)
    data.write_text("".join(f"{u} {i} {1 + (u + i) % 5}\n" for u, i in zip(r.tolist(), c.tolist())))
    ok = subprocess.run([sys.executable, "-m", "dlrl", "fit", str(data), "--split", "random", "--rank", "3",
                         "--epochs", "3", "--no-tune", "--quiet"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "test RMSE" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "dlrl", "fit", str(tmp_path / "missing.txt")], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "RATINGS" in bad.stderr, (bad.returncode, bad.stderr[-500:])


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["fit", "--help"], ["demo", "--help"]])
def test_help_and_version_do_not_import_torch(argv):
    """--help and --version answer at once: importing torch (2–3 s here) is left to the commands."""
    code = ("import sys\nfrom dlrl.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n" % (argv,))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1000:]
    assert out.stdout.strip().endswith("NO-TORCH"), out.stdout[-500:]


def test_outputs_are_never_inputs_and_never_silently_replaced(tmp_path, gen, capsys):
    data = _ratings_file(tmp_path / "r.tsv", gen)
    before = data.read_bytes()
    fast = ["--split", "random", "--epochs", "2", "--rank", "3", "--quiet"]
    for opt in ("--save", "--json", "--plot"):
        assert main(["fit", str(data), opt, str(data)] + fast) == 2
        err = capsys.readouterr().err
        assert opt in err and "input" in err and len(err.strip().splitlines()) == 1
        assert data.read_bytes() == before
    old = tmp_path / "old.json"
    old.write_text("keep me")
    assert main(["fit", str(data), "--json", str(old)] + fast) == 2
    assert "--force" in capsys.readouterr().err and old.read_text() == "keep me"
    assert main(["fit", str(data), "--json", str(old), "--force"] + fast) == 0
    assert "test_rmse" in json.loads(old.read_text())
    capsys.readouterr()
    # an unwritable output is reported before any training
    assert main(["fit", str(data), "--save", str(tmp_path / "no" / "m.pt")] + fast) == 2
    out = capsys.readouterr()
    assert "--save" in out.err and "test RMSE" not in out.out


def test_ctrl_c_saves_checkpoint_and_json_exit_130(tmp_path, gen):
    import os
    import signal
    import time

    from dlrl import DLRL

    data = _ratings_file(tmp_path / "r.tsv", gen)
    ck, js = tmp_path / "m.pt", tmp_path / "r.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "dlrl", "fit", str(data), "--split", "random", "--rank", "3",
                             "--epochs", "1000000", "--patience", "1000000", "--quiet", "--save", str(ck),
                             "--json", str(js)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            # as from a terminal: a job started in the background of a
                            # non-interactive shell (`nohup make test &`) inherits SIGINT ignored,
                            # and Python then installs no KeyboardInterrupt handler at all
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 90
        while not ck.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)  # the first periodic checkpoint (after 50 epochs)
        assert ck.exists(), proc.communicate(timeout=5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "interrupted" in err and len(err.strip().splitlines()) == 1, err
    res = json.loads(js.read_text())
    assert res["interrupted"] is True and res["epochs"] >= 50
    model = DLRL.load(ck)
    assert len(model.history) >= 50 and not list(tmp_path.glob(".*.tmp"))


def test_version_and_bad_device(tmp_path, gen, capsys):
    import dlrl

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and dlrl.__version__ in capsys.readouterr().out
    data = _ratings_file(tmp_path / "r.tsv", gen)
    if not torch.cuda.is_available():
        assert main(["fit", str(data), "--device", "cuda", "--quiet"]) == 2
        assert "--device" in capsys.readouterr().err


def test_observed_for_display_draws_missing_pixels_in_neutral_grey():
    import torch

    from dlrl.cli import observed_for_display

    img = torch.rand(6, 5, 3, dtype=torch.float64) * 255
    obs = torch.rand(6, 5) > 0.4
    shown = observed_for_display(img, obs)
    assert torch.equal(shown[~obs], torch.full(((~obs).sum().item(), 3), 128.0, dtype=torch.float64))
    assert torch.equal(shown[obs], img[obs]) and torch.equal(img, img.clone())  # input untouched
    per_channel = obs[:, :, None].expand(6, 5, 3).clone()
    per_channel[0, 0, 1] = False  # one channel missing: the whole pixel is shown grey
    assert torch.equal(observed_for_display(img, per_channel)[0, 0], torch.full((3,), 128.0, dtype=torch.float64))
