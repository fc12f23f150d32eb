"""Stage 3b: write-audit-publish of a release.

1. `stage_release` writes every file into `releases/.staging-<label>/`, swapping participant IDs for
   the release's study IDs, dropping everything the release contracts do not declare, applying the
   run's small-group policy (`pipeline.publish.small_groups`), rounding continuous values to their
   release precision, and applying disclosure control to every count column the contracts declare
   (`pipeline.publish.disclosure`). The manifest it writes into the release has every count
   controlled (`disclosure.control_manifest`); the exact figures go to `reports/<label>/figures.json`.
2. `validate_release` runs the privacy checks (`pipeline.publish.privacy`) and Great Expectations on
   the staged files; if either fails, the staging folder is removed, nothing is published, and the
   error names every broken rule by file, column and expectation.
3. `publish_release` records each file's hash in the manifest, writes `provenance.json` (who, when,
   from where: pipeline.publish.provenance), signs manifest and provenance with the publishing key
   (`pipeline.publish.signing`), renders the audit page and renames the release into place, appends it
   to the release log (`pipeline.publish.release_log`), then moves the run's reports
   (`reports/.staging-<label>/` to `reports/<label>/`) in the same step, and removes the label's
   working files (`pseudonymised/<label>/`, `linked/<label>/`: pipeline.zones.purge_working_files)
   unless the run keeps them with a reason. An existing release, and its reports, are never
   overwritten unless replacing it was asked for.
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
from pipeline.contracts import dictionary_records, load_contract, render_dictionary_markdown, study_contract
from pipeline.errors import ContractError, ReleaseExistsError, ValidationFailed
from pipeline.publish import disclosure, release_log, signing, small_groups
from pipeline.publish.privacy import assess_release_privacy
from pipeline.publish.provenance import write_provenance
# The exact figures behind the release's controlled manifest, for governance only (never released).
from pipeline.publish.report import FIGURES
from pipeline.zones import (
    blocks_path,
    cohort_dir,
    cohort_summary_file,
    consent_file,
    counts_file,
    inputs_file,
    linkage_summary_file,
    persons_file,
    purge_working_files,
    records_path,
    study_persons_file,
)
from pipeline.settings import REPO_DIR, SOURCES, RunConfig, setting

log = logging.getLogger(__name__)
# Zones whose validation summaries the manifest keeps, in pipeline order.
VALIDATED_ZONES: tuple[str, ...] = ("raw", "pseudonymised", "linked", "release")
# Settings that are paths on one machine, secrets' locations, or the day of the run: none of them
# describes the release's content, so the content manifest leaves them out.
# The study file's path is one of them; its content is recorded under "study", by name and hash.
PER_RUN_SETTINGS: frozenset[str] = frozenset(
    {"raw_dir", "work_dir", "key_file", "publishing_key_file", "unit_costs", "run_date", "study_file", "deliveries_file"}
)
# The person-level table whose quasi-identifiers the small-group policy works on; people it drops
# leave every release table.
PERSON_TABLE = "cohort"


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
    has about 12 million rows, and no table is read whole into memory before it is written (the
    cohort, one row per person, is the exception: the small-group policy works on it whole)."""
    staging = cfg.staging_dir
    # A run that died while replacing this label's release must not leave the earlier one hidden.
    io.recover_replace(cfg.release_dir)
    if staging.exists():
        shutil.rmtree(staging)  # a previous attempt's leftovers; the staging folder is never published as is
    staging.mkdir(parents=True)
    ids = pl.scan_parquet(study_persons_file(cfg)).select("participant_id", "study_id")
    built = cohort_dir(cfg)
    controlled: dict[str, Any] = {}
    people, small = _person_table(cfg, built)
    for name in RELEASE_TABLES:
        # Bound to the run's study: its descriptions (Parquet field metadata) say the study's periods.
        contract = study_contract(name, cfg.study)
        lf = people.frame.lazy() if name == PERSON_TABLE else pl.scan_parquet(built / f"{name}.parquet")
        columns = lf.collect_schema().names()
        if "participant_id" in columns:
            if name != PERSON_TABLE and people.dropped:
                before = lf.select(pl.len()).collect(engine="streaming").item()
                lf = lf.join(people.frame.lazy().select("participant_id"), on="participant_id", how="semi")
                small["rows_dropped"][name] = before - lf.select(pl.len()).collect(engine="streaming").item()
            lf = _with_study_ids(lf, ids)
            if name != PERSON_TABLE and cfg.small_groups != "block":
                lf = _without_small_groups(lf, contract, small)
        lf = _at_release_precision(lf, name)
        counts = [c for c in disclosure.count_columns(name) if c in columns]
        if counts:
            lf, cells = disclosure.apply_control(lf, counts)
            controlled[name] = {"columns": counts, **cells}
        # Sorted by the contract's primary key so the same inputs always give the same bytes.
        _sink_sorted(lf, contract, staging / f"{name}.parquet", ids, cfg.staging_dir.with_name(f".sorting-{cfg.release_label}"))
    artefacts = built / ARTEFACTS_DIR
    if artefacts.is_dir():
        for f in sorted(artefacts.iterdir()):
            io.copy_file(f, staging / f.name)
    # Bound to the run's study, so the dictionary lists its sites, samples and periods.
    contracts = [study_contract(t, cfg.study) for t in RELEASE_TABLES]
    with io.atomic_path(staging / "data_dictionary.md") as tmp:
        tmp.write_text(render_dictionary_markdown(contracts, f"Data dictionary: release {cfg.release_label}"))
    io.write_json(dictionary_records(contracts), staging / "data_dictionary.json")
    write_manifest(cfg, _manifest(cfg, controlled, small))
    return staging


