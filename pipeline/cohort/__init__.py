"""Stage 3a: eligibility, service use and costs, propensity matching and balance."""

from pipeline.cohort.stage import build_cohort

__all__ = ["build_cohort"]
