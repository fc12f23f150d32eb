"""Service use per participant x period x service type, and its cost.

Events are attributed to the period their start falls in: an admission (and all its bed days) to the
period of its admission date. Social-care episodes are split across periods by the days they overlap.
Periods are the 365 days before the index date (pre_12m) and the 365 days from it (post_12m).
Each function is LazyFrame -> LazyFrame.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

PERIODS: tuple[str, ...] = ("pre_12m", "post_12m")
PERIOD_DAYS = 365
SERVICE_TYPES: tuple[str, ...] = (
    "emergency_admission", "elective_admission", "other_admission", "bed_day", "ae_attendance",
    "outpatient_first", "outpatient_follow_up", "gp_surgery", "gp_telephone", "gp_home_visit", "gp_video",
    "nurse_consultation", "home_care_hour", "residential_week", "nursing_week", "reablement_hour",
)  # fmt: skip
ELECTIVE_METHODS = ("11", "12", "13")
# Units are summed as integers of this many parts per unit. A float sum's result depends on the order
# it adds in, and Polars' streaming group-by does not fix that order, so float sums made reruns differ
# in the last bits; integer sums are exact in any order, which keeps releases byte-identical.
FIXED_POINT = 1_000_000


def fixed_point_sum(col: str) -> pl.Expr:
    """Sum of a float column, order-independent: each value rounded to 1e-6, summed as integers."""
    return ((pl.col(col) * FIXED_POINT).round(0).cast(pl.Int64).sum() / FIXED_POINT).alias(col)


def _period_of(date: pl.Expr, index: pl.Expr) -> pl.Expr:
    days = (date - index).dt.total_days()
    return (
        pl.when((days >= -PERIOD_DAYS) & (days < 0))
        .then(pl.lit("pre_12m"))
        .when((days >= 0) & (days < PERIOD_DAYS))
        .then(pl.lit("post_12m"))
        .otherwise(None)
    )


def apc_units(apc: pl.LazyFrame, extract_date: dt.date) -> pl.LazyFrame:
    """participant_id, event date, service_type, units for admitted patient care."""
    method = pl.col("admission_method")
    kind = (
        pl.when(method.str.starts_with("2"))
        .then(pl.lit("emergency_admission"))
        .when(method.is_in(ELECTIVE_METHODS))
        .then(pl.lit("elective_admission"))
        .otherwise(pl.lit("other_admission"))
    )
    # A spell still open at extract counts its bed days to the extract date.
    los = (pl.col("discharge_date").fill_null(pl.lit(extract_date)) - pl.col("admission_date")).dt.total_days()
    base = apc.select("participant_id", pl.col("admission_date").alias("date"), kind.alias("service_type"), los.alias("_los"))
    admissions = base.select("participant_id", "date", "service_type", pl.lit(1.0).alias("units"))
    bed_days = base.select("participant_id", "date", pl.lit("bed_day").alias("service_type"), pl.col("_los").cast(pl.Float64).alias("units"))
    return pl.concat([admissions, bed_days])


def ae_units(ae: pl.LazyFrame) -> pl.LazyFrame:
    return ae.select("participant_id", pl.col("arrival_date").alias("date"), pl.lit("ae_attendance").alias("service_type"), pl.lit(1.0).alias("units"))


def op_units(op: pl.LazyFrame) -> pl.LazyFrame:
    """Attended appointments only; did-not-attend is not service use."""
    return op.filter(pl.col("attended")).select(
        "participant_id",
        pl.col("appointment_date").alias("date"),
        ("outpatient_" + pl.col("attendance_type")).alias("service_type"),
        pl.lit(1.0).alias("units"),
    )


def gp_units(gp: pl.LazyFrame) -> pl.LazyFrame:
    """GP consultations by type; nurse and other staff are costed as a nurse consultation."""
    kind = pl.when(pl.col("staff_role") == "gp").then("gp_" + pl.col("consultation_type")).otherwise(pl.lit("nurse_consultation"))
    return gp.select("participant_id", pl.col("event_date").alias("date"), kind.alias("service_type"), pl.lit(1.0).alias("units"))


def social_care_units(sc: pl.LazyFrame, persons: pl.LazyFrame, extract_date: dt.date) -> pl.LazyFrame:
    """Hours (home care, reablement) or weeks (residential, nursing) overlapping each period."""
    end = pl.col("end_date").fill_null(pl.lit(extract_date))
    joined = sc.join(persons.select("participant_id", "index_date"), on="participant_id", how="inner")
    parts = []
    for period, lo, hi in (("pre_12m", -PERIOD_DAYS, -1), ("post_12m", 0, PERIOD_DAYS - 1)):
        p_start = pl.col("index_date") + pl.duration(days=lo)
        p_end = pl.col("index_date") + pl.duration(days=hi)
        overlap = (pl.min_horizontal(end, p_end) - pl.max_horizontal(pl.col("start_date"), p_start)).dt.total_days() + 1
        days = pl.max_horizontal(overlap, pl.lit(0)).cast(pl.Float64)
        units = (
            pl.when(pl.col("service_type").is_in(["home_care", "reablement"]))
            .then(pl.col("hours_per_week").fill_null(0.0) * days / 7.0)
            .otherwise(days / 7.0)
        )
        kind = pl.col("service_type").replace_strict(
            {"home_care": "home_care_hour", "reablement": "reablement_hour", "residential": "residential_week", "nursing": "nursing_week"},
            return_dtype=pl.String,
        )
        parts.append(joined.select("participant_id", pl.lit(period).alias("period"), kind.alias("service_type"), units.alias("units")))
    return pl.concat(parts).filter(pl.col("units") > 0)


def service_use(
    events: dict[str, pl.LazyFrame], persons: pl.LazyFrame, unit_costs: pl.LazyFrame, extract_date: dt.date
) -> pl.LazyFrame:
    """Units and cost per participant x period x service type, zeros included, sorted.

    `events` maps each source to its linked payload (payload columns plus participant_id);
    `persons` has participant_id and index_date for the participants to report.
    """
    dated = pl.concat(
        [
            apc_units(events["hospital_apc"], extract_date),
            ae_units(events["hospital_ae"]),
            op_units(events["hospital_op"]),
            gp_units(events["gp_events"]),
        ]
    )
    dated = (
        dated.join(persons.select("participant_id", "index_date"), on="participant_id", how="inner")
        .with_columns(period=_period_of(pl.col("date"), pl.col("index_date")))
        .filter(pl.col("period").is_not_null())
        .select("participant_id", "period", "service_type", "units")
    )
    used = pl.concat([dated, social_care_units(events["social_care"], persons, extract_date)])
    totals = used.group_by("participant_id", "period", "service_type").agg(fixed_point_sum("units"))
    grid = (
        persons.select("participant_id")
        .join(pl.LazyFrame({"period": list(PERIODS)}), how="cross")
        .join(pl.LazyFrame({"service_type": list(SERVICE_TYPES)}), how="cross")
    )
    return (
        grid.join(totals, on=["participant_id", "period", "service_type"], how="left")
        .with_columns(pl.col("units").fill_null(0.0))
        .join(unit_costs.select("service_type", "unit_cost_gbp"), on="service_type", how="left")
        .with_columns(cost_gbp=pl.col("units") * pl.col("unit_cost_gbp"))
        .drop("unit_cost_gbp")
        .sort("participant_id", "period", "service_type")
    )
