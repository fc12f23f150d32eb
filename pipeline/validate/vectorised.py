"""Rules GX's pandas engine checks with a Python call per row, counted with vectorised Polars instead.

Four column rules cost most of validation; GX evaluates the first two one value at a time.
- `expect_column_values_to_match_regex`: GX turns the column into Python strings and runs `re` on
  each value (`column.astype(str).str.contains(regex)`). The token files hold up to 19 columns of
  64-character tokens per row, and every service-use row carries a record token in three zones.
- `expect_column_values_to_be_between`: GX's vectorised path is for numpy int and float columns
  only; our batches have Arrow-backed dtypes (so nullable ints and dates keep their type), and for
  those it calls a Python function per value (`column.map(is_between)`).
- `expect_column_values_to_be_unique`, in a file validated as one batch (a file of several batches
  has it counted over the whole file, pipeline.validate.whole_file): pandas' `duplicated` on
  Arrow-backed 64-character tokens took seconds per million rows where Polars' hashing takes a tenth.
- `expect_column_values_to_(not_)be_null` with a row condition (a link map's rank is there exactly
  where its participant is): GX selects the rows with pandas' `DataFrame.query`, a copy of the
  frame per rule. Counted here, with or without a condition, when Polars keeps the same rows
  (`_condition_counted`); at 1M people validate_linked went from 33 to 29 s.

Here each such rule is counted over the batch's Arrow column with one Polars expression, and the
outcome is written as the result GX writes for it: the same expectation (run parameters filled in,
the batch named), the same counts (`element_count`, `missing_count`, `unexpected_count` and their
percentages), the same verdict under `mostly`. So the Data Docs page, the zone summary and the
release manifest say what they said before; a spec test (tests/test_validate.py) checks that the
results equal GX's own, on clean and broken columns, with and without `mostly`.

A pattern or range judges each row alone (`row_local`), so its `Counts` over windows of a batch's
rows add up to the count over the batch (pipeline.validate.column_groups reads such a column a
window at a time); uniqueness is counted over the batch's whole column.

Only what Polars counts exactly as GX does is taken: literal or run-parameter arguments of the right
kind, on a column the batch has with a type the rule applies to, without a row condition (but for
the missing-value rules, under a condition Polars applies alike). Anything
else (a missing column, a column of the wrong type, a regex Polars cannot compile, text bounds)
stays with GX, which evaluates or reports it as before.

One difference in meaning, a fix: Python's `$` also matches before a final line break, so GX let
"abc\\n" pass `^(?:abc)$`; Polars' `$` does not. Contract patterns are anchored to mean "the whole
value", which is how pipeline.contracts (also Polars) already checks the raw extracts.

    by_gx, counted = split_counted(suite.expectations, frame, parameters)
    results = [counted_result(e, frame, parameters, batch_id) for e in counted]
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa

from pipeline.validate._gx import ExpectationValidationResult

REGEX = "expect_column_values_to_match_regex"
BETWEEN = "expect_column_values_to_be_between"
UNIQUE = "expect_column_values_to_be_unique"
NOT_NULL = "expect_column_values_to_not_be_null"
NULL = "expect_column_values_to_be_null"
_NULL_RULES = (NOT_NULL, NULL)
_NO_EXCEPTION = {"raised_exception": False, "exception_traceback": None, "exception_message": None}


def _filled(value: Any, parameters: dict[str, Any]) -> Any:
    """A kwarg with its run parameter filled in (`{"$PARAMETER": name}`); a missing one stays a dict."""
    if isinstance(value, dict) and set(value) == {"$PARAMETER"}:
        return parameters.get(value["$PARAMETER"], value)
    return value


def _kwargs(expectation: Any, parameters: dict[str, Any]) -> dict[str, Any]:
    return {k: _filled(v, parameters) for k, v in expectation.configuration.kwargs.items()}


@functools.cache
def _compiles(regex: str) -> bool:
    """Whether Polars' regex engine accepts `regex` (GX keeps the rule when it does not)."""
    try:
        pl.Series([""], dtype=pl.String).str.contains(regex)
    except pl.exceptions.PolarsError:
        return False
    return True


def _arrow_type(frame: pd.DataFrame, column: Any) -> pa.DataType | None:
    if not isinstance(column, str) or column not in frame.columns:
        return None
    dtype = frame[column].dtype
    return dtype.pyarrow_dtype if isinstance(dtype, pd.ArrowDtype) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_date(value: Any) -> bool:
    return isinstance(value, dt.date) and not isinstance(value, dt.datetime)


