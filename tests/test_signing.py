"""Signed, hash-chained releases: attacks on a published release that `pipeline audit` must catch.

The attacks, each on a copy of the reference release (tests/conftest.py `reference`) with its release
log beside it, as a governance officer would receive them:
(a) a value changed, its hash put into the manifest and the audit page rebuilt;
(b) the release re-signed with the attacker's own key, the manifest's public key replaced, and a
    matching entry appended to the log;
(c) a release-log entry edited, dropped or moved;
and the refusals around them: no trusted key given, a group-readable publishing key. The untouched copy
passes and prints the fingerprint. Crash-and-retry of the log is in tests/test_crash_safety.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from pathlib import Path

import polars as pl
import pytest
from conftest import RELIABILITY_LABEL, Reference
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pipeline import io
from pipeline.cli import main
from pipeline.errors import PublishingKeyError, ReleaseLogError
from pipeline.publish import release_log, signing
from pipeline.publish.audit import NO_TRUSTED_KEY, audit_release
from pipeline.publish.report import write_audit_page
from pipeline.publish.signing import show_fingerprint

T0 = dt.datetime(2026, 5, 1, 9, 0, tzinfo=dt.UTC)


def fixed_clock(minutes: int = 0):
    return lambda: T0 + dt.timedelta(minutes=minutes)


@pytest.fixture
def copy(reference: Reference, tmp_path) -> Path:
    """The published reference release and its release log, copied; never the fixture itself."""
    releases = tmp_path / "releases"
    releases.mkdir()
    shutil.copyfile(reference.release.parent / release_log.LOG_NAME, releases / release_log.LOG_NAME)
    return Path(shutil.copytree(reference.release, releases / RELIABILITY_LABEL))


def audit_cli(copy: Path, *flags: str) -> int:
    return main(["audit", str(copy), *flags])


def pub(reference: Reference) -> str:
    return str(signing.public_key_path(reference.publishing_key_file))


def change_a_cohort_value(copy: Path) -> None:
    """What the reported attack did: one value changed, its new SHA-256 put into the manifest."""
    path = copy / "cohort.parquet"
    # Ten pounds more keeps the value at its release precision (the nearest £10), so only the signature can tell.
    pl.read_parquet(path).with_columns(baseline_cost_gbp=pl.col("baseline_cost_gbp") + 10.0).write_parquet(path)
    manifest = io.read_json(copy / "manifest.json")
    manifest["files"]["cohort.parquet"]["sha256"] = io.sha256_file(path)
    io.write_json(manifest, copy / "manifest.json")


# ---------------------------------------------------------------------------------------------------
# (d) the untouched release


def test_an_untouched_release_passes_and_prints_the_fingerprint(reference, copy, capsys) -> None:
    fp = show_fingerprint(reference.trusted.fingerprint)
    assert audit_cli(copy, "--public-key", pub(reference)) == 0
    out = capsys.readouterr().out
    assert "passed its audit" in out and f"signed with the trusted publishing key {fp}" in out
    assert io.sha256_file(copy / "manifest.json") in out
    # The fingerprint as printed (grouped) pins the key as well as the public key file does.
    assert audit_cli(copy, "--fingerprint", fp) == 0
    assert audit_cli(copy, "--fingerprint", reference.trusted.fingerprint.removeprefix("SHA256:")) == 0


def test_the_trusted_key_can_come_from_the_environment(reference, copy, monkeypatch) -> None:
    monkeypatch.setenv(signing.TRUSTED_KEY_ENV, pub(reference))
    assert audit_cli(copy) == 0


def test_without_a_trusted_key_the_audit_does_not_pass_but_names_the_key_and_the_flags(reference, copy, capsys) -> None:
    assert audit_release(copy) == [NO_TRUSTED_KEY]
    assert audit_cli(copy) == 1
    captured = capsys.readouterr()
    assert f"signed with publishing key {show_fingerprint(reference.trusted.fingerprint)}" in captured.out
    assert "passed" not in captured.out
    assert "--public-key FILE" in captured.err and "--fingerprint HEX" in captured.err


def test_the_release_records_the_publishing_key_and_its_signature(reference, copy) -> None:
    manifest = io.read_json(copy / "manifest.json")
    key = signing.read_public_key_file(Path(pub(reference)))
    assert manifest["signing"] == {
        "algorithm": "Ed25519",
        "public_key": signing.raw_public_key(key).hex(),
        "fingerprint": "SHA256:" + hashlib.sha256(signing.raw_public_key(key)).hexdigest(),
    }
    # Neither the signature nor the per-run files are in the manifest's list: they are about it.
    assert not set(signing.NOT_IN_MANIFEST) & set(manifest["files"])
    signed = io.read_json(copy / signing.SIGNATURE_FILE)
    assert signed["statement"] == {
        "kind": signing.STATEMENT_KIND, "release_label": RELIABILITY_LABEL,
        "manifest_sha256": io.sha256_file(copy / "manifest.json"),
        "per_run_files": {"provenance.json": io.sha256_file(copy / "provenance.json")},
    }
    key.verify(bytes.fromhex(signed["signature"]), signing.canonical_json(signed["statement"]))
    # The publishing key is not the linkage key: neither the linkage key file nor its kid signs.
    assert reference.publishing_key_file != reference.key_file


def test_the_audit_page_shows_the_fingerprint_and_the_manifest_hash(reference) -> None:
    page = (reference.cfg.reports_dir / "audit.html").read_text(encoding="utf-8")
    assert show_fingerprint(reference.trusted.fingerprint) in page
    assert io.sha256_file(reference.release / "manifest.json") in page


# ---------------------------------------------------------------------------------------------------
# (a) a changed value, re-hashed into the manifest


def test_a_changed_value_rehashed_into_the_manifest_fails_its_signature(reference, copy, tmp_path, capsys) -> None:
    change_a_cohort_value(copy)
    page = write_audit_page(copy, tmp_path / "reports")  # the attacker rebuilds the page to match
    assert io.sha256_file(copy / "manifest.json") in page.read_text(encoding="utf-8")

    assert audit_cli(copy, "--public-key", pub(reference)) == 1
    err = capsys.readouterr().err
    fp = show_fingerprint(reference.trusted.fingerprint)
    assert f"manifest.json: the signature does not verify against the publishing key {fp}" in err
    assert "this release was changed after it was signed: do not use it" in err
    # The log's entry is for the manifest as published, not this one.
    assert "the latest entry for release 'ref-1'" in err


def test_a_per_run_file_is_bound_by_the_signature(reference, copy) -> None:
    """provenance.json (who ran it, when) is not in the manifest, so only the signature protects it."""
    path = copy / "provenance.json"
    provenance = io.read_json(path)
    io.write_json({**provenance, "started": "2020-01-01T00:00:00Z"}, path)  # the run "happened" earlier
    problems = "\n".join(audit_release(copy, reference.trusted))
    assert "the signature does not verify" in problems and "provenance.json differs" in problems
    path.unlink()
    problems = "\n".join(audit_release(copy, reference.trusted))
    assert "the signature does not verify" in problems and "provenance.json" in problems
    # Signed again by the publisher with it restored, the release passes.
    io.write_json(provenance, path)
    assert audit_release(copy, reference.trusted) == []


def test_a_removed_signature_is_flagged(reference, copy) -> None:
    (copy / signing.SIGNATURE_FILE).unlink()
    problems = audit_release(copy, reference.trusted)
    assert any(p.startswith("signature.json: missing") for p in problems)


# ---------------------------------------------------------------------------------------------------
# (b) re-signed with the attacker's own key


@pytest.fixture
def resigned(copy) -> Path:
    """The attack of (a), then re-signed with the attacker's key and logged, so the copy is consistent."""
    change_a_cohort_value(copy)
    attacker = signing.PublishingKey(Ed25519PrivateKey.generate(), "attacker")
    manifest = io.read_json(copy / "manifest.json")
    io.write_json({**manifest, "signing": signing.signing_record(attacker)}, copy / "manifest.json")
    provenance = io.read_json(copy / "provenance.json")  # made to name the forged manifest, too
    io.write_json({**provenance, "manifest_sha256": io.sha256_file(copy / "manifest.json")}, copy / "provenance.json")
    signing.sign_release(copy, attacker)
    release_log.append_release(copy, clock=fixed_clock(5))
    assert audit_release(copy) == [NO_TRUSTED_KEY]  # it fits together; only trust can tell
    return copy


