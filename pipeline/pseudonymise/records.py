"""Pseudonymising one service-use source: token file, payload file and quarantine (rows with no
usable identifier, or breaking a row rule of pipeline.pseudonymise.row_rules, each with its reason).

The token file (schemas/record_tokens.yaml) holds record_id and tokens; the payload file holds
record_id and the payload columns of the source's contract. No direct identifier leaves this step.
Both are streamed to Parquet: the extract is never collected whole.

Memory follows the number of distinct identifier blocks: their canonical forms while they are
tokenised (about 1 kB each), then their 19 tokens as categorical codes (pipeline.pseudonymise.
identifiers). An extract of more than `ROWS_PER_PART` rows is done in parts by a hash of the
identifier block, so every block falls in exactly one part and is still tokenised only once. Parts
cost a pass over the extract each and a rewrite of the token file, so they are kept few: a 30
million-row GP extract (a million people) takes two.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
from pathlib import Path

import polars as pl

from pipeline import io
from pipeline.contracts import Contract, load_contract
from pipeline.crypto.keys import LinkageKey
from pipeline.pseudonymise.identifiers import IDENTIFIER_COLUMNS, tokenise_identifiers, with_unusable_flag
from pipeline.pseudonymise.inputs import scan_input
from pipeline.pseudonymise.row_rules import rules_for
from pipeline.settings import SOURCES, RunConfig

log = logging.getLogger(__name__)

QUARANTINE_REASON = "no usable identifier (no valid NHS number, date of birth or postcode)"
SET_ASIDE = "_set_aside"
ROWS_PER_PART = 16_000_000


def payload_contract(source: str) -> Contract:
    """The pseudonymised payload of a source: record_id plus its payload columns."""
    return load_contract(source).restricted_to(("payload",), name=f"{source}_payload", zone="pseudonymised")


def pseudonymise_source(cfg: RunConfig, key: LinkageKey, source: str) -> Path:
    """Write tokens/<source>.parquet, payload/<source>.parquet and counts/<source>.json; return the folder."""
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
    counts = _write_tokens(raw, key, source, out / "tokens" / f"{source}.parquet")
    # Rows keep the order of the delivered extract (part by part when in parts), so the same extract
    # always gives the same bytes without a sort, which would hold every row in memory at once.
    # The payload needs no token, so its plan skips the token join.
    io.sink_frame(raw.filter(~pl.col(SET_ASIDE)), payload_contract(source), out / "payload" / f"{source}.parquet")

    quarantined = raw.filter(pl.col(SET_ASIDE))
    reasons = dict(sorted(quarantined.group_by("_reason").len().collect().iter_rows()))
    n_quarantined = sum(reasons.values())
    qpath = cfg.quarantine_dir / f"{source}.parquet"
    if n_quarantined:
        src_contract = load_contract(source)
        with io.atomic_path(qpath) as tmp:
            quarantined.select(*src_contract.column_names, pl.col("_reason").alias("quarantine_reason")).sort(
                "record_id"
            ).sink_parquet(tmp, compression="zstd", compression_level=3)
    elif qpath.exists():
        qpath.unlink()  # a rerun of the label must not leave the last run's quarantine behind

    counts["quarantined"] = int(n_quarantined)
    counts["quarantine_reasons"] = {str(k): int(v) for k, v in reasons.items()}
    counts["pseudonymised"] = counts["rows"] - int(n_quarantined)
    io.write_json({"source": source, "kid": key.kid, "counts": counts}, out / "counts" / f"{source}.json")
    log.info("pseudonymised %s: %d rows, %d quarantined", source, counts["rows"], n_quarantined)
    return out


def _write_tokens(raw: pl.LazyFrame, key: LinkageKey, source: str, path: Path) -> dict[str, int]:
    """Tokenise the usable rows of `raw` into `path`, in parts when it is big; return the identifier counts."""
    contract = load_contract("record_tokens")
    metadata = {"pprl_kid": key.kid, "source": source}
    keep = ~pl.col(SET_ASIDE)
    parts = max(1, math.ceil(raw.select(pl.len()).collect().item() / ROWS_PER_PART))
    if parts == 1:
        tokened, counts = tokenise_identifiers(raw, key, keep=keep)
        io.sink_frame(tokened, contract, path, metadata)
        return counts

    part_of = pl.struct(list(IDENTIFIER_COLUMNS)).hash(seed=0) % parts
    folder = path.with_name(f".parts-{path.stem}")
    shutil.rmtree(folder, ignore_errors=True)
    totals: dict[str, int] = {}
    try:
        for part in range(parts):
            tokened, counts = tokenise_identifiers(raw.filter(part_of == part), key, keep=keep)
            io.sink_frame(tokened, contract, folder / f"{part:04d}.parquet")
            totals = {k: totals.get(k, 0) + v for k, v in counts.items()}
        files = [folder / f"{part:04d}.parquet" for part in range(parts)]
        io.sink_frame(pl.scan_parquet(files), contract, path, metadata)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(folder)
    log.info("tokenised %s in %d parts", source, parts)
    return totals
