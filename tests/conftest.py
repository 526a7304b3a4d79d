"""Shared fixtures: fresh random inputs every run (the seed is printed on failure)."""
import os

# Run the Triton kernels on CPU tensors through Triton's interpreter (how CI checks them
# against the references, there is no GPU there). It must be set before anything imports
# triton / dlrl_kernels._triton: @triton.jit decides interpreter vs compiler when a kernel is
# decorated, and _triton.INTERPRET / ON_GPU are read at import. setdefault: a GPU run can
# export TRITON_INTERPRET=0 to test the compiled kernels instead.
os.environ.setdefault("TRITON_INTERPRET", "1")

import secrets  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def gen(request):
    seed = int(os.environ.get("DLRL_TEST_SEED", secrets.randbelow(2**31)))
    request.node.user_properties.append(("seed", seed))
    g = torch.Generator().manual_seed(seed)
    return g


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for k, v in item.user_properties:
            if k == "seed":
                rep.sections.append(("seed", f"rerun with DLRL_TEST_SEED={v}"))


def rand_spd(gen, d, cond=10.0, rank=None, batch=(2,), dtype=torch.float64, repeated=0):
    """Q diag(λ) Qᵀ with log-spaced λ in [1/cond, 1], optional zero tail and repeated top."""
    A = torch.randn(*batch, d, d, generator=gen, dtype=torch.float64)
    Q, _ = torch.linalg.qr(A)
    lam = torch.logspace(0, -torch.log10(torch.tensor(float(cond))).item(), d, dtype=torch.float64)
    lam = lam * (0.5 + torch.rand(1, generator=gen, dtype=torch.float64))  # random scale
    if repeated:
        lam[:repeated] = lam[0]
    if rank is not None:
        lam[rank:] = 0
    return ((Q * lam) @ Q.transpose(-1, -2)).to(dtype)


def ref_power(S, a, rtol=1e-10):
    """Independent float64 reference: eigh, eigenvalues ≤ rtol·λmax count as null space."""
    S = S.double()
    lam, Q = torch.linalg.eigh(0.5 * (S + S.transpose(-1, -2)))
    keep = lam > rtol * lam[..., -1:].clamp_min(0)
    f = torch.where(keep, torch.where(keep, lam, torch.ones_like(lam)) ** a, torch.zeros_like(lam))
    return (Q * f[..., None, :]) @ Q.transpose(-1, -2)


def rel_err(x, ref):
    x, ref = x.double(), ref.double()
    return (torch.linalg.norm((x - ref).reshape(-1)) / torch.linalg.norm(ref.reshape(-1)).clamp_min(1e-300)).item()


def chain(gen, dims, dtype=torch.float64, requires_grad=False):
    return [
        torch.randn(dims[k], dims[k + 1], generator=gen, dtype=dtype).requires_grad_(requires_grad)
        for k in range(len(dims) - 1)
    ]


def ref_block(Y, W, p, normalize=None):
    """Independent reference: eigh in float64, transpose when wide (SPEC §2 step 5)."""
    Y, W = Y.double().cpu(), W.double().cpu()
    wide = Y.shape[-2] < Y.shape[-1]
    if wide:
        Y, W = Y.transpose(-1, -2), W.transpose(-1, -2)
    P = ref_power(Y.transpose(-1, -2) @ Y, (2 - p) / 2, rtol=1e-12)
    if normalize == "trace":
        P = P / (P.diagonal(dim1=-2, dim2=-1).sum(-1) / P.shape[-1])[..., None, None]
    out = torch.relu(W @ P)
    return out.transpose(-1, -2) if wide else out
