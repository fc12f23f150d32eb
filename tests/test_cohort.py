"""Spec tests for the cohort stage: small written-out tables, the expected result beside them.

Service use by period and month, de-duplication, eligibility, the EQ-5D index, matched sets in long
form, and the release contracts' promises to economists (every column documented, no free text).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.cohort.covariates import covariate_names
from pipeline.cohort.eligibility import eligible_persons
from pipeline.cohort.love_plot import draw_love_plot
from pipeline.cohort.matching import match_nearest
from pipeline.cohort.outcomes import with_eq5d_index
from pipeline.cohort.outputs import RELEASE_TABLES
from pipeline.cohort.panel import person_month_panel
from pipeline.cohort.samples import SampleMatch
from pipeline.cohort.service_use import SERVICE_TYPES, exact_sum, month_windows, service_use
from pipeline.cohort.stage import with_main_sample
from pipeline.contracts import load_contract, render_dictionary_markdown
from pipeline.costs import ALL_PROFILES, DEFAULT_VALUE_SET, read_value_set
from pipeline.errors import ContractError
from pipeline.settings import MatchingOptions

D = dt.date
INDEX = D(2024, 1, 1)
EXTRACT = D(2026, 3, 31)
COSTS = pl.LazyFrame({"service_type": list(SERVICE_TYPES), "unit_cost_gbp": [10.0] * len(SERVICE_TYPES)})


def day(n: int) -> dt.date:
    """The date n days after the index date."""
    return INDEX + dt.timedelta(days=n)


def events(apc=(), ae=(), op=(), gp=(), sc=()) -> dict[str, pl.LazyFrame]:
    """Linked payloads of participant P1 (and whoever a row names), one tuple per record, from a
    provider whose code is not recorded."""
    frames = {
        "hospital_apc": pl.LazyFrame(list(apc), schema={"participant_id": pl.String, "admission_date": pl.Date, "discharge_date": pl.Date, "admission_method": pl.String}, orient="row"),
        "hospital_ae": pl.LazyFrame(list(ae), schema={"participant_id": pl.String, "arrival_date": pl.Date, "department_type": pl.String}, orient="row"),
        "hospital_op": pl.LazyFrame(list(op), schema={"participant_id": pl.String, "appointment_date": pl.Date, "attendance_type": pl.String, "attended": pl.Boolean}, orient="row"),
        "gp_events": pl.LazyFrame(list(gp), schema={"participant_id": pl.String, "event_date": pl.Date, "consultation_type": pl.String, "staff_role": pl.String}, orient="row"),
        "social_care": pl.LazyFrame(list(sc), schema={"participant_id": pl.String, "service_type": pl.String, "start_date": pl.Date, "end_date": pl.Date, "hours_per_week": pl.Float64}, orient="row"),
    }
    return {s: f.with_columns(pl.lit(None, pl.String).alias("provider_code")) for s, f in frames.items()}


PERSONS = pl.LazyFrame({"participant_id": ["P1", "P2"], "index_date": [INDEX, INDEX]})


def units(ev, kind: str, period: str, who: str = "P1") -> float:
    use = service_use(ev, PERSONS, COSTS, EXTRACT).collect()
    return use.filter((pl.col("participant_id") == who) & (pl.col("service_type") == kind) & (pl.col("period") == period)).get_column("units").item()


# ---------------------------------------------------------------------------------------------------
# Service use by period


def test_period_edges_are_365_days_either_side_of_the_index_date():
    ev = events(
        ae=[
            ("P1", day(-366), "01"),  # before pre_12m: not counted
            ("P1", day(-365), "01"),  # first day of pre_12m
            ("P1", day(-1), "01"),  # last day of pre_12m
            ("P1", day(0), "01"),  # index date: first day of post_12m
            ("P1", day(364), "01"),  # last day of post_12m
            ("P1", day(365), "01"),  # after: not counted
        ]
    )
    assert units(ev, "ae_attendance", "pre_12m") == 2
    assert units(ev, "ae_attendance", "post_12m") == 2


def test_an_admission_and_all_its_bed_days_count_to_the_period_it_started_in():
    ev = events(
        apc=[
            ("P1", day(-3), day(7), "21"),  # emergency, 10 bed days, started before index
            ("P1", day(10), day(10), "11"),  # elective day case, 0 bed days
            ("P1", day(20), None, "81"),  # other, still in hospital at the extract
        ]
    )
    assert units(ev, "emergency_admission", "pre_12m") == 1 and units(ev, "bed_day", "pre_12m") == 10
    assert units(ev, "elective_admission", "post_12m") == 1 and units(ev, "other_admission", "post_12m") == 1
    assert units(ev, "bed_day", "post_12m") == (EXTRACT - day(20)).days


def test_records_delivered_twice_count_once_but_the_same_event_of_two_people_counts_for_both():
    admission = (day(5), day(8), "21")
    ev = events(apc=[("P1", *admission), ("P1", *admission), ("P2", *admission)])
    assert units(ev, "emergency_admission", "post_12m", "P1") == 1
    assert units(ev, "emergency_admission", "post_12m", "P2") == 1


def test_gp_outpatient_and_did_not_attend():
    ev = events(
        op=[("P1", day(1), "first", True), ("P1", day(2), "follow_up", False)],
        gp=[("P1", day(1), "telephone", "gp"), ("P1", day(2), "surgery", "nurse"), ("P1", day(3), "surgery", "other")],
    )
    assert units(ev, "outpatient_first", "post_12m") == 1 and units(ev, "outpatient_follow_up", "post_12m") == 0
    assert units(ev, "gp_telephone", "post_12m") == 1 and units(ev, "nurse_consultation", "post_12m") == 2


def test_a_social_care_episode_is_split_by_the_days_it_overlaps_each_period():
    # Home care 14 hours a week from day -7 to day 6 inclusive: 7 days in each period, so 14 hours each.
    # Residential care from day 358 to the extract: 7 days (one week) of post_12m.
    ev = events(sc=[("P1", "home_care", day(-7), day(6), 14.0), ("P1", "residential", day(358), None, None)])
    assert units(ev, "home_care_hour", "pre_12m") == pytest.approx(14.0)
    assert units(ev, "home_care_hour", "post_12m") == pytest.approx(14.0)
    assert units(ev, "residential_week", "post_12m") == pytest.approx(1.0)


def test_every_participant_has_every_period_and_service_type_with_costs():
    use = service_use(events(), PERSONS, COSTS, EXTRACT).collect()
    assert use.height == 2 * 2 * len(SERVICE_TYPES)
    assert use.get_column("units").sum() == 0 and use.get_column("cost_gbp").sum() == 0


def test_sums_do_not_depend_on_the_order_of_the_rows():
    # In floats, (0.1 + 0.2) + 0.3 != 0.1 + (0.2 + 0.3): a parallel group-by could give either.
    values = [0.1, 0.2, 0.3, 1 / 3, 2 / 7, 1e6 / 7]
    sums = {
        pl.DataFrame({"g": [1] * 6, "x": order}).group_by("g").agg(exact_sum(pl.col("x"))).item(0, "x")
        for order in (values, values[::-1], sorted(values), values[3:] + values[:3])
    }
    assert len(sums) == 1 and sums.pop() == pytest.approx(sum(values))


# ---------------------------------------------------------------------------------------------------
# Monthly panel


def test_months_split_the_two_years_exactly():
    """Pioneer's panel (12 months each side) splits its two 12-month periods day for day."""
    windows = month_windows()
    days = [d for w in windows for d in range(w.first, w.last + 1)]
    assert days == list(range(-365, 365))
    assert {w.last - w.first + 1 for w in windows} == {30, 31}
    assert [int(w.label) for w in windows] == list(range(-12, 12))


