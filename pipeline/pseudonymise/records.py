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

Memory follows the number of distinct identifier blocks: their canonical forms while they are
tokenised (about 1 kB each), then their 19 tokens as categorical codes (pipeline.pseudonymise.
identifiers). An extract of more than `ROWS_PER_PART` rows is done in parts by a hash of the date of
birth, so every identifier block and every token block falls in exactly one part and is still
tokenised only once. Parts cost a pass over the extract each, so they are kept few: a 30 million-row
GP extract (a million people) takes two.
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
from pipeline.pseudonymise.identifiers import number_token_blocks, tokenise_blocks, with_unusable_flag
from pipeline.pseudonymise.inputs import scan_input
from pipeline.progress import Progress
from pipeline.pseudonymise.row_rules import rules_for
from pipeline.zones import blocks_path, counts_file, payload_contract, payload_file, quarantine_file
from pipeline.zones import records_path as record_blocks_path
from pipeline.settings import SOURCES, RunConfig

log = logging.getLogger(__name__)

QUARANTINE_REASON = "no usable identifier (no valid NHS number, date of birth or postcode)"
SET_ASIDE = "_set_aside"
ROWS_PER_PART = 16_000_000


def with_record_tokens(lf: pl.LazyFrame, key: LinkageKey, source: str) -> pl.LazyFrame:
    """`lf` with its provider record IDs replaced by their record tokens (pipeline.crypto.tokens),
    batch by batch as the frame streams, in order."""
    record_key = record_token_key(key)
    return lf.with_columns(
        pl.col("record_id").map_batches(lambda ids: tokenise_record_ids(record_key, source, ids), return_dtype=pl.String, is_elementwise=True)
    )


# What pseudonymise_source's progress reports say it is doing (pipeline.progress).
PSEUDONYMISE_STEPS: tuple[str, ...] = ("tokenising identifiers", "writing the payload", "setting aside quarantined rows")


def pseudonymise_source(cfg: RunConfig, key: LinkageKey, source: str) -> Path:
    """Write tokens/<source>.parquet, records/<source>.parquet, payload/<source>.parquet and
    counts/<source>.json; return the folder. Says every minute how far it is (pipeline.progress)."""
    with Progress(f"pseudonymise {source}", total=len(PSEUDONYMISE_STEPS), unit="steps") as progress:
        return _pseudonymise_source(cfg, key, source, progress)


def _pseudonymise_source(cfg: RunConfig, key: LinkageKey, source: str, progress: Progress) -> Path:
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; sources are {SOURCES}")
    # Rows with no usable identifier (NO_USABLE_IDENTIFIER) or breaking a row rule (row_rules) are
    # set aside before tokenising: their values are never tokenised.
    reason = pl.when(pl.col("_unusable")).then(pl.lit(QUARANTINE_REASON))
    for rule in rules_for(source):
        reason = reason.when(rule.broken(cfg.extract)).then(pl.lit(rule.reason))
    raw = (
        with_unusable_flag(scan_input(cfg, source))
        .with_columns(reason.otherwise(pl.lit(None, dtype=pl.String)).alias("_reason"))
        .with_columns(pl.col("_reason").is_not_null().alias(SET_ASIDE))
    )
    out = cfg.pseudonymised_dir
    progress.step(PSEUDONYMISE_STEPS[0])
    counts = _write_tokens(raw, key, source, out)
    progress.advance()
    progress.step(PSEUDONYMISE_STEPS[1])
    # Rows keep the order of the delivered extract (part by part when in parts), so the same extract
    # always gives the same bytes without a sort, which would hold every row in memory at once.
    # The payload needs no token, so its plan skips the token join.
    io.sink_frame(with_record_tokens(raw.filter(~pl.col(SET_ASIDE)), key, source), payload_contract(source), payload_file(cfg, source))
    progress.advance()
    progress.step(PSEUDONYMISE_STEPS[2])

    quarantined = raw.filter(pl.col(SET_ASIDE))
    reasons = dict(sorted(quarantined.group_by("_reason").len().collect().iter_rows()))
    n_quarantined = sum(reasons.values())
    qpath = quarantine_file(cfg, source)
    if n_quarantined:
        src_contract = load_contract(source)
        rows = quarantined.select(*src_contract.column_names, pl.col("_reason").alias("quarantine_reason")).sort("record_id")
        io.sink_lazy(rows, qpath, private=True)  # identifiable rows: 0600 in a 0700 folder
    elif qpath.exists():
        qpath.unlink()  # a rerun of the label must not leave the last run's quarantine behind

    counts["quarantined"] = int(n_quarantined)
    counts["quarantine_reasons"] = {str(k): int(v) for k, v in reasons.items()}
    counts["pseudonymised"] = counts["rows"] - int(n_quarantined)
    io.write_json({"source": source, "kid": key.kid, "counts": counts}, counts_file(cfg, source))
    log.info("pseudonymised %s: %d rows, %d quarantined", source, counts["rows"], n_quarantined)
    return out


