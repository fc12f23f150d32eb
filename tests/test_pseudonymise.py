"""The pseudonymise stage: the consent gate, invalid identifiers, quarantine, the kid of every token
file, and an independent implementation of the spec reproducing every token the stage writes.

The small tables are written out in the tests with the expected outcome beside each row.
"""

from __future__ import annotations

import base64
import datetime as dt
import importlib.util
import os
import shutil
from pathlib import Path

import polars as pl
import pytest

from pipeline import io, tasks
from pipeline.contracts import load_contract
from pipeline.crypto.keys import LinkageKey, key_id, new_key_file
from pipeline.errors import ContractError, KeyFileError, KeyMismatchError
from pipeline.pseudonymise import check_inputs, pseudonymise_source, run_consent_gate
from pipeline.pseudonymise import identifiers
from pipeline.pseudonymise.consent import REGISTER_ERRORS
from pipeline.pseudonymise.inputs import scan_checked_input
from pipeline.pseudonymise.records import QUARANTINE_REASON
from pipeline.settings import SOURCES, RunConfig
from pipeline.zones import blocks_path, inputs_file, payload_file, quarantine_file, records_path, persons_file, scan_record_tokens, study_persons_file

FIXED_KEY = b"pprl-v3 public TEST key #005227."  # the published test key of tests/vectors/tokens_v3.json
TOKEN_COLUMNS = list(load_contract("token_blocks").column_names[1:])
IDENTIFIERS = ["nhs_number", "given_name", "family_name", "date_of_birth", "sex", "postcode"]


def _reference():
    path = Path(__file__).resolve().parent / "vectors" / "reference_v3.py"
    spec = importlib.util.spec_from_file_location("reference_v3", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = _reference()


def record_token(source: str, record_id: str, key: bytes = None) -> str:
    """A record token made here, from `cryptography` and `hmac` alone: HMAC-SHA256 under
    HKDF-SHA256(key, info=b"pprl/v2/record") of "<source>|<record ID>"."""
    import hmac

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    field_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"pprl/v2/record").derive(key or FIXED_KEY)
    return hmac.new(field_key, f"{source}|{record_id}".encode(), "sha256").hexdigest()


def write_key(path: Path, key: bytes = FIXED_KEY) -> LinkageKey:
    return new_key_file(path, random_bytes=key)


def config(base: Path, label: str, key_file: Path, **extra) -> RunConfig:
    return RunConfig.from_conf(
        {"raw_dir": str(base / "input" / "raw"), "work_dir": str(base / "work"), "release_label": label, "key_file": str(key_file), **extra}
    )


def write_input(raw: Path, dataset: str, rows: list[dict]) -> None:
    """A raw input file from a few rows; columns a row leaves out are null."""
    contract = load_contract(dataset)
    df = pl.DataFrame({c: [r.get(c) for r in rows] for c in contract.column_names}, schema=contract.polars_schema())
    io.write_frame(df, contract, raw / f"{dataset}.parquet")


@pytest.fixture()
def spy(monkeypatch):
    """Every (field, value) the stage asks to tokenise."""
    asked: dict[str, set[str]] = {}
    real = identifiers.tokenise_distinct

    def recording(key, field, distinct):
        asked.setdefault(field, set()).update(distinct.to_list())
        return real(key, field, distinct)

    monkeypatch.setattr(identifiers, "tokenise_distinct", recording)
    return asked


def test_the_token_columns_are_the_contract_and_use_every_field():
    from pipeline.crypto.tokens import FIELDS

    assert [c.name for c in identifiers.TOKEN_COLUMNS] == TOKEN_COLUMNS == list(load_contract("pseudo_persons").column_names[1 : 1 + len(TOKEN_COLUMNS)])
    assert {c.field for c in identifiers.TOKEN_COLUMNS} == set(FIELDS)


# --- the consent gate ------------------------------------------------------------------------------

