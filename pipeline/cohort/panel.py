"""The person-month panel: one row per participant and month relative to the index date (the study's
panel span: -12 to 11 for Pioneer),
with the units of every service type and the costs by sector, zeros included, ready for a
difference-in-differences model (arm x post) with matched-set fixed effects and matching weights.

Months split the periods of `service_use` exactly (see pipeline.cohort.service_use): with a panel as
long as the periods (Pioneer: 12 months each side), a participant's months -12..-1 add up to their
pre_12m rows and months 0..11 to their post_12m rows.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from pipeline.cohort.service_use import SECTORS, SERVICE_TYPES, exact_sum, month_windows, units_by_window
from pipeline.study import Study, load_study

COST_COLUMNS: tuple[str, ...] = (*(f"{s}_cost_gbp" for s in SECTORS), "cost_gbp")


def person_month_panel(
    events: dict[str, pl.LazyFrame], persons: pl.LazyFrame, unit_costs: pl.LazyFrame, extract_date: dt.date,
    study: Study | None = None, distinct: bool = False,
) -> pl.LazyFrame:
    """participant_id, month, post, one units column per service type, costs by sector and in total.
    `distinct`: as for pipeline.cohort.service_use.service_use."""
    study = study or load_study()
    monthly = (
        units_by_window(events, persons, extract_date, month_windows(study), distinct)
        .join(unit_costs.select("service_type", "unit_cost_gbp"), on="service_type", how="left")
        .with_columns(month=pl.col("period").cast(pl.Int8), _cost=pl.col("units") * pl.col("unit_cost_gbp"))
    )
    kind = pl.col("service_type")
    wide = monthly.group_by("participant_id", "month").agg(
        *[exact_sum(pl.col("units").filter(kind == t)).alias(t) for t in SERVICE_TYPES],
        *[exact_sum(pl.col("_cost").filter(kind.is_in(list(types)))).alias(f"{s}_cost_gbp") for s, types in SECTORS.items()],
        exact_sum(pl.col("_cost")).alias("cost_gbp"),
    )
    grid = persons.select("participant_id").join(pl.LazyFrame({"month": list(study.panel_months)}, schema={"month": pl.Int8}), how="cross")
    values = [*SERVICE_TYPES, *COST_COLUMNS]
    return (
        grid.join(wide, on=["participant_id", "month"], how="left")
        .with_columns([pl.col(c).fill_null(0.0) for c in values])
        .with_columns(post=pl.col("month") >= 0)
        .select("participant_id", "month", "post", *values)
        .sort("participant_id", "month")
    )
