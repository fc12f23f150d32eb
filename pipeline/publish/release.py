"""Stage 3b: write-audit-publish of a release.

1. `stage_release` writes every file into `releases/.staging-<label>/`, swapping participant IDs for
   the release's study IDs, dropping everything the release contracts do not declare, and applying
   disclosure control to every count column the contracts declare (`pipeline.publish.disclosure`).
2. `validate_release` runs the privacy checks (`pipeline.publish.privacy`) and Great Expectations on
   the staged files; if either fails, the staging folder is removed, nothing is published, and the
   error names every broken rule by file, column and expectation.
3. `publish_release` records each file's hash in the manifest, writes `provenance.json` (who, when,
   from where: pipeline.publish.provenance), renders the audit page and renames the release into
   place, then the run's reports (`reports/.staging-<label>/` to `reports/<label>/`) in the same step.
   An existing release, and its reports, are never overwritten unless replacing it was asked for.

Evidence is never overwritten: every report of a run (validation summaries, Data Docs, privacy.json,
the audit page) is written to the run's reports staging folder, and only publication moves it over
the label's published reports. A failed or refused run leaves them byte for byte as they were, and
its own reports stay in the staging folder for the engineer to read.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import polars as pl

from pipeline import __version__, io
from pipeline.cohort.outputs import ARTEFACTS_DIR, RELEASE_TABLES
from pipeline.contracts import dictionary_records, load_contract, render_dictionary_markdown
from pipeline.errors import ContractError, ReleaseExistsError, ValidationFailed
from pipeline.publish import disclosure
from pipeline.publish.privacy import assess_release_privacy
from pipeline.publish.provenance import PER_RUN_FILES, write_provenance
from pipeline.pseudonymised import blocks_path
from pipeline.settings import REPO_DIR, SOURCES, RunConfig, setting

log = logging.getLogger(__name__)
# Zones whose validation summaries the manifest keeps, in pipeline order.
VALIDATED_ZONES: tuple[str, ...] = ("raw", "pseudonymised", "linked", "release")


def code_version() -> str:
    """The package version and the git commit the release was built with: `PPRL_GIT_COMMIT` where the
    code is installed without its git history (the Docker image sets it at build time), else the
    checkout's HEAD, marked ".dirty" when tracked files have uncommitted changes."""
    commit = os.environ.get("PPRL_GIT_COMMIT", "").strip()
    if commit and commit != "unknown":
        return f"{__version__}+g{commit[:12]}"
    git = ["git", "-C", str(REPO_DIR)]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        changed = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return f"{__version__}+unknown"
    return f"{__version__}+g{commit}{'.dirty' if changed.strip() else ''}"


def _with_study_ids(lf: pl.LazyFrame, ids: pl.LazyFrame) -> pl.LazyFrame:
    return lf.join(ids, on="participant_id", how="inner").drop("participant_id")


def stage_release(cfg: RunConfig) -> Path:
    """Write every release table into the staging folder, streamed: at a million people the panel
    has about 12 million rows, and no table is read whole into memory before it is written."""
    staging = cfg.staging_dir
    # A run that died while replacing this label's release must not leave the earlier one hidden.
    io.recover_replace(cfg.release_dir)
    if staging.exists():
        shutil.rmtree(staging)  # a previous attempt's leftovers; the staging folder is never published as is
    staging.mkdir(parents=True)
    ids = pl.scan_parquet(cfg.pseudonymised_dir / "persons.parquet").select("participant_id", "study_id")
    built = cfg.linked_dir / "cohort"
    controlled: dict[str, Any] = {}
    for name in RELEASE_TABLES:
        contract = load_contract(name)
        lf = pl.scan_parquet(built / f"{name}.parquet")
        columns = lf.collect_schema().names()
        if "participant_id" in columns:
            lf = _with_study_ids(lf, ids)
        counts = [c for c in disclosure.count_columns(name) if c in columns]
        if counts:
            lf, cells = disclosure.apply_control(lf, counts)
            controlled[name] = {"columns": counts, **cells}
        # Sorted by the contract's primary key so the same inputs always give the same bytes.
        io.sink_frame(lf.sort(list(contract.primary_key)), contract, staging / f"{name}.parquet")
    artefacts = built / ARTEFACTS_DIR
    if artefacts.is_dir():
        for f in sorted(artefacts.iterdir()):
            io.copy_file(f, staging / f.name)
    contracts = [load_contract(t) for t in RELEASE_TABLES]
    with io.atomic_path(staging / "data_dictionary.md") as tmp:
        tmp.write_text(render_dictionary_markdown(contracts, f"Data dictionary: release {cfg.release_label}"))
    io.write_json(dictionary_records(contracts), staging / "data_dictionary.json")
    io.write_json(_manifest(cfg, controlled), staging / "manifest.json")
    return staging