def test_six_month_periods_are_split_by_the_first_six_months():
    """A study of 6-month periods (studies/three_rivers.yaml): months -6..5 split its periods day for day."""
    from pipeline.cohort.service_use import period_windows
    from pipeline.study import STUDIES_DIR, load_study

    study = load_study(STUDIES_DIR / "three_rivers.yaml")
    pre, post = period_windows(study)
    assert (pre.label, pre.first, pre.last, post.label, post.first, post.last) == ("pre_6m", -182, -1, "post_6m", 0, 182)
    days = [d for w in month_windows(study) for d in range(w.first, w.last + 1)]
    assert days == list(range(-182, 183))


def test_panel_months_add_up_to_the_12_month_periods():
    ev = events(
        apc=[("P1", day(-200), day(-190), "22"), ("P1", day(30), day(33), "21")],
        ae=[("P1", day(-1), "01"), ("P1", day(0), "01"), ("P1", day(31), "01")],
        sc=[("P1", "home_care", day(-40), day(40), 10.0)],
    )
    panel = person_month_panel(ev, PERSONS, COSTS, EXTRACT).collect()
    assert panel.height == 2 * 24
    p1 = panel.filter(pl.col("participant_id") == "P1")
    month = dict(zip(p1.get_column("month").to_list(), p1.get_column("ae_attendance").to_list(), strict=True))
    assert month[-1] == 1 and month[0] == 1 and month[1] == 1  # day 30 is month 0, day 31 month 1
    assert p1.filter(pl.col("month") == 0).get_column("emergency_admission").item() == 1
    use = service_use(ev, PERSONS, COSTS, EXTRACT).collect().filter(pl.col("participant_id") == "P1")
    for kind in SERVICE_TYPES:
        for period, post in (("pre_12m", False), ("post_12m", True)):
            expected = use.filter((pl.col("service_type") == kind) & (pl.col("period") == period)).get_column("units").item()
            assert p1.filter(pl.col("post") == post).get_column(kind).sum() == pytest.approx(expected), (kind, period)
    assert p1.get_column("cost_gbp").sum() == pytest.approx(use.get_column("cost_gbp").sum())
    assert p1.select(pl.sum_horizontal("hospital_cost_gbp", "primary_care_cost_gbp", "social_care_cost_gbp").sum()).item() == pytest.approx(
        p1.get_column("cost_gbp").sum()
    )


