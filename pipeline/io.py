"""Reading and writing, in one place. Every write goes to a temporary name in the same folder and is
renamed into place, so a crash never leaves a half-written file under its real name.

File rules (README, Security):
- an output is created with mode 0666 less the process's umask, as `open()` would make it: the
  pipeline never makes a file more widely readable than the user running it chose;
- a private output (`private=True`: the quarantined rows under `raw/`) is 0600 in folders of 0700,
  whatever the umask, because it holds identifiable rows;
- the data is flushed to disk (fsync of the file, and of the folder after the rename) before the
  rename that publishes it, so after a power cut a file is the new whole one or the previous one.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.contracts import Contract, to_arrow

# Fixed writer settings: the same table always gives the same bytes. zstd level 1: on this project's
# files (64-character hex tokens, codes and dates) it writes in about 55% of level 3's time, reads
# faster, and files are about the same size (100k people's GP payload: 1.36 -> 0.79 s, 114 -> 110 MB;
# the whole pseudonymised zone 691 -> 696 MB).
ZSTD_LEVEL = 1
PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "compression_level": ZSTD_LEVEL, "write_statistics": True}
# Rows per row group of a streamed write. Without a fixed size, Polars' streaming sink cuts row
# groups wherever its morsels happen to end, which differs from run to run, and so do the bytes.
SINK_ROW_GROUP_ROWS = 262_144


PRIVATE_FILE_MODE = 0o600
PRIVATE_FOLDER_MODE = 0o700


@contextlib.contextmanager
def atomic_path(final: Path, private: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it over `final` only if the block succeeds.

    The file is created with mode 0666 less the umask (0600 in a 0700 folder if `private`), flushed
    to disk before the rename, and its folder flushed after it.
    """
    final = Path(final)
    if private:
        _private_folder(final.parent)
    else:
        final.parent.mkdir(parents=True, exist_ok=True)
    # A process killed in this block leaves its temporary file behind; the next write of the same
    # output (a rerun of the task) clears it. One output is only ever written by one task at a time.
    for stale in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    tmp, mode = _new_temporary(final, PRIVATE_FILE_MODE if private else 0o666)
    try:
        yield tmp
        # A writer that replaced the file rather than writing into it would have chosen its own mode.
        os.chmod(tmp, PRIVATE_FILE_MODE if private else mode)
        _fsync(tmp)
        os.replace(tmp, final)
        _fsync(final.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _new_temporary(final: Path, mode: int) -> tuple[Path, int]:
    """Create `.<name>.<random>.tmp` beside `final` with `mode` less the umask; return it and its mode.

    The kernel applies the umask at creation, exactly as for any file the user's programs make, so
    the umask is never read or changed here (changing it, even for an instant, races other threads).
    """
    while True:
        tmp = final.with_name(f".{final.name}.{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
        except FileExistsError:  # 64 random bits: in practice never
            continue
        try:
            return tmp, stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)


def _private_folder(folder: Path) -> None:
    """Make `folder` and any missing parent 0700 (owner only), whatever the umask.

    The folder itself is tightened even when it exists (made 0755 by an earlier version, say);
    parents that already existed are left as they are: they are the user's.
    """
    folder = Path(folder)
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another task made it first
            made.mkdir(mode=PRIVATE_FOLDER_MODE)
        os.chmod(made, PRIVATE_FOLDER_MODE)
    if not missing:
        os.chmod(folder, PRIVATE_FOLDER_MODE)


def _fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to disk (a read-only descriptor is enough on POSIX)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_table(table: pa.Table, path: Path, metadata: dict[str, str] | None = None, private: bool = False) -> Path:
    """Write an Arrow table as Parquet (fixed writer settings); `private`: see `atomic_path`."""
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    with atomic_path(path, private=private) as tmp:
        pq.write_table(table, tmp, **PARQUET_OPTIONS)
    return Path(path)


def write_frame(df: pl.DataFrame, contract: Contract, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write a frame in its contract's column order and Arrow types, with descriptions as field metadata."""
    return write_table(to_arrow(df, contract), path, metadata)


def _sink_contract(lf: pl.LazyFrame, contract: Contract, tmp: Path, metadata: dict[str, str] | None, *, lazy: bool):
    """`lf` streamed to `tmp` in the contract's column order and types, with the fixed writer settings;
    with `lazy`, the query that does it, to run with others (`sink_frames`)."""
    return lf.select([pl.col(c.name).cast(c.polars_type) for c in contract.columns]).sink_parquet(
        tmp,
        compression="zstd",
        compression_level=ZSTD_LEVEL,
        row_group_size=SINK_ROW_GROUP_ROWS,
        metadata=metadata,
        arrow_schema=_sink_schema(contract),
        lazy=lazy,
    )


def sink_frame(lf: pl.LazyFrame, contract: Contract, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Stream a lazy frame to Parquet in the contract's column order and types (never collected whole)."""
    with atomic_path(path) as tmp:
        _sink_contract(lf, contract, tmp, metadata, lazy=False)
    return Path(path)


def sink_frames(
    sinks: list[tuple[pl.LazyFrame, Contract, Path, dict[str, str] | None]], collect: list[pl.LazyFrame] | None = None
) -> list[pl.DataFrame]:
    """Stream several lazy frames to Parquet, each as `sink_frame` writes it, in one run of their
    plans; return the frames of `collect`, run with them.

    Polars runs the part of the plans the frames have in common once (a scan, a join, a Python
    function over a column), so work shared by several outputs is not done once per output. Every
    file is renamed into place only if all of them were written.
    """
    with contextlib.ExitStack() as stack:
        queries = []
        for lf, contract, path, metadata in sinks:
            queries.append(_sink_contract(lf, contract, stack.enter_context(atomic_path(path)), metadata, lazy=True))
        results = pl.collect_all([*queries, *(collect or [])], engine="streaming")
    return results[len(sinks) :]


def sink_lazy(lf: pl.LazyFrame, path: Path, metadata: dict[str, str] | None = None, private: bool = False) -> Path:
    """Stream a lazy frame with no contract of its own (quarantined rows, the monthly panel) to
    Parquet with the fixed writer settings; `private`: see `atomic_path`."""
    with atomic_path(path, private=private) as tmp:
        lf.sink_parquet(tmp, compression="zstd", compression_level=ZSTD_LEVEL, row_group_size=SINK_ROW_GROUP_ROWS, metadata=metadata)
    return Path(path)


def write_scratch(frame: pl.DataFrame | pl.LazyFrame, path: Path, row_group_size: int | None = None) -> Path:
    """Write a stage's scratch file (read back by the same stage, then removed with its folder): fast
    compression, since nobody keeps it; a lazy frame is streamed."""
    with atomic_path(path) as tmp:
        if isinstance(frame, pl.LazyFrame):
            frame.sink_parquet(tmp, compression="lz4", row_group_size=row_group_size)
        else:
            frame.write_parquet(tmp, compression="lz4", row_group_size=row_group_size)
    return Path(path)


def write_engine_scratch(relation: Any, path: Path) -> Path:
    """Write a DuckDB relation's rows to a stage's scratch file, as write_scratch does a frame's.
    DuckDB runs the query and writes the file itself, within its own memory limit, so the rows never
    pass through this process's memory."""
    with atomic_path(path) as tmp:
        relation.write_parquet(str(tmp), compression="lz4")
    return Path(path)


# How split_scratch writes: lz4, and neither dictionaries nor statistics, which a scratch file read
# back whole never uses. Each window adds a small row group to every part, and building a dictionary
# and statistics for each took a third of the write: 4 million GP rows into 16 parts, 4.1 -> 2.8 s,
# reading them back 0.19 -> 0.29 s, files 113 -> 149 MB.
SPLIT_SCRATCH_OPTIONS: dict[str, Any] = {"compression": "lz4", "use_dictionary": False, "write_statistics": False}


def split_scratch(lf: pl.LazyFrame, part_of: pl.Expr, folder: Path, window: int) -> dict[int, Path]:
    """The rows of `lf` written to one scratch file per part (`part_of`: the part of each row, an
    integer; a row whose part is null is left out), `window` rows read at a time, each part's rows
    in their order in `lf`. Returns the file of each part that has rows, by part. Memory: one
    window, however long `lf` is."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = lf.select(pl.len()).collect().item()
    writers: dict[int, pq.ParquetWriter] = {}
    try:
        for offset in range(0, rows, window):
            frame = lf.slice(offset, window).with_columns(part_of.alias("_part")).filter(pl.col("_part").is_not_null()).collect()
            for (k,), piece in frame.partition_by("_part", as_dict=True, include_key=False).items():
                table = piece.to_arrow()
                if k not in writers:
                    writers[k] = pq.ParquetWriter(folder / f"part-{k:06d}.parquet", table.schema, **SPLIT_SCRATCH_OPTIONS)
                writers[k].write_table(table)
            del frame
    finally:
        for writer in writers.values():
            writer.close()
    return {k: folder / f"part-{k:06d}.parquet" for k in sorted(writers)}


@contextlib.contextmanager
def parquet_writer(path: Path, schema: pa.Schema, settings: dict[str, Any] | None = None) -> Iterator[pq.ParquetWriter]:
    """A Parquet writer with the fixed settings (or `settings`) that appends tables to one file,
    renamed into place when the block ends without an error."""
    with atomic_path(path) as tmp:
        writer = pq.ParquetWriter(tmp, schema, **(settings or PARQUET_OPTIONS))
        try:
            yield writer
        finally:
            writer.close()


def _sink_schema(contract: Contract) -> pa.Schema:
    """The contract's Arrow schema as Polars writes it (large strings), keeping descriptions and nullability."""
    schema = contract.arrow_schema()
    fields = [f.with_type(pa.large_string()) if pa.types.is_string(f.type) else f for f in schema]
    return pa.schema(fields, metadata=schema.metadata)


def side_by_side(
    frames: Sequence[pl.LazyFrame], key: str | None, window: int, misaligned: Callable[[], Exception]
) -> Iterator[list[pl.DataFrame]]:
    """Windows of `window` rows of frames that hold the same rows in the same order (files written
    from one pass, such as a source's record blocks and payload), read together: one list of
    frames per window, in order. Memory follows the window, and no join on `key` is needed; a
    `key` that differs between the frames in any row, or a different number of rows, raises
    `misaligned()`. With `key` None the caller has checked the order another way (a digest of the
    file that was checked: see pipeline.zones) and only the numbers of rows are compared. Slice
    plain scans (or their projections), not filtered ones: each window is read by its row offset."""
    sizes = {frame.select(pl.len()).collect().item() for frame in frames}
    if len(sizes) != 1:
        raise misaligned()
    for start in range(0, sizes.pop(), window):
        parts = [frame.slice(start, window).collect() for frame in frames]
        if key is not None:
            first = parts[0].get_column(key)
            if not all(part.get_column(key).equals(first) for part in parts[1:]):
                raise misaligned()
        yield parts


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
            _fsync(dst.parent)


def replace_dir(src: Path, dst: Path) -> None:
    """Move a fully written folder `src` to `dst`, replacing a previous `dst` only once `src` is in place.

    The previous `dst` is moved aside (`.old-<name>`) for the instant between the two renames; a
    crash there is undone by `recover_replace`, which this calls first. Every file and folder of
    `src` is flushed to disk before the renames, and the folders holding `src` and `dst` after them.
    """
    src, dst = Path(src), Path(dst)
    recover_replace(dst)
    _fsync_tree(src)
    old = _previous(dst)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    for folder in {src.parent, dst.parent}:
        _fsync(folder)
    if old.exists():
        shutil.rmtree(old)


def _fsync_tree(root: Path) -> None:
    """Flush every file, then every folder (deepest first), under `root`. Links are not followed."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            path = Path(folder) / name
            if not path.is_symlink():
                _fsync(path)
        _fsync(Path(folder))
