"""Balance as a gate: the balance-seeking ladder of matching specifications, tried per sample.

An analyst using MatchIt checks `bal.tab` after matching and, when a covariate's |SMD| is above the
study's threshold, rematches with a tighter caliper or a distance that targets the covariates left
unbalanced, and keeps the first specification that balances. This module does the same, with a short
fixed ladder so that what is tried never depends on the data:

1. the study's specification, as set (`MatchingOptions`);
2. the same with the caliper tightened to 0.1 SD (if it was wider);
3. optimal pair matching (least total distance) inside the study's caliper (with replacement
   this is skipped: optimal matching has none);
4. one more comparator per MDT participant (1:2 for a 1:1 study): more comparators average out
   chance differences in small samples, at the price of slightly worse pairs;
5. Mahalanobis distance on the key covariates (`mahvars`) and the covariates that step 1 left at or
   above the threshold, inside the study's caliper (what an analyst does on reading `bal.tab`:
   match directly on what did not balance, while the propensity caliper keeps the rest close);
6. the same inside a 0.1 SD caliper.

A step identical to an earlier one is skipped. The first step whose largest |SMD| after matching is
below the threshold is kept; if none is, the step with the smallest largest |SMD| is kept (the
earliest on a tie) and the sample is flagged. Every attempt is recorded (manifest -> cohort ->
samples -> <sample> -> attempts). Tighter calipers match fewer MDT participants, which changes the
population the effect is estimated for; the attempts record how many each step left unmatched.
Without `ladder` only step 1 is tried, and the gate still flags a sample above the threshold.
"""

from __future__ import annotations

from dataclasses import replace

import polars as pl

from pipeline.settings import MatchingOptions

TIGHT_CALIPER = 0.1


def ladder(options: MatchingOptions, imbalanced: tuple[str, ...] = ()) -> tuple[MatchingOptions, ...]:
    """The specifications to try, in order (only the study's own when its ladder is off).
    `imbalanced` are the covariates step 1 left at or above the threshold.

        >>> for step in ladder(MatchingOptions(mahvars=("n_ltc",)), ("sex=F",)):
        ...     print(step.describe())
        nearest, glm, 1:1, caliper 0.2, without replacement, exact on site, sex
        nearest, glm, 1:1, caliper 0.1, without replacement, exact on site, sex
        optimal, glm, 1:1, caliper 0.2, without replacement, exact on site, sex
        nearest, glm, 1:2, caliper 0.2, without replacement, exact on site, sex
        nearest, mahalanobis on n_ltc, sex=F, 1:1, caliper 0.2, without replacement, exact on site, sex
        nearest, mahalanobis on n_ltc, sex=F, 1:1, caliper 0.1, without replacement, exact on site, sex
    """
    if not options.ladder:
        return (options,)
    mahvars = tuple(dict.fromkeys((*options.mahvars, *imbalanced)))
    tight = min(options.caliper, TIGHT_CALIPER)
    steps = [
        options,
        replace(options, caliper=tight),
        *([] if options.replace else [replace(options, method="optimal")]),
        replace(options, ratio=options.ratio + 1),
        replace(options, distance="mahalanobis", mahvars=mahvars),
        replace(options, distance="mahalanobis", mahvars=mahvars, caliper=tight),
    ]
    return tuple(dict.fromkeys(steps))  # frozen dataclasses: equal steps collapse, order kept


def imbalanced_covariates(balance: pl.DataFrame, threshold: float) -> tuple[str, ...]:
    """Covariates whose |SMD| after matching is at or above the threshold, in the table's order."""
    return tuple(balance.filter(pl.col("smd_after").abs() >= threshold).get_column("covariate").to_list())


def balance_summary(balance: pl.DataFrame, threshold: float) -> dict:
    """The sample's largest |SMD| after matching (and its covariate), its variance ratios after
    matching (continuous covariates), and whether it passes the threshold. An SMD that cannot be
    computed (an arm with no matched weight) fails the gate."""
    smd = balance.select("covariate", pl.col("smd_after").abs().alias("a"))
    undefined = smd.get_column("a").is_null().any() or smd.height == 0
    worst = smd.drop_nulls().sort("a", "covariate", descending=[True, False]).head(1)
    vr = balance.get_column("variance_ratio_after").drop_nulls()
    largest = float(worst.item(0, "a")) if worst.height else None
    return {
        "max_abs_smd_after": largest,
        "worst_covariate": worst.item(0, "covariate") if worst.height else None,
        "variance_ratio_after_min": float(vr.min()) if vr.len() else None,
        "variance_ratio_after_max": float(vr.max()) if vr.len() else None,
        "balanced": bool(not undefined and largest is not None and largest < threshold),
    }


def chosen_step(summaries: list[dict]) -> int:
    """Index of the step kept: the first balanced one, else the least unbalanced (earliest on a tie)."""
    for i, s in enumerate(summaries):
        if s["balanced"]:
            return i
    scored = [(s["max_abs_smd_after"] if s["max_abs_smd_after"] is not None else float("inf"), i) for i, s in enumerate(summaries)]
    return min(scored)[1]
