"""The design of the (synthetic) evaluation: sites, MDTs, operating models, calendar and arm shares.

These are facts about the study, not about data quality, so they are the same in every profile.
Dates are handled as whole days since 1970-01-01 (numpy int32) inside the generator, because that is
what vectorised arithmetic wants; `day()` converts a calendar date once, here.
"""

from __future__ import annotations

import datetime as dt

_EPOCH = dt.date(1970, 1, 1)


def day(d: dt.date | str) -> int:
    """Days since 1970-01-01, the integer form of a date used throughout the generator."""
    if isinstance(d, str):
        d = dt.date.fromisoformat(d)
    return (d - _EPOCH).days


# --- calendar ---------------------------------------------------------------------------------------
# Index dates (MDT enrolment, comparator baseline survey) fall in one financial year.
INDEX_START = day("2023-04-01")
INDEX_END = day("2024-03-31")
# The default extract date of a run (pipeline.settings.RunConfig.extract_date): nothing happens after it.
EXTRACT_DATE = day("2026-03-31")
# Service use is generated from 2 years before to 2 years after each person's index date.
LOOKBACK_DAYS = 730
FOLLOWUP_DAYS = 730
# The pipeline's baseline period (pipeline.cohort.service_use): the 365 days before the index date.
BASELINE_DAYS = 365

# --- sites, MDTs and operating models ------------------------------------------------------------
SITES: tuple[str, ...] = ("site_a", "site_b")
SITE_SHARE: tuple[float, ...] = (0.55, 0.45)
OPERATING_MODELS: tuple[str, ...] = ("hub_and_spoke", "practice_aligned", "virtual_ward", "integrated_neighbourhood")
# Fixed rather than drawn, so every seed has the same 11 teams and each model is used at least twice
# (needed for any comparison between operating models).
MDTS: tuple[tuple[str, str, str], ...] = (
    ("MDT01", "site_a", "hub_and_spoke"),
    ("MDT02", "site_a", "practice_aligned"),
    ("MDT03", "site_a", "virtual_ward"),
    ("MDT04", "site_a", "integrated_neighbourhood"),
    ("MDT05", "site_a", "hub_and_spoke"),
    ("MDT06", "site_a", "practice_aligned"),
    ("MDT07", "site_b", "virtual_ward"),
    ("MDT08", "site_b", "integrated_neighbourhood"),
    ("MDT09", "site_b", "hub_and_spoke"),
    ("MDT10", "site_b", "practice_aligned"),
    ("MDT11", "site_b", "virtual_ward"),
)

# --- arms and consent -------------------------------------------------------------------------------
ARMS: tuple[str, ...] = ("mdt", "comparator", "none")  # "none": not in the study, only in service use
ARM_SHARE: dict[str, float] = {"mdt": 0.25, "comparator": 0.45, "none": 0.30}
CONSENT_RATE = 0.85
WITHDRAWAL_RATE = 0.04  # of those who consented
# A withdrawal is dated the day it was received. Most fall between consent and the default extract
# date; a share fall in the three months after it, received between the extract and the run, which
# the consent gate must honour all the same. That share is larger than a spread over the years would
# give, so that even a run of a few hundred people has some. WITHDRAWAL_LAST is a fixed date, never
# today's, so one seed always gives the same register; it lies before the day this data is generated
# (December 2026 on), so no ordinary withdrawal is dated in the future (only the hard profile's
# register errors are: pipeline.synth.faults.register_errors).
WITHDRAWAL_LAST = day("2026-06-30")
WITHDRAWAL_AFTER_EXTRACT_SHARE = 0.25
# Consent is recorded on or up to two weeks before the baseline questionnaire.
CONSENT_LEAD_DAYS = 14

# --- survey -------------------------------------------------------------------------------------------
SURVEY_BEFORE_ENROLMENT_DAYS = 30  # MDT arm: baseline questionnaire within 30 days before enrolment
FOLLOWUP_AFTER_DAYS = 365  # follow-up questionnaire 12 months after baseline ...
FOLLOWUP_JITTER_DAYS = 30  # ... give or take 30 days
FOLLOWUP_RESPONSE = 0.80

AGE_MIN, AGE_MAX = 55, 100
