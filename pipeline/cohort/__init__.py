"""Stage 3a: eligibility, service use and costs, propensity matching and balance.

`build_cohort` is imported on first use: the publish stage imports `pipeline.cohort.outputs` (the
release's table names), and that should not bring the whole cohort stage with it.
"""

from __future__ import annotations

from pipeline.lazy import lazy_exports

_EXPORTS = {"build_cohort": "pipeline.cohort.stage"}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
