"""The synthetic population: who the people are, where they live, how ill they are, and whether and
how they are in the study.

Order of construction (each step only uses what came before, which is what makes the selection
model honest):
1. site, home postcode (hence LSOA and IMD decile), sex, age at index, number of long-term
   conditions (more with age and deprivation), need score and frailty (`rates.NeedModel`);
2. emergency admissions in the 12 months before index, drawn now because selection onto an MDT
   caseload depends on them (`events` later places exactly that many admissions in that year);
3. arm: MDT caseload with a logistic selection on age, conditions, IMD and baseline admissions
   (intercept solved so ~25% are selected), comparator pool (~45%, a little more likely with more
   conditions), or not in the study (~30%);
4. MDT, index date, baseline survey date, consent and withdrawal, participant_id;
5. date of birth, NHS number, names and, for some people, a house move.

Because selection depends only on things the pipeline observes (age, IMD, conditions and baseline
emergency admissions), matching on them removes the confounding, and the economists' estimate can
be checked against `mdt_effect`.

One generator (`seed`, stream 0) draws everything here in a fixed order, and every draw is made for
every person whatever the profile's rates, so the same seed gives the same people in every profile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from pipeline.synth import study
from pipeline.synth.geography import Geography, build_geography
from pipeline.synth.identifiers import allocate_nhs_numbers, dates_of_birth, nhs_strings
from pipeline.synth.names import draw_names
from pipeline.synth.profiles import FaultRates
from pipeline.synth.rates import EVENT_RATES, NEED, yearly_rate

NO_DAY = np.iinfo(np.int32).max  # "never" for a move date, so `day >= move_day` is simply False

# Logistic selection onto an MDT caseload (per unit above the centre; the intercept is solved).
MDT_SELECTION = {"age_per_year": 0.03, "ltc_per_condition": 0.30, "imd_per_decile": 0.08, "per_baseline_admission": 0.45}
# Comparator pool among the rest: a little more likely with more conditions (recruited from GP registers).
COMPARATOR_LTC_SLOPE = 0.15


@dataclass(frozen=True)
class Population:
    """Every person (row = person_index) with true identifiers, study status and model inputs."""

    persons: pl.DataFrame
    geography: Geography
    nhs_shortfall: int  # people sharing an NHS number because the test range ran out (0 up to 909,091)

    def __len__(self) -> int:
        return self.persons.height


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def solve_intercept(linear: np.ndarray, target: float) -> float:
    """The intercept a with mean(sigmoid(a + linear)) = target, by bisection (deterministic)."""
    lo, hi = -30.0, 30.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if sigmoid(mid + linear).mean() < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def as_dates(values: np.ndarray, valid: np.ndarray | None = None) -> pl.Series:
    """Integer days since 1970 as a Polars Date series, null where `valid` is False."""
    s = pl.Series(values.astype(np.int32)).cast(pl.Date)
    return s if valid is None else s.set(pl.Series(~valid), None)


def _strings(values: np.ndarray) -> pl.Series:
    """A string series from a numpy array that may hold None (object arrays do not cast directly)."""
    return pl.Series(values.tolist(), dtype=pl.String)


def build_population(seed: int, persons: int, faults: FaultRates, shares: dict[str, float] | None = None) -> Population:
    """The synthetic world's people; `shares` are the arm shares (study.arm_share(), ARM_SHARE when None)."""
    shares = shares or study.ARM_SHARE
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    n = persons

    # 1. Site, home address at index, person characteristics, need.
    site_idx = rng.choice(len(study.SITES), size=n, p=np.array(study.SITE_SHARE))
    site = np.array(study.SITES)[site_idx]
    geo = build_geography(rng, {s: int((site == s).sum()) for s in study.SITES})
    home_row = np.empty(n, dtype=np.int64)
    other_row = np.empty(n, dtype=np.int64)  # where a mover lives at the other end of their move
    for s in study.SITES:
        in_site = site == s
        rows = geo.site_rows[s]
        k = int(in_site.sum())
        pos = rng.integers(0, rows.shape[0], size=k)
        home_row[in_site] = rows[pos]
        other_row[in_site] = rows[(pos + rng.integers(1, rows.shape[0], size=k)) % rows.shape[0]]  # never home
    imd = geo.imd()[home_row].astype(np.int64)
    female = rng.random(n) < 0.55
    # Ages from the study's minimum (Pioneer: 55) to 100, most in the first two decades (a Beta shape).
    age_span = study.AGE_MAX - study.AGE_MIN + 1
    age = np.minimum(study.AGE_MIN + np.floor(age_span * rng.beta(1.5, 3.0, size=n)), study.AGE_MAX).astype(np.int64)
    n_ltc = np.clip(rng.poisson(2.4 + 0.055 * (age - 55) + 0.09 * (5.5 - imd)), 0, 10)
    need = NEED.score(age, n_ltc, imd)
    frailty = rng.gamma(NEED.frailty_shape, 1.0 / NEED.frailty_shape, size=n)

    # 2. Emergency admissions in the baseline year (pre-index rate; no MDT effect before index).
    r = EVENT_RATES
    emergency_rate = yearly_rate(r.emergency_per_year, r.emergency_need_slope, need, frailty)
    baseline_emergency = rng.poisson(emergency_rate * study.BASELINE_DAYS / 365.25)

    # 3. Arm.
    sel = MDT_SELECTION
    linear = (
        sel["age_per_year"] * (age - 72)
        + sel["ltc_per_condition"] * (n_ltc - 3.5)
        + sel["imd_per_decile"] * (5.5 - imd)
        + sel["per_baseline_admission"] * np.minimum(baseline_emergency, 4)
    )
    p_mdt = sigmoid(solve_intercept(linear, shares["mdt"]) + linear)
    is_mdt = rng.random(n) < p_mdt
    cmp_linear = COMPARATOR_LTC_SLOPE * (n_ltc - 3.5)
    cmp_share = shares["comparator"] / (1 - shares["mdt"])
    is_cmp = ~is_mdt & (rng.random(n) < sigmoid(solve_intercept(cmp_linear, cmp_share) + cmp_linear))
    in_register = is_mdt | is_cmp

    # 4. MDT (caseload sizes differ: Dirichlet weights within a site), dates, consent.
    mdt_id = np.full(n, None, dtype=object)
    model = np.full(n, None, dtype=object)
    for s in study.SITES:
        teams = [m for m in study.MDTS if m[1] == s]
        weights = rng.dirichlet(np.full(len(teams), 8.0))
        mask = is_mdt & (site == s)
        pick = rng.choice(len(teams), size=int(mask.sum()), p=weights)
        mdt_id[mask] = np.array([t[0] for t in teams], dtype=object)[pick]
        model[mask] = np.array([t[2] for t in teams], dtype=object)[pick]
    index_day = rng.integers(study.INDEX_START, study.INDEX_END + 1, size=n)
    lead = rng.integers(0, study.SURVEY_BEFORE_ENROLMENT_DAYS + 1, size=n)
    survey_day = np.where(is_mdt, index_day - lead, index_day)  # comparators: the survey IS the index
    consented = in_register & (rng.random(n) < study.CONSENT_RATE)
    consent_day = survey_day - rng.integers(0, study.CONSENT_LEAD_DAYS + 1, size=n)
    withdrawn = consented & (rng.random(n) < study.WITHDRAWAL_RATE)
    # One draw per person places the withdrawal: below the share, in the months after the extract
    # date (received before the run); otherwise between the day after consent and the extract date.
    u = rng.random(n)
    late_share = study.WITHDRAWAL_AFTER_EXTRACT_SHARE
    late_day = study.EXTRACT_DATE + 1 + np.floor(u / late_share * (study.WITHDRAWAL_LAST - study.EXTRACT_DATE))
    early_day = consent_day + 1 + np.floor((u - late_share) / (1 - late_share) * (study.EXTRACT_DATE - consent_day))
    withdrawal_day = np.where(u < late_share, late_day, early_day).astype(np.int64)
    # participant_id in order of recruitment (consent date), ties broken at random.
    order = np.lexsort((rng.random(n), consent_day))
    order = order[in_register[order]]
    participant = np.full(n, None, dtype=object)
    participant[order] = np.array([f"P{i:07d}" for i in range(1, order.shape[0] + 1)], dtype=object)

    # 5. Identifiers.
    dob_day = dates_of_birth(rng, index_day, age)
    nhs, shortfall = allocate_nhs_numbers(rng, in_register)
    names = draw_names(rng, female)
    # House moves: drawn for everyone (so the draws do not depend on the rate), used for `moved`.
    moved = rng.random(n) < faults.house_move
    move_offset = rng.integers(-study.LOOKBACK_DAYS + 1, study.FOLLOWUP_DAYS, size=n)
    move_day = np.where(moved, index_day + move_offset, NO_DAY)
    before_row = np.where(moved & (move_offset <= 0), other_row, home_row)
    after_row = np.where(moved & (move_offset > 0), other_row, home_row)
    register_nhs_missing = in_register & (rng.random(n) < faults.nhs_missing_register)

    postcodes = geo.postcodes
    lookup = geo.lookup
    frame = pl.DataFrame(
        {
            "person_index": np.arange(n, dtype=np.int64),
            "participant_id": _strings(participant),
            "arm": _strings(np.where(is_mdt, "mdt", np.where(is_cmp, "comparator", None))),
            "site": _strings(site),
            "mdt_id": _strings(mdt_id),
            "operating_model": _strings(model),
            "in_register": in_register,
            "consent_status": _strings(np.where(consented, "consented", np.where(in_register, "declined", None))),
            "consent_date": as_dates(consent_day, in_register),
            "withdrawal_date": as_dates(withdrawal_day, withdrawn),
            "index_date": as_dates(index_day),
            "enrolment_date": as_dates(index_day, is_mdt),
            "baseline_survey_date": as_dates(survey_day, in_register),
            "age_at_index": pl.Series(age, dtype=pl.Int16),
            "sex": _strings(np.where(female, "F", "M")),
            "date_of_birth": as_dates(dob_day),
            "n_ltc": pl.Series(n_ltc, dtype=pl.Int16),
            "imd_decile": pl.Series(imd, dtype=pl.Int8),
            "lsoa_code": lookup.get_column("lsoa_code").gather(home_row),
            "postcode": postcodes.gather(home_row),  # the address at index (the register's)
            "need": need,
            "frailty": frailty,
            "p_mdt": p_mdt,
            "baseline_emergency_12m": pl.Series(baseline_emergency, dtype=pl.Int32),
            "nhs_number": nhs_strings(nhs),
            "register_nhs_missing": register_nhs_missing,
            "given_name": names.given,
            "family_name": names.family,
            "nickname": names.nickname,
            "family_first": names.family_first,
            "family_second": names.family_second,
            "name_tradition": names.tradition,
            "moved": moved,
            "move_date": as_dates(np.where(moved, move_day, 0), moved),
            "postcode_before_move": postcodes.gather(before_row),
            "postcode_after_move": postcodes.gather(after_row),
            # Internal (integer) forms used by the event generator; dropped from the truth file.
            "_index_day": index_day.astype(np.int32),
            "_dob_day": dob_day,
            "_move_day": move_day.astype(np.int32),
            "_before_row": before_row.astype(np.int32),
            "_after_row": after_row.astype(np.int32),
            "_nhs": nhs,
        }
    )
    return Population(persons=frame, geography=geo, nhs_shortfall=shortfall)


def truth_persons(pop: Population) -> pl.DataFrame:
    """The persons table of the ground truth (internal integer columns dropped)."""
    return pop.persons.select(pl.exclude("^_.*$"))
