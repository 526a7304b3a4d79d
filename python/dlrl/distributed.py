"""Data-parallel DLRL under ``torchrun``: a thin layer over :mod:`torch.distributed`.

Full-batch DLRL is data parallel by nature: the observed entries are the data and an epoch
is one gradient step, so every rank keeps the full (small) parameters W_k, η and the biases,
evaluates the loss on its *shard of the observed entries* with the same ops, and the
gradients, the per-data constants and the loss figures are summed over ranks before the
optimizer step. Every rank then takes the identical step and the parameters stay identical.

Usage (what :meth:`dlrl.DLRL.fit` does with ``distributed="auto"``)::

    ctx = distributed.context("auto")        # None outside torchrun (WORLD_SIZE <= 1)
    if ctx is not None:
        obs = ctx.shard(obs)                 # this rank's entries
        ...
        ctx.all_reduce_([p.grad for p in params])
    if distributed.is_main():
        ...write files...

Shard rule
    The entries are put in a fixed order -- sorted by (row, col), ties (repeated pairs) by
    value -- and entry ``k`` of that order goes to rank ``k mod world_size``. So the union of
    the shards is exactly the data (each entry on exactly one rank), the shards differ in
    size by at most one entry, every row's entries are spread round-robin over the ranks,
    and the result depends neither on the input order nor on anything random.

Backend
    ``gloo`` when CUDA is not available; with CUDA, ``cpu:gloo,cuda:nccl`` (NCCL moves the
    CUDA tensors, gloo any CPU tensor) and each process uses ``cuda:LOCAL_RANK``.
    ``DistContext.backend`` names the backend of the tensors the fit uses ("gloo"/"nccl").
"""
from __future__ import annotations

import atexit
import datetime
import os
from typing import Iterable, List, Optional, Sequence

import torch
import torch.distributed as dist

__all__ = ["DistContext", "context", "is_main", "shard_index"]

_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_CONTEXT: Optional["DistContext"] = None
_OWN_GROUP = False  # True when this module initialised the process group (and so ends it)


def _env_world_size() -> int:
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"WORLD_SIZE: expected an integer in the environment, got {raw!r}") from None


