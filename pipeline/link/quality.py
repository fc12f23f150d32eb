"""Linkage quality: the report every run writes (no ground truth needed), and the evaluation against
ground truth that tests and benchmarks run on synthetic data.

The report (schemas/linkage_quality.yaml) is one long table so the audit page can draw any part of
it; `summary_figures` turns it into the nested figures written into linkage_summary.json. Measures:

| measure | one row per | count / denominator |
| --- | --- | --- |
| records_by_outcome | source x outcome (rank 1-5, P, unlinked, conflict) | records / records of the source |
| participants_found | source (and `any`) | participants with a linked record / participants |
| match_weight | source x outcome x weight bin | records the probabilistic step scored |
| participants_found_by_group | source x breakdown x category | found / participants in the group |
| linked_by_p_by_group | source x breakdown x category | records linked by P / records linked |

Breakdowns are age band (at index), sex, IMD quintile and site, so a reviewer can see whether
linkage fails more often for some groups than others.

`evaluate_against_truth` is never called by the pipeline: the pipeline never reads `truth/`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.settings import SOURCES

OUTCOMES: tuple[str, ...] = ("1", "2", "3", "4", "5", "P", "unlinked", "conflict")
BREAKDOWNS: tuple[str, ...] = ("age_band", "sex", "imd_quintile", "site")
ALL = "all"
ANY_SOURCE = "any"
# Match-weight bins (log2 Bayes factor, prior included), 5 wide; outside them the open-ended bins.
WEIGHT_EDGES: tuple[int, ...] = tuple(range(-20, 41, 5))
QUALITY_COLUMNS = ("measure", "source", "outcome", "breakdown", "category", "count", "denominator", "share")


def age_band(age: pl.Expr) -> pl.Expr:
    """'<55', '55-64', '65-74', '75-84', '85+' (age in whole years at the index date)."""
    return (
        pl.when(age < 55).then(pl.lit("<55"))
        .when(age < 65).then(pl.lit("55-64"))
        .when(age < 75).then(pl.lit("65-74"))
        .when(age < 85).then(pl.lit("75-84"))
        .otherwise(pl.lit("85+"))
    )  # fmt: skip


def outcome(link_map: pl.LazyFrame) -> pl.Expr:
    return pl.when(pl.col("conflict")).then(pl.lit("conflict")).otherwise(pl.col("rank").fill_null("unlinked"))


def weight_bin(weight: pl.Expr) -> pl.Expr:
    """'[a, b)' bins of WEIGHT_EDGES, '< -20' and '>= 40' outside them."""
    lo, hi = WEIGHT_EDGES[0], WEIGHT_EDGES[-1]
    start = (weight / 5).floor() * 5
    return (
        pl.when(weight < lo).then(pl.lit(f"< {lo}"))
        .when(weight >= hi).then(pl.lit(f">= {hi}"))
        .otherwise(pl.format("[{}, {})", start.cast(pl.Int64), (start + 5).cast(pl.Int64)))
    )  # fmt: skip


def person_groups(persons: pl.LazyFrame) -> pl.LazyFrame:
    """participant_id, breakdown, category: one row per participant and breakdown."""
    p = persons.select(
        "participant_id",
        age_band(pl.col("age_at_index")).alias("age_band"),
        pl.col("sex").cast(pl.String),
        pl.col("imd_quintile").cast(pl.String).fill_null("unknown"),
        pl.col("site").cast(pl.String),
    )
    return p.unpivot(index="participant_id", on=list(BREAKDOWNS), variable_name="breakdown", value_name="category")


def _rows(lf: pl.LazyFrame, measure: str, **fixed: str) -> pl.LazyFrame:
    """Fill a partial report to QUALITY_COLUMNS (missing labels become 'all')."""
    cols = lf.collect_schema().names()
    exprs = [pl.lit(measure).alias("measure")]
    for c in ("source", "outcome", "breakdown", "category"):
        exprs.append(pl.col(c).cast(pl.String) if c in cols else pl.lit(fixed.get(c, ALL)).alias(c))
    exprs.append(pl.col("count").cast(pl.Int64))
    exprs.append(pl.col("denominator").cast(pl.Int64) if "denominator" in cols else pl.lit(None, dtype=pl.Int64).alias("denominator"))
    share = (
        pl.when(pl.col("denominator") > 0).then((pl.col("count") / pl.col("denominator")).round(4))
        if "denominator" in cols
        else pl.lit(None, dtype=pl.Float64)
    )
    return lf.select(*exprs, share.cast(pl.Float64).alias("share"))


def linkage_quality(link_map: pl.LazyFrame, persons: pl.LazyFrame) -> pl.DataFrame:
    """The quality report of one run (schemas/linkage_quality.yaml), sorted for a stable file."""
    lm = link_map.select("source", "participant_id", "rank", "match_weight", "conflict").with_columns(
        outcome=outcome(link_map)
    )
    n_persons = persons.select(pl.len()).collect().item()
    parts = []

    by_outcome = lm.group_by("source", "outcome").agg(pl.len().alias("count"))
    totals = lm.group_by("source").agg(pl.len().alias("denominator"))
    grid = pl.LazyFrame({"source": list(SOURCES)}).join(pl.LazyFrame({"outcome": list(OUTCOMES)}), how="cross")
    by_outcome = grid.join(by_outcome, on=["source", "outcome"], how="left").join(totals, on="source", how="left")
    parts.append(_rows(by_outcome.with_columns(pl.col("count").fill_null(0), pl.col("denominator").fill_null(0)), "records_by_outcome"))

    linked = lm.filter(pl.col("participant_id").is_not_null())
    found = linked.group_by("source").agg(pl.col("participant_id").n_unique().alias("count"))
    found = pl.LazyFrame({"source": list(SOURCES)}).join(found, on="source", how="left").with_columns(pl.col("count").fill_null(0))
    found_any = linked.select(pl.lit(ANY_SOURCE).alias("source"), pl.col("participant_id").n_unique().alias("count"))
    parts.append(_rows(pl.concat([found, found_any]).with_columns(denominator=pl.lit(n_persons)), "participants_found"))

    scored = lm.filter(pl.col("match_weight").is_not_null()).with_columns(category=weight_bin(pl.col("match_weight")))
    weights = scored.group_by("source", "outcome", "category").agg(pl.len().alias("count"))
    parts.append(_rows(weights, "match_weight", breakdown="match_weight"))

    groups = person_groups(persons)
    group_sizes = groups.group_by("breakdown", "category").agg(pl.len().alias("denominator"))
    # Per source and participant first (a few rows per participant), then by group.
    per_participant = linked.group_by("source", "participant_id").agg(
        pl.len().alias("linked"), (pl.col("rank") == "P").sum().alias("linked_p")
    )
    by_group = per_participant.join(groups, on="participant_id").group_by("source", "breakdown", "category").agg(
        pl.len().alias("found"), pl.col("linked").sum(), pl.col("linked_p").sum()
    )
    grid = pl.LazyFrame({"source": list(SOURCES)}).join(group_sizes, how="cross")
    found_by = grid.join(by_group.select("source", "breakdown", "category", pl.col("found").alias("count")), on=["source", "breakdown", "category"], how="left")
    parts.append(_rows(found_by.with_columns(pl.col("count").fill_null(0)), "participants_found_by_group"))
    p_share = by_group.select("source", "breakdown", "category", pl.col("linked_p").alias("count"), pl.col("linked").alias("denominator"))
    parts.append(_rows(p_share, "linked_by_p_by_group", outcome="P"))

    return (
        pl.concat(parts, how="vertical")
        .collect()
        .sort("measure", "source", "outcome", "breakdown", "category")
    )


def summary_figures(quality: pl.DataFrame) -> dict[str, Any]:
    """The report as nested figures for linkage_summary.json and the audit page."""
    out: dict[str, Any] = {}
    q = quality
    rec = q.filter(pl.col("measure") == "records_by_outcome")
    out["records_by_outcome"] = {
        s: {r["outcome"]: {"records": r["count"], "share": r["share"]} for r in rec.filter(pl.col("source") == s).iter_rows(named=True)}
        for s in rec.get_column("source").unique().sort()
    }
    found = q.filter(pl.col("measure") == "participants_found")
    out["participants_found"] = {r["source"]: {"participants": r["count"], "share": r["share"]} for r in found.iter_rows(named=True)}
    mw = q.filter(pl.col("measure") == "match_weight")
    out["match_weight_histogram"] = {
        s: [
            {"bin": r["category"], "outcome": r["outcome"], "records": r["count"]}
            for r in mw.filter(pl.col("source") == s).iter_rows(named=True)
        ]
        for s in mw.get_column("source").unique().sort()
    }
    for measure in ("participants_found_by_group", "linked_by_p_by_group"):
        m = q.filter(pl.col("measure") == measure)
        nested: dict[str, Any] = {}
        for r in m.iter_rows(named=True):
            nested.setdefault(r["source"], {}).setdefault(r["breakdown"], {})[r["category"]] = {
                "count": r["count"],
                "of": r["denominator"],
                "share": r["share"],
            }
        out[measure] = nested
    return out


# ---------------------------------------------------------------------------------------------------
# Ground truth (synthetic data only; never called by the pipeline).

# (source, provider record IDs) -> their record tokens, in order.
RecordTokens = Callable[[str, pl.Series], pl.Series]


def truth_frame(truth_dir: Path, persons: pl.LazyFrame, record_tokens: RecordTokens | None = None) -> pl.LazyFrame:
    """source, record_id, expected: the participant a record truly belongs to when that participant
    passed the consent gate (is in pseudonymised persons), else null (the record must stay unlinked).

    A link map made by the pipeline holds record tokens, not the providers' record IDs the truth
    holds: `record_tokens(source, ids)` turns one into the other (the key holder's
    pipeline.pseudonymise.records.record_tokeniser; this module never holds the key)."""
    kept = persons.select("participant_id")
    truth = pl.scan_parquet(Path(truth_dir) / "record_links.parquet").select("source", "record_id", "participant_id")
    if record_tokens is not None:
        parts = [
            part.with_columns(record_id=record_tokens(source, part.get_column("record_id")))
            for (source,), part in truth.collect().group_by("source", maintain_order=True)
        ]
        truth = pl.concat(parts).lazy()
    return truth.join(kept.with_columns(_kept=pl.lit(True)), on="participant_id", how="left").select(
        "source", "record_id", pl.when(pl.col("_kept")).then(pl.col("participant_id")).alias("expected")
    )


def _confusion(lf: pl.LazyFrame, by: list[str]) -> pl.LazyFrame:
    linked = pl.col("participant_id")
    correct = linked.is_not_null() & (linked == pl.col("expected"))
    return lf.group_by(by).agg(
        correct.sum().alias("tp"),
        (linked.is_not_null() & ~correct.fill_null(False)).sum().alias("fp"),
        (pl.col("expected").is_not_null() & ~correct.fill_null(False)).sum().alias("fn"),
        pl.len().alias("records"),
    )


def _scores(lf: pl.LazyFrame) -> pl.LazyFrame:
    tp, fp, fn = pl.col("tp"), pl.col("fp"), pl.col("fn")
    precision = pl.when(tp + fp > 0).then(tp / (tp + fp))
    recall = pl.when(tp + fn > 0).then(tp / (tp + fn))
    return lf.with_columns(precision=precision, recall=recall).with_columns(
        f1=pl.when(pl.col("precision") + pl.col("recall") > 0).then(
            2 * pl.col("precision") * pl.col("recall") / (pl.col("precision") + pl.col("recall"))
        )
    )


def in_probabilistic_scope() -> pl.Expr:
    """Records the probabilistic step considered: linked at P, or left unlinked by ranks 1-5 (not a
    deterministic conflict; a probabilistic conflict has a match weight)."""
    return (pl.col("rank") == "P").fill_null(False) | (
        pl.col("rank").is_null() & (~pl.col("conflict") | pl.col("match_weight").is_not_null())
    )


def evaluate_against_truth(link_map: Path, truth_dir: Path, persons: Path, record_tokens: RecordTokens | None = None) -> pl.DataFrame:
    """Precision, recall and F1 of a link map against the generator's ground truth.

    Rows: scope ("all", "deterministic" = ranks 1-5 and their conflicts, "probabilistic" = the
    records the probabilistic step considered), source (each and "all"), breakdown / category
    ("all", or by age band, sex, IMD quintile and site of the true participant). A link to the wrong
    participant counts as a false positive and a false negative; any link of a record whose person
    is not a kept participant is a false positive. `persons` is the study side of the participants
    (pipeline.zones.study_persons_file): participant IDs and the covariates of the breakdowns.
    """
    p = pl.scan_parquet(persons)
    lm = pl.scan_parquet(link_map).select("source", "record_id", "participant_id", "rank", "match_weight", "conflict")
    joined = lm.join(truth_frame(truth_dir, p, record_tokens), on=["source", "record_id"], how="left").with_columns(
        scope_p=in_probabilistic_scope()
    )
    groups = person_groups(p.select("participant_id", "age_at_index", "sex", "imd_quintile", "site"))
    parts = []
    for scope, filt in (("all", pl.lit(True)), ("deterministic", ~pl.col("scope_p")), ("probabilistic", pl.col("scope_p"))):
        sub = joined.filter(filt)
        for src in (True, False):
            by = ["source"] if src else []
            c = _confusion(sub, by)
            if not src:
                c = c.with_columns(source=pl.lit(ALL))
            parts.append(c.with_columns(scope=pl.lit(scope), breakdown=pl.lit(ALL), category=pl.lit(ALL)))
            # By the true participant's group (records of nobody in the study have no group).
            g = sub.join(groups, left_on="expected", right_on="participant_id", how="inner")
            cg = _confusion(g, [*by, "breakdown", "category"])
            if not src:
                cg = cg.with_columns(source=pl.lit(ALL))
            parts.append(cg.with_columns(scope=pl.lit(scope)))
    cols = ["scope", "source", "breakdown", "category", "records", "tp", "fp", "fn"]
    out = pl.concat([x.select(cols) for x in parts], how="vertical")
    return _scores(out).collect().sort("scope", "source", "breakdown", "category")


def headline(evaluation: pl.DataFrame) -> pl.DataFrame:
    """Scope x source rows of an evaluation (no breakdown), for printing."""
    return evaluation.filter(pl.col("breakdown") == ALL).drop("breakdown", "category")
