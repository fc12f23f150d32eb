"""Linked service-use events, and the removal of records delivered twice.

A provider sometimes delivers the same event twice under a new record_id. Counting both would add
a spurious admission or consultation, so before counting, records of one participant and source
whose payload is identical in every column (dates, codes, hours) are kept once: an exact duplicate.

The rule cannot tell a duplicate from two genuine events with identical payloads on the same day
(two same-type GP consultations, two outpatient appointments in different clinics), because the
extracts carry nothing else to tell them apart. On the synthetic `realistic` profile (20,000
people, seed 5), measured against the ground truth, the rule removes per source:

| source        | true duplicates removed | genuine same-day events removed |
| ------------- | ----------------------- | ------------------------------- |
| hospital_apc  | 198 of 198              | 3                               |
| hospital_ae   | 189 of 189              | 42                              |
| hospital_op   | 1,230 of 1,230          | 680                             |
| gp_events     | 3,034 of 3,034          | 1,943                           |
| social_care   | 35 of 35                | 0                               |

so it removes every duplicate and, in every source, loses fewer genuine events than keeping
duplicates would add. (In GP and outpatient data the balance is close; richer extracts, with a
clinic or consultation identifier in the payload, would tell the two apart.)
"""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from pipeline import io
from pipeline.contracts import load_contract
from pipeline.errors import PipelineError
from pipeline.settings import SOURCES, RunConfig
from pipeline.zones import link_map_digests_file, link_map_file, payload_file


def payload_columns(source: str) -> list[str]:
    """The payload columns of a source's contract: what the event is, without who or which record."""
    return [c.name for c in load_contract(source).columns_of_class("payload")]


def deduplicate(events: pl.LazyFrame, source: str) -> pl.LazyFrame:
    """participant_id and the source's payload columns, each distinct event once."""
    cols = ["participant_id", *payload_columns(source)]
    return events.select(cols).unique(maintain_order=False)


# Records of a source read side by side with their link map rows at a time.
WINDOW = 1_000_000


def linked_events(cfg: RunConfig, work: Path, participants: pl.LazyFrame | None = None) -> dict[str, pl.LazyFrame]:
    """Each source's payload with the participant its record links to (linked records only; with
    `participants`, only theirs), written to `work` (`<source>/part-*.parquet`) and read back.

    The link map holds each source's records in the order of its payload file (pipeline.link.stage
    writes them so), so the two are read side by side, WINDOW rows at a time (pipeline.io.side_by_side),
    instead of joined on 64-character record IDs: memory follows the window. That the two are the
    files the link stage wrote in step, unchanged since, is known by their SHA-256, which it
    recorded (pipeline.zones.link_map_digests_file), so neither file's record IDs are read here
    (1M people: reading them took 6 of this step's 19 seconds, and writing them again 4 more). The
    caller removes `work`.
    """
    _check_payloads(cfg)
    link_map = pl.scan_parquet(link_map_file(cfg))
    sizes = dict(link_map.group_by("source").len().collect(engine="streaming").iter_rows())
    keep = None if participants is None else participants.select("participant_id").collect()
    events, start = {}, 0
    # The link map holds the sources in name order (pipeline.link.plan.LinkPlan.link_map_order).
    for source in sorted(SOURCES):
        n = sizes.get(source, 0)
        payload = pl.scan_parquet(payload_file(cfg, source)).drop("record_id")
        links = link_map.slice(start, n).select("participant_id")
        start += n
        folder = work / source
        folder.mkdir(parents=True, exist_ok=True)
        empty = payload.head(0).with_columns(participant_id=pl.lit(None, dtype=pl.String)).collect()
        io.write_scratch(empty, folder / "part-empty.parquet")  # a source with no linked event has a schema too
        for i, (linked, rows) in enumerate(io.side_by_side([links, payload], None, WINDOW, _misaligned(cfg, source))):
            window = rows.with_columns(participant_id=linked.get_column("participant_id")).filter(pl.col("participant_id").is_not_null())
            if keep is not None:
                window = window.join(keep, on="participant_id", how="semi")
            io.write_scratch(window, folder / f"part-{i:05d}.parquet")
        events[source] = pl.scan_parquet(folder / "*.parquet")
    return events


def _check_payloads(cfg: RunConfig) -> None:
    """Refuse, before anything is read or written, a link map or payload file that is not the one
    the link stage wrote or read: its SHA-256 is not the one it recorded
    (pipeline.zones.link_map_digests_file), or there is no record (a link map of earlier code)."""
    path = link_map_digests_file(cfg)
    recorded = io.read_json(path) if path.exists() else {}
    if recorded.get("link_map") != io.sha256_file(link_map_file(cfg)):
        raise PipelineError(
            f"{link_map_file(cfg)} is not the link map the link stage wrote (rule: its SHA-256 must be the one in "
            f"{path}); it was changed, or written by an earlier version: rerun the pprl_link DAG for this label"
        )
    payloads = recorded.get("payloads", {})
    for source in sorted(SOURCES):
        if payloads.get(source) != io.sha256_file(payload_file(cfg, source)):
            raise _misaligned(cfg, source)()


def _misaligned(cfg: RunConfig, source: str):
    def error() -> PipelineError:
        return PipelineError(
            f"{link_map_file(cfg)} was not written from {payload_file(cfg, source)} as that file is now (rule: the "
            "link map holds a source's records in the order of the payload file the link stage read, and that "
            "file's SHA-256); the link map or the payload is from "
            "another run or an earlier version: rerun the pprl_link DAG for this label"
        )

    return error


# Events of a source de-duplicated per part of its participants (`distinct_events`).
EVENTS_PER_PART = 4_000_000


def distinct_events(events: dict[str, pl.LazyFrame], work: Path) -> tuple[dict[str, pl.LazyFrame], dict[str, int]]:
    """Each source's distinct events (`deduplicate`), written once to `work` (`<source>.distinct/`)
    for the frames returned to read back; and the records removed as exact duplicates, per source
    (for the manifest). The cohort reads the events several times (service use, the monthly panel),
    and removing duplicates once costs less than once per read. The caller removes `work`.

    A source of more than EVENTS_PER_PART events is de-duplicated in parts of its participants (a
    hash of participant_id), one pass over its events each: a duplicate has one participant, so no
    part splits one, and memory follows the part, not the source."""
    distinct, removed = {}, {}
    for source, lf in events.items():
        total = lf.select(pl.len()).collect().item()
        parts = max(1, math.ceil(total / EVENTS_PER_PART))
        part_of = pl.col("participant_id").hash(seed=0) % parts
        folder = work / f"{source}.distinct"
        for k in range(parts):
            piece = lf if parts == 1 else lf.filter(part_of == k)
            io.write_scratch(deduplicate(piece, source), folder / f"part-{k:05d}.parquet")
        distinct[source] = pl.scan_parquet(folder / "*.parquet")
        removed[source] = int(total - distinct[source].select(pl.len()).collect().item())
    return distinct, removed
