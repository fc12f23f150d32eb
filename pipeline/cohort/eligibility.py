"""Who is in the analysis cohort, and each participant's baseline survey answers.

Eligible, by the study's rules (pipeline.study: eligibility, window, periods): a consented,
not-withdrawn participant (the consent gate already kept only them) with a baseline questionnaire,
of the minimum age or over at the index date (Pioneer: 55), reporting at least the minimum number
of long-term conditions (Pioneer: 2), meeting any survey criteria of the study, whose index date
falls in the study window and whose post period (Pioneer: 12 months) ends on or before the extract
date (so the post-index period is complete, never cut short by the extract).

The index date is the MDT enrolment date for the MDT arm and the baseline survey date for
comparators (set by the consent gate). Each step's count is kept for a flow diagram.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from pipeline.study import Study, load_study

# Prefix of the baseline answers a study's survey criteria test (dropped again after the test).
CRITERION_PREFIX = "_criterion_"


def age_band(age: pl.Expr, study: Study | None = None) -> pl.Expr:
    """The study's age band (10 years from its minimum age, the last open) of an age; null below it."""
    study = study or load_study()
    expr = pl.when(age < study.min_age).then(None)
    for lo, hi, label in study.age_bands:
        expr = expr.when((age >= lo) & (age <= hi)).then(pl.lit(label))
    return expr.otherwise(None)


def baseline_answers(outcomes: pl.DataFrame, study: Study | None = None) -> pl.DataFrame:
    """participant_id, n_ltc and the baseline EQ-5D index and VAS, from the baseline wave (and the
    answers the study's survey criteria test)."""
    criteria = (study or load_study()).survey_criteria
    return outcomes.filter(pl.col("wave") == "baseline").select(
        "participant_id",
        "n_ltc",
        pl.col("eq5d_index").alias("baseline_eq5d_index"),
        pl.col("eq_vas").cast(pl.Float64).alias("baseline_eq_vas"),
        *[pl.col(c).cast(pl.Float64).alias(CRITERION_PREFIX + c) for c in dict.fromkeys(k.column for k in criteria)],
    )


def eligible_persons(
    persons: pl.DataFrame, baseline: pl.DataFrame, study_start: dt.date, study_end: dt.date, extract_date: dt.date,
    study: Study | None = None,
) -> tuple[pl.DataFrame, dict[str, int]]:
    """The eligible participants (persons joined to their baseline answers) and the flow counts, one
    per rule, named after the study's values (aged_55_plus, with_2plus_conditions for Pioneer)."""
    study = study or load_study()
    criteria = []
    for c in study.survey_criteria:
        value = pl.col(CRITERION_PREFIX + c.column)
        rule = value.is_not_null()
        if c.min is not None:
            rule &= value >= c.min
        if c.max is not None:
            rule &= value <= c.max
        criteria.append((c.step_name, rule))
    steps = [
        ("with_baseline_survey", pl.col("n_ltc").is_not_null()),
        (f"aged_{study.min_age}_plus", pl.col("age_at_index") >= study.min_age),
        (f"with_{study.min_long_term_conditions}plus_conditions", pl.col("n_ltc") >= study.min_long_term_conditions),
        *criteria,
        ("index_in_study_window", pl.col("index_date").is_between(pl.lit(study_start), pl.lit(study_end))),
        ("complete_followup", pl.col("index_date") + pl.duration(days=study.post_days - 1) <= pl.lit(extract_date)),
    ]
    frame = persons.join(baseline, on="participant_id", how="left")
    counts = {"consented_participants": frame.height}
    for name, rule in steps:
        frame = frame.filter(rule)
        counts[name] = frame.height
    eligible = frame.drop(pl.selectors.starts_with(CRITERION_PREFIX)).sort("participant_id")
    counts["eligible"] = eligible.height
    counts["eligible_mdt"] = int((eligible.get_column("arm") == "mdt").sum())
    counts["eligible_comparator"] = int((eligible.get_column("arm") == "comparator").sum())
    return eligible, counts
