"""The bad-input corpus: every way a delivery arrives malformed, each with its exact outcome.

Every case is made here, from the small clean delivery of the `reference` fixture (tests/conftest.py),
whose release is already published in the work folder: the "earlier release" no case may touch.

- File-level faults stop the run at the stage that finds them, with a message naming the file, the
  column and the rule and saying what to do, never a patient's value. Nothing is published, no
  staging folder is left, and the earlier release keeps its bytes.
- Row-level faults send the row to quarantine (raw/quarantine/<label>/) with its reason, counted in
  the manifest; the run goes on and publishes.
- Identifier faults of one field (an NHS number with letters, a very long name) are neither: the
  field is unusable or unusual, the row is still linked on what it has, and the fault is counted.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import stage_runner
from conftest import RETAIN, Reference, file_hashes, record_tokens

from pipeline import io
from pipeline.cli import main as cli_main
from pipeline.crypto.keys import KEY_ENVIRONMENT, new_key_file
from pipeline.errors import ContractError, KeyFileError, KeyMismatchError, PipelineError, PreflightError
from pipeline.pseudonymise.records import QUARANTINE_REASON
from pipeline.pseudonymise.row_rules import DATE_OF_BIRTH
from pipeline.settings import SOURCES, RunConfig
from pipeline.zones import counts_file, link_map_file, scan_record_tokens

D = dt.date


@pytest.fixture(scope="module")
def earlier(reference: Reference, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A work folder holding the reference's published release, and that release's file hashes."""
    work = tmp_path_factory.mktemp("corpus") / "work"
    shutil.copytree(reference.cfg.work, work, symlinks=True)
    release = work / "releases" / reference.cfg.release_label
    return work, file_hashes(release)


@pytest.fixture(scope="module")
def secrets(reference: Reference) -> list[str]:
    """Identifier values of the delivery and the key: none may appear in a message or a log."""
    values: set[str] = set()
    for dataset in ("consent_register", *SOURCES):
        df = pl.read_parquet(reference.raw / f"{dataset}.parquet", columns=["nhs_number", "family_name", "postcode", "date_of_birth"])
        values |= set(df.get_column("nhs_number").drop_nulls().to_list())
        values |= set(df.get_column("postcode").drop_nulls().to_list())
        values |= {n for n in df.get_column("family_name").drop_nulls().to_list() if len(n) >= 6}
        values |= {d.isoformat() for d in df.get_column("date_of_birth").drop_nulls().to_list()}
    key = json.loads(reference.key_file.read_text())["key"]
    return sorted(values) + [key, base64.b64decode(key).hex()]


def deliver(reference: Reference, folder: Path) -> Path:
    raw = folder / "raw"
    shutil.copytree(reference.raw, raw)
    return raw


def rewrite(raw: Path, dataset: str, change: Callable[[pl.DataFrame], pl.DataFrame]) -> None:
    path = raw / f"{dataset}.parquet"
    change(pl.read_parquet(path)).write_parquet(path)


def damage_column(path: Path, column: str) -> None:
    """Overwrite the middle of one column's data in the file with 0xFF bytes, leaving its footer whole."""
    meta = pq.ParquetFile(path).metadata
    chunk = meta.row_group(0).column(meta.schema.to_arrow_schema().get_field_index(column))
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(path.read_bytes())
    lo, hi = start + chunk.total_compressed_size // 4, start + 3 * chunk.total_compressed_size // 4
    data[lo:hi] = b"\xff" * (hi - lo)
    path.write_bytes(bytes(data))


def with_invalid_utf8(path: Path, column: str) -> None:
    """Rewrite `column` as a string column whose bytes are Latin-1, not UTF-8 (as a mis-set export writes)."""
    table = pq.read_table(path)
    latin1 = pa.array([v.encode("latin-1", "replace") + b"\xe9" if v else None for v in table.column(column).to_pylist()], pa.binary())
    pq.write_table(table.set_column(table.schema.get_field_index(column), column, latin1.view(pa.string())), path)


