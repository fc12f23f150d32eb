"""The GX context of one validation run and the Data Docs site it builds.

Why an ephemeral context: its stores live in memory, so a run leaves no `gx/` project folder or
great_expectations.yml anywhere, never sees results of another run (two runs in one process or on
one machine cannot mix), and its Data Docs show exactly this run; the only files it writes are the
site, into a folder we choose. A file context inside reports_dir would also persist suites and raw
results there, which a rerun would have to clean, for no use: the JSON summary is the record.

GX's index page draws its table with JavaScript from public CDNs, which a secure research
environment cannot reach; pipeline.validate.offline_pages strips every page of its scripts and
network links, and a script-free table of the same results is added to the index page here.
"""

from __future__ import annotations

import contextlib
import fcntl
import html
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2

from pipeline import io
from pipeline.validate._gx import (
    DataContextConfig,
    DefaultJinjaIndexPageView,
    DefaultJinjaPageView,
    ExpectationSuiteIdentifier,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
    RunIdentifier,
    ValidationResultIdentifier,
    gx,
)
from pipeline.validate.outcomes import FileOutcome

SITE_NAME = "pipeline_validation"
STATIC_INDEX_ID = "pipeline-static-results"


class _CompiledTemplates(jinja2.BytecodeCache):
    """Data Docs' Jinja templates compiled once per process, not once per page view.

    GX gives each view of a site (the index and three sections) a Jinja environment of its own, and
    a site is built anew for every zone, so each template was parsed and compiled about four times
    per zone (for 300 people, 0.6 s of validate_pseudonymised's 4.4 s). Jinja keeps the code with a
    checksum of the template's source and compiles again when the source differs.
    """

    def __init__(self) -> None:
        self._code: dict[str, bytes] = {}

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        code = self._code.get(bucket.key)
        if code is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        self._code[bucket.key] = bucket.bytecode_to_string()


_TEMPLATES = _CompiledTemplates()


class _FromCompiledTemplates:
    """A GX view whose Jinja environment takes its templates from the process's compiled ones."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.env.bytecode_cache = _TEMPLATES


class PageView(_FromCompiledTemplates, DefaultJinjaPageView):
    """GX's page view (the expectations, validations and profiling sections)."""


class IndexPageView(_FromCompiledTemplates, DefaultJinjaIndexPageView):
    """GX's index page view."""


def _view(cls: type) -> dict[str, str]:
    return {"module_name": __name__, "class_name": cls.__name__}


