"""First estimates of the MDT effect, per sample and outcome, on the matched data (`estimates.parquet`).

For each sample (pipeline.cohort.samples) and each outcome in the study's post-index period (12 months
in the Pioneer study):
- `mean_difference`: the matching-weighted mean of the MDT arm minus that of the comparators, from a
  weighted least-squares regression of the outcome on arm (MatchIt's recommended `lm(y ~ treat,
  weights = weights)`), standard errors clustered by matched set (see `cluster_groups`);
- `rate_ratio` (counts, bed days, hours and cost; not the EQ-5D change, which can be negative): the
  exponentiated arm coefficient of a Poisson GLM (log link) of the outcome on arm and the sample's
  propensity covariates ("matching then regression", Ho, Imai, King & Stuart 2007), with the matching
  weights and standard errors clustered by matched set. Poisson with a cluster-robust (sandwich)
  variance is quasi-likelihood: it stays valid under over-dispersion, where a negative-binomial model
  would need its dispersion right, and for costs it estimates the ratio of means;
- `did_rate_ratio` (emergency admissions only): a difference-in-differences rate ratio from the
  monthly panel, Poisson with participant fixed effects over the 12 months before and after index,
  estimated by its conditional likelihood (a weighted binomial logit of the post-period share of each
  participant's admissions on arm; participants with no admission carry no information), matching
  weights, clustered by matched set.
Standard errors are clustered by matched set; after matching with replacement, where a comparator
serves several sets and those sets are therefore not independent, by matched set and participant
both (two-way, Cameron, Gelbach & Miller 2011), as docs/economists.md advises.
95% intervals are normal (Wald) intervals, on the log scale for ratios. Everything is fitted with
statsmodels. Each estimate says how many MDT participants and comparators it rests on; with fewer
than MIN_GROUP_SIZE in an arm the estimate is not made (null) and the counts are released under the
usual disclosure control (pipeline.publish.disclosure). docs/economists.md says what each assumes.

Matched data are the long `matches` rows of the sample (MatchIt's `get_matches()`): with replacement a
comparator appears once per set it serves, with its within-set weight.
"""

from __future__ import annotations

import gc
import warnings
from typing import Any

import numpy as np
import polars as pl

from pipeline.cohort.covariates import covariate_columns, informative, propensity_covariates
from pipeline.cohort.samples import SampleMatch
from pipeline.cohort.service_use import exact_sum
from pipeline.study import Study, load_study

# Outcome -> the service types whose post-index units it adds up.
COUNT_OUTCOMES: dict[str, tuple[str, ...]] = {
    "emergency_admissions": ("emergency_admission",),
    "ae_attendances": ("ae_attendance",),
    "elective_admissions": ("elective_admission",),
    "outpatient_attendances": ("outpatient_first", "outpatient_follow_up"),
    "gp_consultations": ("gp_surgery", "gp_telephone", "gp_home_visit", "gp_video"),
    "bed_days": ("bed_day",),
    "social_care_hours": ("home_care_hour", "reablement_hour"),
}
COST_OUTCOME = "total_cost_gbp"
EQ5D_OUTCOME = "eq5d_index_change"
OUTCOMES: tuple[str, ...] = (*COUNT_OUTCOMES, COST_OUTCOME, EQ5D_OUTCOME)
ESTIMATORS: tuple[str, ...] = ("mean_difference", "rate_ratio", "did_rate_ratio")
DID_OUTCOME = "emergency_admissions"
Z95 = 1.959963984540054
ESTIMATES_SCHEMA = {
    "sample": pl.String, "outcome": pl.String, "estimator": pl.String,
    "estimate": pl.Float64, "std_error": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64, "p_value": pl.Float64,
    "n_mdt": pl.Int32, "n_comparators": pl.Int32,
}  # fmt: skip


def person_outcomes(use: pl.DataFrame, outcomes: pl.DataFrame, post_period: str = "post_12m") -> pl.DataFrame:
    """participant_id and every outcome: units and cost of service_use's post-index period (the
    study's, e.g. post_12m), and the EQ-5D index at follow-up minus baseline (null without both)."""
    post = use.filter(pl.col("period") == post_period)
    kind = pl.col("service_type")
    per_person = post.group_by("participant_id").agg(
        *[exact_sum(pl.col("units").filter(kind.is_in(list(types)))).alias(name) for name, types in COUNT_OUTCOMES.items()],
        exact_sum(pl.col("cost_gbp")).alias(COST_OUTCOME),
    )
    eq5d = outcomes.pivot(on="wave", index="participant_id", values="eq5d_index", aggregate_function="first")
    for wave in ("baseline", "followup"):
        if wave not in eq5d.columns:
            eq5d = eq5d.with_columns(pl.lit(None, pl.Float64).alias(wave))
    change = eq5d.select("participant_id", (pl.col("followup") - pl.col("baseline")).alias(EQ5D_OUTCOME))
    return per_person.join(change, on="participant_id", how="left").sort("participant_id")


