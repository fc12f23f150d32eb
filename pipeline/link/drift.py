"""A provider going dark: the linkage rate of each provider, month by month, against its own norm.

One provider's records can stop linking while every total looks normal: a hospital whose records
were, for a year, wrongly marked anonymous silently lost its admissions from the evaluation. GUILD
(Gilbert et al. 2018, "GUILD: GUidance for Information about Linking Data sets", J Public Health)
asks for linkage rates by data provider and over time for exactly this reason. This module computes
them and flags the months that fall well below the provider's own usual rate.

A cell is one source x provider x calendar month of the record's date: `records` pseudonymised
records, `linked` of them linked to a participant by any rank (1-5 or P). The linkage rate is
linked / records. Not every record should link (people outside the study have records too), so a
provider is compared with itself, never with a fixed target.

The rule (every constant below is named and tested):

1. A cell is *tested* when it has at least `MIN_RECORDS` records; smaller cells say too little.
2. The provider's *norm* for a tested month is the median linkage rate of its other tested months,
   and needs at least `MIN_NORM_MONTHS` of them (a median resists a run of bad months, which a
   mean would follow). A provider with fewer tested months is not judged.
3. A tested month is *flagged* when its rate is below `DROP_RATIO` x norm **and** seeing so few
   links among its records, were the norm its true rate, is unlikely: the one-sided binomial tail
   P(X <= linked | records, norm) is below `ALPHA`. The relative drop keeps a large provider's
   small, real but unimportant dips from being flagged; the binomial tail keeps small cells' chance
   swings from being flagged. ALPHA is small because many cells are tested in every run (a few
   thousand in a large one), and one false alarm per run would teach officers to ignore the flag.

    >>> cells = pl.DataFrame({"source": ["gp_events"] * 8, "provider_code": ["ZZ2001"] * 8,
    ...     "month": [f"2024-{m:02d}" for m in range(1, 9)],
    ...     "records": [40] * 8, "linked": [24, 25, 23, 24, 0, 2, 24, 25]})
    >>> flag_drift(cells).filter("flagged").get_column("month").to_list()
    ['2024-05', '2024-06']
"""

from __future__ import annotations

import numpy as np
import polars as pl

MIN_RECORDS = 10
MIN_NORM_MONTHS = 6
DROP_RATIO = 0.5
ALPHA = 0.001
RULE_TEXT = (
    f"a month is flagged when the provider's linkage rate that month (records linked by any rank / records) is below "
    f"{DROP_RATIO:g} x its usual rate (the median of its other months) and a binomial test puts the chance of so few "
    f"links below {ALPHA:g}; only months with at least {MIN_RECORDS} records are tested, and only providers with at "
    f"least {MIN_NORM_MONTHS + 1} such months"
)
CELL_KEYS = ("source", "provider_code", "month")


def provider_months(tally: pl.LazyFrame) -> pl.LazyFrame:
    """source, provider_code, month, records, linked from counts of records (source, provider_code,
    month, linked: bool, count: how many records; pipeline.link.quality.tally). A record with no
    provider code counts under "unknown"."""
    return (
        tally.with_columns(pl.col("provider_code").fill_null("unknown"))
        .group_by(*CELL_KEYS)
        .agg(
            pl.col("count").sum().cast(pl.Int64).alias("records"),
            pl.col("count").filter(pl.col("linked")).sum().cast(pl.Int64).alias("linked"),
        )
    )


def _median_of_others(rates: np.ndarray) -> np.ndarray:
    """For each position, the median of the other values (NaN when there are none)."""
    out = np.full(rates.shape, np.nan)
    for i in range(rates.shape[0]):
        others = np.delete(rates, i)
        if others.size:
            out[i] = float(np.median(others))
    return out


def flag_drift(cells: pl.DataFrame) -> pl.DataFrame:
    """`cells` (source, provider_code, month, records, linked) with `tested`, `norm` (the provider's
    usual rate, null where not judged), `p_value` and `flagged`, sorted by source, provider, month."""
    from scipy.stats import binom  # here, so that reading this module's rule (the audit page) needs no SciPy

    cells = cells.sort(*CELL_KEYS)
    tested = (cells.get_column("records") >= MIN_RECORDS).to_numpy()
    records = cells.get_column("records").to_numpy()
    linked = cells.get_column("linked").to_numpy()
    norm = np.full(cells.height, np.nan)
    keys = cells.select(pl.concat_str("source", "provider_code", separator="|")).to_series().to_numpy()
    for key in np.unique(keys):
        idx = np.flatnonzero((keys == key) & tested)
        if idx.size < MIN_NORM_MONTHS + 1:
            continue
        norm[idx] = _median_of_others(linked[idx] / records[idx])
    judged = ~np.isnan(norm)
    p_value = np.full(cells.height, np.nan)
    p_value[judged] = binom.cdf(linked[judged], records[judged], norm[judged])
    rate = np.divide(linked, records, out=np.zeros(cells.height), where=records > 0)
    flagged = judged & (rate < DROP_RATIO * np.nan_to_num(norm)) & (p_value < ALPHA)
    return cells.with_columns(
        tested=pl.Series(tested & judged),
        norm=pl.Series(norm).fill_nan(None),
        p_value=pl.Series(p_value).fill_nan(None),
        flagged=pl.Series(flagged),
    )
