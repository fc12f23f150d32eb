"""Which organisation delivered each synthetic record: its `provider_code`, and the provider blackout.

Real extracts name the provider of every record (HES `PROCODE`, the ECDS provider, the GP practice
code, the local authority), and a governance officer needs it to see a provider whose records stop
linking. The synthetic sites have a few providers each, with codes in the shape of ODS codes but
beginning `ZZ`, which marks them here as synthetic; they live only in this package (no contract or
pipeline code knows them).

| kind of record | providers per site | code | which one a record names |
| --- | --- | --- | --- |
| hospital (APC, A&E, outpatients) | 2 trusts at the first site, 1 at each other | ZZ1nn (trust) | the person's own trust, else (1 in 10) another trust of any site |
| GP consultation | 3 practices a site | ZZ2nnn (practice) | the practice the person is registered with |
| social care | 1 council a site | ZZ9nn (local authority) | the council of the person's site |

A hospital trust delivers all three hospital extracts, so one trust's code appears in each.

`ProviderBlackout` is the fault behind issue 17's "provider going dark": for some consecutive months
every record of one provider arrives marked anonymous (no NHS number, no names, no date of birth, sex
unknown), as happened to a hospital whose records were wrongly flagged for a year. The postcode
survives, so the records are not set aside as unidentifiable: they pass pseudonymisation and then
silently fail to link, which only a linkage rate by provider and month shows
(pipeline.link.quality, measure `provider_month_flagged`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from pipeline.synth import study



def hospitals(site_index: int) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The trusts of the study's `site_index`-th site and the share of its people whose own trust each
    is: two at the first site, one at every other, numbered across the study (ZZ101, ZZ102, ZZ103, ...)."""
    if site_index == 0:
        return ("ZZ101", "ZZ102"), (0.6, 0.4)
    return (f"ZZ1{site_index + 2:02d}",), (1.0,)


def gp_practices(site_index: int) -> tuple[str, ...]:
    """Three practices a site, numbered across the study (ZZ2001-ZZ2003 at the first site, ...)."""
    return tuple(f"ZZ2{3 * site_index + k:03d}" for k in (1, 2, 3))


def council(site_index: int) -> str:
    """One council a site (ZZ901, ZZ902, ...)."""
    return f"ZZ9{site_index + 1:02d}"


def all_hospitals() -> tuple[str, ...]:
    """Every trust of the study being generated (pipeline.synth.study.SITES, in order)."""
    return tuple(c for i in range(len(study.SITES)) for c in hospitals(i)[0])


# A hospital record names another trust than the person's own this often (care away from home).
OTHER_HOSPITAL = 0.10
HOSPITAL_SOURCES: tuple[str, ...] = ("hospital_apc", "hospital_ae", "hospital_op")


@dataclass(frozen=True)
class ProviderBlackout:
    """Every record of `provider` dated in the `months` calendar months from `first_month` (YYYY-MM)
    arrives marked anonymous."""

    provider: str
    first_month: str
    months: int

    def month_labels(self) -> list[str]:
        """The blacked-out months as YYYY-MM, in order."""
        year, month = (int(x) for x in self.first_month.split("-"))
        out = []
        for i in range(self.months):
            y, m = divmod(month - 1 + i, 12)
            out.append(f"{year + y:04d}-{m + 1:02d}")
        return out


@dataclass(frozen=True)
class PersonProviders:
    """Each person's own providers (row = person_index): hospital trust, GP practice and council."""

    hospital: np.ndarray
    practice: np.ndarray
    council: np.ndarray

    @classmethod
    def of(cls, seed: int, sites: pl.Series) -> PersonProviders:
        """Drawn from their own random stream (5), so adding providers changed no other draw."""
        rng = np.random.default_rng(np.random.SeedSequence([seed, 5]))
        site = sites.to_numpy()
        n = site.shape[0]
        hospital = np.empty(n, dtype=object)
        practice = np.empty(n, dtype=object)
        councils = np.empty(n, dtype=object)
        for i, s in enumerate(study.SITES):
            here = site == s
            k = int(here.sum())
            trusts, share = hospitals(i)
            hospital[here] = rng.choice(np.array(trusts, dtype=object), size=k, p=np.array(share))
            practice[here] = rng.choice(np.array(gp_practices(i), dtype=object), size=k)
            councils[here] = council(i)
        return cls(hospital=hospital, practice=practice, council=councils)


def record_providers(rng: np.random.Generator, providers: PersonProviders, source: str, pid: np.ndarray) -> pl.Series:
    """The provider code of each record of `source` belonging to people `pid`."""
    if source in HOSPITAL_SOURCES:
        codes = providers.hospital[pid].copy()
        away = rng.random(pid.shape[0]) < OTHER_HOSPITAL
        codes[away] = rng.choice(np.array(all_hospitals(), dtype=object), size=int(away.sum()))
    elif source == "gp_events":
        codes = providers.practice[pid]
    elif source == "social_care":
        codes = providers.council[pid]
    else:
        raise ValueError(f"no providers for source {source!r}")
    return pl.Series("provider_code", codes.tolist(), dtype=pl.String)


def blacked_out(blackout: ProviderBlackout | None, provider: pl.Series, event_day: np.ndarray) -> np.ndarray:
    """Which records fall in the blackout: its provider, dated in one of its months."""
    if blackout is None:
        return np.zeros(provider.len(), dtype=bool)
    months = pl.Series(event_day.astype(np.int32)).cast(pl.Date).dt.strftime("%Y-%m")
    return ((provider == blackout.provider) & months.is_in(blackout.month_labels())).to_numpy()
