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
| linked_by_rank_by_group | source x rank x breakdown x category | records linked at the rank / records linked |
| identifier_present | source x identifier (in `outcome`) x breakdown x category | records carrying a usable identifier / records |
| records_by_characteristic | source x linked-or-unlinked (in `outcome`) x characteristic x value | records / records linked (or not) |
| linked_by_provider_month | source x "provider month" | records linked by any rank / records |
| provider_month_flagged | the cells of linked_by_provider_month that pipeline.link.drift flags | as above |

Breakdowns of participants are age band (at index), sex, IMD quintile and site. The last five
measures follow the GUILD guidance (Gilbert et al. 2018) and read what each record carries
(`records`, built by the link stage from the pseudonymised zone): whether its identifiers were usable
(by provider, and by the group of the participant it linked to), its provider, the year of its date
and its kind (the source's main category). Records carry no date of birth in the clear (only its
token), so records are never grouped by age; linked records are, through their participant.

`evaluate_against_truth` is never called by the pipeline: the pipeline never reads `truth/`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.link.drift import RULE_TEXT as DRIFT_RULE
from pipeline.link.drift import flag_drift, provider_months
from pipeline.settings import SOURCES

OUTCOMES: tuple[str, ...] = ("1", "2", "3", "4", "5", "P", "unlinked", "conflict")
BREAKDOWNS: tuple[str, ...] = ("age_band", "sex", "imd_quintile", "site")
ALL = "all"
ANY_SOURCE = "any"
# Match-weight bins (log2 Bayes factor, prior included), 5 wide; outside them the open-ended bins.
WEIGHT_EDGES: tuple[int, ...] = tuple(range(-20, 41, 5))
# What records carry that the GUILD comparisons use. Each source's record date (as
# pipeline.pseudonymise.row_rules.EVENT_DATES, which this stage may not import: it is the key holder's
# package) and its main category, the record's kind.
RECORD_DATES: dict[str, str] = {
    "hospital_apc": "admission_date",
    "hospital_ae": "arrival_date",
    "hospital_op": "appointment_date",
    "gp_events": "event_date",
    "social_care": "start_date",
}
_ADMISSION_KINDS = {"1": "elective", "2": "emergency", "3": "maternity", "8": "other", "9": "not known"}
RECORD_KINDS: dict[str, pl.Expr] = {
    "hospital_apc": pl.col("admission_method").str.head(1).replace_strict(_ADMISSION_KINDS, default="other"),
    "hospital_ae": pl.format("type {}", pl.col("department_type")),
    "hospital_op": pl.col("attendance_type"),
    "gp_events": pl.col("consultation_type"),
    "social_care": pl.col("service_type"),
}
# Identifier -> the token column whose presence says the record carried it in a usable form.
IDENTIFIER_TOKENS: dict[str, str] = {
    "nhs_number": "tok_nhs",
    "date_of_birth": "tok_dob",
    "postcode": "tok_postcode",
    "name": "tok_surname",
}
RECORD_COLUMNS = ("source", "record_id", "provider_code", "month", "record_kind", *(f"has_{i}" for i in IDENTIFIER_TOKENS))
LINKED = "linked"
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


def record_facts(source: str, payload: pl.LazyFrame) -> pl.LazyFrame:
    """record_id, provider_code, month and record_kind of one source's records, from its payload
    file. Whether each identifier was usable (has_ columns) comes from the record's token block."""
    names = payload.collect_schema().names()
    provider = pl.col("provider_code") if "provider_code" in names else pl.lit(None, dtype=pl.String).alias("provider_code")
    return payload.select(
        "record_id",
        provider,
        pl.col(RECORD_DATES[source]).dt.strftime("%Y-%m").alias("month"),
        RECORD_KINDS[source].cast(pl.String).alias("record_kind"),
    )


# ---------------------------------------------------------------------------------------------------
# Tallies: the report is computed from two tables of counts, not from the records themselves. Both
# are sums over records, so the tallies of any split of the records (a source, a window of rows)
# add up to the tallies of the whole (`add_tallies`): the link stage tallies each window of rows as it
# writes it, and memory follows the window, not the number of records.

