"""Validate the Parquet files of one zone, write the summary and Data Docs, block on critical failures.

    summary = validate_files(
        "pseudonymised",
        validated_files(cfg, "pseudonymised", SOURCES),  # pipeline.zones: {contract name: [files]}
        reports_dir, run_name="r1", parameters=run_parameters(cfg),  # the study window, for rules that name it
    )

Writes `reports_dir/validation/<zone>.json` and the site `reports_dir/data_docs/<zone>/`, both
replaced whole on a rerun, and `reports_dir/data_docs/index.html` linking every zone's site.

Every file is cut into batches (pipeline.validate.batches); the batches of the whole zone are
validated on worker processes (pipeline.validate.workers), each expectation on the columns it reads
(pipeline.validate.column_groups), and the results are stored and summarised here in file order.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import shutil
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import io
from pipeline.progress import Progress
from pipeline.validate import docs, offline_pages
from pipeline.validate._gx import RunIdentifier
from pipeline.validate.batches import DEFAULT_MAX_BATCH_ROWS, BatchSpan, plan_batches
from pipeline.validate.outcomes import FileOutcome, add_results, raise_if_blocking
from pipeline.validate.parameters import as_json, check_supplied
from pipeline.validate.suites import suite_parameter_names, validated_dataset_names, validation_suite
from pipeline.validate.whole_file import split_cross_row, whole_file_result
from pipeline.validate.workers import BatchJob, validate_all

log = logging.getLogger(__name__)

# GX keeps one process-wide "current context" that objects without an owner fall back to. Our
# objects all have an owner, but serialising GX work within a process means two runs in one
# process (threads of a test or a worker) can never meet there. Runs in different processes, as
# Airflow runs tasks, share nothing: each has its own in-memory context and its own folders.
_GX_LOCK = threading.Lock()
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def _safe_name(text: str) -> str:
    """A name usable as one path segment of the Data Docs site."""
    return _SAFE.sub("_", text) or "_"


def _file_labels(paths: list[Path]) -> list[str]:
    """File names, numbered when two files of one dataset share a name (e.g. from two folders)."""
    names = [Path(p).name for p in paths]
    repeated = {n for n, k in Counter(names).items() if k > 1}
    return [f"{i + 1:02d}-{n}" if n in repeated else n for i, n in enumerate(names)]


@dataclass(frozen=True)
class _Session:
    """The GX context of one call, where results are stored for its Data Docs site."""

    context: Any
    run_id: RunIdentifier
    zone: str
    # What GX draws on each validation page, expectation by expectation, with our severity beside it.
    statuses: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


def _open_session(staging: Path, datasets: list[str], run_id: RunIdentifier, zone: str) -> _Session:
    context = docs.ephemeral_context(staging)
    for dataset in datasets:
        # Added to the context only so Data Docs render the suite's own page.
        context.suites.add(validation_suite(dataset))
    return _Session(context, run_id, zone)


@dataclass(frozen=True)
class _FilePlan:
    """One file of a zone: its batches, and the uniqueness rules checked over the whole file apart."""

    dataset: str
    path: Path
    label: str
    spans: list[BatchSpan]
    cross_row: list[Any]


def _plan_file(dataset: str, path: Path, label: str, max_batch_rows: int) -> _FilePlan:
    spans = plan_batches(path, max_batch_rows)
    # Uniqueness cannot be judged batch by batch; a file of several batches has it checked whole.
    cross_row = split_cross_row(validation_suite(dataset).expectations)[1] if len(spans) > 1 else []
    return _FilePlan(dataset, path, label, spans, cross_row)


def _jobs(plan: _FilePlan, parameters: dict[str, Any]) -> list[BatchJob]:
    return [
        BatchJob(plan.dataset, str(plan.path), s.first, s.stop, s.rows, s.whole_file, bool(plan.cross_row), parameters)
        for s in plan.spans
    ]


def _record_file(
    session: _Session, plan: _FilePlan, batch_results: list[tuple[Any, float]]
) -> tuple[FileOutcome, list[tuple[str, str]]]:
    """Store a file's batch results for Data Docs, add its whole-file checks; its outcome and (label, page) pages."""
    started = time.perf_counter()
    dataset, label = plan.dataset, plan.label
    batch_id_stem = _safe_name(label)
    results, pages = [], []
    for span, (result, _) in zip(plan.spans, batch_results, strict=True):
        batch_id = batch_id_stem if span.whole_file else f"{batch_id_stem}.rowgroups-{span.first}-{span.stop - 1}"
        description = f"{dataset} / {label} / {span.label}"
        page = docs.store_result(session.context, result, session.run_id, batch_id, description)
        session.statuses[page] = offline_pages.page_statuses(result)
        pages.append((span.label, page))
        results.append(result)
    rows = sum(s.rows for s in plan.spans)
    if plan.cross_row:
        whole = whole_file_result(plan.cross_row, plan.path, rows, dataset, results[0].meta)
        description = f"{dataset} / {label} / uniqueness over the whole file"
        page = docs.store_result(session.context, whole, session.run_id, f"{batch_id_stem}.whole-file", description)
        session.statuses[page] = offline_pages.page_statuses(whole)
        pages.append(("uniqueness over the whole file", page))
        results.append(whole)
    outcome = FileOutcome(zone=session.zone, dataset=dataset, file=label, path=str(plan.path), rows=rows, batches=[s.label for s in plan.spans])
    add_results(outcome, results)
    # GX time of the file's batches (on whichever worker ran them) plus the whole-file checks.
    outcome.seconds = sum(seconds for _, seconds in batch_results) + time.perf_counter() - started
    log.info(
        "validated %s %s: %d rows in %d batch(es), %d expectations, %d critical and %d warning failure(s), %.2fs",
        dataset, label, rows, len(plan.spans), outcome.evaluated, len(outcome.critical), len(outcome.warnings), outcome.seconds,
    )  # fmt: skip
    return outcome, pages


