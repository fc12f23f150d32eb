"""Disclosure control on every released byte (issue 14): the attacks, each written as a test.

- A released row-level table must not hold a combination of quasi-identifiers shared by fewer than
  `MIN_GROUP_SIZE` people (k-anonymity over all of a table's quasi-identifiers, a withheld value
  counting as its own category).
- A run whose policy is `block` is refused when it would release such a group, with a message naming
  the table, the columns and the fix.
- No count from 1 to 7 anywhere under releases/<label>/, the manifest included; the exact figures
  live in reports/<label>/figures.json only.
- The audit page (internal) shows the exact smallest group size.
- Two releases of the same data: different study IDs, and a propensity score that no longer picks out
  each person.

The session's `reference` run (tests/conftest.py) is read, never changed: runs that need other
settings start from a copy of its work folder as it was before `stage_release`.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from typing import Any

import polars as pl
import pytest

from pipeline import io
from pipeline.cohort.outputs import RELEASE_TABLES
from pipeline.contracts import load_contract
from pipeline.errors import PipelineError, ValidationFailed
from pipeline.publish import disclosure
from pipeline.publish.disclosure import MIN_GROUP_SIZE, SUPPRESSION_THRESHOLD
from pipeline.publish.release import stage_release, validate_release
from pipeline.settings import RunConfig

COHORT_QUASI_IDENTIFIERS = {"arm", "site", "operating_model", "age_band", "sex", "imd_quintile"}
# Release files that hold no count at all (reference tables and the dictionary); any other text file
# must be taught to this test before it can be released.
FILES_WITHOUT_COUNTS = {"data_dictionary.md", "data_dictionary.json", "unit_costs.csv", "eq5d_value_set.csv"}
# The signature (hashes, key, signature) and the per-run provenance (who, when, run ids) hold no count.
FILES_WITHOUT_COUNTS |= {"signature.json", "provenance.json"}


def quasi_identifiers(table: str) -> list[str]:
    return [c.name for c in load_contract(table).columns_of_class("quasi_identifier")]


def smallest_group(df: pl.DataFrame, columns: list[str]) -> int:
    """People in the smallest group sharing every value of `columns` (null is a value of its own)."""
    return int(df.group_by(columns).agg(pl.col("study_id").n_unique().alias("people")).get_column("people").min())


@pytest.fixture(scope="module")
def before_staging(reference, tmp_path_factory):
    """A fresh copy of the reference work folder as it was before stage_release, and a conf maker."""

    def make(label_suffix: str, **settings) -> RunConfig:
        work = tmp_path_factory.mktemp(f"disclosure-{label_suffix}") / "work"
        shutil.copytree(reference.snapshots["stage_release"], work, symlinks=True)
        return RunConfig.from_conf(reference.conf(work, **settings))

    return make


# ---------------------------------------------------------------------------------------------------
# (a) k-anonymity of the released row-level tables


def test_every_quasi_identifier_is_marked_in_the_release_contracts() -> None:
    assert set(quasi_identifiers("cohort")) == COHORT_QUASI_IDENTIFIERS
    assert quasi_identifiers("panel") == ["arm"]
    assert set(quasi_identifiers("matches")) == {"sample", "arm"}


def test_the_released_cohort_has_no_group_smaller_than_the_minimum(reference) -> None:
    for table in ("cohort", "panel", "matches"):
        df = pl.read_parquet(reference.release / f"{table}.parquet")
        assert smallest_group(df, quasi_identifiers(table)) >= MIN_GROUP_SIZE, table


def test_people_dropped_for_small_groups_are_gone_from_every_table(reference) -> None:
    cohort = set(pl.read_parquet(reference.release / "cohort.parquet").get_column("study_id"))
    for table in ("matches", "service_use", "panel", "outcomes"):
        ids = set(pl.read_parquet(reference.release / f"{table}.parquet").get_column("study_id"))
        assert ids <= cohort, table


def test_the_policy_is_recorded_in_the_manifest(reference) -> None:
    manifest = io.read_json(reference.release / "manifest.json")
    exact = io.read_json(reference.cfg.reports_dir / "figures.json")["manifest"]
    policy = manifest["disclosure_control"]["small_groups"]
    assert policy["policy"] == "suppress" and policy["min_group_size"] == MIN_GROUP_SIZE
    assert policy["withheld_order"] == list(disclosure.WITHHOLD_ORDER)
    for column, n in exact["disclosure_control"]["small_groups"]["withheld_values"].items():
        assert policy["withheld_values"][column] == disclosure.control_count(n)


# ---------------------------------------------------------------------------------------------------
# (b) `block` refuses


def test_a_planted_unique_person_is_refused_under_block(before_staging) -> None:
    cfg = before_staging("block", small_groups="block")
    stage_release(cfg)
    path = cfg.staging_dir / "cohort.parquet"
    first = pl.int_range(pl.len()) == 0
    planted = {"arm": "mdt", "site": "site_b", "operating_model": "virtual_ward", "age_band": "85+", "sex": "U", "imd_quintile": 1}
    df = pl.read_parquet(path)
    df.with_columns(pl.when(first).then(pl.lit(v)).otherwise(pl.col(k)).cast(df.schema[k]).alias(k) for k, v in planted.items()).write_parquet(path)
    with pytest.raises(ValidationFailed) as refused:
        validate_release(cfg)
    message = str(refused.value)
    assert not cfg.staging_dir.exists() and not cfg.release_dir.exists()
    line = next(x for x in message.splitlines() if "cohort.parquet" in x and "quasi-identifier groups" in x)
    assert "column arm, site, operating_model, age_band, sex, imd_quintile" in line
    assert f"fewer than {MIN_GROUP_SIZE} people" in line and "smallest: 1" in line
    assert "small_groups" in line and "suppress" in line and "coarsen" in line


def test_suppression_cannot_hide_a_group_from_the_check(before_staging) -> None:
    """A withheld (null) value is a category of its own: nulling a planted person's values under the
    default policy, after staging, still leaves a group of one, and publication is still refused."""
    cfg = before_staging("nulls")
    stage_release(cfg)
    path = cfg.staging_dir / "cohort.parquet"
    df = pl.read_parquet(path)
    first = pl.int_range(pl.len()) == 0
    planted = df.with_columns(
        pl.when(first).then(pl.lit("comparator")).otherwise(pl.col("arm")).alias("arm"),
        pl.when(first).then(pl.lit("virtual_ward")).otherwise(pl.col("operating_model")).alias("operating_model"),
        *(pl.when(first).then(None).otherwise(pl.col(c)).alias(c) for c in ("age_band", "sex", "imd_quintile")),
    )
    planted.write_parquet(path)
    with pytest.raises(ValidationFailed, match="quasi-identifier groups"):
        validate_release(cfg)


def test_an_unknown_policy_is_a_clear_error(reference, tmp_path) -> None:
    with pytest.raises(PipelineError, match=r"small_groups\) must be one of 'suppress', 'coarsen', 'block' \(got 'maybe'\)"):
        RunConfig.from_conf(reference.conf(tmp_path, small_groups="maybe"))


def test_coarsen_merges_age_bands_and_publishes(before_staging) -> None:
    cfg = before_staging("coarsen", small_groups="coarsen")
    stage_release(cfg)
    validate_release(cfg)
    cohort = pl.read_parquet(cfg.staging_dir / "cohort.parquet")
    assert set(cohort.get_column("age_band").drop_nulls()) <= {"55-74", "75+"}
    assert smallest_group(cohort, quasi_identifiers("cohort")) >= MIN_GROUP_SIZE
    manifest = io.read_json(cfg.staging_dir / "manifest.json")
    assert manifest["disclosure_control"]["small_groups"]["coarsened"]


# ---------------------------------------------------------------------------------------------------
# (c) no count from 1 to 7 anywhere in the release


def integers(value: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """Every (path, number) in a JSON document."""
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in integers(v, (*path, k))]
    if isinstance(value, list):
        return [x for i, v in enumerate(value) for x in integers(v, (*path, i))]
    return [(path, value)] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def test_no_count_from_1_to_7_anywhere_in_the_release(reference) -> None:
    release = reference.release
    manifest = io.read_json(release / "manifest.json")
    found = []
    for path, n in integers(manifest):
        if path[0] in disclosure.SETTINGS_SECTIONS or path[-1] in disclosure.NOT_A_COUNT_KEYS:
            continue  # settings, the study's design and thresholds, listed as such in pipeline.publish.disclosure
        if isinstance(n, float):
            found += [path] if path[-1] in disclosure.SHARE_KEYS else []
        elif 1 <= n <= SUPPRESSION_THRESHOLD or n % disclosure.ROUNDING_BASE:
            found.append(path)
    assert not found, f"uncontrolled figures in manifest.json: {found[:10]}"
    assert manifest["disclosure_control"]["not_a_count"] == sorted(disclosure.NOT_A_COUNT_KEYS)
    for f in sorted(release.iterdir()):
        if f.suffix == ".parquet":
            counts = disclosure.count_columns(f.stem)
            if counts:
                bad = pl.read_parquet(f).select(disclosure.uncontrolled_expr(c).sum() for c in counts).row(0)
                assert not any(bad), f.name
        elif f.suffix in (".json", ".md", ".csv") and f.name != "manifest.json":
            assert f.name in FILES_WITHOUT_COUNTS, f"{f.name}: a text file this test does not know holds no count"
    with open(release / "unit_costs.csv") as fh:
        assert "count" not in " ".join(next(csv.reader(fh))).lower()


def test_the_exact_figures_stay_in_reports(reference) -> None:
    manifest = io.read_json(reference.release / "manifest.json")
    exact = io.read_json(reference.cfg.reports_dir / "figures.json")
    assert exact["manifest_sha256"] == io.sha256_file(reference.release / "manifest.json")
    assert disclosure.control_manifest(exact["manifest"]) == manifest
    # The exact figures do hold small counts (otherwise this test would prove nothing).
    assert any(1 <= n <= SUPPRESSION_THRESHOLD for p, n in integers(exact["manifest"]) if isinstance(n, int) and p[0] != "settings")


# ---------------------------------------------------------------------------------------------------
# (d) the audit page shows the exact smallest group


def test_the_audit_page_shows_the_exact_smallest_group(reference) -> None:
    page = (reference.cfg.reports_dir / "audit.html").read_text()
    exact = io.read_json(reference.cfg.reports_dir / "figures.json")["manifest"]["privacy"]["quasi_identifiers"]
    assert set(exact) >= {"cohort", "panel", "matches"}
    for table, q in exact.items():
        path = json.dumps([["privacy", "quasi_identifiers", table, "smallest_group"]])
        cell = re.search(r"data-exact-figure='" + re.escape(path.replace('"', "&quot;")) + r"'>([^<]*)<", page)
        assert cell, table
        assert cell.group(1) == str(q["smallest_group"]) and q["smallest_group"] >= MIN_GROUP_SIZE


# ---------------------------------------------------------------------------------------------------
# (e) two releases of the same data


@pytest.fixture(scope="module")
def second_label(reference, tmp_path_factory) -> RunConfig:
    import stage_runner

    conf = reference.conf(tmp_path_factory.mktemp("second-label") / "work", label="ref-2")
    stage_runner.run_steps(conf)
    return RunConfig.from_conf(conf)


def test_two_releases_of_the_same_data_cannot_be_joined_on_ids_or_propensity_scores(reference, second_label) -> None:
    a = pl.read_parquet(reference.release / "cohort.parquet")
    b = pl.read_parquet(second_label.release_dir / "cohort.parquet")
    assert a.height == b.height > 50
    assert not set(a.get_column("study_id")) & set(b.get_column("study_id"))
    # Before coarsening every person's propensity score was unique, so a join on it re-linked everyone.
    unique_in_both = (
        a.group_by("propensity_score").len().filter(pl.col("len") == 1)
        .join(b.group_by("propensity_score").len().filter(pl.col("len") == 1), on="propensity_score")
    )  # fmt: skip
    assert unique_in_both.height < a.height / 2
    # Coarsening reduces this risk, it does not remove it (docs/economists.md says so): the baseline
    # covariates of a person are still the same in both releases.


def test_continuous_values_are_released_at_their_documented_precision(reference) -> None:
    for table in RELEASE_TABLES:
        precision = disclosure.declared_precision(table)
        if not precision:
            continue
        df = pl.read_parquet(reference.release / f"{table}.parquet")
        for column, rule in precision.items():
            assert df.select(disclosure.imprecise_expr(column, rule).sum()).item() == 0, (table, column)
            assert disclosure.precision_text(rule) in load_contract(table).column(column).description, (table, column)
    cost = pl.read_parquet(reference.release / "service_use.parquet").get_column("cost_gbp")
    assert (cost % 10 == 0).all() and cost.sum() > 0
