"""Pseudonymising one service-use source: token blocks, record blocks, payload file and quarantine
(rows with no usable identifier, or breaking a row rule of pipeline.pseudonymise.row_rules, each
with its reason).

Tokens are written once per token block, a distinct combination of the 19 token columns
(schemas/token_blocks.yaml), and each record gets the number of its block (schemas/record_blocks.yaml):
a person's records mostly repeat the same identifiers, so 48 million rows need 6.2 million rows of
tokens, which is what writing and validating them costs. The payload file holds record_id and the
payload columns of the source's contract. No direct identifier leaves this step, nor the provider's
record ID: from here on `record_id` holds the record's keyed token (`with_record_tokens`). Record-level files
are streamed to Parquet: the extract is never collected whole.

The extract is read twice: once to find its identifier blocks (the distinct identifier columns),
which are tested for a usable identifier and tokenised once each, and once more to give every row its
block, its record token and its reason to be set aside, if any, writing the record blocks, the
payload and the quarantine from that one pass (`pipeline.io.sink_frames`), so no record ID is
tokenised twice and no identifier is normalised row by row.

Memory follows the number of distinct identifier blocks: their canonical forms while they are
tokenised, their 19 tokens, and the sort that numbers the token blocks, about 2.2 kB a block at the
peak (pipeline.pseudonymise.identifiers), and in the second pass each block's identifiers and number.
An extract of more than `ROWS_PER_PART` rows, or with more than `BLOCKS_PER_PART` identifier blocks
(counted approximately in the pass that counts the rows), is tokenised in parts by a hash of the date
of birth, so every identifier block and every token block falls in exactly one part and is still
tokenised only once. Parts cost a pass over the extract each, and each part works out its names'
forms again, so they are kept few: a 32 million-row GP extract (a million people, 2.8 million
blocks) takes two.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
from pathlib import Path

import polars as pl

from pipeline import io
from pipeline.contracts import load_contract
from pipeline.crypto.keys import LinkageKey
from pipeline.crypto.tokens import record_token_key, token_file_metadata, tokenise_record_ids
from pipeline.pseudonymise.identifiers import IDENTIFIER_COLUMNS, UNUSABLE, number_token_blocks, tokenise_blocks
from pipeline.pseudonymise.inputs import scan_checked_input
from pipeline.progress import Progress
from pipeline.pseudonymise.row_rules import quarantine_reason, rules_for
from pipeline.zones import TOKEN_BLOCK, blocks_path, counts_file, payload_contract, payload_file, quarantine_file
from pipeline.zones import records_path as record_blocks_path
from pipeline.settings import SOURCES, RunConfig

log = logging.getLogger(__name__)

QUARANTINE_REASON = "no usable identifier (no valid NHS number, date of birth or postcode)"
ROWS_PER_PART = 16_000_000
# A part's identifier blocks, at about 2.2 kB each at the peak: about 3.3 GB. Set from the 3 million
# person world, where a part of 3.0 million blocks (hospital_apc's 6.6 million rows) peaked at 7.5 GB.
BLOCKS_PER_PART = 1_500_000


def with_record_tokens(lf: pl.LazyFrame, key: LinkageKey, source: str) -> pl.LazyFrame:
    """`lf` with its provider record IDs replaced by their record tokens (pipeline.crypto.tokens),
    batch by batch as the frame streams, in order."""
    record_key = record_token_key(key)
    return lf.with_columns(
        pl.col("record_id").map_batches(lambda ids: tokenise_record_ids(record_key, source, ids), return_dtype=pl.String, is_elementwise=True)
    )


# What pseudonymise_source's progress reports say it is doing (pipeline.progress).
PSEUDONYMISE_STEPS: tuple[str, ...] = ("tokenising identifiers", "writing records and the payload, setting aside quarantined rows")
_RULE, _REASON = "_rule", "_reason"


def pseudonymise_source(cfg: RunConfig, key: LinkageKey, source: str) -> Path:
    """Write tokens/<source>.parquet, records/<source>.parquet, payload/<source>.parquet and
    counts/<source>.json; return the folder. Says every minute how far it is (pipeline.progress)."""
    with Progress(f"pseudonymise {source}", total=len(PSEUDONYMISE_STEPS), unit="steps") as progress:
        return _pseudonymise_source(cfg, key, source, progress)


def _pseudonymise_source(cfg: RunConfig, key: LinkageKey, source: str, progress: Progress) -> Path:
    """Two passes over the extract: the first finds its identifier blocks and tokenises them (in
    parts when it is big); the second gives each row its block, its reason to be set aside if any,
    and its record token, and writes the record blocks, the payload and the quarantine from the one
    pass, so each record ID is tokenised once."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; sources are {SOURCES}")
    out = cfg.pseudonymised_dir
    # The first row rule (pipeline.pseudonymise.row_rules) each row breaks; DATE_OF_BIRTH applies to every source.
    rows = scan_checked_input(cfg, source).with_columns(quarantine_reason(rules_for(source), cfg.extract).alias(_RULE))
    parts = _parts(rows)
    # Parts by the date of birth: records with the same tokens have the same date of birth (the token
    # spec's canonical date is one-to-one), so each token block falls in exactly one part, and the
    # parts' blocks, numbered one after another, are still the source's distinct blocks.
    part_of = pl.col("date_of_birth").hash(seed=0) % parts
    folder = out / f".parts-{source}"
    shutil.rmtree(folder, ignore_errors=True)
    try:
        progress.step(PSEUDONYMISE_STEPS[0])
        table, counts = _write_token_blocks(rows, key, source, out, parts, part_of, folder)
        progress.advance()
        progress.step(PSEUDONYMISE_STEPS[1])
        n_quarantined, reasons = _write_rows(cfg, rows, table, key, source)
        progress.advance()
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(folder)
    if parts > 1:
        log.info("tokenised %s in %d parts", source, parts)
    counts["quarantined"] = n_quarantined
    counts["quarantine_reasons"] = reasons
    counts["pseudonymised"] = counts["rows"] - n_quarantined
    io.write_json({"source": source, "kid": key.kid, "counts": counts}, counts_file(cfg, source))
    log.info("pseudonymised %s: %d rows, %d quarantined", source, counts["rows"], n_quarantined)
    return out


