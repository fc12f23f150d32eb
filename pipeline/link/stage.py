"""Stage 2: link every source's records to the participants. Reads only `pseudonymised/`, never the
key and never `raw/`, and refuses tokens made under different key ids."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from pipeline import io
from pipeline.contracts import load_contract
from pipeline.errors import KeyMismatchError, PipelineError
from pipeline.link.deterministic import DETERMINISTIC_RANKS, link_deterministic
from pipeline.settings import SOURCES, RunConfig

log = logging.getLogger(__name__)


def token_files(cfg: RunConfig) -> dict[str, Path]:
    files = {"persons": cfg.pseudonymised_dir / "persons.parquet"}
    files.update({s: cfg.pseudonymised_dir / "tokens" / f"{s}.parquet" for s in SOURCES})
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise PipelineError(f"pseudonymised files missing: {missing}; run the pprl_pseudonymise DAG for this label first")
    return files


def common_kid(files: dict[str, Path]) -> str:
    """The one kid every token file was made under; KeyMismatchError if they differ or one has none."""
    kids = {name: io.parquet_metadata(p).get("pprl_kid") for name, p in files.items()}
    distinct = {k for k in kids.values()}
    if len(distinct) != 1 or None in distinct:
        raise KeyMismatchError(
            "tokens were made under different key ids ("
            + ", ".join(f"{n}: {k or 'none'}" for n, k in sorted(kids.items()))
            + "); re-pseudonymise every source with the same key before linking"
        )
    return distinct.pop()


def run_link(cfg: RunConfig) -> Path:
    files = token_files(cfg)
    kid = common_kid(files)
    persons = pl.scan_parquet(files["persons"])
    maps = []
    for source in SOURCES:
        records = pl.scan_parquet(files[source])
        maps.append(link_deterministic(records, persons).with_columns(source=pl.lit(source)))
    link_map = pl.concat(maps).sort("source", "record_id")
    out = cfg.linked_dir / "link_map.parquet"
    io.sink_frame(link_map, load_contract("link_map"), out, {"pprl_kid": kid})

    summary = (
        pl.scan_parquet(out)
        .group_by("source", "rank", "conflict")
        .agg(pl.len().alias("records"), pl.col("participant_id").n_unique().alias("participants"))
        .sort("source", "rank", "conflict", nulls_last=True)
        .collect()
    )
    n_persons = persons.select(pl.len()).collect().item()
    by_source = {}
    for source in SOURCES:
        s = summary.filter(pl.col("source") == source)
        linked = s.filter(pl.col("rank").is_not_null())
        found = (
            pl.scan_parquet(out).filter((pl.col("source") == source) & pl.col("participant_id").is_not_null())
            .select(pl.col("participant_id").n_unique()).collect().item()
        )
        by_source[source] = {
            "records": int(s.get_column("records").sum()),
            "linked_by_rank": {r: int(linked.filter(pl.col("rank") == r).get_column("records").sum()) for r in DETERMINISTIC_RANKS},
            "unlinked": int(s.filter(pl.col("rank").is_null() & ~pl.col("conflict")).get_column("records").sum()),
            "conflicts": int(s.filter(pl.col("conflict")).get_column("records").sum()),
            "participants_found": int(found),
            "share_of_participants_found": round(found / n_persons, 4) if n_persons else None,
        }
    io.write_json({"kid": kid, "participants": n_persons, "sources": by_source}, cfg.linked_dir / "linkage_summary.json")
    log.info("linked %d sources for %d participants", len(SOURCES), n_persons)
    return out
