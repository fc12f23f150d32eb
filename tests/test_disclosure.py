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


# ---------------------------------------------------------------------------------------------------
# Small quasi-identifier groups: the ladder as tables (pipeline.publish.small_groups)

from pipeline.publish import small_groups  # noqa: E402
from pipeline.publish.disclosure import MIN_GROUP_SIZE, WITHHOLD_ORDER  # noqa: E402

QI = ["arm", "age_band", "sex", "imd_quintile"]


def people(*groups: tuple[int, str, str, str | None, int | None]) -> pl.DataFrame:
    """A cohort from (how many people, arm, age band, sex, IMD quintile) rows."""
    rows = [(arm, age, sex, imd) for n, arm, age, sex, imd in groups for _ in range(n)]
    return pl.DataFrame(
        {"pid": [f"p{i:03d}" for i in range(len(rows))], **{c: [r[i] for r in rows] for i, c in enumerate(QI)}},
        schema_overrides={"imd_quintile": pl.Int8},
    )


def groups(df: pl.DataFrame) -> list[tuple]:
    return sorted(df.group_by(QI).agg(pl.len()).rows(), key=str)


def test_the_constants_of_the_group_rule() -> None:
    assert MIN_GROUP_SIZE == SUPPRESSION_THRESHOLD + 1 == 8
    assert WITHHOLD_ORDER == ("imd_quintile", "age_band", "sex")


# (people, arm, age band, sex, IMD) before -> the groups after, and what was withheld / dropped
LADDER = [
    (  # every group big enough: nothing changes
        [(8, "mdt", "55-64", "F", 1), (9, "comparator", "55-64", "F", 1)],
        [("comparator", "55-64", "F", 1, 9), ("mdt", "55-64", "F", 1, 8)],
        {"imd_quintile": 0, "age_band": 0, "sex": 0}, 0,
    ),
    (  # withholding IMD merges the small group into the people whose IMD is unknown
        [(6, "mdt", "55-64", "F", None), (3, "mdt", "55-64", "F", 4), (8, "mdt", "55-64", "F", 1)],
        [("mdt", "55-64", "F", 1, 8), ("mdt", "55-64", "F", None, 9)],
        {"imd_quintile": 3, "age_band": 0, "sex": 0}, 0,
    ),
    (  # IMD is not enough; age band too: two small groups of the same sex meet
        [(4, "mdt", "55-64", "M", 1), (4, "mdt", "85+", "M", 2), (8, "mdt", "55-64", "F", 1)],
        [("mdt", "55-64", "F", 1, 8), ("mdt", None, "M", None, 8)],
        {"imd_quintile": 8, "age_band": 8, "sex": 0}, 0,
    ),
    (  # a person alone in their arm cannot be protected by withholding: dropped
        [(1, "comparator", "85+", "U", 5), (8, "mdt", "55-64", "F", 1)],
        [("mdt", "55-64", "F", 1, 8)],
        {"imd_quintile": 1, "age_band": 1, "sex": 1}, 1,
    ),
]  # fmt: skip


@pytest.mark.parametrize(("before", "after", "withheld", "dropped"), LADDER)
def test_local_suppression_ladder(before, after, withheld, dropped) -> None:
    out = small_groups.withhold(people(*before), QI, "pid")
    assert groups(out.frame) == sorted(after, key=str)
    assert out.withheld == withheld and len(out.dropped) == dropped
    assert small_groups.smallest(out.frame, QI, "pid") >= MIN_GROUP_SIZE


def test_coarsening_merges_age_bands_for_everyone_first() -> None:
    df = people((4, "mdt", "55-64", "F", 1), (4, "mdt", "65-74", "F", 1), (8, "mdt", "85+", "F", 1))
    out = small_groups.coarsen(df, QI, "pid")
    assert out.coarsened == ["age_band"] and out.withheld == {"imd_quintile": 0, "age_band": 0, "sex": 0}
    assert groups(out.frame) == [("mdt", "55-74", "F", 1, 8), ("mdt", "75+", "F", 1, 8)]


def test_block_changes_nothing() -> None:
    df = people((1, "mdt", "85+", "U", 5), (8, "mdt", "55-64", "F", 1))
    assert small_groups.apply_policy(df, QI, "pid", "block").frame.equals(df)


def test_every_whole_number_of_the_manifest_is_controlled_except_settings_and_thresholds() -> None:
    manifest = {
        "settings": {"matching": {"ratio": 1}},
        "consent": {"declined": 3, "in_register": 1234, "new_key_nobody_listed": 6},
        "linkage": {"sources": {"gp_events": {"linked_by_rank": {"1": 12}}}, "quality": {"x": [{"records": 2, "share": 0.4}]},
                    "probabilistic": {"options": {"seed": 3}}},
        "disclosure_control": {"suppression_threshold": 7, "min_group_size": 8},
        "files": {"cohort.parquet": {"sha256": "ab", "rows": 149}},
        "cohort": {"max_abs_smd_after": 0.061, "flag": True},
    }  # fmt: skip
    assert disclosure.control_manifest(manifest) == {
        "settings": {"matching": {"ratio": 1}},
        "consent": {"declined": None, "in_register": 1235, "new_key_nobody_listed": None},
        "linkage": {"sources": {"gp_events": {"linked_by_rank": {"1": 10}}}, "quality": {"x": [{"records": None, "share": None}]},
                    "probabilistic": {"options": {"seed": 3}}},
        "disclosure_control": {"suppression_threshold": 7, "min_group_size": 8},
        "files": {"cohort.parquet": {"sha256": "ab", "rows": 150}},
        "cohort": {"max_abs_smd_after": 0.061, "flag": True},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("rule", "values", "released", "too_fine", "text"),
    [
        ({"decimals": 2}, [0.12345, 0.5, None], [0.12, 0.5, None], 1, "rounded to 2 decimal places"),
        ({"nearest": 10}, [4.9, 5.1, 1234.5], [0.0, 10.0, 1230.0], 3, "rounded to the nearest 10"),
        ({"decimals": 0}, [71.4, 71.6], [71.0, 72.0], 2, "rounded to whole numbers"),
    ],
)
def test_release_precision(rule, values, released, too_fine, text) -> None:
    df = pl.DataFrame({"x": values}, schema={"x": pl.Float64})
    out = df.select(disclosure.precision_expr("x", rule))
    assert out.get_column("x").to_list() == released
    assert out.select(disclosure.imprecise_expr("x", rule).sum()).item() == 0
    assert df.select(disclosure.imprecise_expr("x", rule).sum()).item() == too_fine
    assert disclosure.precision_text(rule) == text
