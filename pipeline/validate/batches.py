"""Reading a Parquet file as pandas batches for GX, with memory bounded by a piece, not by the file.

GX validates pandas frames, not Polars ones. A file up to `max_batch_rows` rows is one batch; a
larger file is read a few row groups at a time (at most about `max_batch_rows` rows, or one row
group if a writer made bigger ones). Within a batch, `ParquetBatch` reads only the columns one group
of expectations reads (pipeline.validate.column_groups), and a pattern or range on a column nothing
else reads is counted `WINDOW_ROWS` rows at a time: so memory is about the batch's rows times the
columns one expectation reads, never the whole batch of a wide file.

Rules that compare rows with each other (uniqueness) cannot be checked batch by batch;
`duplicate_row_count` checks them over the whole file, exactly, in buckets of 64-bit hashes
(pipeline.repeats), so its memory does not grow with the file either.
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

from pipeline.repeats import count_repeats
from pipeline.contracts import COMPATIBLE_ARROW_TYPES
from pipeline.contracts import Contract, read_parquet_schema

DEFAULT_MAX_BATCH_ROWS = 1_000_000
# Rows read at a time for a rule that judges each row alone (a pattern, a range) on a column no GX
# expectation of the batch reads: a near-miss list of a token file is ~400 bytes a row as text.
WINDOW_ROWS = 65_536


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


def read_batch(path: Path, span: BatchSpan, contract: Contract, columns: list[str] | None = None) -> pd.DataFrame:
    """One batch as a pandas frame with Arrow-backed dtypes (nullable ints and dates stay as they are);
    only `columns` (in the file's order) when given."""
    pf = pq.ParquetFile(path)
    if pf.metadata.num_row_groups == 0:
        table = pf.schema_arrow.empty_table()
        if columns is not None:
            table = table.select([c for c in table.column_names if c in set(columns)])
    else:
        table = pf.read_row_groups(list(range(span.first, span.stop)), columns=columns)
    # Arrow-backed dtypes keep int8 as int8 with nulls and dates as dates, where numpy dtypes would
    # turn nullable ints into floats and dates into objects, and the type check would mean little.
    return _as_pandas(table, contract)


def _as_pandas(table: pa.Table, contract: Contract) -> pd.DataFrame:
    return _lists_as_text(_as_contract_types(table, contract)).to_pandas(types_mapper=pd.ArrowDtype)


class Batch:
    """A batch to validate, read a few columns at a time.

    `frame(columns)` gives those columns of every row of the batch; `schema()` gives every column
    with its type and no row (what the column names and types decide is decided on it). So memory is
    bounded by the batch's rows times the columns one expectation reads, not times the file's width.
    """

    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame = frame

    def schema(self) -> pd.DataFrame:
        return self._frame.iloc[:0]

    def frame(self, columns: list[str] | None = None) -> pd.DataFrame:
        return self._frame if columns is None else self._frame[columns]

    def windows(self, columns: list[str]) -> Iterator[pd.DataFrame]:
        """`columns` of the batch's rows, a window of rows at a time (for rules that judge each row alone)."""
        yield self.frame(columns)


class ParquetBatch(Batch):
    """Row groups `span` of a Parquet file as a Batch: each `frame(columns)` is read from the file."""

    def __init__(self, path: Path, span: BatchSpan, contract: Contract) -> None:
        self.path, self.span, self.contract = Path(path), span, contract
        # The same conversion as the rows get, on none of them.
        self._schema = _as_pandas(pq.ParquetFile(self.path).schema_arrow.empty_table(), contract)

    def schema(self) -> pd.DataFrame:
        return self._schema

    def frame(self, columns: list[str] | None = None) -> pd.DataFrame:
        return read_batch(self.path, self.span, self.contract, columns)

    def windows(self, columns: list[str]) -> Iterator[pd.DataFrame]:
        pf = pq.ParquetFile(self.path, pre_buffer=False)
        if pf.metadata.num_row_groups == 0:
            yield self.frame(columns)
            return
        row_groups = list(range(self.span.first, self.span.stop))
        for window in pf.iter_batches(batch_size=WINDOW_ROWS, row_groups=row_groups, columns=columns):
            yield _as_pandas(pa.Table.from_batches([window]), self.contract)


def _lists_as_text(table: pa.Table) -> pa.Table:
    """Each list-of-strings column as text, `[` + its elements joined by spaces + `]` (null stays null):
    GX's column expectations evaluate scalar values only. The brackets keep a column delivered as
    plain text from passing for a list: the suite's pattern for a list column requires them
    (pipeline.validate.suites)."""
    for i, f in enumerate(table.schema):
        if pa.types.is_list(f.type) or pa.types.is_large_list(f.type):
            if pa.types.is_large_list(f.type) and pa.types.is_large_string(f.type.value_type):
                # Joined as they are: no cast, which would copy every element once more.
                items, text = table.column(i), pa.large_string()
            else:
                items, text = table.column(i).cast(pa.list_(pa.string())), pa.string()
            joined = pc.binary_join_element_wise(
                pa.scalar("[", text), pc.binary_join(items, pa.scalar(" ", text)), pa.scalar("]", text), pa.scalar("", text)
            )
            table = table.set_column(i, pa.field(f.name, pa.large_string()), joined.cast(pa.large_string()))
    return table


def iter_batches(path: Path, spans: list[BatchSpan], contract: Contract) -> Iterator[tuple[BatchSpan, pd.DataFrame]]:
    for span in spans:
        yield span, read_batch(path, span, contract)


def _kept_rows(ignore_row_if: str, columns: list[str]) -> pl.Expr | None:
    """The rows GX judges: `any_value_is_missing`, `all_values_are_missing` or `never` skipped."""
    if ignore_row_if == "any_value_is_missing":
        return pl.all_horizontal([pl.col(c).is_not_null() for c in columns])
    if ignore_row_if == "all_values_are_missing":
        return pl.any_horizontal([pl.col(c).is_not_null() for c in columns])
    return None


def duplicate_row_count(path: Path, columns: list[str], ignore_row_if: str, piece_rows: int | None = None) -> int | None:
    """Rows of the whole file whose `columns` value is shared with another row (GX's unexpected count).

    Rows are skipped as GX skips them: `any_value_is_missing`, `all_values_are_missing` or `never`.
    None when a column is absent (the column-list expectation reports that).

    Counted exactly by pipeline.repeats, whose memory is bounded by a bucket of 64-bit hashes, not by
    the file (`piece_rows` sets the bucket and the window: tests use a few rows to force many).
    """
    lf = pl.scan_parquet(path)
    if not set(columns) <= set(lf.collect_schema().names()):
        return None
    repeats = count_repeats(lf.select(columns), columns, _kept_rows(ignore_row_if, columns), per_bucket=piece_rows, window=piece_rows)
    return repeats.rows_shared
