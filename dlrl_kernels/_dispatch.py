"""The one place that decides which implementation runs.

``backend`` on every public op is ``"auto" | "reference" | "triton" | "cuda"``; the
environment variable ``DLRL_BACKEND`` overrides ``"auto"`` (not an explicit choice).

- ``auto``: CUDA tensors -> the CUDA extension when it is built and has the op, else Triton
  when importable, else the reference; CPU tensors -> the reference (pure PyTorch).
- ``triton``: CUDA tensors, or CPU tensors when ``TRITON_INTERPRET=1`` was set before the
  kernels were imported (how CI tests the kernels). Otherwise a clear RuntimeError.
- ``cuda``: the compiled extension; RuntimeError naming the reason when it is missing.
- ``reference``: always available.
"""
from __future__ import annotations

import os
from functools import lru_cache

import torch

BACKENDS = ("auto", "reference", "triton", "cuda")


@lru_cache(maxsize=None)
def triton_status() -> tuple[bool, str]:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the machine
        return False, f"triton is not importable ({exc})"
    return True, ""


def interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@lru_cache(maxsize=None)
def cuda_ext_status() -> tuple[bool, str]:
    try:
        from . import _cuda
    except Exception as exc:  # pragma: no cover
        return False, f"dlrl_kernels._cuda failed to import ({exc})"
    return bool(getattr(_cuda, "AVAILABLE", False)), getattr(_cuda, "UNAVAILABLE_REASON", "")


def resolve(backend: str, device: torch.device, op: str, triton_ok: bool = True, cuda_ok: bool = False) -> str:
    """Return the concrete backend for one call of ``op`` on tensors living on ``device``.

    ``triton_ok`` / ``cuda_ok`` say whether this op has such a kernel at all.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get("DLRL_BACKEND", "auto")
        if env not in BACKENDS:
            raise ValueError(f"DLRL_BACKEND: expected one of {BACKENDS}, got {env!r}")
        if env != "auto":
            return resolve(env, device, op, triton_ok, cuda_ok)
        if device.type == "cuda":
            if cuda_ok and cuda_ext_status()[0]:
                return "cuda"
            if triton_ok and triton_status()[0]:
                return "triton"
        return "reference"
    if backend == "reference":
        return "reference"
    if backend == "triton":
        if not triton_ok:
            raise RuntimeError(f"backend='triton': op {op} has no Triton kernel; use 'reference' or 'auto'")
        ok, why = triton_status()
        if not ok:
            raise RuntimeError(f"backend='triton' requested for {op} but {why}")
        if device.type != "cuda" and not interpret_mode():
            raise RuntimeError(
                f"backend='triton' requested for {op} on {device} tensors: Triton runs on CUDA "
                "tensors, or on CPU tensors only with TRITON_INTERPRET=1 set before import"
            )
        return "triton"
    # cuda
    if not cuda_ok:
        raise RuntimeError(f"backend='cuda': op {op} has no CUDA kernel; use 'triton', 'reference' or 'auto'")
    ok, why = cuda_ext_status()
    if not ok:
        raise RuntimeError(f"backend='cuda' requested for {op} but the extension is unavailable: {why}")
    if device.type != "cuda":
        raise RuntimeError(f"backend='cuda' requested for {op} on {device} tensors")
    return "cuda"


def describe() -> dict:
    """What is available here, for logs and `dlrl fit` output."""
    t_ok, t_why = triton_status()
    c_ok, c_why = cuda_ext_status()
    return {
        "torch": torch.__version__,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "triton": t_ok,
        "triton_reason": t_why,
        "triton_interpret": interpret_mode(),
        "cuda_extension": c_ok,
        "cuda_extension_reason": c_why,
    }


# ----------------------------------------------------------------------------- op tables
class OpTable:
    """One op's implementations: ``{"reference", "triton", "cuda"}`` → an implementation object.

    An implementation object is anything with the attributes named in ``interface`` (a module,
    a class, a ``types.SimpleNamespace``); its functions take the same arguments in every
    backend, so the op's ``autograd.Function`` receives the *object* once per call and calls
    ``impl.forward(...)`` / ``impl.backward(...)`` without re-resolving a string.

    Entries are given as zero-argument loaders (``lambda: module.attr``) so that importing an
    op never imports Triton or the CUDA extension; a loader is called once, on first use.
    ``tests/test_dispatch.py`` walks every table (``TABLES``) with a stand-in CUDA module and
    checks every entry the dispatcher can choose loads and has ``interface`` with the
    reference's signatures: a table cannot point at nothing.
    """

    def __init__(self, op: str, interface: tuple, reference, triton=None, cuda=None):
        self.op = op
        self.interface = tuple(interface)
        self.loaders = {"reference": reference, "triton": triton, "cuda": cuda}
        self._loaded: dict = {}
        TABLES[op] = self

    def has(self, backend: str) -> bool:
        return self.loaders.get(backend) is not None

    def load(self, backend: str):
        if backend not in self._loaded:
            loader = self.loaders.get(backend)
            if loader is None:
                raise RuntimeError(f"op {self.op} has no {backend} implementation")
            impl = loader()
            missing = [a for a in self.interface if not callable(getattr(impl, a, None))]
            if missing:
                raise RuntimeError(f"op {self.op}: the {backend} implementation lacks {missing}")
            self._loaded[backend] = impl
        return self._loaded[backend]

    def resolve(self, backend: str, device, triton_ok: bool = True, cuda_ok: bool = True):
        """``(name, impl)`` for one call on tensors living on ``device`` (see :func:`resolve`).

        ``triton_ok`` / ``cuda_ok`` narrow the table for this call (e.g. a one-factor chain has
        no kernel); a CUDA entry is chosen only when the built extension has the symbols the
        entry needs (its loader raises otherwise, and ``auto`` then falls back).
        """
        dev = torch.device(device) if not isinstance(device, torch.device) else device
        name = resolve(backend, dev, self.op, triton_ok=triton_ok and self.has("triton"),
                       cuda_ok=cuda_ok and self.has("cuda"))
        if name == "cuda" and backend == "auto":
            try:
                return name, self.load(name)
            except RuntimeError:
                name = resolve("auto", dev, self.op, triton_ok=triton_ok and self.has("triton"), cuda_ok=False)
        return name, self.load(name)

    def reset(self):
        """Forget loaded implementations (tests swap the CUDA module)."""
        self._loaded.clear()


#: every op's table, by op name (filled as the op modules are imported)
TABLES: dict = {}
