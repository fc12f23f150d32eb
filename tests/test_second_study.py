"""A second study, unlike Pioneer, end to end: `studies/three_rivers.yaml` (3 sites, 2 operating
models, aged 65+, 1+ long-term condition, 6-month periods, a named subset sample) synthesised and
published by the stage functions, so nothing of the Pioneer design can hide in code. And the study
checker, on the shipped studies and on a broken copy.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import polars as pl
import pytest
import yaml
from conftest import release_bytes

from pipeline.cli import main
from pipeline.crypto.keys import new_key_file
from pipeline.publish.signing import new_publishing_key_file
from pipeline.settings import REPO_DIR, RunConfig
from pipeline.study import STUDIES_DIR, check_study, load_study
from pipeline.synth import generate

SECOND = STUDIES_DIR / "three_rivers.yaml"
LABEL = "three-rivers-1"


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> RunConfig:
    import stage_runner

    base = tmp_path_factory.mktemp("second_study")
    study = load_study(SECOND)
    generate(base / "input", persons=300, seed=7, profile="realistic", study=study)
    new_key_file(base / "secrets" / "key.json")
    new_publishing_key_file(base / "secrets" / "publishing.pem")
    conf = RunConfig.from_conf(
        {"raw_dir": str(base / "input" / "raw"), "work_dir": str(base / "work"), "release_label": LABEL,
         "key_file": str(base / "secrets" / "key.json"), "publishing_key_file": str(base / "secrets" / "publishing.pem"),
         "study_file": str(SECOND)}
    ).to_conf()  # fmt: skip
    stage_runner.run_steps(conf)
    return RunConfig.from_conf(conf)


def test_the_second_study_is_published_with_its_own_sites_models_and_periods(published: RunConfig) -> None:
    study, release = load_study(SECOND), published.release_dir
    cohort = pl.read_parquet(release / "cohort.parquet")
    assert set(cohort.get_column("site")) == set(study.sites)
    assert set(cohort.get_column("operating_model").drop_nulls()) == set(study.operating_models)
    assert set(cohort.get_column("age_band").drop_nulls()) <= set(study.age_band_labels)
    assert "55-64" not in set(cohort.get_column("age_band").drop_nulls())
    assert cohort.get_column("n_ltc").min() >= 1

    use = pl.read_parquet(release / "service_use.parquet")
    assert set(use.get_column("period")) == {"pre_6m", "post_6m"}
    panel = pl.read_parquet(release / "panel.parquet")
    assert sorted(set(panel.get_column("month"))) == list(range(-6, 6))

    balance = pl.read_parquet(release / "balance.parquet")
    samples = set(balance.get_column("sample"))
    assert "all" in samples and samples <= set(study.sample_names)
    assert {"site=ashbourne_vale", "site=kirkby_marsh"} <= set(balance.get_column("covariate"))
    # The study leaves the EQ-5D covariates out of its propensity model.
    assert not any(c.startswith("baseline_eq") for c in balance.get_column("covariate"))
    matches = pl.read_parquet(release / "matches.parquet")
    assert set(matches.get_column("sample")) <= set(study.sample_names)

    manifest = json.loads((release / "manifest.json").read_text())
    assert manifest["study"]["sha256"] == study.sha256 and manifest["study"]["file"] == SECOND.name
    assert {"aged_65_plus", "with_1plus_conditions"} <= set(manifest["cohort"])
    assert manifest["settings"]["matching"]["ratio"] == 2 and manifest["settings"]["matching"]["replace"] is True
    assert manifest["settings"]["study_start"] == "2023-01-01"
    dictionary = (release / "data_dictionary.md").read_text()
    assert "wyebridge" in dictionary and "pre_6m" in dictionary and "site_a" not in dictionary
    assert "aged 65+, one or more long-term conditions" in dictionary and "in the 6 months before index" in dictionary
    assert "${" not in dictionary
    audit = (published.reports_dir / "audit.html").read_text()
    assert study.sha256 in audit and study.name in audit


def test_the_audit_rechecks_the_second_study_release_against_its_own_study(published: RunConfig) -> None:
    """`pipeline audit` has no study file: the manifest's study values bind the contracts."""
    from pipeline.publish.privacy import assess_release_privacy

    assert assess_release_privacy(published.release_dir).blocking == []
    assert release_bytes(published.release_dir)


def test_the_shipped_studies_pass_the_check(capsys) -> None:
    for path in sorted(STUDIES_DIR.glob("*.yaml")):
        assert main(["study", "check", str(path)]) == 0, capsys.readouterr().err
        assert "is valid" in capsys.readouterr().out


def test_a_broken_study_lists_every_problem_by_key(tmp_path, capsys) -> None:
    spec = yaml.safe_load(SECOND.read_text())
    spec["teams"][1]["site"] = "nowhere"
    spec["periods"]["pre_months"] = 0
    spec["panel"]["months_after"] = 9
    spec["eligibilty"] = {"min_age": 65}
    spec["samples"][3]["sites"] = ["wyebridge", "atlantis"]
    spec["matching"]["exact"] = ["postcode"]
    spec["window"]["study_end"] = "2022-12-31"
    del spec["unit_costs"]
    # The copy lives elsewhere: its value set is named by absolute path (relative ones are to the file).
    spec["eq5d_value_set"] = str(REPO_DIR / "reference" / "eq5d5l_value_set_england.csv")
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(spec))

    assert main(["study", "check", str(broken)]) == 2
    err = capsys.readouterr().err
    for key in ("teams[1].site", "periods.pre_months", "panel.months_after", "eligibilty", "samples[3].sites[1]",
                "matching.exact[0]", "window.study_end", "unit_costs"):  # fmt: skip
        assert re.search(rf"^  - {re.escape(key)}: ", err, re.M), (key, err)
    assert "8 problem(s) in the study file" in err and err.count("\n  - ") == 8, err


def test_a_run_refuses_a_broken_study_before_any_work(tmp_path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(SECOND.read_text().replace("min_age: 65", "min_age: old"))
    from pipeline.errors import StudyError

    with pytest.raises(StudyError, match=r"eligibility\.min_age: must be a whole number"):
        RunConfig.from_conf({"raw_dir": str(tmp_path), "work_dir": str(tmp_path), "release_label": "x", "study_file": str(broken)})
    with pytest.raises(StudyError):
        check_study(tmp_path / "missing.yaml")


def test_contracts_and_suites_hold_no_study_values() -> None:
    """Pioneer's sites and operating models appear only in studies/ and the synthetic generator."""
    found = subprocess.run(
        ["grep", "-rln", r"site_a\|site_b\|hub_and_spoke", "schemas/", "pipeline/", "expectations/",
         "--include=*.yaml", "--include=*.py", "--include=*.json"],
        cwd=REPO_DIR, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    assert [f for f in found if not f.startswith("pipeline/synth/")] == []
    assert Path(REPO_DIR / "studies" / "pioneer.yaml").read_text().count("site_a") > 1


def test_a_register_is_checked_against_the_study_it_belongs_to(published: RunConfig, capsys) -> None:
    """The same consent register follows its own study's contract, not Pioneer's."""
    register = str(published.raw / "consent_register.parquet")
    assert main(["check", "consent_register", register, "--study", str(SECOND)]) == 0
    assert main(["check", "consent_register", register]) == 2
    err = capsys.readouterr().err
    assert "column site: rule 'allowed values' broken" in err and "column mdt_id: rule 'allowed values' broken" in err
    assert "wyebridge" not in err  # never a value
