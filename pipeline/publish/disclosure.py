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
"""

from __future__ import annotations

import operator
from functools import cache
from typing import Any

import polars as pl
import yaml

from pipeline.contracts import SCHEMAS_DIR

SUPPRESSION_THRESHOLD = 7
ROUNDING_BASE = 5
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
    ).collect().row(0, named=True)
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


def shown(n: Any) -> str:
    """How a count reads on the audit page, controlled: "1,235", "0", SUPPRESSED_TEXT, or NOT_RECORDED."""
    if n is None:
        return NOT_RECORDED
    controlled = control_count(n)
    return SUPPRESSED_TEXT if controlled is None else f"{controlled:,}"