D = dt.date
PERSON = {"site": "site_a", "arm": "comparator", "consent_date": D(2023, 3, 1), "date_of_birth": D(1950, 3, 7), "sex": "F"}
REGISTER = [
    # id, status, withdrawal date, what else                                  -> expected outcome
    {"participant_id": "P0000001", "consent_status": "consented", "nhs_number": "9990000018", "family_name": "Adams"},  # kept
    {"participant_id": "P0000002", "consent_status": "declined", "nhs_number": "9990000026", "family_name": "Brown"},  # declined
    {"participant_id": "P0000003", "consent_status": "consented", "withdrawal_date": D(2026, 1, 10), "nhs_number": "9997654323", "family_name": "Clark"},  # withdrawn
    {"participant_id": "P0000004", "consent_status": "consented", "withdrawal_date": D(2026, 3, 31), "nhs_number": "9990000107", "family_name": "Dixon"},  # withdrawn on the extract date
    {"participant_id": "P0000005", "consent_status": "consented", "withdrawal_date": D(2026, 4, 1), "nhs_number": "9990000115", "family_name": "Evans"},  # withdrawn after the extract date, before the run
    {"participant_id": "P0000006", "consent_status": "declined", "withdrawal_date": D(2026, 1, 10), "nhs_number": "9990000042", "family_name": "Fox"},  # declined (counted once)
    {"participant_id": "P0000007", "consent_status": "consented", "date_of_birth": None, "nhs_number": "9990000050", "family_name": "Green"},  # quarantined: no date of birth
    {"participant_id": "P0000008", "consent_status": "consented", "arm": "mdt", "mdt_id": "MDT01", "operating_model": "virtual_ward", "nhs_number": "9990000069", "family_name": "Hill"},  # quarantined: MDT without enrolment date
]  # fmt: skip
EXTRACT = "2026-03-31"
RUN_DATE = "2026-06-30"  # the day the run is made; every withdrawal received by then is honoured (tests/test_consent.py)


@pytest.fixture()
def consent_run(tmp_path, spy):
    raw = tmp_path / "input" / "raw"
    write_input(raw, "consent_register", [{**PERSON, "given_name": "Ann", "postcode": "QA1 1AA", **r} for r in REGISTER])
    write_input(
        raw,
        "survey",
        [{"response_id": f"R0000000{i}", "participant_id": r["participant_id"], "wave": "baseline", "survey_date": D(2023, 4, 1), "n_ltc": 2}
         for i, r in enumerate(REGISTER, start=1)],
    )  # fmt: skip
    write_input(raw, "postcode_imd", [{"postcode": "QA1 1AA", "lsoa_code": "E01000001", "imd_decile": 3}])
    cfg = config(tmp_path, "gate", write_key(tmp_path / "key.json"), extract_date=EXTRACT, run_date=RUN_DATE)
    run_consent_gate(cfg, LinkageKey(FIXED_KEY, key_id(FIXED_KEY)))
    return cfg, spy


def test_declined_and_withdrawn_people_are_dropped_and_only_counted(consent_run):
    cfg, _ = consent_run
    persons = pl.read_parquet(cfg.pseudonymised_dir / "persons.parquet")
    assert persons.get_column("participant_id").to_list() == ["P0000001"]
    written = io.read_json(cfg.pseudonymised_dir / "consent.json")
    assert written["run_date"] == RUN_DATE
    assert written["consent"] == {
        "in_register": 8,
        "consented": 6,
        "declined": 2,
        "withdrawn": 3,
        "withdrawn_after_extract": 1,
        "same_person_excluded": 0,
        "eligible_for_linkage": 3,
        "register_errors": dict.fromkeys(REGISTER_ERRORS.values(), 0),
        "quarantined": 2,
        "quarantine_reasons": {
            "no date of birth in the consent register": 1,
            "no index date (MDT enrolment date or baseline survey missing)": 1,
        },
        "persons_pseudonymised": 1,
        "identifier_quality": {
            "rows": 3, "nhs_number_missing": 0, "nhs_number_invalid": 0, "date_of_birth_missing": 1, "sex_not_f_or_m": 0,
            "postcode_missing": 0, "postcode_invalid": 0, "surname_missing_or_unusable": 0, "forename_missing_or_unusable": 0,
        },
    }  # fmt: skip
    survey = pl.read_parquet(cfg.pseudonymised_dir / "survey.parquet")
    assert survey.get_column("participant_id").to_list() == ["P0000001"]


def test_no_token_is_ever_made_for_a_declined_withdrawn_or_quarantined_person(consent_run):
    _, asked = consent_run
    assert asked["nhs_number"] == {"9990000018"}
    assert asked["name"] == {"ANN", "ADAMS"}
    assert asked["rank1"] == {"9990000018|1950-03-07|F|QA11AA"}


def test_people_the_gate_cannot_use_are_quarantined_in_raw_with_their_reason(consent_run):
    cfg, _ = consent_run
    path = cfg.work / "raw" / "quarantine" / "gate" / "consent_register.parquet"
    q = pl.read_parquet(path).select("participant_id", "quarantine_reason")
    assert q.rows() == [
        ("P0000007", "no date of birth in the consent register"),
        ("P0000008", "no index date (MDT enrolment date or baseline survey missing)"),
    ]


# --- invalid NHS numbers and records with nothing to link on -----------------------------------------

