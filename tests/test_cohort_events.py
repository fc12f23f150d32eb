"""The cohort reads each source's payload beside its rows of the link map by row offset
(pipeline.cohort.events.linked_events), trusting that the two are the files the link stage wrote in
step. A payload changed after linking (re-pseudonymised, reordered, or with events moved between
records), or a link map whose rows were reordered, read out of step would give one person's events
to another; it must be refused, naming the files, before anything is written."""

from __future__ import annotations

import shutil

import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline import io
from pipeline.cohort.events import linked_events
from pipeline.errors import PipelineError
from pipeline.settings import SOURCES, RunConfig
from pipeline.zones import link_map_digests_file, link_map_file, payload_file

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


def test_the_link_stage_records_the_files_it_wrote_in_step(linked):
    recorded = io.read_json(link_map_digests_file(linked))
    assert recorded == {"link_map": io.sha256_file(link_map_file(linked)), "payloads": {s: io.sha256_file(payload_file(linked, s)) for s in SOURCES}}
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


def test_a_link_map_with_its_rows_reordered_is_refused(linked):
    """Two of a source's link map rows swapped whole (record ID and participant together), the file
    otherwise as written, its metadata kept: each row still says truly which participant a record
    links to, but read beside the payload by position the two records' events would change hands."""
    path = link_map_file(linked)
    table = pq.read_table(path)
    rows = pl.from_arrow(table).with_row_index("_i")
    first = rows.filter(pl.col("source") == SOURCE).get_column("_i").head(2).to_list()
    order = pl.Series(list(range(rows.height))).scatter(first, first[::-1])
    io.write_table(rows.drop("_i")[order].to_arrow().replace_schema_metadata(table.schema.metadata), path)
    work = linked.linked_dir / "events"
    with pytest.raises(PipelineError, match=r"is not the link map the link stage wrote .*rerun the pprl_link DAG"):
        linked_events(linked, work)
    assert not work.exists()


def test_a_link_map_without_recorded_digests_is_refused(linked):
    """A label linked by earlier code (or with the record removed)."""
    link_map_digests_file(linked).unlink()
    with pytest.raises(PipelineError, match="is not the link map the link stage wrote"):
        linked_events(linked, linked.linked_dir / "events")
