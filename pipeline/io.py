"""Reading and writing, in one place. Every write goes to a temporary name in the same folder and is
renamed into place, so a crash never leaves a half-written file under its real name.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.contracts import Contract, to_arrow

# Fixed writer settings: the same table always gives the same bytes.
PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "compression_level": 3, "write_statistics": True}
# Rows per row group of a streamed write. Without a fixed size, Polars' streaming sink cuts row
# groups wherever its morsels happen to end, which differs from run to run, and so do the bytes.
SINK_ROW_GROUP_ROWS = 262_144


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it over `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # A process killed in this block leaves its temporary file behind; the next write of the same
    # output (a rerun of the task) clears it. One output is only ever written by one task at a time.
    for stale in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    # mkstemp makes the file 0600; outputs are shared with their zone's readers through folder permissions.
    os.chmod(tmp, 0o644)
    try:
        yield Path(tmp)
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_table(table: pa.Table, path: Path, metadata: dict[str, str] | None = None) -> Path:
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **PARQUET_OPTIONS)
    return Path(path)


def write_frame(df: pl.DataFrame, contract: Contract, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write a frame in its contract's column order and Arrow types, with descriptions as field metadata."""
    return write_table(to_arrow(df, contract), path, metadata)


def sink_frame(lf: pl.LazyFrame, contract: Contract, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Stream a lazy frame to Parquet in the contract's column order and types (never collected whole)."""
    lf = lf.select([pl.col(c.name).cast(c.polars_type) for c in contract.columns])
    with atomic_path(path) as tmp:
        lf.sink_parquet(
            tmp,
            compression="zstd",
            compression_level=3,
            row_group_size=SINK_ROW_GROUP_ROWS,
            metadata=metadata,
            arrow_schema=_sink_schema(contract),
        )
    return Path(path)


def _sink_schema(contract: Contract) -> pa.Schema:
    """The contract's Arrow schema as Polars writes it (large strings), keeping descriptions and nullability."""
    schema = contract.arrow_schema()
    fields = [f.with_type(pa.large_string()) if pa.types.is_string(f.type) else f for f in schema]
    return pa.schema(fields, metadata=schema.metadata)


def write_json(obj: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def parquet_metadata(path: Path) -> dict[str, str]:
    """Key-value metadata of a Parquet file (for example the kid its tokens were made under)."""
    md = pq.ParquetFile(path).metadata.metadata or {}
    return {k.decode(): v.decode() for k, v in md.items()}


def copy_file(src: Path, dst: Path) -> Path:
    """Copy `src` to `dst` through a temporary name, so `dst` is the whole file or the previous one."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


def _previous(dst: Path) -> Path:
    return dst.with_name(f".old-{dst.name}")


def recover_replace(dst: Path) -> None:
    """Undo what a crash in the middle of `replace_dir` left: put the previous `dst` back if the new
    one never arrived, or remove the previous one if it did."""
    dst = Path(dst)
    old = _previous(dst)
    if old.exists():
        if dst.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, dst)


def replace_dir(src: Path, dst: Path) -> None:
    """Move a fully written folder `src` to `dst`, replacing a previous `dst` only once `src` is in place.

    The previous `dst` is moved aside (`.old-<name>`) for the instant between the two renames; a
    crash there is undone by `recover_replace`, which this calls first.
    """
    src, dst = Path(src), Path(dst)
    recover_replace(dst)
    old = _previous(dst)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    if old.exists():
        shutil.rmtree(old)