def shard_index(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape, rank: int,
                world_size: int) -> torch.Tensor:
    """Indices (into the given arrays) of the entries that rank ``rank`` of ``world_size``
    holds: entry ``k`` of the (row, col, value) order goes to rank ``k mod world_size``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank: expected 0 <= rank < world_size={world_size}, got {rank}")
    n = int(shape[1])
    key = rows.long() * n + cols.long()
    # lexicographic (key, value): a stable sort by value, then a stable sort by key
    by_value = torch.sort(values, stable=True).indices
    order = by_value[torch.sort(key[by_value], stable=True).indices]
    return order[rank::world_size]


class DistContext:
    """This process's place in the process group, and the collectives the fit needs.

    Attributes:
        rank, world_size: from the process group.
        is_main: ``rank == 0`` (the only rank that writes files).
        backend: ``"gloo"`` or ``"nccl"`` -- the backend of the fit's tensors.
        device: the device this rank computes on (``cpu`` or ``cuda:LOCAL_RANK``).
        bytes_reduced, bytes_broadcast, calls: payload counters (bytes handed to the
            collectives by this rank since creation), for the communication figures.
    """

    def __init__(self, backend: str, device: torch.device):
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.backend = backend
        self.device = device
        self.bytes_reduced = 0
        self.bytes_broadcast = 0
        self.calls = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return (f"DistContext(rank={self.rank}, world_size={self.world_size}, "
                f"backend={self.backend!r}, device={str(self.device)!r})")

    # ------------------------------------------------------------------ data
    def shard(self, obs):
        """This rank's share of ``obs`` (a :class:`dlrl.model.Observations`) as a new, sorted
        ``Observations`` on the same device (the shard rule is in the module doc).

        Only the sparse form is kept (a dense ``X`` is dropped: it would hold every entry).
        Every rank must pass the same entries; a rank may be left with no entry only when
        there are fewer entries than ranks, which is refused.
        """
        from .model import Observations  # model imports this module

        for name in ("rows", "cols", "values", "shape"):
            if not hasattr(obs, name):
                raise TypeError(f"obs: expected a dlrl.model.Observations (rows, cols, values, shape), "
                                f"got {type(obs).__name__} without {name!r}")
        nnz = int(obs.values.numel())
        if nnz < self.world_size:
            raise ValueError(f"obs: expected at least world_size={self.world_size} observed entries to "
                             f"shard, got {nnz}")
        idx = shard_index(obs.rows, obs.cols, obs.values, obs.shape, self.rank, self.world_size)
        part = Observations(obs.rows[idx], obs.cols[idx], obs.values[idx], tuple(obs.shape))
        return part.sorted()

    # ------------------------------------------------------------------ collectives
    def all_reduce_(self, tensors: Sequence[Optional[torch.Tensor]]) -> Sequence[Optional[torch.Tensor]]:
        """Sum every tensor over the ranks, in place. ``None`` entries are skipped (they must
        be ``None`` on every rank, as for parameters without a gradient). Tensors of one
        dtype and device travel in one flattened call. Returns ``tensors``."""
        self._collective(tensors, "all_reduce")
        return tensors

    def broadcast_(self, tensors: Sequence[Optional[torch.Tensor]], src: int = 0):
        """Overwrite every tensor with rank ``src``'s copy, in place (one flattened call per
        dtype and device; ``None`` skipped as in :meth:`all_reduce_`). Returns ``tensors``."""
        if not 0 <= int(src) < self.world_size:
            raise ValueError(f"src: expected a rank in [0, {self.world_size}), got {src}")
        self._collective(tensors, "broadcast", int(src))
        return tensors

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def _collective(self, tensors, op, src=0):
        if isinstance(tensors, torch.Tensor):
            raise TypeError("tensors: expected a list of tensors, got a single tensor (wrap it in a list)")
        tensors = list(tensors)
        groups = {}
        for k, t in enumerate(tensors):
            if t is None:
                continue
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"tensors[{k}]: expected a tensor or None, got {type(t).__name__}")
            if t.layout != torch.strided:
                raise TypeError(f"tensors[{k}]: expected a dense (strided) tensor, got layout {t.layout}")
            groups.setdefault((t.dtype, t.device), []).append(t)
        for ts in groups.values():
            if len(ts) == 1 and ts[0].is_contiguous():
                flat = ts[0]
            else:
                flat = torch.cat([t.reshape(-1) for t in ts])
            nbytes = flat.numel() * flat.element_size()
            self.calls += 1
            if op == "all_reduce":
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
                self.bytes_reduced += nbytes
            else:
                dist.broadcast(flat, src=src)
                self.bytes_broadcast += nbytes
            if flat is not ts[0]:
                offset = 0
                for t in ts:
                    n = t.numel()
                    t.copy_(flat[offset:offset + n].view_as(t))
                    offset += n

    def reset_counters(self) -> None:
        self.bytes_reduced = self.bytes_broadcast = self.calls = 0


def _init_process_group() -> tuple[str, torch.device]:
    global _OWN_GROUP
    if dist.is_initialized():  # the caller's group: use it as it is
        if "nccl" in str(dist.get_backend()) and torch.cuda.is_available():
            return "nccl", torch.device("cuda", torch.cuda.current_device())
        return "gloo", torch.device("cpu")
    _OWN_GROUP = True
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        dist.init_process_group(backend="cpu:gloo,cuda:nccl", device_id=device)
        return "nccl", device
    dist.init_process_group(backend="gloo", timeout=datetime.timedelta(minutes=30))
    return "gloo", torch.device("cpu")


def _destroy() -> None:
    global _CONTEXT, _OWN_GROUP
    if _OWN_GROUP and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # pragma: no cover - teardown at interpreter exit
            pass
    _CONTEXT, _OWN_GROUP = None, False


def context(distributed="auto") -> Optional[DistContext]:
    """The distributed context of this process, or ``None`` to run alone.

    ``"auto"``: a context when the environment says ``WORLD_SIZE > 1`` (``torchrun`` with
    several processes, or a process group the caller already initialised with more than one
    rank), else ``None``. ``True``: a context (even for one process); an error when there is
    no ``torchrun`` environment. ``False``/``None``: ``None``.

    The process group is initialised on the first call and reused afterwards (an existing
    group initialised by the caller is used as it is).
    """
    global _CONTEXT
    if distributed is None or distributed is False:
        return None
    if not (distributed is True or distributed == "auto"):
        raise ValueError(f"distributed: expected True, False or 'auto', got {distributed!r}")
    if _CONTEXT is not None and dist.is_initialized():
        return _CONTEXT
    if distributed == "auto":
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else _env_world_size()
        if world <= 1:
            return None
    if not dist.is_available():
        raise RuntimeError("distributed: this PyTorch build has no torch.distributed")
    if not dist.is_initialized():
        missing = [k for k in _ENV if k not in os.environ]
        if missing:
            raise RuntimeError(
                f"distributed=True: expected a torchrun environment ({', '.join(_ENV)}), missing "
                f"{', '.join(missing)}; launch with `torchrun --nproc_per_node N ...`"
            )
    backend, device = _init_process_group()
    _CONTEXT = DistContext(backend, device)
    atexit.register(_destroy)
    return _CONTEXT


def is_main() -> bool:
    """True when this process should write files: not distributed, or rank 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    try:
        return int(os.environ.get("RANK", "0")) == 0
    except ValueError:
        return True
