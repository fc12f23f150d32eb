"""Writing Parquet so that the same seed gives the same bytes.

Parquet written by PyArrow is deterministic when the table, the writer settings and the row-group
boundaries are: PyArrow records no timestamp, and the schema (with the contract's descriptions as
field metadata) is fixed by the contract. So every file here goes through one of two writers with
the settings below, row groups are cut at a fixed number of rows, and the chunking of the generator
is a constant (never derived from the machine, e.g. its memory or core count).

Large extracts are streamed chunk by chunk through `pyarrow.parquet.ParquetWriter`; each file is
written under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.contracts import Contract, to_arrow

PARQUET_SETTINGS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": True,
    "write_statistics": True,
    "version": "2.6",
}
ROW_GROUP_ROWS = 1 << 20


class StreamWriter:
    """Append frames to one Parquet file with a fixed Arrow schema; rename into place on close."""

    def __init__(self, path: Path, schema: pa.Schema, contract: Contract | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.schema = schema
        self.contract = contract
        self.rows = 0
        self._writer = pq.ParquetWriter(self.tmp, schema, **PARQUET_SETTINGS)

    def write(self, df: pl.DataFrame) -> None:
        table = to_arrow(df, self.contract) if self.contract else df.select(self.schema.names).to_arrow().cast(self.schema)
        self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        self.rows += table.num_rows

    def write_table(self, table: pa.Table) -> None:
        self._writer.write_table(table.cast(self.schema), row_group_size=ROW_GROUP_ROWS)
        self.rows += table.num_rows

    def close(self) -> Path:
        self._writer.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


def contract_writer(path: Path, contract: Contract) -> StreamWriter:
    """A streaming writer whose every batch is cast to the contract (column order, types, metadata)."""
    return StreamWriter(path, contract.arrow_schema(), contract)


def write_contract(df: pl.DataFrame, contract: Contract, path: Path) -> int:
    """Write a whole frame that follows `contract`; returns its row count."""
    w = contract_writer(path, contract)
    try:
        w.write(df)
    except Exception:
        w.abort()
        raise
    w.close()
    return df.height


def _portable(schema: pa.Schema) -> pa.Schema:
    """Polars hands Arrow `string_view`/`large_string`; plain `string` reads everywhere (R, Stata, old PyArrow)."""
    return pa.schema([f.with_type(pa.string()) if f.type in (pa.string_view(), pa.large_string()) else f for f in schema])


def write_plain(df: pl.DataFrame, path: Path) -> int:
    """Write a ground-truth frame (no contract) with the same fixed settings."""
    table = df.to_arrow()
    w = StreamWriter(path, _portable(table.schema))
    try:
        w.write_table(table)
    except Exception:
        w.abort()
        raise
    w.close()
    return df.height


def concatenate(parts: list[Path], path: Path, schema: pa.Schema) -> int:
    """Stream several Parquet files of one schema into one file, row group by row group, then delete them."""
    w = StreamWriter(path, schema)
    try:
        for part in parts:
            f = pq.ParquetFile(part)
            for i in range(f.num_row_groups):
                w.write_table(f.read_row_group(i))
            f.close()
    except Exception:
        w.abort()
        raise
    w.close()
    for part in parts:
        part.unlink()
    return w.rows


def write_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
