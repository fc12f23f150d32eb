"""Validation of every zone with Great Expectations; publication is blocked on a critical failure.

    from pipeline.validate import run_parameters, validate_files
    summary = validate_files("pseudonymised", {"pseudo_persons": [path]}, reports_dir, run_name="r1",
                             parameters=run_parameters(cfg))

The names below are imported on first use: importing Great Expectations takes several seconds, and
DAG files and the CLI import this package without necessarily validating anything.
"""

from __future__ import annotations

from pipeline.lazy import lazy_exports

_EXPORTS = {
    "validate_files": "pipeline.validate.runner",
    "run_parameters": "pipeline.validate.parameters",
    "structural_suite": "pipeline.validate.suites",
    "business_suite": "pipeline.validate.suites",
    "validation_suite": "pipeline.validate.suites",
    "validated_contract": "pipeline.validate.suites",
    "write_structural_suites": "pipeline.validate.suites",
    "structural_suite_drift": "pipeline.validate.suites",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
