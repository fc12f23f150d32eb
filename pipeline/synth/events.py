"""Service use: hospital admissions, A&E attendances, outpatient appointments, GP consultations and
social care episodes for one chunk of people, fully vectorised.

Every person (in the study or not) has events from 2 years before to 2 years after their index date,
and none after the extract date. Counts are Poisson with a person's yearly rate
(`rates.yearly_rate`: base x exp(slope x need) x frailty) times the length of the period, and
dates are uniform within the period, so an event source is a few numpy calls however many rows it
has: `np.repeat` of person numbers by their counts, then one uniform draw per row.

The MDT effect: after the index date, an MDT-arm person's emergency-admission rate is multiplied by
`mdt_effect` (a rate ratio). Emergency admissions in the baseline year are not drawn here but
placed: exactly the number `population` drew (and selection depended on), uniformly in that year.
Emergency admissions via A&E (method 21) each bring an A&E attendance on the same day, so A&E
attendances fall with admissions too, but the rate ratio in parameters.json is that of emergency
admissions only.

Each function returns a frame with the source's payload columns plus `_pid` (person_index) and
`_day` (the event date as days since 1970, used for house moves and for ordering).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from pipeline.synth import study
from pipeline.synth.rates import EventRates, yearly_rate

_YEAR = 365.25


@dataclass(frozen=True)
class ChunkPeople:
    """The model inputs of the people of one chunk (numpy arrays, aligned)."""

    person_index: np.ndarray
    index_day: np.ndarray
    need: np.ndarray
    frailty: np.ndarray
    is_mdt: np.ndarray
    baseline_emergency: np.ndarray

    @classmethod
    def of(cls, persons: pl.DataFrame) -> ChunkPeople:
        return cls(
            person_index=persons.get_column("person_index").to_numpy(),
            index_day=persons.get_column("_index_day").to_numpy().astype(np.int64),
            need=persons.get_column("need").to_numpy(),
            frailty=persons.get_column("frailty").to_numpy(),
            is_mdt=(persons.get_column("arm") == "mdt").fill_null(False).to_numpy(),
            baseline_emergency=persons.get_column("baseline_emergency_12m").to_numpy().astype(np.int64),
        )

    @property
    def start(self) -> np.ndarray:
        return self.index_day - study.LOOKBACK_DAYS

    @property
    def end(self) -> np.ndarray:
        """First day after the window (exclusive): two years after index, or the day after the extract."""
        return np.minimum(self.index_day + study.FOLLOWUP_DAYS, study.EXTRACT_DATE + 1)


def _draw(rng: np.random.Generator, rate: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Poisson(rate x years) events per person, uniform over [start, end): (person position, day)."""
    span = np.maximum(end - start, 0)
    counts = rng.poisson(rate * span / _YEAR)
    return _place(rng, counts, start, span)


