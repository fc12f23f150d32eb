"""Survey outcomes: EQ-5D-5L dimensions, EQ VAS, the EQ-5D index from a value set, and the ASCOT items,
one row per participant and wave (baseline, 12-month follow-up).

The value set is a reference table the user can replace; it is read and checked by
`pipeline.costs.read_value_set` (both forms it may take are described there).
NICE does not recommend the England 5L value set for its reference case (it asks for 5L answers to
be mapped to the 3L UK value set); see docs/economists.md.

The index is null when any of the five dimensions is missing (no imputation in the release).
"""

from __future__ import annotations

import polars as pl

from pipeline.costs import EQ5D_DIMENSIONS, ValueSet

ASCOT_ITEMS: tuple[str, ...] = (
    "ascot_control", "ascot_care", "ascot_food", "ascot_safety",
    "ascot_social", "ascot_occupation", "ascot_accommodation", "ascot_dignity",
)  # fmt: skip
WAVES: tuple[str, ...] = ("baseline", "followup")


def with_eq5d_index(survey: pl.LazyFrame, value_set: ValueSet) -> pl.LazyFrame:
    """Add `eq5d_index`: the value of the answered profile; null if any dimension is missing."""
    profile = pl.concat_str([pl.col(c).cast(pl.String) for c in EQ5D_DIMENSIONS.values()])  # null if any is null
    return (
        survey.with_columns(_profile=profile)
        .join(value_set.values.lazy().rename({"profile": "_profile", "value": "eq5d_index"}), on="_profile", how="left", maintain_order="left")
        .drop("_profile")
    )


def first_response_per_wave(survey: pl.LazyFrame) -> pl.LazyFrame:
    """One questionnaire per participant and wave: the earliest (a repeat return is not a new wave)."""
    return survey.sort("survey_date", "response_id").unique(["participant_id", "wave"], keep="first", maintain_order=True)


def survey_outcomes(survey: pl.LazyFrame, value_set: ValueSet) -> pl.LazyFrame:
    """participant_id, wave, n_ltc, the EQ-5D-5L dimensions, eq5d_index, eq_vas and the ASCOT items."""
    return with_eq5d_index(first_response_per_wave(survey), value_set).select(
        "participant_id", "wave", "n_ltc", *EQ5D_DIMENSIONS.values(), "eq5d_index", "eq_vas", *ASCOT_ITEMS
    )