# ---------------------------------------------------------------------------------------------------
# Eligibility


def test_each_eligibility_rule_excludes_one_person_and_is_counted():
    persons = pl.DataFrame(
        {
            "participant_id": ["P1", "P2", "P3", "P4", "P5", "P6"],
            "arm": ["mdt", "comparator", "mdt", "mdt", "comparator", "comparator"],
            "age_at_index": [70, 70, 54, 70, 70, 70],
            "index_date": [INDEX, INDEX, INDEX, INDEX, D(2020, 1, 1), D(2025, 6, 1)],
        }
    )
    baseline = pl.DataFrame({"participant_id": ["P1", "P3", "P4", "P5", "P6"], "n_ltc": [2, 3, 1, 3, 3]})
    # P2 has no baseline survey, P3 is 54, P4 has one condition, P5's index is before the study
    # window, P6's 12 months of follow-up end after the extract date.
    eligible, counts = eligible_persons(persons, baseline, D(2021, 4, 1), D(2026, 3, 31), D(2026, 3, 31))
    assert eligible.get_column("participant_id").to_list() == ["P1"]
    assert counts == {
        "consented_participants": 6, "with_baseline_survey": 5, "aged_55_plus": 4, "with_2plus_conditions": 3,
        "index_in_study_window": 2, "complete_followup": 1, "eligible": 1, "eligible_mdt": 1, "eligible_comparator": 0,
    }  # fmt: skip


