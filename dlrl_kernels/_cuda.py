"""Loader and thin wrappers for the compiled CUDA extension ``dlrl_kernels._C``.

Importing this module never fails. It tries ``from dlrl_kernels import _C`` (whose import
registers the ops as ``torch.ops.dlrl.*``) and exposes:

- ``AVAILABLE``: True when the extension loaded and every op below is registered;
- ``UNAVAILABLE_REASON``: why not, in words ("" when available);
- one wrapper per op, calling ``torch.ops.dlrl.<op>`` (RuntimeError naming the reason when
  the extension is unavailable).

The wrappers do no validation beyond what the C++ side checks (device, layout, dtype,
contiguity, shapes); index ranges are the caller's job (``_validate.check_sparse_target``),
and so is autograd: the ``autograd.Function`` lives in the op layer (``dlrl_kernels/ops``).

When the extension is loaded, fake (meta) implementations are registered with
``torch.library.register_fake`` so that ``torch.compile`` can trace through the ops.
Schemas live in ``csrc/bindings.cpp``; keep the fakes below in sync with them.
"""
from __future__ import annotations

import os

try:
    import torch
except Exception as _exc:  # pragma: no cover - torch is a hard dependency; never fail here
    torch = None
    _TORCH_ERROR = f"torch is not importable ({type(_exc).__name__}: {_exc})"
else:
    _TORCH_ERROR = ""

OPS = (
    "sparse_residual",
    "sparse_grad_rows",
    "sparse_grad_cols",
    "sparse_grad_cols_atomic",
    "gram_batched",
)

AVAILABLE: bool = False
UNAVAILABLE_REASON: str = ""
_C = None


def _why_not_built() -> str:
    """Best guess at why setup.py did not build the extension here."""
    if os.environ.get("DLRL_SKIP_CUDA"):
        return "DLRL_SKIP_CUDA is set"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build (torch.version.cuda is None)"
    try:
        from torch.utils.cpp_extension import CUDA_HOME
    except Exception:  # pragma: no cover
        CUDA_HOME = None
    if CUDA_HOME is None:
        return "no CUDA toolkit found (CUDA_HOME unset and nvcc not found) when installing"
    return "the package was installed without building it (reinstall to build csrc/)"


def _load() -> tuple[bool, str]:
    global _C
    if torch is None:
        return False, _TORCH_ERROR
    try:
        from dlrl_kernels import _C as ext  # noqa: F401  (import registers torch.ops.dlrl.*)
    except ImportError as exc:
        msg = str(exc)
        if "_C" in msg and ("cannot import name" in msg or "No module named" in msg):
            return False, f"the CUDA extension dlrl_kernels._C is not built: {_why_not_built()}"
        return False, f"the CUDA extension dlrl_kernels._C failed to load: {exc}"
    except Exception as exc:  # e.g. OSError from a missing libcudart / libc10_cuda
        return False, f"the CUDA extension dlrl_kernels._C failed to load: {type(exc).__name__}: {exc}"
    _C = ext
    try:
        ns = torch.ops.dlrl
        missing = [name for name in OPS if not hasattr(ns, name)]
    except Exception as exc:  # pragma: no cover
        return False, f"dlrl_kernels._C loaded but torch.ops.dlrl is not usable: {exc}"
    if missing:
        return False, f"dlrl_kernels._C loaded but does not register {', '.join(missing)} (stale build?)"
    return True, ""


AVAILABLE, UNAVAILABLE_REASON = _load()


def has_op(name: str) -> bool:
    """Whether the extension is loaded and provides ``torch.ops.dlrl.<name>``."""
    return AVAILABLE and (name in OPS or name in COMPOSITES)


#: composite entry points built here from the raw ops, and the raw ops each one needs
COMPOSITES = {"sparse_rq": ("sparse_grad_rows", "sparse_grad_cols", "sparse_grad_cols_atomic")}


def _op(name: str):
    if not AVAILABLE:
        raise RuntimeError(f"dlrl CUDA op {name} is unavailable: {UNAVAILABLE_REASON}")
    return getattr(torch.ops.dlrl, name)


# --------------------------------------------------------------------------------------------
# Wrappers (argument order and defaults as in the schemas of csrc/bindings.cpp)
# --------------------------------------------------------------------------------------------


def sparse_residual(U, Vt, rows, cols, values):
    """(e, loss): e[k] = U[rows[k]]·Vt[cols[k]] - values[k], loss = ½Σe² (0-dim, values' dtype,
    accumulated in float64, deterministic). U (m,d), Vt (n,d), rows/cols int32|int64 (nnz,)."""
    return _op("sparse_residual")(U, Vt, rows, cols, values)


def sparse_grad_rows(row_ptr, col_idx, e, Vt, scale: float = 1.0):
    """R (m,d), R[i] = scale·Σ_{k in row i} e[k]·Vt[col_idx[k]], CSR order (e in CSR order)."""
    return _op("sparse_grad_rows")(row_ptr, col_idx, e, Vt, float(scale))


