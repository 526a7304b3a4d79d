"""dlrl.optim.FusedAdam against torch.optim.Adam(fused=True): the same kernel, so bit-equal
updates, and state_dicts that load into each other (checkpoints stay resumable by either)."""
from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

from dlrl.optim import FusedAdam


def _seed():
    # fresh every run; DLRL_TEST_SEED replays one (the seed is in every assertion message)
    return int(os.environ.get("DLRL_TEST_SEED", int.from_bytes(os.urandom(4), "little")))


def _params(seed, dtype):
    g = torch.Generator().manual_seed(seed)
    shapes = [(7, 3), (3, 3), (3, 11), (), (7,)]
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes], g


def _grads(ps, g, skip=None):
    for i, p in enumerate(ps):
        p.grad = None if i == skip else torch.randn(p.shape, generator=g, dtype=p.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bit_equal_to_torch_fused_adam(dtype):
    seed = _seed()
    ours, g1 = _params(seed, dtype)
    theirs, g2 = _params(seed, dtype)
    lr1 = torch.tensor(0.01, dtype=torch.float64)
    lr2 = torch.tensor(0.01, dtype=torch.float64)
    a = FusedAdam(ours, lr=lr1, betas=(0.9, 0.92), weight_decay=0.15)
    b = torch.optim.Adam(theirs, lr=lr2, betas=(0.9, 0.92), weight_decay=0.15, fused=True)
    for step in range(12):
        _grads(ours, g1, skip=3 if step < 2 else None)  # a param without a gradient is left alone
        _grads(theirs, g2, skip=3 if step < 2 else None)
        a.step()
        b.step()
        if step == 6:  # the caller lowers the lr in place (the plateau schedule)
            lr1.mul_(0.1)
            lr2.mul_(0.1)
        for p, q in zip(ours, theirs):
            assert torch.equal(p, q), f"step {step}: differs from torch.optim.Adam (seed {seed})"
    for p, q in zip(ours, theirs):  # the step counts too (ours are views of one vector): torch's layout
        sa, sb = a.state[p]["step"], b.state[q]["step"]
        assert sa.shape == sb.shape == () and sa.dtype == sb.dtype and torch.equal(sa, sb), (sa, sb, seed)
    a.zero_grad()
    assert all(p.grad is None for p in ours)


def test_state_dicts_load_both_ways():
    seed = _seed()
    ours, g = _params(seed, torch.float32)
    a = FusedAdam(ours, lr=torch.tensor(0.02, dtype=torch.float64), betas=(0.8, 0.9), weight_decay=0.1)
    for _ in range(3):
        _grads(ours, g)
        a.step()
    sd = copy.deepcopy(a.state_dict())  # as a checkpoint round trip (state_dicts share tensors)
    # into torch's optimiser, then one more step on both: the same parameters
    twin = [p.detach().clone().requires_grad_() for p in ours]
    b = torch.optim.Adam(twin, lr=torch.tensor(0.5, dtype=torch.float64), fused=True)
    b.load_state_dict(sd)
    assert float(b.param_groups[0]["lr"]) == pytest.approx(0.02) and b.param_groups[0]["betas"] == (0.8, 0.9)
    g2 = torch.Generator().manual_seed(seed + 1)
    _grads(ours, g2)
    g2 = torch.Generator().manual_seed(seed + 1)
    _grads(twin, g2)
    a.step()
    b.step()
    for p, q in zip(ours, twin):
        assert torch.equal(p, q), f"seed {seed}"
    # and torch's state_dict back into ours
    c = FusedAdam([p.detach().clone().requires_grad_() for p in twin], lr=1.0)
    c.load_state_dict(copy.deepcopy(b.state_dict()))
    assert float(c.lr) == pytest.approx(0.02) and c.param_groups[0]["weight_decay"] == 0.1
    for p in c.param_groups[0]["params"]:
        assert int(c.state[p]["step"]) == 4


def test_wrong_state_is_refused():
    ps, _ = _params(0, torch.float32)
    a = FusedAdam(ps, lr=0.01)
    with pytest.raises(ValueError, match="parameters per group"):
        a.load_state_dict({"state": {}, "param_groups": [{"params": [0, 1]}]})


def test_a_fit_never_imports_dynamo(tmp_path):
    """A short fit in a fresh process must not import torch._dynamo (~2 s of a `dlrl fit`):
    neither the optimiser nor the first call of a registered op."""
    code = ("import sys, torch\n"
            "from dlrl.model import DLRL\n"
            "g = torch.Generator().manual_seed(0)\n"
            "r = torch.randint(0, 30, (300,), generator=g); c = torch.randint(0, 20, (300,), generator=g)\n"
            "v = torch.rand(300, generator=g) * 4 + 1\n"
            "for mode in ('published', 'paper'):\n"
            "    DLRL((30, 20), rank=4, blocks=3, mode=mode, bias=mode == 'paper').fit(rows=r, cols=c, values=v,"
            " epochs=3, progress=False, tune=False)\n"
            "print('dynamo' if 'torch._dynamo' in sys.modules else 'clean')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("clean"), "torch._dynamo was imported by a plain fit"


def test_loading_a_state_drops_the_cached_kernel_lists():
    """step() caches the kernel's lists (params, moments, step counts); load_state_dict replaces
    the state, so a later step must use the loaded moments, as torch's Adam does."""
    seed = _seed()
    ours, g = _params(seed, torch.float64)
    a = FusedAdam(ours, lr=torch.tensor(0.02, dtype=torch.float64))
    _grads(ours, g)
    a.step()
    sd, snap = copy.deepcopy(a.state_dict()), [p.detach().clone() for p in ours]
    for _ in range(3):  # the lists are cached and the state moves on
        _grads(ours, g)
        a.step()
    with torch.no_grad():
        for p, s in zip(ours, snap):
            p.copy_(s)
    a.load_state_dict(sd)
    twin = [s.clone().requires_grad_() for s in snap]
    b = torch.optim.Adam(twin, lr=torch.tensor(0.02, dtype=torch.float64), fused=True)
    b.load_state_dict(copy.deepcopy(sd))
    for step in range(2):
        _grads(ours, torch.Generator().manual_seed(seed + 10 + step))
        _grads(twin, torch.Generator().manual_seed(seed + 10 + step))
        a.step()
        b.step()
        for p, q in zip(ours, twin):
            assert torch.equal(p, q), f"step {step} after load_state_dict (seed {seed})"


def _losses(seed, dtype):
    """A loss curve with every case the schedule distinguishes: real improvements, improvements
    below the 1e-4 threshold, a J exactly on it, flat stretches, NaN and ±inf."""
    g = torch.Generator().manual_seed(seed)
    J, out = 100.0, []
    for k in range(300):
        r = float(torch.rand((), generator=g))
        if r < 0.3:
            J *= 1 - 0.05 * float(torch.rand((), generator=g))
        elif r < 0.45:
            J *= 1 - 5e-5  # better, but not by the threshold
        elif r < 0.5:
            J *= 1 - 1e-4  # on the threshold (J < best·(1 − 1e-4) is decided by rounding)
        elif r < 0.53:
            out.append(float(("nan", "inf", "-inf")[k % 3]))
            continue
        out.append(J)
    return torch.tensor(out, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lr, factor, patience, min_lr", [(1e-2, 0.5, 3, 1e-5), (2e-8, 0.5, 0, 1e-12),
                                                         (1e-3, 0.1, 5, 1e-6), (2e-2, 0.9999, 1, 1.9998e-2)])
def test_native_plateau_step_makes_the_torch_schedules_decisions(dtype, lr, factor, patience, min_lr):
    """The C schedule (dlrl_kernels.cpu.plateau_step, the CPU's default) and its torch twin give
    bit-equal state after every epoch: lr (2e-8·0.5 puts lr − lr·factor exactly on the 1e-8
    rule), best, the bad-epoch count, the stop flag and Adam's lr."""
    from dlrl import model as M
    from dlrl_kernels import _dispatch

    if not _dispatch.native_status()[0]:
        pytest.skip("native CPU kernels unavailable")
    seed = _seed()
    a = M._Plateau(lr, factor, patience, min_lr, "cpu", native=True)
    b = M._Plateau(lr, factor, patience, min_lr, "cpu", native=False)
    la, lb = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    seen, attempts = set(), 0
    for k, J in enumerate(_losses(seed, dtype)):
        before = b.best.clone()
        a.step(J, la)
        b.step(J, lb)
        attempts += int(b.bad) == 0 and torch.equal(before, b.best)  # patience ran out: a reduction tried
        for name in ("lr", "best", "bad", "stopped"):
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == y.dtype and torch.equal(x, y), f"epoch {k} {name}: {x} vs {y} (seed {seed})"
        assert torch.equal(la, lb), f"epoch {k} adam lr: {la} vs {lb} (seed {seed})"
        seen.add((float(b.lr), bool(b.stopped)))
    assert attempts > 0, f"no reduction was ever tried (seed {seed}): the test would not test"
    # (2e-8: every reduction is refused by the 1e-8 rule, the point of that case)
    assert len(seen) > 1 or lr == 2e-8, f"the schedule never changed the lr (seed {seed})"
    sd = a.state_dict()
    c = M._Plateau(1.0, factor, patience, min_lr, "cpu", native=True)
    c.load_state_dict(sd)
    c.step(torch.tensor(0.5, dtype=dtype))
    assert torch.equal(sd["best"], a.best), "a loaded schedule's steps must not write into the state dict"


def test_reference_backend_keeps_the_plateau_schedule_in_torch():
    """backend='reference' runs no native code for the schedule either (the default CPU backend does)."""
    from dlrl import DLRL

    g = torch.Generator().manual_seed(_seed())
    r, c = torch.randint(0, 9, (40,), generator=g), torch.randint(0, 7, (40,), generator=g)
    keep = torch.unique(r * 7 + c)
    r, c = keep // 7, keep % 7
    v = torch.rand(r.numel(), generator=g) * 4 + 1
    for backend, native in (("reference", False), ("auto", None)):
        model = DLRL((9, 7), rank=3, backend=backend)
        model.fit(rows=r, cols=c, values=v, epochs=2, progress=False, tune=False)
        if native is None:
            from dlrl_kernels import _dispatch

            native = model.backend_used == "cpu" and _dispatch.native_status()[0]
        assert model._sched.native is native, (backend, model.backend_used)
