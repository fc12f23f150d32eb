"""Statistical disclosure control: the one rule every count that leaves the pipeline obeys.

    >>> [control_count(n) for n in (0, 1, 7, 8, 12, 13, 1234)]
    [0, None, None, 10, 10, 15, 1235]

- A count from 1 to `SUPPRESSION_THRESHOLD` (7) is suppressed: it becomes missing (null in a table,
  "1-7, not shown" on the audit page).
- Every other count is rounded to the nearest multiple of `ROUNDING_BASE` (5). Suppressing up to 7
  before rounding to 5 means a published 5 can never stand for 6 or 7 alone, and a 10 stands for 8-12.
- Zero stays zero. A true zero describes nobody, and leaving it visible keeps "none" apart from "a
  few" (OpenSAFELY's output rules retain zeros too). Where a zero itself would be disclosive (for
  example "none of the men in one MDT declined"), reviewing that is the governance officer's job.
- Ties cannot happen: a whole number is never exactly 2.5 from a multiple of 5, so "nearest" is
  always one multiple (12 -> 10, 13 -> 15). Counts must be whole and not negative; anything else is
  a programming error and raises.
- Totals are controlled on their own, like any other count, so controlled parts need not add up to
  their controlled total; a reader cannot undo the rounding by adding or subtracting.

Which release columns are counts is declared once, in the table's contract: a column with
`disclosure: count` is controlled by `stage_release` and checked by the privacy checks. In an
aggregate table (one without a study ID), every integer column must say `disclosure: count` or
`disclosure: not_a_count`, so that a new count cannot slip out unnoticed.

The release's `manifest.json` obeys the same rule, structurally: `control_manifest` controls every
whole number in it, at any depth, except the settings and the few keys `NOT_A_COUNT_KEYS` names
(thresholds and parameters). A new count added to the manifest is therefore controlled without
anyone listing it; the exact manifest goes to `reports/<label>/figures.json`, never to the release.

Row-level tables obey a second rule, k-anonymity: every combination of a table's quasi-identifiers
(contract `class: quasi_identifier`) describes at least `MIN_GROUP_SIZE` people
(`pipeline.publish.small_groups` applies the run's policy; `pipeline.publish.privacy` checks it).

Continuous values that would make a row unique across releases are released at a coarser precision
declared in the contract (`precision: {decimals: 2}` or `precision: {nearest: 10}`):

    >>> pl.DataFrame({"x": [0.1234, 1234.5]}).select(precision_expr("x", {"decimals": 2})).get_column("x").to_list()
    [0.12, 1234.5]
    >>> pl.DataFrame({"x": [14.9, 15.1]}).select(precision_expr("x", {"nearest": 10})).get_column("x").to_list()
    [10.0, 20.0]
"""

from __future__ import annotations

import operator
from functools import cache
from typing import Any

import polars as pl
import yaml

from pipeline import settings
from pipeline.contracts import SCHEMAS_DIR

SUPPRESSION_THRESHOLD = 7
ROUNDING_BASE = 5
# The fewest people a combination of quasi-identifiers in a row-level table may describe. One more than
# the suppression threshold, so that no group of people a row-level table singles out is as small as a
# count the aggregate tables would hide: a reader must not learn from the rows what a table of counts
# is not allowed to say. (ONS and NHS England guidance use 5-10; OpenSAFELY's counts rule is >7.)
MIN_GROUP_SIZE = SUPPRESSION_THRESHOLD + 1
# What stage_release does about a group smaller than MIN_GROUP_SIZE (RunConfig.small_groups):
# "suppress" withholds quasi-identifier values of those rows in WITHHOLD_ORDER, then drops who is left;
# "coarsen" first merges categories for everyone per COARSENING, then suppresses what is still small;
# "block" changes nothing, and the privacy check then refuses the release.
# The run setting owns the names (pipeline.settings), so a conf is validated without importing this.
SMALL_GROUP_POLICIES = settings.SMALL_GROUP_POLICIES
# Local suppression withholds (nulls) the least analytically important quasi-identifier first. Only
# columns that no other release table repeats may be withheld: arm is in panel and matches, and site
# and operating model are named by matches' samples, so withholding them in the cohort would hide
# nothing. IMD first (already missing for postcodes outside the lookup), then age band, then sex.
WITHHOLD_ORDER: tuple[str, ...] = ("imd_quintile", "age_band", "sex")
# Global recoding, level by level, each level applied to every row and only while a group is too
# small: merged age bands first, then the IMD quintile withheld for everyone (an int8 quintile has no
# honest coarser level; a merged "1-2" would need a new type).
# The age bands are the study's (pipeline.study.Study.coarse_age_bands: for Pioneer 55-64 and 65-74
# -> 55-74, 75-84 and 85+ -> 75+).
def coarsening(study: Any) -> tuple[tuple[str, dict[str, str] | None], ...]:
    """The levels of global recoding for a study (a pipeline.study.Study), in order."""
    return (("age_band", study.coarse_age_bands), ("imd_quintile", None))
