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

from pathlib import Path

import polars as pl

from pipeline import io
from pipeline.contracts import load_contract
from pipeline.settings import SOURCES, RunConfig
from pipeline.zones import link_map_file, payload_file


def payload_columns(source: str) -> list[str]:
    """The payload columns of a source's contract: what the event is, without who or which record."""
    return [c.name for c in load_contract(source).columns_of_class("payload")]


def deduplicate(events: pl.LazyFrame, source: str) -> pl.LazyFrame:
    """participant_id and the source's payload columns, each distinct event once."""
    cols = ["participant_id", *payload_columns(source)]
    return events.select(cols).unique(maintain_order=False)


def linked_events(cfg: RunConfig, work: Path | None = None, participants: pl.LazyFrame | None = None) -> dict[str, pl.LazyFrame]:
    """Each source's payload with the participant its record links to (linked records only; with
    `participants`, only theirs).

    With `work`, each source's linked events are joined once and written there (`<source>.parquet`),
    and the frames returned read them back: joining 50 million payload rows to the link map on
    record_id costs more than writing the result once. The caller removes `work`.
    """
    link_map = pl.scan_parquet(link_map_file(cfg)).filter(pl.col("participant_id").is_not_null())
    events = {
        s: pl.scan_parquet(payload_file(cfg, s)).join(
            link_map.filter(pl.col("source") == s).select("record_id", "participant_id"), on="record_id", how="inner"
        )
        for s in SOURCES
    }
    if participants is not None:
        events = {s: lf.join(participants.select("participant_id"), on="participant_id", how="semi") for s, lf in events.items()}
    if work is None:
        return events
    work.mkdir(parents=True, exist_ok=True)
    for s, lf in events.items():
        io.write_scratch(lf, work / f"{s}.parquet")
    return {s: pl.scan_parquet(work / f"{s}.parquet") for s in SOURCES}


def distinct_events(events: dict[str, pl.LazyFrame], work: Path) -> tuple[dict[str, pl.LazyFrame], dict[str, int]]:
    """Each source's distinct events (`deduplicate`), written once to `work` (`<source>.distinct.parquet`)
    for the frames returned to read back; and the records removed as exact duplicates, per source
    (for the manifest). The cohort reads the events several times (service use, the monthly panel),
    and removing duplicates once costs less than once per read. The caller removes `work`."""
    distinct, removed = {}, {}
    for source, lf in events.items():
        total = lf.select(pl.len()).collect().item()
        path = io.write_scratch(deduplicate(lf, source), work / f"{source}.distinct.parquet")
        distinct[source] = pl.scan_parquet(path)
        removed[source] = int(total - distinct[source].select(pl.len()).collect().item())
    return distinct, removed

