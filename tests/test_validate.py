"""Validation with Great Expectations: suites from contracts, blocking on critical failures, and no
patient value in any message, summary, Data Docs page or log line."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import io
from pipeline.contracts import load_contract, to_arrow
from pipeline.errors import ValidationFailed
from pipeline.study import load_study
from pipeline.validate import structural_suite, structural_suite_drift, validate_files, validated_contract, write_structural_suites
from pipeline.validate.parameters import RUN_PARAMETERS
from pipeline.validate.privacy import scrub_result
from pipeline.validate.suites import REGENERATE_COMMAND, business_suite, validated_dataset_names, validation_suite

# The run parameters rules may name (the default study window of pipeline.settings.RunConfig).
# The run parameters of a run of the default study: its window and the study values contracts name.
WINDOW = {
    "study_start": dt.date(2021, 4, 1), "study_end": dt.date(2026, 3, 31), "extract_date": dt.date(2026, 3, 31),
    **load_study().suite_parameters(),
}  # fmt: skip

# ---------------------------------------------------------------------------------------------------
# Test data


def apc_rows(**changes: list[Any]) -> pl.DataFrame:
    """Three clean hospital admissions; keyword arguments replace whole columns."""
    data: dict[str, list[Any]] = {
        "record_id": ["APC000000001", "APC000000002", "APC000000003"],
        "nhs_number": ["9990000018", None, "9990000026"],
        "given_name": ["ANN", "BOB", None],
        "family_name": ["SMITH", "JONES", "BROWN"],
        "date_of_birth": [dt.date(1950, 1, 1), dt.date(1940, 2, 2), None],
        "sex": ["F", "M", "U"],
        "postcode": ["LS1 1AA", None, "M1 1AA"],
        "admission_date": [dt.date(2022, 1, 1), dt.date(2022, 2, 1), dt.date(2022, 3, 1)],
        "discharge_date": [dt.date(2022, 1, 5), dt.date(2022, 2, 1), None],
        "admission_method": ["11", "21", "99"],
        "provider_code": ["ZZ101", None, "ZZ102"],
    }
    data.update(changes)
    return pl.DataFrame(data, schema=load_contract("hospital_apc").polars_schema())


def write(df: pl.DataFrame, dataset: str, path: Path, **parquet_options: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    contract = validated_contract(dataset)
    if df.null_count().select(pl.sum_horizontal(pl.col(c.name) for c in contract.columns if not c.nullable)).item():
        # to_arrow refuses a null in a non-nullable field; a broken extract can still carry one.
        schema = contract.arrow_schema()
        table = df.select(contract.column_names).to_arrow().cast(pa.schema([f.with_nullable(True) for f in schema]))
    else:
        table = to_arrow(df, contract)
    pq.write_table(table, path, **parquet_options)
    return path


# Values made for one dataset column, by the column's pattern, unique per row i.
PATTERN_EXAMPLES = {
    "APC[0-9]{9}": lambda i: f"APC{i:09d}",
    "AE[0-9]{9}": lambda i: f"AE{i:09d}",
    "OP[0-9]{9}": lambda i: f"OP{i:09d}",
    "GP[0-9]{9}": lambda i: f"GP{i:09d}",
    "SC[0-9]{9}": lambda i: f"SC{i:09d}",
    "P[0-9]{7}": lambda i: f"P{i:07d}",
    "S[0-9a-f]{16}": lambda i: f"S{i:016x}",
    "[0-9a-f]{64}": lambda i: f"{i:064x}",
    "MDT[0-9]{2}": lambda i: f"MDT{i:02d}",
    "[A-Z0-9]{3,9}": lambda i: f"ZZ{i:03d}",
    "R[0-9]{8}": lambda i: f"R{i:08d}",
    r"\S(?:.{0,62}\S)?": lambda i: f"ID-{i:06d}",
    "E01[0-9]{6}": lambda i: f"E01{i:06d}",
    "[A-Z]{1,2}[0-9][0-9A-Z]? ?[0-9][A-Z]{2}": lambda i: f"LS1{i} 1AA",
    "20[0-9]{2}/[0-9]{2}": lambda i: "2024/25",
}


def pattern_example(pattern: str, i: int) -> str:
    """A value matching `pattern` in full, unique per i: a known example, else the first simple candidate that fits."""
    if pattern in PATTERN_EXAMPLES:
        return PATTERN_EXAMPLES[pattern](i)
    for candidate in (f"value_{i}", f"v{i}", f"{i}", f"V{i}", f"X{i:02d}"):
        if re.fullmatch(pattern, candidate):
            return candidate
    raise KeyError(f"no example value for pattern {pattern!r}: add one to PATTERN_EXAMPLES")


# Where a dataset's business rules need more than the contract's bounds.
OVERRIDES: dict[str, dict[str, Any]] = {
    "study_persons": {"age_at_index": 70},
    "consent_register": {"mdt_id": None},  # comparators are on no MDT caseload
    "link_map": {"conflict": False},  # a record in conflict has no participant
    "social_care": {"service_type": "home_care"},
    "social_care_payload": {"service_type": "home_care"},
}


def clean_frame(dataset: str, rows: int = 3) -> pl.DataFrame:
    """A frame that meets every rule of `dataset`, built from its contract (bound to the default study) alone."""
    contract = validated_contract(dataset)
    if contract.study_values:
        contract = contract.for_study(WINDOW)
    data: dict[str, list[Any]] = {}
    for c in contract.columns:
        if c.name in OVERRIDES.get(dataset, {}):
            values = [OVERRIDES[dataset][c.name]] * rows
        elif c.allowed is not None:
            values = [c.allowed[i % len(c.allowed)] for i in range(rows)]
        elif c.type == "list[string]":  # token spec v3's near-miss tokens: sorted lists
            values = [sorted({pattern_example(c.pattern, i + 1), pattern_example(c.pattern, i + 2)}) for i in range(rows)]
        elif c.pattern is not None:
            values = [pattern_example(c.pattern, i + 1) for i in range(rows)]
        elif c.type == "date":
            values = [dt.date(2022, 1, 1)] * rows
        elif c.type == "bool":
            values = [True] * rows
        elif c.type == "string":
            values = [f"{c.name}-{i}" for i in range(rows)]
        elif c.unique:
            values = [(c.min or 0) + i for i in range(rows)]
        else:
            low = c.min if c.min is not None else 1
            value = (low + c.max) / 2 if c.max is not None else low
            values = [value if c.type == "float64" else int(value)] * rows
        data[c.name] = values
    return pl.DataFrame(data, schema=contract.polars_schema())


# ---------------------------------------------------------------------------------------------------
# Where a leak would show


def all_report_text(reports_dir: Path) -> str:
    """Every file under the reports folder (summary and every Data Docs file), as text."""
    return "\n".join(p.read_bytes().decode("utf-8", errors="ignore") for p in sorted(reports_dir.rglob("*")) if p.is_file())


def assert_absent(secrets: list[str], *texts: str) -> None:
    for secret in secrets:
        for text in texts:
            assert secret not in text, f"{secret!r} leaked"


@pytest.fixture
def capture_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="pipeline")
    caplog.set_level(logging.DEBUG, logger="great_expectations")
    return caplog


# ---------------------------------------------------------------------------------------------------
# Suites


def test_structural_suite_follows_the_contract() -> None:
    suite = structural_suite(load_contract("hospital_apc"))
    types = [e.expectation_type for e in suite.expectations]
    assert types[0] == "expect_table_columns_to_match_ordered_list"
    assert suite.expectations[0].column_list == load_contract("hospital_apc").column_names
    for e in suite.expectations:
        assert e.meta["severity"] == "critical" and e.meta["source"] == "contract" and e.meta["rule"]
    by_column = {(e.expectation_type, getattr(e, "column", None)): e for e in suite.expectations}
    assert by_column[("expect_column_values_to_match_regex", "record_id")].regex == r"^(?:\S(?:.{0,62}\S)?)$"
    assert ("expect_column_values_to_not_be_null", "admission_date") in by_column
    assert ("expect_column_values_to_not_be_null", "discharge_date") not in by_column
    assert by_column[("expect_column_values_to_be_in_set", "sex")].value_set == ["F", "M", "U"]
    # An implausible date of birth is a row rule (pipeline.pseudonymise.row_rules): quarantined, not a file fault.
    assert ("expect_column_values_to_be_between", "date_of_birth") not in by_column
    assert ("expect_column_values_to_be_unique", "record_id") in by_column
    assert by_column[("expect_column_type_to_be", "admission_date")].type_ == "date32[day][pyarrow]"


def test_business_suites_load_with_severity_and_rule() -> None:
    for dataset in validated_dataset_names():
        for e in validation_suite(dataset).expectations:
            assert e.meta["severity"] in ("critical", "warning"), (dataset, e.expectation_type)
            assert e.meta["rule"] and "\n" not in e.meta["rule"]
    payload_types = {e.expectation_type for e in validation_suite("hospital_apc_payload").expectations}
    assert "expect_column_pair_values_a_to_be_greater_than_b" in payload_types


def test_checked_in_structural_suites_match_the_contracts() -> None:
    drift = structural_suite_drift()
    assert not drift, (
        "The structural suites in expectations/structural/ no longer match schemas/:\n  "
        + "\n  ".join(drift)
        + f"\nRegenerate them with: {REGENERATE_COMMAND}, review the diff and commit it."
    )


def test_drift_is_detected(tmp_path: Path) -> None:
    write_structural_suites(tmp_path)
    assert structural_suite_drift(tmp_path) == []
    edited = tmp_path / "hospital_apc.json"
    edited.write_text(edited.read_text().replace("admission_method", "admission_methods"))
    (tmp_path / "retired_dataset.json").write_text("{}")
    drift = structural_suite_drift(tmp_path)
    assert any("hospital_apc.json" in d for d in drift) and any("retired_dataset.json" in d for d in drift)


# ---------------------------------------------------------------------------------------------------
# Running validation


def test_clean_frame_passes(tmp_path: Path) -> None:
    apc = write(apc_rows(), "hospital_apc", tmp_path / "in" / "hospital_apc.parquet")
    summary_path = validate_files("raw", {"hospital_apc": [apc]}, tmp_path / "reports", "run-1", parameters=WINDOW)
    summary = io.read_json(summary_path)
    assert summary_path == tmp_path / "reports" / "validation" / "raw.json"
    assert summary["success"] is True and summary["warnings"] == [] and summary["critical"] == []
    (file_summary,) = summary["datasets"]["hospital_apc"]["files"]
    assert file_summary["success"] and file_summary["failures"] == [] and file_summary["evaluated_expectations"] > 15
    assert (tmp_path / "reports" / "data_docs" / "raw" / "index.html").exists()
    assert (tmp_path / "reports" / "data_docs" / "index.html").exists()


def test_every_dataset_accepts_a_clean_file(tmp_path: Path) -> None:
    files = {}
    for dataset in validated_dataset_names():
        path = tmp_path / "in" / f"{dataset}.parquet"
        if dataset.endswith("_payload") or dataset in ("token_blocks", "record_blocks"):
            # As pipeline.pseudonymise writes them: streamed by Polars, strings as large_string.
            io.sink_frame(clean_frame(dataset).lazy(), validated_contract(dataset), path)
        else:
            write(clean_frame(dataset), dataset, path)
        files[dataset] = [path]
    summary = io.read_json(validate_files("all", files, tmp_path / "reports", "run-1", parameters=WINDOW))
    failures = [f for d in summary["datasets"].values() for fs in d["files"] for f in fs["failures"]]
    assert failures == []
    assert summary["parameters"] == {k: v.isoformat() if isinstance(v, dt.date) else v for k, v in WINDOW.items()}


INJECTIONS = {
    # name: (column changes, dataset column named, expectation named, secrets that must not leak)
    "null in a non-null column": (
        {"record_id": ["APC000000001", None, "APC000000003"], "family_name": ["SMITH", "QXNULLROWQX", "BROWN"]},
        "record_id",
        "expect_column_values_to_not_be_null",
        ["QXNULLROWQX"],
    ),
    "value outside the allowed set": (
        {"admission_method": ["11", "ZQ7SECRETCODE", "99"]},
        "admission_method",
        "expect_column_values_to_be_in_set",
        ["ZQ7SECRETCODE"],
    ),
    "discharge before admission": (
        {
            # Inside the study window, so the admission-date window rule (a warning) holds.
            "admission_date": [dt.date(2022, 1, 1), dt.date(2023, 3, 17), dt.date(2022, 3, 1)],
            "discharge_date": [dt.date(2022, 1, 5), dt.date(2023, 3, 9), None],
        },
        "discharge_date, admission_date",
        "expect_column_pair_values_a_to_be_greater_than_b",
        ["2023-03-09", "2023-03-17", "20230309", "20230317", "2023, 3, 9"],
    ),
}


@pytest.mark.parametrize("case", list(INJECTIONS))
def test_critical_failure_blocks_without_revealing_values(tmp_path: Path, case: str, capture_logs: pytest.LogCaptureFixture) -> None:
    changes, column, expectation, secrets = INJECTIONS[case]
    apc = write(apc_rows(**changes), "hospital_apc", tmp_path / "in" / "hospital_apc.parquet")
    reports = tmp_path / "reports"
    with pytest.raises(ValidationFailed) as failed:
        validate_files("raw", {"hospital_apc": [apc]}, reports, "run-1", parameters=WINDOW)
    message = str(failed.value)
    for words in ("'raw'", "dataset hospital_apc", "file hospital_apc.parquet", f"column {column}", expectation, "rerun"):
        assert words in message
    summary = io.read_json(reports / "validation" / "raw.json")
    assert summary["success"] is False and summary["statistics"]["failed_critical"] == 1
    (failure,) = summary["datasets"]["hospital_apc"]["files"][0]["failures"]
    assert (failure["column"], failure["expectation"], failure["severity"], failure["unexpected_count"]) == (column, expectation, "critical", 1)
    assert_absent(secrets, message, all_report_text(reports), capture_logs.text)


def test_warning_does_not_raise_but_is_listed(tmp_path: Path) -> None:
    df = clean_frame("social_care").with_columns(
        service_type=pl.Series(["home_care", "residential", "nursing"]), hours_per_week=pl.Series([10.0, 131.8125, None])
    )
    path = write(df, "social_care", tmp_path / "in" / "social_care.parquet")
    summary = io.read_json(validate_files("raw", {"social_care": [path]}, tmp_path / "reports", "run-1", parameters=WINDOW))
    assert summary["success"] is True and summary["statistics"]["failed_warning"] == 1
    (failure,) = summary["datasets"]["social_care"]["files"][0]["failures"]
    assert (failure["column"], failure["severity"], failure["unexpected_count"]) == ("hours_per_week", "warning", 1)
    (warning,) = summary["warnings"]
    assert "column hours_per_week" in warning and "expect_column_values_to_be_null" in warning
    assert_absent(["131.8125"], all_report_text(tmp_path / "reports"))


@pytest.mark.parametrize("missing", [2, 3])
def test_mostly_is_judged_over_the_whole_file(tmp_path: Path, missing: int) -> None:
    # 40 baseline rows read in 4 batches of 10. The missing EQ VAS scores all fall in the first
    # batch, where they are 20-30% of rows; over the file they are 5% (allowed) or 7.5% (a warning).
    df = clean_frame("survey", rows=40).with_columns(
        wave=pl.lit("baseline"), eq_vas=pl.Series([None] * missing + [50] * (40 - missing), dtype=pl.Int16)
    )
    path = write(df, "survey", tmp_path / "in" / "survey.parquet", row_group_size=10)
    summary = io.read_json(validate_files("raw", {"survey": [path]}, tmp_path / "reports", "run-1", max_batch_rows=10, parameters=WINDOW))
    file_summary = summary["datasets"]["survey"]["files"][0]
    assert len(file_summary["batches"]) == 4
    if missing == 2:
        assert file_summary["failures"] == []
    else:
        (failure,) = file_summary["failures"]
        assert (failure["column"], failure["severity"], failure["unexpected_count"]) == ("eq_vas", "warning", 3)
        # What the audit page sets the warning's share against: 3 of the 40 rows checked, where at most 5% may break it.
        assert (failure["checked_count"], failure["mostly"]) == (40, 0.95)


def test_missing_column_and_wrong_type_are_reported(tmp_path: Path, capture_logs: pytest.LogCaptureFixture) -> None:
    table = to_arrow(apc_rows(), load_contract("hospital_apc"))
    table = table.drop_columns(["postcode"])
    table = table.set_column(table.column_names.index("admission_method"), "admission_method", pa.array([11, 21, 99], pa.int16()))
    path = tmp_path / "in" / "apc.parquet"
    path.parent.mkdir()
    pq.write_table(table, path)
    with pytest.raises(ValidationFailed) as failed:
        validate_files("raw", {"hospital_apc": [path]}, tmp_path / "reports", "run-1", parameters=WINDOW)
    message = str(failed.value)
    assert "expect_table_columns_to_match_ordered_list" in message
    assert "column postcode: expect_column_type_to_be failed [critical]" in message and "could not be evaluated" in message
    assert "column admission_method: expect_column_type_to_be failed" in message
    # GX logs an error when it cannot render a result; every page must render.
    assert not [r for r in capture_logs.records if r.levelno >= logging.ERROR]


def test_large_file_is_read_in_row_groups_and_uniqueness_checked_across_them(tmp_path: Path) -> None:
    df = clean_frame("hospital_apc", rows=6).with_columns(
        record_id=pl.Series([f"APC00000000{i}" for i in (1, 2, 3, 4, 5, 1)]),  # rows 0 and 5: two batches apart
        sex=pl.Series(["F", "M", "U", "F", "M", "F"]),
    )
    path = write(df, "hospital_apc", tmp_path / "in" / "apc.parquet", row_group_size=2)
    reports = tmp_path / "reports"
    with pytest.raises(ValidationFailed, match="expect_column_values_to_be_unique"):
        validate_files("raw", {"hospital_apc": [path]}, reports, "run-1", max_batch_rows=3, parameters=WINDOW)
    file_summary = io.read_json(reports / "validation" / "raw.json")["datasets"]["hospital_apc"]["files"][0]
    assert file_summary["batches"] == ["row groups 0-0", "row groups 1-1", "row groups 2-2"]
    (failure,) = file_summary["failures"]
    assert (failure["column"], failure["unexpected_count"]) == ("record_id", 2)
    pages = list((reports / "data_docs" / "raw" / "validations").rglob("*.html"))
    assert len(pages) == 4  # three batches and the whole-file uniqueness check


@pytest.mark.parametrize("ignore_row_if", ["any_value_is_missing", "all_values_are_missing", "never"])
def test_whole_file_duplicates_are_counted_exactly_in_hash_buckets(tmp_path: Path, ignore_row_if: str) -> None:
    """The whole-file uniqueness count, split into hash buckets of a few rows each (memory bounded by
    the piece, not the file), equals the count over the file at once and pandas' duplicated()."""
    from pipeline.validate.batches import duplicate_row_count

    rng = __import__("random").Random(19)
    n = 500
    frame = pl.DataFrame(
        {
            "a": [rng.choice([None, *(f"{i:064x}" for i in range(150))]) for _ in range(n)],
            "b": [rng.choice([None, 1, 2]) for _ in range(n)],
            "d": [rng.choice([None, dt.date(2024, 1, 1), dt.date(2024, 1, 2)]) for _ in range(n)],
        }
    )
    path = tmp_path / "f.parquet"
    frame.write_parquet(path, row_group_size=64)
    for columns in (["a"], ["a", "b"], ["b", "d"]):
        kept = frame.to_pandas()[columns]
        if ignore_row_if == "any_value_is_missing":
            kept = kept.dropna(how="any")
        elif ignore_row_if == "all_values_are_missing":
            kept = kept.dropna(how="all")
        expected = int(kept.duplicated(keep=False).sum())
        assert expected > 0
        whole = duplicate_row_count(path, columns, ignore_row_if, piece_rows=10_000)
        bucketed = duplicate_row_count(path, columns, ignore_row_if, piece_rows=7)  # 72 buckets, windows of 7 rows
        assert whole == bucketed == expected
    assert duplicate_row_count(path, ["a", "missing"], "never", piece_rows=7) is None
    unique = tmp_path / "u.parquet"
    pl.DataFrame({"a": [f"{i:064x}" for i in range(100)]}).write_parquet(unique, row_group_size=16)
    assert duplicate_row_count(unique, ["a"], "any_value_is_missing", piece_rows=9) == 0