@pytest.mark.parametrize("how", ["--public-key", "--fingerprint", "environment"])
def test_a_release_resigned_with_another_key_is_refused_against_the_pinned_key(reference, resigned, capsys, monkeypatch, how) -> None:
    if how == "environment":
        monkeypatch.setenv(signing.TRUSTED_KEY_ENV, pub(reference))
        flags = []
    else:
        flags = [how, pub(reference) if how == "--public-key" else show_fingerprint(reference.trusted.fingerprint)]
    assert audit_cli(resigned, *flags) == 1
    err = capsys.readouterr().err
    attacker = io.read_json(resigned / "manifest.json")["signing"]["fingerprint"]
    assert (
        f"manifest.json: the release was signed with publishing key {show_fingerprint(attacker)}, "
        f"not the trusted key {show_fingerprint(reference.trusted.fingerprint)}"
    ) in err
    assert "passed" not in err


# ---------------------------------------------------------------------------------------------------
# (c) the release log


def log_of_three(copy: Path) -> Path:
    """The copy's log with an entry of an earlier release before it and a later one after it, chained."""
    log = copy.parent / release_log.LOG_NAME
    (ours,) = release_log.read_log(log)
    fields = {k: v for k, v in ours.items() if k not in ("previous_entry_sha256", "entry_sha256")}
    first = release_log.chained({**fields, "release_label": "earlier-1", "time": "2026-04-01T09:00:00Z"}, release_log.GENESIS)
    second = release_log.chained(fields, first["entry_sha256"])
    third = release_log.chained({**fields, "release_label": "later-2", "time": "2026-06-01T09:00:00Z"}, second["entry_sha256"])
    log.write_bytes(b"".join(signing.canonical_json(e) + b"\n" for e in (first, second, third)))
    return log


