"""Disclosure control: suppress 1-7, round the rest to the nearest 5, keep 0. Boundary values, the
Polars form agreeing with the scalar one, and the checks that find an uncontrolled count."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.publish import disclosure
from pipeline.publish.disclosure import (
    ROUNDING_BASE,
    SUPPRESSION_THRESHOLD,
    apply_control,
    control_count,
    shown,
)

BOUNDARIES = {
    0: 0,  # a true zero describes nobody and stays visible
    1: None, 2: None, 5: None, 7: None,  # suppressed
    8: 10, 9: 10, 10: 10, 11: 10, 12: 10,  # the first published value is 10
    13: 15, 14: 15, 15: 15, 17: 15,
    18: 20, 22: 20, 23: 25,
    1234: 1235, 1232: 1230, 1_000_002: 1_000_000,
}  # fmt: skip


def test_the_named_constants() -> None:
    assert (SUPPRESSION_THRESHOLD, ROUNDING_BASE) == (7, 5)


@pytest.mark.parametrize(("count", "published"), sorted(BOUNDARIES.items()))
def test_boundaries(count: int, published: int | None) -> None:
    assert control_count(count) == published


def test_missing_stays_missing_and_numpy_integers_are_counts() -> None:
    assert control_count(None) is None
    assert control_count(np.int64(13)) == 15


@pytest.mark.parametrize("bad", [-1, -8])
def test_a_negative_count_is_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="negative"):
        control_count(bad)


@pytest.mark.parametrize("bad", [7.5, 12.0, True])
def test_a_count_must_be_whole(bad: object) -> None:
    with pytest.raises(TypeError):
        control_count(bad)


@given(st.integers(min_value=0, max_value=10**9))
def test_published_counts_are_multiples_of_five_near_the_truth(n: int) -> None:
    published = control_count(n)
    if 1 <= n <= SUPPRESSION_THRESHOLD:
        assert published is None
    else:
        assert published % ROUNDING_BASE == 0 and abs(published - n) <= ROUNDING_BASE // 2
        assert published == 0 or published > SUPPRESSION_THRESHOLD
        assert control_count(published) == published  # controlling twice changes nothing


def test_the_polars_expression_agrees_with_the_scalar_rule() -> None:
    values = list(range(0, 300)) + [None, 1234, 999_999]
    got = pl.DataFrame({"n": values}, schema={"n": pl.Int64}).select(disclosure.control_expr("n")).get_column("n").to_list()
    assert got == [control_count(v) for v in values]


def test_uncontrolled_values_are_found_and_controlled_ones_are_not() -> None:
    df = pl.DataFrame({"n": list(range(0, 200)) + [None]})
    flagged = df.filter(disclosure.uncontrolled_expr("n")).get_column("n").to_list()
    assert 0 not in flagged and 10 not in flagged and 15 not in flagged
    assert {1, 5, 7, 8, 9, 12, 13} <= set(flagged)
    controlled = df.select(disclosure.control_expr("n"))
    assert controlled.filter(disclosure.uncontrolled_expr("n")).height == 0


def test_apply_control_reports_what_it_changed() -> None:
    df = pl.DataFrame({"group": ["a", "b", "c", "d", "e"], "people": [0, 3, 10, 12, None]}, schema_overrides={"people": pl.Int32})
    out, cells = apply_control(df, ["people"])
    assert out.get_column("people").to_list() == [0, None, 10, 10, None]
    assert out.schema["people"] == pl.Int32
    assert cells == {"suppressed_cells": 1, "changed_cells": 2}
    with pytest.raises(ValueError, match="negative"):
        apply_control(pl.DataFrame({"people": [-1]}), ["people"])


def test_apply_control_streams_a_lazy_table_with_the_same_result() -> None:
    df = pl.DataFrame({"group": ["a", "b", "c", "d", "e"], "people": [0, 3, 10, 12, None]}, schema_overrides={"people": pl.Int32})
    eager, eager_cells = apply_control(df, ["people"])
    lazy, lazy_cells = apply_control(df.lazy(), ["people"])
    assert isinstance(lazy, pl.LazyFrame)
    assert lazy.collect().equals(eager) and lazy_cells == eager_cells
    with pytest.raises(ValueError, match="negative"):
        apply_control(pl.LazyFrame({"people": [-1]}), ["people"])


def test_how_counts_read_on_the_audit_page() -> None:
    assert [shown(n) for n in (0, 3, 12, 1234, None)] == ["0", disclosure.SUPPRESSED_TEXT, "10", "1,235", disclosure.NOT_RECORDED]


def test_count_columns_are_declared_in_the_contract(tmp_path, monkeypatch) -> None:
    (tmp_path / "counts_by_arm.yaml").write_text(
        "name: counts_by_arm\nzone: release\ndescription: x\nprimary_key: [arm]\ncolumns:\n"
        "  arm: {type: string, nullable: false, class: payload, allowed: [mdt, comparator], description: x}\n"
        "  people: {type: int64, nullable: true, class: payload, disclosure: count, description: x}\n"
        "  year: {type: int16, nullable: false, class: payload, disclosure: not_a_count, description: x}\n"
    )
    (tmp_path / "broken.yaml").write_text("name: broken\ncolumns:\n  n: {type: int64, disclosure: maybe}\n")
    monkeypatch.setattr(disclosure, "SCHEMAS_DIR", tmp_path)
    disclosure.declared_disclosure.cache_clear()
    try:
        assert disclosure.declared_disclosure("counts_by_arm") == {"people": "count", "year": "not_a_count"}
        assert disclosure.count_columns("counts_by_arm") == ["people"]
        with pytest.raises(ValueError, match="broken.yaml, column n: disclosure must be"):
            disclosure.declared_disclosure("broken")
    finally:
        disclosure.declared_disclosure.cache_clear()
