"""Governance: a release with an identifier column, an NHS number, a name, a study ID that is a
token or a failed critical expectation is refused with a message naming file, column and rule, and
leaves nothing behind; `pipeline audit` flags a published release that was altered afterwards.

One realistic synthetic run (the pipeline's tasks called in order, without Airflow) is built once;
each test stages the release again, tampers with the staged files, and validates.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import polars as pl
import pytest
from conftest import RETAIN

from pipeline import io
from pipeline.cohort.outputs import RELEASE_TABLES
from pipeline.contracts import load_contract
from pipeline.errors import ValidationFailed
from pipeline.publish import disclosure, privacy
from pipeline.publish.audit import audit_release, main_audit
from pipeline.publish.privacy import (
    AWAITING_CONTRACT_CONSTRAINT,
    RULES,
    assess_release_privacy,
    is_strict_pattern,
)
from pipeline.publish.release import publish_release, stage_release, validate_release
from pipeline.settings import RunConfig
from pipeline.zones import records_path

LABEL = "gov-1"
NHS_NUMBER = "9990000018"  # test range, passes Modulus 11: must never appear in a message


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> RunConfig:
    """A run built up to the cohort stage; nothing staged or published yet."""
    import stage_runner

    conf = {**stage_runner.new_run(tmp_path_factory.mktemp("governance"), LABEL, persons=400, seed=23), **RETAIN}
    stage_runner.run_steps(conf, last="build_cohort")
    return RunConfig.from_conf(conf)


@pytest.fixture(scope="module")
def published(cfg: RunConfig) -> dict[str, str]:
    """Publish the untampered release once; return each file's hash, to prove later refusals leave it alone."""
    stage_release(cfg)
    validate_release(cfg)
    publish_release(cfg)
    return {p.name: io.sha256_file(p) for p in cfg.release_dir.iterdir()}


def trusted(cfg: RunConfig):
    """The publishing key the governance officer trusts: the public half of the run's publishing key."""
    import stage_runner

    return stage_runner.trusted(cfg.to_conf())


def audit_args(copy: Path, cfg: RunConfig) -> argparse.Namespace:
    """`pipeline audit COPY --public-key <the run's FILE.pub>`, as parsed."""
    return argparse.Namespace(release_dir=str(copy), public_key=f"{cfg.publishing_key_file}.pub", fingerprint=None, log=None)


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: io.sha256_file(p) for p in folder.iterdir()}


def tamper(cfg: RunConfig, table: str, change) -> None:
    """Rewrite one staged table through `change(frame) -> frame`, as a buggy or malicious step would."""
    path = cfg.staging_dir / f"{table}.parquet"
    change(pl.read_parquet(path)).write_parquet(path)


def refused(cfg: RunConfig, published: dict[str, str]) -> str:
    """Validate the staged release, expect refusal, check nothing is left behind; return the message."""
    with pytest.raises(ValidationFailed) as failed:
        validate_release(cfg)
    assert not cfg.staging_dir.exists(), "a refused release must not stay staged"
    assert hashes(cfg.release_dir) == published, "a refused run must leave the published release untouched"
    assert not list(cfg.release_dir.parent.glob(".staging-*"))
    message = str(failed.value)
    assert f"Release {LABEL!r} refused" in message and NHS_NUMBER not in message
    return message


# ---------------------------------------------------------------------------------------------------
# Publication refuses


def test_the_clean_release_is_published_with_its_privacy_record(cfg, published) -> None:
    manifest = io.read_json(cfg.release_dir / "manifest.json")
    results = {r["rule"]: r["result"] for r in manifest["privacy"]["rules"]}
    assert set(results) == set(RULES) and "failed" not in results.values()
    assert results["study IDs are not tokens"] == "passed"  # checked against the pseudonymised tokens
    assert manifest["privacy"]["quasi_identifiers"]["cohort"]["columns"] == ["arm", "site", "operating_model", "age_band", "sex", "imd_quintile"]
    assert manifest["disclosure_control"]["suppression_threshold"] == disclosure.SUPPRESSION_THRESHOLD
    assert set(manifest["validation"]) == {"raw", "pseudonymised", "linked", "release"}
    assert (cfg.reports_dir / "audit.html").is_file() and (cfg.reports_dir / "privacy.json").is_file()
    assert audit_release(cfg.release_dir, trusted(cfg)) == []


