"""The command line for data engineers: fast answers before Airflow, the flags' own names, named
errors, help on every flag.

- `pipeline run --raw /nonexistent ...` fails in under 3 seconds naming the folder, without
  importing Airflow (or Polars), and names the flags typed, not Airflow Params.
- A key or publishing key given nowhere is reported by the command line before Airflow starts.
- `pipeline check UNKNOWN FILE` lists the valid dataset names; wrong paths are named, no traceback.
- Every option and argument of every command has help text.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import pytest

from pipeline.cli import build_parser, main
from pipeline.contracts import all_contract_names
from pipeline.settings import REPO_DIR, SETTING_NAMES_VARIABLE, named_as, setting

# The promise: a wrong input folder is answered in under 3 seconds (Airflow alone takes 30-40).
FAIL_FAST_SECONDS = 3


def _clean_env(monkeypatch) -> None:
    for name in ("PPRL_KEY", "PPRL_KEY_FILE", "PPRL_PUBLISHING_KEY_FILE", "AIRFLOW_CONN_PPRL_KEY", "AIRFLOW_VAR_PPRL_KEY",
                 "AIRFLOW_CONN_PPRL_PUBLISHING_KEY", "AIRFLOW_VAR_PPRL_PUBLISHING_KEY", SETTING_NAMES_VARIABLE):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def test_a_missing_input_folder_fails_in_under_three_seconds_naming_the_folder(tmp_path, monkeypatch) -> None:
    _clean_env(monkeypatch)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", "--raw", "/nonexistent", "--work", str(tmp_path / "work"), "--release", "r1"],
        capture_output=True, text=True, cwd=REPO_DIR, timeout=60,
    )  # fmt: skip
    seconds = time.monotonic() - started
    assert seconds < FAIL_FAST_SECONDS, f"took {seconds:.1f}s: {done.stderr}"
    assert done.returncode == 2, done.stderr
    assert "/nonexistent: rule 'input folder present' broken: the input folder does not exist; check --raw" in done.stderr
    assert "Traceback" not in done.stderr and "Airflow Param" not in done.stderr
    assert not (tmp_path / "work").exists()


def test_the_refusal_path_imports_neither_airflow_nor_polars(tmp_path, monkeypatch) -> None:
    _clean_env(monkeypatch)
    probe = (
        "import sys\n"
        "from pipeline.cli import main\n"
        f"code = main(['run', '--raw', '/nonexistent', '--work', {str(tmp_path / 'w')!r}, '--release', 'r1'])\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'airflow', 'polars', 'pyarrow', 'great_expectations', 'splink'})\n"
        "print(code, heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_DIR, timeout=60)
    assert done.stdout.strip() == "2 []", done.stdout + done.stderr


def test_keys_given_nowhere_are_reported_by_the_command_line_with_their_flags(tmp_path, monkeypatch, capsys) -> None:
    _clean_env(monkeypatch)
    raw = tmp_path / "raw"
    raw.mkdir()
    code = main(["run", "--raw", str(raw), "--work", str(tmp_path / "w"), "--release", "r1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "linkage key: rule 'key given' broken" in err and "--key" in err
    assert "publishing key: rule 'key given' broken" in err and "--publishing-key" in err
    assert "Airflow Param" not in err and "Traceback" not in err
    assert not (tmp_path / "w").exists()


def test_a_named_publishing_key_file_is_checked_before_airflow(tmp_path, monkeypatch, capsys) -> None:
    _clean_env(monkeypatch)
    key = tmp_path / "publishing.key"
    key.write_text("not read")
    key.chmod(0o644)
    code = main(["run", "--raw", str(tmp_path), "--work", str(tmp_path / "w"), "--release", "r1", "--publishing-key", str(key)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{key}: rule 'key file private' broken" in err and "chmod 600" in err and "(--publishing-key)" in err


def test_the_airflow_deployment_may_hold_the_keys_in_its_secret_store(tmp_path, monkeypatch) -> None:
    """The DAG's preflight task cannot see the metadata database's connections: no key named is fine there."""
    from pipeline.errors import PreflightError
    from pipeline.preflight import preflight
    from pipeline.settings import RunConfig

    _clean_env(monkeypatch)
    cfg = RunConfig.from_conf({"raw_dir": str(tmp_path / "none"), "work_dir": str(tmp_path / "w"), "release_label": "r1"})
    with pytest.raises(PreflightError) as refused:
        preflight(cfg)
    assert [v.rule for v in refused.value.violations] == ["input folder present"]


def test_messages_name_settings_in_the_words_of_whoever_set_them(monkeypatch) -> None:
    monkeypatch.delenv(SETTING_NAMES_VARIABLE, raising=False)
    assert setting("replace_release") == "--replace (Airflow Param replace_release)"
    with named_as("cli"):
        assert setting("replace_release") == "--replace" and setting("release_label") == "--release"
    with named_as("airflow"):
        assert setting("replace_release") == "Airflow Param replace_release"
    assert setting("replace_release") == "--replace (Airflow Param replace_release)"


def test_check_with_an_unknown_dataset_lists_the_valid_names(tmp_path, capsys) -> None:
    code = main(["check", "hospital", str(tmp_path / "f.parquet")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "no data contract named 'hospital'" in err
    for name in ("hospital_apc", "hospital_ae", "hospital_op", "consent_register", "survey"):
        assert name in err
    assert main(["check", "../pyproject", str(tmp_path / "f.parquet")]) == 2
    assert "no data contract named '../pyproject'" in capsys.readouterr().err


def test_check_names_a_missing_file(tmp_path, capsys) -> None:
    missing = tmp_path / "f.parquet"
    assert main(["check", "hospital_apc", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"{missing}: rule 'file present' broken" in err and "Traceback" not in err


def test_every_option_and_argument_has_help() -> None:
    def parsers(parser: argparse.ArgumentParser):
        yield parser.prog, parser
        for action in parser._actions:  # argparse keeps subcommands only here
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    missing = [
        f"{prog} {action.option_strings or action.dest}"
        for prog, parser in parsers(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction) and not action.help
    ]
    assert missing == []
    assert set(all_contract_names()) >= {"hospital_apc", "cohort"}


# ---------------------------------------------------------------------------------------------------
# pipeline describe


def test_describe_prints_each_tables_purpose_rows_samples_caveats_and_starter_scripts(reference, capsys) -> None:
    import json

    import pyarrow.parquet as pq

    from pipeline.contracts import load_contract

    release = reference.release
    assert main(["describe", str(release)]) == 0
    out = capsys.readouterr().out
    manifest = json.loads((release / "manifest.json").read_text())
    for table in ("cohort", "outcomes", "service_use", "panel", "matches", "balance"):
        contract = load_contract(table)
        block = out.split(f"\n{table}.parquet: ", 1)[1].split("\n\n", 1)[0]
        assert block.startswith(f"{pq.ParquetFile(release / f'{table}.parquet').metadata.num_rows} rows")
        assert f"purpose: {contract.description}" in block
        assert contract.caveats and all(c in block for c in contract.caveats)
        columns = block.split("  columns: ", 1)[1]
        assert all(f"{c.name} ({c.type}" in columns for c in contract.columns)
    matches_block = out.split("\nmatches.parquet: ", 1)[1].split("\n\n", 1)[0]
    for sample, figures in manifest["cohort"]["samples"].items():
        assert f"    {sample}: MDT eligible " in matches_block
        if figures["matched_mdt"] is not None:
            assert f"MDT matched {figures['matched_mdt']}," in matches_block.split(f"    {sample}: ", 1)[1].splitlines()[0]
    assert "starter script, Python (Polars):" in out and "starter script, R (arrow, dplyr):" in out
    assert 'read_parquet(file.path(release, "cohort.parquet"))' in out


def test_the_python_starter_script_runs_on_the_release(reference) -> None:
    from pipeline.publish.describe import python_starter

    tables = ["cohort", "outcomes", "service_use", "panel", "matches", "balance"]
    done = subprocess.run([sys.executable, "-c", python_starter(reference.release, tables)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "mdt" in done.stdout and "comparator" in done.stdout


def test_describe_names_a_wrong_path_and_points_from_a_work_folder_to_its_releases(reference, tmp_path, capsys) -> None:
    assert main(["describe", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nowhere'}: rule 'release folder present' broken" in err and "Traceback" not in err
    assert main(["describe", str(reference.cfg.work)]) == 2
    err = capsys.readouterr().err
    assert "it has no manifest.json" in err and f"releases/{reference.cfg.release_label}" in err


def test_a_work_folder_that_cannot_be_written_is_named_before_airflow(tmp_path, monkeypatch, capsys) -> None:
    _clean_env(monkeypatch)
    work = tmp_path / "work-is-a-file"
    work.write_text("")
    assert main(["run", "--raw", str(tmp_path), "--work", str(work), "--release", "r1"]) == 2
    err = capsys.readouterr().err
    assert f"{work}: rule 'work folder writable' broken: this is a file, not a folder; check --work" in err
