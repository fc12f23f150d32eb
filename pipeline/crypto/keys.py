"""The linkage key: creating it, loading it from a secret store or a 0600 file, and its key id.

Key file (token spec v1 and v2 alike): JSON `{"kid": ..., "key": <base64 of 32 random bytes>, "created": ...}`,
mode 0600. `kid` is the first 8 bytes, in hex, of HMAC-SHA256(key, b"pprl key id").

Where the key comes from, first match wins:
1. an explicit key file path (the run's `key_file` setting, `--key` on the CLI);
2. the environment variable `PPRL_KEY_FILE` naming a key file;
3. the Airflow connection `pprl_key`: its password holds the key file's JSON, or its extra holds the
   key file's fields (`{"key": ..., "kid": ...}`); any secrets backend Airflow is configured with
   serves it, and Airflow masks it in task logs;
4. the Airflow variable `pprl_key` holding the key file's JSON.

The key itself in the environment variable `PPRL_KEY` is refused (`KeyEnvironmentError`), whatever
else is set: an environment variable has no file mode. Every child process inherits it (Airflow
task processes, validation and token workers that must not hold the key) and any process of the
same user can read it in /proc/<pid>/environ, so it cannot be held to the rule a key file is (0600,
owner only). A key file or a secret store can.

    >>> test_key = b"pprl-v1 published TEST key #056."  # the published test key
    >>> LinkageKey(key=test_key, kid=key_id(test_key))
    LinkageKey(kid='bf991a618eff74c0')
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import KeyEnvironmentError, KeyFileError
from pipeline.secret_store import KEY_ENVIRONMENT, airflow_connection, airflow_variable, create_secret_file, exposed_mode

KEY_BYTES = 32
_KID_MESSAGE = b"pprl key id"
AIRFLOW_CONN_ID = "pprl_key"
AIRFLOW_VARIABLE = "pprl_key"
# The key itself in the environment: refused (see the module docstring), named so the refusal can say so.
KEY_VARIABLE = "PPRL_KEY"
# A key file's path in the environment.
KEY_FILE_VARIABLE = "PPRL_KEY_FILE"
# KEY_ENVIRONMENT, imported above: every environment variable that holds the key or says where it is,
# these two and the forms in which Airflow's environment-variable secrets backend serves the connection
# and the variable. pipeline.secret_store names them, for the code that starts processes without them
# and must not import this module (tests/test_key_boundary.py checks they are these).


@dataclass(frozen=True)
class LinkageKey:
    """The secret key, its public id, and where it was loaded from. `repr` never shows the key."""

    key: bytes
    kid: str
    source: str = field(default="", compare=False)

    def __repr__(self) -> str:
        return f"LinkageKey(kid={self.kid!r})"


def key_id(key: bytes) -> str:
    return hmac.new(key, _KID_MESSAGE, hashlib.sha256).digest()[:8].hex()


def _parse(text: str, where: str) -> LinkageKey:
    try:
        spec = json.loads(text)
        key = base64.b64decode(spec["key"], validate=True)
    except (ValueError, KeyError, TypeError):
        raise KeyFileError(
            f"{where}: not a v1 key (JSON with a base64 'key'); make one with `pipeline keys new --out FILE`"
        ) from None
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"{where}: the key must be {KEY_BYTES} bytes; make one with `pipeline keys new --out FILE`")
    kid = key_id(key)
    if spec.get("kid") not in (None, kid):
        raise KeyFileError(f"{where}: the recorded kid does not match the key; the file is damaged or edited")
    return LinkageKey(key=key, kid=kid, source=where)


def new_key_file(path: Path, now: dt.datetime | None = None, random_bytes: bytes | None = None) -> LinkageKey:
    """Write a new key file readable by its owner only. Refuses to overwrite an existing file.

    `now` and `random_bytes` are seams for tests with fixed vectors; production leaves them unset.
    """
    path = Path(path)
    key = random_bytes if random_bytes is not None else secrets.token_bytes(KEY_BYTES)
    if len(key) != KEY_BYTES:
        raise ValueError(f"a key is {KEY_BYTES} bytes")
    created = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0).isoformat()
    body = json.dumps({"kid": key_id(key), "key": base64.b64encode(key).decode(), "created": created}, indent=2)
    # Never replace a key: tokens made under it would become unlinkable.
    try:
        create_secret_file(path, (body + "\n").encode())
    except FileExistsError:
        raise KeyFileError(f"{path}: a key file already exists there; choose another path") from None
    return LinkageKey(key=key, kid=key_id(key), source=str(path))


def read_key_file(path: Path) -> LinkageKey:
    """Read a key file, refusing one that group or others can read or write."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(
            f"{path}: no key file there; give the right path, or make a key with `pipeline keys new --out FILE`"
        ) from None
    if mode := exposed_mode(st):
        raise KeyFileError(
            f"{path}: the key file is readable or writable by group or others (mode {mode}); "
            f"run `chmod 600 {path}` and check who may have copied it"
        )
    return _parse(path.read_text(), str(path))


def _airflow_connection() -> str | None:
    """The key JSON from the Airflow connection `pprl_key`, or None when there is no such connection."""
    conn = airflow_connection(AIRFLOW_CONN_ID)
    if conn is None:
        return None
    if conn.password:
        return conn.password
    extra = conn.extra_dejson
    if isinstance(extra, dict) and "key" in extra:
        return json.dumps({k: extra[k] for k in ("kid", "key", "created") if k in extra})
    raise KeyFileError(
        f"Airflow connection {AIRFLOW_CONN_ID}: holds no key; put the key file's JSON in its password, "
        "or its fields (key, kid) in its extra"
    )


def load_key(key_file: str | Path | None = None) -> LinkageKey:
    """Load the linkage key from the first source that has one (see module docstring)."""
    refuse_key_in_environment()
    if key_file:
        return read_key_file(Path(key_file))
    if os.environ.get(KEY_FILE_VARIABLE):
        return read_key_file(Path(os.environ[KEY_FILE_VARIABLE]))
    value = _airflow_connection()
    if value:
        return _parse(value, f"Airflow connection {AIRFLOW_CONN_ID}")
    value = airflow_variable(AIRFLOW_VARIABLE)
    if value:
        return _parse(value, f"Airflow variable {AIRFLOW_VARIABLE}")
    raise KeyFileError(
        f"no linkage key: set the run's key_file (--key FILE) or {KEY_FILE_VARIABLE}, or the Airflow connection "
        f"{AIRFLOW_CONN_ID} or variable {AIRFLOW_VARIABLE}; make a key with `pipeline keys new --out FILE`"
    )


def refuse_key_in_environment() -> None:
    """Raise KeyEnvironmentError when `PPRL_KEY` is set (it is never read, so never shown)."""
    if os.environ.get(KEY_VARIABLE):  # set but empty holds no key, and is no leak
        raise KeyEnvironmentError(
            f"environment variable {KEY_VARIABLE}: rule 'key only in a 0600 file or a secret store' broken: "
            "an environment variable is inherited by every child process and readable in /proc/<pid>/environ, "
            f"and no file mode protects it; unset {KEY_VARIABLE} and give the key as a 0600 file "
            f"(--key FILE, the run's key_file, or {KEY_FILE_VARIABLE}) or in the Airflow connection {AIRFLOW_CONN_ID}"
        )
