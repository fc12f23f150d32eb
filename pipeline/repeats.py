"""Exact counts of repeated values in a column, or a combination of columns, of a table of any
length, in memory bounded by a piece size.

One algorithm serves both places that count repeats: the contract checks of the inputs
(pipeline.contracts, rule `unique`) and Great Expectations' uniqueness rules over a whole file
(pipeline.validate.whole_file).

1. One pass over the table, a window of rows at a time, gives each row a 64-bit hash of its value
   and appends the hashes, 8 raw bytes a row, to one scratch file per hash bucket, so a bucket holds
   about `HASHES_PER_BUCKET` hashes. Equal values have equal hashes, so all rows of one value fall
   in one bucket. The files are plain arrays (numpy's `tofile`), not Parquet: random 64-bit hashes
   do not compress, and a Parquet writer per bucket and window spent more time encoding them than
   the pass spent reading and hashing the values.
2. Each bucket's hashes are sorted. Where no two are equal, no two values are equal: the usual case
   for an identifier column, which is then done.
3. A hash seen more than once is a repeat or, rarely, a collision of two different values: the rows
   with such hashes are read again, a bucket at a time, and their values themselves are counted.
   The hash only ever decides where to look, never whether two values are equal.

The scratch files hold hashes, not values, and are removed when the count ends. At 94 million rows
(a GP extract of 3 million people) they take 0.75 GB, where spilling the 64-character values takes 6.

    >>> import polars as pl
    >>> count_repeats(pl.LazyFrame({"id": ["a", "b", "a", None, "c", "a"]}), ["id"])
    Repeats(rows_shared=3, rows_beyond_first=2)
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

# Hashes per bucket: 16 MB of 64-bit hashes, sorted in a fraction of a second.
HASHES_PER_BUCKET = 2_097_152
# Rows read at a time when hashing: the value columns of one window (64-character tokens: ~100 MB).
# 32 million GP record tokens: 6.6 s a window of 262,144 rows, 5.4 s a window of 1,048,576.
HASH_WINDOW_ROWS = 1_048_576
# Any fixed seed: within one count, equal values always have equal hashes.
_SEED = 20


@dataclass(frozen=True)
class Repeats:
    """`rows_shared`: rows whose value another row has too (what Great Expectations counts as
    unexpected for a uniqueness rule). `rows_beyond_first`: rows less distinct values, the rows that
    repeat a value after its first (what the contract checks report)."""

    rows_shared: int
    rows_beyond_first: int


def _value_hash(columns: list[str]) -> pl.Expr:
    value = pl.col(columns[0]) if len(columns) == 1 else pl.struct(columns)
    return value.hash(seed=_SEED)


def _repeated(hashes: np.ndarray) -> np.ndarray:
    """The distinct hashes that occur more than once in `hashes`."""
    hashes = np.sort(hashes)
    twice = hashes[1:] == hashes[:-1]
    # A new array, not a view: a view would keep the whole bucket's hashes alive with it.
    return np.unique(hashes[1:][twice]) if twice.any() else np.empty(0, dtype=hashes.dtype)


def _count_values(lf: pl.LazyFrame, columns: list[str], hashes: pl.Expr, suspects: np.ndarray) -> Repeats:
    """Repeats among the rows whose hash is one of `suspects`, counted on the values themselves
    (nulls compare equal, as in a group-by)."""
    rows = lf.filter(hashes.is_in(pl.Series(suspects, dtype=pl.UInt64).implode())).group_by(columns).agg(pl.len().alias("_n"))
    n = rows.filter(pl.col("_n") > 1).select(pl.col("_n").sum().alias("shared"), pl.len().alias("values")).collect(engine="streaming")
    shared, values = n.row(0)
    return Repeats(int(shared or 0), int(shared or 0) - int(values or 0))


def count_repeats(
    lf: pl.LazyFrame, columns: list[str], keep: pl.Expr | None = None, per_bucket: int | None = None, window: int | None = None
) -> Repeats:
    """Repeats of the value of `columns` over the rows of `lf` where `keep` holds (every row when
    None; a row where it is null is left out). See the module docstring for how, and why exactly.

    `lf` should slice cheaply (a Parquet scan, not a filtered one): it is read a window at a time."""
    per_bucket = per_bucket or HASHES_PER_BUCKET
    window = window or HASH_WINDOW_ROWS
    hashes = _value_hash(columns)
    if keep is not None:
        hashes = pl.when(keep).then(hashes)
    kept = lf.select(hashes.alias("_h"))
    rows = lf.select(pl.len()).collect().item()
    buckets = max(1, -(-rows // per_bucket))
    if buckets == 1:
        # One bucket's hashes fit in memory as they are: no scratch file.
        suspects = [_repeated(kept.collect(engine="streaming").get_column("_h").drop_nulls().to_numpy())]
    else:
        with tempfile.TemporaryDirectory(prefix="pprl-repeats-") as tmp:
            files = _spill(kept, rows, buckets, Path(tmp), window)
            suspects = [_repeated(np.fromfile(file, dtype=np.uint64)) for file in files]
    total = Repeats(0, 0)
    # The suspects' rows are read again, in as few passes as keep each pass to about a bucket's worth.
    for group in _groups([s for s in suspects if s.size], per_bucket):
        found = _count_values(_kept(lf, keep), columns, _value_hash(columns), np.concatenate(group))
        total = Repeats(total.rows_shared + found.rows_shared, total.rows_beyond_first + found.rows_beyond_first)
    return total


def _spill(kept: pl.LazyFrame, rows: int, buckets: int, folder: Path, window: int) -> list[Path]:
    """Append each row's hash (`kept`'s column `_h`; a row not kept has none and is left out) to
    the file of its bucket, `hash % buckets`, `window` rows read at a time; return the files, one a
    bucket. Memory: one window of values and their hashes."""
    paths = [folder / f"bucket-{b:06d}.u64" for b in range(buckets)]
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(open(path, "wb")) for path in paths]
        for offset in range(0, rows, window):
            hashes = kept.slice(offset, window).collect().get_column("_h").drop_nulls().to_numpy()
            bucket = (hashes % buckets).astype(np.intp)
            # The window's hashes grouped by bucket (one sort of small integers), each group
            # appended to its bucket's file.
            grouped = hashes[np.argsort(bucket, kind="stable")]
            ends = np.cumsum(np.bincount(bucket, minlength=buckets))
            for b, piece in enumerate(np.split(grouped, ends[:-1])):
                if piece.size:
                    piece.tofile(files[b])
    return paths


def _groups(arrays: list[np.ndarray], most: int) -> list[list[np.ndarray]]:
    """`arrays` in consecutive groups of at most `most` elements in all (a larger array alone)."""
    groups: list[list[np.ndarray]] = []
    size = most
    for a in arrays:
        if size + a.size > most:
            groups.append([])
            size = 0
        groups[-1].append(a)
        size += a.size
    return groups


def _kept(lf: pl.LazyFrame, keep: pl.Expr | None) -> pl.LazyFrame:
    return lf if keep is None else lf.filter(keep.fill_null(False))
