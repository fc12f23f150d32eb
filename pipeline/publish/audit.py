"""`pipeline audit RELEASE_DIR`: is this release folder still exactly what was published, and safe?

    >>> audit_release(Path("work/releases/2026-q1"), trusted_key(public_key_file="publishing.pem.pub"))  # doctest: +SKIP
    []

1. Signature: `signature.json` must verify, for the manifest and per-run files as they are now,
   against the publishing key the auditor trusts (`--public-key FILE`, `--fingerprint HEX`, or the
   public key file named by `PPRL_TRUSTED_PUBLISHING_KEY`; `pipeline.publish.signing`). Without a
   trusted key the signature is checked against the key the release carries and the audit still
   fails: whoever altered a release could have re-signed it with a key of their own.
2. Release log: the whole hash chain of the release log (default `release_log.jsonl` beside the
   release folder, else `--log FILE`) must hold, and its latest entry for the label must be this
   release's manifest hash and signature (`pipeline.publish.release_log`).
3. Tamper evidence: every file's SHA-256 and (controlled) row count are recomputed and compared with the
   manifest; a file added, removed or changed since publication is a problem.
4. The release's privacy checks (`pipeline.publish.privacy`) run again on the files as they are now.
   Whether study IDs differ from the linkage tokens cannot be rechecked here (the tokens never leave
   the pseudonymised zone); that check's result at publication is in the manifest.

It reads only the release folder and the log, so anyone holding a copy of both can run it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import polars as pl

from pipeline import io
from pipeline.errors import ReleaseLogError, SignatureError
from pipeline.publish import release_log, signing
from pipeline.publish.disclosure import control_count
from pipeline.publish.privacy import assess_release_privacy
from pipeline.publish.signing import MANIFEST, TrustedKey, show_fingerprint, trusted_key

NO_TRUSTED_KEY = (
    "no trusted publishing key was given, so nothing shows who signed this release (anyone who altered it could "
    "have re-signed it with a key of their own); pass --public-key FILE (the publisher's FILE.pub) or "
    f"--fingerprint HEX (from the signed audit page), or set {signing.TRUSTED_KEY_ENV} to the public key file"
)


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
    # The signature and per-run files are about the manifest, so it cannot list them; the signature covers them.
    present = {p.name for p in release_dir.iterdir()} - set(signing.NOT_IN_MANIFEST)
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
            # The manifest's row counts are disclosure-controlled like every count in it.
            rows = control_count(pl.scan_parquet(path).select(pl.len()).collect().item())
            if rows != entry["rows"]:
                problems.append(f"{name}: holds a number of rows the manifest does not record; restore it from the archived release")
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


def _signature_hex(release_dir: Path) -> str | None:
    """The signature `signature.json` holds, or None when it is missing or unreadable (reported by the signature check)."""
    try:
        return io.read_json(release_dir / signing.SIGNATURE_FILE).get("signature")
    except (OSError, ValueError, AttributeError):
        return None


def _signature_problems(release_dir: Path, manifest: dict, trusted: TrustedKey | None, log: Path | None) -> list[str]:
    """The signature against the trusted key, then the release log; one sentence per problem."""
    problems = []
    try:
        signing.verify_release(release_dir, manifest, trusted)
    except SignatureError as exc:
        problems.append(str(exc))
    if trusted is None and not problems:
        problems.append(NO_TRUSTED_KEY)
    log_path = Path(log) if log else release_log.log_path_for(release_dir)
    try:
        entries = release_log.read_log(log_path)
        release_log.check_release_logged(
            entries, str(manifest.get("release_label")), io.sha256_file(release_dir / MANIFEST), _signature_hex(release_dir), str(log_path)
        )
    except ReleaseLogError as exc:
        problems.append(str(exc))
    return problems


def audit_release(release_dir: Path, trusted: TrustedKey | None = None, log: Path | None = None) -> list[str]:
    """Every problem found, one sentence each naming the file (and column and rule); empty means OK.

    `trusted` is the publishing key the auditor trusts (`trusted_key`); without one the audit cannot
    pass. `log` is the release log (default: `release_log.jsonl` beside the release folder).
    """
    release_dir = Path(release_dir)
    manifest, problems = _manifest_problems(release_dir)
    if manifest is None:
        return problems
    problems += _signature_problems(release_dir, manifest, trusted, log)
    problems += _file_problems(release_dir, manifest["files"])
    problems += _provenance_problems(release_dir)
    privacy = assess_release_privacy(release_dir)
    problems += [f"privacy rule broken: {v}" for v in privacy.blocking]
    at_publication = {r.get("rule"): r.get("result") for r in (manifest.get("privacy") or {}).get("rules", [])}
    if at_publication.get("study IDs are not tokens") not in ("passed", None):
        problems.append(f"{MANIFEST}: at publication the check that study IDs are not tokens was {at_publication['study IDs are not tokens']!r}")
    return problems


def main_audit(args: argparse.Namespace) -> int:
    """The `pipeline audit RELEASE_DIR [--public-key FILE | --fingerprint HEX] [--log FILE]` command:
    prints a verdict; exit status 0 when clean, 1 otherwise."""
    release_dir = Path(args.release_dir)
    trusted = trusted_key(getattr(args, "public_key", None), getattr(args, "fingerprint", None))
    log = Path(args.log) if getattr(args, "log", None) else None
    problems = audit_release(release_dir, trusted, log)
    manifest = release_dir / MANIFEST
    if manifest.is_file():
        print(f"manifest SHA-256: {io.sha256_file(manifest)} (compare with section 1 of the signed audit page)")
        try:
            signed_by = signing.fingerprint(signing.release_public_key(json.loads(manifest.read_text())))
            print(f"signed with publishing key {show_fingerprint(signed_by)}")
        except (SignatureError, ValueError):
            pass  # already among the problems
    log_path = log or release_log.log_path_for(release_dir)
    try:
        head = release_log.read_log(log_path)[-1]["entry_sha256"]
        print(f"release log {log_path}: head entry {head} (record it with the sign-off)")
    except (ReleaseLogError, IndexError):
        pass  # already among the problems
    if problems:
        print(f"release {release_dir} FAILED its audit: {len(problems)} problem(s)", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    files = len(json.loads(manifest.read_text())["files"])
    print(
        f"release {release_dir} passed its audit: signed with the trusted publishing key {show_fingerprint(trusted.fingerprint)} "
        f"({trusted.source}), recorded in the release log, {files} file(s) match the manifest and every privacy check passed"
    )
    return 0
