"""Crash safety, reruns and concurrency.

- Kill and rerun: one run is killed with SIGKILL in the middle of each stage in turn
  (tests/stage_runner.py stops the child at a fixed output of the stage, written under its temporary
  name and not yet renamed into place), and the stage is retried as Airflow retries it; after each
  retry the run's data files are the uninterrupted run's, and the release must be byte for byte the
  uninterrupted run's, every file including manifest.json.
- Reruns: the same inputs and key give the same bytes; publishing an existing label is refused
  unless replacing it was asked for; a crash while replacing a release never loses the earlier one.
- Concurrency: two labels run at the same time on one work folder, and neither touches the other.

The uninterrupted run, and the work folder before each of its steps, is the session fixture
`reference` (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import stage_runner
from conftest import RELIABILITY_LABEL, Reference, file_hashes, release_bytes

from pipeline import io
from pipeline.errors import ReleaseExistsError, ValidationFailed
from pipeline.publish.audit import audit_release
from pipeline.publish.release_log import LOG_NAME, read_log
from pipeline.publish.release import PUBLISHING_MARK
from pipeline.publish.report import page_for
from pipeline.settings import SOURCES, RunConfig
from pipeline.zones import WORKING_ZONES

RUNNER = Path(stage_runner.__file__).resolve()
ZONES = ("raw/quarantine", "pseudonymised", "linked", "releases", "reports")
CHILD_TIMEOUT = 600


def start(request: dict, log: Path) -> subprocess.Popen:
    # The child's own stderr goes to a file, so a failure shows what the child said.
    return subprocess.Popen(
        [sys.executable, str(RUNNER), json.dumps(request)], stdout=subprocess.PIPE, stderr=open(log, "wb"), text=True
    )


def kill_in_the_middle(conf: dict, step: str, write: int, log: Path) -> Path:
    """Run from `step` in a child, stop it after the `write`-th output of the step is written under a
    temporary name, SIGKILL it there, and return the output it was about to rename into place."""
    child = start({"conf": conf, "first": step, "crash": {"step": step, "write": write}}, log)
    try:
        line = child.stdout.readline()
        assert line, f"the child ended before reaching write {write} of {step}:\n{log.read_text()[-3000:]}"
        final = Path(json.loads(line)["stopped_before_renaming"])
        _, status = os.waitpid(child.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), "the child was to stop itself before renaming"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=CHILD_TIMEOUT) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    # Killed in the middle: the output is complete under its temporary name only.
    assert list(final.parent.glob(f".{final.name}.*.tmp")), f"no temporary file of {final.name} at the kill"
    return final


def leftovers(work: Path) -> list[str]:
    """Temporary files and folders a run must not leave behind once it has succeeded."""
    found = [p for p in work.rglob("*.tmp") if "data_docs" not in p.parts]
    found += list((work / "releases").glob(".staging-*")) + list((work / "releases").glob(".old-*"))
    found += list((work / "reports").glob(".staging-*")) + list((work / "reports").glob(".old-*"))
    found += list((work / "linked").glob("*/.work")) + list(work.rglob(".publishing"))
    return sorted(str(p.relative_to(work)) for p in found)


def logged(work: Path) -> list[tuple[str, str]]:
    """(label, manifest SHA-256) of every entry of the work folder's release log, its chain verified."""
    return [(e["release_label"], e["manifest_sha256"]) for e in read_log(work / "releases" / LOG_NAME)]


def middle(n: int) -> int:
    return (n + 1) // 2


# One crash per task of the DAGs; the pseudonymise task in the middle source of the middle of the
# stage. "last" in publish_release is the audit page, written after the release is renamed into place.
CRASHES = [
    ("check_inputs", "middle"),
    ("consent_gate", "middle"),
    (f"pseudonymise_source:{SOURCES[len(SOURCES) // 2]}", "middle"),
    ("validate_pseudonymised", "middle"),
    ("link", "middle"),
    ("validate_linked", "middle"),
    ("build_cohort", "middle"),
    ("stage_release", "middle"),
    ("validate_release", "middle"),
    ("publish_release", "middle"),
    ("publish_release", "last"),
]


def data_files(work: Path) -> dict[str, str]:
    """SHA-256 of every Parquet file under `work`: the run's data, which must not depend on crashes.
    (Its JSON files also hold what differs per run: times, durations.)"""
    return {str(p.relative_to(work)): io.sha256_file(p) for p in sorted(work.rglob("*.parquet"))}


