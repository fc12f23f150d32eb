"""The publishing key (Ed25519, never the linkage key), signing a release, and checking a signature.

    >>> key = PublishingKey(Ed25519PrivateKey.from_private_bytes(bytes(32)))
    >>> show_fingerprint(key.fingerprint)[:26]
    'SHA256:139e 3940 e64b 5491'

Fingerprint: "SHA256:" followed by the lowercase hex SHA-256 of the raw 32-byte public key (RFC 8032
encoding). The manifest and the release log hold it as one word; people see it grouped in fours
(`show_fingerprint`), and `--fingerprint` takes either form, with or without "SHA256:".

What is signed (statement v1): the canonical JSON (sorted keys, no spaces, ASCII) of

    {"kind": "pprl-release-statement/v1", "release_label": <label in the manifest>,
     "manifest_sha256": <hex>, "per_run_files": {<name>: <hex SHA-256>, ...}}

where `per_run_files` lists every file of `PER_RUN_FILES` present in the release folder. The
manifest lists every other file's hash and carries the public key and fingerprint (`signing`), so
one signature binds every byte of the release. `signature.json` holds the statement as signed and
the signature. Ed25519 signatures are deterministic, so the same release signed with the same key
gives the same `signature.json`.

Keys, signatures and hashes are written in hex, not base64: release text files are scanned for
postcode-like strings (`pipeline.publish.identifiers`), and base64 can spell one by chance between
its "+" and "/" characters; hex never can.

Where the private key comes from, first match wins (as for the linkage key, `pipeline.crypto.keys`):
1. an explicit key file path (the run's `publishing_key_file` setting);
2. the environment variable `PPRL_PUBLISHING_KEY_FILE` naming a key file;
3. the Airflow connection `pprl_publishing_key`: its password holds the PEM text;
4. the Airflow variable `pprl_publishing_key` holding the PEM text.
A key file is PKCS#8 PEM, mode 0600; one readable or writable by group or others is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pipeline import io
from pipeline.errors import PublishingKeyError, SignatureError
from pipeline.publish.provenance import PER_RUN_FILES
from pipeline.secret_store import airflow_connection, airflow_variable, create_secret_file, exposed_mode, unsealed_publishing_key


ALGORITHM = "Ed25519"
MANIFEST = "manifest.json"
SIGNATURE_FILE = "signature.json"
# Facts that differ from run to run (who, when, run id) live in files of their own beside the
# manifest (PER_RUN_FILES), so the manifest stays byte-identical; the signature binds them when present.
# Files of a release the manifest's `files` does not list: they are about the manifest.
NOT_IN_MANIFEST: tuple[str, ...] = (MANIFEST, SIGNATURE_FILE, *PER_RUN_FILES)
STATEMENT_KIND = "pprl-release-statement/v1"
KEY_FILE_ENV = "PPRL_PUBLISHING_KEY_FILE"
TRUSTED_KEY_ENV = "PPRL_TRUSTED_PUBLISHING_KEY"
AIRFLOW_CONN_ID = "pprl_publishing_key"
AIRFLOW_VARIABLE = "pprl_publishing_key"
_FINGERPRINT_PREFIX = "SHA256:"
_MAKE_ONE = "make one with `pipeline keys new-publishing --out FILE`"


def canonical_json(obj: Any) -> bytes:
    """The one byte form of a JSON value that is hashed and signed: sorted keys, no spaces, ASCII."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """"SHA256:" + hex SHA-256 of the raw 32-byte public key (see module docstring)."""
    return _FINGERPRINT_PREFIX + hashlib.sha256(raw_public_key(public_key)).hexdigest()


def show_fingerprint(fp: str) -> str:
    """A fingerprint grouped in fours for reading aloud or comparing on paper."""
    digits = fp.removeprefix(_FINGERPRINT_PREFIX)
    return _FINGERPRINT_PREFIX + " ".join(digits[i : i + 4] for i in range(0, len(digits), 4))