def _parts(rows: pl.LazyFrame) -> int:
    """How many parts to tokenise `rows` in: enough for at most ROWS_PER_PART rows and about
    BLOCKS_PER_PART identifier blocks each (HyperLogLog's count of distinct identifier blocks, within a
    few percent, in one streaming pass; the same extract always gives the same count)."""
    counted = rows.select(
        pl.len().alias("rows"), pl.struct(list(IDENTIFIER_COLUMNS)).hash(seed=0).approx_n_unique().alias("blocks")
    ).collect(engine="streaming")
    n_rows, n_blocks = counted.row(0)
    return max(1, math.ceil(n_rows / ROWS_PER_PART), math.ceil(n_blocks / BLOCKS_PER_PART))


def write_token_files(tokens: pl.DataFrame, out: Path, source: str, metadata: dict[str, str]) -> None:
    """Write a source's tokens given per record (record_id and the token columns) as its token blocks
    and record blocks in the pseudonymised folder `out`, as `pseudonymise_source` lays them out."""
    records, blocks = number_token_blocks(tokens)
    io.write_frame(blocks, load_contract("token_blocks"), blocks_path(out, source), metadata)
    io.write_frame(records, load_contract("record_blocks"), record_blocks_path(out, source), metadata)


def _metadata(key: LinkageKey, source: str) -> dict[str, str]:
    return {**token_file_metadata(key.kid), "source": source}