def test_a_run_killed_in_the_middle_of_every_stage_reruns_to_the_same_release(reference: Reference, tmp_path):
    """One run, each task killed in turn as the list above says and retried, as Airflow retries a
    task whose worker died; after each retry the run's data files are the uninterrupted run's at
    the same point, and at the end its release is the uninterrupted run's byte for byte.

    (One run with every crash, not a run per crash from the uninterrupted run's folder: a run per
    crash reran every later stage, eleven runs' worth of the suite's time. The checks after each
    retry still name the task whose retry went wrong.)
    """
    work = tmp_path / "work"
    first = CRASHES[0][0]
    shutil.copytree(reference.snapshots[first], work, symlinks=True)
    conf = reference.conf(work)
    cfg = RunConfig.from_conf(conf)
    steps = stage_runner.steps(first)
    for step, following in zip(steps, [*steps[1:], None], strict=True):
        for n, (_, where) in enumerate(c for c in CRASHES if c[0] == step):
            writes = reference.writes[step]
            final = kill_in_the_middle(conf, step, middle(writes) if where == "middle" else writes, tmp_path / f"{step}-{n}.log")
            if where == "last":
                # Killed between the release's rename and its reports': the page is written into the
                # run's reports, which are not yet in place.
                assert final == cfg.reports_staging_dir / "audit.html" and cfg.release_dir.is_dir() and not cfg.staging_dir.exists()
            else:
                # Nothing published, and nothing that looks like a release, before the rename at the end.
                assert not cfg.release_dir.exists(), f"a release in place after {step} was killed in the middle"
        stage_runner.run_step(conf, step)  # the retry of the killed task, or the task run once
        if following is not None:
            assert data_files(work) == data_files(reference.snapshots[following]), f"data files differ after {step}"
            # No temporary file of the killed try is left: only the staging folders the uninterrupted
            # run has at the same point (its reports, and its release once staged).
            assert leftovers(work) == leftovers(reference.snapshots[following]), f"left behind after {step}"

    assert release_bytes(cfg.release_dir) == release_bytes(reference.release)
    # The audit page is there and describes the release in place.
    page = page_for(cfg.release_dir / "manifest.json", cfg.reports_dir, cfg.release_dir)
    assert (cfg.reports_dir / "audit.html").read_text(encoding="utf-8") == page
    assert leftovers(work) == []
    assert audit_release(cfg.release_dir, reference.trusted) == []
    # Logged once, however many times publication was tried.
    assert logged(work) == [(RELIABILITY_LABEL, io.sha256_file(cfg.release_dir / "manifest.json"))]


@pytest.mark.parametrize("source", SOURCES)
def test_a_source_killed_while_pseudonymised_is_rewritten_identically(reference: Reference, tmp_path, source):
    """Each source's task on its own: killed in the middle, rerun, its outputs are the uninterrupted run's."""
    step = f"pseudonymise_source:{source}"
    work = tmp_path / "work"
    shutil.copytree(reference.snapshots[step], work, symlinks=True)
    conf = reference.conf(work)
    kill_in_the_middle(conf, step, middle(reference.writes[step]), tmp_path / "child.log")
    stage_runner.run_step(conf, step)

    def outputs(cfg: RunConfig) -> dict[str, bytes]:
        d = cfg.pseudonymised_dir
        files = [d / folder / f"{source}.parquet" for folder in ("tokens", "records", "payload")] + [d / "counts" / f"{source}.json"]
        files += [cfg.quarantine_dir / f"{source}.parquet"]
        return {p.name + p.parent.name: p.read_bytes() for p in files if p.exists()}

    assert outputs(RunConfig.from_conf(conf)) == outputs(reference.before_publication)
    # A run in progress keeps its reports in the staging folder until publication.
    assert leftovers(work) == [f"reports/.staging-{RELIABILITY_LABEL}"]


# ---------------------------------------------------------------------------------------------------
# Reruns


@pytest.fixture()
def published_copy(reference: Reference, tmp_path) -> tuple[dict, Path]:
    """A copy of the reference work folder, its release published, its working zones kept."""
    work = reference.published_work(tmp_path / "work")
    return reference.conf(work), work


def test_publishing_an_existing_label_is_refused_and_leaves_it_untouched(published_copy) -> None:
    conf, work = published_copy
    cfg = RunConfig.from_conf(conf)
    before = file_hashes(cfg.release_dir)
    reports = file_hashes(cfg.reports_dir)
    with pytest.raises(ReleaseExistsError, match=f"release '{RELIABILITY_LABEL}' already exists.*--replace.*replace_release"):
        stage_runner.run_steps(conf, first="stage_release")
    assert file_hashes(cfg.release_dir) == before and file_hashes(cfg.reports_dir) == reports
    # Only the refused run's own reports are left, for the engineer to read.
    assert leftovers(work) == [f"reports/.staging-{RELIABILITY_LABEL}"]


