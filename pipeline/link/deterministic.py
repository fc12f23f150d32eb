"""Deterministic linkage ranks 1-5, all on tokens (DESIGN.md, "Linkage").

| rank | agreement |
| --- | --- |
| 1 | NHS number + date of birth + sex + postcode |
| 2 | NHS number + date of birth + sex |
| 3 | NHS number + partial date of birth (year-month, or day and month swapped) |
| 4 | NHS number + postcode |
| 5 | date of birth + sex + postcode, where the NHS numbers do not contradict |

Each record takes the best (lowest) rank at which it agrees with any participant. If at that rank
it agrees with more than one participant, it is a conflict: it stays unlinked and is reported, never
silently resolved.

The plan (which columns must agree at each rank) is data; `candidate_pairs` runs it with Polars joins.
Each rank compares one composite token (token spec v2: `tok_rankN` joins the rank's identifiers), so
sex, which has no token of its own, takes part only inside them. Rank 3's swap arm compares
`tok_nhs_dob_swap` (NHS number and the swapped date) with `tok_nhs_dob`.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


@dataclass(frozen=True)
class RankRule:
    """Record column -> participant column pairs that must all be equal (and non-null)."""

    rank: str
    pairs: tuple[tuple[str, str], ...]
    nhs_must_not_contradict: bool = False


_SAME = lambda *cols: tuple((c, c) for c in cols)  # noqa: E731 - a tiny helper that reads like the table

RANK_RULES: tuple[RankRule, ...] = (
    RankRule("1", _SAME("tok_rank1")),
    RankRule("2", _SAME("tok_rank2")),
    RankRule("3", _SAME("tok_rank3")),
    # Day and month swapped on either side: the swapped token of one equals the true token of the other.
    RankRule("3", (("tok_nhs_dob_swap", "tok_nhs_dob"),)),
    RankRule("3", (("tok_nhs_dob", "tok_nhs_dob_swap"),)),
    RankRule("4", _SAME("tok_rank4")),
    RankRule("5", _SAME("tok_rank5"), nhs_must_not_contradict=True),
)
DETERMINISTIC_RANKS: tuple[str, ...] = ("1", "2", "3", "4", "5")


def candidate_pairs(records: pl.LazyFrame, persons: pl.LazyFrame) -> pl.LazyFrame:
    """Every (record_id, participant_id, rank) agreement under each rank rule."""
    parts = []
    for rule in RANK_RULES:
        rec_cols = [r for r, _ in rule.pairs]
        per_cols = [p for _, p in rule.pairs]
        left = records.select("record_id", *{*rec_cols, "tok_nhs"}).drop_nulls(rec_cols)
        right = persons.select(
            "participant_id", *[pl.col(p).alias(f"_p{i}") for i, p in enumerate(per_cols)], pl.col("tok_nhs").alias("_p_nhs")
        ).drop_nulls([f"_p{i}" for i in range(len(per_cols))])
        joined = left.join(right, left_on=rec_cols, right_on=[f"_p{i}" for i in range(len(per_cols))], how="inner")
        if rule.nhs_must_not_contradict:
            joined = joined.filter(
                pl.col("tok_nhs").is_null() | pl.col("_p_nhs").is_null() | (pl.col("tok_nhs") == pl.col("_p_nhs"))
            )
        parts.append(joined.select("record_id", "participant_id", pl.lit(rule.rank).alias("rank")))
    return pl.concat(parts, how="vertical")


def resolve_links(records: pl.LazyFrame, pairs: pl.LazyFrame) -> pl.LazyFrame:
    """One row per record: best rank, its participant, or a conflict; unlinked records have nulls.

    Output columns: record_id, participant_id, rank, match_probability, conflict.
    """
    best = (
        pairs.unique()
        .with_columns(best_rank=pl.col("rank").min().over("record_id"))
        .filter(pl.col("rank") == pl.col("best_rank"))
        .group_by("record_id")
        .agg(
            pl.col("participant_id").n_unique().alias("_n"),
            pl.col("participant_id").min().alias("participant_id"),
            pl.col("rank").first().alias("rank"),
        )
    )
    conflict = pl.col("_n") > 1
    return (
        records.select("record_id")
        .join(best, on="record_id", how="left")
        .select(
            "record_id",
            pl.when(conflict).then(None).otherwise(pl.col("participant_id")).alias("participant_id"),
            pl.when(conflict).then(None).otherwise(pl.col("rank")).alias("rank"),
            pl.when(conflict | pl.col("rank").is_null()).then(None).otherwise(pl.lit(1.0)).alias("match_probability"),
            conflict.fill_null(False).alias("conflict"),
        )
    )


def link_deterministic(records: pl.LazyFrame, persons: pl.LazyFrame) -> pl.LazyFrame:
    """The link map of one source against the participants (see resolve_links for the columns)."""
    return resolve_links(records, candidate_pairs(records, persons))
