"""Row-level rules: a row that breaks one is set aside, with the rule as its reason, and counted.

A file that breaks its contract (schemas/) is wrong as a whole and stops the run (file-level). A row
that breaks a rule below is wrong on its own: it goes to `raw/quarantine/<label>/<dataset>.parquet`
with a `quarantine_reason`, is counted per reason in the run's counts, the manifest and the audit
page, and the rest of the file goes on. The first rule a row breaks, in the order listed, is its
reason. Rules that depend on the run (the extract date) live here and not in the contract, which
holds only what is true of a file whatever the run.

| dataset | rule, as the reason reads |
| --- | --- |
| every identifiable extract | date of birth before 1900-01-01 or after the extract date |
| each service-use source | its event date (admission, arrival, appointment, consultation, start) before 1900-01-01 or after the extract date |
| hospital_apc | discharge before admission |
| social_care | service ended before it started |

    >>> [r.reason for r in rules_for("hospital_apc")][-1]
    'discharge before admission'
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

EARLIEST_DATE = dt.date(1900, 1, 1)
# The date a service-use record is about; a record dated after the extract was taken cannot be real.
EVENT_DATES: dict[str, str] = {
    "hospital_apc": "admission_date",
    "hospital_ae": "arrival_date",
    "hospital_op": "appointment_date",
    "gp_events": "event_date",
    "social_care": "start_date",
}
_EVENT_WORDS = {
    "hospital_apc": "admission",
    "hospital_ae": "arrival",
    "hospital_op": "appointment",
    "gp_events": "consultation",
    "social_care": "service start",
}


@dataclass(frozen=True)
class RowRule:
    """A rule one row can break: the reason recorded, and a predicate given the run's extract date."""

    reason: str
    broken: Callable[[dt.date], pl.Expr]


def _outside_dates(column: str) -> Callable[[dt.date], pl.Expr]:
    def broken(extract_date: dt.date) -> pl.Expr:
        c = pl.col(column)
        return c.is_not_null() & ((c < pl.lit(EARLIEST_DATE)) | (c > pl.lit(extract_date)))

    return broken


def _before(later: str, earlier: str) -> Callable[[dt.date], pl.Expr]:
    def broken(extract_date: dt.date) -> pl.Expr:
        return pl.col(later).is_not_null() & pl.col(earlier).is_not_null() & (pl.col(later) < pl.col(earlier))

    return broken


DATE_OF_BIRTH = RowRule("date of birth before 1900-01-01 or after the extract date", _outside_dates("date_of_birth"))
_ORDER_RULES: dict[str, RowRule] = {
    "hospital_apc": RowRule("discharge before admission", _before("discharge_date", "admission_date")),
    "social_care": RowRule("service ended before it started", _before("end_date", "start_date")),
}


def rules_for(dataset: str) -> tuple[RowRule, ...]:
    """The row rules of a dataset, in the order they are tried."""
    rules = [DATE_OF_BIRTH]
    if dataset in EVENT_DATES:
        column = EVENT_DATES[dataset]
        rules.append(RowRule(f"{_EVENT_WORDS[dataset]} date before 1900-01-01 or after the extract date", _outside_dates(column)))
    if dataset in _ORDER_RULES:
        rules.append(_ORDER_RULES[dataset])
    return tuple(rules)


def quarantine_reason(rules: tuple[RowRule, ...], extract_date: dt.date) -> pl.Expr | None:
    """The reason of the first rule each row breaks, or null; None when there are no rules."""
    expr = None
    for rule in rules:
        broken = rule.broken(extract_date)
        expr = pl.when(broken).then(pl.lit(rule.reason)) if expr is None else expr.when(broken).then(pl.lit(rule.reason))
    return None if expr is None else expr.otherwise(pl.lit(None, dtype=pl.String))