def test_rerun_overwrites_and_leaves_no_gx_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    apc = write(apc_rows(), "hospital_apc", tmp_path / "in" / "hospital_apc.parquet")
    for run in ("run-1", "run-2"):
        validate_files("raw", {"hospital_apc": [apc]}, tmp_path / "reports", run, parameters=WINDOW)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "reports"]
    docs = tmp_path / "reports" / "data_docs"
    assert sorted(p.name for p in docs.iterdir()) == ["index.html", "raw"]
    pages = list((docs / "raw" / "validations").rglob("*.html"))
    assert len(pages) == 1 and "run-2" in str(pages[0])
    assert sorted(p.name for p in (tmp_path / "reports").rglob("*.json")) == ["raw.json"]


def test_data_docs_templates_are_compiled_once_per_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GX gives every view of every site a Jinja environment of its own; a second site in the same
    process compiles none of the templates again."""
    import jinja2

    compiled: list[str] = []
    compile_template = jinja2.Environment.compile

    def counting(self, source, name=None, *args, **kwargs):
        compiled.append(name)
        return compile_template(self, source, name, *args, **kwargs)

    monkeypatch.setattr(jinja2.Environment, "compile", counting)
    apc = write(apc_rows(), "hospital_apc", tmp_path / "in" / "hospital_apc.parquet")
    validate_files("raw", {"hospital_apc": [apc]}, tmp_path / "first", "run-1", parameters=WINDOW)
    compiled.clear()  # (none when an earlier test in this process built a site)
    validate_files("raw", {"hospital_apc": [apc]}, tmp_path / "second", "run-1", parameters=WINDOW)
    assert compiled == []
    assert (tmp_path / "second" / "data_docs" / "raw" / "index.html").is_file()


def test_zones_share_a_reports_folder(tmp_path: Path) -> None:
    apc = write(apc_rows(), "hospital_apc", tmp_path / "in" / "hospital_apc.parquet")
    persons = write(clean_frame("study_persons"), "study_persons", tmp_path / "in" / "study_persons.parquet")
    validate_files("raw", {"hospital_apc": [apc]}, tmp_path / "reports", "r1", parameters=WINDOW)
    validate_files("pseudonymised", {"study_persons": [persons]}, tmp_path / "reports", "r1", parameters=WINDOW)
    landing = (tmp_path / "reports" / "data_docs" / "index.html").read_text()
    assert 'href="raw/index.html"' in landing and 'href="pseudonymised/index.html"' in landing


def test_concurrent_runs_do_not_interfere(tmp_path: Path) -> None:
    clean = write(apc_rows(), "hospital_apc", tmp_path / "in" / "clean.parquet")
    dirty = write(apc_rows(sex=["F", "M", "QQ9SECRET"]), "hospital_apc", tmp_path / "in" / "dirty.parquet")
    outcomes: dict[str, Any] = {}

    def run(name: str, path: Path) -> None:
        try:
            outcomes[name] = validate_files("raw", {"hospital_apc": [path]}, tmp_path / name, name, parameters=WINDOW)
        except ValidationFailed as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=run, args=(n, p)) for n, p in (("clean-run", clean), ("dirty-run", dirty))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(outcomes["clean-run"], Path) and isinstance(outcomes["dirty-run"], ValidationFailed)
    for name, file in (("clean-run", "clean.parquet"), ("dirty-run", "dirty.parquet")):
        summary = io.read_json(tmp_path / name / "validation" / "raw.json")
        assert summary["run_name"] == name
        assert [f["file"] for f in summary["datasets"]["hospital_apc"]["files"]] == [file]
    assert "dirty" not in all_report_text(tmp_path / "clean-run")


def test_unknown_dataset_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no contract for dataset"):
        validate_files("raw", {"hospital_apcc": [tmp_path / "x.parquet"]}, tmp_path / "reports", "r1")


def test_scrub_keeps_counts_only() -> None:
    from pipeline.validate._gx import ExpectationConfiguration, ExpectationValidationResult

    result = ExpectationValidationResult(
        success=False,
        expectation_config=ExpectationConfiguration(type="expect_column_values_to_be_in_set", kwargs={"column": "sex", "value_set": ["F"]}),
        result={"unexpected_count": 1, "element_count": 3, "partial_unexpected_list": ["SECRET"], "details": {"value": "SECRET"}},
        exception_info={"m1": {"raised_exception": True, "exception_message": "bad SECRET", "exception_traceback": "SECRET"}},
    )
    scrub_result(result)
    assert "SECRET" not in json.dumps(result.to_json_dict())
    assert result.result == {"unexpected_count": 1, "element_count": 3}
    assert result.exception_info["raised_exception"] is True


# ---------------------------------------------------------------------------------------------------
# Run parameters (the study window) and quarantine files


def test_a_rule_with_run_parameters_checks_this_runs_window(tmp_path: Path) -> None:
    df = clean_frame("study_persons").with_columns(
        index_date=pl.Series([dt.date(2022, 1, 1), dt.date(2019, 7, 14), dt.date(2026, 3, 31)])
    )
    path = write(df, "study_persons", tmp_path / "in" / "study_persons.parquet")
    reports = tmp_path / "reports"
    with pytest.raises(ValidationFailed) as failed:
        validate_files("pseudonymised", {"study_persons": [path]}, reports, "r1", parameters=WINDOW)
    assert "dataset study_persons" in str(failed.value) and "column index_date" in str(failed.value)
    assert "study window" in str(failed.value)
    assert_absent(["2019-07-14", "2019, 7, 14"], str(failed.value), all_report_text(reports))
    # A later window moves the boundary: the same file passes when the window starts before 2019.
    earlier = {**WINDOW, "study_start": dt.date(2019, 1, 1)}
    summary = io.read_json(validate_files("pseudonymised", {"study_persons": [path]}, reports, "r2", parameters=earlier))
    assert summary["success"] and summary["parameters"]["study_start"] == "2019-01-01"


def test_a_missing_run_parameter_is_refused_before_anything_runs(tmp_path: Path) -> None:
    path = write(clean_frame("study_persons"), "study_persons", tmp_path / "in" / "study_persons.parquet")
    with pytest.raises(ValueError, match=r"need run parameter\(s\) \['operating_models', 'sites', 'study_end', 'study_start', 'team_ids'\]"):
        validate_files("pseudonymised", {"study_persons": [path]}, tmp_path / "reports", "r1")
    assert not (tmp_path / "reports").exists()


def test_an_unknown_run_parameter_in_a_business_rule_is_refused(tmp_path: Path) -> None:
    (tmp_path / "survey.json").write_text(json.dumps({"name": "survey.business", "expectations": [{
        "type": "expect_column_values_to_be_between",
        "kwargs": {"column": "survey_date", "min_value": {"$PARAMETER": "study_begin"}},
        "meta": {"severity": "critical", "rule": "in the window"},
    }]}))  # fmt: skip
    with pytest.raises(ValueError, match=r"unknown run parameter\(s\) \['study_begin'\]"):
        business_suite("survey", tmp_path)
    assert set(RUN_PARAMETERS) >= {"study_start", "study_end"}


def test_every_zone_has_the_window_rules_it_needs() -> None:
    """Dates in the study window: critical for index and survey dates, a warning for service use."""
    def window_rules(dataset: str) -> dict[str, str]:
        return {
            e.column: e.meta["severity"]
            for e in validation_suite(dataset).expectations
            if e.expectation_type == "expect_column_values_to_be_between" and isinstance(e.configuration.kwargs.get("min_value"), dict)
        }

    assert window_rules("study_persons") == {"index_date": "critical"}
    assert window_rules("survey") == {"survey_date": "critical"}
    assert window_rules("hospital_apc_payload") == {"admission_date": "warning"}
    assert window_rules("gp_events_payload") == {"event_date": "warning"}
    assert window_rules("consent_register") == {"enrolment_date": "warning"}


def test_quarantine_files_are_validated_against_their_source_contract_plus_a_reason(tmp_path: Path) -> None:
    contract = validated_contract("hospital_apc_quarantine")
    assert contract.column_names == load_contract("hospital_apc").column_names + ["quarantine_reason"]
    # Quarantined rows broke a rule on purpose, so only the structure is checked, not business rules.
    assert {e.meta["source"] for e in validation_suite("hospital_apc_quarantine").expectations} == {"contract"}
    rows = apc_rows().with_columns(quarantine_reason=pl.lit("no usable identifier"))
    path = tmp_path / "q" / "hospital_apc.parquet"
    path.parent.mkdir()
    rows.write_parquet(path)  # as the pseudonymise stage sinks it: Polars types, large strings
    summary = io.read_json(validate_files("raw", {"hospital_apc_quarantine": [path]}, tmp_path / "reports", "r1"))
    assert summary["success"] and summary["statistics"]["failed_warning"] == 0
    missing_reason = rows.with_columns(quarantine_reason=pl.Series(["a", None, "b"], dtype=pl.String))
    missing_reason.write_parquet(path)
    with pytest.raises(ValidationFailed, match="column quarantine_reason: expect_column_values_to_not_be_null"):
        validate_files("raw", {"hospital_apc_quarantine": [path]}, tmp_path / "reports", "r1")


@pytest.mark.parametrize("dataset", ["hospital_apc", "token_blocks", "link_map", "panel", "survey"])
def test_column_groups_give_what_one_whole_frame_run_gives(tmp_path: Path, dataset: str) -> None:
    """Each expectation validated on only the columns it reads (pipeline.validate.column_groups)
    reaches the same verdicts and counts as GX on the whole frame, on clean and on broken rows."""
    import tempfile

    from pipeline.validate import docs
    from pipeline.validate._gx import Validator
    from pipeline.validate import batches
    from pipeline.validate.batches import ParquetBatch, plan_batches, read_batch
    from pipeline.validate.column_groups import validate_batch
    from pipeline.validate.privacy import RESULT_FORMAT, scrub_suite_result

    contract = validated_contract(dataset)
    clean = clean_frame(dataset, rows=6)
    # Break a few rows: a missing value in each non-nullable column and a value outside each pattern.
    row = pl.int_range(pl.len())
    broken = clean.with_columns(
        [pl.when(row == 1).then(None).otherwise(pl.col(c.name)).alias(c.name) for c in contract.columns if not c.nullable]
    ).with_columns(
        [
            pl.when(row == 2).then(pl.lit(["not it"] if c.type == "list[string]" else "not it")).otherwise(pl.col(c.name)).alias(c.name)
            for c in contract.columns
            if c.pattern
        ]
    )
    context = docs.ephemeral_context(Path(tempfile.mkdtemp(dir=tmp_path)))
    batch_definition = context.data_sources.add_pandas("p").add_dataframe_asset(dataset).add_batch_definition_whole_dataframe(dataset)
    suite = validation_suite(dataset)
    for i, df in enumerate((clean, broken)):
        path = write(df, dataset, tmp_path / f"{i}.parquet")
        frame = read_batch(path, plan_batches(path)[0], contract)
        whole = Validator(batch_definition=batch_definition, batch_parameters={"dataframe": frame}, result_format=dict(RESULT_FORMAT))
        expected = scrub_suite_result(whole.validate_expectation_suite(suite, expectation_parameters=WINDOW))
        got = scrub_suite_result(validate_batch(batch_definition, frame, suite, WINDOW, RESULT_FORMAT))

        def outcome(result: Any) -> list[str]:
            return sorted(json.dumps([r.expectation_config.to_json_dict(), r.success, r.result], sort_keys=True, default=str) for r in result.results)

        assert outcome(got) == outcome(expected)
        assert got.success == expected.success and got.statistics["unsuccessful_expectations"] == expected.statistics["unsuccessful_expectations"]
        assert i == 0 or not got.success
        # Read from the file a group's columns at a time, patterns and ranges over windows of 2 rows:
        # the same results again, and the batch's meta as GX gives it.
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(batches, "WINDOW_ROWS", 2)
            from_file = scrub_suite_result(validate_batch(batch_definition, ParquetBatch(path, plan_batches(path)[0], contract), suite, WINDOW, RESULT_FORMAT))
        assert outcome(from_file) == outcome(expected)
        def meta(result: Any) -> dict[str, Any]:  # less the time GX loaded the batch
            return {k: v for k, v in result.meta.items() if k != "batch_markers"} | {"markers": sorted(result.meta["batch_markers"])}

        assert meta(from_file) == meta(got) == meta(expected)


TOKEN = "[0-9a-f]{64}"
# Columns (Arrow type, values) and the rules counted on them: clean, broken with missing values, all missing, empty.
COUNTED_COLUMNS: dict[str, tuple[pa.DataType, list[Any]]] = {
    "tokens": (pa.large_string(), [f"{i:064x}" for i in range(4)]),
    "tokens broken": (pa.large_string(), [f"{1:064x}", None, "ABC", f"{2:064x}" + "0", None, f"{3:064x}", f"{1:064x}"]),
    "ints": (pa.int64(), [0, 5, 10, 3]),
    "ints broken": (pa.int8(), [0, None, -1, 11, 10, 7, 7, None]),
    "floats broken": (pa.float64(), [0.0, float("nan"), None, 1.0, 1.5, -0.25]),
    "dates broken": (pa.date32(), [dt.date(2021, 4, 1), None, dt.date(2021, 3, 31), dt.date(2026, 4, 1), dt.date(2024, 1, 1)]),
    "all missing": (pa.int64(), [None, None]),
    "empty": (pa.large_string(), []),
}
COUNTED_RULES = {
    pa.large_string(): [{"type": "regex", "regex": f"^(?:{TOKEN})$"}, {"type": "unique"}],
    pa.int64(): [{"min_value": 0, "max_value": 10}, {"min_value": 0, "max_value": 10, "strict_min": True, "strict_max": True}, {"type": "unique"}],
    pa.int8(): [{"min_value": 0}, {"max_value": 10}, {"min_value": 0.5, "max_value": 9.5}, {"type": "unique"}],
    pa.float64(): [{"min_value": 0, "max_value": 1}, {"min_value": 0}, {"max_value": 1.0, "strict_max": True}],
    pa.date32(): [{"min_value": {"$PARAMETER": "study_start"}, "max_value": {"$PARAMETER": "study_end"}}, {"min_value": dt.date(2021, 4, 1)}],
}


@pytest.mark.parametrize("mostly", [None, 0.5, 0.9])
@pytest.mark.parametrize("values", list(COUNTED_COLUMNS))
def test_rules_counted_with_polars_give_what_gx_gives(tmp_path: Path, values: str, mostly: float | None) -> None:
    """A pattern, range or uniqueness rule counted with Polars (pipeline.validate.vectorised) gives the very
    result GX's own evaluation gives: configuration, verdict under `mostly`, every count and percentage."""
    import pandas as pd

    from pipeline.validate import docs
    from pipeline.validate._gx import Validator, gx
    from pipeline.validate.vectorised import counted_here, counted_result
    from pipeline.validate.privacy import RESULT_FORMAT

    arrow_type, column = COUNTED_COLUMNS[values]
    frame = pa.table({"c": pa.array(column, arrow_type)}).to_pandas(types_mapper=pd.ArrowDtype)
    context = docs.ephemeral_context(tmp_path / "docs")
    batch_definition = context.data_sources.add_pandas("p").add_dataframe_asset("a").add_batch_definition_whole_dataframe("a")
    extra = {} if mostly is None else {"mostly": mostly}
    for kwargs in COUNTED_RULES[arrow_type]:
        if kwargs.get("type") == "regex":
            expectation = gx.expectations.ExpectColumnValuesToMatchRegex(column="c", regex=kwargs["regex"], meta={"rule": "r"}, **extra)
        elif kwargs.get("type") == "unique":
            expectation = gx.expectations.ExpectColumnValuesToBeUnique(column="c", meta={"rule": "r"}, **extra)
        else:
            expectation = gx.expectations.ExpectColumnValuesToBeBetween(column="c", meta={"rule": "r"}, **kwargs, **extra)
        assert counted_here(expectation, frame, WINDOW), kwargs
        validator = Validator(batch_definition=batch_definition, batch_parameters={"dataframe": frame}, result_format=dict(RESULT_FORMAT))
        suite = gx.ExpectationSuite(name="s", expectations=[expectation])
        (expected,) = validator.validate_expectation_suite(suite, expectation_parameters=WINDOW).results
        got = counted_result(expectation, frame, WINDOW, expected.expectation_config.kwargs["batch_id"])
        assert json.dumps(got.to_json_dict(), sort_keys=True, default=str) == json.dumps(expected.to_json_dict(), sort_keys=True, default=str), kwargs
        assert values.endswith("broken") <= (got.result["unexpected_count"] > 0)


