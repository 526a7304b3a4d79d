"""Rating data for matrix completion: readers, splits and small helpers.

Everything here works on :class:`RatingData`, a COO triple ``(rows, cols, values)`` plus the
maps from the remapped indices back to the original user / item ids.

Id remapping
    Users and items are renumbered ``0..n-1`` in the order of their *sorted* unique original
    ids (numeric order when every id is an integer, string order otherwise), so MovieLens-100K
    user 1 becomes row 0 and the remap never depends on file order.  ``user_ids[k]`` is the
    original id of row ``k``.

Rating order
    The ratings themselves keep the order of the file (after duplicate handling, see
    :func:`load_ratings`), because the published split indexes ratings by file position.

Errors
    A missing file raises :class:`FileNotFoundError`; every other problem with a file raises a
    :class:`ValueError` whose message names the file and, for a bad line, its 1-based line
    number and text.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

__all__ = [
    "RatingData",
    "load_movielens",
    "download_movielens_100k",
    "load_ratings",
    "rating_scale",
    "split_random",
    "split_published",
    "split_canonical",
    "split_per_user",
    "train_val_split",
    "cold_start_counts",
    "MAX_DENSE_ENTRIES",
]

#: ``RatingData.to_dense`` refuses matrices with more entries than this.
MAX_DENSE_ENTRIES = 50_000_000

_DUPLICATE_POLICIES = ("last", "mean", "error")


# --------------------------------------------------------------------------------------------
# RatingData
# --------------------------------------------------------------------------------------------


@dataclass(repr=False, eq=False)
class RatingData:
    """Observed entries of an ``n_users x n_items`` rating matrix (COO format).

    Attributes:
        rows: ``(nnz,)`` int64 user indices in ``0..n_users-1``.
        cols: ``(nnz,)`` int64 item indices in ``0..n_items-1``.
        values: ``(nnz,)`` float32 ratings.
        n_users, n_items: matrix shape.
        user_ids, item_ids: original ids; ``user_ids[k]`` is the id of row ``k``.
        scale: ``(min, max)`` rating scale (declared, or inferred from the data).
        name: a label (file or data-set name).
    """

    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    n_users: int
    n_items: int
    user_ids: np.ndarray
    item_ids: np.ndarray
    scale: tuple
    name: str = ""

    def __post_init__(self) -> None:
        self.rows = torch.as_tensor(self.rows).to(torch.long).reshape(-1)
        self.cols = torch.as_tensor(self.cols).to(torch.long).reshape(-1)
        self.values = torch.as_tensor(self.values).to(torch.float32).reshape(-1)
        self.n_users = int(self.n_users)
        self.n_items = int(self.n_items)
        if not (self.rows.numel() == self.cols.numel() == self.values.numel()):
            raise ValueError(
                f"RatingData: rows, cols and values must have the same length, got "
                f"{self.rows.numel()}, {self.cols.numel()} and {self.values.numel()}"
            )
        self.user_ids = (
            np.arange(self.n_users) if self.user_ids is None else np.asarray(self.user_ids)
        )
        self.item_ids = (
            np.arange(self.n_items) if self.item_ids is None else np.asarray(self.item_ids)
        )
        if len(self.user_ids) != self.n_users:
            raise ValueError(
                f"RatingData: user_ids has {len(self.user_ids)} entries, n_users={self.n_users}"
            )
        if len(self.item_ids) != self.n_items:
            raise ValueError(
                f"RatingData: item_ids has {len(self.item_ids)} entries, n_items={self.n_items}"
            )
        if self.rows.numel():
            lo, hi = _min_max(self.rows)
            if lo < 0 or hi >= self.n_users:
                raise ValueError(f"RatingData: rows must lie in 0..{self.n_users - 1}")
            lo, hi = _min_max(self.cols)
            if lo < 0 or hi >= self.n_items:
                raise ValueError(f"RatingData: cols must lie in 0..{self.n_items - 1}")
        if self.scale is None:
            self.scale = rating_scale(self.values)
        self.scale = _check_scale(self.scale)

    # -- basic properties --------------------------------------------------------------------
    @property
    def nnz(self) -> int:
        """Number of observed ratings."""
        return int(self.values.numel())

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_users, n_items)``."""
        return (self.n_users, self.n_items)

    def __len__(self) -> int:
        return self.nnz

    def __repr__(self) -> str:
        return (
            f"RatingData(name={self.name!r}, n_users={self.n_users}, n_items={self.n_items}, "
            f"nnz={self.nnz}, scale={self.scale})"
        )

    # -- derived data ------------------------------------------------------------------------
    def subset(self, index: Any, name: str | None = None) -> "RatingData":
        """The ratings selected by ``index`` (int indices, a bool mask of length ``nnz`` or a
        slice), in the order given, with the same shape, id maps and scale."""
        idx = _as_index(index, self.nnz)
        return RatingData(
            rows=_take(self.rows, idx),
            cols=_take(self.cols, idx),
            values=_take(self.values, idx),
            n_users=self.n_users,
            n_items=self.n_items,
            user_ids=self.user_ids,
            item_ids=self.item_ids,
            scale=self.scale,
            name=self.name if name is None else name,
        )

    def to_dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(X, mask)``, both float32 ``(n_users, n_items)``: ``X`` holds the ratings and NaN
        where nothing is observed, ``mask`` is 1.0 where observed and 0.0 elsewhere.

        Raises ValueError when the matrix has more than ``MAX_DENSE_ENTRIES`` (5e7) entries.
        """
        entries = self.n_users * self.n_items
        if entries > MAX_DENSE_ENTRIES:
            raise ValueError(
                f"to_dense: {self.name or 'RatingData'} is {self.n_users} x {self.n_items} = "
                f"{entries} entries, more than the {MAX_DENSE_ENTRIES:.0e} allowed for a dense "
                f"matrix; keep it sparse (rows/cols/values)"
            )
        x = torch.full((self.n_users, self.n_items), float("nan"), dtype=torch.float32)
        mask = torch.zeros((self.n_users, self.n_items), dtype=torch.float32)
        x[self.rows, self.cols] = self.values
        mask[self.rows, self.cols] = 1.0
        return x, mask


def _min_max(t: torch.Tensor) -> tuple[int, int]:
    # numpy on CPU: a single-threaded pass, no intra-op thread wake-up (5 ms per call on a
    # busy 2-core machine against 0.05 ms)
    a = t.numpy() if t.device.type == "cpu" else t
    return int(a.min()), int(a.max())


def _take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    if t.device.type == "cpu" and idx.device.type == "cpu":
        return torch.from_numpy(t.numpy()[idx.numpy()])
    return t[idx]


def _as_index(index: Any, nnz: int) -> torch.Tensor:
    if isinstance(index, slice):
        return torch.arange(nnz)[index]
    idx = torch.as_tensor(np.asarray(index) if not isinstance(index, torch.Tensor) else index)
    if idx.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    if idx.dtype == torch.bool:
        if idx.numel() != nnz:
            raise ValueError(f"subset: bool mask has {idx.numel()} entries, data has nnz={nnz}")
        return idx.reshape(-1).nonzero().reshape(-1)
    if idx.is_floating_point() or idx.is_complex():
        raise ValueError(f"subset: index must hold integers or bools, got {idx.dtype}")
    idx = idx.to(torch.long).reshape(-1)
    if idx.numel() and (_min_max(idx)[0] < -nnz or _min_max(idx)[1] >= nnz):
        raise ValueError(f"subset: index out of range for nnz={nnz}")
    return idx


def _check_scale(scale: Any, what: str = "scale") -> tuple[float, float]:
    try:
        lo, hi = (float(s) for s in scale)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a (min, max) pair of numbers, got {scale!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
        raise ValueError(f"{what} must be a finite (min, max) pair with min <= max, got {scale!r}")
    return (lo, hi)


def rating_scale(data: Any, scale: Any = None) -> tuple[float, float]:
    """The ``(min, max)`` rating scale: ``scale`` checked when given, otherwise the min and max
    of the ratings in ``data`` (a RatingData, tensor, array or sequence)."""
    if scale is not None:
        return _check_scale(scale)
    values = data.values if isinstance(data, RatingData) else data
    values = torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor) else values)
    if values.numel() == 0:
        raise ValueError("rating_scale: cannot infer a scale from an empty set of ratings")
    values = values.to(torch.float64)
    return (float(values.min()), float(values.max()))


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def _detect_sep(line: str) -> str | None:
    """Separator of a data line: '::', tab, comma, ';' or '|', else any whitespace (None)."""
    for sep in ("::", "\t", ",", ";", "|"):
        if sep in line:
            return sep
    return None


def _is_number(text: str) -> bool:
    try:
        return bool(np.isfinite(float(text)))
    except ValueError:
        return False


def _normalise_sep(sep: str | None) -> str | None:
    if sep is None:
        return None
    if not isinstance(sep, str) or sep == "":
        raise ValueError(f"sep must be a non-empty string or None, got {sep!r}")
    return None if sep.strip() == "" else sep


def _parse_ids(tokens: list[str]) -> np.ndarray:
    """Integer ids when every token is a plain integer, stripped strings otherwise (so ids
    with leading zeros such as "007" stay distinct from "7")."""
    arr = np.char.strip(np.array(tokens))
    if not (np.char.startswith(arr, "0") & (np.char.str_len(arr) > 1)).any() and \
            not np.char.startswith(arr, "+").any():
        try:
            return arr.astype(np.int64)
        except (ValueError, OverflowError):
            pass
    return arr


class _Table:
    """Raw content of one ratings file: original ids, ratings, 1-based line numbers."""

    def __init__(self, path, users, items, values, lineno):
        self.path = path
        self.users = users
        self.items = items
        self.values = values
        self.lineno = lineno

    def line(self, lineno: int) -> str:
        """Text of physical line ``lineno`` (re-read from the file; only used for errors)."""
        with open(self.path, encoding="utf-8-sig", errors="replace") as fh:
            for k, line in enumerate(fh, 1):
                if k == lineno:
                    return line.strip()
        return ""


_CHUNK_BYTES = 32 << 20  # lines are parsed in chunks of about this many bytes


def _parse_chunk(path, lines, start, sep, cols, need, scale):
    """Parse ``lines`` (physical line ``start`` onwards): (users, items, values, lineno)."""
    cu, ci, cr = cols
    # Creating ~1e6 small lists triggers the cyclic GC again and again (5x slower); none of
    # these objects can form cycles, so pause it while splitting.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        fields = [line.split(sep, need) for line in lines]
    finally:
        if gc_was_enabled:
            gc.enable()
    lineno = np.arange(start, start + len(lines), dtype=np.int64)
    lens = np.fromiter(map(len, fields), dtype=np.int64, count=len(fields))
    short = np.flatnonzero(lens < need)
    if short.size:
        blank = np.array([not lines[k].strip() for k in short], dtype=bool)
        if not blank.all():
            k = int(short[~blank][0])
            raise ValueError(
                f"{path}: line {k + start}: malformed line, expected at least {need} fields "
                f"separated by {_sep_name(sep)}, got {len(fields[k])}: {lines[k].strip()!r}"
            )
        keep = np.ones(len(fields), dtype=bool)
        keep[short] = False
        fields = [f for f, kp in zip(fields, keep) if kp]
        lineno = lineno[keep]
    if not fields:
        return None
    rtok = [f[cr] for f in fields]
    try:
        values = np.array(rtok, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
    except ValueError:
        bad = np.array([k for k, t in enumerate(rtok) if not _is_number(t)], dtype=np.int64)
        if not bad.size:
            values = np.array([float(t) for t in rtok], dtype=np.float64)
    if bad.size:
        k = int(bad[0])
        ln = int(lineno[k])
        raise ValueError(
            f"{path}: line {ln}: malformed line, rating {rtok[k].strip()!r} is not a finite "
            f"number: {lines[ln - start].strip()!r}"
        )
    if scale is not None:
        lo, hi = scale
        out = np.flatnonzero((values < lo) | (values > hi))
        if out.size:
            k = int(out[0])
            ln = int(lineno[k])
            raise ValueError(
                f"{path}: line {ln}: rating {values[k]:g} is outside the declared scale "
                f"[{lo:g}, {hi:g}]: {lines[ln - start].strip()!r}"
            )
    users = _parse_ids([f[cu] for f in fields])
    items = _parse_ids([f[ci] for f in fields])
    for what, ids in (("user", users), ("item", items)):
        if ids.dtype.kind == "U":
            empty = np.flatnonzero(np.char.str_len(ids) == 0)
            if empty.size:
                ln = int(lineno[int(empty[0])])
                raise ValueError(
                    f"{path}: line {ln}: malformed line, empty {what} id: "
                    f"{lines[ln - start].strip()!r}"
                )
    return users, items, values, lineno


def _first_nonblank(lines) -> int | None:
    return next((k for k, line in enumerate(lines) if line.strip()), None)


# --------------------------------------------------------------------------------------------
# Fast path: plain numeric files parsed by numpy, no Python work per line
# --------------------------------------------------------------------------------------------
#
# MovieLens-style files (integer ids, decimal ratings, one separator, no blank lines) are
# parsed by vectorised numpy on the raw bytes: ML-100K in ~10 ms instead of ~0.4 s. Anything
# outside that domain (string or zero-padded ids, '+' signs, exponents, spaces, blank lines,
# short lines, bad or out-of-scale ratings, ...) returns None and the general parser above
# reads the file, so results and error messages are exactly the general parser's.

_FAST_SEPS = {"\t": 9, ",": 44, ";": 59, "|": 124, "::": 9}
_FAST_BLOCK = 16 << 20  # bytes per vectorised block (bounds the temporaries)
_DIGITS = np.zeros(256, dtype=bool)
_DIGITS[48:58] = True


def _fast_ints(arr, start, end):
    """int64 values of the fields arr[start:end] (optional '-', then 1..18 digits, no zero
    padding), or None when a field is anything else."""
    neg = arr[np.minimum(start, len(arr) - 1)] == 45
    s = start + neg
    length = end - s
    if length.size == 0 or length.min() < 1 or length.max() > 18:
        return None
    # "0" alone is an id; "007" is a string id for the general parser (kept apart from "7")
    if ((arr[s] == 48) & (length > 1)).any():
        return None
    val = np.zeros(len(s), dtype=np.int64)
    for j in range(int(length.max())):
        active = j < length
        c = arr[np.where(active, s + j, s)]
        if not (_DIGITS[c] | ~active).all():
            return None
        val[active] = val[active] * 10 + (c[active] - 48)
    return np.where(neg, -val, val)


def _fast_floats(arr, start, end):
    """float64 values of the fields arr[start:end] (optional '-', digits with at most one '.',
    1..15 digits so that the value is one correctly rounded division), or None."""
    neg = arr[np.minimum(start, len(arr) - 1)] == 45
    s = start + neg
    length = end - s
    if length.size == 0 or length.min() < 1 or length.max() > 16:
        return None
    num = np.zeros(len(s), dtype=np.int64)
    ndig = np.zeros(len(s), dtype=np.int64)
    frac = np.zeros(len(s), dtype=np.int64)
    ndot = np.zeros(len(s), dtype=np.int64)
    for j in range(int(length.max())):
        active = j < length
        c = arr[np.where(active, s + j, s)]
        dot = active & (c == 46)
        dig = active & _DIGITS[c]
        if not (dot | dig | ~active).all():
            return None
        ndot += dot
        frac += dig & (ndot > 0)
        ndig += dig
        num = np.where(dig, num * 10 + (c.astype(np.int64) - 48), num)
    if ndot.max() > 1 or ndig.min() < 1 or ndig.max() > 15:
        return None
    val = num / np.power(10.0, frac)  # both exact: one rounding, as float() does
    return np.where(neg, -val, val)


def _fast_block(arr, sepb, cols, need):
    """(users, items, values) of a block of whole lines (ends with a newline), or None."""
    delim = np.flatnonzero((arr == sepb) | (arr == 10))
    is_nl = arr[delim] == 10
    n_fields_total = len(delim)
    line_first = np.flatnonzero(np.concatenate(([True], is_nl[:-1])))  # first field of each line
    n_fields = np.diff(np.append(line_first, n_fields_total))
    if n_fields.min() < need:
        return None
    starts = np.concatenate(([0], delim[:-1] + 1))
    out = []
    for k, c in enumerate(cols):
        f = line_first + c
        parse = _fast_floats if k == 2 else _fast_ints
        v = parse(arr, starts[f], delim[f])
        if v is None:
            return None
        out.append(v)
    return out


def _read_table_fast(path, sep, header_mode, n_skip, cols, need, scale):
    """The file as a _Table when it is in the fast path's domain (see above), else None."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if b"\r" in data:
        if data.count(b"\r") != data.count(b"\r\n"):
            return None
        data = data.replace(b"\r\n", b"\n")
    if not data or data.startswith(b"\n"):
        return None
    skipped = 0  # physical lines before the data
    if n_skip:
        pos = 0
        for _ in range(n_skip):
            pos = data.find(b"\n", pos) + 1
            if pos == 0:
                return None
        data, skipped = data[pos:], n_skip
        if not data or data.startswith(b"\n"):
            return None
    first_end = data.find(b"\n")
    first = (data if first_end < 0 else data[:first_end]).decode("utf-8", errors="replace")
    if not first.strip():
        return None
    if header_mode is not None:
        fields = first.strip().split(sep if sep is not None else _detect_sep(first.strip()))
        is_header = header_mode is True or (len(fields) >= need and not _is_number(fields[cols[2]]))
        if is_header:
            if first_end < 0:
                return None
            data, skipped = data[first_end + 1:], skipped + 1
    if not data or data.startswith(b"\n") or b"\n\n" in data:
        return None  # blank lines: the general parser skips them and keeps line numbers
    if sep is None:  # detected from the first data line, as the general parser does
        sep = _detect_sep(data[:data.find(b"\n")].decode("utf-8", errors="replace").strip())
    if sep not in _FAST_SEPS:
        return None
    if sep == "::":
        if b"\t" in data:
            return None
        data = data.replace(b"::", b"\t")
    if not data.endswith(b"\n"):
        data += b"\n"
    sepb = _FAST_SEPS[sep]
    # only the id and rating fields are read (and checked character by character), as the
    # general parser ignores the other fields
    arr = np.frombuffer(data, dtype=np.uint8)
    parts = []
    pos = 0
    while pos < len(arr):
        end = data.find(b"\n", min(pos + _FAST_BLOCK, len(arr) - 1)) + 1
        block = arr[pos:end]
        part = _fast_block(block, sepb, cols, need)
        if part is None:
            return None
        parts.append(part)
        pos = end
    users, items, values = (np.concatenate(p) for p in zip(*parts))
    if scale is not None and ((values < scale[0]) | (values > scale[1])).any():
        return None  # the general parser names the line
    lineno = np.arange(skipped + 1, skipped + 1 + len(values), dtype=np.int64)
    return _Table(path, users, items, values, lineno)


