"""Native CPU kernels (``sparse_cpu.c`` beside this file), compiled on first use.

The sparse residual and its two chain gradients are the bulk of a DLRL epoch on a CPU, and
torch's CPU sparse ops are 3–10× slower than one fused pass at the sizes DLRL trains on
(``bench/bench_kernels.py`` measures both side by side). The C file has no torch headers: it is
compiled with the system C compiler (``$CC``, else ``cc``/``gcc``/``clang``) — once generic and
once per rank d it meets (a build whose loops know d, 2–3× faster; ~0.3 s each) — cached under
``$DLRL_CACHE_DIR`` (default ``~/.cache/dlrl_kernels``) keyed by the source, flags, d and the
CPU, and called through ``ctypes`` on the data pointers of contiguous tensors.

``status()`` → (available, reason). It is unavailable — and ``backend="auto"`` then uses the
pure-PyTorch reference — when ``DLRL_NATIVE=0`` is set, no C compiler is found, or the
compile fails (the reason says which). Nothing here raises at import.

Functions (inputs already validated by the op layer; index tensors int64, float tensors
float32 or float64 of one dtype, all contiguous on the CPU):

- ``sparse_residual(U, Vt, rows, cols, values)`` → e
- ``sparse_rq(U, Vt, rows, cols, e, scale, m, n)`` → (R, Q); ``scale`` a number or a one-element
  CPU tensor
- ``sparse_loss_grad(U, Vt, rows, cols, values)`` → (J, e, R, Q): J = ½Σe² (float64), e and the
  unscaled R, Q of the same entries in one pass over them (the training loss's forward)
- ``chain_loss``, ``published_forward`` / ``published_backward``: see their docstrings
- ``eta_gram(G0, G1, G2, c, eta, lo, hi)`` → (S, t) and ``eta_grad(gS, G1, G2, t, eta, lo, hi)``
  → ∂J/∂η: the model's per-epoch gram S(η) and η's adjoint through it (the autograd-free step)
- ``spectral_power_forward`` / ``spectral_power_backward``: ``block_power``'s eigh route with the
  spectral normaliser around torch's eigh (see their docstrings)
- ``plateau_step(J, lr, best, bad, stopped, factor, patience, min_lr, adam_lr)``: one epoch of the
  fit's plateau schedule on its state tensors, in place (``dlrl.model._Plateau``)

With more than one torch thread and at least ``PARALLEL_MIN_NNZ`` entries the residual is split
over two threads and R and Q are computed on two threads at once (ctypes releases the GIL;
R and Q write disjoint memory, so no atomics are needed); the one-pass loss splits the entries
in two halves, the second half into its own zeroed R, Q, which are then added.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("sparse_cpu.c")
ABI = 11
#: ranks up to this get a build specialised for their d (see sparse_cpu.c); others the generic one
MAX_SPECIAL_D = 128
#: below this many entries one thread does everything (thread hand-off costs ~50 µs)
PARALLEL_MIN_NNZ = 200_000
#: compile flags. -ffast-math lets the compiler vectorise the dot products' reductions (2–3×
#: measured here); -fno-finite-math-only keeps NaN/Inf arithmetic as IEEE, and the link step
#: is separate and without -ffast-math so that crtfastmath (which would switch the whole
#: process to flush-to-zero) is never linked in. -march=native is dropped if the compiler
#: refuses it.
COMPILE_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fno-finite-math-only", "-fPIC", "-std=c99")
LINK_FLAGS = ("-shared",)
LINK_LIBS = ("-lm",)  # pow / powf (the published operator's elementwise power)

_lock = threading.RLock()  # _lib(d) falls back to _lib(0) while holding it
_state: dict = {}


def _compiler():
    for cand in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


def _cpu_key() -> str:
    """What the compiled code depends on besides the source: -march=native's CPU."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "model name", "Features", "CPU part")):
                    flags += line
                if line.strip() == "":
                    break
    except OSError:
        pass
    return flags or platform.processor() or platform.machine()


