"""Bad input: one test per kind; each error names the argument, what was expected and got."""
import pytest
import torch

import dlrl_kernels as dk


@pytest.fixture
def fs(gen):
    return [torch.randn(5, 3, generator=gen, dtype=torch.float64), torch.randn(3, 4, generator=gen, dtype=torch.float64)]


def test_factor_chain_shapes(fs):
    with pytest.raises(ValueError, match=r"factors\[1\]: expected 3 rows .* got shape \(2, 4\)"):
        dk.masked_loss([fs[0], torch.randn(2, 4, dtype=torch.float64)], torch.randn(5, 4, dtype=torch.float64))


def test_factors_not_a_list(fs):
    with pytest.raises(TypeError, match="factors: expected a list or tuple"):
        dk.chain_products(fs[0])


def test_X_shape(fs):
    with pytest.raises(ValueError, match=r"X: expected shape \(5, 4\).*got \(4, 5\)"):
        dk.masked_loss(fs, torch.randn(4, 5, dtype=torch.float64))


def test_mask_shape(fs):
    with pytest.raises(ValueError, match=r"mask: expected shape \(5, 4\).*got \(5, 3\)"):
        dk.masked_residual(fs, torch.randn(5, 4, dtype=torch.float64), torch.ones(5, 3, dtype=torch.bool))


def test_mask_values(fs):
    with pytest.raises(ValueError, match="mask: expected only 0/1"):
        dk.masked_loss(fs, torch.randn(5, 4, dtype=torch.float64), torch.full((5, 4), 0.5))


def test_nan_at_observed_entry(fs):
    X = torch.randn(5, 4, dtype=torch.float64)
    X[1, 2] = float("nan")
    with pytest.raises(ValueError, match="X: expected no NaN at observed entries"):
        dk.masked_loss(fs, X, torch.ones(5, 4, dtype=torch.bool))


def test_mixed_dtypes(fs):
    with pytest.raises(TypeError, match=r"factors\[1\]: expected dtype torch.float64 .* got torch.float32"):
        dk.masked_loss([fs[0], fs[1].float()], torch.randn(5, 4, dtype=torch.float64))


def test_integer_dtype(fs):
    with pytest.raises(TypeError, match="factors\\[0\\]: expected dtype float32 or float64, got torch.int64"):
        dk.chain_products([torch.ones(2, 2, dtype=torch.long)])


def test_mixed_devices(fs):
    with pytest.raises(ValueError, match=r"factors\[1\]: expected device cpu .* got meta"):
        dk.masked_loss([fs[0], fs[1].to("meta")], torch.randn(5, 4, dtype=torch.float64))


def test_sparse_lengths(fs):
    r = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="values: expected rows, cols and values of one length, got 3, 3 and 2"):
        dk.masked_loss_sparse(fs, r, r, torch.ones(2, dtype=torch.float64))


def test_index_out_of_range(fs):
    with pytest.raises(ValueError, match=r"cols: expected indices < 4 .* got maximum 4"):
        dk.masked_loss_sparse(fs, torch.tensor([0, 1]), torch.tensor([1, 4]), torch.ones(2, dtype=torch.float64))


def test_negative_index(fs):
    with pytest.raises(ValueError, match="rows: expected indices >= 0, got minimum -1"):
        dk.masked_residual_sparse(fs, torch.tensor([0, -1]), torch.tensor([1, 2]), torch.ones(2, dtype=torch.float64))


def test_float_index(fs):
    with pytest.raises(TypeError, match="rows: expected dtype int32 or int64, got torch.float32"):
        dk.masked_loss_sparse(fs, torch.tensor([0.0, 1.0]), torch.tensor([1, 2]), torch.ones(2, dtype=torch.float64))


def test_nan_in_values(fs):
    v = torch.tensor([1.0, float("nan")], dtype=torch.float64)
    with pytest.raises(ValueError, match="values: expected no NaN, got 1 NaN entry"):
        dk.masked_loss_sparse(fs, torch.tensor([0, 1]), torch.tensor([1, 2]), v)


def test_non_square_S():
    with pytest.raises(ValueError, match=r"S: expected square matrices \(..., d, d\), got shape \(3, 4\)"):
        dk.spd_power(torch.randn(3, 4, dtype=torch.float64), 0.5)


@pytest.mark.parametrize("a", [1.5, -1.01])
def test_power_out_of_range(a):
    with pytest.raises(ValueError, match=f"a: expected a value in \\[-1, 1\\], got {a}"):
        dk.spd_power(torch.eye(3, dtype=torch.float64), a)


@pytest.mark.parametrize("p", [0.0, 2.5, -1.0])
def test_p_out_of_range(gen, p):
    Y = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    with pytest.raises(ValueError, match=f"p: expected a Schatten exponent in \\(0, 2\\], got {p}"):
        dk.lowrank_block(Y, Y, p)


def test_W_shape(gen):
    Y = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"W: expected the shape of Y \(6, 3\), got \(3, 6\)"):
        dk.lowrank_block(Y, Y.t(), 1.0)


def test_unknown_method():
    with pytest.raises(ValueError, match="method: expected one of .* got 'qr'"):
        dk.pinv(torch.eye(3, dtype=torch.float64), method="qr")


def test_unknown_backend(fs):
    with pytest.raises(ValueError, match="backend: expected one of"):
        dk.masked_loss(fs, torch.randn(5, 4, dtype=torch.float64), backend="tpu")


def test_forced_triton_on_cpu_without_interpreter(fs, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="backend='triton'"):
        dk.masked_loss(fs, torch.randn(5, 4, dtype=torch.float64), backend="triton")


def test_forced_cuda_without_extension(fs):
    with pytest.raises(RuntimeError, match="backend='cuda'"):
        dk.masked_loss_sparse(fs, torch.tensor([0]), torch.tensor([1]), torch.ones(1, dtype=torch.float64), backend="cuda")


def test_env_override(fs, monkeypatch):
    monkeypatch.setenv("DLRL_BACKEND", "bogus")
    with pytest.raises(ValueError, match="DLRL_BACKEND: expected one of"):
        dk.masked_loss(fs, torch.randn(5, 4, dtype=torch.float64))