# A link map's columns, broken: present and missing values, and the row conditions its business rules use.
NULL_RULE_FRAME = {
    "participant_id": (pa.large_string(), ["p1", None, "p2", None, "p3", None]),
    "rank": (pa.large_string(), ["1", None, None, "P", "5", None]),
    "conflict": (pa.bool_(), [False, True, None, True, False, False]),
    "n": (pa.int64(), [1, 2, None, 2, 3, 1]),
}
NULL_RULE_CONDITIONS = [
    None,
    {"type": "nullity", "column": {"name": "participant_id"}, "is_null": False},
    {"type": "nullity", "column": {"name": "participant_id"}, "is_null": True},
    {"type": "comparison", "column": {"name": "conflict"}, "operator": "==", "parameter": True},
    {"type": "comparison", "column": {"name": "rank"}, "operator": "==", "parameter": "P"},
    {"type": "comparison", "column": {"name": "rank"}, "operator": "IN", "parameter": ["1", "5"]},
    {"type": "comparison", "column": {"name": "n"}, "operator": "==", "parameter": 2},
    {"type": "comparison", "column": {"name": "n"}, "operator": "==", "parameter": 7},  # no row kept
]


@pytest.mark.parametrize("rows", [6, 0], ids=["rows", "empty"])
@pytest.mark.parametrize("mostly", [None, 0.5])
def test_missing_value_rules_counted_with_polars_give_what_gx_gives(tmp_path: Path, mostly: float | None, rows: int) -> None:
    """`expect_column_values_to_(not_)be_null`, with or without a row condition (a link map's rank is
    present exactly where it has a participant), counted with Polars, give GX's own result, whole or
    added up over windows of rows."""
    import pandas as pd

    from pipeline.validate import docs
    from pipeline.validate._gx import Validator, gx
    from pipeline.validate.privacy import RESULT_FORMAT
    from pipeline.validate.vectorised import Counts, count, counted_columns, counted_here, result_of

    table = pa.table({name: pa.array(values[:rows], kind) for name, (kind, values) in NULL_RULE_FRAME.items()})
    frame = table.to_pandas(types_mapper=pd.ArrowDtype)
    context = docs.ephemeral_context(tmp_path / "docs")
    batch_definition = context.data_sources.add_pandas("p").add_dataframe_asset("a").add_batch_definition_whole_dataframe("a")
    extra = {} if mostly is None else {"mostly": mostly}
    for rule in (gx.expectations.ExpectColumnValuesToNotBeNull, gx.expectations.ExpectColumnValuesToBeNull):
        for column in ("rank", "n"):
            for condition in NULL_RULE_CONDITIONS:
                where = {} if condition is None else {"row_condition": condition}
                expectation = rule(column=column, meta={"rule": "r"}, **where, **extra)
                assert counted_here(expectation, frame), (rule, condition)
                validator = Validator(batch_definition=batch_definition, batch_parameters={"dataframe": frame}, result_format=dict(RESULT_FORMAT))
                (expected,) = validator.validate_expectation_suite(gx.ExpectationSuite(name="s", expectations=[expectation])).results
                columns = list(dict.fromkeys(counted_columns(expectation)))
                windows = sum((count(expectation, frame[columns].iloc[i : i + 2], None) for i in range(0, rows, 2)), Counts(0, 0, 0))
                for counts in (count(expectation, frame[columns], None), windows):
                    got = result_of(expectation, counts, None, expected.expectation_config.kwargs["batch_id"])
                    assert json.dumps(got.to_json_dict(), sort_keys=True, default=str) == json.dumps(expected.to_json_dict(), sort_keys=True, default=str), (rule, column, condition)