def test_follow_up_ending_on_the_extract_date_is_complete():
    persons = pl.DataFrame({"participant_id": ["P1"], "arm": ["mdt"], "age_at_index": [60], "index_date": [D(2025, 4, 1)]})
    baseline = pl.DataFrame({"participant_id": ["P1"], "n_ltc": [2]})
    eligible, _ = eligible_persons(persons, baseline, D(2021, 4, 1), D(2026, 3, 31), D(2026, 3, 31))  # day 364 = 2026-03-31
    assert eligible.height == 1


# ---------------------------------------------------------------------------------------------------
# EQ-5D index


def index_of(profiles: list[str], value_set) -> list[float | None]:
    dims = ["eq5d_mobility", "eq5d_selfcare", "eq5d_usual", "eq5d_pain", "eq5d_anxiety"]
    rows = [{d: (int(p[i]) if p[i] != "." else None) for i, d in enumerate(dims)} for p in profiles]
    return with_eq5d_index(pl.LazyFrame(rows, schema={d: pl.Int8 for d in dims}), value_set).collect().get_column("eq5d_index").to_list()


def test_england_value_set_index_by_hand():
    vs = read_value_set(DEFAULT_VALUE_SET)
    # 21341: MO2 0.058 + UA3 0.063 + PD4 0.276 = 0.397 from full health. A missing dimension: no index.
    got = index_of(["11111", "55555", "21341", "1.111"], vs)
    assert got[:3] == pytest.approx([1.0, -0.285, 0.603]) and got[3] is None
    assert vs.name == "england_5l_devlin_2018" and vs.values.height == 3125


def test_a_profile_table_can_replace_the_value_set(tmp_path: Path):
    path = tmp_path / "crosswalk.csv"
    pl.DataFrame({"profile": list(ALL_PROFILES), "value": [0.5] * 3124 + [-0.1]}).write_csv(path)
    assert index_of(["12345", "55555"], read_value_set(path)) == [0.5, -0.1]


def test_an_incomplete_value_set_is_refused_with_what_to_do(tmp_path: Path):
    path = tmp_path / "vs.csv"
    pl.read_csv(DEFAULT_VALUE_SET).head(24).write_csv(path)
    with pytest.raises(ContractError, match="exactly one row for each"):
        read_value_set(path)
    pl.DataFrame({"profile": ["11111"], "value": [1.0]}).write_csv(path)
    with pytest.raises(ContractError, match="3,125"):
        read_value_set(path)


# ---------------------------------------------------------------------------------------------------
# Matched sets in long form


def sample_match(logit, treated, options) -> SampleMatch:
    result = match_nearest(np.array(logit), np.array(treated), np.zeros(len(logit), dtype=int), options)
    ids = pl.Series([f"P{i}" for i in range(len(logit))])
    arm = pl.Series(["mdt" if t else "comparator" for t in treated])
    return SampleMatch("all", ids, arm, np.array(treated), np.array(logit), result, pl.DataFrame())


def test_with_replacement_a_comparator_appears_once_per_set_in_matches_and_first_in_cohort():
    #             P0    P1    P2    P3
    m = sample_match([0.50, 0.51, 0.49, 0.40], [True, True, False, False], MatchingOptions(ratio=2, replace=True, caliper=10))
    rows = m.matches().select("participant_id", "matched_set", "arm", "weight").rows()
    # Set 1 is P1 (largest score) with P2 and P3; set 2 is P0 with P2 and P3: both comparators serve twice.
    assert rows == [
        ("P1", 1, "mdt", 1.0), ("P2", 1, "comparator", 0.5), ("P3", 1, "comparator", 0.5),
        ("P0", 2, "mdt", 1.0), ("P2", 2, "comparator", 0.5), ("P3", 2, "comparator", 0.5),
    ]  # fmt: skip
    cohort = with_main_sample(pl.DataFrame({"participant_id": ["P0", "P1", "P2", "P3"]}), m)
    assert cohort.get_column("matched_set").to_list() == [2, 1, 1, 1]
    assert cohort.get_column("match_weight").to_list() == pytest.approx([1.0, 1.0, 1.0, 1.0])


