"""Validate the Parquet files of one zone, write the summary and Data Docs, block on critical failures.

    summary = validate_files(
        "pseudonymised",
        {"pseudo_persons": [p / "persons.parquet"], "record_tokens": [p / "tokens/hospital_apc.parquet"],
         "hospital_apc_payload": [p / "payload/hospital_apc.parquet"]},
        reports_dir, run_name="r1", parameters=run_parameters(cfg),  # the study window, for rules that name it
    )

Writes `reports_dir/validation/<zone>.json` and the site `reports_dir/data_docs/<zone>/`, both
replaced whole on a rerun, and `reports_dir/data_docs/index.html` linking every zone's site.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import io
from pipeline.validate import docs
from pipeline.validate._gx import RunIdentifier, gx
from pipeline.validate.batches import DEFAULT_MAX_BATCH_ROWS, iter_batches, plan_batches
from pipeline.validate.column_groups import validate_batch
from pipeline.validate.outcomes import FileOutcome, add_results, raise_if_blocking
from pipeline.validate.parameters import as_json, check_supplied
from pipeline.validate.privacy import RESULT_FORMAT, scrub_suite_result
from pipeline.validate.suites import suite_parameter_names, validated_contract, validated_dataset_names, validation_suite
from pipeline.validate.whole_file import split_cross_row, whole_file_result

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
    """The GX objects of one call: its context and one batch definition per dataset."""

    context: Any
    batch_definitions: dict[str, Any]
    run_id: RunIdentifier
    zone: str
    max_batch_rows: int
    parameters: dict[str, Any]


def _open_session(
    staging: Path, datasets: list[str], run_id: RunIdentifier, zone: str, max_batch_rows: int, parameters: dict[str, Any]
) -> _Session:
    context = docs.ephemeral_context(staging)
    source = context.data_sources.add_pandas("pipeline")
    batch_definitions = {}
    for dataset in datasets:
        # Added to the context only so Data Docs render the suite's own page.
        context.suites.add(validation_suite(dataset))
        batch_definitions[dataset] = source.add_dataframe_asset(dataset).add_batch_definition_whole_dataframe(dataset)
    return _Session(context, batch_definitions, run_id, zone, max_batch_rows, parameters)


def _validate_file(session: _Session, dataset: str, path: Path, label: str) -> tuple[FileOutcome, list[tuple[str, str]]]:
    """Validate one file batch by batch; return its outcome and its (label, page) Data Docs pages."""
    started = time.perf_counter()
    contract = validated_contract(dataset)
    spans = plan_batches(path, session.max_batch_rows)
    suite = validation_suite(dataset)
    per_batch, cross_row = split_cross_row(suite.expectations) if len(spans) > 1 else (suite.expectations, [])
    batch_suite = gx.ExpectationSuite(name=dataset, expectations=per_batch, meta=suite.meta)
    batch_id_stem = _safe_name(label)
    results, pages = [], []
    for span, frame in iter_batches(path, spans, contract):
        batch = validate_batch(session.batch_definitions[dataset], frame, batch_suite, session.parameters, RESULT_FORMAT)
        result = scrub_suite_result(batch)
        del batch, frame  # keep only one batch in memory at a time
        batch_id = batch_id_stem if span.whole_file else f"{batch_id_stem}.rowgroups-{span.first}-{span.stop - 1}"
        description = f"{dataset} / {label} / {span.label}"
        pages.append((span.label, docs.store_result(session.context, result, session.run_id, batch_id, description)))
        results.append(result)
    rows = sum(s.rows for s in spans)
    if cross_row:
        whole = whole_file_result(cross_row, path, rows, dataset, results[0].meta)
        description = f"{dataset} / {label} / uniqueness over the whole file"
        page = docs.store_result(session.context, whole, session.run_id, f"{batch_id_stem}.whole-file", description)
        pages.append(("uniqueness over the whole file", page))
        results.append(whole)
    outcome = FileOutcome(zone=session.zone, dataset=dataset, file=label, path=str(path), rows=rows, batches=[s.label for s in spans])
    add_results(outcome, results)
    outcome.seconds = time.perf_counter() - started
    log.info(
        "validated %s %s: %d rows in %d batch(es), %d expectations, %d critical and %d warning failure(s), %.2fs",
        dataset, label, rows, len(spans), outcome.evaluated, len(outcome.critical), len(outcome.warnings), outcome.seconds,
    )
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
            session = _open_session(staging, sorted(files), run_id, zone, max_batch_rows, parameters)
            log.info("GX context for zone %s ready in %.2fs", zone, time.perf_counter() - started)
            for dataset in sorted(files):
                paths = [Path(p) for p in files[dataset]]
                for path, label in zip(paths, _file_labels(paths), strict=True):
                    outcome, file_pages = _validate_file(session, dataset, path, label)
                    outcomes.append(outcome)
                    pages[(dataset, label)] = file_pages
            started = time.perf_counter()
            docs.build_site(session.context)
            log.info("Data Docs for zone %s built in %.2fs", zone, time.perf_counter() - started)
        docs.add_offline_icons(staging)
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
