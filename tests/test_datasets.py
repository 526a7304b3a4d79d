"""Tests for dlrl.datasets: readers, error messages, id maps and splits."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dlrl.datasets import (
    RatingData,
    cold_start_counts,
    load_movielens,
    load_ratings,
    rating_scale,
    split_canonical,
    split_per_user,
    split_published,
    split_random,
    train_val_split,
)

ML100K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def triples(d: RatingData):
    """(original user, original item, rating) triples in data order."""
    return [
        (d.user_ids[r].item(), d.item_ids[c].item(), float(v))
        for r, c, v in zip(d.rows.tolist(), d.cols.tolist(), d.values.tolist())
    ]


SMALL = "10\t7\t4\t100\n3\t7\t2\t101\n10\t2\t5\t102\n25\t9\t1\t103\n3\t9\t3\t104\n"


# ------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------


def test_tab_file_ids_sorted_and_file_order_kept(tmp_path):
    d = load_ratings(write(tmp_path, "r.tsv", SMALL))
    assert d.nnz == 5 and len(d) == 5
    assert d.shape == (3, 3) and d.n_users == 3 and d.n_items == 3
    assert d.user_ids.tolist() == [3, 10, 25]  # sorted numerically, not by appearance
    assert d.item_ids.tolist() == [2, 7, 9]
    assert d.rows.tolist() == [1, 0, 1, 2, 0]
    assert d.cols.tolist() == [1, 1, 0, 2, 2]
    assert d.values.tolist() == [4.0, 2.0, 5.0, 1.0, 3.0]
    assert d.rows.dtype == torch.long and d.values.dtype == torch.float32
    assert d.scale == (1.0, 5.0)  # inferred
    assert d.name == "r.tsv"


def test_numeric_ids_sort_numerically_not_lexically(tmp_path):
    d = load_ratings(write(tmp_path, "r.txt", "9 1 3\n10 1 4\n100 2 5\n"))
    assert d.user_ids.tolist() == [9, 10, 100]
    assert d.user_ids.dtype.kind == "i"


def test_leading_zero_ids_stay_strings(tmp_path):
    d = load_ratings(write(tmp_path, "r.txt", "007 1 3\n7 1 4\n"))
    assert d.user_ids.tolist() == ["007", "7"] and d.n_users == 2


def test_string_ids(tmp_path):
    d = load_ratings(write(tmp_path, "r.csv", "bob,x1,3\nalice,x2,4\nbob,x2,5\n"))
    assert d.user_ids.tolist() == ["alice", "bob"]
    assert triples(d) == [("bob", "x1", 3.0), ("alice", "x2", 4.0), ("bob", "x2", 5.0)]


@pytest.mark.parametrize(
    "sep,text",
    [
        ("::", "1::5::3::978300760\n2::5::4::978300761\n1::6::1::978300762\n"),
        (",", "1,5,3\n2,5,4\n1,6,1\n"),
        ("\t", "1\t5\t3\n2\t5\t4\n1\t6\t1\n"),
        (" ", "1  5 3\n2 5   4\n 1 6 1 \n"),
        (";", "1;5;3\n2;5;4\n1;6;1\n"),
    ],
)
def test_separator_autodetect(tmp_path, sep, text):
    d = load_ratings(write(tmp_path, "r.dat", text))
    assert triples(d) == [(1, 5, 3.0), (2, 5, 4.0), (1, 6, 1.0)]
    d2 = load_ratings(write(tmp_path, "r2.dat", text), sep=sep)
    assert triples(d2) == triples(d)


def test_csv_with_header_inferred_and_explicit(tmp_path):
    text = "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n"
    p = write(tmp_path, "ratings.csv", text)
    d = load_ratings(p)
    assert triples(d) == [(1, 31, 2.5), (1, 1029, 3.0)]
    assert triples(load_ratings(p, header=True)) == triples(d)
    assert triples(load_ratings(p, header=1)) == triples(d)
    # header=False: the header line is data, and its rating is not a number
    with pytest.raises(ValueError, match=r"line 1\b.*'rating'"):
        load_ratings(p, header=False)


def test_header_infer_does_not_drop_numeric_first_line(tmp_path):
    d = load_ratings(write(tmp_path, "r.csv", "1,31,2.5\n2,31,3.0\n"))
    assert d.nnz == 2


def test_header_true_skips_first_line_even_if_numeric(tmp_path):
    d = load_ratings(write(tmp_path, "r.csv", "7,7,7\n1,31,2.5\n2,31,3.0\n"), header=True)
    assert d.nnz == 2 and 7 not in d.user_ids.tolist()


def test_columns_and_blank_lines(tmp_path):
    text = "\n100 3.5 u1 i1\n\n101 4.0 u2 i1\n   \n"
    d = load_ratings(write(tmp_path, "r.txt", text), columns=(2, 3, 1))
    assert triples(d) == [("u1", "i1", 3.5), ("u2", "i1", 4.0)]


def test_crlf_and_bom(tmp_path):
    p = tmp_path / "r.csv"
    p.write_bytes("\ufeffuser,item,rating\r\n1,2,3\r\n4,5,1\r\n".encode("utf-8"))
    d = load_ratings(p)
    assert triples(d) == [(1, 2, 3.0), (4, 5, 1.0)]


def test_declared_scale_kept(tmp_path):
    d = load_ratings(write(tmp_path, "r.txt", "1 1 2\n2 2 3\n"), scale=(1, 5))
    assert d.scale == (1.0, 5.0)
    assert rating_scale(d) == (2.0, 3.0)
    assert rating_scale(d, scale=(0.5, 5)) == (0.5, 5.0)


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    p = tmp_path / "nope.tsv"
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        load_ratings(p)
    with pytest.raises(FileNotFoundError, match="nope"):
        load_movielens(tmp_path / "nope")


def test_too_few_fields(tmp_path):
    p = write(tmp_path, "bad.tsv", "1\t2\t3\n4\t5\n6\t7\t1\n")
    with pytest.raises(ValueError) as e:
        load_ratings(p)
    msg = str(e.value)
    assert "bad.tsv" in msg and "line 2" in msg and "'4\\t5'" in msg
    assert "expected at least 3 fields" in msg


def test_too_few_fields_for_requested_columns(tmp_path):
    p = write(tmp_path, "bad.txt", "1 2 3 4\n1 3 3\n")
    with pytest.raises(ValueError, match=r"bad\.txt: line 2: .*at least 4 fields.*'1 3 3'"):
        load_ratings(p, columns=(0, 1, 3))


def test_non_numeric_rating(tmp_path):
    p = write(tmp_path, "bad.csv", "1,2,3\n1,3,4\n2,2,four\n")
    with pytest.raises(ValueError) as e:
        load_ratings(p)
    msg = str(e.value)
    assert "bad.csv" in msg and "line 3" in msg and "'four'" in msg and "2,2,four" in msg


@pytest.mark.parametrize("token", ["nan", "inf", ""])
def test_non_finite_or_empty_rating(tmp_path, token):
    p = write(tmp_path, "bad.csv", f"1,2,3\n1,3,{token}\n")
    with pytest.raises(ValueError, match=r"bad\.csv: line 2: .*not a finite number"):
        load_ratings(p)


def test_rating_outside_scale(tmp_path):
    p = write(tmp_path, "bad.tsv", "1\t1\t5\n1\t2\t1\n2\t1\t6\n")
    with pytest.raises(ValueError) as e:
        load_ratings(p, scale=(1, 5))
    msg = str(e.value)
    assert "bad.tsv" in msg and "line 3" in msg and "outside" in msg and "[1, 5]" in msg
    assert "2\\t1\\t6" in msg


def test_error_line_numbers_count_header_and_blank_lines(tmp_path):
    p = write(tmp_path, "bad.csv", "user,item,rating\n\n1,1,3\n\n1,2,x\n")
    with pytest.raises(ValueError, match=r"bad\.csv: line 5\b"):
        load_ratings(p)


def test_empty_file(tmp_path):
    for name, text in [("empty.txt", ""), ("blank.txt", "\n  \n"), ("hdr.csv", "u,i,rating\n")]:
        with pytest.raises(ValueError, match=re.escape(name) + ".*empty dataset"):
            load_ratings(write(tmp_path, name, text))


DUP = "1 1 2\n2 1 5\n1 1 4\n1 2 3\n"


def test_duplicates_last(tmp_path):
    d = load_ratings(write(tmp_path, "dup.txt", DUP))
    assert d.nnz == 3
    assert triples(d) == [(2, 1, 5.0), (1, 1, 4.0), (1, 2, 3.0)]  # last wins, at its line


def test_duplicates_mean(tmp_path):
    d = load_ratings(write(tmp_path, "dup.txt", DUP), duplicates="mean")
    assert triples(d) == [(1, 1, 3.0), (2, 1, 5.0), (1, 2, 3.0)]  # at first line


def test_duplicates_error_names_both_lines(tmp_path):
    with pytest.raises(ValueError) as e:
        load_ratings(write(tmp_path, "dup.txt", DUP), duplicates="error")
    msg = str(e.value)
    assert "dup.txt" in msg and "lines 1 and 3" in msg and "user 1 item 1" in msg
    assert "'1 1 2'" in msg and "'1 1 4'" in msg


def test_duplicates_error_reports_first_repeat(tmp_path):
    text = "5 5 1\n1 1 1\n2 2 2\n2 2 3\n1 1 4\n"
    with pytest.raises(ValueError, match="lines 3 and 4"):
        load_ratings(write(tmp_path, "dup.txt", text), duplicates="error")


def test_bad_arguments(tmp_path):
    p = write(tmp_path, "r.txt", SMALL)
    with pytest.raises(ValueError, match="duplicates"):
        load_ratings(p, duplicates="first")
    with pytest.raises(ValueError, match="columns"):
        load_ratings(p, columns=(0, 0, 2))
    with pytest.raises(ValueError, match="header"):
        load_ratings(p, header="yes")
    with pytest.raises(ValueError, match="scale"):
        load_ratings(p, scale=(5, 1))


# ------------------------------------------------------------------------------------------
# RatingData
# ------------------------------------------------------------------------------------------


def test_subset_and_to_dense(tmp_path):
    d = load_ratings(write(tmp_path, "r.tsv", SMALL))
    s = d.subset([4, 0])
    assert s.nnz == 2 and s.shape == d.shape
    assert s.user_ids is d.user_ids and s.item_ids is d.item_ids and s.scale == d.scale
    assert triples(s) == [(3, 9, 3.0), (10, 7, 4.0)]
    m = d.subset(torch.tensor([True, False, True, False, False]))
    assert triples(m) == [(10, 7, 4.0), (10, 2, 5.0)]
    assert d.subset(slice(1, 3)).nnz == 2
    with pytest.raises(ValueError, match="nnz=5"):
        d.subset([7])
    assert d.subset([]).nnz == 0 and d.subset(np.array([], dtype=int)).nnz == 0
    x, mask = d.to_dense()
    assert x.dtype == torch.float32 and mask.dtype == torch.float32 and x.shape == (3, 3)
    assert int(mask.sum()) == 5 and int(torch.isnan(x).sum()) == 4
    assert x[1, 0] == 5.0 and x[2, 2] == 1.0 and mask[2, 2] == 1.0 and mask[2, 0] == 0.0


def test_to_dense_refuses_huge():
    d = RatingData(
        rows=torch.tensor([0]), cols=torch.tensor([0]), values=torch.tensor([3.0]),
        n_users=100_000, n_items=1_000, user_ids=None, item_ids=None, scale=(1, 5),
        name="big",
    )
    with pytest.raises(ValueError, match=r"100000 x 1000"):
        d.to_dense()


def test_ratingdata_validation():
    with pytest.raises(ValueError, match="same length"):
        RatingData(torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([1.0]), 2, 1,
                   None, None, (1, 5))
    with pytest.raises(ValueError, match="rows"):
        RatingData(torch.tensor([2]), torch.tensor([0]), torch.tensor([1.0]), 2, 1,
                   None, None, (1, 5))


# ------------------------------------------------------------------------------------------
# MovieLens readers on small fakes
# ------------------------------------------------------------------------------------------


def test_load_movielens_formats(tmp_path):
    f100 = tmp_path / "ml-100k"
    f100.mkdir()
    write(f100, "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    d = load_movielens(f100)
    assert d.name == "ml-100k" and d.scale == (1.0, 5.0) and d.nnz == 2

    f1m = tmp_path / "ml-1m"
    f1m.mkdir()
    write(f1m, "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n")
    d = load_movielens(f1m)
    assert d.name == "ml-1m" and d.scale == (1.0, 5.0)
    assert triples(d) == [(1, 1193, 5.0), (1, 661, 3.0)]

    f10 = tmp_path / "ml-10M100K"
    f10.mkdir()
    write(f10, "ratings.dat", "1::122::5::838985046\n1::185::4.5::838983525\n")
    d = load_movielens(f10)
    assert d.name == "ml-10m" and d.scale == (0.5, 5.0)

    f20 = tmp_path / "ml-20m"
    f20.mkdir()
    write(f20, "ratings.csv",
          "userId,movieId,rating,timestamp\n1,2,3.5,1112486027\n1,29,0.5,1112484676\n")
    d = load_movielens(f20)
    assert d.name == "ml-20m" and d.scale == (0.5, 5.0) and triples(d)[1] == (1, 29, 0.5)
    # a file path works too, and a variant that does not fit the file is refused
    assert load_movielens(f20 / "ratings.csv").nnz == 2
    with pytest.raises(ValueError, match="variant"):
        load_movielens(f20 / "ratings.csv", variant="1m")


def test_load_movielens_enforces_scale(tmp_path):
    f = tmp_path / "ml-100k"
    f.mkdir()
    write(f, "u.data", "1\t1\t3\t0\n1\t2\t0\t0\n")
    with pytest.raises(ValueError, match=r"u\.data: line 2: rating 0 is outside"):
        load_movielens(f)


def test_load_movielens_unknown_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no MovieLens ratings file"):
        load_movielens(tmp_path)


def test_load_movielens_none_uses_cache_without_network(tmp_path, monkeypatch):
    cached = tmp_path / "ml-100k"
    cached.mkdir()
    write(cached, "u.data", "1\t1\t3\t0\n2\t1\t4\t0\n")

    def no_network(*a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("tried to download")

    import urllib.request

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setenv("DLRL_CACHE", str(tmp_path))
    d = load_movielens(None)
    assert d.nnz == 2 and d.name == "ml-100k"


def test_speed_300k_lines(tmp_path):
    rng = np.random.default_rng(0)
    n = 300_000
    u = rng.integers(1, 3000, n)
    i = rng.integers(1, 2000, n)
    r = rng.integers(1, 6, n)
    p = tmp_path / "ratings.dat"
    p.write_text("".join(f"{a}::{b}::{c}::978300760\n" for a, b, c in zip(u, i, r)))
    t = time.perf_counter()
    d = load_ratings(p, scale=(1, 5))
    elapsed = time.perf_counter() - t
    n_unique = len(np.unique(u * 10_000 + i))
    assert d.nnz == n_unique
    assert elapsed < 5.0  # ~0.6 s here; ML-1M (1M lines) takes ~2 s


# Fast path (vectorised numpy on the bytes) against the general parser: the same result for
# every file, or the fast path declines and the general parser reads it (same errors).
FAST_CASES = [
    ("r.tsv", SMALL, {}),
    ("r.tsv", "1\t2\t3.5\t9\n4\t5\t.5\t9\n-3\t0\t4.\t9\n", {}),
    ("r.dat", "1::5::3::978300760\n2::5::4::978300761\n1::6::1::978300762", {}),
    ("r.csv", "userId,movieId,rating,timestamp\r\n1,31,2.5,1260759144\r\n1,1029,3.0,1\r\n", {}),
    ("r.csv", "\ufeffuser,item,rating\n1,2,3\n4,5,1\n", {}),
    ("r.csv", "7,7,7\n1,31,2.5\n2,31,3.0\n", {"header": True}),
    ("r.csv", "x\ny\n1,31,2.5\n2,31,3.0\n", {"header": 2}),
    ("r.txt", "5;1;0.12345678901234\n6;1;4.99999999999999\n", {}),
    ("r.txt", "5|1|3\n6|1|4\n5|1|2\n", {"duplicates": "mean"}),
    ("r.txt", "5|1|3\n6|1|4\n5|1|2\n", {}),
    ("r.txt", "3.5\t100\t7\n4.0\t101\t8\n", {"columns": (1, 2, 0)}),
    ("r.tsv", "123456789012345678\t1\t1\n1\t1\t2\n", {}),
    # (the cases above take the fast path) declined by the fast path: strings, zero padding, '+', spaces, blank lines, exponents
    ("r.tsv", "007\t1\t3\n7\t1\t4\n", {}),
    ("r.csv", "bob,x1,3\nalice,x2,4\n", {}),
    ("r.csv", "+1,2,3\n1,2,4\n", {}),
    ("r.csv", "1, 2, 3\n1, 3, 4\n", {}),
    ("r.csv", "1,2,3\n\n1,3,4\n", {}),
    ("r.csv", "1,2,3e0\n1,3,4\n", {}),
    ("r.txt", "1  5 3\n2 5   4\n", {}),
    ("r.tsv", "1\t2\t3\r4\t5\t1\n", {}),
]

N_FAST_TAKEN = 12


def _general_only(monkeypatch):
    import dlrl.datasets as ds

    monkeypatch.setattr(ds, "_read_table_fast", lambda *a, **k: None)


@pytest.mark.parametrize("k", range(len(FAST_CASES)))
def test_fast_path_matches_general_parser(tmp_path, monkeypatch, k):
    import dlrl.datasets as ds

    name, text, kw = FAST_CASES[k]
    p = tmp_path / name
    p.write_bytes(text.encode("utf-8"))
    taken = []
    real = ds._read_table_fast
    with monkeypatch.context() as mp:
        mp.setattr(ds, "_read_table_fast", lambda *a: taken.append(real(*a)) or taken[-1])
        fast = load_ratings(p, **kw)
    assert (taken[0] is not None) == (k < N_FAST_TAKEN), f"case {k}: fast path taken={taken[0] is not None}"
    with monkeypatch.context() as mp:
        _general_only(mp)
        slow = load_ratings(p, **kw)
    assert triples(fast) == triples(slow)
    assert fast.user_ids.tolist() == slow.user_ids.tolist() and fast.user_ids.dtype == slow.user_ids.dtype
    assert fast.item_ids.tolist() == slow.item_ids.tolist() and fast.scale == slow.scale
    assert torch.equal(fast.values, slow.values)


def test_fast_path_is_taken_and_exact(tmp_path):
    import dlrl.datasets as ds

    rng = np.random.default_rng(7)
    n = 5000
    r = rng.integers(1, 11, n) / 2 + rng.integers(0, 1000, n) / 1000  # 3 decimals
    text = "".join(f"{a}\t{b}\t{v:.3f}\t0\n" for a, b, v in zip(rng.integers(1, 300, n), rng.integers(1, 200, n), r))
    p = write(tmp_path, "u.data", text)
    table = ds._read_table_fast(p, "\t", None, 0, (0, 1, 2), 3, None)
    assert table is not None, "the fast path declined a plain numeric file"
    ref = [float(line.split("\t")[2]) for line in text.splitlines()]
    assert table.values.tolist() == ref  # correctly rounded, like float()
    assert table.lineno.tolist() == list(range(1, n + 1))


def test_fast_path_errors_are_the_general_parsers(tmp_path):
    p = write(tmp_path, "bad.tsv", "1\t1\t5\n1\t2\t1\n2\t1\t6\n")
    with pytest.raises(ValueError, match=r"bad\.tsv: line 3: rating 6 is outside the declared scale"):
        load_ratings(p, scale=(1, 5))
    p = write(tmp_path, "dup.csv", "u,i,r\n1,1,2\n2,1,5\n1,1,4\n")
    with pytest.raises(ValueError, match="lines 2 and 4"):
        load_ratings(p, duplicates="error")
    p = write(tmp_path, "short.tsv", "1\t2\t3\n4\t5\n")
    with pytest.raises(ValueError, match=r"short\.tsv: line 2: malformed line"):
        load_ratings(p)


# ------------------------------------------------------------------------------------------
# Splits
# ------------------------------------------------------------------------------------------


def make_data(nnz=500, n_users=40, n_items=30, seed=0) -> RatingData:
    g = torch.Generator().manual_seed(seed)
    key = torch.randperm(n_users * n_items, generator=g)[:nnz]
    return RatingData(
        rows=key // n_items, cols=key % n_items,
        values=torch.randint(1, 6, (nnz,), generator=g).float(),
        n_users=n_users, n_items=n_items,
        user_ids=np.arange(n_users) + 1, item_ids=np.arange(n_items) + 1,
        scale=(1, 5), name="toy",
    )


def keys(d: RatingData) -> set:
    return set((d.rows * d.n_items + d.cols).tolist())


def test_split_random_sizes_disjoint_deterministic():
    d = make_data()
    tr, te = split_random(d, test_fraction=0.2, seed=3)
    assert te.nnz == 100 and tr.nnz == 400
    assert not keys(tr) & keys(te) and keys(tr) | keys(te) == keys(d)
    assert tr.shape == d.shape and tr.user_ids is d.user_ids
    tr2, te2 = split_random(d, test_fraction=0.2, seed=3)
    assert torch.equal(tr.rows, tr2.rows) and torch.equal(te.cols, te2.cols)
    _, te3 = split_random(d, test_fraction=0.2, seed=4)
    assert keys(te3) != keys(te)
    with pytest.raises(ValueError, match="test_fraction"):
        split_random(d, test_fraction=1.5)


def test_train_val_split():
    d = make_data()
    tr, va = train_val_split(d, val_fraction=0.1, seed=1)
    assert va.nnz == 50 and tr.nnz == 450 and not keys(tr) & keys(va)
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(d, val_fraction=0)


def test_split_published_matches_global_seed_and_randperm():
    d = make_data(nnz=503)
    state = torch.get_rng_state()
    tr, te = split_published(d)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    torch.manual_seed(2020)
    perm = torch.randperm(d.nnz)
    torch.set_rng_state(state)
    n_train = int(0.8 * d.nnz)
    assert tr.nnz == n_train == 402 and te.nnz == d.nnz - n_train
    assert torch.equal(tr.rows, d.rows[perm[:n_train]])
    assert torch.equal(tr.cols, d.cols[perm[:n_train]])
    assert torch.equal(te.values, d.values[perm[n_train:]])


def test_split_per_user():
    d = make_data(nnz=600)
    counts = torch.bincount(d.rows, minlength=d.n_users)
    tr, te = split_per_user(d, holdout=2, seed=0)
    assert not keys(tr) & keys(te) and tr.nnz + te.nnz == d.nnz
    te_counts = torch.bincount(te.rows, minlength=d.n_users)
    assert torch.equal(te_counts, torch.clamp(counts - 1, min=0).clamp(max=2))
    assert (torch.bincount(tr.rows, minlength=d.n_users)[counts > 0] >= 1).all()
    tr2, te2 = split_per_user(d, holdout=2, seed=0)
    assert torch.equal(te.rows, te2.rows) and torch.equal(te.cols, te2.cols)
    _, tef = split_per_user(d, holdout=0.25, seed=0)
    expect = torch.minimum(torch.floor(0.25 * counts + 0.5).long(), (counts - 1).clamp(min=0))
    assert torch.equal(torch.bincount(tef.rows, minlength=d.n_users), expect)
    with pytest.raises(ValueError, match="holdout"):
        split_per_user(d, holdout=0)
    with pytest.raises(ValueError, match="holdout"):
        split_per_user(d, holdout=1.5)


def test_cold_start_counts():
    d = RatingData(
        rows=torch.tensor([0, 0, 1, 2, 2]), cols=torch.tensor([0, 1, 1, 2, 0]),
        values=torch.tensor([1.0, 2, 3, 4, 5]), n_users=3, n_items=3,
        user_ids=None, item_ids=None, scale=(1, 5),
    )
    tr, te = d.subset([0, 1, 2]), d.subset([3, 4])
    # test: user 2 unseen (both ratings), item 2 unseen, item 0 seen
    assert cold_start_counts(tr, te) == {"users": 1, "items": 1, "ratings": 2}
    other = make_data()
    with pytest.raises(ValueError, match="id maps"):
        cold_start_counts(other, te)


def test_split_canonical_small(tmp_path):
    write(tmp_path, "u1.base", "1\t10\t3\t0\n2\t10\t4\t0\n")
    write(tmp_path, "u1.test", "3\t11\t5\t0\n1\t11\t2\t0\n")
    tr, te = split_canonical(tmp_path, 1)
    assert tr.user_ids.tolist() == te.user_ids.tolist() == [1, 2, 3]
    assert tr.item_ids.tolist() == [10, 11] and tr.shape == te.shape == (3, 2)
    assert triples(te) == [(3, 11, 5.0), (1, 11, 2.0)]
    assert cold_start_counts(tr, te) == {"users": 1, "items": 1, "ratings": 2}
    with pytest.raises(FileNotFoundError, match=r"ua\.base"):
        split_canonical(tmp_path, "a")
    with pytest.raises(ValueError, match="k must be"):
        split_canonical(tmp_path, 6)


# ------------------------------------------------------------------------------------------
# Real ML-100K (skipped when the shared data is absent)
# ------------------------------------------------------------------------------------------

needs_ml100k = pytest.mark.skipif(
    not (ML100K / "u.data").is_file(), reason=f"ML-100K not found at {ML100K}"
)


@needs_ml100k
def test_ml100k_load():
    t = time.perf_counter()
    d = load_movielens(ML100K)
    assert time.perf_counter() - t < 1.0
    assert (d.n_users, d.n_items, d.nnz) == (943, 1682, 100000)
    assert d.scale == (1.0, 5.0) and rating_scale(d) == (1.0, 5.0)
    assert d.user_ids[0] == 1 and d.user_ids[-1] == 943 and d.item_ids[-1] == 1682
    # first line of u.data: 196 242 3
    assert (d.rows[0].item(), d.cols[0].item(), d.values[0].item()) == (195, 241, 3.0)
    assert len(keys(d)) == 100000  # no duplicate pairs


@needs_ml100k
def test_ml100k_canonical_u1():
    tr, te = split_canonical(ML100K, 1)
    assert (tr.nnz, te.nnz) == (80000, 20000)
    assert tr.shape == te.shape == (943, 1682)
    assert not keys(tr) & keys(te)


@needs_ml100k
def test_ml100k_published_split():
    d = load_movielens(ML100K)
    tr, te = split_published(d)
    assert (tr.nnz, te.nnz) == (80000, 20000)
    assert not keys(tr) & keys(te)
    c = cold_start_counts(tr, te)
    assert c["users"] == 0 and 0 < c["items"] < 100


def test_id_map_counting_and_sorting_paths_agree():
    import dlrl.datasets as ds

    rng = np.random.default_rng(3)
    for lo, hi in ((-50, 60), (0, 2000), (10**15, 10**15 + 10**9)):  # the last is sorted, not counted
        a = rng.integers(lo, hi, 700)
        b = rng.integers(lo, hi, 300)
        ids, (ra, rb) = ds._id_map(a, b)
        assert ids.tolist() == sorted(set(a.tolist()) | set(b.tolist()))
        assert np.array_equal(ids[ra], a) and np.array_equal(ids[rb], b)