def test_unmatched_participants_are_absent_from_matches_and_weightless_in_cohort():
    m = sample_match([0.0, 0.1, 3.0], [True, False, True], MatchingOptions(caliper=0.2))
    assert m.matches().get_column("participant_id").to_list() == ["P0", "P1"]
    cohort = with_main_sample(pl.DataFrame({"participant_id": ["P0", "P1", "P2"]}), m)
    assert cohort.select("matched", "matched_set", "match_weight").rows() == [(True, 1, 1.0), (True, 1, 1.0), (False, None, 0.0)]


# ---------------------------------------------------------------------------------------------------
# The release contracts


def test_release_tables_have_release_contracts_and_no_free_text():
    for table in RELEASE_TABLES:
        contract = load_contract(table)
        assert contract.zone == "release"
        # Person-level tables carry the release's study ID; balance and estimates are the aggregate tables.
        assert ("study_id" in contract.column_names) == (table not in ("balance", "estimates"))
        for c in contract.columns:
            if c.type == "string":
                assert c.allowed is not None or c.pattern is not None or dict(c.study_refs).get("allowed"), f"{table}.{c.name} would allow free text"


def test_sample_and_covariate_names_are_the_study_values_the_contracts_name():
    from pipeline.contracts import study_contract
    from pipeline.study import load_study

    study = load_study()
    for table in ("matches", "balance", "estimates"):
        assert load_contract(table).column("sample").study_refs == (("allowed", "samples"),)
        assert study_contract(table, study).column("sample").allowed == study.sample_names
    assert study_contract("balance", study).column("covariate").allowed == covariate_names(study)
    assert "all" in study.sample_names and f"site={study.sites[0]}" in study.sample_names


def test_every_released_column_is_in_the_data_dictionary_with_type_and_description():
    contracts = [load_contract(t) for t in RELEASE_TABLES]
    text = render_dictionary_markdown(contracts)
    for ct in contracts:
        for c in ct.columns:
            assert f"| `{c.name}` | {c.type} |" in text and c.description in text


def test_panel_has_a_units_column_per_service_type():
    assert set(SERVICE_TYPES) <= set(load_contract("panel").column_names)


