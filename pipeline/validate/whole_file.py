"""Rules that compare rows with each other, for a file read in several batches.

A uniqueness expectation run batch by batch only sees duplicates inside one batch. For a file read
in several batches these expectations are taken out of the per-batch suite and checked here over
the whole file (exactly, in buckets of 64-bit hashes, recounted on the values where a hash repeats;
memory bounded by the bucket: pipeline.repeats, pipeline.validate.batches.duplicate_row_count), and the outcome is written as one more GX result so
Data Docs and the summary show it like any other.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pipeline.validate._gx import ExpectationSuiteValidationResult, ExpectationValidationResult
from pipeline.validate.batches import duplicate_row_count
from pipeline.validate.privacy import WITHHELD_EXCEPTION, WITHHELD_TRACEBACK

CROSS_ROW_TYPES: frozenset[str] = frozenset(
    {"expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique", "expect_multicolumn_values_to_be_unique"}
)


def split_cross_row(expectations: list[Any]) -> tuple[list[Any], list[Any]]:
    """(expectations a batch can check alone, expectations that need the whole file)."""
    per_batch = [e for e in expectations if e.expectation_type not in CROSS_ROW_TYPES]
    cross_row = [e for e in expectations if e.expectation_type in CROSS_ROW_TYPES]
    return per_batch, cross_row


def _columns_and_skip_rule(kwargs: dict[str, Any]) -> tuple[list[str], str]:
    if "column" in kwargs:
        # GX's column uniqueness ignores missing values.
        return [kwargs["column"]], "any_value_is_missing"
    return list(kwargs["column_list"]), kwargs.get("ignore_row_if") or "never"


def _result(expectation: Any, path: Path, rows: int) -> Any:
    columns, skip = _columns_and_skip_rule(expectation.configuration.kwargs)
    duplicates = duplicate_row_count(path, columns, skip)
    if duplicates is None:
        return ExpectationValidationResult(
            success=False,
            expectation_config=expectation.configuration,
            result={},
            exception_info={"raised_exception": True, "exception_message": WITHHELD_EXCEPTION, "exception_traceback": WITHHELD_TRACEBACK},
        )
    return ExpectationValidationResult(
        success=duplicates == 0,
        expectation_config=expectation.configuration,
        result={
            "element_count": rows,
            "unexpected_count": duplicates,
            "unexpected_percent": 100.0 * duplicates / rows if rows else 0.0,
        },
        exception_info={"raised_exception": False, "exception_message": None, "exception_traceback": None},
    )


def whole_file_result(expectations: list[Any], path: Path, rows: int, suite_name: str, batch_meta: dict[str, Any]) -> Any:
    """One GX suite result holding the whole-file outcome of each cross-row expectation."""
    results = [_result(e, path, rows) for e in expectations]
    passed = sum(r.success for r in results)
    # The batch's own run details and load markers do not describe this check; the store adds the run.
    meta = copy.deepcopy({k: v for k, v in batch_meta.items() if k not in ("run_id", "validation_time", "batch_markers")})
    meta["batch_spec"] = {"batch_data": "whole file, uniqueness counted with a streaming Polars query"}
    return ExpectationSuiteValidationResult(
        success=passed == len(results),
        results=results,
        suite_name=suite_name,
        statistics={
            "evaluated_expectations": len(results),
            "successful_expectations": passed,
            "unsuccessful_expectations": len(results) - passed,
            "success_percent": 100.0 * passed / len(results) if results else 100.0,
        },
        meta=meta,
    )