def test_row_conditions_polars_cannot_filter_alike_stay_with_gx() -> None:
    import pandas as pd

    from pipeline.validate._gx import gx
    from pipeline.validate.vectorised import counted_here

    frame = pa.table(
        {"r": pa.array(["1"], pa.string()), "n": pa.array([1], pa.int64()), "d": pa.array([dt.date(2022, 1, 1)]), "s": pa.array([1], pa.uint8())}
    )
    frame = frame.to_pandas(types_mapper=pd.ArrowDtype)
    not_null = gx.expectations.ExpectColumnValuesToNotBeNull

    def compare(column: str, operator: str, parameter: Any) -> dict[str, Any]:
        return {"type": "comparison", "column": {"name": column}, "operator": operator, "parameter": parameter}

    assert counted_here(not_null(column="r", row_condition=compare("n", "==", 1)), frame)
    assert not counted_here(not_null(column="r", row_condition=compare("n", "==", "1")), frame)  # text against a number
    assert not counted_here(not_null(column="r", row_condition=compare("n", "==", True)), frame)  # true/false against a number
    assert not counted_here(not_null(column="r", row_condition=compare("n", ">", 0)), frame)  # an operator not counted here
    assert not counted_here(not_null(column="r", row_condition=compare("d", "==", "2022-01-01")), frame)  # a date
    assert not counted_here(not_null(column="r", row_condition=compare("gone", "==", 1)), frame)  # a missing column
    # A value the column's type cannot hold: Polars could not even make it a value of that type.
    assert counted_here(not_null(column="r", row_condition=compare("s", "IN", [0, 255])), frame)
    assert not counted_here(not_null(column="r", row_condition=compare("s", "==", 256)), frame)
    assert not counted_here(not_null(column="r", row_condition=compare("s", "IN", [1, -1])), frame)
    assert not counted_here(not_null(column="gone"), frame)  # GX says it cannot evaluate


