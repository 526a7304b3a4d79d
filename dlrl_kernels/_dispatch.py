"""The one place that decides which implementation runs.

``backend`` on every public op is ``"auto" | "reference" | "triton" | "cuda" | "cpu"``; the
environment variable ``DLRL_BACKEND`` overrides ``"auto"`` (not an explicit choice).

- ``auto``: CUDA tensors -> the CUDA extension when it is built and has the op, else Triton
  when importable, else the reference; CPU tensors -> the native CPU kernel when the op has
  one and it compiled (``dlrl_kernels.cpu``; ``DLRL_NATIVE=0`` turns it off), else the
  reference (pure PyTorch).
- ``cpu``: the native CPU kernels (``dlrl_kernels/cpu/sparse_cpu.c``, compiled on first use)
  for the ops that have one, the reference (their CPU path) for the others; RuntimeError
  naming the reason when the kernels did not compile, or for tensors not on the CPU.
- ``triton``: CUDA tensors, or CPU tensors when ``TRITON_INTERPRET=1`` was set before the
  kernels were imported (how CI tests the kernels). Otherwise a clear RuntimeError.
- ``cuda``: the compiled extension; RuntimeError naming the reason when it is missing.
- ``reference``: always available.
"""
from __future__ import annotations

import os
from functools import lru_cache

import torch

BACKENDS = ("auto", "reference", "triton", "cuda", "cpu")


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


def constant_result(fn):
    """Mark ``fn`` as returning a constant for torch.compile (it is evaluated at trace time, not
    traced): the same marker ``torch.compiler.assume_constant_result`` sets, without importing
    torch._dynamo — that import cost ~3 s of every ``import dlrl`` and ~1 s at exit."""
    fn._dynamo_marked_constant = True
    return fn


@constant_result
def native_status() -> tuple:
    """(available, reason) of the native CPU kernels (``dlrl_kernels.cpu`` builds and caches on
    the first call). A constant for torch.compile (evaluated at trace time, not traced)."""
    try:
        from . import cpu
    except Exception as exc:  # pragma: no cover
        return False, f"dlrl_kernels.cpu failed to import ({exc})"
    return tuple(cpu.status())


def native_module():
    """``dlrl_kernels.cpu`` when its kernels build, else a RuntimeError saying why — the loader of
    every op table's "cpu" entry (``OpTable.resolve`` falls back from "auto" on that error)."""
    ok, why = native_status()
    if not ok:
        raise RuntimeError(f"the native CPU kernels are unavailable: {why}")
    from . import cpu

    return cpu


def resolve(backend: str, device: torch.device, op: str, triton_ok: bool = True, cuda_ok: bool = False,
            cpu_ok: bool = False) -> str:
    """Return the concrete backend for one call of ``op`` on tensors living on ``device``.

    ``triton_ok`` / ``cuda_ok`` / ``cpu_ok`` say whether this op has such a kernel at all.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get("DLRL_BACKEND", "auto")
        if env not in BACKENDS:
            raise ValueError(f"DLRL_BACKEND: expected one of {BACKENDS}, got {env!r}")
        if env != "auto":
            return resolve(env, device, op, triton_ok, cuda_ok, cpu_ok)
        if device.type == "cuda":
            if cuda_ok and cuda_ext_status()[0]:
                return "cuda"
            if triton_ok and triton_status()[0]:
                return "triton"
        if device.type == "cpu" and cpu_ok and native_status()[0]:
            return "cpu"
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
    if backend == "cpu":
        if device.type == "cpu" and not cpu_ok:
            return "reference"  # ops with no native kernel: the reference is their CPU path
        ok, why = native_status()
        if not ok:
            raise RuntimeError(f"backend='cpu' requested for {op} but the native CPU kernels are unavailable: {why}")
        if device.type != "cpu":
            raise RuntimeError(f"backend='cpu' requested for {op} on {device} tensors")
        return "cpu"
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
        "native_cpu": native_status()[0],
        "native_cpu_reason": native_status()[1],
    }


# ----------------------------------------------------------------------------- op tables
class OpTable:
    """One op's implementations: ``{"reference", "triton", "cuda", "cpu"}`` → an implementation object.

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

    def __init__(self, op: str, interface: tuple, reference, triton=None, cuda=None, cpu=None):
        self.op = op
        self.interface = tuple(interface)
        self.loaders = {"reference": reference, "triton": triton, "cuda": cuda, "cpu": cpu}
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

    def resolve(self, backend: str, device, triton_ok: bool = True, cuda_ok: bool = True, cpu_ok: bool = True):
        """``(name, impl)`` for one call on tensors living on ``device`` (see :func:`resolve`).

        ``triton_ok`` / ``cuda_ok`` narrow the table for this call (e.g. a one-factor chain has
        no kernel); a CUDA entry is chosen only when the built extension has the symbols the
        entry needs (its loader raises otherwise, and ``auto`` then falls back).
        """
        dev = torch.device(device) if not isinstance(device, torch.device) else device
        name = resolve(backend, dev, self.op, triton_ok=triton_ok and self.has("triton"),
                       cuda_ok=cuda_ok and self.has("cuda"), cpu_ok=cpu_ok and self.has("cpu"))
        if name in ("cuda", "cpu") and backend == "auto":
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


