"""Service use per participant x period x service type, and its cost.

Periods are windows of days relative to the index date (day 0), their lengths set by the study
(pipeline.study: periods, panel; Study.pre_days and post_days): for Pioneer's 12 months, the 365 days before the index date (pre_12m, days -365 to -1) and the 365 days from it
(post_12m, days 0 to 364). The monthly panel's months split those same days (month m holds day d
when floor(12 d / 365) = m, so months are 30 or 31 days long and the months of a period add up
exactly to it).

Events are attributed to the period their start falls in: an admission (and all its bed days) to the
period of its admission date. Social-care episodes are split across periods by the days they
overlap. Each source is first cut to distinct events (see pipeline.cohort.events: records delivered
twice are counted once). Each function is LazyFrame -> LazyFrame.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import polars as pl

from pipeline.cohort.events import deduplicate
from pipeline.study import Study, load_study

SERVICE_TYPES: tuple[str, ...] = (
    "emergency_admission", "elective_admission", "other_admission", "bed_day", "ae_attendance",
    "outpatient_first", "outpatient_follow_up", "gp_surgery", "gp_telephone", "gp_home_visit", "gp_video",
    "nurse_consultation", "home_care_hour", "residential_week", "nursing_week", "reablement_hour",
)  # fmt: skip
# Who pays, for costs by perspective (NHS hospital, NHS primary care, local-authority social care).
SECTORS: dict[str, tuple[str, ...]] = {
    "hospital": SERVICE_TYPES[:7],
    "primary_care": SERVICE_TYPES[7:12],
    "social_care": SERVICE_TYPES[12:],
}
ELECTIVE_METHODS = ("11", "12", "13")


@dataclass(frozen=True)
class Window:
    """A period: days `first` to `last` (inclusive) relative to the index date."""

    label: str
    first: int
    last: int


def period_windows(study: Study | None = None) -> tuple[Window, Window]:
    """The study's two periods (pre_<n>m, post_<n>m), in days relative to the index date."""
    study = study or load_study()
    pre, post = study.periods
    return (Window(pre, -study.pre_days, -1), Window(post, 0, study.post_days - 1))


def month_windows(study: Study | None = None) -> tuple[Window, ...]:
    """The panel's months (labels "-12" .. "11" for Pioneer), splitting the periods' days."""
    study = study or load_study()
    return tuple(Window(str(m), Study.month_start(m), Study.month_start(m + 1) - 1) for m in study.panel_months)


def exact_sum(expr: pl.Expr) -> pl.Expr:
    """Sum of floats that is the same in every run. A parallel group-by adds partial sums in whatever
    order its threads finish, and float addition is not associative, so a plain sum changes in its
    last bits between runs (and sorting first does not help: the optimiser drops a sort before a sum).
    Decimal addition is exact, so the order cannot matter; 9 decimal places is far below any unit."""
    return expr.cast(pl.Decimal(38, 9)).sum().cast(pl.Float64)


def window_of(days: pl.Expr, windows: tuple[Window, ...]) -> pl.Expr:
    """The label of the window holding `days` (days since index), or null outside them all."""
    first, *rest = windows
    expr = pl.when(days.is_between(first.first, first.last)).then(pl.lit(first.label))
    for w in rest:
        expr = expr.when(days.is_between(w.first, w.last)).then(pl.lit(w.label))
    return expr.otherwise(None)


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


def _distinct(events: dict[str, pl.LazyFrame], source: str, distinct: bool) -> pl.LazyFrame:
    """A source's events, each distinct event once (pipeline.cohort.events): `distinct` says they already are."""
    return events[source] if distinct else deduplicate(events[source], source)


def dated_units(events: dict[str, pl.LazyFrame], extract_date: dt.date, distinct: bool = False) -> pl.LazyFrame:
    """participant_id, date, service_type, units of every distinct hospital and GP event."""
    return pl.concat(
        [
            apc_units(_distinct(events, "hospital_apc", distinct), extract_date),
            ae_units(_distinct(events, "hospital_ae", distinct)),
            op_units(_distinct(events, "hospital_op", distinct)),
            gp_units(_distinct(events, "gp_events", distinct)),
        ]
    )


def social_care_units(
    sc: pl.LazyFrame, persons: pl.LazyFrame, extract_date: dt.date, windows: tuple[Window, ...], distinct: bool = False
) -> pl.LazyFrame:
    """Hours (home care, reablement) or weeks (residential, nursing) of each episode overlapping each window."""
    end = pl.col("end_date").fill_null(pl.lit(extract_date))
    spells = _distinct({"social_care": sc}, "social_care", distinct).join(persons.select("participant_id", "index_date"), on="participant_id", how="inner")
    bounds = pl.LazyFrame({"period": [w.label for w in windows], "_lo": [w.first for w in windows], "_hi": [w.last for w in windows]})
    p_start = pl.col("index_date") + pl.duration(days=pl.col("_lo"))
    p_end = pl.col("index_date") + pl.duration(days=pl.col("_hi"))
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
    return (
        spells.join(bounds, how="cross")
        .select("participant_id", "period", kind.alias("service_type"), units.alias("units"))
        .filter(pl.col("units") > 0)
    )


def units_by_window(
    events: dict[str, pl.LazyFrame], persons: pl.LazyFrame, extract_date: dt.date, windows: tuple[Window, ...], distinct: bool = False
) -> pl.LazyFrame:
    """participant_id, period (window label), service_type, units: only combinations with some use.
    `distinct`: the events are already each distinct event once (pipeline.cohort.events.distinct_events)."""
    dated = (
        dated_units(events, extract_date, distinct)
        .join(persons.select("participant_id", "index_date"), on="participant_id", how="inner")
        .with_columns(period=window_of((pl.col("date") - pl.col("index_date")).dt.total_days(), windows))
        .filter(pl.col("period").is_not_null())
        .select("participant_id", "period", "service_type", "units")
    )
    used = pl.concat([dated, social_care_units(events["social_care"], persons, extract_date, windows, distinct)])
    return used.group_by("participant_id", "period", "service_type").agg(exact_sum(pl.col("units")))


def service_use(
    events: dict[str, pl.LazyFrame], persons: pl.LazyFrame, unit_costs: pl.LazyFrame, extract_date: dt.date,
    study: Study | None = None, distinct: bool = False,
) -> pl.LazyFrame:
    """Units and cost per participant x period (the study's pre and post) x service type, zeros
    included, sorted.

    `events` maps each source to its linked payload (payload columns plus participant_id);
    `persons` has participant_id and index_date for the participants to report; `distinct`: the
    events are already each distinct event once (pipeline.cohort.events.distinct_events).
    """
    windows = period_windows(study)
    totals = units_by_window(events, persons, extract_date, windows, distinct)
    grid = (
        persons.select("participant_id")
        .join(pl.LazyFrame({"period": [w.label for w in windows]}), how="cross")
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