def test_rules_polars_cannot_count_alike_stay_with_gx() -> None:
    import pandas as pd

    from pipeline.validate._gx import gx
    from pipeline.validate.vectorised import counted_here

    frame = pa.table({"tok": pa.array(["a"], pa.string()), "n": pa.array([1], pa.int64()), "d": pa.array([dt.date(2022, 1, 1)])})
    frame = frame.to_pandas(types_mapper=pd.ArrowDtype)
    regex, between = gx.expectations.ExpectColumnValuesToMatchRegex, gx.expectations.ExpectColumnValuesToBeBetween
    assert not counted_here(regex(column="n", regex="^1$"), frame)  # not a string column: GX reports the type
    assert not counted_here(regex(column="gone", regex="^a$"), frame)  # a missing column: GX says it cannot evaluate
    assert not counted_here(regex(column="tok", regex="^(a)\\1$"), frame)  # a back-reference Polars has not
    condition = {"type": "nullity", "column": {"name": "n"}, "is_null": False}
    assert not counted_here(regex(column="tok", regex="^a$", row_condition=condition), frame)
    assert not counted_here(between(column="tok", min_value=0), frame)  # text against a number: GX's error
    assert not counted_here(between(column="n", min_value=5, max_value=1), frame)  # bounds the wrong way round
    assert not counted_here(between(column="d", min_value={"$PARAMETER": "study_start"}), frame, {})  # parameter not given


