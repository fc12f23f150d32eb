"""Keeping patients' values out of validation results, and so out of reports, Data Docs and logs.

Two layers. GX is asked not to collect unexpected values (`RESULT_FORMAT`), and every result is
then reduced to an allow-list of counts (`scrub_suite_result`) before anything stores, renders or
logs it, so a GX default changing in an upgrade cannot leak a value.
"""

from __future__ import annotations

from typing import Any

# BASIC gives counts; partial_unexpected_count=0 stops GX collecting the sample of unexpected values
# it would otherwise keep (20 by default) and show in Data Docs.
RESULT_FORMAT: dict[str, Any] = {
    "result_format": "BASIC",
    "partial_unexpected_count": 0,
    "include_unexpected_rows": False,
}

# Counts a failed expectation may report. Anything else GX puts in `result` is dropped.
COUNT_KEYS: frozenset[str] = frozenset(
    {
        "element_count",
        "unexpected_count",
        "unexpected_percent",
        "missing_count",
        "missing_percent",
        "unexpected_percent_total",
        "unexpected_percent_nonmissing",
    }
)
# Expectations whose `observed_value` describes the file's shape (column names, a dtype), not data.
SCHEMA_LEVEL_TYPES: frozenset[str] = frozenset(
    {"expect_table_columns_to_match_ordered_list", "expect_column_type_to_be", "expect_table_row_count_to_be_between"}
)
# The batch fingerprint GX records is a hash of the data itself; the release manifest hashes files.
DROPPED_BATCH_MARKERS: frozenset[str] = frozenset({"pandas_data_fingerprint"})

WITHHELD_EXCEPTION = (
    "Great Expectations could not evaluate this expectation (its message is withheld because it can "
    "quote a data value); check that the column exists and has the contract's type"
)
WITHHELD_TRACEBACK = "(traceback withheld: it can quote a data value)"


def scrub_result(result: Any) -> None:
    """Reduce one ExpectationValidationResult, in place, to counts and schema-level observations."""
    kept = {k: v for k, v in (result.result or {}).items() if k in COUNT_KEYS}
    if result.expectation_config is not None and result.expectation_config.type in SCHEMA_LEVEL_TYPES:
        if "observed_value" in (result.result or {}):
            kept["observed_value"] = result.result["observed_value"]
    result.result = kept
    info = result.exception_info or {}
    raised = bool(info.get("raised_exception")) or any(
        isinstance(v, dict) and v.get("raised_exception") for v in info.values()
    )
    # Data Docs render the traceback as text whenever an exception was raised, so it must be a string.
    result.exception_info = {
        "raised_exception": raised,
        "exception_message": WITHHELD_EXCEPTION if raised else None,
        "exception_traceback": WITHHELD_TRACEBACK if raised else None,
    }


def scrub_suite_result(suite_result: Any) -> Any:
    """Scrub every expectation result of an ExpectationSuiteValidationResult, in place; return it."""
    for result in suite_result.results:
        scrub_result(result)
    markers = suite_result.meta.get("batch_markers")
    if isinstance(markers, dict):
        suite_result.meta["batch_markers"] = {k: v for k, v in markers.items() if k not in DROPPED_BATCH_MARKERS}
    return suite_result
