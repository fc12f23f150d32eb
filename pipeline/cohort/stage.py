"""Stage 3a: the analysis cohort. Eligibility, baseline covariates, service use, propensity matching
and balance. Reads `pseudonymised/` payloads and `linked/`; never the key, never `raw/`.

Output goes to `linked/<label>/cohort/` keyed by participant_id; the publish step swaps in the
release's study IDs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl

from pipeline import io
from pipeline.cohort.balance import balance_table
from pipeline.cohort.matching import match_nearest, propensity_logit
from pipeline.cohort.service_use import fixed_point_sum, service_use
from pipeline.pseudonymise.inputs import scan_unit_costs
from pipeline.settings import SOURCES, RunConfig

log = logging.getLogger(__name__)

MIN_AGE = 55
MIN_CONDITIONS = 2
AGE_BANDS = ((55, 64, "55-64"), (65, 74, "65-74"), (75, 84, "75-84"), (85, 200, "85+"))


def age_band(age: pl.Expr) -> pl.Expr:
    expr = pl.when(age < MIN_AGE).then(None)
    for lo, hi, label in AGE_BANDS:
        expr = expr.when((age >= lo) & (age <= hi)).then(pl.lit(label))
    return expr.otherwise(None)


def linked_events(cfg: RunConfig) -> dict[str, pl.LazyFrame]:
    """Each source's payload with the participant its record links to (linked records only)."""
    link_map = pl.scan_parquet(cfg.linked_dir / "link_map.parquet").filter(pl.col("participant_id").is_not_null())
    return {
        s: pl.scan_parquet(cfg.pseudonymised_dir / "payload" / f"{s}.parquet").join(
            link_map.filter(pl.col("source") == s).select("record_id", "participant_id"), on="record_id", how="inner"
        )
        for s in SOURCES
    }


def eligible_persons(cfg: RunConfig) -> tuple[pl.DataFrame, dict[str, int]]:
    """Consented participants aged 55+ with 2+ long-term conditions and a baseline survey."""
    persons = pl.read_parquet(cfg.pseudonymised_dir / "persons.parquet")
    survey = pl.read_parquet(cfg.pseudonymised_dir / "survey.parquet")
    baseline = (
        survey.filter(pl.col("wave") == "baseline")
        .sort("survey_date", "response_id")
        .unique("participant_id", keep="first")
        .select("participant_id", "n_ltc", pl.col("eq_vas").cast(pl.Float64).alias("baseline_eq_vas"))
    )
    joined = persons.join(baseline, on="participant_id", how="left")
    counts = {"consented_participants": persons.height, "with_baseline_survey": int(joined.get_column("n_ltc").is_not_null().sum())}
    eligible = joined.filter(
        pl.col("n_ltc").is_not_null() & (pl.col("age_at_index") >= MIN_AGE) & (pl.col("n_ltc") >= MIN_CONDITIONS)
    ).sort("participant_id")
    counts["eligible"] = eligible.height
    counts["eligible_mdt"] = int((eligible.get_column("arm") == "mdt").sum())
    counts["eligible_comparator"] = int((eligible.get_column("arm") == "comparator").sum())
    return eligible, counts


def design_matrix(cohort: pl.DataFrame) -> dict[str, np.ndarray]:
    """Covariates of the propensity model and the balance table, numeric, missing values handled."""
    vas = cohort.get_column("baseline_eq_vas")
    vas_mean = vas.mean() if vas.drop_nulls().len() else 0.0
    cols: dict[str, np.ndarray] = {
        "age_at_index": cohort.get_column("age_at_index").to_numpy().astype(float),
        "sex=F": (cohort.get_column("sex") == "F").to_numpy().astype(float),
        "site=site_b": (cohort.get_column("site") == "site_b").to_numpy().astype(float),
        "n_ltc": cohort.get_column("n_ltc").to_numpy().astype(float),
        "baseline_emergency_admissions": cohort.get_column("baseline_emergency_admissions").to_numpy().astype(float),
        "log1p_baseline_cost": np.log1p(cohort.get_column("baseline_cost_gbp").to_numpy().astype(float)),
        "baseline_eq_vas": vas.fill_null(vas_mean).to_numpy().astype(float),
        "baseline_eq_vas_missing": vas.is_null().to_numpy().astype(float),
    }
    imd = cohort.get_column("imd_quintile")
    for q in (2, 3, 4, 5):
        cols[f"imd_quintile={q}"] = (imd == q).fill_null(False).to_numpy().astype(float)
    cols["imd_quintile_missing"] = imd.is_null().to_numpy().astype(float)
    # A covariate constant in the cohort carries no information and would make the fit singular.
    return {k: v for k, v in cols.items() if np.ptp(v) > 0}


