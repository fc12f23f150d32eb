"""Baseline covariates: service use in the study's pre period before index (Pioneer: 12 months), and
the numeric covariates of the propensity model and the balance table.

The study chooses the propensity covariates (pipeline.study: propensity.covariates); Pioneer uses
them all: age, sex, site (indicators against the study's first site), IMD quintile (indicators
against quintile 1), number of long-term conditions, baseline service use (counts, and the log of
1 + total cost, which tames the long tail of costs), and the baseline EQ-5D index and VAS. A missing value (no IMD quintile, an
unanswered item) gets an indicator and, for numbers, the sample mean, so nobody is dropped for it
(Rosenbaum & Rubin's missing-indicator approach for propensity scores). Balance is reported on those
covariates and, as cobalt's `addl`, on baseline cost in pounds.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.cohort.service_use import exact_sum
from pipeline.study import Study, load_study

# Cohort column -> the service types whose pre-period units it adds up.
BASELINE_USE: dict[str, tuple[str, ...]] = {
    "baseline_emergency_admissions": ("emergency_admission",),
    "baseline_elective_admissions": ("elective_admission",),
    "baseline_bed_days": ("bed_day",),
    "baseline_ae_attendances": ("ae_attendance",),
    "baseline_outpatient_attendances": ("outpatient_first", "outpatient_follow_up"),
    "baseline_gp_consultations": ("gp_surgery", "gp_telephone", "gp_home_visit", "gp_video"),
}
IMD_LEVELS = (2, 3, 4, 5)
BALANCE_ONLY: tuple[str, ...] = ("baseline_cost_gbp",)


def family_names(family: str, study: Study) -> tuple[str, ...]:
    """The model's column names of one covariate family of pipeline.study.COVARIATE_FAMILIES."""
    return {
        "age_at_index": ("age_at_index",),
        "sex": ("sex=F",),
        # Indicators against the study's first site, so one site has no column of its own.
        "site": tuple(f"site={s}" for s in study.sites[1:]),
        "imd_quintile": (*(f"imd_quintile={q}" for q in IMD_LEVELS), "imd_quintile=missing"),
        "n_ltc": ("n_ltc",),
        "baseline_service_use": tuple(BASELINE_USE),
        "baseline_cost": ("log1p(baseline_cost_gbp)",),
        "baseline_eq5d_index": ("baseline_eq5d_index", "baseline_eq5d_index=missing"),
        "baseline_eq_vas": ("baseline_eq_vas", "baseline_eq_vas=missing"),
    }[family]


def propensity_covariates(study: Study | None = None) -> tuple[str, ...]:
    """The propensity model's covariates, in the order of the balance table and the love plot."""
    study = study or load_study()
    return tuple(name for family in study.covariates for name in family_names(family, study))


def covariate_names(study: Study | None = None) -> tuple[str, ...]:
    """Every covariate of the balance table: the propensity covariates, then those reported for balance only."""
    return (*propensity_covariates(study), *BALANCE_ONLY)


def baseline_use(use: pl.LazyFrame, study: Study | None = None) -> pl.LazyFrame:
    """participant_id, each BASELINE_USE count and baseline_cost_gbp, from service_use's pre-period rows."""
    pre = use.filter(pl.col("period") == (study or load_study()).periods[0])
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


def covariate_columns(cohort: pl.DataFrame, study: Study | None = None) -> dict[str, np.ndarray]:
    """Every covariate (covariate_names order) as a float array aligned with the cohort's rows."""
    study = study or load_study()
    out: dict[str, np.ndarray] = {
        "age_at_index": _numeric(cohort.get_column("age_at_index")),
        "sex=F": (cohort.get_column("sex") == "F").to_numpy().astype(float),
    }
    for s in study.sites[1:]:
        out[f"site={s}"] = (cohort.get_column("site") == s).to_numpy().astype(float)
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
    return {name: out[name] for name in covariate_names(study)}


def informative(columns: dict[str, np.ndarray], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named covariates that vary in this sample: a constant carries no information and would make
    the fit singular (site within a site's own sample, an indicator of something nobody lacks)."""
    return {k: columns[k] for k in names if len(columns[k]) and np.ptp(columns[k]) > 0}
