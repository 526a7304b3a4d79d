"""Files are never lost: atomic writes, and checks on output paths *before* the work.

``atomic_write(path, writer)`` writes through a temporary file in the same folder, flushes and
fsyncs it, then ``os.replace``s it over ``path``: an interruption (Ctrl-C, a crash, a full
disk) leaves either the old file or the new one, never a half-written one.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path, writer, mode: str = "wb"):
    """Call ``writer(fileobj)`` on a temporary file beside ``path``, then move it into place."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt included: never leave the temporary behind
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def atomic_torch_save(obj, path):
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path, text: str):
    return atomic_write(path, lambda f: f.write(text), mode="w")


def check_output_path(path, name: str, inputs=(), force: bool = False):
    """Raise ValueError naming ``name`` when ``path`` cannot or must not be written.

    Refuses: an input file (``inputs``), an existing file unless ``force``, a folder, a missing
    or unwritable parent folder. Called before any training so no work is thrown away.
    """
    if path is None:
        return None
    p = Path(path)
    rp = p.resolve()
    for inp in inputs:
        if inp is not None and Path(inp).exists() and Path(inp).resolve() == rp:
            raise ValueError(f"{name}: {path} is an input of this run; refusing to write over it")
    if rp.is_dir():
        raise ValueError(f"{name}: {path} is a folder, expected a file path")
    if rp.exists() and not force:
        raise ValueError(f"{name}: {path} exists; pass --force (force=True) to overwrite it")
    parent = rp.parent
    if not parent.is_dir():
        raise ValueError(f"{name}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{name}: the folder {parent} is not writable")
    return p