CARE = {"service_type": "home_care", "start_date": D(2024, 1, 1), "date_of_birth": D(1950, 3, 7), "postcode": "QA1 1AA", "sex": "F"}
RECORDS = [
    # record,         NHS number as delivered                        -> tok_nhs
    {"record_id": "SC000000001", "nhs_number": "999 000 0018"},  # token of 9990000018
    {"record_id": "SC000000002", "nhs_number": "9990000019"},  # fails Modulus 11: none, counted invalid
    {"record_id": "SC000000003", "nhs_number": "999000001"},  # nine digits: none, counted invalid
    {"record_id": "SC000000004", "nhs_number": "9999999999"},  # placeholder: none, counted invalid
    {"record_id": "SC000000005", "nhs_number": None},  # none, counted missing
    {"record_id": "SC000000006", "nhs_number": "999-000-0018"},  # token of 9990000018
    {"record_id": "SC000000007", "nhs_number": "9990000019", "date_of_birth": None, "postcode": None},  # quarantined
    {"record_id": "SC000000008", "nhs_number": None, "date_of_birth": None, "postcode": "ZZ99 3VZ"},  # quarantined
]  # fmt: skip


@pytest.fixture()
def records_run(tmp_path, spy):
    write_input(tmp_path / "input" / "raw", "social_care", [{**CARE, **r} for r in RECORDS])
    cfg = config(tmp_path, "recs", write_key(tmp_path / "key.json"))
    pseudonymise_source(cfg, LinkageKey(FIXED_KEY, key_id(FIXED_KEY)), "social_care")
    return cfg, spy


def test_invalid_nhs_numbers_become_no_nhs_number_and_are_counted_never_tokenised(records_run):
    cfg, asked = records_run
    tokens = scan_record_tokens(cfg.pseudonymised_dir, "social_care").collect()
    valid = reference.token(FIXED_KEY, "nhs_number", "9990000018")
    expected = {"SC000000001": valid, "SC000000002": None, "SC000000003": None, "SC000000004": None, "SC000000005": None, "SC000000006": valid}
    assert dict(tokens.select("record_id", "tok_nhs").iter_rows()) == {record_token("social_care", r): t for r, t in expected.items()}
    assert asked["nhs_number"] == {"9990000018"}
    counts = io.read_json(cfg.pseudonymised_dir / "counts" / "social_care.json")["counts"]
    assert {k: counts[k] for k in ("rows", "nhs_number_missing", "nhs_number_invalid", "quarantined", "pseudonymised")} == {
        "rows": 8, "nhs_number_missing": 2, "nhs_number_invalid": 4, "quarantined": 2, "pseudonymised": 6,
    }  # fmt: skip


def test_records_with_no_usable_identifier_are_quarantined_with_the_reason(records_run):
    cfg, _ = records_run
    q = pl.read_parquet(cfg.quarantine_dir / "social_care.parquet")
    assert q.select("record_id", "quarantine_reason").rows() == [
        ("SC000000007", QUARANTINE_REASON),
        ("SC000000008", QUARANTINE_REASON),
    ]
    assert QUARANTINE_REASON == "no usable identifier (no valid NHS number, date of birth or postcode)"
    from pipeline.publish.report import SOURCE_QUARANTINE_REASON  # the audit page's copy of it

    assert SOURCE_QUARANTINE_REASON == QUARANTINE_REASON
    payload = pl.read_parquet(payload_file(cfg, "social_care"))
    # The provider's record IDs stay in raw/: the payload knows each record by its keyed token only.
    assert payload.get_column("record_id").to_list() == [record_token("social_care", f"SC00000000{i}") for i in range(1, 7)]
    assert not set(payload.columns) & set(IDENTIFIERS)


def test_each_kept_record_id_is_tokenised_once_for_the_record_blocks_and_the_payload(tmp_path, monkeypatch):
    from pipeline.pseudonymise import records

    asked: list[str] = []
    real = records.tokenise_record_ids

    def counting(record_key, source, ids):
        asked.extend(ids.to_list())
        return real(record_key, source, ids)

    monkeypatch.setattr(records, "tokenise_record_ids", counting)
    write_input(tmp_path / "input" / "raw", "social_care", [{**CARE, **r} for r in RECORDS])
    cfg = config(tmp_path, "once", write_key(tmp_path / "key.json"))
    pseudonymise_source(cfg, LinkageKey(FIXED_KEY, key_id(FIXED_KEY)), "social_care")
    # The two quarantined records are never tokenised; the six kept ones once each, for both files.
    assert sorted(asked) == [f"SC00000000{i}" for i in range(1, 7)]
    kept = [record_token("social_care", f"SC00000000{i}") for i in range(1, 7)]
    assert pl.read_parquet(payload_file(cfg, "social_care")).get_column("record_id").to_list() == kept
    assert pl.read_parquet(records_path(cfg.pseudonymised_dir, "social_care")).get_column("record_id").to_list() == kept