def parse_fingerprint(text: str, where: str = "--fingerprint") -> str:
    """A fingerprint as typed (grouped or not, with or without "SHA256:") in its one-word form."""
    digits = text.strip().removeprefix(_FINGERPRINT_PREFIX).replace(" ", "").replace(":", "").lower()
    if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
        raise PublishingKeyError(
            f"{where}: not a publishing key fingerprint (SHA256: and 64 hex digits); "
            "copy it from `pipeline keys fingerprint FILE.pub` or the signed audit page"
        )
    return _FINGERPRINT_PREFIX + digits


@dataclass(frozen=True)
class PublishingKey:
    """The private publishing key and where it was loaded from. `repr` never shows the key."""

    private_key: Ed25519PrivateKey
    source: str = field(default="", compare=False)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    def __repr__(self) -> str:
        return f"PublishingKey(fingerprint={self.fingerprint!r})"


def public_key_path(private_path: Path) -> Path:
    """Where `new_publishing_key_file` writes the public half: the key file's name with ".pub" added."""
    return Path(f"{private_path}.pub")


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def new_publishing_key_file(path: Path, private_key: Ed25519PrivateKey | None = None) -> PublishingKey:
    """Write a new private key (PKCS#8 PEM, 0600) at `path` and its public key at `path`.pub.

    Refuses to overwrite either. `private_key` is a seam for tests; production leaves it unset.
    """
    path = Path(path)
    key = PublishingKey(private_key or Ed25519PrivateKey.generate(), str(path))
    pub = public_key_path(path)
    if pub.exists():
        raise PublishingKeyError(f"{pub}: a public key file already exists there; choose another path")
    pem = key.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    # Never replace a key: releases signed with it could no longer be traced to it.
    try:
        create_secret_file(path, pem)
    except FileExistsError:
        raise PublishingKeyError(f"{path}: a key file already exists there; choose another path") from None
    with io.atomic_path(pub) as tmp:
        tmp.write_bytes(public_key_pem(key.public_key))
    return key