def test_replacing_a_label_when_asked_gives_the_same_bytes_for_the_same_inputs(published_copy) -> None:
    conf, work = published_copy
    cfg = RunConfig.from_conf(conf)
    before = release_bytes(cfg.release_dir)
    manifest = io.read_json(cfg.release_dir / "manifest.json")
    stage_runner.run_steps({**conf, "replace_release": True}, first="check_inputs")
    after = release_bytes(cfg.release_dir)
    # The manifest records the run's settings, replace_release among them; nothing else differs.
    assert {k: v for k, v in after.items() if k != "manifest.json"} == {k: v for k, v in before.items() if k != "manifest.json"}
    manifest["settings"]["replace_release"] = True
    assert io.read_json(cfg.release_dir / "manifest.json") == manifest
    assert leftovers(work) == []
    # The replacement is a publication of its own: a second entry for the label, the latest.
    assert [label for label, _ in logged(work)] == [RELIABILITY_LABEL, RELIABILITY_LABEL]
    assert logged(work)[-1][1] == io.sha256_file(cfg.release_dir / "manifest.json")


def test_a_crash_between_the_two_renames_of_a_replacement_loses_nothing(published_copy) -> None:
    """Replacing moves the old release aside, then the new one in. Killed in between, the label's
    folder is missing for a moment; the next run of the label puts the old release back first."""
    conf, work = published_copy
    cfg = RunConfig.from_conf(conf)
    before = file_hashes(cfg.release_dir)
    aside = cfg.release_dir.with_name(f".old-{cfg.release_dir.name}")
    os.replace(cfg.release_dir, aside)  # the state the crash leaves
    stage_runner.run_step(conf, "stage_release")
    assert file_hashes(cfg.release_dir) == before and not aside.exists()
    # Published over, without replacement asked for, it is refused as any existing release is.
    stage_runner.run_step(conf, "validate_release")
    with pytest.raises(ReleaseExistsError):
        stage_runner.run_step(conf, "publish_release")
    assert file_hashes(cfg.release_dir) == before


@pytest.mark.parametrize("logged_before_the_crash", [True, False], ids=["after-the-log-entry", "before-the-log-entry"])
def test_a_retry_after_a_crash_past_the_rename_logs_the_release_once(published_copy, logged_before_the_crash) -> None:
    """Killed after the rename, publish_release finds its mark and finishes: it appends the log entry
    only if the crash came before it, never twice."""
    conf, work = published_copy
    cfg = RunConfig.from_conf(conf)
    before = release_bytes(cfg.release_dir)
    log = work / "releases" / LOG_NAME
    # The state the crash leaves: the release renamed into place, the run's reports still staged with
    # the publishing mark, the audit page not yet written.
    os.replace(cfg.reports_dir, cfg.reports_staging_dir)
    (cfg.reports_staging_dir / "audit.html").unlink()
    with io.atomic_path(cfg.reports_staging_dir / PUBLISHING_MARK) as tmp:
        tmp.write_text(io.sha256_file(cfg.release_dir / "manifest.json"))
    if not logged_before_the_crash:
        log.write_bytes(b"")
    stage_runner.run_step(conf, "publish_release")
    assert logged(work) == [(RELIABILITY_LABEL, io.sha256_file(cfg.release_dir / "manifest.json"))]
    assert release_bytes(cfg.release_dir) == before and (cfg.reports_dir / "audit.html").is_file()
    assert leftovers(work) == []
    # Once finished, a further retry of the task has nothing to do and says so; the log is unchanged.
    with pytest.raises(ValidationFailed, match="nothing staged"):
        stage_runner.run_step(conf, "publish_release")
    assert len(logged(work)) == 1


# ---------------------------------------------------------------------------------------------------
# Concurrency


def test_two_labels_run_at_the_same_time_on_one_work_folder_without_touching_each_other(reference: Reference, tmp_path) -> None:
    work = tmp_path / "work"
    labels = (RELIABILITY_LABEL, "other-2")
    children = [
        start({"conf": reference.conf(work, label)}, tmp_path / f"{label}.log") for label in labels
    ]
    for label, child in zip(labels, children, strict=True):
        assert child.wait(timeout=CHILD_TIMEOUT) == 0, (tmp_path / f"{label}.log").read_text()[-3000:]

    # Each zone holds one folder per label and nothing else (quarantine only when rows were set aside),
    # besides the release log the two publications shared, one entry each; the working zones hold
    # none, each label's working files having been removed once it was published.
    for zone in ZONES:
        found = sorted(p.name for p in (work / zone).iterdir() if p.name != LOG_NAME) if (work / zone).exists() else []
        if zone in WORKING_ZONES:
            assert found == [], zone
        else:
            assert found == (sorted(labels) if zone != "raw/quarantine" or found else []), zone
    assert sorted(e["release_label"] for e in read_log(work / "releases" / LOG_NAME)) == sorted(labels)
    # The same inputs and key give the same bytes, run alone or beside another label.
    same = RunConfig.from_conf(reference.conf(work, RELIABILITY_LABEL))
    assert release_bytes(same.release_dir) == release_bytes(reference.release)
    other = RunConfig.from_conf(reference.conf(work, "other-2"))
    assert io.read_json(other.release_dir / "manifest.json")["release_label"] == "other-2"
    assert audit_release(other.release_dir, reference.trusted) == []
    assert leftovers(work) == []