def ephemeral_context(site_dir: Path) -> Any:
    """An in-memory GX context whose one Data Docs site is written to `site_dir`."""
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        # Progress bars would print to the task log on every validation.
        progress_bars=ProgressBarsConfig(globally=False),
        data_docs_sites={
            SITE_NAME: {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(site_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder", "view": _view(IndexPageView)},
                "site_section_builders": {
                    section: {"view": _view(PageView)} for section in ("expectations", "validations", "profiling")
                },
            }
        },
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def store_result(context: Any, suite_result: Any, run_id: RunIdentifier, batch_identifier: str, description: str) -> str:
    """Put a (scrubbed) result in the context's store for the site; return its page, relative to the site.

    `description` (dataset, file and batch) is shown as the page's data asset.
    """
    suite_id = ExpectationSuiteIdentifier(name=suite_result.suite_name)
    key = ValidationResultIdentifier(expectation_suite_identifier=suite_id, run_id=run_id, batch_identifier=batch_identifier)
    # The validation pages read the run from the result's meta, as ValidationDefinition.run sets it,
    # and the data asset from its batch spec.
    suite_result.meta["run_id"] = run_id
    suite_result.meta["validation_time"] = run_id.run_time
    suite_result.meta["batch_spec"] = {**suite_result.meta.get("batch_spec", {}), "data_asset_name": description}
    context.validation_results_store.store_validation_results(suite_result, key, suite_id)
    return "validations/" + "/".join(str(part) for part in key.to_tuple()) + ".html"


def build_site(context: Any) -> None:
    context.build_data_docs(site_names=[SITE_NAME])


# ---------------------------------------------------------------------------------------------------
# Script-free pages


_STYLE = """
<style>
  #pipeline-static-results, .pipeline-landing { font-family: system-ui, sans-serif; margin: 1rem 0 2rem 0; overflow-x: auto; }
  #pipeline-static-results table, .pipeline-landing table { border-collapse: collapse; margin: .5rem 0 1rem 0; }
  #pipeline-static-results th, #pipeline-static-results td,
  .pipeline-landing th, .pipeline-landing td { border: 1px solid #bbb; padding: 4px 10px; text-align: left; }
  #pipeline-static-results th, .pipeline-landing th { background: #eee; }
  .pipeline-failed { color: #b00020; font-weight: bold; }
  .pipeline-warning { color: #8a5a00; font-weight: bold; }
  .pipeline-passed { color: #1b5e20; font-weight: bold; }
</style>
"""


def _status(critical: int, warnings: int) -> str:
    if critical:
        return f'<span class="pipeline-failed">FAILED ({critical} critical)</span>'
    if warnings:
        return f'<span class="pipeline-warning">passed with {warnings} warning(s)</span>'
    return '<span class="pipeline-passed">passed</span>'


def _severity(severity: str) -> str:
    """A failed expectation's severity as the pages show it: a warning in amber, anything else as a failure."""
    if severity == "warning":
        return '<span class="pipeline-warning">\u26a0 Warning</span>'
    return f'<span class="pipeline-failed">\u2718 Failed ({html.escape(severity)})</span>'


def _cell(value: Any) -> str:
    return f"<td>{html.escape('' if value is None else str(value))}</td>"


def _results_section(
    zone: str, run_name: str, outcomes: list[FileOutcome], pages: dict[tuple[str, str], list[tuple[str, str]]], suites: list[str] = ()
) -> str:
    e = html.escape
    rows = []
    for o in outcomes:
        links = " ".join(f'<a href="{e(p)}">{e(label)}</a>' for label, p in pages.get((o.dataset, o.file), []))
        rows.append(
            f"<tr>{_cell(o.dataset)}{_cell(o.file)}{_cell(o.rows)}<td>{_status(len(o.critical), len(o.warnings))}</td>"
            f"{_cell(o.evaluated)}{_cell(len(o.critical))}{_cell(len(o.warnings))}<td>{links}</td></tr>"
        )
    failures = [f for o in outcomes for f in o.failures]
    failure_rows = [
        f"<tr>{_cell(f.dataset)}{_cell(f.file)}{_cell(f.column or '(table)')}{_cell(f.expectation)}"
        f"<td>{_severity(f.severity)}</td>{_cell(f.rule)}{_cell('could not evaluate' if f.could_not_evaluate else f.unexpected_count)}</tr>"
        for f in failures
    ]
    failure_table = (
        "<table><tr><th>dataset</th><th>file</th><th>column</th><th>expectation</th><th>severity</th>"
        "<th>rule</th><th>rows breaking it</th></tr>" + "".join(failure_rows) + "</table>"
        if failures
        else "<p>No expectation failed.</p>"
    )
    return (
        f'<section id="{STATIC_INDEX_ID}">{_STYLE}'
        f"<h2>Zone {e(zone)}: validation results of run {e(run_name)}</h2>"
        "<p>Counts and rules only: no data value is ever shown. A critical failure blocks publication; "
        "a warning is for review.</p>"
        "<table><tr><th>dataset</th><th>file</th><th>rows</th><th>result</th><th>expectations</th>"
        "<th>failed critical</th><th>failed warning</th><th>GX result pages</th></tr>" + "".join(rows) + "</table>"
        f"<h3>Failed expectations</h3>{failure_table}"
        + ("<h3>Expectation suites</h3><p>" + " ".join(f'<a href="{e(s)}">{e(Path(s).stem)}</a>' for s in suites) + "</p>" if suites else "")
        + "</section>"
    )


def add_static_results(site_dir: Path, zone: str, run_name: str, outcomes: list[FileOutcome], pages: dict[tuple[str, str], list[tuple[str, str]]]) -> None:
    """Put a script-free table of the run's results at the top of the GX index page."""
    index = Path(site_dir) / "index.html"
    page = index.read_text()
    # GX's own list of suites is drawn by a script, which the offline pages go without.
    suites = sorted(p.relative_to(site_dir).as_posix() for p in (Path(site_dir) / "expectations").rglob("*.html"))
    section = _results_section(zone, run_name, outcomes, pages, suites)
    anchor = '<div id="section-1"'
    if anchor in page:
        page = page.replace(anchor, section + anchor, 1)
    else:  # a GX upgrade changed the page; the section still goes first in the body
        page = page.replace("<body>", "<body>" + section, 1)
    index.write_text(page)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on a folder (a lock on the folder itself leaves no lock file behind)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write_landing_page(reports_dir: Path) -> Path:
    """`data_docs/index.html`: one line per zone validated into this reports folder, linking its site.

    Zones of one run may be validated at the same time; the lock keeps the last writer from
    dropping a zone another writer just added.
    """
    docs_root = Path(reports_dir) / "data_docs"
    with _locked(docs_root):
        rows = []
        for summary_path in sorted((Path(reports_dir) / "validation").glob("*.json")):
            s = json.loads(summary_path.read_text())
            zone = s["zone"]
            if not (docs_root / zone / "index.html").exists():
                continue
            rows.append(
                f'<tr><td><a href="{html.escape(zone)}/index.html">{html.escape(zone)}</a></td>{_cell(s["run_name"])}'
                f'{_cell(s["validated_at"])}<td>{_status(s["statistics"]["failed_critical"], s["statistics"]["failed_warning"])}</td></tr>'
            )
        page = (
            '<!doctype html><html><head><meta charset="utf-8"><title>Validation reports</title>'
            f'{_STYLE}</head><body><div class="pipeline-landing"><h1>Validation reports</h1>'
            "<p>One Great Expectations Data Docs site per zone. Counts and rules only: no data value is shown.</p>"
            "<table><tr><th>zone</th><th>run</th><th>validated at (UTC)</th><th>result</th></tr>"
            + "".join(rows)
            + "</table></div></body></html>\n"
        )
        with io.atomic_path(docs_root / "index.html") as tmp:
            tmp.write_text(page)
    return docs_root / "index.html"