def _manifest(cfg: RunConfig, controlled: dict[str, Any]) -> dict[str, Any]:
    """Everything a governance officer needs to trace the release; no timestamps, so reruns are byte-identical."""
    pdir, ldir = cfg.pseudonymised_dir, cfg.linked_dir
    consent = io.read_json(pdir / "consent.json")
    return {
        "release_label": cfg.release_label,
        "code_version": code_version(),
        "kid": consent["kid"],
        "settings": {k: v for k, v in cfg.to_conf().items() if k not in ("raw_dir", "work_dir", "key_file", "unit_costs")},
        "inputs": io.read_json(pdir / "inputs.json")["files"],
        "consent": consent["consent"],
        "pseudonymisation": {s: io.read_json(pdir / "counts" / f"{s}.json")["counts"] for s in SOURCES},
        "linkage": _without_timings(io.read_json(ldir / "linkage_summary.json")),
        "cohort": io.read_json(ldir / "cohort" / "cohort.json")["counts"],
        "validation": {},
        "privacy": {},
        "disclosure_control": {
            "rule": disclosure.RULE_TEXT,
            "suppression_threshold": disclosure.SUPPRESSION_THRESHOLD,
            "rounding_base": disclosure.ROUNDING_BASE,
            # Count columns of release tables, as their contracts declare them (`disclosure: count`).
            "tables": controlled,
            "audit_page": f"every count on reports/{cfg.release_label}/audit.html is controlled; the figures here are exact",
        },
        "files": {},
    }


def _without_timings(summary: Any) -> Any:
    """`summary` without its "seconds" entries (at any depth): how long a step took differs from run
    to run, and the manifest must not. The timings stay in linked/<label>/linkage_summary.json."""
    if isinstance(summary, dict):
        return {k: _without_timings(v) for k, v in summary.items() if k != "seconds"}
    if isinstance(summary, list):
        return [_without_timings(v) for v in summary]
    return summary


def validate_release(cfg: RunConfig) -> Path:
    """Privacy checks and GX suites on the staged release; on any failure remove it and raise.

    Both run before either failure is raised, so one message lists everything to fix. The privacy
    outcome is written to the run's `reports/.staging-<label>/privacy.json` either way.
    """
    from pipeline.validate import run_parameters, validate_files

    staging, reports = cfg.staging_dir, cfg.reports_staging_dir
    if not staging.is_dir():
        raise ValidationFailed(f"{staging}: nothing staged; run stage_release for this label first")
    problems: list[str] = []
    summary_path = reports / "validation" / "release.json"
    try:
        privacy = assess_release_privacy(staging, _token_files(cfg))
        io.write_json({"release_label": cfg.release_label, **privacy.to_json()}, reports / "privacy.json")
        if privacy.blocking:
            problems.append(
                f"{len(privacy.blocking)} privacy rule(s) broken, so the release may not be published:\n"
                + "\n".join(f"  - {v}" for v in privacy.blocking)
            )
        try:
            summary_path = validate_files(
                "release",
                {t: [staging / f"{t}.parquet"] for t in RELEASE_TABLES if (staging / f"{t}.parquet").exists()},
                reports,
                cfg.release_label,
                parameters=run_parameters(cfg),
            )
        except (ContractError, ValidationFailed) as exc:
            problems.append(str(exc))
        if problems:
            raise ValidationFailed(
                f"Release {cfg.release_label!r} refused; nothing was published and earlier releases and their reports are untouched.\n"
                + "\n".join(problems)
                + f"\nThis run's reports (privacy.json, validation/, data_docs/) are in {reports}."
            )
        _carry_over_published_reports(cfg)
        manifest = io.read_json(staging / "manifest.json")
        for zone in VALIDATED_ZONES:
            path = reports / "validation" / f"{zone}.json"
            if path.exists():
                manifest["validation"][zone] = _validation_digest(io.read_json(path))
        manifest["privacy"] = privacy.to_json()
        io.write_json(manifest, staging / "manifest.json")
    except BaseException:
        # Write-audit-publish: a staged release that failed its checks is never left to be published.
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary_path


def _carry_over_published_reports(cfg: RunConfig) -> None:
    """Copy into the run's reports the published reports of zones this run did not validate again.

    A downstream DAG rerun by hand after publication (say pprl_link, to republish with a linkage fix)
    validates only its own zones; the raw and pseudonymised zones it builds on are the ones the
    published reports describe (a run that rewrites them validates them again, into the staging
    folder). Carrying them over keeps the new release's manifest and reports whole.
    """
    from pipeline.validate.docs import write_landing_page

    staged, published = cfg.reports_staging_dir, cfg.reports_dir
    carried = False
    for zone in VALIDATED_ZONES:
        summary = published / "validation" / f"{zone}.json"
        if (staged / "validation" / f"{zone}.json").exists() or not summary.is_file():
            continue
        io.copy_file(summary, staged / "validation" / f"{zone}.json")
        site = published / "data_docs" / zone
        if site.is_dir() and not (staged / "data_docs" / zone).exists():
            building = staged / "data_docs" / f".building-{zone}-carried"
            shutil.rmtree(building, ignore_errors=True)
            shutil.copytree(site, building)
            io.replace_dir(building, staged / "data_docs" / zone)
        carried = True
    if carried:
        write_landing_page(staged)