# --- a whole synthetic extract -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A small synthetic population with identifier faults, pseudonymised under the published test key."""
    from pipeline.synth import generate

    base = tmp_path_factory.mktemp("pseudonymise")
    generate(base / "input", persons=400, seed=17, profile="realistic")
    cfg = config(base, "synthetic", write_key(base / "key.json"))
    key = LinkageKey(FIXED_KEY, key_id(FIXED_KEY))
    check_inputs(cfg)
    run_consent_gate(cfg, key)
    for source in SOURCES:
        pseudonymise_source(cfg, key, source)
    return base, cfg


def _identifier_records(df: pl.DataFrame) -> list[dict]:
    return df.select(*IDENTIFIERS).with_columns(pl.col("date_of_birth").cast(pl.String)).to_dicts()


def _with_record_tokens(delivered: pl.DataFrame, source: str) -> pl.DataFrame:
    return delivered.with_columns(record_id=pl.Series([record_token(source, r) for r in delivered.get_column("record_id")], dtype=pl.String))


def test_an_independent_implementation_reproduces_every_token_in_the_pseudonymised_zone(synthetic):
    """tests/vectors/reference_v3.py (HKDF and HMAC from `cryptography`, nothing from `pipeline`),
    given each row's raw identifiers, makes exactly the tokens the stage wrote."""
    base, cfg = synthetic
    raw = cfg.raw
    pairs = [
        # The participants' token side: the file the link stage reads (study IDs live apart from it).
        (pl.read_parquet(persons_file(cfg)), pl.read_parquet(raw / "consent_register.parquet"), "participant_id")
    ] + [
        (scan_record_tokens(cfg.pseudonymised_dir, s).collect(), _with_record_tokens(pl.read_parquet(raw / f"{s}.parquet"), s), "record_id")
        for s in SOURCES
    ]
    cache: dict[tuple, dict] = {}
    checked = 0
    for written, delivered, id_col in pairs:
        joined = written.select(id_col, *TOKEN_COLUMNS).join(delivered.select(id_col, *IDENTIFIERS), on=id_col, how="left")
        assert joined.height == written.height
        for row, ids in zip(joined.select(*TOKEN_COLUMNS).to_dicts(), _identifier_records(joined), strict=True):
            k = tuple(ids.values())
            if k not in cache:
                cache[k] = reference.tokens(FIXED_KEY, ids)
            assert row == cache[k]
            checked += 1
    assert checked > 1000 and set(TOKEN_COLUMNS) == set(reference.canonical_values({}))


def test_every_token_file_records_the_kid_it_was_made_under(synthetic):
    _, cfg = synthetic
    kid = key_id(FIXED_KEY)
    d = cfg.pseudonymised_dir
    files = [d / "persons.parquet"] + [blocks_path(d, s) for s in SOURCES] + [records_path(d, s) for s in SOURCES]
    assert {io.parquet_metadata(p)["pprl_kid"] for p in files} == {kid}
    assert io.read_json(cfg.pseudonymised_dir / "consent.json")["kid"] == kid


@pytest.mark.parametrize(("limit", "size"), [("ROWS_PER_PART", 1000), ("BLOCKS_PER_PART", 400)])
def test_a_big_extract_done_in_parts_gives_the_same_tokens_and_counts(limit, size, synthetic, monkeypatch):
    """Parts by rows (a long extract) or by identifier blocks (one with few rows per person, such as
    admissions, whose blocks are what fill memory)."""
    from pipeline.pseudonymise import records

    base, cfg = synthetic
    monkeypatch.setattr(records, limit, size)
    parts = config(base, f"in-parts-{limit.lower()}", base / "key.json")
    assert records._parts(scan_checked_input(parts, "gp_events")) > 3
    pseudonymise_source(parts, LinkageKey(FIXED_KEY, key_id(FIXED_KEY)), "gp_events")
    for c in (cfg, parts):
        for path in (blocks_path, records_path):
            assert io.parquet_metadata(path(c.pseudonymised_dir, "gp_events"))["pprl_kid"] == key_id(FIXED_KEY)
    whole, split = (scan_record_tokens(c.pseudonymised_dir, "gp_events").collect().sort("record_id") for c in (cfg, parts))
    assert split.height > 3000 and split.equals(whole)
    # Parts are cut by date of birth, so no token block is in two parts: the blocks are still distinct.
    blocks = pl.read_parquet(blocks_path(parts.pseudonymised_dir, "gp_events"))
    assert blocks.get_column("token_block").to_list() == list(range(blocks.height))
    assert blocks.select(TOKEN_COLUMNS).is_duplicated().sum() == 0
    assert blocks.height == pl.read_parquet(blocks_path(cfg.pseudonymised_dir, "gp_events")).height < split.height
    counts = [io.read_json(c.pseudonymised_dir / "counts" / "gp_events.json")["counts"] for c in (cfg, parts)]
    assert counts[0] == counts[1]
    for folder in ("tokens", "records"):
        assert [p.name for p in (parts.pseudonymised_dir / folder).iterdir()] == ["gp_events.parquet"]
    assert not list(parts.pseudonymised_dir.glob(".parts-*"))


