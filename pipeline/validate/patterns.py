"""Pattern rules counted with one vectorised Polars expression instead of a Python call per row.

GX's pandas engine checks `expect_column_values_to_match_regex` by turning the column into Python
strings and running `re` on each value (`column.astype(str).str.contains(regex)`). On the token
files (up to 19 columns of 64-character tokens per row, and a record token on every service-use
row in three zones) that was the largest single cost of validation.

Here the same rule is counted over the batch's Arrow column with Polars, and the outcome is written
as the result GX writes for it: the same expectation, the same counts (`element_count`,
`missing_count`, `unexpected_count` and their percentages), the same verdict under `mostly`. So the
Data Docs page, the zone summary and the release manifest say exactly what they said before, and a
spec test (tests/test_validate.py) checks the results equal GX's own on clean and broken columns.

Only what Polars can count the same way is taken: a regex given as text (not a run parameter), on
a string column the batch has, without a row condition. Anything else (a missing column, a column
of the wrong type, a regex Polars cannot compile) stays with GX, which reports it as before.

The one difference in meaning is a fix: Python's `$` also matches before a final line break, so GX
let "abc\\n" pass `^(?:abc)$`; Polars' does not. Every contract pattern is anchored to mean "the
whole value", which is how pipeline.contracts (also Polars) already checks the raw extracts.

    gx_side, counted = split_patterns(expectations, frame)
    results = [pattern_result(e, frame, batch_id) for e in counted]
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa

from pipeline.validate._gx import ExpectationValidationResult

PATTERN_TYPE = "expect_column_values_to_match_regex"
_NO_EXCEPTION = {"raised_exception": False, "exception_traceback": None, "exception_message": None}


@functools.cache
def _compiles(regex: str) -> bool:
    """Whether Polars' regex engine accepts `regex` (GX keeps the rule when it does not)."""
    try:
        pl.Series([""], dtype=pl.String).str.contains(regex)
    except pl.exceptions.PolarsError:
        return False
    return True


def _string_column(frame: pd.DataFrame, column: Any) -> bool:
    if not isinstance(column, str) or column not in frame.columns:
        return False
    dtype = frame[column].dtype
    return isinstance(dtype, pd.ArrowDtype) and (pa.types.is_string(dtype.pyarrow_dtype) or pa.types.is_large_string(dtype.pyarrow_dtype))


def counted_here(expectation: Any, frame: pd.DataFrame) -> bool:
    """Whether this module counts `expectation` on `frame` (else GX evaluates it)."""
    if expectation.expectation_type != PATTERN_TYPE:
        return False
    kwargs = expectation.configuration.kwargs
    regex, mostly = kwargs.get("regex"), kwargs.get("mostly", 1.0)
    return (
        isinstance(regex, str)
        and isinstance(mostly, (int, float))
        and not kwargs.get("row_condition")
        and _string_column(frame, kwargs.get("column"))
        and _compiles(regex)
    )


def split_patterns(expectations: list[Any], frame: pd.DataFrame) -> tuple[list[Any], list[Any]]:
    """(expectations GX evaluates, pattern rules counted here), each in the given order."""
    here = [counted_here(e, frame) for e in expectations]
    return [e for e, h in zip(expectations, here, strict=True) if not h], [e for e, h in zip(expectations, here, strict=True) if h]


def _percent(part: int, whole: int) -> float | None:
    return part / whole * 100 if whole > 0 else None


def pattern_result(expectation: Any, frame: pd.DataFrame, batch_id: str | None) -> Any:
    """The ExpectationValidationResult GX gives `expectation` (a pattern rule) on `frame`, with
    BASIC counts and no unexpected value (pipeline.validate.privacy.RESULT_FORMAT). `batch_id` is
    the id GX gives the batch (it adds it to each result's expectation)."""
    kwargs = expectation.configuration.kwargs
    # Arrow-backed pandas columns hand their Arrow data to Polars without a copy.
    column = pl.Series(pa.array(frame[kwargs["column"]]))
    rows = len(column)
    nonnull = rows - column.null_count()
    unexpected = int((~column.str.contains(kwargs["regex"])).sum() or 0)  # nulls are neither
    mostly = float(kwargs.get("mostly", 1.0))
    # As GX's ColumnMapExpectation: vacuously true without a value to check.
    success = rows == 0 or nonnull == 0 or (nonnull - unexpected) / nonnull >= mostly
    total = _percent(unexpected, rows)
    result = {
        "element_count": rows,
        "unexpected_count": unexpected,
        "unexpected_percent": _percent(unexpected, nonnull) if total is not None else None,
        "partial_unexpected_list": [],
        "missing_count": rows - nonnull,
        "missing_percent": _percent(rows - nonnull, rows),
        "unexpected_percent_total": total,
        "unexpected_percent_nonmissing": _percent(unexpected, nonnull) if total is not None else None,
    }
    config = copy.deepcopy(expectation.configuration)
    if batch_id is not None:
        config.kwargs["batch_id"] = batch_id
    return ExpectationValidationResult(success=success, expectation_config=config, result=result, exception_info=dict(_NO_EXCEPTION))
