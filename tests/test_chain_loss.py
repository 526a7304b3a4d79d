"""ops/chain_loss.py (the training loss from the block operators in one node): the native CPU
route and the composed torch route against ``block_chain`` + ``masked_loss_sparse`` evaluated in
float64, float64 gradchecks of both routes, the two-thread split, and the model's fused path
against its unfused one."""
from __future__ import annotations

import os

import pytest
import torch

from dlrl_kernels import cpu
from dlrl_kernels.ops import block_chain as bc
from dlrl_kernels.ops import masked_residual_sparse as mrs
from dlrl_kernels.ops.chain_loss import chain_loss_op, fusable

NATIVE = cpu.status()[0]
needs_native = pytest.mark.skipif(not NATIVE, reason=f"native CPU kernels unavailable: {cpu.status()[1]}")


def _seed():
    return int.from_bytes(os.urandom(4), "little")


def _case(seed, m, n, d, I, dtype, extra, density=0.3, rank=None, cond=None):
    """Symmetric operators (optionally rank-deficient or ill-conditioned), weights in the model's
    layout (tall first, wide last, middles of both orientations), a sparse pattern with an empty
    row and an empty column."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(I, d, d, generator=g, dtype=torch.float64)
    if rank is not None:
        A[:, :, rank:] = 0
    N = A @ A.transpose(-1, -2) / d
    if cond is not None:
        Q, _ = torch.linalg.qr(torch.randn(I, d, d, generator=g, dtype=torch.float64))
        lam = torch.logspace(0, -float(torch.log10(torch.tensor(cond))), d, dtype=torch.float64)
        N = (Q * lam) @ Q.transpose(-1, -2)
    Ws = [torch.randn(m, d, generator=g, dtype=torch.float64)] + \
         [torch.randn(d, d, generator=g, dtype=torch.float64) for _ in range(I - 2)] + \
         [torch.randn(d, n, generator=g, dtype=torch.float64)]
    wide = [False] + [bool(k % 2) for k in range(I - 2)] + [True]
    ue = ve = None
    if extra:
        ue = torch.randn(m, extra, generator=g, dtype=torch.float64)
        ve = torch.randn(n, extra, generator=g, dtype=torch.float64)
    mask = torch.rand(m, n, generator=g) < density
    mask[m // 2] = False
    mask[:, n // 3] = False
    r, c = mask.nonzero(as_tuple=True)
    pat = mrs.sparse_pattern(r, c, (m, n))
    vals = torch.randn(r.numel(), generator=g, dtype=torch.float64)
    cast = (lambda t: None if t is None else t.to(dtype))
    return cast(N), [cast(W) for W in Ws], wide, cast(ue), cast(ve), pat, cast(vals)


def _pat(p):
    return p.crow, p.ccol, p.col_order, p.rows_by_col


def _truth(N, Ws, wide, ue, ve, act, pat, vals):
    """J and its gradients through block_chain + masked_loss_sparse (the unfused route), float64."""
    leaves = [t.detach().double().requires_grad_() for t in [N, *Ws] + ([ue, ve] if ue is not None else [])]
    I = len(Ws)
    U, Vt = bc.block_chain(leaves[0], leaves[1:1 + I], act, *((leaves[-2], leaves[-1]) if ue is not None else
                                                              (None, None)), wide=wide)
    J = mrs.loss_op(U, Vt, pat.rows, pat.cols, vals.double(), "reference", True, *_pat(pat))[0]
    J.backward()
    return [J.detach()] + [t.grad for t in leaves]


def _fused(N, Ws, wide, ue, ve, act, pat, vals, backend, scale=1.0):
    leaves = [t.detach().clone().requires_grad_() for t in [N, *Ws] + ([ue, ve] if ue is not None else [])]
    I = len(Ws)
    J = chain_loss_op(leaves[0], leaves[1:1 + I], wide, *((leaves[-2], leaves[-1]) if ue is not None else
                                                          (None, None)), act, pat.rows, pat.cols, vals, backend, True,
                      *_pat(pat))[0]
    (scale * J).backward()
    return [J.detach()] + [t.grad / scale for t in leaves]


def _rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


ROUTES = ["reference"] + (["cpu"] if NATIVE else [])


@pytest.mark.parametrize("backend", ROUTES)
@pytest.mark.parametrize("I,extra,act", [(5, 0, "relu"), (5, 2, "relu"), (3, 0, "none"), (2, 2, "relu"), (2, 0, "none")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_block_chain_and_sparse_loss(backend, I, extra, act, dtype):
    seed = _seed()
    d = 20 if I == 5 else 7  # a specialised rank and an odd one
    case = _case(seed, 37, 53, d, I, dtype, extra)
    truth = _truth(*case[:5], act, case[5], case[6])
    got = _fused(*case[:5], act, case[5], case[6], backend, scale=2.5)
    tol = 1e-11 if dtype == torch.float64 else 2e-5
    names = ["J", "N"] + [f"W{k}" for k in range(I)] + (["ue", "ve"] if extra else [])
    for name, a, b in zip(names, got, truth):
        assert _rel(a, b) < tol, f"{name}: rel err {_rel(a, b):.2e} (seed {seed}, {backend}, {dtype})"


@pytest.mark.parametrize("backend", ROUTES)
@pytest.mark.parametrize("kind", ["rank_deficient", "ill_conditioned"])
def test_rank_deficient_and_ill_conditioned_operators(backend, kind):
    seed = _seed()
    kw = {"rank": 3} if kind == "rank_deficient" else {"cond": 1e6}
    case = _case(seed, 41, 29, 20, 4, torch.float32, 2, **kw)
    truth = _truth(*case[:5], "relu", case[5], case[6])
    got = _fused(*case[:5], "relu", case[5], case[6], backend)
    for k, (a, b) in enumerate(zip(got, truth)):
        assert _rel(a, b) < 1e-4, f"output {k}: rel err {_rel(a, b):.2e} (seed {seed}, {backend}, {kind})"


@pytest.mark.parametrize("backend", ROUTES)
@pytest.mark.parametrize("extra", [0, 2])
def test_gradcheck_float64(backend, extra):
    base = _seed()
    for seed in range(base, base + 100):  # inputs whose ReLU inputs all keep away from the kink
        N, Ws, wide, ue, ve, pat, vals = _case(seed, 9, 11, 4, 4, torch.float64, extra, density=0.5)
        Ws = [0.5 * W for W in Ws]  # J of order 1-10, so that finite differences resolve it
        T = [(W.t() @ Nk) if w else (W @ Nk) for W, Nk, w in zip(Ws, N.unbind(0), wide)]
        if min(float(t.abs().min()) for t in T) > 1e-3:
            break
    leaves = [t.clone().requires_grad_() for t in [N, *Ws] + ([ue, ve] if extra else [])]

    def f(*ts):
        N, rest = ts[0], ts[1:]
        Wl = list(rest[:4])
        u, v = (rest[4], rest[5]) if extra else (None, None)
        return chain_loss_op(N, Wl, wide, u, v, "relu", pat.rows, pat.cols, vals, backend, True, *_pat(pat))[0]

    assert torch.autograd.gradcheck(f, tuple(leaves), raise_exception=False), f"seed {seed}"


@pytest.mark.parametrize("backend", ROUTES)
def test_without_grad_gives_the_same_loss_and_refuses_a_backward(backend):
    seed = _seed()
    N, Ws, wide, ue, ve, pat, vals = _case(seed, 23, 31, 20, 5, torch.float64, 2)
    J1 = chain_loss_op(N, Ws, wide, ue, ve, "relu", pat.rows, pat.cols, vals, backend, True, *_pat(pat))[0]
    out = chain_loss_op(N, Ws, wide, ue, ve, "relu", pat.rows, pat.cols, vals, backend, False, *_pat(pat))
    assert torch.allclose(out[0], J1, rtol=1e-13), f"seed {seed}"
    assert all(t.numel() == 0 for t in out[1:])
    Nl = N.clone().requires_grad_()
    J = chain_loss_op(Nl, Ws, wide, ue, ve, "relu", pat.rows, pat.cols, vals, backend, False, *_pat(pat))[0]
    with pytest.raises(RuntimeError, match="with_grad"):
        J.backward()


@needs_native
def test_two_thread_split_matches_one_thread(monkeypatch):
    seed = _seed()
    case = _case(seed, 61, 47, 20, 5, torch.float64, 2)
    one = _fused(*case[:5], "relu", case[5], case[6], "cpu")
    monkeypatch.setattr(cpu, "PARALLEL_MIN_NNZ", 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = _fused(*case[:5], "relu", case[5], case[6], "cpu")
    finally:
        torch.set_num_threads(threads)
    for k, (a, b) in enumerate(zip(two, one)):
        assert _rel(a, b) < 1e-13, f"output {k}: rel err {_rel(a, b):.2e} (seed {seed})"


@needs_native
def test_generic_build_for_a_large_rank():
    """d above cpu.MAX_SPECIAL_D runs the generic build (run-time d, heap scratch)."""
    seed = _seed()
    d = cpu.MAX_SPECIAL_D + 3
    case = _case(seed, 7, 5, d, 3, torch.float64, 0, density=0.6)
    truth = _truth(*case[:5], "relu", case[5], case[6])
    got = _fused(*case[:5], "relu", case[5], case[6], "cpu")
    for k, (a, b) in enumerate(zip(got, truth)):
        assert _rel(a, b) < 1e-11, f"output {k}: rel err {_rel(a, b):.2e} (seed {seed})"


def test_fusable_layouts():
    N = torch.zeros(3, 4, 4)
    Ws = [torch.zeros(9, 4), torch.zeros(4, 4), torch.zeros(4, 7)]
    assert fusable(N, Ws, [False, True, True], None)
    assert not fusable(N, Ws, [True, True, True], None)  # a wide first factor (tiny problems)
    assert not fusable(N, Ws, [False, True, False], None)
    assert not fusable(N, Ws, [False, True, True], torch.zeros(9, 9))  # too many extra columns


@pytest.mark.parametrize("kw", [dict(mode="published"), dict(mode="paper", bias=True, clip=(1.0, 5.0))])
def test_model_fused_step_matches_the_unfused_one(monkeypatch, kw):
    """The model's loss through chain_loss_sparse equals block_chain + masked_loss_sparse (loss and
    every parameter's gradient, float64)."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
    from dlrl.model import DLRL, as_observations

    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    m, n = 40, 30
    mask = torch.rand(m, n, generator=g) < 0.4
    r, c = mask.nonzero(as_tuple=True)
    v = torch.randint(1, 6, (r.numel(),), generator=g).double()
    for s in range(seed % 1000, seed % 1000 + 20):  # published mode can hit its documented NaN power
        model = DLRL((m, n), rank=6, seed=s, dtype="float64", **kw)
        try:
            model.fit(rows=r, cols=c, values=v, epochs=3, tune=False, progress=False)
            layout = model._chain_layout()  # (the state after the last step must evaluate too)
            break
        except FloatingPointError:
            continue
    obs = as_observations(rows=r, cols=c, values=v, shape=(m, n)).to("cpu", torch.float64).sorted()
    assert model._fusable(layout)
    res = {}
    for fused in ("1", "0"):
        monkeypatch.setenv("DLRL_FUSED", fused)
        model.zero_grad(set_to_none=True)
        J = model.loss(obs)
        J.backward()
        res[fused] = [J.detach()] + [p.grad.clone() for p in model.parameters() if p.requires_grad]
    for k, (a, b) in enumerate(zip(res["1"], res["0"])):
        assert _rel(a, b) < 1e-11, f"output {k}: rel err {_rel(a, b):.2e} (seed {seed}, {kw})"


