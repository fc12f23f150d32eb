"""Stage 3a: eligibility, service use and costs, propensity matching and balance.

`build_cohort` is imported on first use: the publish stage imports `pipeline.cohort.outputs` (the
release's table names), and that should not bring the whole cohort stage with it.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["build_cohort"]


def __getattr__(name: str) -> Any:
    if name != "build_cohort":
        raise AttributeError(f"module 'pipeline.cohort' has no attribute {name!r}")
    return importlib.import_module("pipeline.cohort.stage").build_cohort