def test_an_identifier_column_is_refused(cfg, published) -> None:
    stage_release(cfg)
    tamper(cfg, "cohort", lambda df: df.with_columns(nhs_number=pl.lit(NHS_NUMBER)))
    message = refused(cfg, published)
    assert "cohort.parquet, column nhs_number: rule 'no identifier or token column' broken" in message
    assert "cohort.parquet, column nhs_number: rule 'no NHS-number-like value' broken" in message
    # Great Expectations reports it too, naming dataset, column list and expectation.
    assert "dataset cohort" in message and "expect_table_columns_to_match_ordered_list" in message


FIRST_ROW = pl.int_range(pl.len()) == 0
NHS_INJECTIONS = {
    # column: (new column expression, what the privacy message says)
    "site": (
        pl.when(FIRST_ROW).then(pl.lit(f"ref {NHS_NUMBER[:3]} {NHS_NUMBER[3:6]} {NHS_NUMBER[6:]}")).otherwise(pl.col("site")),
        "1 value(s) hold a valid NHS number",
    ),
    "baseline_cost_gbp": (
        pl.when(FIRST_ROW).then(pl.lit(float(NHS_NUMBER))).otherwise(pl.col("baseline_cost_gbp")),
        "1 value(s) are a valid NHS number stored as a number",
    ),
}


@pytest.mark.parametrize("column", list(NHS_INJECTIONS))
def test_an_nhs_number_value_is_refused(cfg, published, column) -> None:
    expr, detail = NHS_INJECTIONS[column]
    stage_release(cfg)
    tamper(cfg, "cohort", lambda df: df.with_columns(expr.alias(column)))
    message = refused(cfg, published)
    assert f"cohort.parquet, column {column}: rule 'no NHS-number-like value' broken: {detail}" in message
    assert NHS_NUMBER[6:] not in message


def test_a_name_in_a_string_column_is_refused(cfg, published) -> None:
    stage_release(cfg)
    name = pl.when(pl.int_range(pl.len()) < 2).then(pl.lit("QUENTINA")).otherwise(pl.col("sex"))
    tamper(cfg, "cohort", lambda df: df.with_columns(name.alias("sex")))
    message = refused(cfg, published)
    rule = "cohort.parquet, column sex: rule 'string values as the contract allows' broken"
    assert f"{rule}: 2 value(s) are not among the contract's allowed values" in message
    assert "expect_column_values_to_be_in_set" in message and "QUENTINA" not in message


def test_a_study_id_that_is_a_token_is_refused(cfg, published) -> None:
    token = pl.read_parquet(cfg.pseudonymised_dir / "persons.parquet", columns=["tok_nhs"]).get_column("tok_nhs").drop_nulls()[0]
    stage_release(cfg)
    tamper(cfg, "cohort", lambda df: df.with_columns(pl.when(FIRST_ROW).then(pl.lit(token)).otherwise(pl.col("study_id")).alias("study_id")))
    message = refused(cfg, published)
    assert "persons.parquet, column tok_nhs: rule 'study IDs are not tokens' broken: 1 study ID(s)" in message
    assert "cohort.parquet, column study_id: rule 'study IDs well-formed and unique' broken" in message
    assert token not in message


def test_a_study_id_that_is_a_near_miss_token_is_refused(cfg, published) -> None:
    # Token spec v3's near-miss columns are lists: every element is checked, not the list as a whole.
    column = pl.read_parquet(cfg.pseudonymised_dir / "persons.parquet", columns=["tok_surname_near"]).get_column("tok_surname_near")
    token = column.drop_nulls()[0][-1]
    stage_release(cfg)
    tamper(cfg, "cohort", lambda df: df.with_columns(pl.when(FIRST_ROW).then(pl.lit(token)).otherwise(pl.col("study_id")).alias("study_id")))
    message = refused(cfg, published)
    assert "persons.parquet, column tok_surname_near: rule 'study IDs are not tokens' broken: 1 study ID(s)" in message
    assert token not in message


def test_a_study_id_that_is_a_record_token_or_a_block_number_is_refused(cfg, published) -> None:
    # Each token column is read only for study IDs of its shape (its contract's pattern; digits for a
    # block number): these have the shapes of the record tokens and of the token blocks' numbers.
    record = pl.read_parquet(records_path(cfg.pseudonymised_dir, "gp_events"), columns=["record_id"]).get_column("record_id")[0]
    stage_release(cfg)
    ids = pl.int_range(pl.len())
    swapped = pl.when(ids == 0).then(pl.lit(record)).when(ids == 1).then(pl.lit("0")).otherwise(pl.col("study_id"))
    tamper(cfg, "cohort", lambda df: df.with_columns(swapped.alias("study_id")))
    message = refused(cfg, published)
    assert "gp_events.parquet, column record_id: rule 'study IDs are not tokens' broken: 1 study ID(s)" in message
    assert "gp_events.parquet, column token_block: rule 'study IDs are not tokens' broken: 1 study ID(s)" in message
    assert record not in message


