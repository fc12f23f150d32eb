"""Who is in the analysis cohort, and each participant's baseline survey answers.

Eligible: a consented, not-withdrawn participant (the consent gate already kept only them) with a
baseline questionnaire, aged 55 or over at the index date, reporting two or more long-term
conditions, whose index date falls in the study window and whose 12 months after index end on or
before the extract date (so the post-index period is complete, never cut short by the extract).

The index date is the MDT enrolment date for the MDT arm and the baseline survey date for
comparators (set by the consent gate). Each step's count is kept for a flow diagram.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from pipeline.cohort.service_use import PERIOD_DAYS

MIN_AGE = 55
MIN_CONDITIONS = 2
AGE_BANDS = ((55, 64, "55-64"), (65, 74, "65-74"), (75, 84, "75-84"), (85, 200, "85+"))


def age_band(age: pl.Expr) -> pl.Expr:
    expr = pl.when(age < MIN_AGE).then(None)
    for lo, hi, label in AGE_BANDS:
        expr = expr.when((age >= lo) & (age <= hi)).then(pl.lit(label))
    return expr.otherwise(None)


def baseline_answers(outcomes: pl.DataFrame) -> pl.DataFrame:
    """participant_id, n_ltc and the baseline EQ-5D index and VAS, from the baseline wave."""
    return outcomes.filter(pl.col("wave") == "baseline").select(
        "participant_id",
        "n_ltc",
        pl.col("eq5d_index").alias("baseline_eq5d_index"),
        pl.col("eq_vas").cast(pl.Float64).alias("baseline_eq_vas"),
    )


def eligible_persons(
    persons: pl.DataFrame, baseline: pl.DataFrame, study_start: dt.date, study_end: dt.date, extract_date: dt.date
) -> tuple[pl.DataFrame, dict[str, int]]:
    """The eligible participants (persons joined to their baseline answers) and the flow counts."""
    steps = [
        ("with_baseline_survey", pl.col("n_ltc").is_not_null()),
        ("aged_55_plus", pl.col("age_at_index") >= MIN_AGE),
        ("with_2plus_conditions", pl.col("n_ltc") >= MIN_CONDITIONS),
        ("index_in_study_window", pl.col("index_date").is_between(pl.lit(study_start), pl.lit(study_end))),
        ("complete_followup", pl.col("index_date") + pl.duration(days=PERIOD_DAYS - 1) <= pl.lit(extract_date)),
    ]
    frame = persons.join(baseline, on="participant_id", how="left")
    counts = {"consented_participants": frame.height}
    for name, rule in steps:
        frame = frame.filter(rule)
        counts[name] = frame.height
    eligible = frame.sort("participant_id")
    counts["eligible"] = eligible.height
    counts["eligible_mdt"] = int((eligible.get_column("arm") == "mdt").sum())
    counts["eligible_comparator"] = int((eligible.get_column("arm") == "comparator").sum())
    return eligible, counts