# ---------------------------------------------------------------------------------------------------
# File-level faults


@dataclass(frozen=True)
class FileFault:
    make: Callable[[Path, Path], None]  # (raw folder, case folder)
    error: type[PipelineError]
    file: str  # the file the message names
    column: str | None
    rule: str
    todo: str  # what the message tells the user to do (a fragment of it)


def _csv_named_parquet(raw: Path, _: Path) -> None:
    pl.read_parquet(raw / "hospital_apc.parquet").write_csv(raw / "hospital_apc.parquet")


def _csv_instead(raw: Path, _: Path) -> None:
    pl.read_parquet(raw / "hospital_apc.parquet").write_csv(raw / "hospital_apc.csv")
    (raw / "hospital_apc.parquet").unlink()


def _truncated(raw: Path, _: Path) -> None:
    data = (raw / "hospital_apc.parquet").read_bytes()
    (raw / "hospital_apc.parquet").write_bytes(data[: len(data) * 2 // 3])


def _file_and_parts(raw: Path, _: Path) -> None:
    """The extract delivered twice: as one file and as a folder of parts."""
    (raw / "hospital_apc").mkdir()
    shutil.copyfile(raw / "hospital_apc.parquet", raw / "hospital_apc" / "part-0.parquet")


def _duplicate_participant(raw: Path, _: Path) -> None:
    rewrite(raw, "consent_register", lambda df: pl.concat([df, df.head(1)]))


def _duplicate_record_id(raw: Path, _: Path) -> None:
    rewrite(raw, "hospital_apc", lambda df: df.with_columns(record_id=pl.when(pl.int_range(pl.len()) == 1).then(pl.first("record_id")).otherwise("record_id")))


FILE_FAULTS: dict[str, FileFault] = {
    "missing column": FileFault(
        lambda raw, _: rewrite(raw, "hospital_apc", lambda df: df.drop("admission_method")),
        ContractError, "hospital_apc.parquet", "admission_method", "column present", "add it, or read the file through a mapping",
    ),
    "wrong type": FileFault(
        lambda raw, _: rewrite(raw, "gp_events", lambda df: df.with_columns(pl.col("event_date").cast(pl.String))),
        ContractError, "gp_events.parquet", "event_date", "type date", "deliver it as date32[day]",
    ),
    "unexpected extra column": FileFault(
        lambda raw, _: rewrite(raw, "hospital_ae", lambda df: df.with_columns(ethnicity=pl.lit("A"))),
        ContractError, "hospital_ae.parquet", "ethnicity", "declared column", "remove it or add it to the contract",
    ),
    "empty file": FileFault(
        lambda raw, _: (raw / "social_care.parquet").write_bytes(b""),
        ContractError, "social_care.parquet", None, "readable Parquet", "empty (0 bytes), so the export or the copy failed; deliver it again",
    ),
    "zero-row file": FileFault(
        lambda raw, _: rewrite(raw, "hospital_op", lambda df: df.head(0)),
        ContractError, "hospital_op.parquet", None, "not empty", "check it with the provider and deliver it again",
    ),
    "truncated Parquet": FileFault(
        _truncated, ContractError, "hospital_apc.parquet", None, "readable Parquet", "truncated (it has no Parquet footer",
    ),
    "corrupt Parquet": FileFault(
        lambda raw, _: damage_column(raw / "gp_events.parquet", "family_name"),
        ContractError, "gp_events.parquet", "family_name", "readable values", "damaged data that cannot be decoded; export or copy the file again",
    ),
    "CSV named .parquet": FileFault(
        _csv_named_parquet, ContractError, "hospital_apc.parquet", None, "readable Parquet", "not valid Parquet (it does not start with Parquet's marker",
    ),
    "CSV instead of Parquet": FileFault(
        _csv_instead, ContractError, "hospital_apc.parquet", None, "file present", "hospital_apc.csv does; deliver the extract as Parquet",
    ),
    "non-UTF-8 names as bytes": FileFault(
        lambda raw, _: rewrite(raw, "hospital_op", lambda df: df.with_columns(pl.col("family_name").cast(pl.Binary))),
        ContractError, "hospital_op.parquet", "family_name", "type string", "re-export it as UTF-8 text",
    ),
    "non-UTF-8 names as text": FileFault(
        lambda raw, _: with_invalid_utf8(raw / "hospital_op.parquet", "given_name"),
        ContractError, "hospital_op.parquet", "given_name", "readable values", "not valid UTF-8; re-export the file with text encoded as UTF-8",
    ),
    "a file and a folder of parts for one extract": FileFault(
        _file_and_parts, ContractError, "hospital_apc", None, "one delivery per dataset", "keep the one that is the delivery",
    ),
    "duplicate record IDs": FileFault(
        _duplicate_record_id, ContractError, "hospital_apc.parquet", "record_id", "unique", "1 row(s) break the rule: they repeat a value that must be unique",
    ),
    "duplicate participants in the consent register": FileFault(
        _duplicate_participant, ContractError, "consent_register.parquet", "participant_id", "unique", "1 row(s) break the rule: they repeat a value that must be unique",
    ),
    "missing consent register": FileFault(
        lambda raw, _: (raw / "consent_register.parquet").unlink(),
        ContractError, "consent_register.parquet", None, "file present", "does not exist; check the input folder",
    ),
}  # fmt: skip


def assert_nothing_published(work: Path, label: str, earlier_hashes: dict[str, str], reference: Reference) -> None:
    releases = work / "releases"
    assert not (releases / label).exists(), "a failed run must not publish"
    assert not list(releases.glob(".staging-*")) and not list(releases.glob(".old-*"))
    assert file_hashes(releases / reference.cfg.release_label) == earlier_hashes, "the earlier release was touched"


def assert_no_value_in(text: str, secrets: list[str]) -> None:
    leaked = [s for s in secrets if s in text]
    assert not leaked, f"{len(leaked)} identifier value(s) in a message or log"


@pytest.mark.parametrize("case", list(FILE_FAULTS))
def test_a_file_level_fault_stops_the_run_naming_file_column_and_rule(case, reference, earlier, secrets, tmp_path, caplog):
    fault = FILE_FAULTS[case]
    work, earlier_hashes = earlier
    raw = deliver(reference, tmp_path)
    fault.make(raw, tmp_path)
    label = "bad-" + case.replace(" ", "-").replace(".", "").lower()[:40]
    caplog.set_level(logging.DEBUG, logger="pipeline")

    with pytest.raises(fault.error) as failed:
        stage_runner.run_steps(reference.conf(work, label, raw=raw))

    (violation,) = failed.value.violations
    assert (Path(violation.file).name, violation.column, violation.rule) == (fault.file, fault.column, fault.rule)
    assert Path(violation.file).parent == raw
    assert fault.todo in violation.detail
    message = str(failed.value)
    assert str(violation) in message
    assert_no_value_in(message + caplog.text, secrets)
    # It stopped at the input check: nothing was pseudonymised for the label, nothing published.
    assert not (work / "pseudonymised" / label).exists()
    assert_nothing_published(work, label, earlier_hashes, reference)


def test_the_command_line_check_says_the_same_and_exits_2(reference, tmp_path, capsys):
    """`pipeline check` on a CSV given where Parquet is expected: one clear line, no traceback."""
    path = tmp_path / "extract.parquet"
    pl.read_parquet(reference.raw / "hospital_apc.parquet").write_csv(path)
    assert cli_main(["check", "hospital_apc", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 1 contract violation(s):") and f"{path}: rule 'readable Parquet' broken" in err
    assert "Traceback" not in err


# --- the key ---------------------------------------------------------------------------------------


def _key_copy(reference: Reference, folder: Path, mode: int) -> Path:
    path = folder / "group-readable.key.json"
    shutil.copyfile(reference.key_file, path)
    os.chmod(path, mode)
    return path


KEY_FAULTS = {
    # case: (key file to use, message it must end with)
    "missing key file": (
        lambda reference, folder: folder / "nowhere" / "key.json",
        "no key file there; give the right path, or make a key with `pipeline keys new --out FILE`",
    ),
    "group-readable key file": (
        lambda reference, folder: _key_copy(reference, folder, 0o640),
        "the key file is readable or writable by group or others (mode 0640); run `chmod 600 {path}` and check who may have copied it",
    ),
}


PREFLIGHT_KEY_RULES = {"missing key file": "key file present", "group-readable key file": "key file private"}


@pytest.mark.parametrize("case", list(KEY_FAULTS))
def test_a_key_fault_stops_the_run_before_anything_is_tokenised(case, reference, earlier, secrets, tmp_path, monkeypatch, caplog):
    for name in KEY_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    make, ending = KEY_FAULTS[case]
    work, earlier_hashes = earlier
    key_file = make(reference, tmp_path)
    label = "bad-" + case.replace(" ", "-")
    conf = reference.conf(work, label)
    conf["key_file"] = str(key_file)
    caplog.set_level(logging.DEBUG, logger="pipeline")

    # The pre-flight check finds it first, from the file's mode alone, before any work.
    with pytest.raises(PreflightError) as refused:
        stage_runner.run_steps(conf)
    (violation,) = refused.value.violations
    assert violation.file == str(key_file) and violation.rule in PREFLIGHT_KEY_RULES[case]
    assert_no_value_in(str(refused.value) + caplog.text, secrets)
    assert not (work / "pseudonymised" / label).exists()
    # A task cleared and rerun on its own skips the pre-flight check; the key holder's task refuses too.
    with pytest.raises(KeyFileError) as failed:
        stage_runner.run_steps(conf, first="check_inputs")
    assert str(failed.value) == f"{key_file}: " + ending.format(path=key_file)
    assert_no_value_in(str(failed.value) + caplog.text, secrets)
    # Stopped at the consent gate, the first task that needs the key: no token was written.
    assert sorted(p.name for p in (work / "pseudonymised" / label).iterdir()) == ["inputs.json"]
    assert_nothing_published(work, label, earlier_hashes, reference)


def test_tokens_under_a_different_kid_stop_the_run_at_linkage(reference, earlier, secrets, tmp_path, caplog):
    """One source re-pseudonymised with another key (a second key file, say, on one worker)."""
    work, earlier_hashes = earlier
    label = "bad-mixed-kids"
    conf = reference.conf(work, label)
    stage_runner.run_steps(conf, last="validate_pseudonymised")
    other = new_key_file(tmp_path / "other.key.json")
    stage_runner.run_step({**conf, "key_file": str(tmp_path / "other.key.json")}, "pseudonymise_source:hospital_op")
    caplog.set_level(logging.DEBUG, logger="pipeline")

    with pytest.raises(KeyMismatchError) as failed:
        stage_runner.run_steps(conf, first="link")
    kid = io.read_json(RunConfig.from_conf(conf).pseudonymised_dir / "consent.json")["kid"]
    kids = {s: kid for s in (*SOURCES, "persons")} | {"hospital_op": other.kid}
    assert str(failed.value) == (
        "tokens were made under different key ids (" + ", ".join(f"{n}: {k}" for n, k in sorted(kids.items()))
        + "); re-pseudonymise every source with the same key before linking"
    )
    assert_no_value_in(str(failed.value) + caplog.text, secrets)
    assert not (work / "linked" / label / "link_map.parquet").exists()
    assert_nothing_published(work, label, earlier_hashes, reference)


# ---------------------------------------------------------------------------------------------------
# Row-level faults: one delivery carrying every kind, each in rows of its own


ROW_FAULTS = {
    # case: (dataset, how many rows, change to those rows, the reason they are quarantined with)
    "date of birth in 1800": ("hospital_apc", 2, {"date_of_birth": pl.lit(D(1800, 6, 1))}, DATE_OF_BIRTH.reason),
    "date of birth in the future": ("hospital_ae", 3, {"date_of_birth": pl.lit(D(2031, 1, 1))}, DATE_OF_BIRTH.reason),
    "admission in 1800": ("hospital_apc", 1, {"admission_date": pl.lit(D(1800, 1, 1)), "discharge_date": pl.lit(D(1800, 1, 2))},
                          "admission date before 1900-01-01 or after the extract date"),
    "GP consultation in the future": ("gp_events", 2, {"event_date": pl.lit(D(2099, 12, 31))},
                                      "consultation date before 1900-01-01 or after the extract date"),
    "discharge before admission": ("hospital_apc", 2, {"discharge_date": pl.col("admission_date") - pl.duration(days=3)},
                                   "discharge before admission"),
    "care ended before it started": ("social_care", 1, {"end_date": pl.col("start_date") - pl.duration(days=1)},
                                     "service ended before it started"),
    "no usable identifier": ("hospital_op", 2, {"nhs_number": pl.lit(None, pl.String), "date_of_birth": pl.lit(None, pl.Date),
                                                "postcode": pl.lit(None, pl.String)}, QUARANTINE_REASON),
}  # fmt: skip
ID = {"consent_register": "participant_id"}


def _usable(df: pl.DataFrame) -> pl.Expr:
    return pl.col("date_of_birth").is_not_null() & pl.col("postcode").is_not_null() & pl.col("nhs_number").str.contains(r"^\d{10}$")


def _pick(df: pl.DataFrame, dataset: str, taken: set[str], n: int) -> list[str]:
    """`n` rows with whole identifiers that no other case uses, by ID."""
    key = ID.get(dataset, "record_id")
    rows = df.filter(_usable(df) & ~pl.col(key).is_in(list(taken)))
    if dataset == "social_care":
        rows = rows.filter(pl.col("end_date").is_not_null())
    return rows.sort(key).get_column(key).head(n).to_list()


@pytest.fixture(scope="module")
def row_run(reference: Reference, earlier, tmp_path_factory):
    """Every row-level fault in one delivery, run to publication in the work folder of the earlier release."""
    work, earlier_hashes = earlier
    raw = deliver(reference, tmp_path_factory.mktemp("row-faults"))
    cases: dict[str, list[str]] = {}
    taken: set[str] = set()
    frames = {d: pl.read_parquet(raw / f"{d}.parquet") for d in ("consent_register", *SOURCES)}
    for case, (dataset, n, change, _) in ROW_FAULTS.items():
        df = frames[dataset]
        ids = _pick(df, dataset, taken, n)
        taken |= set(ids)
        hit = pl.col(ID.get(dataset, "record_id")).is_in(ids)
        frames[dataset] = df.with_columns([pl.when(hit).then(expr).otherwise(pl.col(c)).alias(c) for c, expr in change.items()])
        cases[case] = ids
    # A consented participant born in the future: quarantined by the consent gate, not linked.
    reg = frames["consent_register"]
    future = reg.filter((pl.col("consent_status") == "consented") & pl.col("withdrawal_date").is_null()).sort("participant_id")
    cases["participant born in the future"] = future.get_column("participant_id").head(1).to_list()
    frames["consent_register"] = reg.with_columns(
        date_of_birth=pl.when(pl.col("participant_id").is_in(cases["participant born in the future"])).then(pl.lit(D(2030, 1, 1))).otherwise("date_of_birth")
    )
    # Identifier faults of one field: NHS numbers with letters, and very long names.
    op = frames["hospital_op"]
    cases["NHS numbers with letters"] = _pick(op, "hospital_op", taken, 3)
    taken |= set(cases["NHS numbers with letters"])
    op = op.with_columns(nhs_number=pl.when(pl.col("record_id").is_in(cases["NHS numbers with letters"])).then(pl.lit("999O00OO18")).otherwise("nhs_number"))
    frames["hospital_op"] = op
    ae = frames["hospital_ae"]
    cases["very long names"] = _pick(ae, "hospital_ae", taken, 2)
    long = pl.col("record_id").is_in(cases["very long names"])
    frames["hospital_ae"] = ae.with_columns(
        family_name=pl.when(long).then(pl.lit("Ó'Brien-" * 2000)).otherwise("family_name"),
        given_name=pl.when(long).then(pl.lit("Zoë " * 3000)).otherwise("given_name"),
    )
    for dataset, df in frames.items():
        df.write_parquet(raw / f"{dataset}.parquet")

    conf = reference.conf(work, "row-faults", raw=raw, **RETAIN)
    stage_runner.run_steps(conf)
    return {"cfg": RunConfig.from_conf(conf), "cases": cases, "raw": raw, "earlier_hashes": earlier_hashes}


@pytest.mark.parametrize("case", list(ROW_FAULTS))
def test_a_row_level_fault_is_quarantined_with_its_reason_and_counted(case, row_run, reference):
    cfg, ids = row_run["cfg"], row_run["cases"][case]
    dataset, n, _, reason = ROW_FAULTS[case]
    assert len(ids) == n
    quarantine = pl.read_parquet(cfg.quarantine_dir / f"{dataset}.parquet")
    assert quarantine.filter(pl.col("quarantine_reason") == reason).get_column("record_id").sort().to_list() == sorted(ids)
    # Counted per reason in the manifest, beside what the clean delivery had.
    # Exact figures (reports/<label>/figures.json): the released manifest holds them controlled.
    manifest = io.read_json(cfg.reports_dir / "figures.json")["manifest"]
    before = io.read_json(reference.cfg.reports_dir / "figures.json")["manifest"]["pseudonymisation"][dataset]
    expected = dict(before.get("quarantine_reasons", {}))
    for d, m, _, r in ROW_FAULTS.values():
        if d == dataset:
            expected[r] = expected.get(r, 0) + m
    assert manifest["pseudonymisation"][dataset]["quarantine_reasons"] == expected
    assert manifest["pseudonymisation"][dataset]["quarantined"] == before["quarantined"] + sum(
        m for d, m, _, _ in ROW_FAULTS.values() if d == dataset
    )
    # Neither tokenised nor linked: their record tokens are nowhere in the working zones.
    quarantined = record_tokens(reference.key_file, dataset, ids)
    tokens = scan_record_tokens(cfg.pseudonymised_dir, dataset).collect()
    assert tokens.height and not set(tokens.get_column("record_id")) & quarantined
    link_map = pl.read_parquet(link_map_file(cfg)).filter(pl.col("source") == dataset)
    assert link_map.height and not set(link_map.get_column("record_id")) & quarantined


def test_a_participant_born_in_the_future_is_quarantined_by_the_consent_gate(row_run, reference):
    cfg, ids = row_run["cfg"], row_run["cases"]["participant born in the future"]
    quarantine = pl.read_parquet(cfg.quarantine_dir / "consent_register.parquet")
    assert quarantine.select("participant_id", "quarantine_reason").rows() == [(ids[0], DATE_OF_BIRTH.reason)]
    consent = io.read_json(cfg.reports_dir / "figures.json")["manifest"]["consent"]
    before = io.read_json(reference.cfg.reports_dir / "figures.json")["manifest"]["consent"]
    assert consent["quarantine_reasons"] == {**before["quarantine_reasons"], DATE_OF_BIRTH.reason: 1}
    assert consent["persons_pseudonymised"] == before["persons_pseudonymised"] - 1
    assert ids[0] not in set(pl.read_parquet(cfg.pseudonymised_dir / "persons.parquet").get_column("participant_id"))


def test_nhs_numbers_with_letters_are_no_nhs_number_counted_invalid_and_still_linked_on_the_rest(row_run, reference):
    cfg, ids = row_run["cfg"], row_run["cases"]["NHS numbers with letters"]
    mine = record_tokens(reference.key_file, "hospital_op", ids)
    tokens = scan_record_tokens(cfg.pseudonymised_dir, "hospital_op").collect().filter(pl.col("record_id").is_in(sorted(mine)))
    assert tokens.height == 3 and tokens.get_column("tok_nhs").null_count() == 3
    assert tokens.get_column("tok_rank5").null_count() == 0  # date of birth, sex and postcode still link
    counts = io.read_json(counts_file(cfg, "hospital_op"))["counts"]
    before = io.read_json(counts_file(reference.before_publication, "hospital_op"))["counts"]
    assert counts["nhs_number_invalid"] == before["nhs_number_invalid"] + 3


def test_very_long_names_are_tokenised_like_any_name(row_run, reference):
    cfg, ids = row_run["cfg"], row_run["cases"]["very long names"]
    mine = record_tokens(reference.key_file, "hospital_ae", ids)
    tokens = scan_record_tokens(cfg.pseudonymised_dir, "hospital_ae").collect().filter(pl.col("record_id").is_in(sorted(mine)))
    assert tokens.height == 2
    assert tokens.select("tok_surname", "tok_forename", "tok_forename_first").null_count().row(0) == (0, 0, 0)
    assert tokens.get_column("tok_surname").n_unique() == 1 and len(tokens.item(0, "tok_surname")) == 64


def test_a_run_with_row_faults_publishes_and_leaves_the_earlier_release_alone(row_run, reference):
    cfg = row_run["cfg"]
    from pipeline.publish.audit import audit_release

    assert audit_release(cfg.release_dir, reference.trusted) == []
    work = cfg.work
    assert file_hashes(work / "releases" / reference.cfg.release_label) == row_run["earlier_hashes"]
    assert not list((work / "releases").glob(".staging-*"))
    page = (cfg.reports_dir / "audit.html").read_text(encoding="utf-8")
    for reason in ("discharge before admission", DATE_OF_BIRTH.reason, "service ended before it started"):
        assert reason in page


def test_a_rerun_after_the_delivery_is_fixed_leaves_no_stale_quarantine(reference, tmp_path):
    """Quarantine files belong to the run that wrote them: fix the rows, rerun the label, they are gone."""
    raw = deliver(reference, tmp_path)
    clean = {d: pl.read_parquet(raw / f"{d}.parquet") for d in ("consent_register", "hospital_apc")}
    kept = (pl.col("consent_status") == "consented") & pl.col("withdrawal_date").is_null()
    first_kept = kept & (kept.cum_sum() == 1)
    rewrite(raw, "consent_register", lambda df: df.with_columns(date_of_birth=pl.when(first_kept).then(pl.lit(D(2031, 1, 1))).otherwise("date_of_birth")))
    usable = _usable(clean["hospital_apc"])
    first_usable = usable & (usable.cum_sum() == 1)
    rewrite(raw, "hospital_apc", lambda df: df.with_columns(date_of_birth=pl.when(first_usable).then(pl.lit(D(1800, 1, 1))).otherwise("date_of_birth")))
    conf = reference.conf(tmp_path / "work", "stale", raw=raw)
    cfg = RunConfig.from_conf(conf)
    steps = ("consent_gate", "pseudonymise_source:hospital_apc")
    for step in steps:
        stage_runner.run_step(conf, step)
    assert sorted(p.name for p in cfg.quarantine_dir.iterdir()) == ["consent_register.parquet", "hospital_apc.parquet"]

    for dataset, df in clean.items():
        df.write_parquet(raw / f"{dataset}.parquet")
    for step in steps:
        stage_runner.run_step(conf, step)
    assert list(cfg.quarantine_dir.iterdir()) == []
    assert io.read_json(cfg.pseudonymised_dir / "counts" / "hospital_apc.json")["counts"]["quarantine_reasons"] == {}
    assert io.read_json(cfg.pseudonymised_dir / "consent.json")["consent"]["quarantine_reasons"] == {}
