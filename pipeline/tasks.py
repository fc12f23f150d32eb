"""The functions Airflow tasks call, one per task. Each takes the run's conf (a plain dict, see
pipeline.settings.RunConfig), does its work idempotently, and returns the path it wrote.

DAG files in dags/ only wire these together; nothing here imports Airflow.
"""

from __future__ import annotations

from typing import Any

from pipeline.settings import SOURCES, RunConfig

Conf = dict[str, Any]


def check_inputs(conf: Conf) -> str:
    """Check every input file against its contract; write and return the input manifest (hashes, rows)."""
    raise NotImplementedError


def consent_gate(conf: Conf) -> str:
    """Keep consented, not-withdrawn participants; tokenise them. Returns pseudonymised persons path."""
    raise NotImplementedError


def pseudonymise_source(conf: Conf, source: str) -> str:
    """Tokenise one service-use source. Returns the source's pseudonymised folder."""
    raise NotImplementedError


def validate_pseudonymised(conf: Conf) -> str:
    raise NotImplementedError


def link(conf: Conf) -> str:
    """Deterministic ranks 1-5 over every source. Returns the link map path."""
    raise NotImplementedError


def validate_linked(conf: Conf) -> str:
    raise NotImplementedError


def build_cohort(conf: Conf) -> str:
    raise NotImplementedError


def stage_release(conf: Conf) -> str:
    raise NotImplementedError


def validate_release(conf: Conf) -> str:
    raise NotImplementedError


def publish_release(conf: Conf) -> str:
    raise NotImplementedError


__all__ = ["SOURCES", "RunConfig"]
