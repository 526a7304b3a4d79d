"""Input checks shared by every op.

Every message names the argument, what was expected and what was got, so that a user who
passes a wrong shape finds out from the error rather than from a NaN three layers later.
"""
from __future__ import annotations

from typing import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)


def check_float_tensor(t, name: str, ndim_min: int | None = None, ndim: int | None = None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float32 or float64, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got shape {tuple(t.shape)}")
    if ndim_min is not None and t.dim() < ndim_min:
        raise ValueError(
            f"{name}: expected at least {ndim_min} dims, got shape {tuple(t.shape)}"
        )
    return t


def check_same(ref: torch.Tensor, ref_name: str, t: torch.Tensor, name: str, dtype=True):
    if t.device != ref.device:
        raise ValueError(
            f"{name}: expected device {ref.device} (same as {ref_name}), got {t.device}"
        )
    if dtype and t.dtype != ref.dtype:
        raise TypeError(f"{name}: expected dtype {ref.dtype} (same as {ref_name}), got {t.dtype}")


def check_factors(factors: Sequence[torch.Tensor], name: str = "factors"):
    """A chain X_1 (m×d_1), …, X_I (d_{I-1}×n): 2-D, one float dtype, one device."""
    if isinstance(factors, torch.Tensor) or not isinstance(factors, (list, tuple)):
        raise TypeError(f"{name}: expected a list or tuple of 2-D tensors, got {type(factors).__name__}")
    if len(factors) == 0:
        raise ValueError(f"{name}: expected at least one factor, got an empty sequence")
    first = factors[0]
    for k, f in enumerate(factors):
        check_float_tensor(f, f"{name}[{k}]", ndim=2)
        if k:
            check_same(first, f"{name}[0]", f, f"{name}[{k}]")
            if factors[k - 1].shape[1] != f.shape[0]:
                raise ValueError(
                    f"{name}[{k}]: expected {factors[k - 1].shape[1]} rows to chain with "
                    f"{name}[{k - 1}] of shape {tuple(factors[k - 1].shape)}, got shape {tuple(f.shape)}"
                )
    return factors[0].shape[0], factors[-1].shape[1]


def check_no_nan(t: torch.Tensor, name: str):
    if torch.isnan(t).any():
        n = int(torch.isnan(t).sum())
        raise ValueError(f"{name}: expected no NaN, got {n} NaN entr{'y' if n == 1 else 'ies'}")


def check_dense_target(X, mask, shape, ref, ref_name="factors[0]"):
    """X (m×n) with NaN = missing when mask is None; mask bool/0-1 of the same shape."""
    check_float_tensor(X, "X", ndim=2)
    check_same(ref, ref_name, X, "X")
    if tuple(X.shape) != tuple(shape):
        raise ValueError(
            f"X: expected shape {tuple(shape)} (rows of factors[0] × cols of factors[-1]), got {tuple(X.shape)}"
        )
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask: expected a torch.Tensor or None, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"mask: expected shape {tuple(shape)} (same as X), got {tuple(mask.shape)}")
    if mask.device != X.device:
        raise ValueError(f"mask: expected device {X.device} (same as X), got {mask.device}")
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or mask.dtype in INDEX_DTYPES or mask.dtype == torch.uint8:
            bad = (mask != 0) & (mask != 1)
            if bad.any():
                raise ValueError(f"mask: expected only 0/1 (or bool) entries, got {int(bad.sum())} other values")
            mask = mask != 0
        else:
            raise TypeError(f"mask: expected bool or 0/1 numeric dtype, got {mask.dtype}")
    nan_obs = torch.isnan(X) & mask
    if nan_obs.any():
        raise ValueError(f"X: expected no NaN at observed entries (mask True), got {int(nan_obs.sum())}")
    return mask


def check_sparse_target(rows, cols, values, shape, ref, ref_name="factors[0]", check_range=True):
    m, n = shape
    for name, t in (("rows", rows), ("cols", cols)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor of int32/int64, got {type(t).__name__}")
        if t.dtype not in INDEX_DTYPES:
            raise TypeError(f"{name}: expected dtype int32 or int64, got {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"{name}: expected a 1-D tensor, got shape {tuple(t.shape)}")
        if t.device != ref.device:
            raise ValueError(f"{name}: expected device {ref.device} (same as {ref_name}), got {t.device}")
    check_float_tensor(values, "values", ndim=1)
    check_same(ref, ref_name, values, "values")
    if not (rows.shape[0] == cols.shape[0] == values.shape[0]):
        raise ValueError(
            f"values: expected rows, cols and values of one length, got {rows.shape[0]}, "
            f"{cols.shape[0]} and {values.shape[0]}"
        )
    if rows.numel() and check_range:
        for name, t, lim in (("rows", rows, m), ("cols", cols, n)):
            lo, hi = int(t.min()), int(t.max())
            if lo < 0:
                raise ValueError(f"{name}: expected indices >= 0, got minimum {lo}")
            if hi >= lim:
                raise ValueError(f"{name}: expected indices < {lim} (the matrix side), got maximum {hi}")
    check_no_nan(values, "values")


def check_square(S, name="S"):
    check_float_tensor(S, name, ndim_min=2)
    if S.shape[-1] != S.shape[-2]:
        raise ValueError(f"{name}: expected square matrices (..., d, d), got shape {tuple(S.shape)}")


def check_power(a, name="a"):
    if not isinstance(a, (int, float)) or isinstance(a, bool):
        raise TypeError(f"{name}: expected a real number, got {type(a).__name__}")
    if not (-1.0 <= float(a) <= 1.0):
        raise ValueError(f"{name}: expected a value in [-1, 1], got {a}")
    return float(a)


def check_p(p, name="p"):
    if not isinstance(p, (int, float)) or isinstance(p, bool):
        raise TypeError(f"{name}: expected a real number, got {type(p).__name__}")
    if not (0.0 < float(p) <= 2.0):
        raise ValueError(f"{name}: expected a Schatten exponent in (0, 2], got {p}")
    return float(p)


def check_method(method, allowed, name="method"):
    if method not in allowed:
        raise ValueError(f"{name}: expected one of {sorted(allowed)}, got {method!r}")
    return method