def _between_counted(kwargs: dict[str, Any], arrow_type: pa.DataType) -> bool:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    bounds = [b for b in (low, high) if b is not None]
    if not bounds or any(not isinstance(kwargs.get(k), (bool, type(None))) for k in ("strict_min", "strict_max")):
        return False
    numbers, dates = all(map(_is_number, bounds)), all(map(_is_date, bounds))
    if not (numbers or dates) or (low is not None and high is not None and low > high):
        return False  # GX reports such bounds as an error
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        return numbers
    return pa.types.is_date32(arrow_type) and dates


def _condition_counted(condition: Any, frame: pd.DataFrame) -> bool:
    """Whether Polars filters rows by `condition` (a GX row condition) exactly as GX's pandas engine
    does: a column's nullity, or its equality with, or membership of, values of the column's own
    kind (text, true/false, whole numbers). Rows whose condition column is missing are left out, as
    GX's query leaves them out."""
    if not isinstance(condition, dict) or not isinstance(condition.get("column"), dict):
        return False
    arrow_type = _arrow_type(frame, condition["column"].get("name"))
    if arrow_type is None:
        return False
    if condition.get("type") == "nullity":
        return isinstance(condition.get("is_null"), bool)
    if condition.get("type") != "comparison" or condition.get("operator") not in ("==", "IN"):
        return False
    values = condition.get("parameter")
    values = values if condition["operator"] == "IN" and isinstance(values, list) and values else [values]
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return all(isinstance(v, str) for v in values)
    if pa.types.is_boolean(arrow_type):
        return all(isinstance(v, bool) for v in values)
    if not pa.types.is_integer(arrow_type):
        return False
    # A value the column's type cannot hold matches no row for GX; Polars could not make it a value of
    # that type, so such a condition stays with GX.
    limits = np.iinfo(arrow_type.to_pandas_dtype())
    return all(isinstance(v, int) and not isinstance(v, bool) and limits.min <= v <= limits.max for v in values)


def _condition_mask(condition: dict[str, Any], frame: pd.DataFrame) -> pl.Series:
    """True on the rows `condition` keeps (see `_condition_counted`)."""
    column = pl.Series(pa.array(frame[condition["column"]["name"]]))
    if condition["type"] == "nullity":
        return column.is_null() if condition["is_null"] else column.is_not_null()
    values = condition["parameter"] if condition["operator"] == "IN" else [condition["parameter"]]
    return column.is_in(pl.Series(values, dtype=column.dtype).implode()).fill_null(False) & column.is_not_null()


def counted_columns(expectation: Any) -> tuple[str, ...]:
    """The columns a counted rule reads: its column, then its row condition's."""
    kwargs = expectation.configuration.kwargs
    condition = kwargs.get("row_condition")
    return (kwargs["column"], condition["column"]["name"]) if condition else (kwargs["column"],)


def counted_here(expectation: Any, frame: pd.DataFrame, parameters: dict[str, Any] | None = None) -> bool:
    """Whether this module counts `expectation` on `frame` (else GX evaluates it)."""
    if expectation.expectation_type not in (REGEX, BETWEEN, UNIQUE, *_NULL_RULES):
        return False
    kwargs = _kwargs(expectation, parameters or {})
    arrow_type = _arrow_type(frame, kwargs.get("column"))
    if arrow_type is None or not _is_number(kwargs.get("mostly", 1.0)):
        return False
    if expectation.expectation_type in _NULL_RULES:
        # Whether a value is there is the same question for every type.
        return not kwargs.get("row_condition") or _condition_counted(kwargs["row_condition"], frame)
    if kwargs.get("row_condition"):
        return False
    if expectation.expectation_type == UNIQUE:
        # Not floats: whether NaN equals NaN is a question GX and Polars need not be asked.
        return any(is_type(arrow_type) for is_type in (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer, pa.types.is_date32))
    if expectation.expectation_type == REGEX:
        regex = kwargs.get("regex")
        return (pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)) and isinstance(regex, str) and _compiles(regex)
    return _between_counted(kwargs, arrow_type)


def split_counted(expectations: list[Any], frame: pd.DataFrame, parameters: dict[str, Any] | None = None) -> tuple[list[Any], list[Any]]:
    """(expectations GX evaluates, rules counted here), each in the given order."""
    here = [counted_here(e, frame, parameters) for e in expectations]
    return [e for e, h in zip(expectations, here, strict=True) if not h], [e for e, h in zip(expectations, here, strict=True) if h]


