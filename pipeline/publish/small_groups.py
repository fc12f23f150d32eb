"""Small quasi-identifier groups in row-level release tables: what a run's policy does about them.

The rule (`pipeline.publish.disclosure.MIN_GROUP_SIZE`): every combination of a row-level table's
quasi-identifiers describes at least 8 people, a withheld (null) value counting as a category of its
own. Treating null as a category means withholding can only merge a small group into a bigger one,
never hide it from the check (`pipeline.publish.privacy` counts the same way).

The ideas are sdcMicro's (Templ et al.): *local suppression* withholds a quasi-identifier of the
rows of too-small groups only, the least important one first; *global recoding* merges categories
for everyone. Both are pure functions on the cohort (one row per person), applied by `stage_release`
before study IDs are assigned:

    >>> df = pl.DataFrame({"pid": list("abcdefghi"), "arm": ["mdt"] * 9, "age_band": ["55-64"] * 9,
    ...     "imd_quintile": [None] * 8 + [5]}, schema_overrides={"imd_quintile": pl.Int8})
    >>> out = withhold(df, ["arm", "age_band", "imd_quintile"], "pid")
    >>> out.frame.filter(pl.col("pid") == "i").row(0), out.withheld, out.dropped
    (('i', 'mdt', '55-64', None), {'imd_quintile': 1, 'age_band': 0}, [])

Person i was alone in IMD quintile 5; with the quintile withheld they join the eight people whose
IMD is unknown, a group of 9. Someone still alone after every column of `WITHHOLD_ORDER` is dropped
from every release table. `tests/test_disclosure.py` has the ladder written out as tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from pipeline.publish.disclosure import MIN_GROUP_SIZE, WITHHOLD_ORDER, coarsening


@dataclass
class Outcome:
    """A table after the policy: which values were withheld or merged, and who was dropped."""

    frame: pl.DataFrame
    withheld: dict[str, int] = field(default_factory=dict)  # column -> values withheld (nulled)
    coarsened: list[str] = field(default_factory=list)  # columns recoded for everyone, in order
    dropped: list[str] = field(default_factory=list)  # keys of people no policy step could protect


def too_small(qi: list[str], key: str, min_size: int = MIN_GROUP_SIZE) -> pl.Expr:
    """True on the rows of a group of fewer than `min_size` people (nulls grouped together)."""
    return pl.col(key).n_unique().over(qi) < min_size


def smallest(df: pl.DataFrame, qi: list[str], key: str) -> int:
    if df.height == 0:
        return 0
    return int(df.group_by(qi).agg(pl.col(key).n_unique().alias("n")).get_column("n").min())


def withhold(df: pl.DataFrame, qi: list[str], key: str, order: tuple[str, ...] = WITHHOLD_ORDER, min_size: int = MIN_GROUP_SIZE) -> Outcome:
    """Local suppression: for the rows of too-small groups, null the next column of `order`, regroup,
    repeat; then drop the rows still in a too-small group (their keys are returned)."""
    out = Outcome(df)
    for column in (c for c in order if c in qi):
        small = too_small(qi, key, min_size)
        out.withheld[column] = int(out.frame.select((small & pl.col(column).is_not_null()).sum()).item())
        out.frame = out.frame.with_columns(pl.when(small).then(None).otherwise(pl.col(column)).alias(column))
    small = out.frame.select(too_small(qi, key, min_size)).to_series()
    out.dropped = sorted(out.frame.filter(small).get_column(key).unique().to_list())
    out.frame = out.frame.filter(~small)
    return out


def coarsen(df: pl.DataFrame, qi: list[str], key: str, min_size: int = MIN_GROUP_SIZE, study: Any = None) -> Outcome:
    """Global recoding per the study's `coarsening` (default study when None), one level at a time
    while a group is too small; then local suppression for whatever is still too small."""
    from pipeline.study import load_study

    coarsened: list[str] = []
    for column, mapping in coarsening(study or load_study()):
        if column not in qi or smallest(df, qi, key) >= min_size:
            continue
        recoded = pl.col(column).replace_strict(mapping, default=None) if mapping else pl.lit(None)
        df = df.with_columns(recoded.cast(df.schema[column]).alias(column))
        coarsened.append(column)
    out = withhold(df, qi, key, min_size=min_size)
    out.coarsened = coarsened
    return out


def apply_policy(df: pl.DataFrame, qi: list[str], key: str, policy: str, study: Any = None) -> Outcome:
    """The run's policy (`RunConfig.small_groups`) on one person-level table of the run's study."""
    if policy == "block":
        return Outcome(df)  # nothing changed: the privacy check refuses the release if a group is small
    if policy == "coarsen":
        return coarsen(df, qi, key, study=study)
    return withhold(df, qi, key)


def small_group_filter(lf: pl.LazyFrame, qi: list[str], key: str, min_size: int = MIN_GROUP_SIZE) -> pl.LazyFrame | None:
    """The rows of a (possibly large) table that are in a group of at least `min_size` people, or None
    when every group is big enough. One aggregate pass finds the small groups; only when there are
    some is the table filtered (an anti-join that treats null as a value)."""
    # Streamed: the pass holds one entry per group and person, never the table's rows.
    small = (
        lf.group_by(qi).agg(pl.col(key).n_unique().alias("_people")).filter(pl.col("_people") < min_size).drop("_people")
        .collect(engine="streaming")
    )  # fmt: skip
    if small.height == 0:
        return None
    return lf.join(small.lazy(), on=qi, how="anti", nulls_equal=True)
