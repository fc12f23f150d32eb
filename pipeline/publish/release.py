"""Stage 3b: write-audit-publish of a release.

1. `stage_release` writes every file into `releases/.staging-<label>/`, swapping participant IDs for
   the release's study IDs and dropping everything the release contracts do not declare.
2. `validate_release` runs Great Expectations and the privacy checks on the staged files; on failure
   the staging folder is removed and nothing is published.
3. `publish_release` records each file's hash in the manifest and renames the folder into place
   in one step. An existing release is never overwritten unless replacing it was asked for.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import polars as pl

from pipeline import __version__, io
from pipeline.contracts import dictionary_records, load_contract, render_dictionary_markdown
from pipeline.errors import ContractError, ReleaseExistsError, ValidationFailed
from pipeline.cohort.outputs import ARTEFACTS_DIR, RELEASE_TABLES
from pipeline.publish.privacy import check_release_privacy
from pipeline.settings import REPO_DIR, SOURCES, RunConfig

log = logging.getLogger(__name__)


def code_version() -> str:
    """The package version and git commit the release was built with."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_DIR), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return f"{__version__}+g{commit}"


def _with_study_ids(df: pl.DataFrame, ids: pl.DataFrame) -> pl.DataFrame:
    return df.join(ids, on="participant_id", how="inner").drop("participant_id")


def stage_release(cfg: RunConfig) -> Path:
    staging = cfg.staging_dir
    if staging.exists():
        shutil.rmtree(staging)  # a previous attempt's leftovers; the staging folder is never published as is
    staging.mkdir(parents=True)
    ids = pl.read_parquet(cfg.pseudonymised_dir / "persons.parquet", columns=["participant_id", "study_id"])
    built = cfg.linked_dir / "cohort"
    for name in RELEASE_TABLES:
        contract = load_contract(name)
        df = pl.read_parquet(built / f"{name}.parquet")
        if "participant_id" in df.columns:
            df = _with_study_ids(df, ids)
        # Sorted by the contract's primary key so the same inputs always give the same bytes.
        io.write_frame(df.sort(list(contract.primary_key)), contract, staging / f"{name}.parquet")
    artefacts = built / ARTEFACTS_DIR
    if artefacts.is_dir():
        for f in sorted(artefacts.iterdir()):
            shutil.copyfile(f, staging / f.name)
    contracts = [load_contract(t) for t in RELEASE_TABLES]
    (staging / "data_dictionary.md").write_text(render_dictionary_markdown(contracts, f"Data dictionary: release {cfg.release_label}"))
    io.write_json(dictionary_records(contracts), staging / "data_dictionary.json")
    io.write_json(_manifest(cfg), staging / "manifest.json")
    return staging


def _manifest(cfg: RunConfig) -> dict[str, Any]:
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
        "linkage": io.read_json(ldir / "linkage_summary.json"),
        "cohort": io.read_json(ldir / "cohort" / "cohort.json")["counts"],
        "validation": {},
        "suppression": {
            "applied": False,
            "reason": "the release holds person-level analysis files only; aggregate tables with suppression come with the audit report",
        },
        "files": {},
    }


def validate_release(cfg: RunConfig) -> Path:
    """GX suites and privacy checks on the staged release; removes the staging folder on failure."""
    from pipeline.validate import validate_files

    staging = cfg.staging_dir
    try:
        violations = check_release_privacy(staging)
        if violations:
            raise ContractError(violations)
        summary_path = validate_files(
            "release", {t: [staging / f"{t}.parquet"] for t in RELEASE_TABLES}, cfg.reports_dir, cfg.release_label
        )
    except (ContractError, ValidationFailed):
        shutil.rmtree(staging, ignore_errors=True)
        raise
    manifest = io.read_json(staging / "manifest.json")
    for zone in ("pseudonymised", "linked", "release"):
        path = cfg.reports_dir / "validation" / f"{zone}.json"
        if path.exists():
            manifest["validation"][zone] = _validation_digest(io.read_json(path))
    io.write_json(manifest, staging / "manifest.json")
    return summary_path


def _validation_digest(summary: dict[str, Any]) -> dict[str, Any]:
    """The part of a GX summary the manifest keeps: success and counts, without run-specific paths."""
    return {k: v for k, v in summary.items() if k in ("success", "statistics", "datasets", "warnings")}


def publish_release(cfg: RunConfig) -> Path:
    staging, final = cfg.staging_dir, cfg.release_dir
    if not staging.exists():
        raise ValidationFailed(f"{staging}: nothing staged; the release must be built and validated first")
    if final.exists() and not cfg.replace_release:
        shutil.rmtree(staging)
        raise ReleaseExistsError(
            f"release {cfg.release_label!r} already exists at {final}; choose a new label, or set replace_release to replace it"
        )
    manifest = io.read_json(staging / "manifest.json")
    manifest["files"] = {
        p.name: {"sha256": io.sha256_file(p), **({"rows": pl.scan_parquet(p).select(pl.len()).collect().item()} if p.suffix == ".parquet" else {})}
        for p in sorted(staging.iterdir())
        if p.name != "manifest.json"
    }
    io.write_json(manifest, staging / "manifest.json")
    io.replace_dir(staging, final)
    log.info("published release %s", cfg.release_label)
    return final
