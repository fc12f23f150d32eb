"""Synthetic geography: postcodes grouped into LSOAs, each LSOA with an IMD decile.

The postcode areas are invented on purpose: UK postcode areas never start with Q, so "QA" (the
study's first site), "QB" (its second), ... give codes in valid UK format ("QA12 3BD") that can never
be a real address.
Districts (QA1, QA2, ...) hold sectors (QA1 3), sectors hold LSOAs, LSOAs hold about 50 postcode
units; the number of each grows with the population so there are roughly 8 people per postcode,
whatever `persons` is.

Deprivation is spatially clustered, as it is in reality: each district has its own mean and LSOAs
scatter around it. The first site is the most deprived and the last the least, so IMD differs
between sites and the matching's exact match on site matters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

# Letters allowed in the inward code's last two characters (Royal Mail never uses C I K M O V there).
_INWARD_LETTERS = np.array(list("ABDEFGHJLNPQRSTUWXYZ"))
# Mean deprivation score of the districts of the first and the last site (negative is more
# deprived; sites between are spaced evenly), and the spreads.
_FIRST_SITE_DEPRIVATION, _LAST_SITE_DEPRIVATION = -0.35, 0.30
_DISTRICT_SD = 0.6
_LSOA_SD = 0.55
PERSONS_PER_LSOA = 400
POSTCODES_PER_LSOA = 50
LSOAS_PER_SECTOR = 4
# A sector's 400 possible units (20 x 20 inward letters) hold at most this many LSOAs of 50 units.
MAX_LSOAS_PER_SECTOR = len(_INWARD_LETTERS) ** 2 // POSTCODES_PER_LSOA


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    """Standard normal CDF (a few thousand LSOAs, so the scalar math.erf is fast enough)."""
    return np.array([0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x])


@dataclass(frozen=True)
class Geography:
    """The postcode lookup (one row per postcode unit) and, per site, the row numbers of its postcodes."""

    lookup: pl.DataFrame  # postcode, lsoa_code, imd_decile, site, lsoa_index
    site_rows: dict[str, np.ndarray]

    @property
    def postcodes(self) -> pl.Series:
        return self.lookup.get_column("postcode")

    def imd(self) -> np.ndarray:
        return self.lookup.get_column("imd_decile").to_numpy()


def area_of_sites(sites: tuple[str, ...]) -> dict[str, str]:
    """Each site's invented postcode area: QA, QB, ... in the study's order."""
    if len(sites) > 26:
        raise ValueError("the synthetic geography has postcode areas for at most 26 sites")
    return {s: "Q" + chr(ord("A") + i) for i, s in enumerate(sites)}


def _site_deprivation(sites: tuple[str, ...]) -> dict[str, float]:
    scores = np.linspace(_FIRST_SITE_DEPRIVATION, _LAST_SITE_DEPRIVATION, len(sites)) if len(sites) > 1 else np.zeros(1)
    return {s: float(v) for s, v in zip(sites, scores, strict=True)}


def _site_units(
    rng: np.random.Generator, site: str, persons_in_site: int, lsoa_offset: int, area: str, deprivation: float
) -> pl.DataFrame:
    """All postcode units of one site with their LSOA number (counting from `lsoa_offset`) and IMD score."""
    n_lsoa = max(8, math.ceil(persons_in_site / PERSONS_PER_LSOA))
    # A site of more than about 1.6 million people (an integrated care system of 3 million in two
    # sites) fills its 99 districts of 10 sectors; its sectors then hold twice the LSOAs, which the
    # sector's 400 possible units still fit. Smaller sites keep the layout, so their data is unchanged.
    lsoas_per_sector = LSOAS_PER_SECTOR
    if n_lsoa > 99 * 10 * LSOAS_PER_SECTOR:
        lsoas_per_sector = MAX_LSOAS_PER_SECTOR
    n_sectors = math.ceil(n_lsoa / lsoas_per_sector)
    sectors_per_district = 5 if n_sectors <= 5 * 99 else 10
    n_districts = math.ceil(n_sectors / sectors_per_district)
    if n_districts > 99:
        most = 99 * 10 * MAX_LSOAS_PER_SECTOR * PERSONS_PER_LSOA
        raise ValueError(f"{persons_in_site} people in {site} exceed the synthetic postcode space ({most:,} per site)")

    district_score = rng.normal(deprivation, _DISTRICT_SD, size=n_districts)
    sector_district = np.arange(n_sectors) // sectors_per_district
    # Sector digits within a district: 0-9 in a random order, so codes do not all end in sector 1.
    sector_digit = np.concatenate([rng.permutation(10)[:sectors_per_district] for _ in range(n_districts)])[:n_sectors]
    lsoa_sector = np.arange(n_lsoa) // lsoas_per_sector
    lsoa_score = district_score[sector_district[lsoa_sector]] + rng.normal(0.0, _LSOA_SD, size=n_lsoa)

    # Each sector has 400 possible units (20 x 20 letters); its LSOAs take 50 each, without overlap.
    units_per_sector = lsoas_per_sector * POSTCODES_PER_LSOA
    combos = np.array([a + b for a in _INWARD_LETTERS for b in _INWARD_LETTERS])
    rows = []
    for s in range(n_sectors):
        lsoas = np.flatnonzero(lsoa_sector == s)
        picked = np.sort(rng.choice(len(combos), size=units_per_sector, replace=False))[: len(lsoas) * POSTCODES_PER_LSOA]
        outward = f"{area}{sector_district[s] + 1}"
        rows.append(
            pl.DataFrame(
                {
                    "postcode": [f"{outward} {sector_digit[s]}{c}" for c in combos[picked]],
                    "lsoa_index": np.repeat(lsoas + lsoa_offset, POSTCODES_PER_LSOA),
                    "score": np.repeat(lsoa_score[lsoas], POSTCODES_PER_LSOA),
                }
            )
        )
    return pl.concat(rows).with_columns(site=pl.lit(site))


def build_geography(rng: np.random.Generator, persons_per_site: dict[str, int]) -> Geography:
    """Postcode units, LSOAs and IMD deciles for every site (in the order given), sized for its
    number of people."""
    sites = tuple(persons_per_site)
    areas, deprivation = area_of_sites(sites), _site_deprivation(sites)
    parts, offset = [], 0
    for site in sites:
        df = _site_units(rng, site, persons_per_site.get(site, 0), offset, areas[site], deprivation[site])
        offset = int(df.get_column("lsoa_index").max()) + 1
        parts.append(df)
    units = pl.concat(parts)
    n_lsoa = offset
    # LSOA codes: distinct random numbers, sorted so E01 codes rise with the LSOA number.
    lsoa_numbers = np.sort(rng.choice(np.arange(1, 1_000_000), size=n_lsoa, replace=False))
    # Deciles against a national reference: the score is roughly standard normal across England, so
    # its normal CDF is the national rank. Decile 1 is the most deprived tenth.
    total_sd = math.sqrt(_DISTRICT_SD**2 + _LSOA_SD**2)
    lsoa_score = units.group_by("lsoa_index").agg(pl.col("score").first()).sort("lsoa_index").get_column("score").to_numpy()
    decile = np.clip(np.floor(_normal_cdf(lsoa_score / total_sd) * 10).astype(np.int64) + 1, 1, 10)
    lsoa_codes = pl.Series([f"E01{k:06d}" for k in lsoa_numbers], dtype=pl.String)
    idx = units.get_column("lsoa_index").to_numpy()
    lookup = (
        units.with_columns(lsoa_code=lsoa_codes.gather(idx), imd_decile=pl.Series(decile[idx], dtype=pl.Int8))
        .select("postcode", "lsoa_code", "imd_decile", "site", "lsoa_index")
        .sort("postcode")
    )
    site_col = lookup.get_column("site").to_numpy()
    return Geography(lookup=lookup, site_rows={s: np.flatnonzero(site_col == s) for s in sites})