def _broken(column: pl.Series, expectation_type: str, kwargs: dict[str, Any]) -> pl.Series:
    """True where a value breaks the rule, null where it is missing (GX checks present values only);
    for the rules about missing values, whether the row breaks it."""
    if expectation_type in _NULL_RULES:
        return column.is_null() if expectation_type == NOT_NULL else column.is_not_null()
    if expectation_type == REGEX:
        return ~column.str.contains(kwargs["regex"])
    if expectation_type == UNIQUE:
        # Every row whose value another row shares, as pandas' duplicated(keep=False) among present values.
        return pl.select(pl.when(column.is_null()).then(None).otherwise(column.is_duplicated())).to_series()
    ok = pl.repeat(True, len(column), eager=True)
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is not None:
        ok &= column > low if kwargs.get("strict_min") else column >= low
    if high is not None:
        ok &= column < high if kwargs.get("strict_max") else column <= high
    if column.dtype.is_float():
        # Python's comparisons with NaN are all false, so GX finds NaN outside any range; Polars
        # orders NaN above every number, so it is named here.
        ok &= ~column.is_nan()
    return ~ok


def _percent(part: int, whole: int) -> float | None:
    return part / whole * 100 if whole > 0 else None


def _evaluated_configuration(expectation: Any, parameters: dict[str, Any], batch_id: str | None) -> Any:
    """The expectation as GX's validator hands it to its result: run parameters filled in, the batch
    named, and passed through the expectation's own model (which, for one, makes bounds floats)."""
    config = copy.deepcopy(expectation.configuration)
    config.process_suite_parameters(parameters)
    if batch_id is not None:
        config.kwargs["batch_id"] = batch_id
    return config.to_domain_obj().configuration


@dataclass(frozen=True)
class Counts:
    """What a counted rule found on a batch's column: rows, present values, values breaking it."""

    rows: int
    nonnull: int
    unexpected: int

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.rows + other.rows, self.nonnull + other.nonnull, self.unexpected + other.unexpected)


def row_local(expectation: Any) -> bool:
    """Whether a counted rule judges each row alone (so counts over row windows add up)."""
    return expectation.expectation_type in (REGEX, BETWEEN, *_NULL_RULES)


def count(expectation: Any, frame: pd.DataFrame, parameters: dict[str, Any] | None) -> Counts:
    """Count `expectation` on `frame` (a frame of the batch's rows with its `counted_columns`); with a
    row condition, on the rows it keeps."""
    kwargs = _evaluated_configuration(expectation, parameters or {}, None).kwargs
    # Arrow-backed pandas columns hand their Arrow data to Polars without a copy.
    column = pl.Series(pa.array(frame[kwargs["column"]]))
    if kwargs.get("row_condition"):
        column = column.filter(_condition_mask(kwargs["row_condition"], frame))
    rows = len(column)
    return Counts(rows, rows - column.null_count(), int(_broken(column, expectation.expectation_type, kwargs).sum() or 0))


def counted_result(expectation: Any, frame: pd.DataFrame, parameters: dict[str, Any] | None, batch_id: str | None) -> Any:
    """The ExpectationValidationResult GX gives `expectation` on `frame`, with BASIC counts and no
    unexpected value (pipeline.validate.privacy.RESULT_FORMAT). `batch_id` is the id GX gives the
    batch (it adds it to each result's expectation)."""
    return result_of(expectation, count(expectation, frame, parameters), parameters, batch_id)


def result_of(expectation: Any, counts: Counts, parameters: dict[str, Any] | None, batch_id: str | None) -> Any:
    """The result GX gives `expectation` for these counts (see counted_result)."""
    config = _evaluated_configuration(expectation, parameters or {}, batch_id)
    kwargs = config.kwargs
    rows, nonnull, unexpected = counts.rows, counts.nonnull, counts.unexpected
    mostly = float(kwargs.get("mostly", 1.0))
    if expectation.expectation_type in _NULL_RULES:
        # Every row is checked, missing or not: GX reports no missing values for these two.
        result = {
            "element_count": rows,
            "unexpected_count": unexpected,
            "unexpected_percent": _percent(unexpected, rows),
            "partial_unexpected_list": [],
        }
        success = rows == 0 or (rows - unexpected) / rows >= mostly
        return ExpectationValidationResult(success=success, expectation_config=config, result=result, exception_info=dict(_NO_EXCEPTION))
    # As GX's ColumnMapExpectation: vacuously true without a value to check.
    success = rows == 0 or nonnull == 0 or (nonnull - unexpected) / nonnull >= mostly
    total = _percent(unexpected, rows)
    share_of_present = _percent(unexpected, nonnull) if total is not None else None
    result = {
        "element_count": rows,
        "unexpected_count": unexpected,
        "unexpected_percent": share_of_present,
        "partial_unexpected_list": [],
        "missing_count": rows - nonnull,
        "missing_percent": _percent(rows - nonnull, rows),
        "unexpected_percent_total": total,
        "unexpected_percent_nonmissing": share_of_present,
    }
    return ExpectationValidationResult(success=success, expectation_config=config, result=result, exception_info=dict(_NO_EXCEPTION))