def _read_table(path, sep, header, columns, scale) -> _Table:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"ratings file not found: {path}")
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, expected a ratings file")
    try:
        cols = tuple(int(c) for c in columns)
    except (TypeError, ValueError):
        raise ValueError(f"columns must be three column indices, got {columns!r}") from None
    if len(cols) != 3 or min(cols) < 0 or len(set(cols)) != 3:
        raise ValueError(
            f"columns must be three distinct non-negative indices (user, item, rating), "
            f"got {columns!r}"
        )
    cr = cols[2]
    need = max(cols) + 1
    if scale is not None:
        scale = _check_scale(scale)
    sep = _normalise_sep(sep)
    sep_known = sep is not None

    if header is None or header is False:
        header_mode, n_skip = None, 0
    elif header is True or header == "infer":
        header_mode, n_skip = header, 0
    elif isinstance(header, (int, np.integer)) and header >= 0:
        header_mode, n_skip = None, int(header)
    else:
        raise ValueError(f"header must be 'infer', True, False or a line count, got {header!r}")

    fast = _read_table_fast(path, sep, header_mode, n_skip, cols, need, scale)
    if fast is not None:
        return fast

    parts = []
    start = 1  # physical line number of lines[0]
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        while True:
            lines = fh.readlines(_CHUNK_BYTES)
            if not lines:
                break
            if n_skip:
                drop = min(n_skip, len(lines))
                lines, start, n_skip = lines[drop:], start + drop, n_skip - drop
            if header_mode is not None:
                k = _first_nonblank(lines)
                if k is None:
                    start += len(lines)
                    continue
                if header_mode is True:
                    is_header = True
                else:
                    line = lines[k].strip()
                    fields = line.split(sep if sep_known else _detect_sep(line))
                    is_header = len(fields) >= need and not _is_number(fields[cr])
                header_mode = None
                if is_header:
                    lines, start = lines[k + 1:], start + k + 1
            if not sep_known:
                k = _first_nonblank(lines)
                if k is None:
                    start += len(lines)
                    continue
                sep, sep_known = _detect_sep(lines[k].strip()), True
            part = _parse_chunk(path, lines, start, sep, cols, need, scale)
            if part is not None:
                parts.append(part)
            start += len(lines)
    if not parts:
        raise ValueError(f"{path}: empty dataset (the file contains no ratings)")
    users, items, values, lineno = (list(p) for p in zip(*parts))
    return _Table(
        path,
        _concat_ids(users),
        _concat_ids(items),
        np.concatenate(values),
        np.concatenate(lineno),
    )