def test_a_failed_critical_expectation_is_refused(cfg, published) -> None:
    stage_release(cfg)
    tamper(cfg, "cohort", lambda df: df.with_columns(propensity_score=pl.col("propensity_score") + 2.0))
    message = refused(cfg, published)
    assert "dataset cohort, file cohort.parquet, column propensity_score: expect_column_values_to_be_between failed [critical]" in message
    assert "privacy rule" not in message  # only the expectation failed


def test_a_refused_replacement_leaves_the_earlier_release_in_place(cfg, published) -> None:
    replacing = RunConfig.from_conf({**cfg.to_conf(), "replace_release": True})
    stage_release(replacing)
    tamper(replacing, "service_use", lambda df: df.with_columns(cost_gbp=-pl.col("cost_gbp") - 1))
    message = refused(replacing, published)
    assert "column cost_gbp: expect_column_values_to_be_between failed [critical]" in message


def test_publishing_what_was_not_validated_is_refused(cfg, published) -> None:
    stage_release(cfg)
    with pytest.raises(ValidationFailed, match="has not passed validate_release"):
        publish_release(RunConfig.from_conf({**cfg.to_conf(), "replace_release": True}))
    shutil.rmtree(cfg.staging_dir)
    assert hashes(cfg.release_dir) == published


def test_a_critical_business_rule_stops_an_earlier_zone(cfg, tmp_path) -> None:
    """The link map's rules: a linked record without a rank stops the run at the linked zone."""
    from pipeline.validate import run_parameters, validate_files

    broken = tmp_path / "link_map.parquet"
    df = pl.read_parquet(cfg.linked_dir / "link_map.parquet")
    every_other_linked = pl.col("participant_id").is_not_null() & (pl.int_range(pl.len()) % 2 == 0)
    df.with_columns(rank=pl.when(every_other_linked).then(None).otherwise(pl.col("rank"))).write_parquet(broken)
    with pytest.raises(ValidationFailed) as failed:
        validate_files("linked", {"link_map": [broken]}, tmp_path / "reports", LABEL, parameters=run_parameters(cfg))
    assert "dataset link_map, file link_map.parquet, column rank: expect_column_values_to_not_be_null failed [critical]" in str(failed.value)


# ---------------------------------------------------------------------------------------------------
# `pipeline audit`


@pytest.fixture
def copy(cfg, published, tmp_path) -> Path:
    """A copy of the published release, with the release log beside it, as handed over, to tamper with."""
    shutil.copyfile(cfg.release_dir.parent / "release_log.jsonl", tmp_path / "release_log.jsonl")
    return Path(shutil.copytree(cfg.release_dir, tmp_path / LABEL))


def test_an_untouched_release_passes_its_audit(cfg, copy, capsys) -> None:
    assert audit_release(copy, trusted(cfg)) == []
    assert main_audit(audit_args(copy, cfg)) == 0
    out = capsys.readouterr().out
    assert "passed its audit" in out and io.sha256_file(copy / "manifest.json") in out


def test_an_altered_file_is_flagged(cfg, copy, capsys) -> None:
    df = pl.read_parquet(copy / "service_use.parquet")
    df.with_columns(units=pl.col("units") * 2).write_parquet(copy / "service_use.parquet")
    with open(copy / "data_dictionary.md", "a") as fh:
        fh.write("\n")
    problems = audit_release(copy, trusted(cfg))
    assert any(p.startswith("service_use.parquet: changed since publication") for p in problems)
    assert any(p.startswith("data_dictionary.md: changed since publication") for p in problems)
    assert main_audit(audit_args(copy, cfg)) == 1
    assert "FAILED its audit" in capsys.readouterr().err


def test_added_and_removed_files_are_flagged(cfg, copy) -> None:
    (copy / "notes.txt").write_text("extra\n")
    (copy / "balance.parquet").unlink()
    problems = "\n".join(audit_release(copy, trusted(cfg)))
    assert "notes.txt: not listed in the manifest" in problems
    assert "balance.parquet: listed in the manifest but missing" in problems
    assert "files of type .txt are not released" in problems


