"""Asking Airflow's secret store for a connection or a variable, where Airflow is installed.

Both keys are looked up this way (the linkage key in `pipeline.crypto.keys`, the publishing key in
`pipeline.publish.signing`); this module holds no key and imports neither, so the publish code can
use it without crossing the key boundary. Outside Airflow, or outside a task context (where the SDK
has no API client to ask), the answer is None, never an error: the caller then says which sources it
tried.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


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
