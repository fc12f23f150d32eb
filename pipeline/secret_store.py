"""Where keys are kept: 0600 files, and Airflow's secret store (connections and variables).

Both keys are looked up this way (the linkage key in `pipeline.crypto.keys`, the publishing key in
`pipeline.publish.signing`); this module holds no key and imports neither, so the publish code can
use it without crossing the key boundary. Outside Airflow, or outside a task context (where the SDK
has no API client to ask), the answer is None, never an error: the caller then says which sources it
tried.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# The environment variables that hold the linkage key or say where it is: `PPRL_KEY` (the key itself,
# refused by pipeline.crypto.keys), `PPRL_KEY_FILE` (a key file's path), and the forms in which
# Airflow's environment-variable secrets backend serves the connection and the variable `pprl_key`.
# Named here, in a module that holds no key, so that the code that starts processes without them
# (validation and token workers, the embedded Airflow) need not import the key's module.
KEY_ENVIRONMENT: tuple[str, ...] = ("PPRL_KEY", "PPRL_KEY_FILE", "AIRFLOW_CONN_PPRL_KEY", "AIRFLOW_VAR_PPRL_KEY")
# Those of them whose value is the key itself, not a path to it: no process but the key holder's may
# have them in its environment (pipeline.orchestration.key_holder seals them for its children).
KEY_IN_ENVIRONMENT: tuple[str, ...] = tuple(name for name in KEY_ENVIRONMENT if name != "PPRL_KEY_FILE")
# The forms in which Airflow's environment-variable secrets backend serves the publishing key (the
# connection and the variable `pprl_publishing_key`): the key itself. Only the process that signs may
# hold it, and only while it signs (pipeline.orchestration.key_holder seals them; `unsealed_publishing_key`).
PUBLISHING_KEY_IN_ENVIRONMENT: tuple[str, ...] = ("AIRFLOW_CONN_PPRL_PUBLISHING_KEY", "AIRFLOW_VAR_PPRL_PUBLISHING_KEY")
# The memfd holding them, as /proc/<pid>/fd shows it (it names no key), and the variable giving its
# descriptor's number to the process that signs.
PUBLISHING_SEALED_NAME = "pprl-publishing-key"
PUBLISHING_SEALED_FD_VARIABLE = "PPRL_PUBLISHING_KEY_SEALED_FD"


def seal(values: Mapping[str, str], name: str) -> int:
    """A new file descriptor, close-on-exec, of an anonymous in-memory file (memfd) named `name` that
    holds `values` as JSON; the caller closes it. Where there is no memfd (not Linux), an unlinked
    temporary file, as private as a 0600 key file."""
    if hasattr(os, "memfd_create"):  # Linux: in memory only, never on a disk
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
    else:
        with tempfile.TemporaryFile() as tmp:
            fd = os.dup(tmp.fileno())
    os.write(fd, json.dumps(dict(values)).encode())
    return fd


def read_seal(fd: int) -> dict[str, str]:
    """What `seal` put in the file behind `fd` (left open)."""
    return json.loads(os.pread(fd, os.fstat(fd).st_size, 0))


def _publishing_seal() -> int | None:
    """The descriptor of the sealed publishing key this process was given, if it is the seal: a number
    inherited by a process that was not given the descriptor itself names some other file. Where there
    is no /proc (not Linux, so no memfd and no name to check), an open descriptor is taken for it."""
    value = os.environ.get(PUBLISHING_SEALED_FD_VARIABLE, "")
    if not value.isdigit():
        return None
    if not os.path.isdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            os.fstat(int(value))
            return int(value)
        return None
    with contextlib.suppress(OSError):
        if PUBLISHING_SEALED_NAME in os.readlink(f"/proc/self/fd/{value}"):
            return int(value)
    return None


@contextlib.contextmanager
def unsealed_publishing_key() -> Iterator[None]:
    """In the process that signs (the embedded Airflow process, whose publish task signs in place): the
    publishing key's variables from its seal in this environment, where Airflow's secrets backend
    looks, for the block only. Nothing happens without a seal. The seal stays open for a retry."""
    fd = _publishing_seal()
    if fd is None:
        yield
        return
    added = {name: value for name, value in read_seal(fd).items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def exposed_mode(st: os.stat_result) -> str | None:
    """The file's mode as octal text when group or others may read or write it (a key file must be
    0600), else None.

    >>> exposed_mode(os.stat_result((0o100640, 0, 0, 0, 0, 0, 0, 0, 0, 0))), exposed_mode(os.stat_result((0o100600,) + (0,) * 9))
    ('0640', None)
    """
    return f"{stat.S_IMODE(st.st_mode):04o}" if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO) else None


def create_secret_file(path: Path, data: bytes) -> None:
    """Write a new key file, 0600 from its creation (never a moment wider), refusing to replace one:
    whatever was made under the old key would no longer trace to it. Raises FileExistsError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def airflow_connection(conn_id: str) -> Any | None:
    """The Airflow connection `conn_id`, or None when Airflow is absent or has no such connection."""
    try:
        from airflow.sdk import Connection  # only present where Airflow is installed
    except ImportError:
        return None
    try:
        return Connection.get(conn_id)
    except Exception as exc:  # not defined, or no secrets backend to ask outside a task
        log.debug("no Airflow connection %s (%s)", conn_id, type(exc).__name__)
        return None


def airflow_variable(name: str) -> str | None:
    """The Airflow variable `name`, or None when Airflow is absent or the variable is unset."""
    try:
        from airflow.sdk import Variable  # only present where Airflow is installed
    except ImportError:
        return None
    try:
        return Variable.get(name, default=None)
    except Exception:  # outside a task context the SDK has no API client to ask
        return None