def lines(log: Path) -> list[bytes]:
    return log.read_bytes().splitlines(keepends=True)


def edit_time(line: bytes) -> bytes:
    entry = json.loads(line)
    entry["time"] = "2020-01-01T00:00:00Z"
    return signing.canonical_json(entry) + b"\n"


def edit_and_rehash(line: bytes) -> bytes:
    entry = json.loads(line)
    entry["time"] = "2020-01-01T00:00:00Z"
    entry["entry_sha256"] = release_log.entry_hash(entry)
    return signing.canonical_json(entry) + b"\n"


LOG_TAMPERING = {
    # name: (change to the three lines, the sentence's start)
    "entry edited": (lambda ls: [ls[0], edit_time(ls[1]), ls[2]], "line 2: its entry_sha256 does not match its contents"),
    "entry edited and re-hashed": (lambda ls: [ls[0], edit_and_rehash(ls[1]), ls[2]], "line 3: its previous_entry_sha256 is not the hash"),
    "first entry dropped": (lambda ls: ls[1:], "line 1: its previous_entry_sha256 is not the hash"),
    "middle entry dropped": (lambda ls: [ls[0], ls[2]], "line 2: its previous_entry_sha256 is not the hash"),
    "entries reordered": (lambda ls: [ls[1], ls[0], ls[2]], "line 1: its previous_entry_sha256 is not the hash"),
    "entry re-spaced": (lambda ls: [ls[0], json.dumps(json.loads(ls[1])).encode() + b"\n", ls[2]], "line 2: not written in canonical form"),
    "last line cut short": (lambda ls: [ls[0], ls[1], ls[2][:-20]], "its last line is incomplete"),
}


def test_a_chained_log_of_several_releases_passes(reference, copy) -> None:
    log_of_three(copy)
    assert audit_release(copy, reference.trusted) == []


@pytest.mark.parametrize("tampering", list(LOG_TAMPERING))
def test_a_tampered_release_log_is_named(reference, copy, capsys, tampering) -> None:
    log = log_of_three(copy)
    change, expected = LOG_TAMPERING[tampering]
    log.write_bytes(b"".join(change(lines(log))))
    problems = audit_release(copy, reference.trusted)
    assert len(problems) == 1 and problems[0].startswith(str(log)) and expected in problems[0], problems
    assert "restore the release log from its backup" in problems[0]
    assert audit_cli(copy, "--public-key", pub(reference)) == 1


def test_an_earlier_release_of_a_replaced_label_is_not_the_current_one(reference, copy) -> None:
    log = copy.parent / release_log.LOG_NAME
    (ours,) = release_log.read_log(log)
    replacement = {k: v for k, v in ours.items() if k not in ("previous_entry_sha256", "entry_sha256")}
    replacement.update(manifest_sha256="ab" * 32, time="2026-07-01T09:00:00Z")
    with open(log, "ab") as fh:
        fh.write(signing.canonical_json(release_log.chained(replacement, ours["entry_sha256"])) + b"\n")
    (problem,) = audit_release(copy, reference.trusted)
    assert "the latest entry for release 'ref-1'" in problem and "not the release last published under that label" in problem


def test_a_missing_log_says_to_pass_the_log(reference, copy, tmp_path) -> None:
    moved = tmp_path / "elsewhere.jsonl"
    os.replace(copy.parent / release_log.LOG_NAME, moved)
    (problem,) = audit_release(copy, reference.trusted)
    assert "no release log there" in problem and "--log FILE" in problem
    assert audit_cli(copy, "--public-key", pub(reference), "--log", str(moved)) == 0