def cache_dir() -> Path:
    base = os.environ.get("DLRL_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "dlrl_kernels" if xdg else Path.home() / ".cache" / "dlrl_kernels"


def _build(d: int = 0) -> tuple[object, str]:
    """(library, "") or (None, reason) for the build specialised to rank ``d`` (0: generic)."""
    if os.environ.get("DLRL_NATIVE", "1").strip() in ("0", "", "false", "False", "no"):
        return None, "DLRL_NATIVE=0 is set"
    if not SOURCE.exists():
        return None, f"the kernel source {SOURCE} is missing from this install"
    cc = _compiler()
    if cc is None:
        return None, "no C compiler found ($CC, cc, gcc, clang)"
    src = SOURCE.read_bytes()
    define = f"-DDLRL_D={int(d)}"
    key = hashlib.sha256(src + " ".join((cc, *COMPILE_FLAGS, *LINK_FLAGS, *LINK_LIBS)).encode()
                         + _cpu_key().encode()).hexdigest()[:16]
    out_dir = cache_dir()
    lib = out_dir / f"sparse_cpu_{key}_d{int(d)}{'.dll' if sys.platform == 'win32' else '.so'}"
    if not lib.exists():
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
            os.close(fd)
        except OSError as err:
            return None, f"cannot write the kernel cache {out_dir} ({err}); set DLRL_CACHE_DIR"
        obj = tmp + ".o"
        try:
            err = ""
            for flags in (COMPILE_FLAGS, tuple(f for f in COMPILE_FLAGS if not f.startswith("-march"))):
                proc = subprocess.run([cc, *flags, define, "-c", str(SOURCE), "-o", obj], capture_output=True,
                                      text=True, timeout=120)
                if proc.returncode == 0:
                    break
                err = (proc.stderr or proc.stdout).strip()[:500]
            else:
                return None, f"{cc} failed to compile {SOURCE.name}: {err}"
            proc = subprocess.run([cc, *LINK_FLAGS, obj, "-o", tmp, *LINK_LIBS], capture_output=True, text=True,
                                  timeout=120)
            if proc.returncode != 0:
                return None, f"{cc} failed to link {SOURCE.name}: {(proc.stderr or proc.stdout).strip()[:500]}"
            os.replace(tmp, lib)  # atomic: a concurrent process sees the old name or the whole file
        except (OSError, subprocess.SubprocessError) as exc:
            return None, f"compiling {SOURCE.name} with {cc} failed ({exc})"
        finally:
            for f in (tmp, obj):
                if os.path.exists(f):
                    os.unlink(f)
    try:
        so = ctypes.CDLL(str(lib))
    except OSError as err:
        return None, f"cannot load {lib} ({err})"
    if so.dlrl_native_abi() != ABI or so.dlrl_native_dim() != int(d):
        return None, f"{lib} has ABI {so.dlrl_native_abi()} / d {so.dlrl_native_dim()}, expected {ABI} / {d} (stale cache?)"
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    for suf in ("f32", "f64"):
        getattr(so, f"dlrl_residual_{suf}").argtypes = [i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr]
        getattr(so, f"dlrl_grad_rows_{suf}").argtypes = [i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr]
        getattr(so, f"dlrl_grad_cols_{suf}").argtypes = [i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr]
        getattr(so, f"dlrl_loss_grad_{suf}").argtypes = [i64, i64, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr]
        getattr(so, f"dlrl_chain_cols_fwd_{suf}").argtypes = [i64, i64, i64, ptr, i64, i64, ptr, ctypes.c_int, ptr]
        getattr(so, f"dlrl_chain_rows_{suf}").argtypes = [i64, i64, i64, i64, i64, ptr, ptr, ptr, ptr, i64, i64, ptr,
                                                          ptr, ctypes.c_int, ptr, ptr, ptr, ctypes.c_int, ptr, ptr,
                                                          ptr, ptr, ptr, ptr, ptr]
        getattr(so, f"dlrl_chain_cols_bwd_{suf}").argtypes = [i64, i64, i64, ptr, i64, i64, ptr, ctypes.c_int, ptr,
                                                              ptr, ptr, ptr]
        getattr(so, f"dlrl_chain_mid_fwd_{suf}").argtypes = [i64, i64, ptr, ptr, ptr, ctypes.c_int, ptr, ptr, ptr]
        getattr(so, f"dlrl_chain_mid_bwd_{suf}").argtypes = [i64, i64, ptr, ptr, ptr, ctypes.c_int, ptr, ptr, ptr, ptr,
                                                             ptr, ptr]
        getattr(so, f"dlrl_pub_power_{suf}").argtypes = [i64, i64, ptr, ptr, ptr]
        getattr(so, f"dlrl_pub_pinv_{suf}").argtypes = [i64, i64, ptr, ptr, ctypes.c_double, ptr, ptr, ptr]
        getattr(so, f"dlrl_pub_backward_{suf}").argtypes = [i64, i64, ptr, ptr, ptr, ptr, ptr, ptr]
        for f in ("eta_gram", "eta_grad"):
            getattr(so, f"dlrl_{f}_{suf}").argtypes = [i64, i64, ptr, ptr, ptr, ptr, ptr, ctypes.c_double,
                                                       ctypes.c_double, ptr, *([ptr] if f == "eta_gram" else [])]
        getattr(so, f"dlrl_plateau_step_{suf}").argtypes = [ptr, ptr, ptr, ptr, ptr, ctypes.c_double, i64,
                                                            ctypes.c_double, ptr]
        getattr(so, f"dlrl_spd_sym_{suf}").argtypes = [i64, i64, ptr, ptr]
        getattr(so, f"dlrl_spd_fwd_{suf}").argtypes = [i64, i64, ptr, ptr, ptr, ctypes.c_double, ptr, ptr, ptr, ptr]
        getattr(so, f"dlrl_spd_bwd_{suf}").argtypes = [i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ctypes.c_double,
                                                       ptr]
        getattr(so, f"dlrl_spd_bwd_{suf}").restype = ctypes.c_int
        for f in ("residual", "grad_rows", "grad_cols", "loss_grad", "chain_cols_fwd", "chain_mid_fwd", "pub_power",
                  "pub_pinv", "eta_gram", "eta_grad", "plateau_step", "spd_sym", "spd_fwd"):
            getattr(so, f"dlrl_{f}_{suf}").restype = None
        for f in ("chain_rows", "chain_cols_bwd", "chain_mid_bwd", "pub_backward"):
            getattr(so, f"dlrl_{f}_{suf}").restype = ctypes.c_int
    return so, ""


def _lib(d: int = 0):
    """The build for rank d (specialised up to MAX_SPECIAL_D; if that build fails, the generic
    one). None when even the generic build is unavailable."""
    key = int(d) if 0 < int(d) <= MAX_SPECIAL_D else 0
    if key not in _state:
        with _lock:
            if key not in _state:
                lib, why = _build(key)
                if lib is None and key != 0:
                    lib = _lib(0)
                _state[key] = lib
                if key == 0:
                    _state["why"] = why
    return _state[key]


def status() -> tuple[bool, str]:
    """(available, reason it is not) — builds the generic library on the first call."""
    lib = _lib(0)
    return lib is not None, _state.get("why", "")


def _pool():
    if "pool" not in _state:
        from concurrent.futures import ThreadPoolExecutor

        _state["pool"] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlrl-cpu")
    return _state["pool"]


def _suffix(t) -> str:
    """The entry points' type suffix for a tensor or a dtype."""
    dtype = t if isinstance(t, torch.dtype) else t.dtype
    if dtype == torch.float32:
        return "f32"
    if dtype == torch.float64:
        return "f64"
    raise TypeError(f"dlrl_kernels.cpu: expected float32 or float64 tensors, got {dtype}")


def _require(d):
    """The build for rank d, or a RuntimeError saying why the kernels are unavailable."""
    lib = _lib(d)
    if lib is None:
        raise RuntimeError(f"the native CPU kernels are unavailable: {_state.get('why')}")
    return lib


def _prep(U, Vt, rows, cols):
    return _require(U.shape[1]), U.contiguous(), Vt.contiguous(), rows.contiguous().long(), cols.contiguous().long()


def _two_threads(nnz):
    return nnz >= PARALLEL_MIN_NNZ and torch.get_num_threads() > 1


def sparse_residual(U, Vt, rows, cols, values):
    lib, U, Vt, rows, cols = _prep(U, Vt, rows, cols)
    values = values.to(U.dtype).contiguous()
    nnz, d = values.numel(), U.shape[1]
    e = torch.empty_like(values)
    if nnz == 0:
        return e
    f = getattr(lib, f"dlrl_residual_{_suffix(U)}")
    args = (d, rows.data_ptr(), cols.data_ptr(), U.data_ptr(), Vt.data_ptr(), values.data_ptr(), e.data_ptr())
    if _two_threads(nnz):
        half = nnz // 2
        fut = _pool().submit(f, half, nnz, *args)
        f(0, half, *args)
        fut.result()
    else:
        f(0, nnz, *args)
    return e


def sparse_rq(U, Vt, rows, cols, e, scale, m, n):
    lib, U, Vt, rows, cols = _prep(U, Vt, rows, cols)
    e = e.to(U.dtype).contiguous()
    nnz, d = e.numel(), U.shape[1]
    R = torch.empty(m, d, dtype=U.dtype)
    Q = torch.empty(n, d, dtype=U.dtype)
    suf = _suffix(U)
    # scale: a number, or a one-element CPU tensor (the loss backward's incoming gradient),
    # which the kernel reads through a pointer — no scalar read back into Python
    sc = scale.detach().reshape(1).to(U.dtype).contiguous() if isinstance(scale, torch.Tensor) else \
        torch.tensor([float(scale)], dtype=U.dtype)
    if sc.device.type != "cpu":
        raise ValueError(f"scale: expected a number or a CPU tensor, got a tensor on {sc.device}")
    fr, fc = getattr(lib, f"dlrl_grad_rows_{suf}"), getattr(lib, f"dlrl_grad_cols_{suf}")
    ra = (nnz, m, d, rows.data_ptr(), cols.data_ptr(), Vt.data_ptr(), e.data_ptr(), sc.data_ptr(), R.data_ptr())
    ca = (nnz, n, d, rows.data_ptr(), cols.data_ptr(), U.data_ptr(), e.data_ptr(), sc.data_ptr(), Q.data_ptr())
    if _two_threads(nnz):
        fut = _pool().submit(fc, *ca)
        fr(*ra)
        fut.result()
    else:
        fr(*ra)
        fc(*ca)
    return R, Q


def sparse_loss_grad(U, Vt, rows, cols, values):
    """(J, e, R, Q): J = ½ Σ e² accumulated in float64 (a 0-d float64 tensor), the residual e,
    R = E·Vt and Q = Eᵀ·U (scale 1), from one pass over the entries."""
    lib, U, Vt, rows, cols = _prep(U, Vt, rows, cols)
    values = values.to(U.dtype).contiguous()
    nnz, d = values.numel(), U.shape[1]
    m, n = U.shape[0], Vt.shape[0]
    e = torch.empty_like(values)
    # R, Q are zeroed by the kernel: torch.zeros would run an OpenMP fill (a spin-wait trap
    # beside a busy process, measured 2 ms for these two small tensors)
    R = torch.empty(m, d, dtype=U.dtype)
    Q = torch.empty(n, d, dtype=U.dtype)
    J = torch.zeros(2, dtype=torch.float64)
    if nnz == 0:
        return J[0], e, R.zero_(), Q.zero_()
    f = getattr(lib, f"dlrl_loss_grad_{_suffix(U)}")
    common = (m, n, d, rows.data_ptr(), cols.data_ptr(), U.data_ptr(), Vt.data_ptr(), values.data_ptr(), e.data_ptr())
    if _two_threads(nnz):
        R2, Q2 = torch.empty_like(R), torch.empty_like(Q)
        half = nnz // 2
        fut = _pool().submit(f, half, nnz, *common, R2.data_ptr(), Q2.data_ptr(), J.data_ptr() + 8)
        f(0, half, *common, R.data_ptr(), Q.data_ptr(), J.data_ptr())
        fut.result()
        R += R2
        Q += Q2
        return 0.5 * J.sum(), e, R, Q
    f(0, nnz, *common, R.data_ptr(), Q.data_ptr(), J.data_ptr())
    return 0.5 * J[0], e, R, Q


#: the most extra columns (the model's bias columns: 2) the fused chain loss takes
CHAIN_MAX_EXTRA = 8


def _row_split(crow, parts):
    """Row boundaries splitting the entries of a CSR row pointer into ``parts`` near-equal runs."""
    nnz = int(crow[-1])
    m = crow.numel() - 1
    cuts = [0]
    for p in range(1, parts):
        cuts.append(max(cuts[-1], min(m, int(torch.searchsorted(crow, nnz * p // parts)))))
    return cuts + [m]


def _ok(status, what):
    if status != 0:
        raise MemoryError(f"dlrl_kernels.cpu: {what}: the kernel could not allocate its d×d scratch memory")


def _chain_fns(d, dtype):
    """The ``dlrl_chain_*`` entry points of the build for rank d, bound once per (d, dtype): a
    training loop calls them every epoch, and at small sizes attribute lookups and tensor
    indexing around five foreign calls cost more than the calls (see ``chain_loss``)."""
    key = (int(d), dtype)
    fns = _state.get(("chain", key))
    if fns is None:
        lib, suf = _require(d), _suffix(dtype)
        fns = tuple(getattr(lib, f"dlrl_chain_{f}_{suf}") for f in ("mid_fwd", "cols_fwd", "rows", "cols_bwd", "mid_bwd"))
        _state[("chain", key)] = fns
    return fns


def _check_chain(N, Ws, ue, ve, crow, cols, values):
    """Shapes, dtypes and devices the kernels' raw pointers rely on (metadata only: no host
    sync); each failure names the argument."""
    I = len(Ws)
    if N.dim() != 3 or N.shape[0] != I or N.shape[1] != N.shape[2] or I < 2:
        raise ValueError(f"N: expected shape ({I}, d, d) for {I} ≥ 2 weights, got {tuple(N.shape)}")
    d, dt = N.shape[-1], N.dtype
    for name, t in [("N", N), *((f"Ws[{i}]", W) for i, W in enumerate(Ws)), ("ue", ue), ("ve", ve),
                    ("values", values)]:
        if t is None:
            continue
        if t.dtype != dt:
            raise TypeError(f"{name}: expected {dt} like N, got {t.dtype}")
        if t.device.type != "cpu":
            raise ValueError(f"{name}: the native CPU kernels take CPU tensors, got one on {t.device}")
    W1, WI = Ws[0], Ws[-1]
    if W1.dim() != 2 or W1.shape[1] != d:
        raise ValueError(f"Ws[0]: expected a tall first weight (m, {d}), got {tuple(W1.shape)}")
    if WI.dim() != 2 or WI.shape[0] != d:
        raise ValueError(f"Ws[{I - 1}]: expected a wide last weight ({d}, n), got {tuple(WI.shape)}")
    for i, W in enumerate(Ws[1:-1], start=1):
        if tuple(W.shape) != (d, d):
            raise ValueError(f"Ws[{i}]: expected a middle weight ({d}, {d}), got {tuple(W.shape)}")
    m, n = W1.shape[0], WI.shape[1]
    if (ue is None) != (ve is None):
        raise ValueError("ue/ve: give both or neither")
    if ue is not None:
        k = ue.shape[-1]
        if ue.dim() != 2 or tuple(ue.shape) != (m, k) or tuple(ve.shape) != (n, k):
            raise ValueError(f"ue/ve: expected shapes ({m}, k) and ({n}, k), got {tuple(ue.shape)} and {tuple(ve.shape)}")
        if k > CHAIN_MAX_EXTRA:
            raise ValueError(f"ue: expected at most {CHAIN_MAX_EXTRA} extra columns, got {k}")
    if crow.dim() != 1 or crow.numel() != m + 1 or crow.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"crow: expected an integer CSR row pointer of {m + 1} entries, got {crow.dtype} "
                         f"of shape {tuple(crow.shape)}")
    if cols.dim() != 1 or values.dim() != 1 or cols.numel() != values.numel() or \
            cols.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"cols/values: expected integer cols and values of equal length, got {cols.dtype} "
                         f"{tuple(cols.shape)} and {tuple(values.shape)}")


def _scratch(n, dtype):
    """A scratch tensor of at least n elements, reused by this thread's calls (the chain loss's
    workspace: a fresh ~300 KB one per epoch cost ~30 µs at ML-100K's size); one per thread, so
    calls from two threads never share it."""
    ws = getattr(_scratch_local, "ws", None)
    if ws is None or ws.dtype != dtype or ws.numel() < n:
        ws = _scratch_local.ws = torch.empty(n, dtype=dtype)
    return ws


_scratch_local = threading.local()


def chain_loss(N, Ws, wide, ue, ve, relu, crow, cols, values, with_grad, out=None):
    """The whole ``dlrl::chain_loss_sparse`` (ops/chain_loss.py) on the CPU: the middle blocks and
    their product, the outer blocks with the sparse loss between them, and — with
    ``with_grad`` — every adjoint for a unit incoming gradient (``sparse_cpu.c``,
    ``dlrl_chain_*``). Returns (J, gN, gW, gue, gve): J = ½Σe² (0-d float64); gN like N;
    gW every weight's gradient flattened and concatenated in order; gue / gve (m×k, n×k) or
    None without extra columns; the gradients None without ``with_grad``.

    N: (I, d, d); Ws: a tall first weight (m×d), d×d middles, a wide last weight (d×n) — the
    layouts ``chain_loss.fusable`` accepts; wide: I flags (the middles'); ue, ve: extra columns
    or None; crow: the CSR row pointer of the row-sorted entries (cols, values in that order).

    All scratch (the middle blocks, the last block's output, q, the per-thread accumulators)
    is one allocation addressed by offsets, kept per thread (``_scratch``): at ML-100K's size this
    wrapper's own cost is part of every epoch. ``out``: None, or (gN, gW) tensors (contiguous,
    N's dtype, the shapes returned) to write the gradients into instead of fresh ones
    (``ops.chain_loss.loss_and_grads``)."""
    I = len(Ws)
    d = N.shape[-1]
    dt = N.dtype
    _check_chain(N, Ws, ue, ve, crow, cols, values)
    mid_fwd, cols_fwd, rows_f, cols_bwd, mid_bwd = _chain_fns(d, dt)
    W1, WI = Ws[0], Ws[-1]
    m, n = W1.shape[0], WI.shape[1]
    I2, dd = I - 2, d * d
    k = 0 if ue is None else ue.shape[1]
    N, W1, WI = N.contiguous(), W1.contiguous(), WI.contiguous()
    if ue is not None:
        ue, ve = ue.contiguous(), ve.contiguous()
    if values.dtype != dt:
        values = values.to(dt)
    if cols.dtype != torch.int64:
        cols = cols.long()
    if crow.dtype != torch.int64:
        crow = crow.long()
    cols, values, crow = cols.contiguous(), values.contiguous(), crow.contiguous()
    two = _two_threads(values.numel())
    parts = 2 if two else 1
    kk = max(k, 1)
    # workspace layout (elements): mid [3, I2, d, d] | Y [n, d] | Q [parts, n, d] | gMid [parts, d, d]
    # | gN1, gNI per-thread [2, parts, d, d] (two threads only) | Qe [parts, n, kk] | gue [m, kk]
    sizes = [3 * I2 * dd, n * d]
    if with_grad:
        sizes += [parts * n * d, parts * dd, (2 * parts * dd if two else 0), parts * n * kk, m * kk]
    ws = _scratch(sum(sizes), dt)
    esz = ws.element_size()
    offs, o = [], ws.data_ptr()
    for sz in sizes:
        offs.append(o)
        o += sz * esz
    p_mid, p_Y = offs[0], offs[1]
    Nptr = N.data_ptr()
    NI = Nptr + (I - 1) * dd * esz
    Mid = 0
    if I2 > 0:
        Wm = torch.stack(list(Ws[1:I - 1])) if I2 > 1 else Ws[1].contiguous()
        flags = (ctypes.c_int64 * I2)(*[int(w) for w in wide[1:I - 1]])
        mid_fwd(I2, d, Wm.data_ptr(), Nptr + dd * esz, flags, int(relu), p_mid, p_mid + I2 * dd * esz,
                p_mid + 2 * I2 * dd * esz)
        Mid = p_mid + (3 * I2 - 1) * dd * esz  # the last running product
    W1p, WIp, crowp, colsp, valp = W1.data_ptr(), WI.data_ptr(), crow.data_ptr(), cols.data_ptr(), values.data_ptr()
    if two:
        fut = _pool().submit(cols_fwd, n // 2, n, d, WIp, 1, n, NI, int(relu), p_Y)
        cols_fwd(0, n // 2, d, WIp, 1, n, NI, int(relu), p_Y)
        fut.result()
    else:
        cols_fwd(0, n, d, WIp, 1, n, NI, int(relu), p_Y)
    J = torch.zeros(parts, dtype=torch.float64)
    Jp = J.data_ptr()
    uep = 0 if ue is None else ue.data_ptr()
    vep = 0 if ve is None else ve.data_ptr()
    if not with_grad:
        args = (n, d, k, crowp, colsp, valp, W1p, d, 1, Nptr, Mid, int(relu), p_Y, uep, vep, 0)
        if two:
            cut = _row_split(crow, 2)
            fut = _pool().submit(rows_f, cut[1], cut[2], *args, Jp + 8, 0, 0, 0, 0, 0, 0)
            _ok(rows_f(cut[0], cut[1], *args, Jp, 0, 0, 0, 0, 0, 0), "chain_rows")
            _ok(fut.result(), "chain_rows")
            return 0.5 * J.sum(), None, None, None, None
        _ok(rows_f(0, m, *args, Jp, 0, 0, 0, 0, 0, 0), "chain_rows")
        return 0.5 * J[0], None, None, None, None
    p_Q, p_gMid, p_gacc, p_Qe, p_gue = offs[2:]
    nw = sum(W.numel() for W in Ws)
    if out is None:
        gN, gW = torch.empty_like(N), torch.empty(nw, dtype=dt)
    else:
        gN, gW = out
        if gN.shape != N.shape or gW.shape != (nw,) or gN.dtype != dt or gW.dtype != dt or not gN.is_cpu or \
                not gW.is_cpu or not gN.is_contiguous() or not gW.is_contiguous():
            raise ValueError(f"out: expected contiguous CPU {dt} tensors of shapes {tuple(N.shape)} and ({nw},), got "
                             f"{gN.dtype} {tuple(gN.shape)} and {gW.dtype} {tuple(gW.shape)}")
    gNp, gWp = gN.data_ptr(), gW.data_ptr()
    args = (n, d, k, crowp, colsp, valp, W1p, d, 1, Nptr, Mid, int(relu), p_Y, uep, vep, 1)
    nd, nk = n * d * esz, n * kk * esz
    if two:
        cut = _row_split(crow, 2)
        fut = _pool().submit(rows_f, cut[1], cut[2], *args, Jp + 8, p_Q + nd, p_Qe + nk, gWp, p_gacc + dd * esz,
                             p_gMid + dd * esz, p_gue)
        _ok(rows_f(cut[0], cut[1], *args, Jp, p_Q, p_Qe, gWp, p_gacc, p_gMid, p_gue), "chain_rows")
        _ok(fut.result(), "chain_rows")
        # add the second thread's accumulators into the first's (views of the workspace)
        o = 0
        views = {}
        for name, sz in zip(("mid", "Y", "Q", "gMid", "gacc", "Qe", "gue"), sizes):
            views[name] = ws[o:o + sz]
            o += sz
        for name, each, used in (("Q", n * d, True), ("gMid", dd, I2 > 0), ("Qe", n * kk, k > 0)):
            if used:  # (gMid without middle blocks and Qe without extra columns are never written)
                v = views[name]
                v[:each] += v[each:]
        ga = views["gacc"]
        torch.add(ga[:dd], ga[dd:2 * dd], out=gN[0].view(-1))
        J = 0.5 * J.sum()
    else:
        _ok(rows_f(0, m, *args, Jp, p_Q, p_Qe, gWp, gNp, p_gMid, p_gue), "chain_rows")
        J = 0.5 * J[0]
    # the last block's backward: gW's tail, gN[I-1]
    gWI = gWp + (gW.numel() - WI.numel()) * esz
    gNI = gNp + (I - 1) * dd * esz
    bargs = (d, WIp, 1, n, NI, int(relu), p_Y, p_Q, gWI)
    if two:
        fut = _pool().submit(cols_bwd, n // 2, n, *bargs, p_gacc + 3 * dd * esz)
        _ok(cols_bwd(0, n // 2, *bargs, p_gacc + 2 * dd * esz), "chain_cols_bwd")
        _ok(fut.result(), "chain_cols_bwd")
        ga = ws[sum(sizes[:4]):sum(sizes[:5])]
        torch.add(ga[2 * dd:3 * dd], ga[3 * dd:], out=gN[I - 1].view(-1))
    else:
        _ok(cols_bwd(0, n, *bargs, gNI), "chain_cols_bwd")
    if I2 > 0:
        _ok(mid_bwd(I2, d, Wm.data_ptr(), Nptr + dd * esz, flags, int(relu), p_mid, p_mid + I2 * dd * esz,
                    p_mid + 2 * I2 * dd * esz, p_gMid, gWp + W1.numel() * esz, gNp + dd * esz), "chain_mid_bwd")
    if not k:
        return J, gN, gW, None, None
    o_Qe, o_gue = sum(sizes[:5]), sum(sizes[:6])
    # the extra columns' gradients leave the workspace as tensors of their own
    return J, gN, gW, ws[o_gue:o_gue + m * kk].view(m, kk).clone(), ws[o_Qe:o_Qe + n * kk].view(n, kk).clone()


# ----------------------------------------------------------------------------- published operator
def _pub_args(S, expo):
    """(lib, suffix, contiguous S, one exponent per matrix as a contiguous vector). An ``expo`` that
    already holds I contiguous values of S's dtype (the model's (I, 1, 1)) is passed as it is:
    its storage is that vector (the reshape / expand would cost ~5 µs per call, twice an epoch)."""
    S = S.contiguous()
    I = S.shape[0]
    if not (expo.dtype == S.dtype and expo.numel() == I and expo.is_contiguous() and expo.is_cpu):
        expo = expo.reshape(-1).to(S.dtype).expand(I).contiguous()
    return _require(S.shape[-1]), _suffix(S), S, expo


def published_forward(S, expo, rtol):
    """(M, Q, inv) of the published block operator for S (I, d, d) and one exponent per matrix
    (``expo``: I values): G = ½(S + st)^∘e in C, G = Q diag(λ) Qᵀ by torch.linalg.eigh,
    inv = the cut reciprocal eigenvalues and M = ½ Q diag(inv) Qᵀ in C (``sparse_cpu.c``,
    ``dlrl_pub_*``)."""
    lib, suf, S, e = _pub_args(S, expo)
    I, d = S.shape[0], S.shape[-1]
    G = torch.empty_like(S)
    getattr(lib, f"dlrl_pub_power_{suf}")(I, d, S.data_ptr(), e.data_ptr(), G.data_ptr())
    lam, Q = torch.linalg.eigh(G)
    QT = Q.transpose(-1, -2)  # LAPACK's column-major Q: its transpose (the eigenvectors as rows) is contiguous
    if not QT.is_contiguous():
        QT = QT.contiguous()
    M, Qr = torch.empty_like(S), torch.empty_like(S)  # (the kernel writes Q row-major: no torch copy)
    inv = torch.empty_like(lam)
    lam = lam.contiguous()  # (bound: a temporary's pointer would dangle during the call)
    getattr(lib, f"dlrl_pub_pinv_{suf}")(I, d, QT.data_ptr(), lam.data_ptr(), float(rtol), M.data_ptr(),
                                         inv.data_ptr(), Qr.data_ptr())
    return M, Qr, inv


def published_backward(S, expo, Q, inv, gM):
    """∂L/∂S of ``published_forward`` for ∂L/∂M (the composition of the pinv, power and shift
    adjoints; see ``sparse_cpu.c``)."""
    lib, suf, S, e = _pub_args(S, expo)
    Q, inv, gM = Q.contiguous(), inv.contiguous(), gM.contiguous()
    I, d = S.shape[0], S.shape[-1]
    gS = torch.empty_like(S)
    if getattr(lib, f"dlrl_pub_backward_{suf}")(I, d, S.data_ptr(), e.data_ptr(), Q.data_ptr(), inv.data_ptr(),
                                                 gM.data_ptr(), gS.data_ptr()) != 0:
        raise MemoryError("dlrl_kernels.cpu: published_backward: the kernel could not allocate its d×d scratch memory")
    return gS


# ----------------------------------------------------------------------------- η's gram
def _eta_fn(name, d, dtype):
    """``dlrl_eta_<name>`` of the build for rank d, bound once per (d, dtype) (called every epoch)."""
    key = ("eta", name, int(d), dtype)
    fn = _state.get(key)
    if fn is None:
        fn = _state[key] = getattr(_require(d), f"dlrl_eta_{name}_{_suffix(dtype)}")
    return fn


def _check_eta(G0, G1, G2, eta, name, x, first="G0"):
    """Metadata the raw pointers rely on (no host sync): G0, G1, G2 contiguous (I, d, d) CPU tensors
    of one dtype, ``eta`` one element and ``x`` (named ``name``) I elements, alike. Called every
    epoch, so the common case is one expression; the loop only names the culprit."""
    I = G0.shape[0] if G0.dim() == 3 else -1
    if (G0.dim() == 3 and G1.shape == G0.shape and G2.shape == G0.shape and eta.numel() == 1 and x.shape == (I,)
            and G0.dtype == G1.dtype == G2.dtype == eta.dtype == x.dtype
            and G0.is_cpu and G1.is_cpu and G2.is_cpu and eta.is_cpu and x.is_cpu
            and G0.is_contiguous() and G1.is_contiguous() and G2.is_contiguous() and x.is_contiguous()):
        return I, G0.shape[-1]
    shape = tuple(G0.shape) if G0.dim() == 3 else "(I, d, d)"
    for nm, t, want in ((first, G0, shape), ("G1", G1, shape), ("G2", G2, shape), ("eta", eta, None),
                        (name, x, (I,))):
        if t.dtype != G0.dtype or not t.is_cpu or not t.is_contiguous():
            raise ValueError(f"{nm}: expected a contiguous CPU {G0.dtype} tensor, got {t.dtype} on {t.device}"
                             + ("" if t.is_contiguous() else " (not contiguous)"))
        if (t.numel() != 1) if want is None else (tuple(t.shape) != want):
            raise ValueError(f"{nm}: expected shape {want or '(one element)'}, got {tuple(t.shape)}")
    raise AssertionError("unreachable")


def eta_gram(G0, G1, G2, c, eta, lo, hi):
    """(S, t): S_k = G0_k + t_k G1_k + t_k² G2_k, t_k = c_k / clamp(η, lo, hi) — the model's
    per-epoch gram (``DLRL._gram_parts``, its torch twin) in one call; G0, G1, G2 (I, d, d),
    c (I,), η one element (read through its pointer)."""
    I, d = _check_eta(G0, G1, G2, eta, "c", c)
    S = torch.empty_like(G0)
    t = torch.empty(I, dtype=G0.dtype)
    _eta_fn("gram", d, G0.dtype)(I, d, G0.data_ptr(), G1.data_ptr(), G2.data_ptr(), c.data_ptr(), eta.data_ptr(),
                                 lo, hi, S.data_ptr(), t.data_ptr())
    return S, t


def eta_grad(gS, G1, G2, t, eta, lo, hi):
    """∂J/∂η (shaped like η) for ∂J/∂S of ``eta_gram``'s S and its t: −Σ_k t_k ⟨∂S_k, G1_k +
    2t_k G2_k⟩ / η where lo ≤ η ≤ hi, else 0 (``DLRL._eta_grad``, its torch twin)."""
    I, d = _check_eta(gS, G1, G2, eta, "t", t, first="gS")
    out = torch.empty_like(eta)
    _eta_fn("grad", d, gS.dtype)(I, d, gS.data_ptr(), G1.data_ptr(), G2.data_ptr(), t.data_ptr(), eta.data_ptr(),
                                 lo, hi, out.data_ptr())
    return out


# ----------------------------------------------------------------------------- plateau schedule
def plateau_step(J, lr, best, bad, stopped, factor, patience, min_lr, adam_lr=None):
    """One epoch of ``dlrl.model._Plateau`` (its torch code is the twin) on its state, in place:
    ``lr``, ``best`` 0-d float64, ``bad`` 0-d int64, ``stopped`` 0-d bool; J one float32/float64
    element, read through its pointer (no host read); ``adam_lr`` (0-d float64 or None) receives
    the lr Adam uses, 0 once stopped. All CPU tensors."""
    ok = (lr.dtype == best.dtype == torch.float64 and bad.dtype == torch.int64 and stopped.dtype == torch.bool
          and J.dtype in (torch.float32, torch.float64) and J.numel() == 1
          and lr.numel() == best.numel() == bad.numel() == stopped.numel() == 1
          and J.is_cpu and lr.is_cpu and best.is_cpu and bad.is_cpu and stopped.is_cpu
          and (adam_lr is None or (adam_lr.dtype == torch.float64 and adam_lr.numel() == 1 and adam_lr.is_cpu)))
    if not ok:
        got = {k: (t.dtype, tuple(t.shape), str(t.device)) for k, t in
               (("J", J), ("lr", lr), ("best", best), ("bad", bad), ("stopped", stopped), ("adam_lr", adam_lr))
               if t is not None}
        raise ValueError("plateau_step: expected one-element CPU tensors, J float32/float64, lr/best/adam_lr "
                         f"float64, bad int64, stopped bool; got {got}")
    fn = _state.get(("plateau", J.dtype))
    if fn is None:
        fn = _state[("plateau", J.dtype)] = getattr(_require(0), f"dlrl_plateau_step_{_suffix(J)}")
    fn(J.data_ptr(), lr.data_ptr(), best.data_ptr(), bad.data_ptr(), stopped.data_ptr(), float(factor), int(patience),
       float(min_lr), 0 if adam_lr is None else adam_lr.data_ptr())


# ----------------------------------------------------------------------------- paper operator
def _spd_fns(d, dtype):
    key = ("spd", int(d), dtype)
    fns = _state.get(key)
    if fns is None:
        lib, suf = _require(d), _suffix(dtype)
        fns = _state[key] = tuple(getattr(lib, f"dlrl_spd_{f}_{suf}") for f in ("sym", "fwd", "bwd"))
    return fns


def _exponents(a, I):
    """One exponent per matrix as a C double array (``a``: 1 or I numbers)."""
    a = [float(x) for x in a]
    if len(a) not in (1, I):
        raise ValueError(f"a: expected 1 or {I} exponents, got {len(a)}")
    return (ctypes.c_double * I)(*(a * I if len(a) == 1 else a))


def spectral_power_forward(S, a, rtol):
    """(N, c, v, λ, Q) of ``block_power``'s eigh route with the spectral normaliser (ops/
    lowrank_block.py; its torch code is the twin) for S (I, d, d) and exponents ``a`` (1 or I):
    B = sym(S) in C, B = Q diag(λ) Qᵀ by torch.linalg.eigh, then N = Q f(λ) Qᵀ / c with
    c = λ_max^a, the top vector v and Q row-major in C. ``rtol``: the range threshold."""
    if S.dim() != 3 or S.shape[-1] != S.shape[-2]:
        raise ValueError(f"S: expected (I, d, d), got {tuple(S.shape)}")
    S = S.contiguous()
    I, d = S.shape[0], S.shape[-1]
    sym_f, fwd_f, _ = _spd_fns(d, S.dtype)
    e = _exponents(a, I)
    B = torch.empty_like(S)
    sym_f(I, d, S.data_ptr(), B.data_ptr())
    lam, Q = torch.linalg.eigh(B)
    QT = Q.transpose(-1, -2)  # LAPACK's column-major Q: its transpose (the eigenvectors as rows) is contiguous
    if not QT.is_contiguous():
        QT = QT.contiguous()
    lam = lam.contiguous()
    N, Qr = torch.empty_like(S), torch.empty_like(S)
    c, v = S.new_empty(I), S.new_empty(I, d)
    fwd_f(I, d, lam.data_ptr(), QT.data_ptr(), e, float(rtol), N.data_ptr(), c.data_ptr(), v.data_ptr(), Qr.data_ptr())
    return N, c, v, lam, Qr


def spectral_power_backward(gN, N, c, v, lam, Q, a, rtol):
    """∂L/∂S of ``spectral_power_forward`` for ∂L/∂N (its saved N, c, v, λ, Q)."""
    I, d = N.shape[0], N.shape[-1]
    gN, N, c, v, lam, Q = (t.contiguous() for t in (gN, N, c, v, lam, Q))
    for name, t, shape in (("gN", gN, N.shape), ("c", c, (I,)), ("v", v, (I, d)), ("lam", lam, (I, d)),
                           ("Q", Q, N.shape)):
        if t.shape != shape or t.dtype != N.dtype or not t.is_cpu:
            raise ValueError(f"{name}: expected a CPU {N.dtype} tensor of shape {tuple(shape)}, got {t.dtype} "
                             f"{tuple(t.shape)} on {t.device}")
    gS = torch.empty_like(N)
    _ok(_spd_fns(d, N.dtype)[2](I, d, gN.data_ptr(), N.data_ptr(), c.data_ptr(), v.data_ptr(), lam.data_ptr(),
                                Q.data_ptr(), _exponents(a, I), float(rtol), gS.data_ptr()), "spectral_power_backward")
    return gS