@pytest.mark.parametrize("backend", ROUTES)
def test_registered_op_matches_the_eager_twin_and_passes_opcheck(backend):
    """``dlrl::chain_loss_sparse`` (what torch.compile traces) gives the eager twin's values and
    gradients, and torch.library.opcheck accepts its schema, fake and autograd registration."""
    seed = _seed()
    N, Ws, wide, ue, ve, pat, vals = _case(seed, 9, 11, 4, 4, torch.float64, 2)
    a = [t.clone().requires_grad_() for t in [N, *Ws, ue, ve]]
    b = [t.clone().requires_grad_() for t in [N, *Ws, ue, ve]]
    J = chain_loss_op(a[0], a[1:5], wide, a[5], a[6], "relu", pat.rows, pat.cols, vals, backend, True, *_pat(pat))[0]
    args = (b[0], b[1:5], wide, b[5], b[6], "relu", pat.rows, pat.cols, vals, backend, True, *_pat(pat))
    J2 = torch.ops.dlrl.chain_loss_sparse(*args)[0]
    torch.testing.assert_close(J, J2)
    J.backward()
    J2.backward()
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad, msg=lambda s: f"{s} (seed {seed})")
    torch.library.opcheck(torch.ops.dlrl.chain_loss_sparse.default, args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_backend_composed_route(dtype):
    """On a GPU the op runs its composed route around the Triton sparse loss (here under the
    interpreter, as CI checks every Triton kernel)."""
    from dlrl_kernels._dispatch import interpret_mode

    if not (interpret_mode() or torch.cuda.is_available()):
        pytest.skip("needs TRITON_INTERPRET=1 (conftest sets it) or a GPU")
    seed = _seed()
    case = _case(seed, 29, 41, 16, 4, dtype, 2)
    truth = _truth(*case[:5], "relu", case[5], case[6])
    got = _fused(*case[:5], "relu", case[5], case[6], "triton")
    tol = 1e-11 if dtype == torch.float64 else 2e-5
    for k, (a, b) in enumerate(zip(got, truth)):
        assert _rel(a, b) < tol, f"output {k}: rel err {_rel(a, b):.2e} (seed {seed}, {dtype})"


@pytest.mark.parametrize("backend", ROUTES)
@pytest.mark.parametrize("where", ["N0", "Nmid", "Nlast", "W0", "Wmid", "Wlast"])
def test_nan_propagates_to_the_loss(backend, where):
    """A NaN anywhere in the operators or weights makes J non-finite on every route (a ReLU that
    turned NaN into 0 would let a fit train on silently; the fit's non-finite check needs it)."""
    seed = _seed()
    N, Ws, wide, ue, ve, pat, vals = _case(seed, 17, 13, 20, 5, torch.float64, 2)
    N, Ws = N.clone(), [W.clone() for W in Ws]
    {"N0": lambda: N[0].__setitem__((1, 2), float("nan")), "Nmid": lambda: N[2].__setitem__((3, 3), float("nan")),
     "Nlast": lambda: N[-1].__setitem__((0, 5), float("nan")), "W0": lambda: Ws[0].__setitem__((4, 1), float("nan")),
     "Wmid": lambda: Ws[2].__setitem__((2, 2), float("nan")),
     "Wlast": lambda: Ws[-1].__setitem__((7, 3), float("nan"))}[where]()
    J = chain_loss_op(N, Ws, wide, ue, ve, "relu", pat.rows, pat.cols, vals, backend, True, *_pat(pat))[0]
    assert not bool(torch.isfinite(J)), f"J = {float(J)} (seed {seed}, {backend}, NaN in {where})"


@pytest.mark.parametrize("backend", ROUTES)
def test_opcheck_without_grad(backend):
    N, Ws, wide, ue, ve, pat, vals = _case(_seed(), 9, 11, 4, 4, torch.float64, 2)
    torch.library.opcheck(torch.ops.dlrl.chain_loss_sparse.default,
                          (N, Ws, wide, ue, ve, "relu", pat.rows, pat.cols, vals, backend, False, *_pat(pat)))


@needs_native
def test_native_route_refuses_bad_input():
    """The kernels read raw pointers: shapes and dtypes are checked (naming the argument) and
    int32 indices are widened, never read as int64."""
    N, Ws, wide, ue, ve, pat, vals = _case(_seed(), 12, 10, 20, 3, torch.float64, 2)
    ref = cpu.chain_loss(N, Ws, wide, ue, ve, True, pat.crow, pat.cols, vals, True)
    got = cpu.chain_loss(N, Ws, wide, ue, ve, True, pat.crow.int(), pat.cols.int(), vals, True)
    assert torch.equal(ref[0], got[0]) and torch.equal(ref[2], got[2])
    with pytest.raises(TypeError, match=r"Ws\[0\]"):
        cpu.chain_loss(N, [Ws[0].float(), *Ws[1:]], wide, ue, ve, True, pat.crow, pat.cols, vals, True)
    with pytest.raises(ValueError, match="ue/ve"):
        cpu.chain_loss(N, Ws, wide, ue, ve[:, :1], True, pat.crow, pat.cols, vals, True)
    with pytest.raises(ValueError, match="crow"):
        cpu.chain_loss(N, Ws, wide, ue, ve, True, pat.crow[:-1], pat.cols, vals, True)
    with pytest.raises(ValueError, match="cols/values"):
        cpu.chain_loss(N, Ws, wide, ue, ve, True, pat.crow, pat.cols[:-1], vals, True)
    with pytest.raises(ValueError, match=r"Ws\[1\]"):
        cpu.chain_loss(N, [Ws[0], Ws[1][:, :5], Ws[2]], wide, ue, ve, True, pat.crow, pat.cols, vals, True)
