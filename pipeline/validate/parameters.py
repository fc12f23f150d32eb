"""Run parameters a business rule may use, such as the study window.

A checked-in suite cannot hard-code the study window: each run sets its own `study_start`,
`study_end` and `extract_date`. A rule names the parameter the way GX serialises suite parameters,

    {"type": "expect_column_values_to_be_between",
     "kwargs": {"column": "index_date", "min_value": {"$PARAMETER": "study_start"},
                "max_value": {"$PARAMETER": "study_end"}}, ...}

and `validate_files(..., parameters=run_parameters(cfg))` supplies the values, so Data Docs show
the rule with its parameter names on the suite page and with this run's dates on the result page.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

# Every parameter a rule may name, and what it means (for error messages and the audit page).
RUN_PARAMETERS: dict[str, str] = {
    "study_start": "first day of the study window (run setting study_start)",
    "study_end": "last day of the study window (run setting study_end)",
    "extract_date": "the day the extracts were taken (run setting extract_date)",
}


def run_parameters(cfg: Any) -> dict[str, dt.date]:
    """The parameter values of one run (a pipeline.settings.RunConfig)."""
    return {name: dt.date.fromisoformat(getattr(cfg, name)) for name in RUN_PARAMETERS}


def parameter_names(kwargs: Mapping[str, Any]) -> set[str]:
    """The `$PARAMETER` names one expectation's kwargs refer to."""
    return {v["$PARAMETER"] for v in kwargs.values() if isinstance(v, dict) and "$PARAMETER" in v}


def check_known(kwargs: Mapping[str, Any], where: str) -> None:
    """Refuse a rule that names a parameter no run sets (a typo would only show up at run time)."""
    unknown = sorted(parameter_names(kwargs) - set(RUN_PARAMETERS))
    if unknown:
        raise ValueError(f"{where}: unknown run parameter(s) {unknown}; use one of {sorted(RUN_PARAMETERS)}")


def check_supplied(needed: Iterable[str], parameters: Mapping[str, Any] | None, datasets: Iterable[str]) -> None:
    missing = sorted(set(needed) - set(parameters or {}))
    if missing:
        raise ValueError(
            f"the rules of dataset(s) {sorted(set(datasets))} need run parameter(s) {missing}; "
            "pass parameters=run_parameters(cfg) to validate_files"
        )


def as_json(parameters: Mapping[str, Any] | None) -> dict[str, str]:
    """Parameters as the validation summary records them (ISO dates)."""
    return {k: v.isoformat() if isinstance(v, dt.date) else str(v) for k, v in sorted((parameters or {}).items())}
