"""Spec tests for the linkage quality report and the ground-truth evaluation: small link maps written
out, the expected figures beside them."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from pipeline.contracts import check_file, load_contract
from pipeline.io import write_frame
from pipeline.link.quality import age_band, evaluate_against_truth, headline, linkage_quality, summary_figures, weight_bin

LINK_MAP_SCHEMA = {
    "source": pl.String,
    "record_id": pl.String,
    "participant_id": pl.String,
    "rank": pl.String,
    "match_probability": pl.Float64,
    "match_weight": pl.Float64,
    "conflict": pl.Boolean,
}


def link_map(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=LINK_MAP_SCHEMA, orient="row")


PERSONS = pl.DataFrame(
    [
        # participant  age  sex  imd  site
        ("P0000001", 60, "F", 1, "site_a"),
        ("P0000002", 70, "M", 2, "site_a"),
        ("P0000003", 80, "F", None, "site_b"),
        ("P0000004", 90, "M", 5, "site_b"),
    ],
    schema={"participant_id": pl.String, "age_at_index": pl.Int16, "sex": pl.String, "imd_quintile": pl.Int8, "site": pl.String},
    orient="row",
)

LINK_MAP = link_map(
    [
        # source        record  participant rank  prob  weight conflict
        ("social_care", "S1", "P0000001", "1", 1.0, None, False),
        ("social_care", "S2", "P0000001", "5", 1.0, None, False),
        ("social_care", "S3", "P0000002", "P", 0.97, 12.3, False),
        ("social_care", "S4", None, None, None, 2.0, False),  # scored, below the threshold
        ("social_care", "S5", None, None, None, None, True),  # deterministic conflict
        ("social_care", "S6", None, None, None, None, False),  # nothing to link to
        ("gp_events", "G1", "P0000003", "2", 1.0, None, False),
        ("gp_events", "G2", None, None, None, 30.0, True),  # probabilistic conflict
    ]
)


@pytest.fixture(scope="module")
def report() -> pl.DataFrame:
    return linkage_quality(LINK_MAP.lazy(), PERSONS.lazy())


def figure(report: pl.DataFrame, measure: str, source: str, outcome: str = "all", breakdown: str = "all", category: str = "all"):
    row = report.filter(
        (pl.col("measure") == measure) & (pl.col("source") == source) & (pl.col("outcome") == outcome)
        & (pl.col("breakdown") == breakdown) & (pl.col("category") == category)
    )  # fmt: skip
    assert row.height == 1, (measure, source, outcome, breakdown, category)
    return row.select("count", "denominator", "share").row(0)


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [("1", (1, 6, 0.1667)), ("5", (1, 6, 0.1667)), ("P", (1, 6, 0.1667)), ("unlinked", (2, 6, 0.3333)), ("conflict", (1, 6, 0.1667)), ("4", (0, 6, 0.0))],
)
def test_records_by_outcome(report, outcome, expected):
    assert figure(report, "records_by_outcome", "social_care", outcome) == expected


def test_participants_found_per_source_and_in_any_source(report):
    assert figure(report, "participants_found", "social_care") == (2, 4, 0.5)
    assert figure(report, "participants_found", "gp_events") == (1, 4, 0.25)
    assert figure(report, "participants_found", "hospital_apc") == (0, 4, 0.0)
    assert figure(report, "participants_found", "any") == (3, 4, 0.75)


def test_breakdowns_show_who_is_found_and_who_needed_the_probabilistic_step(report):
    assert figure(report, "participants_found_by_group", "social_care", breakdown="sex", category="F") == (1, 2, 0.5)
    assert figure(report, "participants_found_by_group", "social_care", breakdown="age_band", category="85+") == (0, 1, 0.0)
    assert figure(report, "participants_found_by_group", "gp_events", breakdown="imd_quintile", category="unknown") == (1, 1, 1.0)
    # Of the records linked for men in social care, all (1 of 1) needed rank P; for women none (0 of 2).
    assert figure(report, "linked_by_p_by_group", "social_care", "P", "sex", "M") == (1, 1, 1.0)
    assert figure(report, "linked_by_p_by_group", "social_care", "P", "sex", "F") == (0, 2, 0.0)


def test_match_weight_distribution_counts_every_scored_record_by_outcome(report):
    assert figure(report, "match_weight", "social_care", "P", "match_weight", "[10, 15)")[0] == 1
    assert figure(report, "match_weight", "social_care", "unlinked", "match_weight", "[0, 5)")[0] == 1
    assert figure(report, "match_weight", "gp_events", "conflict", "match_weight", "[30, 35)")[0] == 1
    total = report.filter(pl.col("measure") == "match_weight").get_column("count").sum()
    assert total == LINK_MAP.get_column("match_weight").drop_nulls().len()


def test_report_follows_its_contract_and_feeds_the_summary(report, tmp_path: Path):
    path = write_frame(report, load_contract("linkage_quality"), tmp_path / "linkage_quality.parquet")
    check_file(path, "linkage_quality")
    figures = summary_figures(report)
    assert figures["records_by_outcome"]["social_care"]["P"] == {"records": 1, "share": 0.1667}
    assert figures["participants_found"]["any"] == {"participants": 3, "share": 0.75}
    assert figures["participants_found_by_group"]["social_care"]["site"]["site_a"] == {"count": 2, "of": 2, "share": 1.0}


# What each record of LINK_MAP carries (pipeline.link.quality.record_facts): provider, month, kind and
# whether each identifier was usable.
RECORDS = pl.DataFrame(
    [
        # source      record provider  month      kind       nhs    dob    postcode name
        ("social_care", "S1", "ZZ901", "2024-01", "home_care", True, True, True, True),
        ("social_care", "S2", "ZZ901", "2024-01", "home_care", False, True, True, True),
        ("social_care", "S3", "ZZ902", "2024-02", "nursing", False, True, True, True),
        ("social_care", "S4", "ZZ902", "2024-02", "nursing", False, False, True, False),
        ("social_care", "S5", "ZZ902", "2025-03", "home_care", True, True, True, True),
        ("social_care", "S6", None, "2025-03", "home_care", True, True, True, True),
        ("gp_events", "G1", "ZZ2001", "2024-01", "surgery", True, True, True, True),
        ("gp_events", "G2", "ZZ2001", "2024-01", "surgery", True, True, True, True),
    ],
    schema=["source", "record_id", "provider_code", "month", "record_kind", "has_nhs_number", "has_date_of_birth", "has_postcode", "has_name"],
    orient="row",
)


@pytest.fixture(scope="module")
def guild() -> pl.DataFrame:
    return linkage_quality(LINK_MAP.lazy(), PERSONS.lazy(), RECORDS.lazy())


def test_identifier_completeness_by_source_provider_and_group(guild):
    assert figure(guild, "identifier_present", "social_care", "nhs_number") == (3, 6, 0.5)
    assert figure(guild, "identifier_present", "social_care", "nhs_number", "provider", "ZZ902") == (1, 3, 0.3333)
    assert figure(guild, "identifier_present", "social_care", "name", "provider", "unknown") == (1, 1, 1.0)
    # Linked records only, by their participant's group: S1, S2 (P0000001, F) and S3 (P0000002, M).
    assert figure(guild, "identifier_present", "social_care", "nhs_number", "sex", "F") == (1, 2, 0.5)
    assert figure(guild, "identifier_present", "social_care", "nhs_number", "sex", "M") == (0, 1, 0.0)


def test_rank_mix_by_group(guild):
    assert figure(guild, "linked_by_rank_by_group", "social_care", "5", "sex", "F") == (1, 2, 0.5)
    assert figure(guild, "linked_by_rank_by_group", "social_care", "P", "age_band", "65-74") == (1, 1, 1.0)


def test_linked_and_unlinked_records_compared_on_what_they_carry(guild):
    # Linked: S1, S2, S3; unlinked (conflicts included): S4, S5, S6.
    assert figure(guild, "records_by_characteristic", "social_care", "linked", "provider", "ZZ901") == (2, 3, 0.6667)
    assert figure(guild, "records_by_characteristic", "social_care", "unlinked", "record_year", "2025") == (2, 3, 0.6667)
    assert figure(guild, "records_by_characteristic", "social_care", "unlinked", "record_kind", "nursing") == (1, 3, 0.3333)


def test_linkage_rate_by_provider_and_month(guild, tmp_path: Path):
    assert figure(guild, "linked_by_provider_month", "social_care", breakdown="provider_month", category="ZZ902 2024-02") == (1, 2, 0.5)
    assert figure(guild, "linked_by_provider_month", "gp_events", breakdown="provider_month", category="ZZ2001 2024-01") == (1, 2, 0.5)
    # Too few records a month to judge anyone: nothing flagged.
    assert guild.filter(pl.col("measure") == "provider_month_flagged").height == 0
    check_file(write_frame(guild, load_contract("linkage_quality"), tmp_path / "q.parquet"), "linkage_quality")
    series = summary_figures(guild)["provider_month"]["sources"]["social_care"]["ZZ902"]
    assert series == {"months": ["2024-02", "2025-03"], "records": [2, 1], "linked": [1, 0], "unflagged": {"records": 3, "linked": 1}}


@pytest.mark.parametrize(
    ("weight", "label"), [(-25.0, "< -20"), (-20.0, "[-20, -15)"), (-0.5, "[-5, 0)"), (0.0, "[0, 5)"), (39.9, "[35, 40)"), (40.0, ">= 40")]
)
def test_weight_bins(weight, label):
    assert pl.select(weight_bin(pl.lit(weight))).item() == label


@pytest.mark.parametrize(("age", "band"), [(54, "<55"), (55, "55-64"), (64, "55-64"), (65, "65-74"), (84, "75-84"), (85, "85+")])
def test_age_bands(age, band):
    assert pl.select(age_band(pl.lit(age))).item() == band


# ---------------------------------------------------------------------------------------------------
# Evaluation against ground truth.

TRUTH = pl.DataFrame(
    [
        # source        record  true participant (None: a person outside the study)
        ("social_care", "S1", "P0000001"),
        ("social_care", "S2", "P0000001"),
        ("social_care", "S3", "P0000004"),  # linked at P to P0000002: wrong
        ("social_care", "S4", "P0000002"),  # scored but left unlinked: missed
        ("social_care", "S5", "P0000009"),  # a declined person (not in persons): must stay unlinked
        ("social_care", "S6", None),
        ("gp_events", "G1", "P0000009"),  # a declined person's record linked: false positive
        ("gp_events", "G2", None),
    ],
    schema={"source": pl.String, "record_id": pl.String, "participant_id": pl.String},
    orient="row",
)


def test_evaluation_counts_wrong_links_twice_and_any_link_of_an_excluded_person(tmp_path: Path):
    LINK_MAP.write_parquet(tmp_path / "link_map.parquet")
    PERSONS.write_parquet(tmp_path / "persons.parquet")
    (tmp_path / "truth").mkdir()
    TRUTH.write_parquet(tmp_path / "truth" / "record_links.parquet")
    ev = evaluate_against_truth(tmp_path / "link_map.parquet", tmp_path / "truth", tmp_path / "persons.parquet")
    rows = {(r["scope"], r["source"]): r for r in headline(ev).iter_rows(named=True)}

    sc = rows[("all", "social_care")]
    assert (sc["tp"], sc["fp"], sc["fn"]) == (2, 1, 2)  # S1, S2 right; S3 wrong (fp + fn); S4 missed
    assert sc["precision"] == pytest.approx(2 / 3) and sc["recall"] == pytest.approx(0.5)
    gp = rows[("all", "gp_events")]
    assert (gp["tp"], gp["fp"], gp["fn"]) == (0, 1, 0)
    # The probabilistic scope: S3 (linked at P), S4 and S6 (left unlinked), G2 (probabilistic conflict).
    p = rows[("probabilistic", "all")]
    assert (p["records"], p["tp"], p["fp"], p["fn"]) == (4, 0, 1, 2)
    d = rows[("deterministic", "all")]
    assert d["records"] == 4  # S1, S2, S5 (a deterministic conflict) and G1
    by_sex = ev.filter((pl.col("scope") == "all") & (pl.col("source") == "social_care") & (pl.col("breakdown") == "sex"))
    assert dict(zip(by_sex.get_column("category"), by_sex.get_column("tp"), strict=True)) == {"F": 2, "M": 0}


def test_tallies_of_any_split_of_the_records_add_up_to_the_report_of_the_whole(guild):
    """The link stage tallies each window of rows as it writes it (pipeline.link.stage): the report
    from the tallies of pieces must be the report of the whole link map, to the last count."""
    from pipeline.link.quality import PARTICIPANT, add_tallies, person_groups, quality_report, tally

    rows = LINK_MAP.join(RECORDS, on=["source", "record_id"]).rename({"participant_id": PARTICIPANT})
    tallies = [tally(rows.slice(start, length).lazy(), facts=True) for start, length in ((0, 3), (3, 1), (4, 4))]
    categories = add_tallies([c.collect() for c, _ in tallies])
    participants = add_tallies([p.collect() for _, p in tallies])
    groups = person_groups(PERSONS.lazy()).rename({"participant_id": PARTICIPANT})
    assert quality_report(categories, participants, groups, PERSONS.height).equals(guild)
