"""pipeline.repeats: exact repeat counts in buckets of 64-bit hashes, whatever the bucket size, and
never fooled by two different values that share a hash."""

from __future__ import annotations

import random

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline.repeats as repeats
from pipeline.repeats import Repeats, count_repeats


def _expected(frame: pl.DataFrame, columns: list[str], keep: pl.Expr | None) -> Repeats:
    kept = frame if keep is None else frame.filter(keep.fill_null(False))
    groups = kept.group_by(columns).agg(pl.len().alias("n")).filter(pl.col("n") > 1)
    shared = int(groups.get_column("n").sum() or 0)
    return Repeats(shared, shared - groups.height)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([None, "a", "b", "c", "d" * 64]), st.sampled_from([None, 1, 2])), max_size=60),
    st.integers(1, 9),
    st.integers(1, 9),
    st.sampled_from(["all", "not null", "both known"]),
)
def test_counts_equal_a_group_by_over_the_whole_table(rows, per_bucket, window, which):
    frame = pl.DataFrame(rows, schema={"a": pl.String, "b": pl.Int64}, orient="row")
    keep = {"all": None, "not null": pl.col("a").is_not_null(), "both known": pl.all_horizontal(pl.col("a", "b").is_not_null())}[which]
    for columns in (["a"], ["a", "b"]):
        got = count_repeats(frame.lazy(), columns, keep=keep, per_bucket=per_bucket, window=window)
        assert got == _expected(frame, columns, keep), columns


def test_values_sharing_a_hash_are_told_apart_by_their_values(monkeypatch):
    """A weak hash (three values only) makes collisions certain: the recount on the values must
    still find exactly the true repeats, and none where every value is distinct."""
    monkeypatch.setattr(repeats, "_value_hash", lambda columns: (pl.struct(columns).hash(seed=1) % 3).cast(pl.UInt64))
    rng = random.Random(7)
    distinct = pl.DataFrame({"id": [f"R{i}" for i in range(200)]})
    assert count_repeats(distinct.lazy(), ["id"], per_bucket=16, window=5) == Repeats(0, 0)
    some = pl.DataFrame({"id": [f"R{rng.randrange(150)}" for _ in range(200)]})
    assert count_repeats(some.lazy(), ["id"], per_bucket=16, window=5) == _expected(some, ["id"], None)


def test_a_large_unique_column_is_counted_without_rereading_its_values(monkeypatch):
    """The usual case, an identifier column with no repeat, ends after the hash pass."""

    def never(*args):
        raise AssertionError("values were recounted although no hash repeats")

    monkeypatch.setattr(repeats, "_count_values", never)
    ids = pl.DataFrame({"id": [f"{i:064x}" for i in range(50_000)]})
    assert count_repeats(ids.lazy(), ["id"], per_bucket=4_096, window=8_192) == Repeats(0, 0)


@pytest.mark.parametrize("per_bucket", [1, 3, 1_000])
def test_suspects_are_recounted_in_passes_of_about_a_bucket(per_bucket):
    frame = pl.DataFrame({"id": [i % 40 for i in range(200)]})
    assert count_repeats(frame.lazy(), ["id"], per_bucket=per_bucket, window=7) == Repeats(200, 160)
