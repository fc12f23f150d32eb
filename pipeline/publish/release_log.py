"""The release log, `releases/release_log.jsonl`: one line per publication, each chained to the one before.

Entry v1, one per line, each line exactly the canonical JSON of its entry (sorted keys, no spaces,
ASCII; `pipeline.publish.signing.canonical_json`):

    {"kind": "pprl-release-log-entry/v1", "release_label": ..., "manifest_sha256": <hex>,
     "signature": <hex, as in the release's signature.json>, "fingerprint": "SHA256:<hex>",
     "time": "2026-05-01T09:00:00Z", "previous_entry_sha256": <hex>, "entry_sha256": <hex>}

The chain: `entry_sha256` is the hex SHA-256 of the canonical JSON of the entry without its
`entry_sha256` field; `previous_entry_sha256` is the previous line's `entry_sha256`, and 64 zeros on
the first line. Editing an entry breaks its own hash; dropping, inserting or reordering entries breaks
the next line's link. Each entry carries the release's signature, so an entry for a release the
publishing key never signed cannot be made up. What the chain alone cannot show is lines cut off the
end: `pipeline audit` checks that the latest entry for the audited label is that release, and prints
the log's head hash for the sign-off record.

Every publication appends one entry, a replacement of a label too; a retry of a publication that
already appended (the same label and manifest as the label's latest entry) appends nothing. The log
is a per-run fact (the time differs from run to run): it lives beside the releases, never in one.

    >>> chained({"release_label": "r1"}, GENESIS)["entry_sha256"][:12]
    '93beaaf8ef2c'
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline import io
from pipeline.errors import ReleaseLogError
from pipeline.publish.signing import MANIFEST, SIGNATURE_FILE, canonical_json

log = logging.getLogger(__name__)

LOG_NAME = "release_log.jsonl"
ENTRY_KIND = "pprl-release-log-entry/v1"
GENESIS = "0" * 64
_RESTORE = "restore the release log from its backup and audit again; until then treat every release in it as unverified"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def log_path_for(release_dir: Path) -> Path:
    """The log a release is recorded in: `release_log.jsonl` in the folder that holds the release."""
    return Path(release_dir).parent / LOG_NAME


def entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json({k: v for k, v in entry.items() if k != "entry_sha256"})).hexdigest()


def chained(fields: dict[str, Any], previous: str) -> dict[str, Any]:
    """An entry of `fields`, linked to the entry whose hash is `previous`, with its own hash."""
    entry = {**fields, "previous_entry_sha256": previous}
    return {**entry, "entry_sha256": entry_hash(entry)}


def parse_log(data: bytes, where: str = LOG_NAME) -> list[dict[str, Any]]:
    """Every entry of the log's bytes, verify-or-raise (ReleaseLogError naming the line) the whole chain."""
    if data and not data.endswith(b"\n"):
        raise ReleaseLogError(f"{where}: its last line is incomplete (cut off while it was written, or edited); {_RESTORE}")
    entries: list[dict[str, Any]] = []
    previous = GENESIS
    for number, line in enumerate(data.splitlines(), start=1):
        try:
            entry = json.loads(line)
        except ValueError:
            raise ReleaseLogError(f"{where}, line {number}: not a JSON entry; the log was edited: {_RESTORE}") from None
        if not isinstance(entry, dict) or canonical_json(entry) != line:
            raise ReleaseLogError(f"{where}, line {number}: not written in canonical form; the entry was edited: {_RESTORE}")
        if entry.get("entry_sha256") != entry_hash(entry):
            raise ReleaseLogError(f"{where}, line {number}: its entry_sha256 does not match its contents; the entry was edited: {_RESTORE}")
        if entry.get("previous_entry_sha256") != previous:
            raise ReleaseLogError(
                f"{where}, line {number}: its previous_entry_sha256 is not the hash of the line before it; "
                f"entries were removed, inserted or reordered: {_RESTORE}"
            )
        entries.append(entry)
        previous = entry["entry_sha256"]
    return entries


def read_log(path: Path) -> list[dict[str, Any]]:
    """The entries of the log at `path`, the whole chain verified (ReleaseLogError if it is broken)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ReleaseLogError(
            f"{path}: no release log there; give the release log published with the release (`pipeline audit --log FILE`)"
        ) from None
    return parse_log(data, str(path))


def latest_for(entries: list[dict[str, Any]], label: str) -> dict[str, Any] | None:
    return next((e for e in reversed(entries) if e.get("release_label") == label), None)


def append_release(release_dir: Path, log_path: Path | None = None, clock: Callable[[], dt.datetime] = utc_now) -> dict[str, Any] | None:
    """Append the published release at `release_dir` to its log; return the entry, or None when the
    label's latest entry already records this manifest and signature (a retry after a crash).

    An exclusive lock (fcntl) on the log covers reading the last entry and appending, so two labels
    published at once both land, one after the other; the line is fsynced before the lock is let go.
    `clock` is the seam tests use for a fixed time.
    """
    release_dir = Path(release_dir)
    path = Path(log_path) if log_path else log_path_for(release_dir)
    manifest = io.read_json(release_dir / MANIFEST)
    signed = io.read_json(release_dir / SIGNATURE_FILE)
    fields = {
        "kind": ENTRY_KIND,
        "release_label": manifest["release_label"],
        "manifest_sha256": io.sha256_file(release_dir / MANIFEST),
        "signature": signed["signature"],
        "fingerprint": signed["fingerprint"],
    }
    created = not path.exists()
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # released when the file is closed
        fh.seek(0)
        data = fh.read()
        if data and not data.endswith(b"\n"):
            # Only this function writes the log, one whole line at a time: a last line without its
            # newline is a write a crash cut short, never a publication that completed.
            log.warning("release log %s: removing an incomplete last line left by a crash", path)
            fh.truncate(data.rfind(b"\n") + 1)
            data = data[: data.rfind(b"\n") + 1]
        entries = parse_log(data, str(path))
        last = latest_for(entries, fields["release_label"])
        if last and all(last.get(k) == v for k, v in fields.items()):
            return None
        when = clock().astimezone(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
        entry = chained({**fields, "time": when}, entries[-1]["entry_sha256"] if entries else GENESIS)
        fh.write(canonical_json(entry) + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    if created:
        # The new file's name must survive a power cut as well as its contents.
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    log.info("release log %s: recorded release %s", path, fields["release_label"])
    return entry


def check_release_logged(entries: list[dict[str, Any]], label: str, manifest_sha256: str, signature: str, where: str) -> dict[str, Any]:
    """Verify-or-raise that the label's latest entry is this release (its manifest hash and signature)."""
    last = latest_for(entries, label)
    if last is None:
        raise ReleaseLogError(
            f"{where}: holds no entry for release {label!r}, so it was never recorded as published; "
            "give the release log published with it (`--log FILE`), or do not use this release"
        )
    if last.get("manifest_sha256") != manifest_sha256 or last.get("signature") != signature:
        raise ReleaseLogError(
            f"{where}: the latest entry for release {label!r} ({last.get('time')}) records another manifest or signature; "
            "this copy is not the release last published under that label (an earlier or replaced one): "
            "do not use it, ask the data engineers for the current release"
        )
    return last