def test_records_find_their_own_block_even_when_blocks_share_a_join_key(synthetic, monkeypatch):
    """Records take their block by a 64-bit hash of their identifiers. A key of three values makes
    blocks share it for certain: the records are then joined on the identifiers themselves, and the
    record blocks, payload and quarantine are the same bytes as with the real key."""
    from pipeline.pseudonymise import records

    base, cfg = synthetic
    weak = config(base, "weak-block-key", base / "key.json")
    monkeypatch.setattr(records, "_block_key", lambda: (pl.struct(list(IDENTIFIERS)).hash(seed=0) % 3).alias(records._KEY))
    joined_on_identifiers = []
    real_join = pl.LazyFrame.join
    monkeypatch.setattr(pl.LazyFrame, "join", lambda self, other, *a, **kw: joined_on_identifiers.append(kw.get("on")) or real_join(self, other, *a, **kw))
    for source in ("gp_events", "hospital_apc"):
        pseudonymise_source(weak, LinkageKey(FIXED_KEY, key_id(FIXED_KEY)), source)
        for written in (lambda c: records_path(c.pseudonymised_dir, source), lambda c: payload_file(c, source), lambda c: quarantine_file(c, source)):
            mine, real = written(weak), written(cfg)
            assert mine != real and mine.exists() == real.exists(), real.name
            assert not real.exists() or io.sha256_file(mine) == io.sha256_file(real), real.name
    assert list(IDENTIFIERS) in joined_on_identifiers


def test_linking_tokens_made_under_a_different_kid_is_refused(synthetic, tmp_path):
    from pipeline.link.stage import run_link

    base, cfg = synthetic
    other = config(base, "mixed-keys", base / "key.json")
    shutil.copytree(cfg.pseudonymised_dir, other.pseudonymised_dir)
    second = bytes(range(32, 64))
    pseudonymise_source(other, LinkageKey(second, key_id(second)), "gp_events")  # one source under another key
    kid, kid2 = key_id(FIXED_KEY), key_id(second)
    with pytest.raises(KeyMismatchError) as err:
        run_link(other)
    assert str(err.value) == (
        f"tokens were made under different key ids (gp_events: {kid2}, hospital_ae: {kid}, hospital_apc: {kid}, "
        f"hospital_op: {kid}, persons: {kid}, social_care: {kid}); re-pseudonymise every source with the same key before linking"
    )
    assert not (other.linked_dir / "link_map.parquet").exists()


def test_linking_tokens_of_another_token_spec_version_is_refused(synthetic, tmp_path):
    # A token file from spec v2 (or one recording no version) among v3 files: same key, but it lacks
    # the near-miss tokens (and a v1 file hashes other canonical values), so they must never meet.
    from pipeline.errors import TokenSpecMismatchError
    from pipeline.link.stage import run_link

    base, cfg = synthetic
    other = config(base, "mixed-specs", base / "key.json")
    shutil.copytree(cfg.pseudonymised_dir, other.pseudonymised_dir)
    for path, spec in ((blocks_path(other.pseudonymised_dir, "gp_events"), "v2"), (other.pseudonymised_dir / "persons.parquet", None)):
        metadata = {k: v for k, v in io.parquet_metadata(path).items() if k != "pprl_spec"} | ({"pprl_spec": spec} if spec else {})
        pl.read_parquet(path).write_parquet(path, metadata=metadata)
    with pytest.raises(TokenSpecMismatchError) as err:
        run_link(other)
    assert str(err.value) == (
        "tokens were made under a token spec other than v3 (gp_events: v2/v3, persons: none); "
        "re-pseudonymise every source with this pipeline (token spec v3) before linking"
    )
    assert not (other.linked_dir / "link_map.parquet").exists()


