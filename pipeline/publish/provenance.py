"""Provenance: who ran a release, when, from which input folder, under which Airflow run ids.

These facts differ from run to run, so they never enter `manifest.json`, which must be byte-identical
for the same inputs, study and key. They go into `provenance.json` beside it in the release (a
per-run file: listed in PER_RUN_FILES, not in the manifest's `files`), bound to the manifest by its
SHA-256. What the release was made from (input file hashes, code version, key id) is content, and
stays in the manifest.

How the facts are gathered: the first task of each DAG records its run (`record_run`) into the run's
reports staging folder (`runs.json`); without Airflow (the stage runner, tests) the run is recorded
as NOT_AIRFLOW under the operating-system user. publish_release turns the records into
`provenance.json` (`write_provenance`), which the audit page shows.

    >>> [run["run_id"] for run in merge_run([], "pprl_link", None, now=lambda: "2026-04-01T09:30:00Z", user=lambda: "ann")]
    ['not run by Airflow']
"""

from __future__ import annotations

import datetime as dt
import getpass
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipeline import io
from pipeline.settings import RunConfig

PROVENANCE = "provenance.json"
# Files of a release that differ per run: never listed in the manifest (signed on their own).
PER_RUN_FILES: tuple[str, ...] = (PROVENANCE,)
# Kept in the run's reports staging folder until publication, then published with the reports.
RUNS = "runs.json"
NOT_AIRFLOW = "not run by Airflow"


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return "unknown user"


def merge_run(
    runs: list[dict[str, Any]],
    dag_id: str,
    run: Mapping[str, Any] | None,
    *,
    now: Callable[[], str] = utc_now,
    user: Callable[[], str] = os_user,
) -> list[dict[str, Any]]:
    """`runs` with this DAG's run recorded, replacing an earlier record of the same DAG (a rerun).

    `run` holds the Airflow facts (`pipeline.orchestration.conf.run_facts`); None means no Airflow.
    """
    if run is None:
        entry = {"dag_id": dag_id, "run_id": NOT_AIRFLOW, "run_type": None, "triggered_by": user(), "started": now()}
    else:
        entry = {**dict(run), "dag_id": run.get("dag_id") or dag_id}
        entry["started"] = entry.get("started") or now()
        # Asset-triggered and scheduled runs have no triggering user; say whose task ran it then.
        entry["triggered_by"] = entry.get("triggered_by") or f"{entry.get('run_type') or 'Airflow'} (task ran as {user()})"
    return [r for r in runs if r.get("dag_id") != entry["dag_id"]] + [entry]


def record_run(cfg: RunConfig, dag_id: str, run: Mapping[str, Any] | None = None, *, input_folder: str | None = None) -> Path:
    """Record the run of `dag_id` (first task of each DAG) in the run's reports staging folder.

    `input_folder` is given by the pseudonymise DAG's task, the one that reads it: publishing code
    never touches the raw zone, not even its settings (tests/test_governance.py).
    """
    path = cfg.reports_staging_dir / RUNS
    runs = io.read_json(path) if path.is_file() else []
    runs = merge_run(runs, dag_id, run)
    if input_folder is not None:
        runs[-1]["input_folder"] = input_folder
    return io.write_json(runs, path)


def provenance(cfg: RunConfig, manifest_sha256: str) -> dict[str, Any]:
    """The per-run facts of the release being published now."""
    path = cfg.reports_staging_dir / RUNS
    runs = io.read_json(path) if path.is_file() else []
    airflow = [r for r in runs if r.get("run_id") != NOT_AIRFLOW]
    return {
        "release_label": cfg.release_label,
        "manifest_sha256": manifest_sha256,
        "orchestrator": "Airflow" if airflow else NOT_AIRFLOW,
        "runs": runs,
        "triggered_by": runs[0]["triggered_by"] if runs else os_user(),
        "started": min((r["started"] for r in runs), default=None),
        "finished": utc_now(),
        "input_folder": next((r["input_folder"] for r in runs if r.get("input_folder")), None),
        "work_folder": cfg.work_dir,
        "replaced_an_existing_release": cfg.release_dir.exists(),
        # The day that decided which withdrawals the run honoured. Its other record, the consent
        # counts file, is a working file removed after publication (pipeline.zones).
        "run_date": _run_date(cfg),
    }


def _run_date(cfg: RunConfig) -> str | None:
    from pipeline.zones import consent_file

    path = consent_file(cfg)
    return io.read_json(path).get("run_date") if path.is_file() else cfg.run_date


def write_provenance(cfg: RunConfig, release_dir: Path) -> Path:
    """Write `provenance.json` beside the (final) manifest in `release_dir`."""
    return io.write_json(provenance(cfg, io.sha256_file(Path(release_dir) / "manifest.json")), Path(release_dir) / PROVENANCE)