def test_an_identifier_smuggled_in_with_a_forged_manifest_is_still_flagged(cfg, copy) -> None:
    """Hashes prove only that files match the manifest; the privacy checks run on the files themselves."""
    df = pl.read_parquet(copy / "cohort.parquet").with_columns(postcode=pl.lit("LS1 4AB"))
    df.write_parquet(copy / "cohort.parquet")
    manifest = io.read_json(copy / "manifest.json")
    manifest["files"]["cohort.parquet"]["sha256"] = io.sha256_file(copy / "cohort.parquet")
    io.write_json(manifest, copy / "manifest.json")
    problems = audit_release(copy, trusted(cfg))
    assert any(p.startswith("manifest.json: the signature does not verify") for p in problems)
    assert "privacy rule broken: cohort.parquet, column postcode: rule 'no identifier or token column' broken" in "\n".join(problems)
    assert any("no postcode-like value" in p for p in problems)
    assert not any("LS1" in p for p in problems)


def test_a_missing_manifest_is_flagged(cfg, copy) -> None:
    (copy / "manifest.json").unlink()
    (problem,) = audit_release(copy, trusted(cfg))
    assert "the manifest is missing" in problem


# ---------------------------------------------------------------------------------------------------
# The rules themselves


def test_strict_patterns_refuse_plain_words() -> None:
    assert is_strict_pattern("S[0-9a-f]{16}") and is_strict_pattern("MDT[0-9]{2}") and is_strict_pattern("R[0-9]{8}")
    for loose in ("[A-Za-z ]+", "[a-z_]+", "[A-Z]{2,}", ".*", "[a-z0-9_]{1,64}"):
        assert not is_strict_pattern(loose), loose


def test_every_release_contract_constrains_its_strings_and_generalises_quasi_identifiers() -> None:
    from pipeline.contracts import study_contract
    from pipeline.study import bundled_studies, load_study

    for table, study in ((t, s) for t in RELEASE_TABLES for s in bundled_studies()):
        # The rules as a run binds them: a study's values are its allowed values.
        contract = study_contract(table, load_study(study))
        for c in contract.columns:
            assert c.column_class not in ("direct_identifier", "token"), (table, c.name)
            if c.type == "string" and (table, c.name) not in AWAITING_CONTRACT_CONSTRAINT:
                assert c.allowed is not None or (c.pattern and is_strict_pattern(c.pattern)), (table, c.name)
            if c.column_class == "quasi_identifier":
                assert c.type != "date" and (c.allowed is not None or (c.min is not None and c.max is not None)), (table, c.name)


AGGREGATE = """name: arm_counts
zone: release
description: People per arm and site.
primary_key: [arm, site]
columns:
  arm: {type: string, nullable: false, class: payload, allowed: [mdt, comparator], description: Arm.}
  site: {type: string, nullable: false, class: payload, allowed: [site_a, site_b], description: Site.}
  people: {type: int64, nullable: true, class: payload, %s description: People.}
"""


@pytest.mark.parametrize(
    ("declaration", "people", "broken"),
    [
        ("disclosure: count,", [0, 10, None, 15], None),
        ("disclosure: count,", [0, 12, 3, 15], "2 count(s) are not suppressed or rounded"),
        ("", [0, 10, None, 15], "must declare `disclosure: count` or `disclosure: not_a_count`"),
    ],
)
def test_aggregate_tables_must_declare_and_control_their_counts(tmp_path, monkeypatch, declaration, people, broken) -> None:
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    (schemas / "arm_counts.yaml").write_text(AGGREGATE % declaration)
    monkeypatch.setattr(privacy, "RELEASE_TABLES", ("arm_counts",))
    monkeypatch.setattr(privacy, "load_contract", lambda name: load_contract(name, schemas))
    monkeypatch.setattr(disclosure, "SCHEMAS_DIR", schemas)
    disclosure.declared_disclosure.cache_clear()
    release = tmp_path / "release"
    release.mkdir()
    table = pl.DataFrame({"arm": ["mdt", "mdt", "comparator", "comparator"], "site": ["site_a", "site_b"] * 2, "people": people})
    table.write_parquet(release / "arm_counts.parquet")
    try:
        report = assess_release_privacy(release)
    finally:
        disclosure.declared_disclosure.cache_clear()
    found = [str(v) for v in report.blocking]
    if broken is None:
        assert found == []
    else:
        (violation,) = found
        assert "rule 'aggregate counts disclosure-controlled'" in violation and broken in violation and "people" in violation


def test_code_version_comes_from_the_image_commit_where_there_is_no_git_history(monkeypatch) -> None:
    from pipeline.publish.release import code_version

    monkeypatch.setenv("PPRL_GIT_COMMIT", "c0ffee12c0ffee12c0ffee12c0ffee12c0ffee12")
    assert code_version().endswith("+gc0ffee12c0ff")
    monkeypatch.setenv("PPRL_GIT_COMMIT", "unknown")
    assert "+g" in code_version() or code_version().endswith("+unknown")