def did_counts(panel: pl.LazyFrame) -> pl.DataFrame:
    """participant_id, emergency admissions in the panel's months before index (`pre`) and from it (`post`)."""
    e = pl.col("emergency_admission")
    return (
        panel.group_by("participant_id")
        .agg(exact_sum(e.filter(~pl.col("post"))).alias("pre"), exact_sum(e.filter(pl.col("post"))).alias("post"))
        .sort("participant_id")
        .collect(engine="streaming")  # the panel is read in morsels, never whole; exact sums, so the same figures
    )


def _row(sample: str, outcome: str, estimator: str, n_mdt: int, n_comp: int, fit: tuple[float, float] | None, ratio: bool) -> dict[str, Any]:
    """One estimates row from (coefficient, standard error); ratios exponentiated, intervals Wald."""
    from scipy.stats import norm

    row: dict[str, Any] = {"sample": sample, "outcome": outcome, "estimator": estimator, "n_mdt": n_mdt, "n_comparators": n_comp}
    if fit is None or not all(np.isfinite(fit)) or fit[1] <= 0:
        return {**row, "estimate": None, "std_error": None, "ci_low": None, "ci_high": None, "p_value": None}
    b, se = fit
    low, high = b - Z95 * se, b + Z95 * se
    p = float(2 * norm.sf(abs(b / se)))
    if ratio:
        with np.errstate(over="ignore"):
            b, low, high = np.exp(b), np.exp(low), np.exp(high)
    if not np.all(np.isfinite([b, low, high])):  # a ratio beyond any float: no estimate, as for a failed fit
        return {**row, "estimate": None, "std_error": None, "ci_low": None, "ci_high": None, "p_value": None}
    return {**row, "estimate": float(b), "std_error": float(se), "ci_low": float(low), "ci_high": float(high), "p_value": p}


def cluster_groups(sets: np.ndarray, participants: pl.Series | np.ndarray) -> np.ndarray:
    """What the standard errors are clustered by, for matched rows with these sets and participants.

    The matched set, one-way, when everyone is in one set (matching without replacement); when someone
    is in several (with replacement), the set and the participant, two-way: a comparator who serves
    several sets ties their outcomes together, and one-way clustering by set would take those sets
    for independent and give too small an error. Without replacement each participant's one row lies
    inside one set, so two-way would give the one-way answer anyway; it is kept one-way there so those
    figures stay exactly what they were.

    >>> cluster_groups(np.array([1, 1, 2, 2]), np.array(["a", "b", "c", "d"])).shape
    (4,)
    >>> cluster_groups(np.array([1, 1, 2, 2]), np.array(["a", "b", "c", "b"])).tolist()
    [[1, 0], [1, 1], [2, 2], [2, 1]]
    """
    # Each participant's place among the distinct IDs in sorted order, as numpy's
    # `unique(return_inverse=True)` numbers them; Polars' dense rank gives the same numbers several
    # times faster than numpy's sort of Python strings (20 of the cohort stage's 205 s at 1M people).
    person = (pl.Series(participants).rank("dense") - 1).cast(pl.Int64).to_numpy()
    if person.max(initial=-1) + 1 == len(person):
        return sets
    return np.column_stack([sets, person])