def _parse_private(pem: bytes, where: str) -> PublishingKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise PublishingKeyError(f"{where}: not an unencrypted PEM private key; {_MAKE_ONE}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise PublishingKeyError(f"{where}: the publishing key must be an Ed25519 key; {_MAKE_ONE}")
    return PublishingKey(key, where)


def read_publishing_key_file(path: Path) -> PublishingKey:
    """Read a private key file, refusing one that group or others can read or write."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise PublishingKeyError(f"{path}: no publishing key file there; give the right path, or {_MAKE_ONE}") from None
    if mode := exposed_mode(st):
        raise PublishingKeyError(
            f"{path}: the publishing key file is readable or writable by group or others (mode {mode}); "
            f"run `chmod 600 {path}` and check who may have copied it (a copy could sign releases)"
        )
    return _parse_private(path.read_bytes(), str(path))


def read_public_key_file(path: Path) -> Ed25519PublicKey:
    """A public key from a PEM file (as `pipeline keys new-publishing` writes to FILE.pub)."""
    path = Path(path)
    try:
        pem = path.read_bytes()
    except OSError:
        raise PublishingKeyError(f"{path}: no public key file there; give the publisher's FILE.pub") from None
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise PublishingKeyError(f"{path}: not a PEM public key; give the publisher's FILE.pub") from None
    if not isinstance(key, Ed25519PublicKey):
        raise PublishingKeyError(f"{path}: not an Ed25519 public key; give the publisher's FILE.pub")
    return key


def key_file_fingerprint(path: Path) -> str:
    """The fingerprint of a public or private key file (a private one must be 0600)."""
    head = Path(path).read_bytes()[:64] if Path(path).is_file() else b""
    if b"PRIVATE KEY" in head:
        return read_publishing_key_file(path).fingerprint
    return fingerprint(read_public_key_file(path))


def _airflow_secret() -> tuple[str, str] | None:
    """(PEM text, where) from the Airflow connection or variable, or None outside Airflow or when unset.

    The embedded runner keeps the key's environment variables out of the Airflow process's environment
    and seals them (pipeline.orchestration.key_holder); they are put back only for this lookup."""
    with unsealed_publishing_key():
        return _airflow_lookup()


def _airflow_lookup() -> tuple[str, str] | None:
    conn = airflow_connection(AIRFLOW_CONN_ID)
    if conn is not None:
        if conn.password:
            return conn.password, f"Airflow connection {AIRFLOW_CONN_ID}"
        raise PublishingKeyError(f"Airflow connection {AIRFLOW_CONN_ID}: holds no key; put the key file's PEM text in its password")
    value = airflow_variable(AIRFLOW_VARIABLE)
    return (value, f"Airflow variable {AIRFLOW_VARIABLE}") if value else None


def load_publishing_key(key_file: str | Path | None = None) -> PublishingKey:
    """Load the publishing key from the first source that has one (see module docstring)."""
    if key_file:
        return read_publishing_key_file(Path(key_file))
    if os.environ.get(KEY_FILE_ENV):
        return read_publishing_key_file(Path(os.environ[KEY_FILE_ENV]))
    secret = _airflow_secret()
    if secret:
        return _parse_private(secret[0].encode(), secret[1])
    raise PublishingKeyError(
        f"no publishing key: set the run's publishing_key_file (`pipeline run --publishing-key FILE`), {KEY_FILE_ENV}, "
        f"or the Airflow connection or variable {AIRFLOW_CONN_ID}; {_MAKE_ONE}"
    )


# ---------------------------------------------------------------------------------------------------
# Signing and checking


def statement_for(release_dir: Path, release_label: str) -> dict[str, Any]:
    """The statement a release folder's signature must cover, recomputed from the files as they are."""
    release_dir = Path(release_dir)
    return {
        "kind": STATEMENT_KIND,
        "release_label": release_label,
        "manifest_sha256": io.sha256_file(release_dir / MANIFEST),
        "per_run_files": {n: io.sha256_file(release_dir / n) for n in PER_RUN_FILES if (release_dir / n).is_file()},
    }


def signing_record(key: PublishingKey) -> dict[str, str]:
    """The manifest's `signing` section: which algorithm and public key verify the release."""
    return {"algorithm": ALGORITHM, "public_key": raw_public_key(key.public_key).hex(), "fingerprint": key.fingerprint}


def sign_release(folder: Path, key: PublishingKey) -> str:
    """Record the public key in the folder's manifest, then sign it: writes `signature.json`.

    Call it once every other file of the manifest is final. Returns the signature (hex).
    """
    folder = Path(folder)
    manifest = io.read_json(folder / MANIFEST)
    # publish_release records the key before it writes the manifest (and its exact figures); only a
    # manifest that does not name this key yet is rewritten here.
    if manifest.get("signing") != signing_record(key):
        manifest["signing"] = signing_record(key)
        io.write_json(manifest, folder / MANIFEST)
    statement = statement_for(folder, manifest["release_label"])
    signature = key.private_key.sign(canonical_json(statement)).hex()
    io.write_json({"algorithm": ALGORITHM, "fingerprint": key.fingerprint, "signature": signature, "statement": statement}, folder / SIGNATURE_FILE)
    return signature


@dataclass(frozen=True)
class TrustedKey:
    """The publishing key an auditor trusts: a public key, or only its fingerprint, and where it came from."""

    fingerprint: str
    public_key: Ed25519PublicKey | None = None
    source: str = ""


def trusted_key(public_key_file: str | Path | None = None, fingerprint_text: str | None = None) -> TrustedKey | None:
    """The key `pipeline audit` trusts: `--public-key FILE`, else `--fingerprint HEX`, else the public key
    file named by `PPRL_TRUSTED_PUBLISHING_KEY`; None when none of them is given."""
    if public_key_file:
        key = read_public_key_file(Path(public_key_file))
        return TrustedKey(fingerprint(key), key, f"--public-key {public_key_file}")
    if fingerprint_text:
        return TrustedKey(parse_fingerprint(fingerprint_text), None, "--fingerprint")
    if os.environ.get(TRUSTED_KEY_ENV):
        key = read_public_key_file(Path(os.environ[TRUSTED_KEY_ENV]))
        return TrustedKey(fingerprint(key), key, TRUSTED_KEY_ENV)
    return None


_DO_NOT_USE = "do not use it; restore the release from its archived copy"


def release_public_key(manifest: dict[str, Any]) -> Ed25519PublicKey:
    """The public key a manifest records (`signing`), or SignatureError saying it has none."""
    signing = manifest.get("signing")
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(signing["public_key"]))
    except (TypeError, KeyError, ValueError):
        raise SignatureError(f"{MANIFEST}: records no usable publishing key (`signing`), so the release cannot be checked; {_DO_NOT_USE}") from None
    if signing.get("fingerprint") != fingerprint(key) or signing.get("algorithm") != ALGORITHM:
        raise SignatureError(f"{MANIFEST}: its `signing` record does not match its own public key; the manifest was edited: {_DO_NOT_USE}")
    return key


