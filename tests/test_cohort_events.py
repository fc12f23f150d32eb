"""The cohort reads each source's payload beside its rows of the link map by row offset
(pipeline.cohort.events.linked_events), trusting that the payload file is the one the link map was
written in step with. A payload changed after linking (re-pseudonymised, reordered, or with events
moved between records) read out of step would give one person's events to another; it must be
refused, naming both files, before anything is written."""

from __future__ import annotations

import json
import shutil

import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline import io
from pipeline.cohort.events import linked_events
from pipeline.errors import PipelineError
from pipeline.settings import SOURCES, RunConfig
from pipeline.zones import PAYLOAD_DIGESTS_METADATA, link_map_file, payload_file

SOURCE = "hospital_ae"


@pytest.fixture
def linked(reference, tmp_path) -> RunConfig:
    """The reference run's work folder as it was before the cohort was built."""
    work = tmp_path / "work"
    shutil.copytree(reference.snapshots["build_cohort"], work, symlinks=True)
    return RunConfig.from_conf(reference.conf(work))


def _rewrite_payload(cfg: RunConfig, change) -> None:
    path = payload_file(cfg, SOURCE)
    table = pq.read_table(path)
    io.write_table(change(pl.from_arrow(table)).to_arrow().replace_schema_metadata(table.schema.metadata), path)


def test_the_link_map_names_the_payload_it_was_written_from(linked):
    digests = json.loads(io.parquet_metadata(link_map_file(linked))[PAYLOAD_DIGESTS_METADATA])
    assert digests == {s: io.sha256_file(payload_file(linked, s)) for s in SOURCES}
    events = linked_events(linked, linked.linked_dir / "events")
    assert set(events) == set(SOURCES)
    assert events[SOURCE].select(pl.len()).collect().item() > 0


@pytest.mark.parametrize(
    "change",
    [
        # Two records swapped: each row's record ID still matches its payload.
        lambda p: pl.concat([p.slice(1, 1), p.slice(0, 1), p.slice(2)]),
        # Two records' events swapped, their record IDs left in place: the IDs alone cannot tell.
        lambda p: pl.concat([pl.concat([p.slice(0, 1).select("record_id"), p.slice(1, 1).drop("record_id")], how="horizontal"),
                             pl.concat([p.slice(1, 1).select("record_id"), p.slice(0, 1).drop("record_id")], how="horizontal"),
                             p.slice(2)]),
    ],
    ids=["records_reordered", "events_moved_between_records"],
)
def test_a_payload_changed_after_linking_is_refused_before_anything_is_written(linked, change):
    _rewrite_payload(linked, change)
    work = linked.linked_dir / "events"
    with pytest.raises(PipelineError, match=r"was not written from .*payload.*rerun the pprl_link DAG") as err:
        linked_events(linked, work)
    assert str(payload_file(linked, SOURCE)) in str(err.value) and str(link_map_file(linked)) in str(err.value)
    assert not work.exists()


def test_a_link_map_that_names_no_payload_is_refused(linked):
    """A link map written before the link stage recorded the payloads' digests (or with them removed)."""
    path = link_map_file(linked)
    table = pq.read_table(path)
    kept = {k: v for k, v in table.schema.metadata.items() if k.decode() != PAYLOAD_DIGESTS_METADATA}
    io.write_table(table.replace_schema_metadata(kept), path)
    with pytest.raises(PipelineError, match="was not written from"):
        linked_events(linked, linked.linked_dir / "events")
