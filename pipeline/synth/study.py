"""The design of the (synthetic) evaluation: sites, MDTs, operating models, calendar and arm shares.

Sites, teams, operating models, the minimum age, the baseline period and the calendar come from the
study being generated for (a pipeline.study.Study): `configured(study)` sets them for the duration of
one `generate` call (Pioneer's, studies/pioneer.yaml, until then). The shares and rates below are the
synthetic world's own. These are facts about the study, not about data quality, so they are the same
in every profile.
Dates are handled as whole days since 1970-01-01 (numpy int32) inside the generator, because that is
what vectorised arithmetic wants; `day()` converts a calendar date once, here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

_EPOCH = dt.date(1970, 1, 1)


def day(d: dt.date | str) -> int:
    """Days since 1970-01-01, the integer form of a date used throughout the generator."""
    if isinstance(d, str):
        d = dt.date.fromisoformat(d)
    return (d - _EPOCH).days


# --- calendar ---------------------------------------------------------------------------------------
# Index dates (MDT enrolment, comparator baseline survey) fall in one year, INDEX_START to INDEX_END,
# and nothing happens after EXTRACT_DATE: both from the study (`design`).
# Service use is generated from 2 years before to 2 years after each person's index date.
LOOKBACK_DAYS = 730
FOLLOWUP_DAYS = 730
# BASELINE_DAYS, the pipeline's baseline period (the study's pre period), also comes from the study.

# --- sites, MDTs and operating models: from the study (see `design` below) ---------------------

# --- arms and consent -------------------------------------------------------------------------------
ARMS: tuple[str, ...] = ("mdt", "comparator", "none")  # "none": not in the study, only in service use
ARM_SHARE: dict[str, float] = {"mdt": 0.25, "comparator": 0.45, "none": 0.30}


def arm_share(register_share: float | None = None) -> dict[str, float]:
    """The arm shares with `register_share` of people in the consent register (MDT and comparator
    arms together, in ARM_SHARE's proportions); ARM_SHARE itself when None.

    A world of millions needs a smaller register than ARM_SHARE's 70%: everyone in the register must
    have a distinct NHS number from the 999 test range, which holds 909,091 (and in a real integrated
    care system the surveyed register is a small part of the population)."""
    if register_share is None:
        return dict(ARM_SHARE)
    in_register = ARM_SHARE["mdt"] + ARM_SHARE["comparator"]
    scale = register_share / in_register
    return {"mdt": ARM_SHARE["mdt"] * scale, "comparator": ARM_SHARE["comparator"] * scale, "none": 1.0 - register_share}
CONSENT_RATE = 0.85
WITHDRAWAL_RATE = 0.04  # of those who consented
# A withdrawal is dated the day it was received. Most fall between consent and the default extract
# date; a share fall in the three months after it, received between the extract and the run, which
# the consent gate must honour all the same. That share is larger than a spread over the years would
# give, so that even a run of a few hundred people has some. WITHDRAWAL_LAST is a fixed date, never
# today's, so one seed always gives the same register; it lies before the day this data is generated
# (December 2026 on), so no ordinary withdrawal is dated in the future (only the hard profile's
# register errors are: pipeline.synth.faults.register_errors).
# WITHDRAWAL_LAST comes from the study (`design`): WITHDRAWAL_AFTER_EXTRACT_DAYS after its extract.
WITHDRAWAL_AFTER_EXTRACT_SHARE = 0.25
# Consent is recorded on or up to two weeks before the baseline questionnaire.
CONSENT_LEAD_DAYS = 14

# --- survey -------------------------------------------------------------------------------------------
SURVEY_BEFORE_ENROLMENT_DAYS = 30  # MDT arm: baseline questionnaire within 30 days before enrolment
FOLLOWUP_AFTER_DAYS = 365  # follow-up questionnaire 12 months after baseline ...
FOLLOWUP_JITTER_DAYS = 30  # ... give or take 30 days
FOLLOWUP_RESPONSE = 0.80

# Ages from the study's minimum age (AGE_MIN, from `design`) to AGE_MAX.
AGE_MAX = 100


# --- the study being generated for ------------------------------------------------------------------
# A year of index dates ending two years before the extract date (so follow-up is complete), within
# the study window; withdrawals received up to three months after the extract.
INDEX_YEARS_BEFORE_EXTRACT = 2
WITHDRAWAL_AFTER_EXTRACT_DAYS = 91
# Site shares fall from the first site to the last (Pioneer: 55% and 45%).
FIRST_SITE_SHARE, LAST_SITE_SHARE = 0.55, 0.45


def _years_before(d: dt.date, years: int) -> dt.date:
    return d.replace(year=d.year - years) if not (d.month == 2 and d.day == 29) else d.replace(year=d.year - years, day=28)


def design(study: Any) -> dict[str, Any]:
    """The module values that come from a pipeline.study.Study."""
    n = len(study.sites)
    shares = np.linspace(FIRST_SITE_SHARE, LAST_SITE_SHARE, n) if n > 1 else np.ones(1)
    # Questionnaires must fall in the study window too: the MDT arm's baseline up to
    # SURVEY_BEFORE_ENROLMENT_DAYS before the index date, the follow-up about a year after it.
    last_followup = dt.timedelta(days=FOLLOWUP_AFTER_DAYS + FOLLOWUP_JITTER_DAYS)
    index_end = min(_years_before(study.extract_date, INDEX_YEARS_BEFORE_EXTRACT), study.study_end - last_followup)
    earliest = study.study_start + dt.timedelta(days=SURVEY_BEFORE_ENROLMENT_DAYS)
    index_start = max(_years_before(index_end, 1) + dt.timedelta(days=1), earliest)
    if index_start > index_end:
        raise ValueError(
            f"study {study.name!r}: its window ({study.study_start} to {study.study_end}) and extract date leave no "
            "year of index dates with follow-up questionnaires inside the window; the synthetic generator needs a longer window"
        )
    return {
        "SITES": tuple(study.sites),
        "SITE_SHARE": tuple(float(x) for x in shares / shares.sum()),
        "OPERATING_MODELS": tuple(study.operating_models),
        "MDTS": tuple((t.id, t.site, t.operating_model) for t in study.teams),
        "INDEX_START": day(index_start),
        "INDEX_END": day(index_end),
        "EXTRACT_DATE": day(study.extract_date),
        "WITHDRAWAL_LAST": day(study.extract_date) + WITHDRAWAL_AFTER_EXTRACT_DAYS,
        "BASELINE_DAYS": study.pre_days,
        "AGE_MIN": study.min_age,
    }


@contextlib.contextmanager
def configured(study: Any) -> Iterator[None]:
    """Generate for `study` inside the block: the module's study values are its, then restored.

    One generate call at a time per process (the generator is single-threaded)."""
    module = sys.modules[__name__]
    values = design(study)
    saved = {k: getattr(module, k) for k in values}
    for k, v in values.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(module, k, v)


def _pioneer() -> None:
    """Start with the default study's values (studies/pioneer.yaml)."""
    from pipeline.study import load_study

    for k, v in design(load_study()).items():
        setattr(sys.modules[__name__], k, v)


_pioneer()
