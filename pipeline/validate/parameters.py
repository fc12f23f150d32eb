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
WINDOW_PARAMETERS: dict[str, str] = {
    "study_start": "first day of the study window (run setting study_start)",
    "study_end": "last day of the study window (run setting study_end)",
    "extract_date": "the day the extracts were taken (run setting extract_date)",
}
# The study's values contracts refer to as `{study: NAME}` (pipeline.study.Study.suite_parameters):
# the structural suites name them, so checked-in suites hold no study's sites, teams or samples.
STUDY_PARAMETERS: dict[str, str] = {
    "sites": "the study's sites (study file: sites)",
    "team_ids": "the study's team IDs (study file: teams[].id)",
    "operating_models": "the study's operating models (study file: operating_models)",
    "samples": "the samples the study matches in (study file: samples)",
    "covariates": "the propensity and balance covariates (study file: propensity.covariates)",
    "age_bands": "the release's age bands, from the study's minimum age (study file: eligibility.min_age)",
    "periods": "the service_use periods (study file: periods)",
    "panel_first_month": "the panel's first month (study file: panel.months_before)",
    "panel_last_month": "the panel's last month (study file: panel.months_after)",
}
RUN_PARAMETERS: dict[str, str] = {**WINDOW_PARAMETERS, **STUDY_PARAMETERS}


def run_parameters(cfg: Any) -> dict[str, Any]:
    """The parameter values of one run (a pipeline.settings.RunConfig): its window and its study's values."""
    window = {name: dt.date.fromisoformat(getattr(cfg, name)) for name in WINDOW_PARAMETERS}
    return {**window, **cfg.study.suite_parameters()}


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


def as_json(parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """Parameters as the validation summary records them (ISO dates, lists as lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, dt.date):
            return v.isoformat()
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v if isinstance(v, int | float) and not isinstance(v, bool) else str(v)

    return {k: plain(v) for k, v in sorted((parameters or {}).items())}
