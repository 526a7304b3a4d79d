import pytest
import torch
from torch.autograd import gradcheck

import dlrl_kernels as dk
from conftest import chain


def case(gen, m, n, I, d=4, frac=0.5, dtype=torch.float64, dup=False):
    dims = [m] + [d] * (I - 1) + [n]
    fs = chain(gen, dims, dtype)
    X = torch.randn(m, n, generator=gen, dtype=dtype)
    mask = torch.rand(m, n, generator=gen) < frac
    r, c = mask.nonzero(as_tuple=True)
    if dup and r.numel():
        r, c = torch.cat([r, r[:3]]), torch.cat([c, c[:3]])
    return fs, X, mask, r, c, X[r, c]


@pytest.mark.parametrize("m,n,I,d", [(1, 9, 2, 3), (9, 1, 2, 3), (13, 11, 2, 20), (6, 5, 5, 3), (4, 4, 10, 2), (8, 3, 1, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparse_equals_dense_on_same_entries(gen, m, n, I, d, dtype):
    fs, X, mask, r, c, v = case(gen, m, n, I, d, dtype=dtype)
    e = dk.masked_residual_sparse(fs, r, c, v)
    E = dk.masked_residual(fs, X, mask)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(e, E[r, c], rtol=tol, atol=tol)
    a = [f.clone().requires_grad_() for f in fs]
    b = [f.clone().requires_grad_() for f in fs]
    ls, ld = dk.masked_loss_sparse(a, r, c, v), dk.masked_loss(b, X, mask)
    torch.testing.assert_close(ls, ld, rtol=tol * 10, atol=tol)
    ls.backward()
    ld.backward()
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad, rtol=tol * 10, atol=tol * 10)


@pytest.mark.parametrize("I", [1, 2, 3, 6])
def test_gradcheck_sparse(gen, I):
    fs, X, mask, r, c, v = case(gen, 7, 6, I, d=3, dup=True)
    fs = [f.requires_grad_() for f in fs]
    assert gradcheck(lambda *f: dk.masked_loss_sparse(list(f), r, c, v), fs)
    assert gradcheck(lambda *f: dk.masked_residual_sparse(list(f), r, c, v), fs)


def test_duplicates_count_twice(gen):
    fs, X, mask, r, c, v = case(gen, 5, 6, 2, d=3)
    k = 0
    r2, c2, v2 = torch.cat([r, r[k : k + 1]]), torch.cat([c, c[k : k + 1]]), torch.cat([v, v[k : k + 1]])
    e = dk.masked_residual_sparse(fs, r, c, v)
    torch.testing.assert_close(dk.masked_loss_sparse(fs, r2, c2, v2), 0.5 * (e @ e + e[k] ** 2))


def test_int32_indices(gen):
    fs, X, mask, r, c, v = case(gen, 9, 8, 3)
    torch.testing.assert_close(
        dk.masked_loss_sparse(fs, r.int(), c.int(), v), dk.masked_loss_sparse(fs, r, c, v)
    )


def test_empty_observations_give_zero_loss_and_gradient(gen):
    fs = [f.requires_grad_() for f in chain(gen, [4, 3, 5])]
    empty = torch.empty(0, dtype=torch.long)
    loss = dk.masked_loss_sparse(fs, empty, empty, torch.empty(0, dtype=torch.float64))
    loss.backward()
    assert loss.item() == 0.0 and all(torch.all(f.grad == 0) for f in fs)


def test_chunking_boundary(gen, monkeypatch):
    from dlrl_kernels.ops import masked_residual_sparse as mod

    fs, X, mask, r, c, v = case(gen, 30, 25, 3, d=4, frac=0.7)
    full = dk.masked_loss_sparse(fs, r, c, v)
    monkeypatch.setattr(mod, "CHUNK", 7)  # many chunks with a ragged tail
    torch.testing.assert_close(dk.masked_loss_sparse(fs, r, c, v), full)


# ------------------------------------------------------------------ prepared patterns
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape, nnz", [((37, 53), 900), ((301, 257), 400)])  # dense-gather / row-gather SDDMM
def test_pattern_path_matches_plain_path(gen, dtype, shape, nnz):
    """sparse_pattern (sorted once, CSR SpMM backward) gives the plain path's loss and grads;
    the two shapes exercise both reference SDDMM routes (dense product + gather when the
    observed fraction is high, row gathers when it is low). Duplicates included."""
    m, n = shape
    F = chain(gen, [m, 6, 5, n], dtype=dtype)
    r = torch.randint(0, m, (nnz,), generator=gen)
    c = torch.randint(0, n, (nnz,), generator=gen)
    r[-5:], c[-5:] = r[:5], c[:5]
    v = torch.randn(nnz, generator=gen, dtype=dtype)
    pat = dk.sparse_pattern(r, c, shape)
    assert torch.all(pat.rows[1:] * n + pat.cols[1:] >= pat.rows[:-1] * n + pat.cols[:-1])
    F1 = [f.clone().requires_grad_() for f in F]
    F2 = [f.clone().requires_grad_() for f in F]
    L1 = dk.masked_loss_sparse(F1, r, c, v)
    L2 = dk.masked_loss_sparse(F2, pat.rows, pat.cols, v[pat.order], pattern=pat)
    L1.backward()
    L2.backward()
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(L2, L1, **tol)
    for a, b in zip(F1, F2):
        torch.testing.assert_close(b.grad, a.grad, **tol)
    e = dk.masked_residual_sparse(F, pat.rows, pat.cols, v[pat.order], pattern=pat)
    P = F[0] @ F[1] @ F[2]
    torch.testing.assert_close(e, P[pat.rows, pat.cols] - v[pat.order], **tol)
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(
            lambda *f: dk.masked_loss_sparse(list(f), pat.rows, pat.cols, v[pat.order], pattern=pat),
            [f.detach().clone().requires_grad_() for f in F])


def test_pattern_misuse_is_a_clear_error(gen):
    F = chain(gen, [7, 3, 9])
    r, c = torch.tensor([0, 6, 2]), torch.tensor([8, 0, 4])
    v = torch.randn(3, generator=gen, dtype=torch.float64)
    pat = dk.sparse_pattern(r, c, (7, 9))
    with pytest.raises(ValueError, match="pattern"):
        dk.masked_loss_sparse(F, r, c, v, pattern=pat)  # not the pattern's own (sorted) indices
    with pytest.raises(ValueError, match="pattern"):
        dk.masked_loss_sparse(chain(gen, [8, 3, 9]), pat.rows, pat.cols, v, pattern=pat)
    with pytest.raises(ValueError, match="rows"):
        dk.sparse_pattern(torch.tensor([7]), torch.tensor([0]), (7, 9))


# ----------------------------------------------------------------------------- values, bad input, compile
@pytest.mark.parametrize("I", [1, 2, 3])
def test_values_are_differentiated(gen, I):
    """∂e/∂values = −1: the gradient reaches values (it used to be dropped silently)."""
    fs, X, mask, r, c, v = case(gen, 7, 6, I, d=3)
    v = v.clone().requires_grad_()
    fs = [f.requires_grad_() for f in fs]
    assert gradcheck(lambda vv, *f: dk.masked_loss_sparse(list(f), r, c, vv), (v, *fs))
    assert gradcheck(lambda vv, *f: dk.masked_residual_sparse(list(f), r, c, vv), (v, *fs))
    e = dk.masked_residual_sparse([f.detach() for f in fs], r, c, v)
    (gv,) = torch.autograd.grad(0.5 * (e * e).sum(), v)
    torch.testing.assert_close(gv, -e.detach())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_names_the_argument(gen, bad):
    fs, X, mask, r, c, v = case(gen, 7, 6, 2, d=3)
    f0 = fs[0].clone()
    f0[1, 2] = bad
    with pytest.raises(ValueError, match=r"factors\[0\]: expected finite"):
        dk.masked_loss_sparse([f0, fs[1]], r, c, v)
    v2 = v.clone()
    v2[0] = bad
    with pytest.raises(ValueError, match="values"):
        dk.masked_residual_sparse(fs, r, c, v2)


def test_fullgraph_compile_with_pattern_forward_and_backward(gen):
    """masked_loss_sparse with a SparsePattern traces whole under torch.compile (fullgraph: a
    graph break would raise), forward and backward, and matches eager."""
    fs, X, mask, r, c, v = case(gen, 9, 8, 3, d=3)
    pat = dk.sparse_pattern(r, c, (9, 8))
    vals = v[pat.order]

    def loss(a, b, cc, vv):
        return dk.masked_loss_sparse([a, b, cc], pat.rows, pat.cols, vv, pattern=pat)

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    x1 = [f.clone().requires_grad_() for f in fs]
    x2 = [f.clone().requires_grad_() for f in fs]
    v1, v2 = vals.clone().requires_grad_(), vals.clone().requires_grad_()
    l1, l2 = compiled(*x1, v1), loss(*x2, v2)
    torch.testing.assert_close(l1, l2)
    l1.backward()
    l2.backward()
    for a, b in zip(x1 + [v1], x2 + [v2]):
        torch.testing.assert_close(a.grad, b.grad)
    explain = torch._dynamo.explain(loss)(*x2, v2)
    assert explain.graph_break_count == 0, explain.break_reasons
