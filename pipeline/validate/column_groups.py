"""Validating one batch with GX, each expectation on a frame of only the columns it reads.

GX's pandas engine gets each expectation's rows by filtering the whole batch frame (dropping rows
where the column is missing, applying a row condition), which copies every column of the frame,
once per expectation. On a wide file (a token file has 20 columns of 64-character strings) that
makes a suite cost columns x expectations, and the copies, not the rules, took most of the time.

So the suite is cut into groups of expectations that read the same columns (`expectation_columns`,
row conditions included), each group is validated on `frame[those columns]`, and the group results
are put back together, in the suite's order, as one GX suite result. Every expectation is still
evaluated by GX on every row of the batch; only the columns it never reads are left out of its frame.
Expectations about the columns alone (their names, number and types, `SCHEMA_ONLY_TYPES`) are
evaluated together on the batch's columns with no row; other table-level expectations see the whole frame. Pattern, range,
uniqueness and missing-value rules are counted with Polars instead, into the result GX gives them
(pipeline.validate.vectorised).

Each group's columns are read from the file for it (pipeline.validate.batches.ParquetBatch), so a
batch is never in memory whole: a token file's batch is 19 columns of 64-character tokens.

    result = validate_batch(batch_definition, ParquetBatch(path, span, contract), suite, parameters, result_format)
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from pipeline.validate._gx import ExpectationSuiteValidationResult, Validator, gx
from pipeline.validate.batches import Batch
from pipeline.validate.vectorised import Counts, count, counted_columns, result_of, row_local, split_counted
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


# Expectations about the table's columns (names, order, number, types), not its rows: GX decides them
# from the frame's columns and dtypes alone (the type rule reads only the metric table.column_types;
# every column of a batch has an Arrow dtype, never `object`, whose values GX would look at), so they
# are evaluated together on the batch's columns with no row read.
SCHEMA_ONLY_TYPES: frozenset[str] = frozenset(
    {
        "expect_column_type_to_be",
        "expect_table_columns_to_match_ordered_list",
        "expect_table_columns_to_match_set",
        "expect_table_column_count_to_equal",
        "expect_table_column_count_to_be_between",
    }
)


def validate_batch(
    batch_definition: Any, batch: Batch | pd.DataFrame, suite: Any, parameters: dict[str, Any] | None, result_format: dict[str, Any]
) -> Any:
    """One GX suite result for `batch`, each expectation evaluated on the columns it reads.

    A group's columns are read for it alone (pipeline.validate.batches.ParquetBatch), and the rules
    counted with Polars are counted on the frame of a group that reads their column, so a batch is
    never in memory with all its columns at once: memory is bounded by the batch's rows times the
    widest group's columns. A group of schema-only table expectations gets the columns without rows.
    """
    if isinstance(batch, pd.DataFrame):
        batch = Batch(batch)
    schema = batch.schema()
    order = {id(e): i for i, e in enumerate(suite.expectations)}
    by_gx, counted = split_counted(list(suite.expectations), schema, parameters)
    # Counted rules by the columns they read (a row condition's too); each is counted on the first
    # frame that has them.
    waiting: dict[tuple[str, ...], list[Any]] = {}
    for e in counted:
        waiting.setdefault(counted_columns(e), []).append(e)
    counts: dict[int, Counts] = {}

    def count_on(part: pd.DataFrame) -> None:
        for columns in [c for c in waiting if set(c) <= set(part.columns)]:
            for e in waiting.pop(columns):
                counts[id(e)] = count(e, part, parameters)

    results: list[tuple[int, Any]] = []
    meta: dict[str, Any] | None = None
    on_schema = [e for e in by_gx if e.expectation_type in SCHEMA_ONLY_TYPES]
    groups = [(None, on_schema)] if on_schema else []
    groups += column_groups([e for e in by_gx if e.expectation_type not in SCHEMA_ONLY_TYPES], list(schema.columns))
    for i, (cols, expectations) in enumerate(groups):
        if on_schema and i == 0:
            part = schema
        else:
            part = batch.frame(cols)
            count_on(part)
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
    # Columns no GX expectation read: patterns, ranges and missing-value rules are counted together
    # over one read of their columns, a window of rows at a time, and the windows' counts added up;
    # uniqueness needs the batch's whole column.
    local = [e for key in [k for k, es in waiting.items() if all(row_local(e) for e in es)] for e in waiting.pop(key)]
    if local:
        totals = {id(e): Counts(0, 0, 0) for e in local}
        for window in batch.windows(list(dict.fromkeys(c for e in local for c in counted_columns(e)))):
            for e in local:
                totals[id(e)] += count(e, window, parameters)
        counts.update(totals)
    for columns in list(waiting):
        if columns in waiting:  # not counted already on an earlier, wider frame
            count_on(batch.frame(list(dict.fromkeys(columns))))
    # GX names the batch in each result's expectation; the counted rules' results name it alike.
    batch_id = next((r.expectation_config.kwargs.get("batch_id") for _, r in results if r.expectation_config is not None), None)
    results += [(order[id(e)], result_of(e, counts[id(e)], parameters, batch_id)) for e in counted]
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
