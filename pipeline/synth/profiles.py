"""Data-quality profiles: how often each identifier fault is injected.

`clean` has no fault at all (every record carries its person's exact identifiers, no duplicates), so a
linkage test can demand perfect precision and recall. `realistic` follows what English linkage
studies report for hospital, GP and council extracts; `hard` roughly quadruples it to stress the
probabilistic stage. All rates are per record unless the field name says otherwise.
`provider_blackout` is `realistic` plus one hospital trust whose records all arrive marked anonymous
for a year (pipeline.synth.providers.ProviderBlackout): the fault the provider-by-month linkage rate
(pipeline.link.quality) must flag.

Where the figures come from (orders of magnitude, not precise estimates):
- Missing NHS numbers: HES APC/A&E carry a valid NHS number on ~97-99% of records, GP systems
  ~99%+, while adult social care records often lack one (NHS Digital / Local Government Association
  reports put coverage around 80-95%), hence 2% / 1% / 8%.
- Invalid NHS numbers (keying errors caught by Modulus 11), name typos, nicknames, day-month swaps
  and duplicate deliveries are each in the 0.5-3% range in linkage-quality studies (e.g. Harron et al.,
  "Challenges in administrative data linkage for research", Big Data & Society 2017).
- Around 10% of older people change address over four years (ONS internal migration estimates).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from pipeline.synth.providers import ProviderBlackout

Profile = Literal["clean", "realistic", "hard", "provider_blackout"]


@dataclass(frozen=True)
class FaultRates:
    """Probabilities of each kind of identifier fault. Zero everywhere means perfectly clean data."""

    # NHS number absent from a service-use record, by kind of provider.
    nhs_missing_hospital: float = 0.0
    nhs_missing_gp: float = 0.0
    nhs_missing_social_care: float = 0.0
    # NHS number absent from the consent register itself (a participant recruited without one).
    nhs_missing_register: float = 0.0
    # NHS number present but failing Modulus 11: a wrong check digit or two adjacent digits transposed.
    nhs_invalid: float = 0.0
    # One character of the given or the family name substituted, dropped or transposed.
    name_typo: float = 0.0
    # The familiar form of the given name (William -> Bill), for people whose name has one.
    nickname: float = 0.0
    # Only one part of a double-barrelled surname (Smith-Jones -> Jones), for people who have one.
    surname_part: float = 0.0
    # Per person: share who move house in their four-year window; later records carry the new postcode.
    house_move: float = 0.0
    # Day and month of birth swapped (only possible when the day is 12 or less).
    dob_swap: float = 0.0
    # The same event delivered twice under a new record_id.
    duplicate: float = 0.0
    # Sex recorded as U (unknown).
    sex_unknown: float = 0.0
    # Postcode written without its space, and (independently) in lower case; harmless after
    # canonicalisation, so it tests that the pipeline canonicalises.
    postcode_no_space: float = 0.0
    postcode_lower: float = 0.0
    # A survey item left blank (each EQ-5D, VAS and ASCOT item independently; n_ltc never).
    survey_item_missing: float = 0.0
    # Per register row, for each of three register errors the consent gate must catch: a withdrawal
    # dated far in the future (a mistyped year), a withdrawal dated before its consent, and the same
    # person (NHS number) under a second participant ID who declined. At least one of each when above
    # zero (pipeline.synth.faults.register_errors).
    register_errors: float = 0.0
    # One provider's records arrive marked anonymous for some months (none when None).
    provider_blackout: ProviderBlackout | None = None

    def nhs_missing(self, source: str) -> float:
        """The missing-NHS-number rate of one service-use source."""
        if source == "gp_events":
            return self.nhs_missing_gp
        if source == "social_care":
            return self.nhs_missing_social_care
        return self.nhs_missing_hospital

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


PROFILES: dict[str, FaultRates] = {
    "clean": FaultRates(),
    "realistic": FaultRates(
        nhs_missing_hospital=0.02,
        nhs_missing_gp=0.01,
        nhs_missing_social_care=0.08,
        nhs_missing_register=0.0,
        nhs_invalid=0.005,
        name_typo=0.02,
        nickname=0.03,
        surname_part=0.25,
        house_move=0.10,
        dob_swap=0.005,
        duplicate=0.005,
        sex_unknown=0.005,
        postcode_no_space=0.03,
        postcode_lower=0.01,
        survey_item_missing=0.02,
    ),
    "hard": FaultRates(
        nhs_missing_hospital=0.05,
        nhs_missing_gp=0.03,
        nhs_missing_social_care=0.20,
        nhs_missing_register=0.01,
        nhs_invalid=0.02,
        name_typo=0.08,
        nickname=0.08,
        surname_part=0.50,
        house_move=0.20,
        dob_swap=0.02,
        duplicate=0.02,
        sex_unknown=0.015,
        postcode_no_space=0.08,
        postcode_lower=0.03,
        survey_item_missing=0.05,
        register_errors=0.005,
    ),
}


PROFILES["provider_blackout"] = replace(
    PROFILES["realistic"], provider_blackout=ProviderBlackout(provider="ZZ101", first_month="2024-04", months=12)
)


def fault_rates(profile: str) -> FaultRates:
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown profile {profile!r}; use one of {sorted(PROFILES)}") from None