def _clustered(model: Any, groups: np.ndarray) -> tuple[float, float] | None:
    """The arm coefficient (column 1) and its standard error clustered by `groups` (`cluster_groups`:
    one column, one-way; two, two-way)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            res = model.fit(cov_type="cluster", cov_kwds={"groups": groups})
        except (np.linalg.LinAlgError, ValueError, ZeroDivisionError):
            return None
    fit = float(np.asarray(res.params)[1]), float(np.asarray(res.bse)[1])
    # A statsmodels result and its model refer to each other, arrays of the fit's size with them;
    # only the cycle collector frees them, and it seldom runs when few Python objects are made, so
    # without this every fit of the run stayed in memory (about 25 MB a fit at 100 thousand people).
    del res, model
    gc.collect(1)
    return fit


def mean_difference(y: np.ndarray, mdt: np.ndarray, w: np.ndarray, groups: np.ndarray) -> tuple[float, float] | None:
    import statsmodels.api as sm

    return _clustered(sm.WLS(y, np.column_stack([np.ones(len(y)), mdt]), weights=w), groups)


def rate_ratio(y: np.ndarray, mdt: np.ndarray, w: np.ndarray, groups: np.ndarray, adjust: np.ndarray | None = None) -> tuple[float, float] | None:
    """log rate ratio and its standard error: weighted Poisson GLM of y on arm (and `adjust`)."""
    import statsmodels.api as sm

    if y[mdt == 1].sum() <= 0 or y[mdt == 0].sum() <= 0:
        return None  # no event in an arm: the ratio is 0 or infinite, not estimable
    x = np.column_stack([np.ones(len(y)), mdt, *([] if adjust is None else [adjust])])
    return _clustered(sm.GLM(y, x, family=sm.families.Poisson(), var_weights=w), groups)


def did_rate_ratio(pre: np.ndarray, post: np.ndarray, mdt: np.ndarray, w: np.ndarray, groups: np.ndarray) -> tuple[float, float] | None:
    """log DiD rate ratio: conditional (fixed-effects) Poisson over two equal periods, as a binomial
    logit of post / (pre + post) on arm, weighted by weight x (pre + post)."""
    import statsmodels.api as sm

    total = pre + post
    keep = total > 0
    if keep.sum() < 3 or len(np.unique(mdt[keep])) < 2:
        return None
    x = np.column_stack([np.ones(keep.sum()), mdt[keep]])
    return _clustered(sm.GLM(post[keep] / total[keep], x, family=sm.families.Binomial(), var_weights=w[keep] * total[keep]), groups[keep])


def estimate_effects(
    matched: list[SampleMatch], cohort: pl.DataFrame, person: pl.DataFrame, did: pl.DataFrame, min_group: int, study: Study | None = None
) -> pl.DataFrame:
    """Every sample x outcome x estimator (see the module docstring), sorted."""
    study = study or load_study()
    covs = informative(covariate_columns(cohort, study), propensity_covariates(study))
    covariates = pl.DataFrame({"participant_id": cohort.get_column("participant_id"), **{f"_c{i}": v for i, v in enumerate(covs.values())}})
    rows: list[dict[str, Any]] = []
    for m in matched:
        long = (
            m.matches()
            .join(person, on="participant_id", how="left")
            .join(covariates, on="participant_id", how="left")
            .join(did, on="participant_id", how="left")
            .sort("matched_set", "arm", "participant_id", descending=[False, True, False])
        )
        for outcome in OUTCOMES:
            d = long.filter(pl.col(outcome).is_not_null())
            mdt = (d.get_column("arm") == "mdt").to_numpy().astype(float)
            ids = d.get_column("participant_id")
            n_mdt, n_comp = ids.filter(mdt == 1).n_unique(), ids.filter(mdt == 0).n_unique()
            enough = n_mdt >= min_group and n_comp >= min_group
            y = d.get_column(outcome).cast(pl.Float64).fill_null(0.0).to_numpy()
            w = d.get_column("weight").to_numpy()
            groups = cluster_groups(d.get_column("matched_set").to_numpy(), ids)
            rows.append(_row(m.name, outcome, "mean_difference", n_mdt, n_comp, mean_difference(y, mdt, w, groups) if enough else None, False))
            if outcome != EQ5D_OUTCOME:
                adjust = d.select(pl.col("^_c.*$")).to_numpy()
                adjust = adjust[:, np.ptp(adjust, axis=0) > 0] if adjust.size else None
                fit = rate_ratio(y, mdt, w, groups, adjust) if enough else None
                rows.append(_row(m.name, outcome, "rate_ratio", n_mdt, n_comp, fit, True))
            if outcome == DID_OUTCOME:
                pre = d.get_column("pre").fill_null(0.0).to_numpy()
                post = d.get_column("post").fill_null(0.0).to_numpy()
                fit = did_rate_ratio(pre, post, mdt, w, groups) if enough else None
                rows.append(_row(m.name, outcome, "did_rate_ratio", n_mdt, n_comp, fit, True))
    return pl.DataFrame(rows, schema=ESTIMATES_SCHEMA).sort("sample", "outcome", "estimator")
