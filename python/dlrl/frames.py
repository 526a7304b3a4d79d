"""Ratings in a pandas DataFrame (user / item / rating columns, arbitrary ids) as DLRL input.

``from_dataframe`` maps the ids to row / column indices (sorted unique ids, so the same frame
always gives the same indices) and returns the maps, so predictions can be asked for by id:

>>> rows, cols, values, shape, user_ids, item_ids = from_dataframe(df)   # doctest: +SKIP
>>> model = DLRL(shape); model.fit(rows=rows, cols=cols, values=values)  # doctest: +SKIP
>>> r, c = to_indices(["alice"], ["matrix"], user_ids, item_ids)         # doctest: +SKIP
"""
from __future__ import annotations

import numpy as np
import torch


def from_dataframe(df, user: str = "user", item: str = "item", rating: str = "rating"):
    """``(rows, cols, values, shape, user_ids, item_ids)`` from a DataFrame's three columns.

    rows / cols: int64 tensors of indices; values: float64 tensor; shape: (n_users, n_items);
    user_ids[k] / item_ids[k]: the original id of row / column k (numpy arrays).
    """
    cols_present = list(getattr(df, "columns", []))
    for arg, name in (("user", user), ("item", item), ("rating", rating)):
        if name not in cols_present:
            raise ValueError(f"{arg}: expected a column of the DataFrame, got {name!r} (columns: {cols_present})")
    if len(df) == 0:
        raise ValueError("df: expected at least one rating, got an empty DataFrame")
    try:
        vals = np.asarray(df[rating], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"rating: expected numeric values in column {rating!r}, got dtype {df[rating].dtype}") from None
    if not np.isfinite(vals).all():
        bad = int((~np.isfinite(vals)).sum())
        raise ValueError(f"rating: expected finite values, got {bad} NaN / inf in column {rating!r}")
    u = np.asarray(df[user])
    i = np.asarray(df[item])
    for arg, a in (("user", u), ("item", i)):
        if a.dtype == object and any(x is None or (isinstance(x, float) and np.isnan(x)) for x in a):
            raise ValueError(f"{arg}: expected no missing ids in column {user if arg == 'user' else item!r}")
    user_ids, rows = np.unique(u, return_inverse=True)
    item_ids, cols = np.unique(i, return_inverse=True)
    return (torch.as_tensor(rows.reshape(-1), dtype=torch.long), torch.as_tensor(cols.reshape(-1), dtype=torch.long),
            torch.tensor(vals), (len(user_ids), len(item_ids)), user_ids, item_ids)


def to_indices(users, items, user_ids, item_ids):
    """Row / column indices of the given ids (ValueError naming the first unknown id)."""
    out = []
    for arg, ids, ref in (("users", users, user_ids), ("items", items, item_ids)):
        ids = np.asarray(ids)
        pos = np.searchsorted(ref, ids)
        pos = np.clip(pos, 0, len(ref) - 1)
        bad = ref[pos] != ids
        if bad.any():
            raise ValueError(f"{arg}: id {ids[bad][0]!r} was not in the training data")
        out.append(torch.as_tensor(pos, dtype=torch.long))
    return tuple(out)
