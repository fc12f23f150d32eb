"""Pseudonymising one service-use source: token file, payload file and quarantine.

The token file (schemas/record_tokens.yaml) holds record_id and tokens; the payload file holds
record_id and the payload columns of the source's contract. No direct identifier leaves this step.
Both are streamed to Parquet: the extract is never collected whole.
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from pipeline import io
from pipeline.contracts import Contract, load_contract
from pipeline.crypto.keys import LinkageKey
from pipeline.pseudonymise.identifiers import NO_USABLE_IDENTIFIER, identifier_quality, with_tokens
from pipeline.pseudonymise.inputs import scan_input
from pipeline.settings import SOURCES, RunConfig

log = logging.getLogger(__name__)


def payload_contract(source: str) -> Contract:
    """The pseudonymised payload of a source: record_id plus its payload columns."""
    return load_contract(source).restricted_to(("payload",), name=f"{source}_payload", zone="pseudonymised")


def pseudonymise_source(cfg: RunConfig, key: LinkageKey, source: str) -> Path:
    """Write tokens/<source>.parquet, payload/<source>.parquet and counts/<source>.json; return the folder."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; sources are {SOURCES}")
    raw = scan_input(cfg, source)
    tokened = with_tokens(raw, key).with_columns(_unusable=NO_USABLE_IDENTIFIER)
    out = cfg.pseudonymised_dir

    tokens_contract = load_contract("record_tokens")
    good = tokened.filter(~pl.col("_unusable"))
    io.sink_frame(
        good.sort("record_id"), tokens_contract, out / "tokens" / f"{source}.parquet", {"pprl_kid": key.kid, "source": source}
    )
    io.sink_frame(good.sort("record_id"), payload_contract(source), out / "payload" / f"{source}.parquet")

    quarantined = tokened.filter(pl.col("_unusable"))
    n_quarantined = quarantined.select(pl.len()).collect().item()
    qpath = cfg.quarantine_dir / f"{source}.parquet"
    if n_quarantined:
        src_contract = load_contract(source)
        quarantined.select(
            *src_contract.column_names, pl.lit("no usable identifier (no valid NHS number, date of birth or postcode)").alias("quarantine_reason")
        ).sort("record_id").sink_parquet(qpath, mkdir=True)
    elif qpath.exists():
        qpath.unlink()

    counts = identifier_quality(raw)
    counts["quarantined"] = int(n_quarantined)
    counts["pseudonymised"] = counts["rows"] - int(n_quarantined)
    io.write_json({"source": source, "kid": key.kid, "counts": counts}, out / "counts" / f"{source}.json")
    log.info("pseudonymised %s: %d rows, %d quarantined", source, counts["rows"], n_quarantined)
    return out