def _place(rng: np.random.Generator, counts: np.ndarray, start: np.ndarray, span: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`counts[i]` events for person position i, uniform over [start, start + span)."""
    pos = np.repeat(np.arange(counts.shape[0]), counts)
    day = start[pos] + np.floor(rng.random(pos.shape[0]) * span[pos]).astype(np.int64)
    return pos, day


def _categorical(rng: np.random.Generator, shares: dict[str, float], n: int) -> pl.Series:
    """n draws from a code -> share table, as strings."""
    codes = list(shares)
    p = np.array([shares[c] for c in codes], dtype=float)
    return pl.Series(codes, dtype=pl.String).gather(rng.choice(len(codes), size=n, p=p / p.sum()))


def _frame(people: ChunkPeople, pos: np.ndarray, day: np.ndarray, **columns) -> pl.DataFrame:
    return pl.DataFrame({"_pid": people.person_index[pos], "_day": day.astype(np.int32), **columns})


def _dates(days: np.ndarray) -> pl.Series:
    return pl.Series(days.astype(np.int32)).cast(pl.Date)


def hospital_apc(rng: np.random.Generator, people: ChunkPeople, r: EventRates, mdt_effect: float) -> pl.DataFrame:
    """Admissions: emergency (with the MDT effect after index), elective and other."""
    idx, start, end = people.index_day, people.start, people.end
    emergency = yearly_rate(r.emergency_per_year, r.emergency_need_slope, people.need, people.frailty)
    after = emergency * np.where(people.is_mdt, mdt_effect, 1.0)
    baseline_start = idx - study.BASELINE_DAYS
    parts = [
        _draw(rng, emergency, start, baseline_start),  # year 2 before index
        _place(rng, people.baseline_emergency, baseline_start, np.full_like(idx, study.BASELINE_DAYS)),
        _draw(rng, after, idx, end),  # after index
    ]
    e_pos = np.concatenate([p[0] for p in parts])
    e_day = np.concatenate([p[1] for p in parts])
    e_los = np.floor(rng.lognormal(r.emergency_los_log_mean, r.emergency_los_log_sd, size=e_pos.shape[0])).astype(np.int64)
    e_method = _categorical(rng, r.emergency_methods, e_pos.shape[0])

    el_pos, el_day = _draw(rng, yearly_rate(r.elective_per_year, r.elective_need_slope, people.need, people.frailty), start, end)
    el_los = rng.choice(len(r.elective_los_probs), size=el_pos.shape[0], p=np.array(r.elective_los_probs))
    el_method = _categorical(rng, r.elective_methods, el_pos.shape[0])

    o_rate = yearly_rate(r.other_admission_per_year, r.other_admission_need_slope, people.need, people.frailty)
    o_pos, o_day = _draw(rng, o_rate, start, end)
    o_los = np.floor(rng.lognormal(1.0, 1.0, size=o_pos.shape[0])).astype(np.int64)
    o_method = _categorical(rng, r.other_methods, o_pos.shape[0])

    pos = np.concatenate([e_pos, el_pos, o_pos])
    day = np.concatenate([e_day, el_day, o_day])
    discharge = day + np.concatenate([e_los, el_los, o_los])
    # Still in hospital at the extract: null discharge only for admissions in its last week; an
    # earlier admission whose stay would run past the extract is cut to end on it (rare: only
    # people enrolled in the last days of March 2024 have windows reaching the extract date).
    open_spell = (discharge > study.EXTRACT_DATE) & (day > study.EXTRACT_DATE - 7)
    discharge = np.minimum(discharge, study.EXTRACT_DATE)
    return _frame(
        people,
        pos,
        day,
        admission_date=_dates(day),
        discharge_date=_dates(discharge).set(pl.Series(open_spell), None),
        admission_method=pl.concat([e_method, el_method, o_method]),
    )


def hospital_ae(rng: np.random.Generator, people: ChunkPeople, r: EventRates, apc: pl.DataFrame) -> pl.DataFrame:
    """A&E attendances: one for each emergency admission via A&E (method 21), plus those not admitted."""
    via_ae = apc.filter(pl.col("admission_method") == "21")
    # A chunk is a contiguous run of person_index, so position = person_index - the chunk's first.
    first = int(people.person_index[0]) if people.person_index.size else 0
    adm_pos = via_ae.get_column("_pid").to_numpy() - first
    adm_day = via_ae.get_column("_day").to_numpy().astype(np.int64)
    rate = yearly_rate(r.ae_not_admitted_per_year, r.ae_need_slope, people.need, people.frailty)
    ind_pos, ind_day = _draw(rng, rate, people.start, people.end)
    dept = pl.concat(
        [pl.Series(["01"] * adm_pos.shape[0], dtype=pl.String), _categorical(rng, r.ae_department_types, ind_pos.shape[0])]
    )
    pos = np.concatenate([adm_pos, ind_pos])
    day = np.concatenate([adm_day, ind_day])
    return _frame(people, pos, day, arrival_date=_dates(day), department_type=dept)


def hospital_op(rng: np.random.Generator, people: ChunkPeople, r: EventRates) -> pl.DataFrame:
    rate = yearly_rate(r.outpatient_per_year, r.outpatient_need_slope, people.need, people.frailty)
    pos, day = _draw(rng, rate, people.start, people.end)
    n = pos.shape[0]
    first = rng.random(n) < r.outpatient_first_share
    return _frame(
        people,
        pos,
        day,
        appointment_date=_dates(day),
        attendance_type=pl.Series(np.where(first, "first", "follow_up"), dtype=pl.String),
        attended=rng.random(n) < r.outpatient_attended,
    )


def gp_events(rng: np.random.Generator, people: ChunkPeople, r: EventRates) -> pl.DataFrame:
    rate = yearly_rate(r.gp_per_year, r.gp_need_slope, people.need, people.frailty)
    pos, day = _draw(rng, rate, people.start, people.end)
    n = pos.shape[0]
    return _frame(
        people,
        pos,
        day,
        event_date=_dates(day),
        consultation_type=_categorical(rng, r.gp_consultation_types, n),
        staff_role=_categorical(rng, r.gp_staff_roles, n),
    )


def social_care(rng: np.random.Generator, people: ChunkPeople, r: EventRates) -> pl.DataFrame:
    """Care episodes, mostly for people with high need (steep slope); open-ended ones have no end date."""
    rate = yearly_rate(r.social_care_per_year, r.social_care_need_slope, people.need, people.frailty)
    pos, day = _draw(rng, rate, people.start, people.end)
    n = pos.shape[0]
    kinds = list(r.social_care_types)
    p = np.array([r.social_care_types[k] for k in kinds])
    kind = rng.choice(len(kinds), size=n, p=p / p.sum())
    mean_days = np.array([r.social_care_mean_days[k] for k in kinds])[kind]
    # Reablement is a six-week service (a little spread); other episodes have a long-tailed length.
    is_reablement = np.array(kinds)[kind] == "reablement"
    length = np.where(
        is_reablement,
        np.clip(np.round(rng.normal(42, 5, size=n)), 14, 84),
        np.ceil(rng.exponential(1.0, size=n) * mean_days),
    ).astype(np.int64)
    end = day + length
    ongoing = end > study.EXTRACT_DATE
    home_care_hours = np.round(rng.uniform(2, 30, size=n) * 2) / 2  # to the half hour
    reablement_hours = np.round(rng.uniform(5, 15, size=n) * 2) / 2
    kind_name = np.array(kinds)[kind]
    hours = np.where(kind_name == "home_care", home_care_hours, np.where(is_reablement, reablement_hours, np.nan))
    return _frame(
        people,
        pos,
        day,
        service_type=pl.Series(kind_name, dtype=pl.String),
        start_date=_dates(day),
        end_date=_dates(end).set(pl.Series(ongoing), None),
        hours_per_week=pl.Series(hours).fill_nan(None),
    )