def _write_token_blocks(
    rows: pl.LazyFrame, key: LinkageKey, source: str, out: Path, parts: int, part_of: pl.Expr, folder: Path
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Tokenise the identifier blocks of `rows` (rows breaking a row rule count, but their blocks are
    only tokenised if another row of theirs is kept), part by part; write tokens/<source>.parquet.
    Return every block (`tokenise_blocks`) and the identifier counts over all rows."""
    blocks_contract = load_contract("token_blocks")
    keep = pl.col(_RULE).is_null()
    if parts == 1:
        table, blocks, counts = tokenise_blocks(rows, key, keep=keep)
        io.sink_frame(blocks.lazy(), blocks_contract, blocks_path(out, source), _metadata(key, source))
        return table, counts
    tables: list[pl.DataFrame] = []
    totals: dict[str, int] = {}
    first_block = 0
    for part in range(parts):
        table, blocks, counts = tokenise_blocks(rows.filter(part_of == part), key, keep=keep, first_block=first_block)
        io.sink_frame(blocks.lazy(), blocks_contract, folder / f"tokens-{part:04d}.parquet")
        first_block += blocks.height
        totals = {k: totals.get(k, 0) + v for k, v in counts.items()}
        tables.append(table)
        del blocks
    files = [folder / f"tokens-{part:04d}.parquet" for part in range(parts)]
    io.sink_frame(pl.scan_parquet(files), blocks_contract, blocks_path(out, source), _metadata(key, source))
    # Each block is in one part only, so the parts' tables together are the source's blocks.
    return pl.concat(tables), totals


def _write_rows(cfg: RunConfig, rows: pl.LazyFrame, table: pl.DataFrame, key: LinkageKey, source: str) -> tuple[int, dict[str, int]]:
    """Write records/<source>.parquet (each kept row's record token and block), payload/<source>.parquet and the quarantine in one pass over `rows`; return the number
    of rows set aside and their reasons.

    Rows keep the order of the delivered extract in both files, so the same extract always gives the
    same bytes without a sort, which would hold every row in memory at once, and row i of the record
    blocks is row i of the payload (the link stage reads them side by side).
    """
    joined = with_blocks(rows, table)
    # A row with no usable identifier is set aside for that; otherwise for the first row rule it breaks.
    joined = joined.with_columns(pl.when(pl.col(UNUSABLE)).then(pl.lit(QUARANTINE_REASON)).otherwise(pl.col(_RULE)).alias(_REASON))
    # One frame for every output of kept rows, so Polars makes each record token once for all of them.
    kept = with_record_tokens(joined.filter(pl.col(_REASON).is_null()), key, source)
    # The payload and the record blocks hold the same records in the same order: the link stage
    # reads them side by side, row by row, instead of joining them on the record IDs.
    sinks = [
        (kept, payload_contract(source), payload_file(cfg, source), None),
        (kept, load_contract("record_blocks"), record_blocks_path(cfg.pseudonymised_dir, source), _metadata(key, source)),
    ]
    # Quarantined rows are few and written sorted, so they are collected.
    columns = load_contract(source).column_names
    set_aside = joined.filter(pl.col(_REASON).is_not_null()).select(*columns, pl.col(_REASON).alias("quarantine_reason"))
    (quarantined,) = io.sink_frames(sinks, collect=[set_aside.sort("record_id")])

    qpath = quarantine_file(cfg, source)
    if quarantined.height:
        io.sink_lazy(quarantined.lazy(), qpath, private=True)  # identifiable rows: 0600 in a 0700 folder
    elif qpath.exists():
        qpath.unlink()  # a rerun of the label must not leave the last run's quarantine behind
    reasons = dict(sorted(quarantined.group_by("quarantine_reason").len().iter_rows())) if quarantined.height else {}
    return quarantined.height, {str(k): int(v) for k, v in reasons.items()}


_KEY = "_block_key"


def _block_key() -> pl.Expr:
    return pl.struct(list(IDENTIFIER_COLUMNS)).hash(seed=0).alias(_KEY)


def with_blocks(rows: pl.LazyFrame, table: pl.DataFrame) -> pl.LazyFrame:
    """`rows` with their identifier block's UNUSABLE and TOKEN_BLOCK from `table` (`tokenise_blocks`:
    every distinct identifier block of `rows`, once), in the rows' order.

    The join is on one 64-bit hash of the six identifier columns rather than on the columns (16
    million GP rows: 1.2 s against 2.9-3.2 s), and the table the join builds holds 17 bytes a block,
    not its identifiers. That is exact when no two blocks of `table` share a hash
    (checked here): every row's own block is in `table`, so the one block with the row's hash is its
    own. When two blocks do share one (for the 2.8 million blocks of the 1M world's GP extract, about
    one chance in five million), the rows are joined on the identifier columns themselves.
    """
    key = _block_key()
    keyed = table.select(key, UNUSABLE, TOKEN_BLOCK)
    if keyed.get_column(_KEY).n_unique() == keyed.height:
        # maintain_order: rows keep the input's order while the join still streams.
        return rows.with_columns(key).join(keyed.lazy(), on=_KEY, how="left", maintain_order="left").drop(_KEY)
    # nulls_equal: a block with a missing identifier must still find itself.
    return rows.join(table.lazy(), on=list(IDENTIFIER_COLUMNS), how="left", nulls_equal=True, maintain_order="left")


def record_tokeniser(key: LinkageKey):
    """`(source, record IDs) -> record tokens` under `key`, for comparing the synthetic ground truth
    (providers' record IDs) with a link map (pipeline.link.quality.evaluate_against_truth)."""
    record_key = record_token_key(key)
    return lambda source, ids: tokenise_record_ids(record_key, source, ids)