def _concat_ids(chunks: list[np.ndarray]) -> np.ndarray:
    if any(c.dtype.kind != "i" for c in chunks):
        chunks = [c.astype(str) for c in chunks]
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


def _sep_name(sep: str | None) -> str:
    return "whitespace" if sep is None else repr(sep)


def _id_map(*arrays: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sorted unique ids over ``arrays`` and each array remapped to indices into them."""
    if any(a.dtype.kind != "i" for a in arrays):
        arrays = tuple(a.astype(str) for a in arrays)
    sizes = [len(a) for a in arrays]
    allids = np.concatenate(arrays)
    lo = int(allids.min()) if allids.dtype.kind == "i" and allids.size else 0
    span = int(allids.max()) - lo + 1 if allids.dtype.kind == "i" and allids.size else -1
    if 0 < span <= 4 * allids.size + (1 << 20):
        # integer ids in a compact range (MovieLens): a counting pass instead of a sort
        present = np.bincount(allids - lo, minlength=span) > 0
        ids = np.flatnonzero(present) + lo
        inverse = (np.cumsum(present) - 1)[allids - lo]
    else:
        ids, inverse = np.unique(allids, return_inverse=True)
    inverse = inverse.reshape(-1)
    parts = np.split(inverse, np.cumsum(sizes)[:-1])
    return ids, parts


def _resolve_duplicates(table: _Table, rows, cols, n_items, policy, user_ids, item_ids):
    """Apply the duplicate policy; returns (rows, cols, values) in file order."""
    values = table.values
    key = rows.astype(np.int64) * np.int64(max(n_items, 1)) + cols
    cells = len(user_ids) * max(n_items, 1)
    if cells <= 8 * len(key) + (1 << 22) and np.bincount(key, minlength=cells).max(initial=0) <= 1:
        return rows, cols, values  # no pair twice (a counting pass; the sort below finds them)
    order = np.argsort(key, kind="stable")
    skey = key[order]
    same = skey[1:] == skey[:-1]
    if not same.any():
        return rows, cols, values
    if policy == "error":
        later = order[1:][same]
        earlier = order[:-1][same]
        j = int(np.argmin(later))
        a, b = int(earlier[j]), int(later[j])
        la, lb = int(table.lineno[a]), int(table.lineno[b])
        raise ValueError(
            f"{table.path}: duplicate rating for user {user_ids[rows[b]]} item "
            f"{item_ids[cols[b]]} on lines {la} and {lb} (duplicates='error'; pass "
            f"duplicates='last' or 'mean' to accept it): {table.line(la)!r} and "
            f"{table.line(lb)!r}"
        )
    starts = np.concatenate(([True], ~same))
    group = np.cumsum(starts) - 1  # group of each sorted position
    if policy == "last":
        ends = np.concatenate((~same, [True]))
        keep = np.sort(order[ends])
        return rows[keep], cols[keep], values[keep]
    # mean: the average of the group, placed where the pair first appears.
    n_groups = int(group[-1]) + 1
    sums = np.bincount(group, weights=values[order], minlength=n_groups)
    counts = np.bincount(group, minlength=n_groups)
    first = order[starts]
    mean = np.empty(len(values), dtype=np.float64)
    mean[first] = sums / counts
    keep = np.sort(first)
    return rows[keep], cols[keep], mean[keep]


def _build(table: _Table, user_ids, item_ids, rows, cols, scale, duplicates, name) -> RatingData:
    rows, cols, values = _resolve_duplicates(
        table, rows, cols, len(item_ids), duplicates, user_ids, item_ids
    )
    if scale is None:
        scale = (float(values.min()), float(values.max()))
    return RatingData(
        rows=torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)),
        cols=torch.from_numpy(np.ascontiguousarray(cols, dtype=np.int64)),
        values=torch.from_numpy(values.astype(np.float32)),
        n_users=len(user_ids),
        n_items=len(item_ids),
        user_ids=user_ids,
        item_ids=item_ids,
        scale=scale,
        name=name,
    )


def _check_duplicates_policy(duplicates: str) -> None:
    if duplicates not in _DUPLICATE_POLICIES:
        raise ValueError(
            f"duplicates must be one of {_DUPLICATE_POLICIES}, got {duplicates!r}"
        )


def load_ratings(
    path: str | os.PathLike,
    sep: str | None = None,
    header: Any = "infer",
    columns: Sequence[int] = (0, 1, 2),
    scale: Sequence[float] | None = None,
    duplicates: str = "last",
    name: str | None = None,
) -> RatingData:
    """Read a "user item rating" text file into a :class:`RatingData`.

    Args:
        path: the file.
        sep: field separator; ``None`` detects it from the first data line ('::', tab,
            comma, ';', '|', else any run of whitespace).  A whitespace-only ``sep`` means
            "any whitespace".
        header: ``"infer"`` (the first non-blank line is a header when its rating field is
            not a number), ``True`` (skip the first non-blank line), ``False``/``None`` (no
            header) or an int (skip that many physical lines).
        columns: 0-based indices of the user, item and rating fields; other fields (e.g. a
            timestamp) are ignored.
        scale: declared ``(min, max)``; a rating outside it is an error.  ``None`` infers the
            scale from the data.
        duplicates: what a repeated (user, item) pair does -- ``"last"`` (default): the
            rating on the last line wins, kept at that line's position; ``"mean"``: the
            ratings are averaged, kept at the first line's position; ``"error"``: raise a
            ValueError naming both line numbers.  A pair is never counted twice.
        name: label of the result (default: the file name).

    Ids are remapped to ``0..n-1`` in sorted order of the original ids; ratings keep file
    order.  Blank lines are skipped.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: empty data set, malformed line (too few fields, non-numeric rating),
            rating outside ``scale`` or a duplicate under ``duplicates="error"``; the message
            names the file and the 1-based line number and text.
    """
    _check_duplicates_policy(duplicates)
    table = _read_table(path, sep, header, columns, scale)
    user_ids, (rows,) = _id_map(table.users)
    item_ids, (cols,) = _id_map(table.items)
    return _build(
        table, user_ids, item_ids, rows, cols, scale, duplicates,
        Path(path).name if name is None else name,
    )


# --------------------------------------------------------------------------------------------
# MovieLens
# --------------------------------------------------------------------------------------------

ML_100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"

# variant -> (file name, sep, header, scale)
_ML_FORMATS = {
    "ml-100k": ("u.data", "\t", False, (1.0, 5.0)),
    "ml-1m": ("ratings.dat", "::", False, (1.0, 5.0)),
    "ml-10m": ("ratings.dat", "::", False, (0.5, 5.0)),
    "ml-20m": ("ratings.csv", ",", "infer", (0.5, 5.0)),
    "ml-25m": ("ratings.csv", ",", "infer", (0.5, 5.0)),
    "ml-32m": ("ratings.csv", ",", "infer", (0.5, 5.0)),
    "ml-latest": ("ratings.csv", ",", "infer", (0.5, 5.0)),
    "ml-latest-small": ("ratings.csv", ",", "infer", (0.5, 5.0)),
}
_VARIANT_RE = re.compile(
    r"ml-?(100k|10m(?:100k)?|1m|20m|25m|32m|latest-small|latest)(?![0-9a-z])"
)


def _normalise_variant(variant: str) -> str:
    v = str(variant).strip().lower().replace("_", "-")
    v = v[3:] if v.startswith("ml-") else v[2:] if v.startswith("ml") else v
    if v.startswith("10m"):  # "ml-10M100K"
        v = "10m"
    v = "ml-" + v
    if v not in _ML_FORMATS:
        raise ValueError(
            f"variant must be one of {sorted(k[3:] for k in _ML_FORMATS)}, got {variant!r}"
        )
    return v


def _variant_from_path(path: Path) -> str | None:
    for part in reversed(path.resolve().parts):
        m = _VARIANT_RE.search(part.lower())
        if m:
            return "ml-" + ("10m" if m.group(1).startswith("10m") else m.group(1))
    return None


def _cache_dir(cache_dir=None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("DLRL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "dlrl"


def download_movielens_100k(cache_dir: str | os.PathLike | None = None) -> Path:
    """The ML-100K folder under ``cache_dir`` (default ``$DLRL_CACHE`` or ``~/.cache/dlrl``),
    downloading and unpacking the GroupLens zip first when it is not there yet."""
    root = _cache_dir(cache_dir)
    target = root / "ml-100k"
    if (target / "u.data").is_file():
        return target
    import urllib.error
    import urllib.request

    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".zip", dir=root)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(ML_100K_URL, timeout=60) as resp:
                    shutil.copyfileobj(resp, out)
            except (urllib.error.URLError, OSError) as exc:
                raise ConnectionError(
                    f"could not download MovieLens-100K from {ML_100K_URL} ({exc}); download "
                    f"and unzip it yourself and pass its folder to load_movielens(path)"
                ) from exc
        with zipfile.ZipFile(tmp) as zf:
            base = root.resolve()
            for member in zf.namelist():
                dest = (root / member).resolve()
                if base not in dest.parents and dest != base:
                    raise ValueError(f"{ML_100K_URL}: unsafe path in zip: {member!r}")
            zf.extractall(root)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if not (target / "u.data").is_file():
        raise ValueError(f"{ML_100K_URL}: the zip has no ml-100k/u.data")
    return target


def _find_movielens_file(folder: Path, variant: str | None) -> Path | None:
    names = [_ML_FORMATS[variant][0]] if variant else ["u.data", "ratings.dat", "ratings.csv"]
    for name in names:
        if (folder / name).is_file():
            return folder / name
    # One level down, e.g. the folder a zip was unpacked into.
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        for name in names:
            if (sub / name).is_file():
                return sub / name
    return None


def load_movielens(
    path: str | os.PathLike | None = None,
    variant: str | None = None,
    duplicates: str = "last",
    cache_dir: str | os.PathLike | None = None,
) -> RatingData:
    """Load a MovieLens ratings file.

    Args:
        path: a MovieLens folder or ratings file.  ML-100K is ``u.data`` (tab separated
            ``user item rating timestamp``; the canonical ``u1.base`` etc. read the same
            way), ML-1M/10M ``ratings.dat`` (``::`` separated), ML-20M/25M ``ratings.csv``
            (header ``userId,movieId,rating,timestamp``).  ``None`` downloads ML-100K into
            the cache (see :func:`download_movielens_100k`).
        variant: ``"100k"``, ``"1m"``, ``"10m"``, ``"20m"``, ``"25m"`` ...; by default it is
            read from the folder name (``ml-1m`` ...) and otherwise from the file found.
            For a ``ratings.dat`` in a folder with no telling name, fewer than 5 million
            ratings mean ML-1M (scale 1..5), more ML-10M (0.5..5).
        duplicates: see :func:`load_ratings`.

    Returns a RatingData named after the variant with the MovieLens scale ((1, 5) for
    100K/1M, (0.5, 5) for the others); ids are the sorted original ids.
    """
    if path is None:
        path = download_movielens_100k(cache_dir)
        variant = variant or "100k"
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"MovieLens path not found: {path}")
    variant = _normalise_variant(variant) if variant is not None else None
    if path.is_dir():
        file = _find_movielens_file(path, variant)
        if file is None:
            wanted = _ML_FORMATS[variant][0] if variant else "u.data, ratings.dat or ratings.csv"
            raise FileNotFoundError(f"{path}: no MovieLens ratings file ({wanted}) in this folder")
    else:
        file = path
    kind = _file_kind(file)
    if variant is not None:
        if kind is not None and _kind_of(variant) != kind:
            raise ValueError(
                f"{file}: is not a ratings file of MovieLens variant {variant!r} "
                f"(expected {_ML_FORMATS[variant][0]})"
            )
        kind = _kind_of(variant)
    elif kind is None:
        raise ValueError(
            f"{file}: cannot tell the MovieLens format from the file name; pass variant="
        )
    else:
        guess = _variant_from_path(file)
        variant = guess if guess is not None and _kind_of(guess) == kind else None
        if kind == "100k":
            variant = "ml-100k"

    _check_duplicates_policy(duplicates)
    if variant is None and kind == "dat":  # ratings.dat of unknown size: ML-1M or ML-10M
        table = _read_table(file, "::", False, (0, 1, 2), (0.5, 5.0))
        v = table.values
        variant = "ml-1m" if len(v) < 5_000_000 and v.min() >= 1.0 else "ml-10m"
        name = variant
    else:
        fmt = variant if variant is not None else "ml-25m"
        _, sep, header, scale = _ML_FORMATS[fmt]
        table = _read_table(file, sep, header, (0, 1, 2), scale)
        name = variant if variant is not None else "movielens"
        variant = fmt
    if file.name != _ML_FORMATS[variant][0]:
        name = f"{name}/{file.name}"
    user_ids, (rows,) = _id_map(table.users)
    item_ids, (cols,) = _id_map(table.items)
    return _build(
        table, user_ids, item_ids, rows, cols, _ML_FORMATS[variant][3], duplicates, name
    )


def _kind_of(variant: str) -> str:
    return {"u.data": "100k", "ratings.dat": "dat", "ratings.csv": "csv"}[_ML_FORMATS[variant][0]]


def _file_kind(file: Path) -> str | None:
    fname = file.name.lower()
    if fname == "u.data" or fname.endswith((".base", ".test")):
        return "100k"
    if fname.endswith(".dat"):
        return "dat"
    if fname.endswith(".csv"):
        return "csv"
    return None


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def _check_fraction(value: float, what: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number in (0, 1), got {value!r}") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"{what} must be in (0, 1), got {value!r}")
    return value


def _random_split(data: RatingData, fraction: float, seed: int, what: str, names):
    fraction = _check_fraction(fraction, what)
    if data.nnz < 2:
        raise ValueError(f"{what}: need at least 2 ratings to split, {data.name!r} has {data.nnz}")
    n_out = int(round(fraction * data.nnz))
    n_out = min(max(n_out, 1), data.nnz - 1)
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(data.nnz, generator=gen)
    out_idx = perm[:n_out].sort().values
    in_idx = perm[n_out:].sort().values
    return (
        data.subset(in_idx, name=f"{data.name}/{names[0]}"),
        data.subset(out_idx, name=f"{data.name}/{names[1]}"),
    )


def split_random(data: RatingData, test_fraction: float = 0.2, seed: int = 0):
    """``(train, test)``: a uniformly random ``round(test_fraction * nnz)`` ratings go to test.

    Both keep file order and the id maps of ``data``; the same seed gives the same split.
    """
    return _random_split(data, test_fraction, seed, "test_fraction", ("train", "test"))


def train_val_split(train: RatingData, val_fraction: float = 0.05, seed: int = 0):
    """``(train, val)``: hold out a random ``val_fraction`` of the training ratings, e.g. for
    early stopping (same rules as :func:`split_random`)."""
    return _random_split(train, val_fraction, seed, "val_fraction", ("train", "val"))


def split_published(data: RatingData):
    """``(train, test)`` of the published protocol: exactly what
    ``torch.manual_seed(2020); perm = torch.randperm(nnz)`` gives, with ``perm[:int(0.8*nnz)]``
    indexing the training ratings and the rest the test ratings (indices are file positions
    of ``data``; each part is in ``perm`` order, i.e. ``data[perm[:n_train]]``).

    A private generator seeded with 2020 is used, so the global torch RNG is left untouched;
    it draws the same permutation as the global one would.
    """
    if data.nnz < 2:
        raise ValueError(f"split_published: need at least 2 ratings, {data.name!r} has {data.nnz}")
    gen = torch.Generator().manual_seed(2020)
    perm = torch.randperm(data.nnz, generator=gen)
    n_train = int(0.8 * data.nnz)
    return (
        data.subset(perm[:n_train], name=f"{data.name}/train"),
        data.subset(perm[n_train:], name=f"{data.name}/test"),
    )


def split_canonical(folder: str | os.PathLike, k: int | str, duplicates: str = "last"):
    """``(train, test)`` from the ML-100K canonical files ``u{k}.base`` / ``u{k}.test``
    (``k`` in 1..5, ``"a"`` or ``"b"``) in ``folder``.

    Both files are read with one id map built from the union of their ids, so they share
    ``n_users``, ``n_items``, ``user_ids`` and ``item_ids``; the scale is (1, 5).
    """
    key = str(k).lower()
    if key not in ("1", "2", "3", "4", "5", "a", "b"):
        raise ValueError(f"k must be 1..5, 'a' or 'b', got {k!r}")
    _check_duplicates_policy(duplicates)
    folder = Path(folder)
    base_path, test_path = folder / f"u{key}.base", folder / f"u{key}.test"
    for p in (base_path, test_path):
        if not p.is_file():
            raise FileNotFoundError(f"canonical split file not found: {p}")
    scale = (1.0, 5.0)
    base = _read_table(base_path, "\t", False, (0, 1, 2), scale)
    test = _read_table(test_path, "\t", False, (0, 1, 2), scale)
    user_ids, (rb, rt) = _id_map(base.users, test.users)
    item_ids, (cb, ct) = _id_map(base.items, test.items)
    prefix = folder.name or "ml-100k"
    return (
        _build(base, user_ids, item_ids, rb, cb, scale, duplicates, f"{prefix}/{base_path.name}"),
        _build(test, user_ids, item_ids, rt, ct, scale, duplicates, f"{prefix}/{test_path.name}"),
    )


def split_per_user(data: RatingData, holdout: int | float = 1, seed: int = 0):
    """``(train, test)`` holding out, for every user, ``holdout`` random ratings (an int
    >= 1) or ``round(holdout * count)`` of them (a float in (0, 1)).

    Every user keeps at least one training rating: a user with ``count`` ratings gives at
    most ``count - 1`` to test (so users with a single rating stay entirely in train).
    Both parts keep file order; the same seed gives the same split.
    """
    bad = f"holdout must be an int >= 1 or a fraction in (0, 1), got {holdout!r}"
    if isinstance(holdout, (bool, np.bool_)):
        raise ValueError(bad)
    if isinstance(holdout, (int, np.integer)):
        if holdout < 1:
            raise ValueError(bad)
        as_count = True
    else:
        holdout = _check_fraction(holdout, "holdout")
        as_count = False
    rows = data.rows.numpy()
    counts = np.bincount(rows, minlength=data.n_users)
    if as_count:
        n_hold = np.minimum(int(holdout), np.maximum(counts - 1, 0))
    else:
        n_hold = np.minimum(np.floor(holdout * counts + 0.5).astype(np.int64),
                            np.maximum(counts - 1, 0))
    rng = np.random.default_rng(int(seed))
    order = np.lexsort((rng.random(data.nnz), rows))  # grouped by user, random within
    sorted_rows = rows[order]
    group_start = np.searchsorted(sorted_rows, sorted_rows, side="left")
    rank = np.arange(data.nnz) - group_start
    is_test = np.zeros(data.nnz, dtype=bool)
    is_test[order] = rank < n_hold[sorted_rows]
    return (
        data.subset(torch.from_numpy(np.flatnonzero(~is_test)), name=f"{data.name}/train"),
        data.subset(torch.from_numpy(np.flatnonzero(is_test)), name=f"{data.name}/test"),
    )


def cold_start_counts(train: RatingData, test: RatingData) -> dict:
    """How much of ``test`` is cold start (split parts must share id maps).

    Returns a dict: ``users`` / ``items`` -- test users / items with no training rating;
    ``ratings`` -- test ratings whose user or item has no training rating (a model can only
    predict those from biases or the global mean).
    """
    if train.shape != test.shape or not (
        np.array_equal(train.user_ids, test.user_ids)
        and np.array_equal(train.item_ids, test.item_ids)
    ):
        raise ValueError(
            f"cold_start_counts: train {train.name!r} {train.shape} and test {test.name!r} "
            f"{test.shape} do not share id maps; split them from one RatingData"
        )
    seen_u = torch.bincount(train.rows, minlength=train.n_users) > 0
    seen_i = torch.bincount(train.cols, minlength=train.n_items) > 0
    test_u = torch.bincount(test.rows, minlength=test.n_users) > 0
    test_i = torch.bincount(test.cols, minlength=test.n_items) > 0
    cold = ~seen_u[test.rows] | ~seen_i[test.cols]
    return {
        "users": int((test_u & ~seen_u).sum()),
        "items": int((test_i & ~seen_i).sum()),
        "ratings": int(cold.sum()),
    }