def test_every_token_file_records_the_token_spec_version(synthetic):
    _, cfg = synthetic
    d = cfg.pseudonymised_dir
    files = [d / "persons.parquet"] + [blocks_path(d, s) for s in SOURCES] + [records_path(d, s) for s in SOURCES]
    assert {io.parquet_metadata(p)["pprl_spec"] for p in files} == {"v3"}


def test_a_missing_day_and_month_swap_is_not_told_by_a_missing_token(synthetic):
    # Spec v1 left tok_dob_swap empty when the day was over 12. The v2 swap token exists exactly when
    # the NHS number and date of birth do, whatever the day.
    _, cfg = synthetic
    for s in SOURCES:
        tokens = pl.read_parquet(blocks_path(cfg.pseudonymised_dir, s))
        assert tokens.get_column("tok_nhs_dob_swap").is_null().equals(tokens.get_column("tok_nhs_dob").is_null())


def test_a_group_readable_key_file_stops_the_stage_before_anything_is_written(synthetic, tmp_path):
    base, _ = synthetic
    key_file = tmp_path / "key.json"
    write_key(key_file)
    os.chmod(key_file, 0o640)
    cfg = config(base, "group-readable", key_file)
    with pytest.raises(KeyFileError) as err:
        tasks.consent_gate(cfg.to_conf())
    assert str(err.value) == (
        f"{key_file}: the key file is readable or writable by group or others (mode 0640); "
        f"run `chmod 600 {key_file}` and check who may have copied it"
    )
    assert not cfg.pseudonymised_dir.exists()
    assert base64.b64encode(FIXED_KEY).decode() not in str(err.value)


# --- an input changed after the input check -------------------------------------------------------------


def _checked_copy(synthetic, tmp_path: Path, label: str) -> RunConfig:
    """The synthetic inputs copied to a run of their own, checked (check_inputs), consent gate done."""
    base, _ = synthetic
    shutil.copytree(base / "input" / "raw", tmp_path / "input" / "raw")
    cfg = config(tmp_path, label, base / "key.json")
    check_inputs(cfg)
    return cfg


def _changed_after_the_check(path: Path, manifest: Path) -> str:
    return (
        f"1 contract violation(s):\n  - {path}: rule 'unchanged since the input check' broken: its SHA-256 is not the one "
        f"check_inputs recorded in {manifest}, so it was changed or replaced after it was checked; put back the file "
        "that was checked, or run the pipeline again from check_inputs (a new run of the pseudonymise DAG)"
    )


def test_an_extract_replaced_after_the_input_check_is_refused_and_nothing_of_it_is_written(synthetic, tmp_path):
    """The release's input manifest names the files the run read by their SHA-256, recorded when
    check_inputs checked them. An extract swapped after the check, even for one that meets its
    contract (the same extract less its first record), is refused by the stage that would read it."""
    cfg = _checked_copy(synthetic, tmp_path, "swapped-extract")
    key = LinkageKey(FIXED_KEY, key_id(FIXED_KEY))
    run_consent_gate(cfg, key)
    gp = cfg.raw / "gp_events.parquet"
    io.write_frame(pl.read_parquet(gp).slice(1), load_contract("gp_events"), gp)
    with pytest.raises(ContractError) as err:
        pseudonymise_source(cfg, key, "gp_events")
    assert str(err.value) == _changed_after_the_check(gp, inputs_file(cfg))
    for path in (blocks_path(cfg.pseudonymised_dir, "gp_events"), records_path(cfg.pseudonymised_dir, "gp_events"), payload_file(cfg, "gp_events")):
        assert not path.exists()
    pseudonymise_source(cfg, key, "social_care")  # the files that were checked are still read


def test_a_consent_register_swapped_after_the_input_check_is_refused(synthetic, tmp_path):
    """A register put back as it was before people withdrew, after the check, would release them."""
    cfg = _checked_copy(synthetic, tmp_path, "swapped-register")
    register = cfg.raw / "consent_register.parquet"
    before = pl.read_parquet(register).with_columns(withdrawal_date=pl.lit(None, dtype=pl.Date))
    io.write_frame(before, load_contract("consent_register"), register)
    with pytest.raises(ContractError) as err:
        run_consent_gate(cfg, LinkageKey(FIXED_KEY, key_id(FIXED_KEY)))
    assert str(err.value) == _changed_after_the_check(register, inputs_file(cfg))
    assert not persons_file(cfg).exists()


