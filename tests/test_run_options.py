"""Every option docs/economists.md promises exists: on `pipeline run` (listed by --help, and parsed into
the run's settings) and, for the matching options, as a DAG Param of the trigger form.

The docs are parsed, not copied: a new `--flag` written into docs/economists.md fails here until the CLI
has it.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from pipeline.cli import build_parser, matching_conf
from pipeline.orchestration.conf import conf_from_params
from pipeline.settings import MATCHING_FLAGS, MatchingOptions, RunConfig

DOCS = Path(__file__).resolve().parent.parent / "docs" / "economists.md"
RUN = ["run", "--raw", "/d/raw", "--work", "/d/work", "--release", "r1"]
# A value each documented option can take, to check it parses into the settings.
EXAMPLES: dict[str, list[str]] = {
    "--unit-costs": ["/d/costs.csv"], "--eq5d-value-set": ["england"], "--method": ["optimal"],
    "--distance": ["mahalanobis"], "--ratio": ["2"], "--caliper": ["0.1"], "--with-replacement": [],
    "--exact": ["site", "age_band"], "--mahvars": ["age_at_index", "n_ltc"], "--balance-threshold": ["0.05"],
    "--balance-ladder": [], "--no-balance-ladder": [], "--small-groups": ["coarsen"], "--study-start": ["2022-01-01"],
}  # fmt: skip


def documented_options() -> list[str]:
    return sorted(set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", DOCS.read_text())))


def run_help() -> str:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["run"].format_help()


def test_the_docs_mention_the_options_economists_ask_for():
    assert {"--ratio", "--eq5d-value-set", "--method", "--caliper", "--balance-threshold", "--unit-costs"} <= set(documented_options())


@pytest.mark.parametrize("option", documented_options())
def test_every_documented_option_is_on_pipeline_run_help_and_parses(option):
    assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", run_help()), f"docs/economists.md promises {option}; pipeline run --help lacks it"
    assert option in EXAMPLES, f"give {option} an example value in EXAMPLES"
    args = build_parser().parse_args([*RUN, option, *EXAMPLES[option]])
    assert args.func.__name__ == "_run"


def test_matching_flags_reach_the_run_settings():
    args = build_parser().parse_args(
        [*RUN, "--method", "optimal", "--distance", "mahalanobis", "--ratio", "2", "--caliper", "0.1", "--exact", "site",
         "--mahvars", "n_ltc", "--balance-threshold", "0.05", "--no-balance-ladder"]
    )  # fmt: skip
    cfg = RunConfig.from_conf({"raw_dir": "/d/raw", "work_dir": "/d/work", "release_label": "r1", "matching": matching_conf(args)})
    assert cfg.matching == MatchingOptions(
        method="optimal", distance="mahalanobis", ratio=2, caliper=0.1, exact=("site",), mahvars=("n_ltc",), balance_threshold=0.05, ladder=False
    )
    # Flags left out leave the study's (or the default) value alone.
    assert matching_conf(build_parser().parse_args(RUN)) == {}
    assert matching_conf(build_parser().parse_args([*RUN, "--exact"])) == {"exact": []}


def test_every_matching_option_has_a_flag_and_a_param_and_goes_into_the_manifest_settings():
    from pipeline.orchestration.defaults import run_params

    names = {f.name for f in fields(MatchingOptions)}
    assert set(MATCHING_FLAGS) == names
    assert names <= set(run_params(filled_by_upstream=False))
    conf = conf_from_params({"raw_dir": "/d/raw", "work_dir": "/d/work", "release_label": "r1", "method": "optimal", "caliper": 0.1, "ratio": 3})
    assert conf["matching"]["method"] == "optimal" and conf["matching"]["caliper"] == 0.1 and conf["matching"]["ratio"] == 3
    assert set(conf["matching"]) == names  # RunConfig.to_conf() is what the manifest's settings hold


def test_the_value_set_is_a_run_setting_by_name_or_file(tmp_path: Path):
    base = {"raw_dir": "/d/raw", "work_dir": "/d/work", "release_label": "r1"}
    assert RunConfig.from_conf(base).value_set_file.name == "eq5d5l_value_set_england.csv"
    assert RunConfig.from_conf({**base, "eq5d_value_set": "england"}).eq5d_value_set == "england"
    own = tmp_path / "crosswalk.csv"
    assert RunConfig.from_conf({**base, "eq5d_value_set": str(own)}).value_set_file == own.resolve()


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"method": "genetic"}, "--method (Airflow Param method) must be one of nearest, optimal"),
        ({"ratio": 0}, "--ratio (Airflow Param ratio) must be a whole number"),
        ({"caliper": -1}, "--caliper (Airflow Param caliper) must be a positive number"),
        ({"method": "optimal", "replace": True}, "cannot match with replacement"),
        ({"balance_threshold": 2}, "--balance-threshold (Airflow Param balance_threshold)"),
        ({"calliper": 0.1}, "unknown matching options ['calliper']"),
    ],
)
def test_bad_matching_options_are_refused_in_the_users_words(options, words):
    from pipeline.errors import PipelineError

    with pytest.raises(PipelineError, match=re.escape(words)):
        RunConfig.from_conf({"raw_dir": "/d/raw", "work_dir": "/d/work", "release_label": "r1", "matching": options})


def test_a_sample_above_the_threshold_is_flagged_in_describe_and_on_the_audit_page():
    from pipeline.cli import balance_lines
    from pipeline.publish.report import render_audit_page

    attempts = [
        {"specification": "nearest, glm, 1:1, caliper 0.2", "max_abs_smd_after": 0.14, "worst_covariate": "imd_quintile=4", "matched_mdt": 200, "kept": False},
        {"specification": "nearest, glm, 1:1, caliper 0.1", "max_abs_smd_after": 0.12, "worst_covariate": "imd_quintile=4", "matched_mdt": 190, "kept": True},
    ]  # fmt: skip
    sample = {"mdt": 210, "comparators": 1400, "matched_mdt": 190, "matched_comparators": 190, "max_abs_smd_after": 0.12,
              "worst_covariate": "imd_quintile=4", "balanced": False, "specification": "nearest, glm, 1:1, caliper 0.1", "attempts": attempts}  # fmt: skip
    manifest = {"settings": {"matching": {"ratio": 1, "balance_threshold": 0.1}},
                "cohort": {"samples": {"site=site_b": sample}, "balance": {"threshold": 0.1, "samples_above_threshold": ["site=site_b"]}}}  # fmt: skip
    text = "\n".join(balance_lines(manifest))
    assert "site=site_b: 0.120 (imd_quintile=4) NOT BALANCED" in text and "tried nearest, glm, 1:1, caliper 0.2: 0.140" in text
    page = render_audit_page(manifest, "0" * 64, "releases/r1")
    assert "Balance by sample" in page and "site=site_b</strong> is above the threshold after every attempt" in page
    assert "caliper 0.2</li>" not in page and "largest |SMD| 0.140 (imd_quintile=4)" in page