PARTICIPANT = "participant"  # the participant key of a tally: participant_id, or the link stage's row number
FACT_COLUMNS = ("provider_code", "month", "record_kind", *(f"has_{i}" for i in IDENTIFIER_TOKENS))
HAS_COLUMNS = tuple(f"has_{i}" for i in IDENTIFIER_TOKENS)


def tally(rows: pl.LazyFrame, facts: bool) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """(categories, participants) of some records, one row per record in `rows`: source,
    PARTICIPANT (null when not linked), rank, match_weight, conflict and, with `facts`, FACT_COLUMNS.

    categories: the count of records per source, outcome, linked or not, match-weight bin (null when
    not scored) and, with `facts`, provider, month, kind and which identifiers were usable.
    participants: per source, linked participant and outcome, the count of records and, with
    `facts`, how many of them carried each identifier."""
    rows = rows.with_columns(
        outcome=outcome(rows),
        **{LINKED: pl.col(PARTICIPANT).is_not_null()},
        weight_bin=pl.when(pl.col("match_weight").is_not_null()).then(weight_bin(pl.col("match_weight"))),
    )
    facts_cols = list(FACT_COLUMNS) if facts else []
    categories = rows.group_by("source", "outcome", LINKED, "weight_bin", *facts_cols).agg(pl.len().cast(pl.Int64).alias("count"))
    has = [pl.col(c).sum().cast(pl.Int64) for c in HAS_COLUMNS] if facts else []
    participants = rows.filter(pl.col(LINKED)).group_by("source", PARTICIPANT, "outcome").agg(pl.len().cast(pl.Int64).alias("count"), *has)
    return categories, participants