# Most rows of a release table sorted at once by stage_release (`_sink_sorted`), and the rows of a
# window when it splits a table into pieces. Pieces too small cost more than they save: at 1M people
# (the panel about 12 million rows) stage_release took 44.8 s and peaked at 2,874 MB with pieces of
# 131,072 rows, 29.2 s and 2,596 MB with 1,048,576, and 31.3 s and 3,418 MB with 4,194,304.
SORT_PIECE_ROWS = 1_048_576


def _sink_sorted(lf: pl.LazyFrame, contract: Any, path: Path, ids: pl.LazyFrame, scratch: Path) -> None:
    """Stream `lf` sorted by the contract's primary key to `path` (`io.sink_frame`).

    A table keyed first by study ID is sorted in pieces when it has more than SORT_PIECE_ROWS rows:
    its rows are streamed once to a scratch file, split window by window into ranges of study IDs
    (cut at the release's own study IDs, so each range holds about as many people), each range is
    sorted on its own, and the sorted ranges are streamed to `path` in range order, which is the
    order of the whole table. Memory: a window, or a range, however long the table; every step is
    linear in the rows. Same rows in the same order, so the same bytes as sorting the table whole.
    """
    keys = list(contract.primary_key)
    if keys[0] != "study_id":
        io.sink_frame(lf.sort(keys), contract, path)
        return
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        rows_file = scratch / "rows.parquet"
        # Row groups of a window's size: the sink holds one at a time, and a window reads one.
        io.write_scratch(lf, rows_file, row_group_size=SORT_PIECE_ROWS)
        rows = pl.scan_parquet(rows_file).select(pl.len()).collect().item()
        parts = -(-rows // SORT_PIECE_ROWS)
        if parts <= 1:
            io.sink_frame(pl.scan_parquet(rows_file).sort(keys), contract, path)
            return
        people = ids.select("study_id").sort("study_id").collect().get_column("study_id")
        cuts = pl.Series([people[i * len(people) // parts] for i in range(1, parts)], dtype=pl.String)
        # The range of each row: how many cuts are at or below its study ID.
        in_range = pl.lit(cuts).search_sorted(pl.col("study_id"), side="right")
        ranges = io.split_scratch(pl.scan_parquet(rows_file), in_range, scratch / "ranges", SORT_PIECE_ROWS)
        pieces = [
            io.write_scratch(pl.scan_parquet(file).sort(keys), scratch / f"sorted-{k:06d}.parquet")
            for k, file in ranges.items()
        ]
        io.sink_frame(pl.scan_parquet(pieces), contract, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _person_table(cfg: RunConfig, built: Path) -> tuple[small_groups.Outcome, dict[str, Any]]:
    """The cohort after the run's small-group policy, and the manifest's record of what it did (exact)."""
    contract = load_contract(PERSON_TABLE)
    frame = pl.read_parquet(built / f"{PERSON_TABLE}.parquet")
    qi = [c.name for c in contract.columns_of_class("quasi_identifier") if c.name in frame.columns]
    out = small_groups.apply_policy(frame, qi, "participant_id", cfg.small_groups, cfg.study)
    record = {
        "policy": cfg.small_groups,
        "min_group_size": disclosure.MIN_GROUP_SIZE,
        "quasi_identifiers": qi,
        "withheld_order": list(disclosure.WITHHOLD_ORDER),
        "coarsening": [
            f"{column}: " + (", ".join(f"{a} -> {b}" for a, b in mapping.items()) if mapping else "withheld for everyone")
            for column, mapping in disclosure.coarsening(cfg.study)
        ],
        "coarsened": out.coarsened,
        "withheld_values": {c: out.withheld.get(c, 0) for c in disclosure.WITHHOLD_ORDER},
        "people_dropped": len(out.dropped),
        "rows_dropped": {PERSON_TABLE: len(out.dropped)},
    }
    return out, record


def _without_small_groups(lf: pl.LazyFrame, contract: Any, small: dict[str, Any]) -> pl.LazyFrame:
    """A row-level table other than the cohort without the rows of its own too-small groups (for
    example a sample of matches with fewer than MIN_GROUP_SIZE matched people in an arm)."""
    qi = [c.name for c in contract.columns_of_class("quasi_identifier") if c.name in lf.collect_schema().names()]
    if not qi:
        return lf
    kept = small_groups.small_group_filter(lf, qi, "study_id")
    if kept is None:
        return lf
    dropped = lf.select(pl.len()).collect(engine="streaming").item() - kept.select(pl.len()).collect(engine="streaming").item()
    small["rows_dropped"][contract.name] = small["rows_dropped"].get(contract.name, 0) + dropped
    return kept


def _at_release_precision(lf: pl.LazyFrame, table: str) -> pl.LazyFrame:
    """Continuous columns rounded to the precision their contract declares (`precision:`)."""
    names = lf.collect_schema().names()
    rules = {c: r for c, r in disclosure.declared_precision(table).items() if c in names}
    return lf.with_columns(disclosure.precision_expr(c, r) for c, r in rules.items()) if rules else lf


def write_manifest(cfg: RunConfig, exact: dict[str, Any]) -> None:
    """Write the staged release's manifest with every count controlled, then the exact figures to the
    run's reports (`figures.json`, published to `reports/<label>/`), tied to that manifest by its SHA-256."""
    manifest = cfg.staging_dir / "manifest.json"
    io.write_json(disclosure.control_manifest(exact), manifest)
    figures = {"release_label": cfg.release_label, "manifest_sha256": io.sha256_file(manifest), "manifest": exact}
    io.write_json(figures, cfg.reports_staging_dir / FIGURES)


def exact_manifest(cfg: RunConfig) -> dict[str, Any]:
    """The exact figures of the staged release (what `write_manifest` last wrote)."""
    path = cfg.reports_staging_dir / FIGURES
    if not path.is_file():
        raise ValidationFailed(f"{path}: the exact figures of the staged release are missing; run stage_release for this label again")
    return io.read_json(path)["manifest"]


def _manifest(cfg: RunConfig, controlled: dict[str, Any], small: dict[str, Any]) -> dict[str, Any]:
    """Everything a governance officer needs to trace the release, with exact figures (the release
    holds them controlled); no timestamps, so reruns are byte-identical."""
    consent = io.read_json(consent_file(cfg))
    return {
        "release_label": cfg.release_label,
        "code_version": code_version(),
        "kid": consent["kid"],
        # run_date differs from run to run: it is recorded in the release's provenance.json instead.
        "settings": {k: v for k, v in cfg.to_conf().items() if k not in PER_RUN_SETTINGS},
        # The study the release evaluates: its file's name and SHA-256 (pipeline.study), and its design.
        "study": cfg.study.manifest_record(),
        "inputs": io.read_json(inputs_file(cfg))["files"],
        "consent": consent["consent"],
        "pseudonymisation": {s: io.read_json(counts_file(cfg, s))["counts"] for s in SOURCES},
        "linkage": _without_timings(io.read_json(linkage_summary_file(cfg))),
        "cohort": io.read_json(cohort_summary_file(cfg))["counts"],
        "validation": {},
        "privacy": {},
        "disclosure_control": {
            "rule": disclosure.RULE_TEXT,
            "suppression_threshold": disclosure.SUPPRESSION_THRESHOLD,
            "rounding_base": disclosure.ROUNDING_BASE,
            # Count columns of release tables, as their contracts declare them (`disclosure: count`).
            "tables": controlled,
            "small_groups": small,
            # The manifest's whole numbers that are not counts, left as they are (every other is controlled).
            "not_a_count": sorted(disclosure.NOT_A_COUNT_KEYS),
            "audit_page": (
                f"every count here and on reports/{cfg.release_label}/audit.html is controlled; the exact figures are in "
                f"reports/{cfg.release_label}/{FIGURES}, which is not released"
            ),
        },
        "files": {},
    }


def _without_timings(summary: Any) -> Any:
    """`summary` without its "seconds" entries (at any depth): how long a step took differs from run
    to run, and the manifest must not. The timings stay in the linkage summary, a working file
    (pipeline.zones.linkage_summary_file) removed after publication unless the run keeps it."""
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
        manifest = exact_manifest(cfg)
        for zone in VALIDATED_ZONES:
            path = reports / "validation" / f"{zone}.json"
            if path.exists():
                manifest["validation"][zone] = _validation_digest(io.read_json(path))
        manifest["privacy"] = privacy.to_json()
        write_manifest(cfg, manifest)
    except BaseException:
        # Write-audit-publish: a staged release that failed its checks is never left to be published.
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary_path


def _carry_over_published_reports(cfg: RunConfig) -> None:
    """Copy into the run's reports the published reports of zones this run did not validate again.

    A downstream DAG rerun by hand after publication (say pprl_link, to republish with a linkage fix,
    possible only when the label kept its working files: pipeline.zones) validates only its own zones; the raw and pseudonymised zones it builds on are the ones the
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
    """Files of linkage tokens, record tokens and participant keys that study IDs must differ from
    (pseudonymised zone): the participants' tokens (persons_file, which no longer holds the study
    IDs themselves) and every source's token blocks and record blocks."""
    files = [("pseudo_persons", persons_file(cfg))]
    files += [("token_blocks", blocks_path(cfg.pseudonymised_dir, s)) for s in SOURCES]
    files += [("record_blocks", records_path(cfg.pseudonymised_dir, s)) for s in SOURCES]
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
    manifest = exact_manifest(cfg)
    if not manifest.get("privacy"):
        raise ValidationFailed(f"{staging}: the staged release has not passed validate_release; run it first")
    # Loaded before anything is written, so a missing or exposed key stops publication at once.
    key = signing.load_publishing_key(cfg.publishing_key_file)
    # A publication killed while writing into the staging folder leaves its temporary file there; it
    # is nobody's output, and must not be hashed into the manifest or renamed into the release.
    for stale in staging.glob(".*.tmp"):
        stale.unlink()
    manifest["files"] = {
        p.name: {"sha256": io.sha256_file(p), **({"rows": pl.scan_parquet(p).select(pl.len()).collect().item()} if p.suffix == ".parquet" else {})}
        for p in sorted(staging.iterdir())
        # Per-run files and the signature are about the manifest, not content; a dot file is a
        # temporary file of a killed attempt.
        if p.name not in signing.NOT_IN_MANIFEST and not p.name.startswith(".")
    }
    manifest["signing"] = signing.signing_record(key)
    write_manifest(cfg, manifest)
    write_provenance(cfg, staging)
    # Signed once the manifest and provenance are final: the signature binds both hashes.
    signing.sign_release(staging, key)
    # Rendered before the rename, so a page that cannot be built stops publication; written after it,
    # so the page on disk always describes the release that is in place. Its links are relative to
    # the published reports folder, where it ends up.
    page = page_for(staging / "manifest.json", cfg.reports_dir, final, figures_dir=cfg.reports_staging_dir)
    with io.atomic_path(cfg.reports_staging_dir / PUBLISHING_MARK) as tmp:
        tmp.write_text(io.sha256_file(staging / "manifest.json"))
    io.replace_dir(staging, final)
    release_log.append_release(final)
    _publish_reports(cfg, page)
    log.info("published release %s; audit page %s", cfg.release_label, cfg.reports_dir / "audit.html")
    return final


def _publish_reports(cfg: RunConfig, page: str) -> None:
    """Write the audit page into the run's reports, move them over the label's published reports,
    and remove the label's working files (pipeline.zones.purge_working_files).

    The mark goes last: a crash before it leaves the retry (`finish_interrupted_publish`) something
    to finish, the purge included, so a published label never keeps its working files by accident.
    """
    with io.atomic_path(cfg.reports_staging_dir / "audit.html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    io.replace_dir(cfg.reports_staging_dir, cfg.reports_dir)
    purge_working_files(cfg)
    (cfg.reports_dir / PUBLISHING_MARK).unlink()


def finish_interrupted_publish(cfg: RunConfig) -> bool:
    """Finish a publication killed after the release was renamed into place; True if there was one.

    Killed before the reports moved, the mark is in the staging folder; killed after, in the
    published one (only the mark, and perhaps the previous reports set aside, are left to clear).
    """
    from pipeline.publish.report import page_for

    final = cfg.release_dir
    if _renamed_before_a_crash(cfg.reports_staging_dir / PUBLISHING_MARK, final):
        release_log.append_release(final)  # appends nothing if the crash came after the entry was written
        _publish_reports(cfg, page_for(final / "manifest.json", cfg.reports_dir, final, figures_dir=cfg.reports_staging_dir))
        return True
    if _renamed_before_a_crash(cfg.reports_dir / PUBLISHING_MARK, final):
        release_log.append_release(final)
        io.recover_replace(cfg.reports_dir)
        purge_working_files(cfg)
        (cfg.reports_dir / PUBLISHING_MARK).unlink()
        return True
    return False


def _renamed_before_a_crash(mark: Path, final: Path) -> bool:
    manifest = final / "manifest.json"
    return mark.is_file() and manifest.is_file() and mark.read_text().strip() == io.sha256_file(manifest)
