"""A provider going dark (issue 17): the linkage rate by provider and month, and its drift flag.

Spec tests of the rule (pipeline.link.drift) on cells written out by hand, then the real thing: the
`provider_blackout` synthetic profile (one trust's records marked anonymous for a year) through the
real pseudonymise and link stages must raise the flag for that trust and exactly those months, and
the session's realistic reference run (tests/conftest.py) must raise none.
"""

from __future__ import annotations

import polars as pl
import pytest

from pipeline import io
from pipeline.link.drift import ALPHA, DROP_RATIO, MIN_NORM_MONTHS, MIN_RECORDS, flag_drift

MONTHS = [f"2024-{m:02d}" for m in range(1, 13)]


def cells(linked: list[int], records: int | list[int] = 40, provider: str = "ZZ2001") -> pl.DataFrame:
    n = len(linked)
    recs = records if isinstance(records, list) else [records] * n
    return pl.DataFrame(
        {"source": ["gp_events"] * n, "provider_code": [provider] * n, "month": MONTHS[:n], "records": recs, "linked": linked}
    )


def flagged(frame: pl.DataFrame) -> list[str]:
    return flag_drift(frame).filter("flagged").get_column("month").to_list()


def test_months_that_stop_linking_are_flagged_and_the_others_are_not():
    #                 Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec
    assert flagged(cells([24, 25, 23, 24, 0, 0, 0, 24, 25, 23, 24, 26])) == ["2024-05", "2024-06", "2024-07"]


def test_a_dip_that_chance_explains_or_that_is_not_a_halving_is_not_flagged():
    # 13 of 40 against a norm of 24 of 40: improbable (p < ALPHA) but not below half the norm.
    assert flagged(cells([24, 25, 23, 24, 13, 24, 25, 23, 24, 26, 24, 25])) == []
    # A small cell may halve by chance: 2 of 10 is below half of 60%, but not improbable enough.
    small = cells([24, 25, 23, 24, 2, 24, 25, 23, 24, 26, 24, 25], records=[40, 40, 40, 40, 10, 40, 40, 40, 40, 40, 40, 40])
    out = flag_drift(small).filter(pl.col("month") == "2024-05").row(0, named=True)
    assert out["tested"] and not out["flagged"] and out["p_value"] > ALPHA and 2 / 10 < DROP_RATIO * out["norm"]


def test_small_cells_and_providers_with_few_months_are_not_judged():
    few = cells([0] * 12, records=[MIN_RECORDS - 1] * 12)
    assert flag_drift(few).get_column("tested").to_list() == [False] * 12
    short = cells([24] * MIN_NORM_MONTHS)  # one month short of a norm from its other months
    assert flag_drift(short).get_column("norm").null_count() == MIN_NORM_MONTHS


def test_each_provider_is_judged_against_its_own_norm():
    # A provider that always links a fifth of its records is not flagged against another's 60%.
    frame = pl.concat([cells([24] * 12), cells([8] * 12, provider="ZZ2002")])
    assert flag_drift(frame).get_column("flagged").sum() == 0
    norms = flag_drift(frame).group_by("provider_code").agg(pl.col("norm").first()).sort("provider_code")
    assert norms.get_column("norm").to_list() == [0.6, 0.2]


@pytest.fixture(scope="module")
def blackout_run(tmp_path_factory):
    """The provider_blackout profile, 300 people, through the real pseudonymise and link stages (~20 s)."""
    import stage_runner

    from pipeline.settings import RunConfig
    from pipeline.synth.profiles import fault_rates
    from pipeline.zones import linkage_summary_file

    base = tmp_path_factory.mktemp("blackout")
    conf = stage_runner.new_run(base, "blackout-1", persons=300, seed=29, profile="provider_blackout")
    stage_runner.run_steps(conf, last="pseudonymise_source:social_care")
    stage_runner.run_step(conf, "link")
    summary = io.read_json(linkage_summary_file(RunConfig.from_conf(conf)))
    return summary["quality"]["provider_month"], fault_rates("provider_blackout").provider_blackout


def test_the_blacked_out_provider_is_flagged_for_exactly_its_months(blackout_run):
    figures, blackout = blackout_run
    flags = figures["flagged"]
    months = set(blackout.month_labels())
    assert {(f["provider"], f["month"]) for f in flags} == {(blackout.provider, m) for m in months}
    # Outpatients, the trust's busiest extract, has every blacked-out month big enough to test;
    # the smaller hospital extracts flag the months they have enough records for, and nothing else.
    assert {f["month"] for f in flags if f["source"] == "hospital_op"} == months
    assert {f["source"] for f in flags} <= {"hospital_apc", "hospital_ae", "hospital_op"}
    assert all(f["linked"] == 0 for f in flags)


def test_the_realistic_reference_run_raises_no_flag(reference):
    manifest = io.read_json(reference.release / "manifest.json")
    figures = manifest["linkage"]["quality"]["provider_month"]
    assert figures["flagged"] == []
    # Not vacuous: the same rule judged this run's providers, each source with several of them.
    assert all(len(providers) >= 2 for providers in figures["sources"].values())
    assert sum(len(p["months"]) for providers in figures["sources"].values() for p in providers.values()) > 500
