"""The model of need and service use: one need score per person drives every rate.

need (log scale) = 0.035 (age - 72) + 0.22 (n_ltc - 3.5) + 0.06 (5.5 - IMD decile)

so a person of 72 with 3-4 conditions in a middle decile has need 0, "average need". The rate of a
service is `base * exp(slope * need) * frailty`, per year, where `frailty` is a person-level Gamma
(mean 1) multiplier shared by all services: some people simply use more care than their need score
says, which gives the over-dispersion real service-use counts have.

Base rates were chosen from English figures for people 55+ with long-term conditions, then rounded
(they are orders of magnitude, enough for realistic shapes):
- emergency admissions ~0.3/yr at average need, rising steeply (slope 1.0: ~2.7x per unit of need);
  emergency length of stay log-normal, mean ~6 days (HES median 1-3 days is for all ages; older
  multimorbid patients stay longer);
- elective ~0.2/yr, mostly day cases (0-2 days); other admissions (transfers, 81-83, 31) rare;
- A&E ~0.5/yr: attendances that end in an emergency admission via A&E (method 21, same day) plus
  attendances that do not;
- outpatient ~3/yr (10% not attended), GP consultations ~8/yr (CPRD: 7-10 for people 65+ with
  multimorbidity), social care episodes only in any number at high need.
With the four-year window that is about 50 rows per person, GP dominating.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class NeedModel:
    """Coefficients of the log-scale need score and the frailty spread."""

    age_per_year: float = 0.035
    age_centre: float = 72.0
    ltc_per_condition: float = 0.22
    ltc_centre: float = 3.5
    imd_per_decile: float = 0.06  # need rises with deprivation (decile 1 is most deprived)
    imd_centre: float = 5.5
    frailty_shape: float = 2.0  # Gamma(shape, 1/shape): mean 1, variance 1/shape

    def score(self, age: np.ndarray, n_ltc: np.ndarray, imd: np.ndarray) -> np.ndarray:
        return (
            self.age_per_year * (age - self.age_centre)
            + self.ltc_per_condition * (n_ltc - self.ltc_centre)
            + self.imd_per_decile * (self.imd_centre - imd)
        )


@dataclass(frozen=True)
class EventRates:
    """Yearly rates at average need (need 0, frailty 1) and how steeply each rises with need."""

    emergency_per_year: float = 0.30
    emergency_need_slope: float = 1.0
    elective_per_year: float = 0.20
    elective_need_slope: float = 0.3
    other_admission_per_year: float = 0.03
    other_admission_need_slope: float = 0.3
    # Emergency length of stay: floor of a log-normal; mean exp(mu + sigma^2 / 2) - 0.5 ~ 6 days.
    emergency_los_log_mean: float = 1.35
    emergency_los_log_sd: float = 1.0
    elective_los_probs: tuple[float, float, float] = (0.60, 0.25, 0.15)  # 0, 1, 2 days
    ae_not_admitted_per_year: float = 0.30  # plus one attendance per emergency admission via A&E
    ae_need_slope: float = 0.6
    outpatient_per_year: float = 3.0
    outpatient_need_slope: float = 0.4
    outpatient_first_share: float = 0.30
    outpatient_attended: float = 0.90
    gp_per_year: float = 8.0
    gp_need_slope: float = 0.35
    social_care_per_year: float = 0.08
    social_care_need_slope: float = 1.4
    # Code -> share, for the admission method within each kind of admission.
    emergency_methods: dict[str, float] = field(
        default_factory=lambda: {
            "21": 0.70, "22": 0.08, "23": 0.02, "24": 0.04, "25": 0.01,
            "2A": 0.06, "2B": 0.03, "2C": 0.005, "2D": 0.025, "28": 0.03,
        }
    )  # fmt: skip
    elective_methods: dict[str, float] = field(default_factory=lambda: {"11": 0.60, "12": 0.25, "13": 0.15})
    other_methods: dict[str, float] = field(default_factory=lambda: {"81": 0.85, "82": 0.05, "83": 0.05, "31": 0.05})
    ae_department_types: dict[str, float] = field(default_factory=lambda: {"01": 0.80, "02": 0.03, "03": 0.12, "04": 0.05})
    gp_consultation_types: dict[str, float] = field(
        default_factory=lambda: {"surgery": 0.55, "telephone": 0.33, "home_visit": 0.05, "video": 0.07}
    )
    gp_staff_roles: dict[str, float] = field(default_factory=lambda: {"gp": 0.60, "nurse": 0.30, "other": 0.10})
    social_care_types: dict[str, float] = field(
        default_factory=lambda: {"home_care": 0.55, "reablement": 0.25, "residential": 0.12, "nursing": 0.08}
    )
    # Mean episode length in days (home care and residential stays are long, reablement is 6 weeks).
    social_care_mean_days: dict[str, float] = field(
        default_factory=lambda: {"home_care": 240.0, "reablement": 42.0, "residential": 420.0, "nursing": 300.0}
    )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


NEED = NeedModel()
EVENT_RATES = EventRates()


def yearly_rate(base: float, slope: float, need: np.ndarray, frailty: np.ndarray) -> np.ndarray:
    return base * np.exp(slope * need) * frailty