def test_appending_is_idempotent_and_repairs_a_line_cut_short(reference, copy) -> None:
    log = copy.parent / release_log.LOG_NAME
    before = log.read_bytes()
    assert release_log.append_release(copy, clock=fixed_clock()) is None  # a retry: already the latest entry
    assert log.read_bytes() == before
    # A crash in the middle of writing a line leaves it without its newline: the next append removes it.
    with open(log, "ab") as fh:
        fh.write(b'{"kind":"pprl-release-log-en')
    change_a_cohort_value(copy)
    signing.sign_release(copy, signing.read_publishing_key_file(reference.publishing_key_file))
    entry = release_log.append_release(copy, clock=fixed_clock(90))
    assert entry["time"] == "2026-05-01T10:30:00Z" and entry["previous_entry_sha256"] == release_log.read_log(log)[0]["entry_sha256"]
    assert log.read_bytes().startswith(before) and len(release_log.read_log(log)) == 2


def test_a_broken_log_stops_the_next_append(copy) -> None:
    log = copy.parent / release_log.LOG_NAME
    log.write_bytes(edit_time(log.read_bytes()))
    with pytest.raises(ReleaseLogError, match="line 1: its entry_sha256 does not match"):
        release_log.append_release(copy)


# ---------------------------------------------------------------------------------------------------
# The publishing key


def test_a_new_publishing_key_round_trips_and_is_fingerprinted(tmp_path) -> None:
    path = tmp_path / "secrets" / "publishing.pem"
    key = signing.new_publishing_key_file(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert signing.read_publishing_key_file(path).fingerprint == key.fingerprint
    assert signing.key_file_fingerprint(path) == signing.key_file_fingerprint(signing.public_key_path(path)) == key.fingerprint
    assert "PRIVATE" not in signing.public_key_path(path).read_text()
    assert repr(key) == f"PublishingKey(fingerprint={key.fingerprint!r})"  # never the key itself
    with pytest.raises(PublishingKeyError, match="already exists"):
        signing.new_publishing_key_file(path)


def test_the_fingerprint_is_the_sha256_of_the_raw_public_key() -> None:
    # RFC 8032 test 1: secret key 9d61b19d..., public key d75a9801...
    secret = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    key = signing.PublishingKey(Ed25519PrivateKey.from_private_bytes(secret))
    public = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    assert signing.raw_public_key(key.public_key) == public
    assert key.fingerprint == "SHA256:" + hashlib.sha256(public).hexdigest()
    grouped = show_fingerprint(key.fingerprint)
    assert grouped.startswith("SHA256:") and len(grouped.split()) == 16
    assert signing.parse_fingerprint(grouped) == signing.parse_fingerprint(key.fingerprint.upper().replace("SHA256:", "")) == key.fingerprint
    with pytest.raises(PublishingKeyError, match="--fingerprint: not a publishing key fingerprint"):
        signing.parse_fingerprint("SHA256:abcd")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_publishing_key_readable_by_others_is_refused(tmp_path, monkeypatch, mode) -> None:
    path = tmp_path / "publishing.pem"
    signing.new_publishing_key_file(path)
    os.chmod(path, mode)
    with pytest.raises(PublishingKeyError, match=rf"readable or writable by group or others \(mode {mode:04o}\); run `chmod 600"):
        signing.load_publishing_key(path)
    monkeypatch.setenv(signing.KEY_FILE_ENV, str(path))
    with pytest.raises(PublishingKeyError, match="chmod 600"):
        signing.load_publishing_key()


def test_no_publishing_key_says_where_to_put_one(monkeypatch) -> None:
    monkeypatch.delenv(signing.KEY_FILE_ENV, raising=False)
    with pytest.raises(PublishingKeyError, match=r"--publishing-key FILE.*PPRL_PUBLISHING_KEY_FILE.*pprl_publishing_key"):
        signing.load_publishing_key()


def test_the_keys_command_makes_and_fingerprints_a_publishing_key(tmp_path, capsys) -> None:
    out = tmp_path / "publishing.pem"
    assert main(["keys", "new-publishing", "--out", str(out)]) == 0
    made = capsys.readouterr().out
    fp = show_fingerprint(signing.read_publishing_key_file(out).fingerprint)
    assert f"fingerprint {fp}" in made and f"{out}.pub" in made
    assert main(["keys", "fingerprint", f"{out}.pub"]) == 0 and capsys.readouterr().out.strip() == fp
    assert main(["keys", "fingerprint", str(out)]) == 0 and capsys.readouterr().out.strip() == fp
    os.chmod(out, 0o644)
    assert main(["keys", "fingerprint", str(out)]) == 2
    assert "chmod 600" in capsys.readouterr().err
