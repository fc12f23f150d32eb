"""Exact duplicates are removed per part of the participants when a source has many events
(pipeline.cohort.events.distinct_events): the parts must give the same distinct events and the same
count removed as removing them over the whole source at once."""

from __future__ import annotations

import polars as pl

from pipeline.cohort import events
from pipeline.cohort.events import distinct_events, payload_columns


def test_duplicates_removed_in_parts_are_those_removed_at_once(tmp_path, monkeypatch):
    cols = payload_columns("social_care")
    rows = []
    for i in range(60):
        person = f"P{i % 9:07d}"
        payload = [f"v{(i // 2) % 5}-{j}" for j in range(len(cols))]  # every pair of rows repeats a payload
        rows.append([person, *payload])
    lf = pl.DataFrame(rows, schema=["participant_id", *cols], orient="row").lazy()
    whole, removed_whole = distinct_events({"social_care": lf}, tmp_path / "whole")
    monkeypatch.setattr(events, "EVENTS_PER_PART", 7)  # nine parts
    parts, removed_parts = distinct_events({"social_care": lf}, tmp_path / "parts")
    assert len(list((tmp_path / "parts" / "social_care.distinct").glob("part-*.parquet"))) == 9
    assert removed_parts == removed_whole and removed_whole["social_care"] > 0
    key = ["participant_id", *cols]
    assert parts["social_care"].collect().sort(key).equals(whole["social_care"].collect().sort(key))
