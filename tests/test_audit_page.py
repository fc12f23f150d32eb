"""The release audit page and the Data Docs open in headless Chromium and show the run's real figures.

One realistic synthetic run goes through every pipeline task (without Airflow). Chromium renders the
pages as a governance officer's browser would (`--dump-dom` gives the DOM after rendering), and every
figure on the audit page is checked against the manifest after disclosure control.

Chromium is the Debian package `chromium` (/usr/bin/chromium). Without it these tests are skipped on
a workstation and fail in CI (CI=true), so a CI image cannot silently stop checking the pages.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import RETAIN

from pipeline import io
from pipeline.pseudonymise.consent import REGISTER_ERRORS
from pipeline.publish import disclosure
from pipeline.publish.report import figure_value, render_audit_page
from pipeline.publish.signing import show_fingerprint
from pipeline.settings import SOURCES, RunConfig

LABEL = "audit-1"
CHROMIUM_PATHS = ("chromium", "chromium-browser", "/usr/bin/chromium")


def chromium() -> str:
    for candidate in CHROMIUM_PATHS:
        found = shutil.which(candidate)
        if found:
            return found
    if os.environ.get("CI") == "true":
        pytest.fail("headless Chromium is required in CI to check the audit page: apt-get install chromium")
    pytest.skip("headless Chromium not installed (apt-get install chromium)")


def render(page: Path, tmp_path: Path) -> str:
    """The page's DOM after Chromium has loaded and rendered it."""
    result = subprocess.run(
        [
            chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom", page.resolve().as_uri(),
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and "<body" in result.stdout, f"Chromium could not render {page}: {result.stderr[-2000:]}"
    return result.stdout


class Figures(HTMLParser):
    """Every element with a data-figure attribute: (its manifest paths, its text); plus all text."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: list[tuple[list[list[Any]], str]] = []
        self.shares: list[tuple[dict[str, Any], str]] = []
        self.links: list[str] = []
        self.text: list[str] = []
        self._open: list[list[Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if "href" in a:
            self.links.append(a["href"] or "")
        if "src" in a:
            self.links.append(a["src"] or "")
        if "data-figure" in a:
            self._open.append([json.loads(a["data-figure"] or "[]"), "", tag])
        if "data-share" in a:
            self._open.append([json.loads(a["data-share"] or "{}"), "", tag, "share"])

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._open:
            self._open[-1][1] += data

    def handle_endtag(self, tag: str) -> None:
        # A figure is a table cell or, where a cell holds several (a share and its counts), a span.
        if self._open and tag == self._open[-1][2]:
            paths, text, *kind = self._open.pop()
            (self.shares if kind[1:] == ["share"] else self.figures).append((paths, text.strip()))


def parse(dom: str) -> Figures:
    parser = Figures()
    parser.feed(dom)
    return parser


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> RunConfig:
    import stage_runner

    conf = {**stage_runner.new_run(tmp_path_factory.mktemp("audit-page"), LABEL, persons=400, seed=31), **RETAIN}
    stage_runner.run_steps(conf)
    return RunConfig.from_conf(conf)


@pytest.fixture(scope="module")
def manifest(cfg) -> dict[str, Any]:
    """The exact figures the page was rendered from (reports/<label>/figures.json; the released
    manifest holds them controlled)."""
    figures = io.read_json(cfg.reports_dir / "figures.json")
    assert figures["manifest_sha256"] == io.sha256_file(cfg.release_dir / "manifest.json")
    return figures["manifest"]


def test_every_figure_on_the_audit_page_is_the_manifests_after_disclosure_control(cfg, manifest, tmp_path) -> None:
    page = parse(render(cfg.reports_dir / "audit.html", tmp_path))
    assert len(page.figures) > 50
    for paths, text in page.figures:
        assert text == disclosure.shown(figure_value(manifest, paths)), (paths, text)
    shown_paths = {json.dumps(p) for paths, _ in page.figures for p in paths}
    expected = [
        ["consent", k] for k in ("in_register", "consented", "declined", "withdrawn", "withdrawn_after_extract",
                                 "same_person_excluded", "eligible_for_linkage", "quarantined", "persons_pseudonymised")
    ] + [["consent", "register_errors", reason] for reason in REGISTER_ERRORS.values()] + [["inputs", s, "rows"] for s in SOURCES] + [["pseudonymisation", s, "quarantined"] for s in SOURCES] + [
        ["linkage", "sources", s, "linked_by_rank", "1"] for s in SOURCES
    ] + [["validation", z, "statistics", "rows"] for z in ("raw", "pseudonymised", "linked", "release")] + [
        ["privacy", "quasi_identifiers", "cohort", "groups"], ["files", "cohort.parquet", "rows"], ["cohort", "eligible"],
    ] + [
        # GUILD: records of each provider (identifier completeness) and every flagged provider-month.
        ["linkage", "quality", "identifier_present", s, "nhs_number", "provider", provider, "of"]
        for s, provider in (("hospital_op", "ZZ101"), ("gp_events", "ZZ2001"), ("social_care", "ZZ901"))
    ] + [
        ["linkage", "quality", "provider_month", "flagged", i, part]
        for i, _ in enumerate(manifest["linkage"]["quality"]["provider_month"]["flagged"]) for part in ("records", "linked")
    ]  # fmt: skip
    missing = [p for p in expected if json.dumps(p) not in shown_paths]
    assert not missing, f"figures missing from the audit page: {missing}"
    # Shares (identifier completeness, rank mix) are computed from the controlled counts only.
    assert len(page.shares) > 20
    for paths, text in page.shares:
        raw = figure_value(manifest, paths["count"])
        count = 0 if raw is None else disclosure.control_count(raw)
        of = disclosure.control_count(figure_value(manifest, paths["of"]))
        expected_text = "\u2013" if count is None or not of else f"{100 * count / of:.0f}%"
        assert text.startswith(expected_text), (paths, text)


def test_the_audit_page_identifies_the_release_and_links_its_evidence(cfg, manifest, tmp_path) -> None:
    page = parse(render(cfg.reports_dir / "audit.html", tmp_path))
    text = " ".join(page.text)
    for value in (LABEL, manifest["kid"], manifest["code_version"], io.sha256_file(cfg.release_dir / "manifest.json")):
        assert value in text
    # The publishing key's fingerprint, as `pipeline audit` prints it, binds the signed page to one release.
    assert show_fingerprint(manifest["signing"]["fingerprint"]) in text
    for entry in list(manifest["inputs"].values()) + list(manifest["files"].values()):
        assert entry["sha256"] in text
    for heading in ("Consent", "Rows in and out of every stage", "quarantine", "Linkage by rank", "Linkage quality", "Validation",
                    "Privacy checks", "Sign-off"):
        assert heading in text
    assert "data_docs/index.html" in page.links and (cfg.reports_dir / "data_docs" / "index.html").is_file()
    for link in page.links:
        if not link.startswith(("#", "data:")):
            assert (cfg.reports_dir / link).resolve().exists(), f"broken link on the audit page: {link}"


def test_the_audit_page_holds_no_study_id_or_token(cfg) -> None:
    text = (cfg.reports_dir / "audit.html").read_text()
    ids = pl.read_parquet(cfg.release_dir / "cohort.parquet", columns=["study_id"]).get_column("study_id")
    tokens = pl.read_parquet(cfg.pseudonymised_dir / "persons.parquet", columns=["tok_nhs", "participant_id"])
    for value in ids.to_list() + tokens.get_column("tok_nhs").drop_nulls().to_list() + tokens.get_column("participant_id").to_list():
        assert value not in text


def test_the_data_docs_open_and_show_this_runs_results(cfg, tmp_path) -> None:
    docs = cfg.reports_dir / "data_docs"
    landing = parse(render(docs / "index.html", tmp_path))
    zones = ("raw", "pseudonymised", "linked", "release")
    assert all(f"{z}/index.html" in landing.links for z in zones)
    summary = io.read_json(cfg.reports_dir / "validation" / "release.json")
    release = " ".join(parse(render(docs / "release" / "index.html", tmp_path)).text)
    assert f"Zone release: validation results of run {LABEL}" in release
    for dataset, entry in summary["datasets"].items():
        for f in entry["files"]:
            # The script-free results table lists each file with its exact row count.
            assert f"{dataset} {f['file']} {f['rows']}" in " ".join(release.split()), (dataset, f["file"])


def test_warnings_and_failures_are_shown_with_controlled_counts() -> None:
    """The page from a hand-made manifest: a warning with a small count, and a failed privacy rule."""
    warning = {"column": "hours_per_week", "expectation": "expect_column_values_to_be_null", "severity": "warning",
               "rule": "residential placements have no planned hours", "unexpected_count": 3, "file": "social_care.parquet"}  # fmt: skip
    manifest = {
        "release_label": "r-test", "consent": {"in_register": 1234, "declined": 6, "withdrawn": 0},
        "validation": {"pseudonymised": {"success": True, "statistics": {"files": 1, "rows": 40, "failed_critical": 0, "failed_warning": 1},
                                         "datasets": {"social_care_payload": {"files": [{"file": "social_care.parquet", "failures": [warning]}]}}}},
        "privacy": {"rules": [{"rule": "no postcode-like value", "checks": "no postcode", "result": "failed"}]},
    }  # fmt: skip
    page = render_audit_page(manifest, "0" * 64, "/releases/r-test")
    assert "must not be used" in page  # the failed rule turns the banner red
    assert "residential placements have no planned hours" in page
    parsed = parse(page)
    by_path = {json.dumps(paths): text for paths, text in parsed.figures}
    assert by_path[json.dumps([["consent", "in_register"]])] == "1,235"
    assert by_path[json.dumps([["consent", "declined"]])] == disclosure.SUPPRESSED_TEXT
    assert by_path[json.dumps([["consent", "withdrawn"]])] == "0"
    count_path = [["validation", "pseudonymised", "datasets", "social_care_payload", "files", 0, "failures", 0, "unexpected_count"]]
    assert by_path[json.dumps(count_path)] == disclosure.SUPPRESSED_TEXT


def test_a_sparse_or_unexpected_manifest_still_renders() -> None:
    """The page is rendered inside publish_release: a cohort stage reporting new kinds of figures must not break it."""
    odd = {"cohort": {"method": "nearest", "flag": True, "share": 0.5, "nested": {"a": {"n": 3, "label": "x", "ok": False}}}}
    for manifest in ({}, odd):
        page = render_audit_page(manifest, "0" * 64, "/releases/x")
        assert page.startswith("<!doctype html>") and "Sign-off" in page


def test_the_page_opens_with_a_verdict_and_what_needs_judgement() -> None:
    """Each item of "needs your judgement" with its figure against its threshold; none, and it is ready to sign."""
    warning = {"column": "eq_vas", "expectation": "expect_column_values_to_not_be_null", "severity": "warning",
               "rule": "most baseline questionnaires answer the VAS", "unexpected_count": 40, "checked_count": 400, "mostly": 0.95}  # fmt: skip
    flagged = {"source": "hospital_op", "provider": "ZZ101", "month": "2024-05", "records": 30, "linked": 0}
    months = {"months": ["2024-04", "2024-05", "2024-06"], "records": [40, 30, 40], "linked": [24, 0, 20],
              "unflagged": {"records": 80, "linked": 44}}
    manifest = {
        "validation": {"pseudonymised": {"success": True, "statistics": {"failed_critical": 0, "failed_warning": 1},
                                         "datasets": {"survey": {"files": [{"file": "survey.parquet", "failures": [warning]}]}}}},
        "cohort": {"samples": {"all": {"max_abs_smd_after": 0.08}, "site=site_b": {"max_abs_smd_after": -0.21}}},
        "privacy": {"min_group_size": 8, "quasi_identifiers": {"cohort": {"smallest_group": 11}, "panel": {"smallest_group": 9}}},
        "linkage": {"quality": {"provider_month": {"rule": "r", "sources": {"hospital_op": {"ZZ101": months}}, "flagged": [flagged]}}},
    }  # fmt: skip
    balance = [{"sample": "site=site_b", "covariate": "n_ltc", "smd_after": -0.21}, {"sample": "site=site_b", "covariate": "sex=F", "smd_after": 0.05}]
    page = render_audit_page(manifest, "0" * 64, "/releases/x", unit_cost_versions=["illustrative-0.1"], balance=balance)
    opening = page[page.index("<h1>"): page.index('<section id="identity"')]
    assert "Needs your judgement" in opening and "5 item(s)" not in opening
    judgement = opening[opening.index('<section id="judgement"'):]
    assert "<strong>10%</strong> of rows break it (at most 5% allowed" in judgement
    assert "site=site_b" in judgement and "<strong>0.21</strong>" in judgement and "n_ltc" in judgement and "sex=F" not in judgement
    assert '"all"' not in judgement and "0.08" not in judgement  # balanced samples are not listed
    assert "illustrative-0.1" in judgement
    # The usual rate from the controlled counts of the months not flagged: 45 of 80.
    assert "ZZ101" in judgement and "<strong>0%</strong> in 1 month(s), 2024-05, against its usual 56%" in judgement
    assert "9</strong> in <span class=\"mono\">panel" in judgement
    assert judgement.count("<li>") == 5

    clean = {"privacy": {"quasi_identifiers": {"cohort": {"smallest_group": 30}}}, "cohort": {"samples": {"all": {"max_abs_smd_after": 0.05}}}}
    ready = render_audit_page(clean, "0" * 64, "/releases/x", unit_cost_versions=["nice-2024"])
    assert "Ready to sign" in ready and "Needs your judgement:" not in ready and "30</strong> in" in ready
