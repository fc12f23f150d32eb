"""Baseline covariates: service use in the 12 months before index, and the numeric covariates of the
propensity model and the balance table.

The propensity model uses age, sex, site, IMD quintile (indicators against quintile 1), number of
long-term conditions, baseline service use (counts, and the log of 1 + total cost, which tames the
long tail of costs), and the baseline EQ-5D index and VAS. A missing value (no IMD quintile, an
unanswered item) gets an indicator and, for numbers, the sample mean, so nobody is dropped for it
(Rosenbaum & Rubin's missing-indicator approach for propensity scores). Balance is reported on those
covariates and, as cobalt's `addl`, on baseline cost in pounds.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.cohort.service_use import exact_sum

# Cohort column -> the service types whose pre_12m units it adds up.
BASELINE_USE: dict[str, tuple[str, ...]] = {
    "baseline_emergency_admissions": ("emergency_admission",),
    "baseline_elective_admissions": ("elective_admission",),
    "baseline_bed_days": ("bed_day",),
    "baseline_ae_attendances": ("ae_attendance",),
    "baseline_outpatient_attendances": ("outpatient_first", "outpatient_follow_up"),
    "baseline_gp_consultations": ("gp_surgery", "gp_telephone", "gp_home_visit", "gp_video"),
}
IMD_LEVELS = (2, 3, 4, 5)
# Every name a covariate can have, in the order of the balance table and the love plot.
PROPENSITY_COVARIATES: tuple[str, ...] = (
    "age_at_index", "sex=F", "site=site_b",
    *(f"imd_quintile={q}" for q in IMD_LEVELS), "imd_quintile=missing",
    "n_ltc", *BASELINE_USE, "log1p(baseline_cost_gbp)",
    "baseline_eq5d_index", "baseline_eq5d_index=missing", "baseline_eq_vas", "baseline_eq_vas=missing",
)  # fmt: skip
BALANCE_ONLY: tuple[str, ...] = ("baseline_cost_gbp",)
COVARIATE_NAMES: tuple[str, ...] = (*PROPENSITY_COVARIATES, *BALANCE_ONLY)


def baseline_use(use: pl.LazyFrame) -> pl.LazyFrame:
    """participant_id, each BASELINE_USE count and baseline_cost_gbp, from service_use's pre_12m rows."""
    pre = use.filter(pl.col("period") == "pre_12m")
    kind = pl.col("service_type")
    return pre.group_by("participant_id").agg(
        *[exact_sum(pl.col("units").filter(kind.is_in(list(types)))).alias(name) for name, types in BASELINE_USE.items()],
        exact_sum(pl.col("cost_gbp")).alias("baseline_cost_gbp"),
    )


def _numeric(col: pl.Series) -> np.ndarray:
    return col.cast(pl.Float64).to_numpy()


def _with_missing(out: dict[str, np.ndarray], name: str, col: pl.Series) -> None:
    """The column with missing values set to the mean, and a `name=missing` indicator."""
    missing = col.is_null().to_numpy()
    mean = col.mean() if col.drop_nulls().len() else 0.0
    out[name] = _numeric(col.fill_null(mean))
    out[f"{name}=missing"] = missing.astype(float)


def covariate_columns(cohort: pl.DataFrame) -> dict[str, np.ndarray]:
    """Every covariate (COVARIATE_NAMES order) as a float array aligned with the cohort's rows."""
    out: dict[str, np.ndarray] = {
        "age_at_index": _numeric(cohort.get_column("age_at_index")),
        "sex=F": (cohort.get_column("sex") == "F").to_numpy().astype(float),
        "site=site_b": (cohort.get_column("site") == "site_b").to_numpy().astype(float),
    }
    imd = cohort.get_column("imd_quintile")
    for q in IMD_LEVELS:
        out[f"imd_quintile={q}"] = (imd == q).fill_null(False).to_numpy().astype(float)
    out["imd_quintile=missing"] = imd.is_null().to_numpy().astype(float)
    out["n_ltc"] = _numeric(cohort.get_column("n_ltc"))
    for name in BASELINE_USE:
        out[name] = _numeric(cohort.get_column(name))
    cost = _numeric(cohort.get_column("baseline_cost_gbp"))
    out["log1p(baseline_cost_gbp)"] = np.log1p(cost)
    _with_missing(out, "baseline_eq5d_index", cohort.get_column("baseline_eq5d_index"))
    _with_missing(out, "baseline_eq_vas", cohort.get_column("baseline_eq_vas"))
    out["baseline_cost_gbp"] = cost
    assert tuple(out) == COVARIATE_NAMES
    return out


def informative(columns: dict[str, np.ndarray], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named covariates that vary in this sample: a constant carries no information and would make
    the fit singular (site within a site's own sample, an indicator of something nobody lacks)."""
    return {k: columns[k] for k in names if len(columns[k]) and np.ptp(columns[k]) > 0}