def _summary(zone: str, run_name: str, validated_at: str, outcomes: list[FileOutcome], parameters: dict[str, Any]) -> dict[str, Any]:
    """The zone's summary. `success` means no critical failure (warnings do not count against it)."""
    datasets: dict[str, Any] = {}
    for o in outcomes:
        entry = datasets.setdefault(o.dataset, {"success": True, "files": []})
        entry["files"].append(o.to_json())
        entry["success"] &= not o.critical
    critical = [f for o in outcomes for f in o.critical]
    warnings = [f for o in outcomes for f in o.warnings]
    return {
        "zone": zone,
        "run_name": run_name,
        "validated_at": validated_at,
        "success": not critical,
        "parameters": as_json(parameters),
        "statistics": {
            "files": len(outcomes),
            "rows": sum(o.rows for o in outcomes),
            "evaluated_expectations": sum(o.evaluated for o in outcomes),
            "failed_critical": len(critical),
            "failed_warning": len(warnings),
        },
        "critical": [f.sentence() for f in critical],
        "warnings": [f.sentence() for f in warnings],
        "datasets": datasets,
        # Where the files were and how long each took: useful to an engineer, but not part of
        # what the data decided, so kept apart from `datasets` (which a release manifest copies).
        "run_details": [
            {"dataset": o.dataset, "file": o.file, "path": o.path, "seconds": round(o.seconds, 3)} for o in outcomes
        ],
        "data_docs": f"data_docs/{zone}/index.html",
        "note": "Counts and rules only; no data value is recorded.",
    }


def validate_files(
    zone: str,
    files: dict[str, list[Path]],
    reports_dir: Path,
    run_name: str,
    *,
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
    parameters: dict[str, Any] | None = None,
) -> Path:
    """Validate each file against its dataset's structural and business suite; return the summary path.

    `files` maps a dataset (a contract name, `<source>_payload` or `<dataset>_quarantine`) to its
    Parquet files. `parameters` gives the run parameters the rules name (see
    pipeline.validate.parameters); a missing one is refused before anything runs. Raises
    ValidationFailed, naming every critical failure, after the summary and Data Docs are written.
    """
    if not zone or _SAFE.search(zone):
        raise ValueError(f"zone {zone!r} must be letters, digits, '.', '_' or '-' (it names report files)")
    known = set(validated_dataset_names())
    unknown = sorted(set(files) - known)
    if unknown:
        raise ValueError(f"no contract for dataset(s) {unknown}; known datasets are {sorted(known)}")
    parameters = dict(parameters or {})
    check_supplied(set().union(*(suite_parameter_names(d) for d in files)), parameters, files)
    reports_dir = Path(reports_dir)
    docs_root = reports_dir / "data_docs"
    staging = docs_root / f".building-{zone}-{uuid.uuid4().hex}"
    now = dt.datetime.now(dt.timezone.utc)
    run_id = RunIdentifier(run_name=_safe_name(run_name), run_time=now)
    outcomes: list[FileOutcome] = []
    pages: dict[tuple[str, str], list[tuple[str, str]]] = {}
    try:
        with _GX_LOCK:
            started = time.perf_counter()
            session = _open_session(staging, sorted(files), run_id, zone)
            log.info("GX context for zone %s ready in %.2fs", zone, time.perf_counter() - started)
            plans = []
            for dataset in sorted(files):
                paths = [Path(p) for p in files[dataset]]
                plans += [_plan_file(dataset, path, label, max_batch_rows) for path, label in zip(paths, _file_labels(paths), strict=True)]
            jobs = [_jobs(plan, parameters) for plan in plans]
            started = time.perf_counter()
            all_jobs = [job for file_jobs in jobs for job in file_jobs]
            with Progress(f"validate {zone}", total=sum(job.rows for job in all_jobs), unit="rows") as progress:
                flat = validate_all(all_jobs, progress)
            log.info("zone %s: %d batch(es) of %d file(s) validated in %.2fs", zone, len(flat), len(plans), time.perf_counter() - started)
            for plan, file_jobs in zip(plans, jobs, strict=True):
                batch_results, flat = flat[: len(file_jobs)], flat[len(file_jobs) :]
                outcome, file_pages = _record_file(session, plan, batch_results)
                outcomes.append(outcome)
                pages[(plan.dataset, plan.label)] = file_pages
            started = time.perf_counter()
            docs.build_site(session.context)
            log.info("Data Docs for zone %s built in %.2fs", zone, time.perf_counter() - started)
        offline_pages.make_site_self_contained(staging, session.statuses)
        docs.add_static_results(staging, zone, run_name, outcomes, pages)
        io.replace_dir(staging, docs_root / zone)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary_path = io.write_json(
        _summary(zone, run_name, now.strftime("%Y-%m-%dT%H:%M:%SZ"), outcomes, parameters), reports_dir / "validation" / f"{zone}.json"
    )
    docs.write_landing_page(reports_dir)
    raise_if_blocking(zone, run_name, outcomes, str(summary_path), str(docs_root / zone / "index.html"))
    return summary_path