# Whole numbers in the manifest that are not counts of people or records: thresholds and parameters.
# Every other whole number in the manifest, outside `settings`, is a count and is controlled.
NOT_A_COUNT_KEYS: frozenset[str] = frozenset(
    {"suppression_threshold", "rounding_base", "min_group_size", "seed", "max_training_profiles", "min_records_to_train",
     # the study's panel span, a validation parameter (pipeline.validate.parameters)
     "panel_first_month", "panel_last_month"}
)  # fmt: skip
# Manifest sections that hold settings, not figures (the study: its design, pipeline.study).
SETTINGS_SECTIONS: tuple[str, ...] = ("settings", "study")
# Fractions computed from exact counts: with a controlled denominator they would give the exact
# numerator back, so the released manifest leaves them out (null); the audit page computes shares
# from the controlled counts.
SHARE_KEYS: frozenset[str] = frozenset({"share"})
PRECISION_KEY = "precision"
# The contract key that marks a column, and its two values.
DISCLOSURE_KEY = "disclosure"
COUNT = "count"
NOT_A_COUNT = "not_a_count"
SUPPRESSED_TEXT = "1–7 (hidden)"
NOT_RECORDED = "–"
RULE_TEXT = (
    f"counts from 1 to {SUPPRESSION_THRESHOLD} suppressed, every other count rounded to the nearest "
    f"{ROUNDING_BASE}; zero shown as zero"
)