def write_token_files(tokens: pl.DataFrame, out: Path, source: str, metadata: dict[str, str]) -> None:
    """Write a source's tokens given per record (record_id and the token columns) as its token blocks
    and record blocks in the pseudonymised folder `out`, as `pseudonymise_source` lays them out."""
    records, blocks = number_token_blocks(tokens)
    io.write_frame(blocks, load_contract("token_blocks"), blocks_path(out, source), metadata)
    io.write_frame(records, load_contract("record_blocks"), record_blocks_path(out, source), metadata)


def _write_tokens(raw: pl.LazyFrame, key: LinkageKey, source: str, out: Path) -> dict[str, int]:
    """Tokenise the usable rows of `raw` into tokens/<source>.parquet (its token blocks) and
    records/<source>.parquet (each row's block), in parts when it is big; return the identifier counts."""
    tokens_path, records_path = blocks_path(out, source), record_blocks_path(out, source)
    blocks_contract, records_contract = load_contract("token_blocks"), load_contract("record_blocks")
    metadata = {**token_file_metadata(key.kid), "source": source}
    keep = ~pl.col(SET_ASIDE)
    parts = max(1, math.ceil(raw.select(pl.len()).collect().item() / ROWS_PER_PART))
    if parts == 1:
        records, blocks, counts = tokenise_blocks(raw, key, keep=keep)
        io.sink_frame(blocks.lazy(), blocks_contract, tokens_path, metadata)
        io.sink_frame(with_record_tokens(records, key, source), records_contract, records_path, metadata)
        return counts

    # Parts by the date of birth: records with the same tokens have the same date of birth (the token
    # spec's canonical date is one-to-one), so each token block falls in exactly one part, and the
    # parts' blocks, numbered one after another, are still the source's distinct blocks.
    part_of = pl.col("date_of_birth").hash(seed=0) % parts
    folder = out / f".parts-{source}"
    shutil.rmtree(folder, ignore_errors=True)
    totals: dict[str, int] = {}
    first_block = 0
    try:
        for part in range(parts):
            records, blocks, counts = tokenise_blocks(raw.filter(part_of == part), key, keep=keep, first_block=first_block)
            io.sink_frame(blocks.lazy(), blocks_contract, folder / f"tokens-{part:04d}.parquet")
            io.sink_frame(with_record_tokens(records, key, source), records_contract, folder / f"records-{part:04d}.parquet")
            first_block += blocks.height
            totals = {k: totals.get(k, 0) + v for k, v in counts.items()}
            del records, blocks
        for name, contract, path in (("tokens", blocks_contract, tokens_path), ("records", records_contract, records_path)):
            files = [folder / f"{name}-{part:04d}.parquet" for part in range(parts)]
            io.sink_frame(pl.scan_parquet(files), contract, path, metadata)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(folder)
    log.info("tokenised %s in %d parts", source, parts)
    return totals


def record_tokeniser(key: LinkageKey):
    """`(source, record IDs) -> record tokens` under `key`, for comparing the synthetic ground truth
    (providers' record IDs) with a link map (pipeline.link.quality.evaluate_against_truth)."""
    record_key = record_token_key(key)
    return lambda source, ids: tokenise_record_ids(record_key, source, ids)