def test_an_input_checked_against_other_rules_is_refused(synthetic, tmp_path):
    """The manifest says which rules a file was checked against (the contract bound to the study). A
    study changed after the check, or a manifest edited to claim other rules, stops the stage."""
    cfg = _checked_copy(synthetic, tmp_path, "other-rules")
    manifest = io.read_json(inputs_file(cfg))
    manifest["contracts"]["hospital_ae"] = "0" * 64
    io.write_json(manifest, inputs_file(cfg))
    with pytest.raises(ContractError) as err:
        pseudonymise_source(cfg, LinkageKey(FIXED_KEY, key_id(FIXED_KEY)), "hospital_ae")
    assert [v.rule for v in err.value.violations] == ["checked against this run's study"]
    assert not records_path(cfg.pseudonymised_dir, "hospital_ae").exists()


def test_a_delivery_whose_mapping_changed_after_the_input_check_is_refused(synthetic, tmp_path):
    """A delivery is its provider's file read through a mapping. A team's own mapping edited after the
    check (here its sex codes swapped, which still meets the contract) reads the unchanged file as
    other rows than those checked: only the mapping's recorded hash can tell, and it does."""
    from pipeline.deliveries.mapping import MAPPINGS_DIR
    from pipeline.synth.native import write_native_layout

    base, _ = synthetic
    shutil.copytree(base / "input" / "raw", tmp_path / "input" / "raw")
    deliveries = write_native_layout(tmp_path / "input")
    ours = tmp_path / "input" / "our_hes_apc.yaml"
    shutil.copy(MAPPINGS_DIR / "hes_apc.yaml", ours)
    listing = deliveries.read_text()
    assert listing.count("mapping: hes_apc\n") == 1
    deliveries.write_text(listing.replace("mapping: hes_apc\n", f"mapping: {ours.name}\n"))
    cfg = config(tmp_path, "changed-mapping", base / "key.json", deliveries_file=str(deliveries))
    check_inputs(cfg)
    text = ours.read_text()
    assert 'hes_sex: {"1": M, "2": F,' in text
    ours.write_text(text.replace('hes_sex: {"1": M, "2": F,', 'hes_sex: {"1": F, "2": M,'))
    with pytest.raises(ContractError) as err:
        pseudonymise_source(cfg, LinkageKey(FIXED_KEY, key_id(FIXED_KEY)), "hospital_apc")
    (violation,) = err.value.violations
    assert (violation.file, violation.rule) == (str(tmp_path / "input" / "raw" / "hes_apc.csv"), "unchanged since the input check")
    assert violation.detail.startswith("its mapping is not the one check_inputs recorded")
    assert not records_path(cfg.pseudonymised_dir, "hospital_apc").exists()
    ours.write_text(text)  # the mapping that was checked, put back, is read again
    pseudonymise_source(cfg, LinkageKey(FIXED_KEY, key_id(FIXED_KEY)), "hospital_apc")
    assert records_path(cfg.pseudonymised_dir, "hospital_apc").exists()


def test_pseudonymising_in_parts_writes_no_identifier_to_the_pseudonymised_zone_even_for_a_moment(synthetic, tmp_path, monkeypatch):
    """The pseudonymised zone is read by the link stage's workers, so no direct identifier may be
    written there, not even a scratch file removed seconds later: a run killed in between would leave
    it behind. Every Parquet file written under it while a source is tokenised in parts is looked at."""
    import contextlib

    import pyarrow.parquet as pq

    from pipeline.pseudonymise import records

    cfg = _checked_copy(synthetic, tmp_path, "parts-scratch")
    zone = cfg.pseudonymised_dir.resolve()
    real = io.atomic_path
    written: dict[str, list[str]] = {}

    @contextlib.contextmanager
    def watched(final, *args, **kwargs):
        with real(final, *args, **kwargs) as tmp:
            yield tmp
        final = Path(final).resolve()
        if final.suffix == ".parquet" and final.is_relative_to(zone) and final.exists():
            written[str(final.relative_to(zone))] = pq.read_schema(final).names

    monkeypatch.setattr(io, "atomic_path", watched)
    monkeypatch.setattr(records, "ROWS_PER_PART", 2_000)
    rows = pl.scan_parquet(cfg.raw / "gp_events.parquet").select(pl.len()).collect().item()
    assert rows > 2 * records.ROWS_PER_PART  # so the extract is tokenised in parts
    pseudonymise_source(cfg, LinkageKey(FIXED_KEY, key_id(FIXED_KEY)), "gp_events")
    assert any(".parts-gp_events" in name for name in written)  # the parts' files were seen
    identifiers = set(load_contract("gp_events").column_names) & {"nhs_number", "given_name", "family_name", "date_of_birth", "postcode"}
    assert {name: sorted(set(cols) & identifiers) for name, cols in written.items() if set(cols) & identifiers} == {}