def test_a_pattern_means_the_whole_value_even_before_a_final_line_break(tmp_path: Path) -> None:
    """Python's `$` (GX's regex) also matches before a final line break; the Polars count does not,
    so a token with a line break appended fails its pattern, as the contract check says it does."""
    df = clean_frame("record_blocks").with_columns(record_id=pl.Series([f"{1:064x}", f"{2:064x}\n", f"{3:064x}"]))
    path = write(df, "record_blocks", tmp_path / "in" / "record_blocks.parquet")
    with pytest.raises(ValidationFailed, match=r"column record_id: expect_column_values_to_match_regex failed \[critical\]"):
        validate_files("pseudonymised", {"record_blocks": [path]}, tmp_path / "reports", "r1", parameters=WINDOW)


def test_a_worker_process_gives_the_same_summary_as_this_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches validated on a worker process (pipeline.validate.workers) are summarised exactly as
    batches validated in the calling process, failures, counts and batch order included."""
    df = clean_frame("hospital_apc", rows=6).with_columns(
        record_id=pl.Series([f"APC00000000{i}" for i in (1, 2, 3, 4, 5, 1)]),
        sex=pl.Series(["F", "M", "X", "F", "M", "F"]),  # one value outside the contract's set
    )
    path = write(df, "hospital_apc", tmp_path / "in" / "apc.parquet", row_group_size=2)
    summaries = []
    for workers in ("0", "1"):
        monkeypatch.setenv("PPRL_VALIDATION_WORKERS", workers)
        reports = tmp_path / f"reports-{workers}"
        with pytest.raises(ValidationFailed):
            validate_files("raw", {"hospital_apc": [path], "hospital_apc_quarantine": []}, reports, "run-1", max_batch_rows=2, parameters=WINDOW)
        summaries.append(io.read_json(reports / "validation" / "raw.json")["datasets"])
    assert summaries[0] == summaries[1]
    failures = {(f["column"], f["unexpected_count"]) for f in summaries[1]["hospital_apc"]["files"][0]["failures"]}
    assert {("record_id", 2), ("sex", 1)} <= failures


def test_study_values_are_checked_against_the_runs_study(tmp_path: Path) -> None:
    """A contract's `{study: sites}` rule is a GX suite parameter: the same file passes for the study
    that has the site and fails for one that has not."""
    frame = clean_frame("study_persons")
    path = write(frame, "study_persons", tmp_path / "in" / "study_persons.parquet")
    validate_files("pseudonymised", {"study_persons": [path]}, tmp_path / "ok", "r1", parameters=WINDOW)
    other = {**WINDOW, "sites": ["wyebridge", "kirkby_marsh"]}
    with pytest.raises(ValidationFailed, match=r"column site: expect_column_values_to_be_in_set failed \[critical\], rule: site is one of the study's sites"):
        validate_files("pseudonymised", {"study_persons": [path]}, tmp_path / "refused", "r2", parameters=other)