def control_count(n: Any) -> int | None:
    """The published form of one count: None when suppressed, else rounded (None stays None)."""
    if n is None:
        return None
    if isinstance(n, bool) or isinstance(n, float):
        raise TypeError("a count must be a whole number (bool and float are refused)")
    n = operator.index(n)  # accepts int and numpy integers, refuses anything else
    if n < 0:
        raise ValueError("a count cannot be negative")
    if n == 0:
        return 0
    if n <= SUPPRESSION_THRESHOLD:
        return None
    # Integer arithmetic: adding half the base then flooring rounds to the nearest multiple.
    return ROUNDING_BASE * ((n + ROUNDING_BASE // 2) // ROUNDING_BASE)


def control_expr(column: str) -> pl.Expr:
    """`control_count` as a Polars expression over an integer column (keeps the column's name and type)."""
    c = pl.col(column)
    rounded = ((c + ROUNDING_BASE // 2) // ROUNDING_BASE) * ROUNDING_BASE
    return (
        pl.when(c.is_null() | ((c >= 1) & (c <= SUPPRESSION_THRESHOLD)))
        .then(None)
        .otherwise(rounded)
        .cast(pl.Int64)
        .alias(column)
    )


def uncontrolled_expr(column: str) -> pl.Expr:
    """True for a value that could not have come out of `control_count` (negative, 1-9, or not a multiple of 5)."""
    c = pl.col(column)
    published = (c == 0) | ((c > SUPPRESSION_THRESHOLD) & (c % ROUNDING_BASE == 0))
    return c.is_not_null() & ~published


def apply_control(df: pl.DataFrame | pl.LazyFrame, columns: list[str]) -> tuple[Any, dict[str, int]]:
    """Control the count columns of a table; return it and how many cells were suppressed or rounded.

    Takes a DataFrame or a LazyFrame and returns the same kind: a release table is streamed, so the
    control is an expression on it, and the cell counts are one aggregate pass over it.
    """
    if not columns:
        return df, {"suppressed_cells": 0, "changed_cells": 0}
    schema = df.collect_schema()
    after = {c: control_expr(c).cast(schema[c]) for c in columns}
    row = df.lazy().select(
        pl.sum_horizontal((pl.col(c) < 0).sum() for c in columns).alias("negative"),
        pl.sum_horizontal((after[c].is_null() & pl.col(c).is_not_null()).sum() for c in columns).alias("suppressed"),
        pl.sum_horizontal(after[c].ne_missing(pl.col(c)).sum() for c in columns).alias("changed"),
    ).collect(engine="streaming").row(0, named=True)  # sums over morsels: a table's rows are never held whole
    if row["negative"]:
        raise ValueError(f"count column(s) {columns} hold negative values; a count cannot be negative")
    out = df.with_columns([after[c].alias(c) for c in columns])
    return out, {"suppressed_cells": int(row["suppressed"] or 0), "changed_cells": int(row["changed"] or 0)}


@cache
def declared_disclosure(table: str) -> dict[str, str]:
    """Column -> `count` or `not_a_count`, as the table's contract in `schemas/` declares it."""
    spec = yaml.safe_load((SCHEMAS_DIR / f"{table}.yaml").read_text()) or {}
    out = {}
    for name, column in (spec.get("columns") or {}).items():
        value = (column or {}).get(DISCLOSURE_KEY)
        if value is not None:
            if value not in (COUNT, NOT_A_COUNT):
                raise ValueError(
                    f"schemas/{table}.yaml, column {name}: {DISCLOSURE_KEY} must be {COUNT!r} or {NOT_A_COUNT!r}"
                )
            out[name] = value
    return out


def count_columns(table: str) -> list[str]:
    return [c for c, v in declared_disclosure(table).items() if v == COUNT]


def control_manifest(manifest: Any, _path: tuple[str, ...] = ()) -> Any:
    """The manifest as released: every count controlled, shares left out, structure kept.

    >>> control_manifest({"settings": {"ratio": 1}, "consent": {"declined": 3, "in_register": 1234,
    ...     "share": 0.25}, "disclosure_control": {"suppression_threshold": 7}})
    {'settings': {'ratio': 1}, 'consent': {'declined': None, 'in_register': 1235, 'share': None}, 'disclosure_control': {'suppression_threshold': 7}}
    """
    if _path and _path[0] in SETTINGS_SECTIONS:
        return manifest
    if isinstance(manifest, dict):
        return {k: control_manifest(v, (*_path, str(k))) for k, v in manifest.items()}
    if isinstance(manifest, list):
        return [control_manifest(v, _path) for v in manifest]
    key = _path[-1] if _path else ""
    if isinstance(manifest, float) and key in SHARE_KEYS:
        return None
    if isinstance(manifest, int) and not isinstance(manifest, bool) and key not in NOT_A_COUNT_KEYS:
        return control_count(manifest)
    return manifest


@cache
def declared_precision(table: str) -> dict[str, dict[str, int]]:
    """Column -> its release precision ({"decimals": d} or {"nearest": n}), as the contract declares it."""
    spec = yaml.safe_load((SCHEMAS_DIR / f"{table}.yaml").read_text()) or {}
    out = {}
    for name, column in (spec.get("columns") or {}).items():
        rule = (column or {}).get(PRECISION_KEY)
        if rule is None:
            continue
        if not (isinstance(rule, dict) and len(rule) == 1 and set(rule) <= {"decimals", "nearest"} and isinstance(next(iter(rule.values())), int)):
            raise ValueError(f"schemas/{table}.yaml, column {name}: {PRECISION_KEY} must be {{decimals: <int>}} or {{nearest: <int>}}")
        out[name] = dict(rule)
    return out


def precision_text(rule: dict[str, int]) -> str:
    """How the contract's description states a precision (tests hold descriptions to it)."""
    if "nearest" in rule:
        return f"rounded to the nearest {rule['nearest']}"
    d = rule["decimals"]
    return "rounded to whole numbers" if d == 0 else f"rounded to {d} decimal place{'s' if d > 1 else ''}"


def precision_expr(column: str, rule: dict[str, int]) -> pl.Expr:
    """A float column at its release precision (keeps the name)."""
    c = pl.col(column)
    if "nearest" in rule:
        return ((c / rule["nearest"]).round(0) * rule["nearest"]).alias(column)
    return c.round(rule["decimals"]).alias(column)


def imprecise_expr(column: str, rule: dict[str, int]) -> pl.Expr:
    """True for a value finer than its release precision (a release not built by stage_release)."""
    c = pl.col(column)
    scaled = c / rule["nearest"] if "nearest" in rule else c * 10 ** rule["decimals"]
    # The tolerance grows with the value: a large value rounded to 4 places and scaled by 10^4 is a
    # whole number only to within the float's own resolution (about 1e-16 of it).
    tolerance = pl.max_horizontal(pl.lit(1e-6), scaled.abs() * 1e-12)
    return ((scaled - scaled.round(0)).abs() > tolerance).fill_null(False) & c.is_finite().fill_null(False)


def shown(n: Any) -> str:
    """How a count reads on the audit page, controlled: "1,235", "0", SUPPRESSED_TEXT, or NOT_RECORDED."""
    if n is None:
        return NOT_RECORDED
    controlled = control_count(n)
    return SUPPRESSED_TEXT if controlled is None else f"{controlled:,}"
