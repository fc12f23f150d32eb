"""Reading a Parquet file as pandas batches for GX, with memory that stays flat as files grow.

GX validates pandas frames, not Polars ones. A file up to `max_batch_rows` rows is one batch; a
larger file is read a few row groups at a time, so at most about `max_batch_rows` rows (or one
row group, if a writer made bigger ones) are in memory at once. Rules that compare rows with each
other (uniqueness) cannot be checked batch by batch; `duplicate_row_count` checks them over the
whole file with a streaming Polars query instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.contracts import COMPATIBLE_ARROW_TYPES
from pipeline.contracts import Contract, read_parquet_schema

DEFAULT_MAX_BATCH_ROWS = 1_000_000


@dataclass(frozen=True)
class BatchSpan:
    """Row groups [first, stop) of one file, validated as one batch."""

    first: int
    stop: int
    rows: int
    whole_file: bool

    @property
    def label(self) -> str:
        if self.whole_file:
            return "all rows"
        return f"row groups {self.first}-{self.stop - 1}"


def plan_batches(path: Path, max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS) -> list[BatchSpan]:
    """Group consecutive row groups into batches of at most `max_batch_rows` rows (one group at least)."""
    read_parquet_schema(path)  # a missing or unreadable file fails here with a ContractError
    meta = pq.ParquetFile(path).metadata
    total = meta.num_rows
    if total <= max_batch_rows or meta.num_row_groups <= 1:
        return [BatchSpan(0, meta.num_row_groups, total, whole_file=True)]
    spans: list[BatchSpan] = []
    first, rows = 0, 0
    for i in range(meta.num_row_groups):
        n = meta.row_group(i).num_rows
        if i > first and rows + n > max_batch_rows:
            spans.append(BatchSpan(first, i, rows, whole_file=False))
            first, rows = i, 0
        rows += n
    spans.append(BatchSpan(first, meta.num_row_groups, rows, whole_file=False))
    return spans


def _as_contract_types(table: pa.Table, contract: Contract) -> pa.Table:
    """Cast columns delivered in a compatible Arrow type (large strings, smaller ints) to the contract's.

    This is the same lossless widening `pipeline.contracts` does on read. Incompatible types are
    left alone, so the suite's type expectation reports them.
    """
    declared = {c.name: c for c in contract.columns}
    fields = []
    for f in table.schema:
        c = declared.get(f.name)
        compatible = c is not None and (f.type in COMPATIBLE_ARROW_TYPES[c.type] or pa.types.is_null(f.type))
        fields.append(pa.field(f.name, c.arrow_type if compatible else f.type))
    return table.cast(pa.schema(fields))


def read_batch(path: Path, span: BatchSpan, contract: Contract) -> pd.DataFrame:
    """One batch as a pandas frame with Arrow-backed dtypes (nullable ints and dates stay as they are)."""
    pf = pq.ParquetFile(path)
    if pf.metadata.num_row_groups == 0:
        table = pf.schema_arrow.empty_table()
    else:
        table = pf.read_row_groups(list(range(span.first, span.stop)))
    # Arrow-backed dtypes keep int8 as int8 with nulls and dates as dates, where numpy dtypes would
    # turn nullable ints into floats and dates into objects, and the type check would mean little.
    return _lists_as_text(_as_contract_types(table, contract)).to_pandas(types_mapper=pd.ArrowDtype)


def _lists_as_text(table: pa.Table) -> pa.Table:
    """Each list-of-strings column as text, `[` + its elements joined by spaces + `]` (null stays null):
    GX's column expectations evaluate scalar values only. The brackets keep a column delivered as
    plain text from passing for a list: the suite's pattern for a list column requires them
    (pipeline.validate.suites)."""
    for i, f in enumerate(table.schema):
        if pa.types.is_list(f.type) or pa.types.is_large_list(f.type):
            items = table.column(i).cast(pa.list_(pa.string()))
            joined = pc.binary_join_element_wise("[", pc.binary_join(items, " "), "]", "")
            table = table.set_column(i, pa.field(f.name, pa.large_string()), joined.cast(pa.large_string()))
    return table


def iter_batches(path: Path, spans: list[BatchSpan], contract: Contract) -> Iterator[tuple[BatchSpan, pd.DataFrame]]:
    for span in spans:
        yield span, read_batch(path, span, contract)


def duplicate_row_count(path: Path, columns: list[str], ignore_row_if: str) -> int | None:
    """Rows of the whole file whose `columns` value is shared with another row (GX's unexpected count).

    Rows are skipped as GX skips them: `any_value_is_missing`, `all_values_are_missing` or `never`.
    None when a column is absent (the column-list expectation reports that).
    """
    lf = pl.scan_parquet(path)
    if not set(columns) <= set(lf.collect_schema().names()):
        return None
    lf = lf.select(columns)
    if ignore_row_if == "any_value_is_missing":
        lf = lf.filter(pl.all_horizontal([pl.col(c).is_not_null() for c in columns]))
    elif ignore_row_if == "all_values_are_missing":
        lf = lf.filter(pl.any_horizontal([pl.col(c).is_not_null() for c in columns]))
    counts = lf.group_by(columns).agg(pl.len().alias("n")).filter(pl.col("n") > 1)
    return int(counts.select(pl.col("n").sum()).collect().item() or 0)