def test_an_input_is_checked_once_per_run_unless_the_input_check_did_not_record_it(synthetic, tmp_path, monkeypatch):
    """check_inputs checks every row of every input; the stages after it read what it checked (same
    SHA-256, same contract) without checking every row again. With no input manifest they check."""
    from pipeline import contracts

    cfg = _checked_copy(synthetic, tmp_path, "checked-once")
    checked: list[str] = []
    real = contracts.check_frame
    monkeypatch.setattr(contracts, "check_frame", lambda lf, contract, path, **kw: checked.append(contract.name) or real(lf, contract, path, **kw))
    key = LinkageKey(FIXED_KEY, key_id(FIXED_KEY))
    run_consent_gate(cfg, key)
    pseudonymise_source(cfg, key, "hospital_apc")
    assert checked == []
    (inputs_file(cfg)).unlink()
    pseudonymise_source(cfg, key, "hospital_apc")
    assert checked == ["hospital_apc"]


# --- withdrawal between two releases -------------------------------------------------------------------


def _run_all_stages(conf: dict) -> None:
    for name in tasks.STAGES:
        if name == "pseudonymise_source":
            for source in SOURCES:
                tasks.pseudonymise_source(conf, source)
        else:
            getattr(tasks, name)(conf)


def test_a_participant_withdrawn_after_a_release_is_absent_from_the_next(synthetic, tmp_path):
    """Release r1 is made on 30 June 2026; the register is then updated (one released participant
    withdraws on 1 August 2026, after r2's extract date but before r2 is made); release r2 no longer
    holds them, nor anyone else withdrawn by then."""
    from pipeline.crypto.tokens import study_ids

    base, _ = synthetic
    key = LinkageKey(FIXED_KEY, key_id(FIXED_KEY))
    work = tmp_path / "work"
    raw = tmp_path / "raw"
    shutil.copytree(base / "input" / "raw", raw)
    from conftest import RETAIN

    from pipeline.publish.signing import new_publishing_key_file

    new_publishing_key_file(tmp_path / "publishing.pem")
    conf = {"raw_dir": str(raw), "work_dir": str(work), "key_file": str(base / "key.json"),
            "publishing_key_file": str(tmp_path / "publishing.pem"), **RETAIN}  # fmt: skip
    r1 = RunConfig.from_conf({**conf, "release_label": "r1", "run_date": "2026-06-30"})
    _run_all_stages(r1.to_conf())
    released = set(pl.read_parquet(r1.release_dir / "cohort.parquet").get_column("study_id"))
    persons1 = pl.read_parquet(study_persons_file(r1))
    sid1 = dict(zip(persons1.get_column("participant_id"), persons1.get_column("study_id"), strict=True))
    leaver = next(p for p in sorted(sid1) if sid1[p] in released)

    register = pl.read_parquet(raw / "consent_register.parquet").with_columns(
        withdrawal_date=pl.when(pl.col("participant_id") == leaver).then(pl.lit(D(2026, 8, 1))).otherwise(pl.col("withdrawal_date"))
    )
    io.write_frame(register, load_contract("consent_register"), raw / "consent_register.parquet")
    r2 = RunConfig.from_conf({**conf, "release_label": "r2", "extract_date": "2026-06-30", "run_date": "2026-09-30"})
    _run_all_stages(r2.to_conf())

    persons2 = set(pl.read_parquet(r2.pseudonymised_dir / "persons.parquet").get_column("participant_id"))
    withdrawn_by_r2 = set(register.filter(pl.col("withdrawal_date") <= D(2026, 9, 30)).get_column("participant_id"))
    assert leaver not in persons2
    assert persons2 == set(sid1) - withdrawn_by_r2 == set(sid1) - {leaver}
    cohort2 = set(pl.read_parquet(r2.release_dir / "cohort.parquet").get_column("study_id"))
    assert study_ids(key, "r2", [leaver])[0] not in cohort2
    assert sid1[leaver] in released and sid1[leaver] not in cohort2  # release IDs differ by label anyway
    consent1 = io.read_json(r1.pseudonymised_dir / "consent.json")["consent"]
    consent2 = io.read_json(r2.pseudonymised_dir / "consent.json")["consent"]
    assert consent2["withdrawn"] == len(withdrawn_by_r2 & set(register.filter(pl.col("consent_status") == "consented").get_column("participant_id")))
    assert consent2["withdrawn"] == consent1["withdrawn"] + 1
    assert consent2["withdrawn_after_extract"] == 1  # the leaver: after r2's extract date, before r2 was made