def build_cohort(cfg: RunConfig) -> Path:
    out = cfg.linked_dir / "cohort"
    eligible, counts = eligible_persons(cfg)
    costs = scan_unit_costs(Path(cfg.unit_costs))
    use = service_use(linked_events(cfg), eligible.lazy(), costs, cfg.extract).collect()
    baseline = (
        use.filter(pl.col("period") == "pre_12m")
        .group_by("participant_id")
        .agg(
            pl.col("units").filter(pl.col("service_type") == "emergency_admission").sum().cast(pl.Int32).alias("baseline_emergency_admissions"),
            fixed_point_sum("cost_gbp").alias("baseline_cost_gbp"),
        )
    )
    cohort = eligible.join(baseline, on="participant_id", how="left").with_columns(
        pl.col("baseline_emergency_admissions").fill_null(0), pl.col("baseline_cost_gbp").fill_null(0.0)
    ).sort("participant_id")

    treated = (cohort.get_column("arm") == "mdt").to_numpy()
    covariates = design_matrix(cohort)
    x = np.column_stack(list(covariates.values())) if covariates else np.zeros((cohort.height, 0))
    logit = propensity_logit(x, treated.astype(float)) if cohort.height else np.zeros(0)
    strata_cols = list(cfg.matching.exact)
    strata = (
        cohort.select(pl.struct(strata_cols).rank("dense").alias("s")).get_column("s").to_numpy().astype(np.int64)
        if strata_cols and cohort.height
        else np.zeros(cohort.height, dtype=np.int64)
    )
    result = match_nearest(logit, treated, strata, cfg.matching)
    matched_set = result.treated_set.copy()
    for s, c in result.pairs:
        # A control matched into several sets (with replacement) keeps the first; weights count them all.
        if matched_set[c] < 0:
            matched_set[c] = s
    cohort = cohort.with_columns(
        propensity_score=pl.Series(1.0 / (1.0 + np.exp(-logit))),
        matched=pl.Series(result.weight > 0),
        matched_set=pl.Series(matched_set).cast(pl.Int32),
        match_weight=pl.Series(result.weight),
        age_band=age_band(pl.col("age_at_index")),
    ).with_columns(matched_set=pl.when(pl.col("matched_set") > 0).then(pl.col("matched_set")))
    balance = balance_table(covariates, treated, result.weight, sample="all")
    n_treated_matched = int((result.treated_set > 0).sum())
    counts.update(
        {
            "matched_mdt": n_treated_matched,
            "matched_comparators": int(((result.weight > 0) & ~treated).sum()),
            "unmatched_mdt": int(treated.sum()) - n_treated_matched,
            "max_abs_smd_after": float(balance.get_column("smd_after").abs().max()) if balance.height else None,
        }
    )
    io.write_table(cohort.to_arrow(), out / "cohort.parquet")
    io.write_table(use.to_arrow(), out / "service_use.parquet")
    io.write_table(balance.to_arrow(), out / "balance.parquet")
    io.write_json({"counts": counts, "matching": cfg.to_conf()["matching"], "covariates": list(covariates)}, out / "cohort.json")
    log.info("cohort: %d eligible, %d MDT matched", counts["eligible"], n_treated_matched)
    return out
