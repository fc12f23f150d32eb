"""Pre-flight checks, evidence that is never overwritten, and provenance.

- A rerun of a published label without replacing it is refused before any stage does work, through
  the stage runner and through `pipeline run` (Airflow never starts), and leaves the label's release
  and reports byte for byte as they were.
- A run that is refused at validation or at publication leaves the earlier release's reports byte for
  byte as they were, and says where its own reports are (`reports/.staging-<label>/`).
- Every problem of the settings is listed at once, named by the CLI flag and the Airflow Param.
- A label with a trailing newline and a YAML mapping with a `!!python/` tag are refused by name.
- A release records who ran it, when and from where in `provenance.json`, outside the manifest.

Uses the session fixture `reference` (tests/conftest.py): its work folder is copied before any change.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import stage_runner
from conftest import RELIABILITY_LABEL, Reference, file_hashes

from pipeline import io
from pipeline.cli import main
from pipeline.contracts import check_file
from pipeline.deliveries.mapping import load_mapping
from pipeline.errors import ContractError, PipelineError, PreflightError, ReleaseExistsError, ValidationFailed
from pipeline.preflight import preflight
from pipeline.publish.audit import audit_release
from pipeline.publish.provenance import NOT_AIRFLOW, PER_RUN_FILES, PROVENANCE
from pipeline.settings import REPO_DIR, RunConfig

# Far more than pre-flight needs (about a second), far less than any stage of a run.
FAST_SECONDS = 10


@pytest.fixture()
def published(reference: Reference, tmp_path) -> tuple[RunConfig, dict[str, str]]:
    """A copy of the reference work folder, its release published and its working zones kept; and the
    hash of every file in it."""
    work = reference.published_work(tmp_path / "work")
    cfg = RunConfig.from_conf(reference.conf(work))
    return cfg, file_hashes(work)


def evidence(cfg: RunConfig) -> dict[str, dict[str, str]]:
    return {"release": file_hashes(cfg.release_dir), "reports": file_hashes(cfg.reports_dir)}


# ---------------------------------------------------------------------------------------------------
# A rerun of a published label


def test_rerunning_a_published_label_is_refused_before_any_work(published) -> None:
    cfg, before = published
    started = time.monotonic()
    with pytest.raises(PreflightError) as refused:
        stage_runner.run_steps(cfg.to_conf())
    assert time.monotonic() - started < FAST_SECONDS
    message = str(refused.value)
    assert f"release {RELIABILITY_LABEL!r} already exists" in message
    assert "--replace" in message and "replace_release" in message
    # Not one file of the work folder was written, moved or removed.
    assert file_hashes(cfg.work) == before


def test_the_command_line_refuses_a_published_label_in_seconds_without_starting_airflow(published, reference) -> None:
    cfg, before = published
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", "--raw", str(reference.raw), "--work", str(cfg.work),
         "--key", str(reference.key_file), "--release", RELIABILITY_LABEL],
        capture_output=True, text=True, cwd=REPO_DIR, timeout=120,
    )  # fmt: skip
    assert time.monotonic() - started < FAST_SECONDS, done.stderr
    assert done.returncode == 2, done.stderr
    assert "already exists" in done.stderr and "--replace" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (cfg.work / ".airflow").exists(), "Airflow must not start for a run that is refused"
    assert file_hashes(cfg.work) == before


def test_a_missing_input_folder_fails_fast_naming_the_flag(tmp_path, reference) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", "--raw", "/nonexistent", "--work", str(tmp_path / "work"),
         "--key", str(reference.key_file), "--release", "r1"],
        capture_output=True, text=True, cwd=REPO_DIR, timeout=120,
    )  # fmt: skip
    assert time.monotonic() - started < FAST_SECONDS, done.stderr
    assert done.returncode == 2
    assert "/nonexistent" in done.stderr and "--raw" in done.stderr and "does not exist" in done.stderr
    assert not (tmp_path / "work").exists()


def test_every_problem_is_listed_at_once_by_flag_and_param(tmp_path, reference) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(reference.raw, raw)
    (raw / "survey.parquet").unlink()
    (raw / "gp_events").mkdir()  # a folder of parts with no part in it
    (raw / "gp_events.parquet").rename(raw / "gp_events" / "notes.txt")
    key = tmp_path / "key.json"
    shutil.copyfile(reference.key_file, key)
    os.chmod(key, 0o640)
    cfg = RunConfig.from_conf(
        {"raw_dir": str(raw), "work_dir": str(tmp_path / "work"), "release_label": "r1", "key_file": str(key),
         "unit_costs": str(tmp_path / "costs.csv")}
    )  # fmt: skip
    with pytest.raises(PreflightError) as refused:
        preflight(cfg)
    found = {(Path(v.file).name, v.rule) for v in refused.value.violations}
    assert found == {
        ("survey.parquet", "file present"),
        ("gp_events", "file present"),
        ("key.json", "key file private"),
        ("costs.csv", "file present"),
    }
    message = str(refused.value)
    assert "--key (Airflow Param key_file)" in message and "--unit-costs (Airflow Param unit_costs)" in message
    assert "chmod 600" in message
    assert "4 problem(s)" in message


def test_a_missing_key_file_is_named_without_reading_any_key(tmp_path, reference, monkeypatch) -> None:
    monkeypatch.delenv("PPRL_KEY", raising=False)
    cfg = RunConfig.from_conf(reference.conf(tmp_path / "work", "r1", key_file=str(tmp_path / "no-key.json")))
    with pytest.raises(PreflightError, match=r"no-key.json: rule 'key file present'.*--key \(Airflow Param key_file\)"):
        preflight(cfg)


def test_a_ready_run_passes(tmp_path, reference) -> None:
    preflight(RunConfig.from_conf(reference.conf(tmp_path / "work", "r1")))


# ---------------------------------------------------------------------------------------------------
# Refused runs leave the earlier evidence as it was


def test_a_replacement_refused_at_validation_leaves_the_published_reports_untouched(published) -> None:
    cfg, _ = published
    before = evidence(cfg)
    replacing = RunConfig.from_conf({**cfg.to_conf(), "replace_release": True})
    stage_runner.run_step(replacing.to_conf(), "stage_release")
    cohort = replacing.staging_dir / "cohort.parquet"
    pl.read_parquet(cohort).with_columns(nhs_number=pl.lit("9990000018")).write_parquet(cohort)
    with pytest.raises(ValidationFailed) as refused:
        stage_runner.run_step(replacing.to_conf(), "validate_release")
    assert evidence(cfg) == before
    # The refused run's own evidence is kept, and the message says where.
    assert str(cfg.reports_staging_dir) in str(refused.value)
    privacy = io.read_json(cfg.reports_staging_dir / "privacy.json")
    assert any(r["result"] == "failed" for r in privacy["rules"])


def test_a_publication_refused_for_an_existing_label_leaves_the_published_reports_untouched(published) -> None:
    """Pre-flight passed (say the label was published by another run meanwhile): the last task refuses."""
    cfg, _ = published
    before = evidence(cfg)
    conf = cfg.to_conf()
    with pytest.raises(ReleaseExistsError) as refused:
        stage_runner.run_steps(conf, first="build_cohort")
    assert evidence(cfg) == before
    message = str(refused.value)
    assert "--replace" in message and "replace_release" in message and str(cfg.reports_staging_dir) in message
    assert (cfg.reports_staging_dir / "privacy.json").is_file()


def test_a_replacement_publishes_its_reports_with_the_release(published) -> None:
    cfg, _ = published
    conf = {**cfg.to_conf(), "replace_release": True}
    stage_runner.run_steps(conf, first="preflight")
    assert not cfg.reports_staging_dir.exists()
    for name in ("audit.html", "privacy.json", "validation/release.json", "validation/raw.json", "data_docs/index.html"):
        assert (cfg.reports_dir / name).is_file(), name
    page = (cfg.reports_dir / "audit.html").read_text(encoding="utf-8")
    assert 'href="data_docs/index.html"' in page
    # Nothing in the published reports points back into the staging folder they were written in.
    staged = [name for name, _ in file_hashes(cfg.reports_dir).items()
              if f"reports/.staging-{RELIABILITY_LABEL}" in (cfg.reports_dir / name).read_bytes().decode("utf-8", "ignore")]
    assert staged == []
    assert audit_release(cfg.release_dir, stage_runner.trusted(conf)) == []


# ---------------------------------------------------------------------------------------------------
# Provenance


def test_the_release_records_who_ran_it_when_and_from_where_outside_the_manifest(reference: Reference) -> None:
    release = reference.release
    manifest = io.read_json(release / "manifest.json")
    assert PROVENANCE in PER_RUN_FILES and PROVENANCE not in manifest["files"]
    provenance = io.read_json(release / PROVENANCE)
    assert provenance["orchestrator"] == NOT_AIRFLOW
    assert provenance["triggered_by"]
    assert provenance["input_folder"] == str(reference.raw)
    assert provenance["started"] <= provenance["finished"] and provenance["finished"].endswith("Z")
    assert provenance["manifest_sha256"] == io.sha256_file(release / "manifest.json")
    assert [run["dag_id"] for run in provenance["runs"]] == ["pprl_pseudonymise", "pprl_link", "pprl_publish"]
    # Content facts stay in the manifest; per-run facts never enter it.
    assert manifest["inputs"] and manifest["code_version"]
    assert "raw_dir" not in manifest["settings"] and "started" not in str(manifest)
    page = (reference.cfg.reports_dir / "audit.html").read_text(encoding="utf-8")
    assert 'id="provenance"' in page and NOT_AIRFLOW in page


def test_airflow_run_facts_are_read_from_the_task_context() -> None:
    import datetime as dt
    from types import SimpleNamespace

    from pipeline.orchestration.conf import run_facts

    dag_run = SimpleNamespace(
        dag_id="pprl_link", run_id="asset_triggered__2026", run_type="asset_triggered", triggering_user_name="alice",
        start_date=dt.datetime(2026, 4, 1, 9, 30, tzinfo=dt.timezone.utc),
    )  # fmt: skip
    assert run_facts({"dag_run": dag_run}) == {
        "dag_id": "pprl_link", "run_id": "asset_triggered__2026", "run_type": "asset_triggered",
        "triggered_by": "alice", "started": "2026-04-01T09:30:00Z",
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Named errors for crafted settings


@pytest.mark.parametrize("label", ["r1\n", "r1\r\n", "\nr1", "r1 ", "", ".r1", "a" * 65])
def test_a_label_that_is_not_wholly_valid_is_refused(label, tmp_path) -> None:
    with pytest.raises(PipelineError, match=r"--release \(Airflow Param release_label\) must be"):
        RunConfig.from_conf({"raw_dir": str(tmp_path), "work_dir": str(tmp_path), "release_label": label})


def test_the_trigger_form_refuses_a_label_with_a_trailing_newline() -> None:
    import copy

    from pipeline.orchestration.defaults import run_params

    label = run_params(filled_by_upstream=False)["release_label"]
    assert copy.copy(label).resolve("r1") == "r1"
    for bad in ("r1\n", "\nr1", "r1 "):
        with pytest.raises(ValueError, match="does not match"):
            copy.copy(label).resolve(bad)


def test_the_command_line_refuses_a_label_with_a_trailing_newline(tmp_path, capsys) -> None:
    code = main(["run", "--raw", str(tmp_path), "--work", str(tmp_path / "w"), "--release", "r1\n"])
    assert code == 2 and "--release" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


PYTHON_TAG_MAPPING = """mapping: m
version: 1
dataset: hospital_apc
columns: !!python/object/apply:os.system ["echo pwned"]
"""


def test_a_mapping_with_a_python_tag_is_refused_by_name(tmp_path, reference, capsys) -> None:
    mapping = tmp_path / "provider.yaml"
    mapping.write_text(PYTHON_TAG_MAPPING)
    with pytest.raises(ContractError) as refused:
        load_mapping(mapping)
    (violation,) = refused.value.violations
    assert (violation.file, violation.rule) == (str(mapping), "plain YAML")
    assert "--mapping" in violation.detail
    with pytest.raises(ContractError):
        check_file(reference.raw / "hospital_apc.parquet", "hospital_apc", mapping)
    assert main(["check", "hospital_apc", str(reference.raw / "hospital_apc.parquet"), "--mapping", str(mapping)]) == 2
    err = capsys.readouterr().err
    assert "plain YAML" in err and "Traceback" not in err


def test_a_mapping_that_is_not_yaml_is_refused_by_name(tmp_path) -> None:
    mapping = tmp_path / "provider.yaml"
    mapping.write_text("dataset: [unclosed\n")
    with pytest.raises(ContractError, match="plain YAML"):
        load_mapping(mapping)


def test_audit_accepts_provenance_but_not_one_of_another_release(published) -> None:
    cfg, _ = published
    trusted = stage_runner.trusted(cfg.to_conf())
    assert audit_release(cfg.release_dir, trusted) == []
    path = cfg.release_dir / PROVENANCE
    provenance = io.read_json(path)
    io.write_json({**provenance, "manifest_sha256": "0" * 64}, path)
    problems = audit_release(cfg.release_dir, trusted)
    # The signature binds provenance.json, and the file itself names another manifest: both are said.
    assert any("the signature does not verify" in p for p in problems)
    assert f"{PROVENANCE}: names another manifest than this release's (its manifest_sha256 differs); restore it from the archived release" in problems