# ----------------------------------------------------------------------------- eager twin of an op
class EagerOp:
    """A ``torch.library`` custom op and an ``autograd.Function`` running the *same* forward,
    ``setup_context`` and backward functions; ``__call__`` picks the custom op while
    ``torch.compile`` traces (so the graph holds the opaque op, fullgraph, with its fake) and
    the autograd.Function in eager mode.

    Why: in eager mode torch.library's custom-op dispatch (schema parsing of the call, the
    Python kernel trampoline and its generated autograd node) measured 0.3–0.6 ms per
    forward+backward on this 2-core CPU — more than the sparse kernels themselves at
    ML-100K's size — and a DLRL epoch calls three such ops. And the first call of any custom
    op imports ``torch._dynamo`` (torch wraps the kernels in ``_disable_dynamo``): ~2 s added
    to every short process; eager code that only goes through these twins never imports it. The autograd.Function does no
    more than the op's own functions, so the two routes give bit-identical results
    (``tests/test_eager_ops.py``).

    ``setup_context(ctx, inputs, output)`` and ``backward(ctx, *grads)`` are the functions
    given to ``register_autograd``. When no gradient flows back at all, the twin returns None
    for every input; otherwise unused outputs' gradients arrive as zeros, or as None with
    ``none_grads=True`` (backwards written to skip them: the sparse loss, pinv, block_power).
    """

    def __init__(self, op, forward, setup_context, backward, none_grads=False):
        self.op = op
        self.forward_fn = forward

        def fwd(ctx, *args):
            ctx.set_materialize_grads(False)
            ctx._n_args = len(args)
            out = forward(*args)
            setup_context(ctx, args, out)
            outs = tuple(out) if isinstance(out, tuple) else (out,)
            ctx._out_meta = [(o.shape, o.dtype, o.device) for o in outs]
            if isinstance(out, tuple):  # the custom op's outputs never alias its inputs
                return tuple(out)
            return out

        def bwd(ctx, *grads):
            if all(g is None for g in grads):  # nothing flows back (e.g. gradcheck's undefined-grad check)
                return (None,) * ctx._n_args
            if not none_grads:  # a backward written for the custom op, which sees zeros, not None
                grads = tuple(torch.zeros(sh, dtype=dt, device=dv) if g is None else g
                              for g, (sh, dt, dv) in zip(grads, ctx._out_meta))
            return backward(ctx, *grads)

        self.function = type(f"{getattr(op, '_name', 'op')}_eager".replace("::", "_"),
                             (torch.autograd.Function,), {"forward": staticmethod(fwd), "backward": staticmethod(bwd)})

    def __call__(self, *args):
        if torch.compiler.is_compiling():
            return self.op(*args)
        return self.function.apply(*args)


class PlainOp:
    """A ``torch.library`` custom op without an autograd formula of its own (the ops called
    inside another op's backward) and its Python function: the op while ``torch.compile``
    traces, the function in eager mode — where calling the registered op would only add
    torch.library's dispatch cost and, on its first call, an import of ``torch._dynamo``
    (torch wraps every custom-op kernel in ``_disable_dynamo``: ~2 s on this machine, paid by
    every short ``dlrl fit`` process)."""

    def __init__(self, op, fn):
        self.op, self.fn = op, fn

    def __call__(self, *args):
        if torch.compiler.is_compiling():
            return self.op(*args)
        return self.fn(*args)