def verify_release(release_dir: Path, manifest: dict[str, Any], trusted: TrustedKey | None) -> str:
    """Verify-or-raise (SignatureError) that `signature.json` signs this folder as it is now.

    Against `trusted` when given; with None, against the key the release itself carries, which proves
    only that the files fit together: anyone who altered the release could have re-signed it with a
    key of their own, so the caller must not call that a pass. Returns the signing key's fingerprint.
    """
    release_dir = Path(release_dir)
    embedded = release_public_key(manifest)
    signed_by = fingerprint(embedded)
    if trusted is not None and signed_by != trusted.fingerprint:
        raise SignatureError(
            f"{MANIFEST}: the release was signed with publishing key {show_fingerprint(signed_by)}, not the trusted key "
            f"{show_fingerprint(trusted.fingerprint)} ({trusted.source}); someone other than the publisher signed it: {_DO_NOT_USE}"
        )
    key = trusted.public_key if trusted is not None and trusted.public_key is not None else embedded
    path = release_dir / SIGNATURE_FILE
    try:
        recorded = json.loads(path.read_text())
        signature = bytes.fromhex(recorded["signature"])
    except FileNotFoundError:
        raise SignatureError(f"{SIGNATURE_FILE}: missing, so nothing shows the release is as published; {_DO_NOT_USE}") from None
    except (OSError, ValueError, TypeError, KeyError):
        raise SignatureError(f"{SIGNATURE_FILE}: not a readable signature record; {_DO_NOT_USE}") from None
    statement = statement_for(release_dir, str(manifest.get("release_label")))
    try:
        key.verify(signature, canonical_json(statement))
    except InvalidSignature:
        changed = _what_changed(recorded.get("statement"), statement)
        raise SignatureError(
            f"{MANIFEST}: the signature does not verify against the publishing key {show_fingerprint(signed_by)}"
            f"{f' ({changed})' if changed else ''}; this release was changed after it was signed: {_DO_NOT_USE}"
        ) from None
    return signed_by


def _what_changed(recorded: Any, now: dict[str, Any]) -> str:
    """Which signed items differ from the statement recorded in signature.json (a hint, not the proof)."""
    if not isinstance(recorded, dict):
        return ""
    changed = []
    if recorded.get("manifest_sha256") != now["manifest_sha256"]:
        changed.append(f"{MANIFEST} differs from the one signed")
    if recorded.get("release_label") != now["release_label"]:
        changed.append("the release label differs from the one signed")
    before = recorded.get("per_run_files") if isinstance(recorded.get("per_run_files"), dict) else {}
    for name in sorted(set(before) | set(now["per_run_files"])):
        if before.get(name) != now["per_run_files"].get(name):
            changed.append(f"{name} {'was added' if name not in before else 'was removed' if name not in now['per_run_files'] else 'differs'}")
    return "; ".join(changed)