def add_tallies(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """One tally from tallies of parts of the records (every column but the counts is a key)."""
    whole = pl.concat(parts, how="vertical")
    counts = ["count", *[c for c in HAS_COLUMNS if c in whole.columns and whole.schema[c] != pl.Boolean]]
    keys = [c for c in whole.columns if c not in counts]
    return whole.group_by(keys).agg(pl.col(c).sum() for c in counts)


def _present(frame: pl.LazyFrame, by: list[str]) -> pl.LazyFrame:
    """identifier_present rows from a tally whose has_ columns are counts of records."""
    wide = frame.group_by("source", *by).agg(pl.col("count").sum().alias("denominator"), *[pl.col(c).sum() for c in HAS_COLUMNS])
    return wide.unpivot(index=["source", *by, "denominator"], on=list(HAS_COLUMNS), variable_name="outcome", value_name="count").with_columns(
        pl.col("outcome").str.strip_prefix("has_")
    )


def _record_measures(categories: pl.LazyFrame, linked_groups: pl.LazyFrame) -> list[pl.LazyFrame]:
    """The GUILD measures read off what records carry (see the module docstring)."""
    parts = []
    # has_ flags weighted by the records they stand for: counts, as in the participants' tally.
    counted = categories.with_columns([pl.col(c).cast(pl.Int64) * pl.col("count") for c in HAS_COLUMNS])
    parts.append(_rows(_present(counted, []), "identifier_present"))
    parts.append(_rows(_present(counted.with_columns(category=pl.col("provider_code").fill_null("unknown")), ["category"]), "identifier_present", breakdown="provider"))
    parts.append(_rows(_present(linked_groups, ["breakdown", "category"]), "identifier_present"))

    rank_counts = linked_groups.group_by("source", "breakdown", "category", "outcome").agg(pl.col("count").sum())
    rank_totals = linked_groups.group_by("source", "breakdown", "category").agg(pl.col("count").sum().alias("denominator"))
    parts.append(_rows(rank_counts.join(rank_totals, on=["source", "breakdown", "category"]), "linked_by_rank_by_group"))

    side = pl.when(pl.col(LINKED)).then(pl.lit(LINKED)).otherwise(pl.lit("unlinked")).alias("outcome")
    characteristics = {
        "provider": pl.col("provider_code").fill_null("unknown"),
        "record_year": pl.col("month").str.head(4),
        "record_kind": pl.col("record_kind").fill_null("unknown"),
    }
    by_char = pl.concat(
        [
            categories.group_by("source", side, pl.lit(name).alias("breakdown"), value.alias("category")).agg(pl.col("count").sum())
            for name, value in characteristics.items()
        ]
    )
    side_totals = categories.group_by("source", side).agg(pl.col("count").sum().alias("denominator"))
    parts.append(_rows(by_char.join(side_totals, on=["source", "outcome"]), "records_by_characteristic"))

    cells = flag_drift(provider_months(categories.select("source", "provider_code", "month", LINKED, "count")).collect())
    cell_rows = cells.lazy().select(
        "source",
        pl.lit("provider_month").alias("breakdown"),
        pl.concat_str("provider_code", "month", separator=" ").alias("category"),
        pl.col("linked").alias("count"),
        pl.col("records").alias("denominator"),
        "flagged",
    )
    parts.append(_rows(cell_rows, "linked_by_provider_month"))
    parts.append(_rows(cell_rows.filter("flagged"), "provider_month_flagged"))
    return parts


def linkage_quality(link_map: pl.LazyFrame, persons: pl.LazyFrame, records: pl.LazyFrame | None = None) -> pl.DataFrame:
    """The quality report of a whole link map (schemas/linkage_quality.yaml), sorted for a stable file.

    `records` (RECORD_COLUMNS, one row per pseudonymised record: `record_facts`) adds the measures
    read off what records carry; without it the report has only the link map's measures. The link
    stage tallies its windows of rows instead (`tally`, `quality_report`); this is the same report
    of a link map held whole."""
    rows = link_map.select("source", "record_id", pl.col("participant_id").alias(PARTICIPANT), "rank", "match_weight", "conflict")
    if records is not None:
        rows = rows.join(records.select("source", "record_id", *FACT_COLUMNS), on=["source", "record_id"], how="left")
    categories, participants = tally(rows, facts=records is not None)
    groups = person_groups(persons).rename({"participant_id": PARTICIPANT})
    n_persons = persons.select(pl.len()).collect().item()
    return quality_report(categories.collect(), participants.collect(), groups, n_persons)


def quality_report(categories: pl.DataFrame, participants: pl.DataFrame, groups: pl.LazyFrame, n_persons: int) -> pl.DataFrame:
    """The quality report from the tallies of every record (`tally`, `add_tallies`). `groups`:
    PARTICIPANT, breakdown, category (`person_groups`, keyed as the participants' tally is);
    `n_persons`: the number of participants. The GUILD measures are included when the tallies
    carry what records carry (FACT_COLUMNS)."""
    cat, part = categories.lazy(), participants.lazy()
    parts = []

    by_outcome = cat.group_by("source", "outcome").agg(pl.col("count").sum())
    totals = cat.group_by("source").agg(pl.col("count").sum().alias("denominator"))
    grid = pl.LazyFrame({"source": list(SOURCES)}).join(pl.LazyFrame({"outcome": list(OUTCOMES)}), how="cross")
    by_outcome = grid.join(by_outcome, on=["source", "outcome"], how="left").join(totals, on="source", how="left")
    parts.append(_rows(by_outcome.with_columns(pl.col("count").fill_null(0), pl.col("denominator").fill_null(0)), "records_by_outcome"))

    found = part.group_by("source").agg(pl.col(PARTICIPANT).n_unique().alias("count"))
    found = pl.LazyFrame({"source": list(SOURCES)}).join(found, on="source", how="left").with_columns(pl.col("count").fill_null(0))
    found_any = part.select(pl.lit(ANY_SOURCE).alias("source"), pl.col(PARTICIPANT).n_unique().alias("count"))
    parts.append(_rows(pl.concat([found, found_any]).with_columns(denominator=pl.lit(n_persons)), "participants_found"))

    weights = cat.filter(pl.col("weight_bin").is_not_null()).group_by("source", "outcome", pl.col("weight_bin").alias("category")).agg(pl.col("count").sum())
    parts.append(_rows(weights, "match_weight", breakdown="match_weight"))

    group_sizes = groups.group_by("breakdown", "category").agg(pl.len().alias("denominator"))
    # Per source and participant first (a few rows per participant), then by group.
    per_participant = part.group_by("source", PARTICIPANT).agg(
        pl.col("count").sum().alias("linked"), pl.col("count").filter(pl.col("outcome") == "P").sum().alias("linked_p")
    )
    by_group = per_participant.join(groups, on=PARTICIPANT).group_by("source", "breakdown", "category").agg(
        pl.len().alias("found"), pl.col("linked").sum(), pl.col("linked_p").sum()
    )
    grid = pl.LazyFrame({"source": list(SOURCES)}).join(group_sizes, how="cross")
    found_by = grid.join(by_group.select("source", "breakdown", "category", pl.col("found").alias("count")), on=["source", "breakdown", "category"], how="left")
    parts.append(_rows(found_by.with_columns(pl.col("count").fill_null(0)), "participants_found_by_group"))
    p_share = by_group.select("source", "breakdown", "category", pl.col("linked_p").alias("count"), pl.col("linked").alias("denominator"))
    parts.append(_rows(p_share, "linked_by_p_by_group", outcome="P"))
    if all(c in categories.columns for c in FACT_COLUMNS):
        parts += _record_measures(cat, part.join(groups, on=PARTICIPANT))

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
    out.update(_record_figures(q))
    return out


def _triple(r: dict[str, Any]) -> dict[str, Any]:
    return {"count": r["count"], "of": r["denominator"], "share": r["share"]}


def _record_figures(q: pl.DataFrame) -> dict[str, Any]:
    """The GUILD measures as nested figures; empty when the report has none."""
    out: dict[str, Any] = {"identifier_present": {}, "linked_by_rank_by_group": {}, "records_by_characteristic": {}}
    for r in q.filter(pl.col("measure") == "identifier_present").iter_rows(named=True):
        out["identifier_present"].setdefault(r["source"], {}).setdefault(r["outcome"], {}).setdefault(r["breakdown"], {})[r["category"]] = _triple(r)
    for r in q.filter(pl.col("measure") == "linked_by_rank_by_group").iter_rows(named=True):
        out["linked_by_rank_by_group"].setdefault(r["source"], {}).setdefault(r["breakdown"], {}).setdefault(r["category"], {})[r["outcome"]] = _triple(r)
    for r in q.filter(pl.col("measure") == "records_by_characteristic").iter_rows(named=True):
        out["records_by_characteristic"].setdefault(r["source"], {}).setdefault(r["breakdown"], {}).setdefault(r["category"], {})[r["outcome"]] = _triple(r)
    cells = q.filter(pl.col("measure") == "linked_by_provider_month")
    if cells.height == 0:
        return {k: v for k, v in out.items() if v}
    flagged = set(q.filter(pl.col("measure") == "provider_month_flagged").select("source", "category").iter_rows())
    sources: dict[str, Any] = {}
    flags = []
    # Rows are sorted by source and category ("provider YYYY-MM"), so each provider's months are in order.
    for r in cells.iter_rows(named=True):
        provider, month = r["category"].rsplit(" ", 1)
        series = sources.setdefault(r["source"], {}).setdefault(
            provider, {"months": [], "records": [], "linked": [], "unflagged": {"records": 0, "linked": 0}}
        )
        series["months"].append(month)
        series["records"].append(r["denominator"])
        series["linked"].append(r["count"])
        if (r["source"], r["category"]) in flagged:
            flags.append({"source": r["source"], "provider": provider, "month": month, "records": r["denominator"], "linked": r["count"]})
        else:
            # The provider's usual rate as the page shows it: its months not flagged, pooled (two
            # counts, each controlled on release, where a median of monthly rates would need each
            # month's exact figures).
            series["unflagged"]["records"] += r["denominator"]
            series["unflagged"]["linked"] += r["count"]
    out["provider_month"] = {"rule": DRIFT_RULE, "sources": sources, "flagged": flags}
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