def sparse_grad_cols(col_ptr, row_idx, e, U, scale: float = 1.0):
    """Q (n,d), Q[j] = scale·Σ_{k in col j} e[k]·U[row_idx[k]], CSC order (e in CSC order)."""
    return _op("sparse_grad_cols")(col_ptr, row_idx, e, U, float(scale))


def sparse_grad_cols_atomic(rows, cols, e, U, n: int, scale: float = 1.0):
    """Q (n,d) as sparse_grad_cols, from COO order with atomicAdd (not bitwise deterministic)."""
    return _op("sparse_grad_cols_atomic")(rows, cols, e, U, int(n), float(scale))


def gram_batched(Y):
    """S (B,d,d) = Yᵀ Y per batch for Y (B,r,d), d <= 128."""
    return _op("gram_batched")(Y)


def sparse_rq(U, Vt, rows, cols, e, scale, m: int, n: int):
    """(R, Q) of the sparse chain gradient from COO entries in any order (the backend primitive
    of ``ops.masked_residual_sparse``): R[i] = scale·Σ_{rows_k=i} e_k Vt[cols_k] by the
    compressed-row kernel (CSR order; a stable sort by row first unless ``rows`` is already
    sorted, e.g. a ``SparsePattern``), Q[j] = scale·Σ_{cols_k=j} e_k U[rows_k] by the CSC kernel
    under ``torch.are_deterministic_algorithms_enabled()``, by atomics otherwise.

    ``scale`` may be a number or a 1-element tensor (it is folded into e, no host read).
    """
    idx_t = torch.int32 if rows.dtype == torch.int32 and cols.dtype == torch.int32 else torch.int64
    rows_i, cols_i = rows.to(idx_t), cols.to(idx_t)
    es = (e * scale).contiguous() if isinstance(scale, torch.Tensor) or float(scale) != 1.0 else e.contiguous()
    nnz = rows_i.numel()
    if nnz > 1 and not bool((rows_i[1:] >= rows_i[:-1]).all()):
        perm = torch.argsort(rows_i, stable=True)
        r_sorted, c_r, e_r = rows_i[perm], cols_i[perm], es[perm]
    else:
        r_sorted, c_r, e_r = rows_i, cols_i, es
    row_ptr = torch._convert_indices_from_coo_to_csr(r_sorted, int(m), out_int32=idx_t == torch.int32)
    R = sparse_grad_rows(row_ptr, c_r.contiguous(), e_r.contiguous(), Vt.contiguous(), 1.0)
    if torch.are_deterministic_algorithms_enabled():
        cperm = torch.argsort(cols_i, stable=True)
        col_ptr = torch._convert_indices_from_coo_to_csr(cols_i[cperm], int(n), out_int32=idx_t == torch.int32)
        Q = sparse_grad_cols(col_ptr, rows_i[cperm].contiguous(), es[cperm].contiguous(), U.contiguous(), 1.0)
    else:
        Q = sparse_grad_cols_atomic(rows_i, cols_i, es, U.contiguous(), int(n), 1.0)
    return R, Q


# --------------------------------------------------------------------------------------------
# Fake (meta) implementations, for torch.compile / FakeTensor tracing
# --------------------------------------------------------------------------------------------


def _register_fakes(ns: str = "dlrl", lib=None) -> None:
    """Register the fakes for ``{ns}::<op>`` (``ns`` and ``lib`` are for the schema test, which
    defines the same schemas under a scratch namespace on machines without the extension)."""
    _register = getattr(torch.library, "register_fake", None)
    if _register is None:  # pragma: no cover - torch < 2.4
        _register = torch.library.impl_abstract

    def register(qualname):
        name = qualname.replace("dlrl::", f"{ns}::", 1)
        return _register(name, lib=lib) if lib is not None else _register(name)

    @register("dlrl::sparse_residual")
    def _(U, Vt, rows, cols, values):
        return values.new_empty(values.shape), values.new_empty(())

    @register("dlrl::sparse_grad_rows")
    def _(row_ptr, col_idx, e, Vt, scale=1.0):
        return Vt.new_empty((row_ptr.shape[0] - 1, Vt.shape[1]))

    @register("dlrl::sparse_grad_cols")
    def _(col_ptr, row_idx, e, U, scale=1.0):
        return U.new_empty((col_ptr.shape[0] - 1, U.shape[1]))

    @register("dlrl::sparse_grad_cols_atomic")
    def _(rows, cols, e, U, n, scale=1.0):
        return U.new_empty((n, U.shape[1]))

    @register("dlrl::gram_batched")
    def _(Y):
        return Y.new_empty((Y.shape[0], Y.shape[2], Y.shape[2]))


if AVAILABLE:
    try:
        _register_fakes()
    except Exception as exc:  # pragma: no cover - never let this break the import
        FAKE_REGISTRATION_ERROR = f"{type(exc).__name__}: {exc}"
    else:
        FAKE_REGISTRATION_ERROR = ""
else:
    FAKE_REGISTRATION_ERROR = "extension not loaded"
