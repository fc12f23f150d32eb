"""Validating one batch with GX, each expectation on a frame of only the columns it reads.

GX's pandas engine gets each expectation's rows by filtering the whole batch frame (dropping rows
where the column is missing, applying a row condition), which copies every column of the frame,
once per expectation. On a wide file (a token file has 20 columns of 64-character strings) that
makes a suite cost columns x expectations, and the copies, not the rules, took most of the time.

So the suite is cut into groups of expectations that read the same columns (`expectation_columns`,
row conditions included), each group is validated on `frame[those columns]`, and the group results
are put back together, in the suite's order, as one GX suite result. Every expectation is still
evaluated by GX on every row of the batch; only the columns it never reads are left out of its frame.
Table-level expectations (the column list, the row count) see the whole frame. Pattern and range rules
are counted with Polars instead, into the result GX gives them (pipeline.validate.vectorised).

    result = validate_batch(batch_definition, frame, suite, parameters, result_format)
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from pipeline.validate._gx import ExpectationSuiteValidationResult, Validator, gx
from pipeline.validate.vectorised import counted_result, split_counted
from pipeline.validate.suites import expectation_columns


def column_groups(expectations: list[Any], columns: list[str]) -> list[tuple[list[str] | None, list[Any]]]:
    """(columns, expectations) groups in first-seen order; None means the whole frame.

    An expectation about the table, or naming a column the frame lacks (GX then reports it as not
    evaluable, as it would on the whole frame), gets the whole frame.
    """
    present = set(columns)
    groups: dict[tuple[str, ...] | None, list[Any]] = {}
    for e in expectations:
        cols = list(dict.fromkeys(expectation_columns(e.configuration.kwargs)))
        if e.expectation_type.startswith("expect_table_") or not cols or not set(cols) <= present:
            key = None
        else:
            key = tuple(c for c in columns if c in cols)  # the frame's column order
        groups.setdefault(key, []).append(e)
    return [(None if key is None else list(key), exps) for key, exps in groups.items()]


def validate_batch(
    batch_definition: Any, frame: pd.DataFrame, suite: Any, parameters: dict[str, Any] | None, result_format: dict[str, Any]
) -> Any:
    """One GX suite result for `frame`, each expectation evaluated on the columns it reads."""
    order = {id(e): i for i, e in enumerate(suite.expectations)}
    by_gx, counted = split_counted(list(suite.expectations), frame, parameters)
    results: list[tuple[int, Any]] = []
    meta: dict[str, Any] | None = None
    for cols, expectations in column_groups(by_gx, list(frame.columns)):
        part = frame if cols is None else frame[cols]
        validator = Validator(
            batch_definition=batch_definition,
            batch_parameters={"dataframe": part},
            # GX adds keys to the dict it is given, so each run gets its own copy.
            result_format=dict(result_format),
        )
        group_suite = gx.ExpectationSuite(name=suite.name, expectations=expectations, meta=suite.meta)
        # Run parameters (the study window) fill the rules' {"$PARAMETER": ...} placeholders.
        group_result = validator.validate_expectation_suite(group_suite, expectation_parameters=parameters or None)
        if meta is None or cols is None:
            meta = group_result.meta  # the whole frame's batch, when a group had it
        results += [(order[id(e)], r) for e, r in zip(expectations, group_result.results, strict=True)]
        del validator, part
    # GX names the batch in each result's expectation; the counted rules' results name it alike.
    batch_id = next((r.expectation_config.kwargs.get("batch_id") for _, r in results if r.expectation_config is not None), None)
    results += [(order[id(e)], counted_result(e, frame, parameters, batch_id)) for e in counted]
    ordered = [r for _, r in sorted(results, key=lambda ir: ir[0])]
    passed = sum(bool(r.success) for r in ordered)
    return ExpectationSuiteValidationResult(
        success=passed == len(ordered),
        results=ordered,
        suite_name=suite.name,
        suite_parameters=dict(parameters or {}),
        statistics={
            "evaluated_expectations": len(ordered),
            "successful_expectations": passed,
            "unsuccessful_expectations": len(ordered) - passed,
            "success_percent": 100.0 * passed / len(ordered) if ordered else None,
        },
        meta=meta or {},
    )