def test_love_plot_is_the_same_bytes_every_time(tmp_path: Path):
    balance = pl.DataFrame(
        {
            "sample": ["all", "all", "site=north"],
            "covariate": ["age_at_index", "n_ltc", "age_at_index"],
            "covariate_type": ["continuous"] * 3,
            "smd_before": [0.4, -0.3, 0.5],
            "smd_after": [0.02, 0.05, -0.01],
            "variance_ratio_before": [1.1, 1.2, 1.0],
            "variance_ratio_after": [1.0, 1.0, 1.0],
        }
    )
    a = draw_love_plot(balance, covariate_names(), tmp_path / "a.png").read_bytes()
    b = draw_love_plot(balance, covariate_names(), tmp_path / "b.png").read_bytes()
    assert a == b and a[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("over_in", ["all", "site=north", None])
def test_the_love_plots_legend_names_every_marker_any_panel_draws(tmp_path: Path, monkeypatch, over_in):
    """The legend is on the first panel; the red triangle (after matching, above the threshold) must
    be in it whenever any panel draws one, not only when the first panel does."""
    import matplotlib.pyplot as plt

    balance = pl.DataFrame(
        {
            "sample": ["all", "all", "site=north", "site=north"],
            "covariate": ["age_at_index", "n_ltc", "age_at_index", "n_ltc"],
            "covariate_type": ["continuous"] * 4,
            "smd_before": [0.4, -0.3, 0.5, 0.2],
            "smd_after": [0.3 if over_in == "all" else 0.02, 0.05, -0.3 if over_in == "site=north" else 0.01, 0.0],
            "variance_ratio_before": [1.1, 1.2, 1.0, 1.0],
            "variance_ratio_after": [1.0, 1.0, 1.0, 1.0],
        }
    )
    drawn = []
    monkeypatch.setattr(plt, "close", drawn.append)
    draw_love_plot(balance, covariate_names(), tmp_path / "plot.png")
    (figure,) = drawn
    legend = figure.axes[0].get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    monkeypatch.undo()
    plt.close(figure)
    assert labels == ["before", "after"] + ([] if over_in is None else ["after, above 0.1"])


def test_love_plot_orders_covariates_by_unadjusted_smd_of_the_first_sample():
    from pipeline.cohort.love_plot import covariate_order

    balance = pl.DataFrame(
        {
            "sample": ["all", "all", "all", "site=site_a"],
            "covariate": ["age_at_index", "n_ltc", "sex=F", "n_ltc"],
            "smd_before": [0.1, -0.6, 0.3, 0.0],
        }
    )
    assert covariate_order(balance, covariate_names()) == ["n_ltc", "sex=F", "age_at_index"]


def test_love_plot_titles_use_the_tables_sample_names_and_flag_an_unbalanced_sample():
    from pipeline.cohort.love_plot import _title

    assert _title("site=site_a", None) == "site=site_a"
    facts = {"matched_mdt": 120, "matched_comparators": None, "balanced": False, "attempts": 5}
    assert _title("site=site_a", facts) == "site=site_a\nmatched 120 MDT : 1-7 comp.\nNOT BALANCED after 5 attempts"


def test_the_panel_built_in_ranges_of_participants_is_byte_for_byte_the_panel_built_whole(tmp_path: Path, monkeypatch):
    """Issue 19: build_cohort builds the monthly panel a range of participants at a time (events split
    once into the ranges); the file is the one the whole study gives."""
    import pipeline.cohort.stage as stage
    from pipeline.settings import RunConfig

    people = [f"P{i}" for i in range(1, 10)]
    ev = events(
        apc=[(p, day(-30 * i), day(-30 * i + 3), "21") for i, p in enumerate(people)],
        ae=[(p, day(5 * i), "01") for i, p in enumerate(people) for _ in range(2)],
        gp=[(p, day(40 * i - 300), "surgery", "gp") for i, p in enumerate(people)],
        sc=[("P3", "home_care", day(-40), day(40), 10.0)],
    )
    eligible = pl.DataFrame({"participant_id": people[::-1], "index_date": [INDEX] * len(people)})
    cohort = pl.DataFrame(
        {"participant_id": people, "arm": ["mdt", "usual_care"] * 4 + ["mdt"], "matched_set": [1, 1, 2, 2, 3, 3, 4, 4, None], "match_weight": [1.0] * 8 + [0.0]},
        schema_overrides={"matched_set": pl.Int32},
    )
    cfg = RunConfig.from_conf({"raw_dir": str(tmp_path), "work_dir": str(tmp_path), "release_label": "r", "extract_date": EXTRACT.isoformat()})
    stage._sink_panel(ev, eligible, cohort, COSTS, cfg, tmp_path / "w1", tmp_path / "whole.parquet")
    monkeypatch.setattr(stage, "PANEL_PIECE_PEOPLE", 2)
    monkeypatch.setattr(stage, "SPLIT_WINDOW_ROWS", 3)
    stage._sink_panel(ev, eligible, cohort, COSTS, cfg, tmp_path / "w2", tmp_path / "ranges.parquet")
    assert (tmp_path / "whole.parquet").read_bytes() == (tmp_path / "ranges.parquet").read_bytes()
    panel = pl.read_parquet(tmp_path / "ranges.parquet")
    assert panel.height == 9 * 24 and panel.get_column("participant_id").unique().len() == 9
    assert not (tmp_path / "w2" / "panel_ranges").exists()
