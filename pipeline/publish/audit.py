"""`pipeline audit RELEASE_DIR`: is this release folder still exactly what was published, and safe?

    >>> audit_release(Path("work/releases/2026-q1"))  # doctest: +SKIP
    []

1. Tamper evidence: every file's SHA-256 and row count are recomputed and compared with the
   manifest; a file added, removed or changed since publication is a problem. The manifest cannot
   vouch for itself, so its own SHA-256 is printed: compare it with the one on the signed audit page.
2. The release's privacy checks (`pipeline.publish.privacy`) run again on the files as they are now.
   Whether study IDs differ from the linkage tokens cannot be rechecked here (the tokens never leave
   the pseudonymised zone); that check's result at publication is in the manifest.

It reads only the release folder, so anyone holding a copy of a release can run it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import polars as pl

from pipeline import io
from pipeline.publish.privacy import assess_release_privacy
from pipeline.publish.provenance import PER_RUN_FILES

MANIFEST = "manifest.json"


def _manifest_problems(release_dir: Path) -> tuple[dict | None, list[str]]:
    path = release_dir / MANIFEST
    if not release_dir.is_dir():
        return None, [f"{release_dir}: no such release folder; give the path of releases/<label>/"]
    if not path.is_file():
        return None, [f"{path}: the manifest is missing, so nothing can be checked; restore the release from its archived copy"]
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, [f"{path}: the manifest is not readable JSON; restore the release from its archived copy"]
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) or not manifest["files"]:
        return None, [f"{path}: the manifest lists no files (was the release published by publish_release?)"]
    return manifest, []


def _file_problems(release_dir: Path, files: dict) -> list[str]:
    problems = []
    # Per-run files (provenance.json) differ from run to run, so the content manifest does not list
    # them; they are bound to it by the manifest's hash they carry, and signed on their own.
    present = {p.name for p in release_dir.iterdir()} - {MANIFEST} - set(PER_RUN_FILES)
    for name in sorted(present - set(files)):
        problems.append(f"{name}: not listed in the manifest, so it was added after publication; remove it or republish")
    for name, entry in sorted(files.items()):
        path = release_dir / name
        if not path.is_file():
            problems.append(f"{name}: listed in the manifest but missing; restore it from the archived release")
            continue
        if io.sha256_file(path) != entry.get("sha256"):
            problems.append(
                f"{name}: changed since publication (its SHA-256 differs from the manifest's); "
                "do not use this copy: restore the file from the archived release or republish"
            )
        elif "rows" in entry:
            rows = pl.scan_parquet(path).select(pl.len()).collect().item()
            if rows != entry["rows"]:
                problems.append(f"{name}: holds {rows} rows where the manifest says {entry['rows']}; restore it from the archived release")
    return problems


def _provenance_problems(release_dir: Path) -> list[str]:
    """provenance.json, when there, must name the manifest beside it (it is copied from no other release)."""
    from pipeline.publish.provenance import PROVENANCE

    path = release_dir / PROVENANCE
    if not path.is_file():
        return []
    try:
        named = json.loads(path.read_text()).get("manifest_sha256")
    except (ValueError, AttributeError):
        return [f"{PROVENANCE}: not a JSON object; restore it from the archived release"]
    if named != io.sha256_file(release_dir / MANIFEST):
        return [f"{PROVENANCE}: names another manifest than this release's (its manifest_sha256 differs); restore it from the archived release"]
    return []


def audit_release(release_dir: Path) -> list[str]:
    """Every problem found, one sentence each naming the file (and column and rule); empty means OK."""
    release_dir = Path(release_dir)
    manifest, problems = _manifest_problems(release_dir)
    if manifest is None:
        return problems
    problems += _file_problems(release_dir, manifest["files"])
    problems += _provenance_problems(release_dir)
    privacy = assess_release_privacy(release_dir)
    problems += [f"privacy rule broken: {v}" for v in privacy.blocking]
    at_publication = {r.get("rule"): r.get("result") for r in (manifest.get("privacy") or {}).get("rules", [])}
    if at_publication.get("study IDs are not tokens") not in ("passed", None):
        problems.append(f"{MANIFEST}: at publication the check that study IDs are not tokens was {at_publication['study IDs are not tokens']!r}")
    return problems


def main_audit(args: argparse.Namespace) -> int:
    """The `pipeline audit RELEASE_DIR` command: prints a verdict; exit status 0 when clean, 1 otherwise."""
    release_dir = Path(args.release_dir)
    problems = audit_release(release_dir)
    manifest = release_dir / MANIFEST
    if manifest.is_file():
        print(f"manifest SHA-256: {io.sha256_file(manifest)} (compare with section 1 of the signed audit page)")
    if problems:
        print(f"release {release_dir} FAILED its audit: {len(problems)} problem(s)", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    files = len(json.loads(manifest.read_text())["files"])
    print(f"release {release_dir} passed its audit: {files} file(s) match the manifest and every privacy check passed")
    return 0