def _token_files(cfg: RunConfig) -> list[tuple[str, Path]]:
    """Files of linkage tokens and participant keys that study IDs must differ from (pseudonymised zone)."""
    files = [("pseudo_persons", cfg.pseudonymised_dir / "persons.parquet")]
    files += [("token_blocks", blocks_path(cfg.pseudonymised_dir, s)) for s in SOURCES]
    return [(name, path) for name, path in files if path.exists()]


def _validation_digest(summary: dict[str, Any]) -> dict[str, Any]:
    """The part of a GX summary the manifest keeps: success and counts, without run-specific paths."""
    return {k: v for k, v in summary.items() if k in ("success", "parameters", "statistics", "datasets", "warnings")}


# Written into the run's reports staging folder while a release is being renamed into place: the
# SHA-256 of the manifest being published. A retry finding it, with that manifest in place and nothing
# staged, knows the crash came after the release's rename, and finishes moving the reports.
PUBLISHING_MARK = ".publishing"


def publish_release(cfg: RunConfig) -> Path:
    """Hash every file into the manifest, record provenance, render the audit page, and rename the
    release and then the run's reports into place."""
    from pipeline.publish.report import page_for

    staging, final = cfg.staging_dir, cfg.release_dir
    if not staging.exists() and finish_interrupted_publish(cfg):
        log.info("release %s was in place; finished publishing its reports", cfg.release_label)
        return final
    if not staging.exists():
        raise ValidationFailed(f"{staging}: nothing staged; the release must be built and validated first")
    if final.exists() and not cfg.replace_release:
        shutil.rmtree(staging)
        raise ReleaseExistsError(
            f"release {cfg.release_label!r} already exists at {final}; choose a new label, or replace it with "
            f"{setting('replace_release')}. It and its reports in {cfg.reports_dir} are untouched; this run's "
            f"reports (privacy.json, validation/, data_docs/) are in {cfg.reports_staging_dir}"
        )
    manifest = io.read_json(staging / "manifest.json")
    if not manifest.get("privacy"):
        raise ValidationFailed(f"{staging}: the staged release has not passed validate_release; run it first")
    manifest["files"] = {
        p.name: {"sha256": io.sha256_file(p), **({"rows": pl.scan_parquet(p).select(pl.len()).collect().item()} if p.suffix == ".parquet" else {})}
        for p in sorted(staging.iterdir())
        # Per-run files are not content; a dot file is a temporary file of a killed attempt, which
        # the write of its own file clears.
        if p.name != "manifest.json" and p.name not in PER_RUN_FILES and not p.name.startswith(".")
    }
    io.write_json(manifest, staging / "manifest.json")
    write_provenance(cfg, staging)
    # Rendered before the rename, so a page that cannot be built stops publication; written after it,
    # so the page on disk always describes the release that is in place. Its links are relative to
    # the published reports folder, where it ends up.
    page = page_for(staging / "manifest.json", cfg.reports_dir, final)
    with io.atomic_path(cfg.reports_staging_dir / PUBLISHING_MARK) as tmp:
        tmp.write_text(io.sha256_file(staging / "manifest.json"))
    io.replace_dir(staging, final)
    _publish_reports(cfg, page)
    log.info("published release %s; audit page %s", cfg.release_label, cfg.reports_dir / "audit.html")
    return final


def _publish_reports(cfg: RunConfig, page: str) -> None:
    """Write the audit page into the run's reports and move them over the label's published reports."""
    with io.atomic_path(cfg.reports_staging_dir / "audit.html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    io.replace_dir(cfg.reports_staging_dir, cfg.reports_dir)
    (cfg.reports_dir / PUBLISHING_MARK).unlink()


def finish_interrupted_publish(cfg: RunConfig) -> bool:
    """Finish a publication killed after the release was renamed into place; True if there was one.

    Killed before the reports moved, the mark is in the staging folder; killed after, in the
    published one (only the mark, and perhaps the previous reports set aside, are left to clear).
    """
    from pipeline.publish.report import page_for

    final = cfg.release_dir
    if _renamed_before_a_crash(cfg.reports_staging_dir / PUBLISHING_MARK, final):
        _publish_reports(cfg, page_for(final / "manifest.json", cfg.reports_dir, final))
        return True
    if _renamed_before_a_crash(cfg.reports_dir / PUBLISHING_MARK, final):
        io.recover_replace(cfg.reports_dir)
        (cfg.reports_dir / PUBLISHING_MARK).unlink()
        return True
    return False


def _renamed_before_a_crash(mark: Path, final: Path) -> bool:
    manifest = final / "manifest.json"
    return mark.is_file() and manifest.is_file() and mark.read_text().strip() == io.sha256_file(manifest)
