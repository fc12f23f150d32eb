"""Consent that holds (issue 14): a withdrawal excludes the person from every run made after it was
received, whatever the extract date; register errors are set aside; one NHS number under several
participant IDs takes its most restrictive decision.

The rules are spelt out as a small register with the expected decision beside each row, then attacked
end to end: a synthetic run whose register has withdrawals received after the extract date but before
the run must not let any of those people into `linked/` or the release.
"""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
from conftest import RETAIN

from pipeline import io
from pipeline.publish import disclosure
from pipeline.crypto.keys import load_key
from pipeline.crypto.tokens import study_ids
from pipeline.errors import PipelineError
from pipeline.pseudonymise.consent import REGISTER_ERRORS, apply_consent_gate, decide_consent, resolve_run_date
from pipeline.settings import RunConfig
from stage_runner import new_run, run_steps

D = dt.date
EXTRACT, RUN = D(2026, 3, 31), D(2026, 6, 15)
CONSENTED = D(2023, 3, 1)
AFTER_RUN, FAR_FUTURE, BEFORE_CONSENT, TWICE = (
    REGISTER_ERRORS["withdrawal_after_run"], REGISTER_ERRORS["withdrawal_after_run"],
    REGISTER_ERRORS["withdrawal_before_consent"], REGISTER_ERRORS["consented_twice"],
)  # fmt: skip

# Extract date 2026-03-31, run made on 2026-06-15. One row per register row:
# participant, NHS number, status, consent date, withdrawal date -> decision, quarantine reason.
SPEC = [
    ("P0000001", "9990000018", "consented", CONSENTED, None,             "keep", None),
    ("P0000002", "9990000026", "declined",  CONSENTED, None,             "declined", None),
    ("P0000003", "9990000034", "consented", CONSENTED, D(2026, 1, 10),   "withdrawn", None),  # before the extract
    ("P0000004", "9990000042", "consented", CONSENTED, D(2026, 3, 31),   "withdrawn", None),  # on the extract date
    ("P0000005", "9990000050", "consented", CONSENTED, D(2026, 4, 1),    "withdrawn", None),  # after the extract, before the run (was kept)
    ("P0000006", "9990000069", "consented", CONSENTED, D(2026, 6, 15),   "withdrawn", None),  # received on the day of the run
    ("P0000007", "9990000077", "consented", CONSENTED, CONSENTED,        "withdrawn", None),  # the day of consent
    ("P0000008", "9990000085", "consented", CONSENTED, D(2026, 6, 16),   "register_error", AFTER_RUN),  # not received yet
    ("P0000009", "9990000093", "consented", CONSENTED, D(2099, 3, 1),    "register_error", FAR_FUTURE),
    ("P0000010", "9990000107", "consented", CONSENTED, D(2023, 2, 28),   "register_error", BEFORE_CONSENT),
    ("P0000011", "9990000115", "consented", D(2026, 6, 16), None,        "register_error", REGISTER_ERRORS["consent_after_run"]),
    ("P0000012", "9990000123", "declined",  CONSENTED, D(2023, 1, 1),    "register_error", BEFORE_CONSENT),  # dates first
    # One person (NHS number) under two or more participant IDs: the most restrictive decision wins.
    ("P0000013", "9990000131", "consented", CONSENTED, None,             "same_person", None),
    ("P0000014", "999 000 0131", "declined", D(2023, 5, 1), None,        "declined", None),  # same number, other format
    ("P0000015", "9990000158", "consented", CONSENTED, None,             "same_person", None),
    ("P0000016", "9990000158", "consented", CONSENTED, D(2026, 5, 1),    "withdrawn", None),
    ("P0000017", "9990000166", "consented", CONSENTED, None,             "same_person", None),
    ("P0000018", "9990000166", "consented", CONSENTED, D(2099, 1, 1),    "register_error", FAR_FUTURE),
    ("P0000019", "9990000174", "consented", CONSENTED, None,             "register_error", TWICE),  # consented twice:
    ("P0000020", "9990000174", "consented", D(2023, 9, 1), None,         "register_error", TWICE),  # both set aside
    # No valid NHS number: rows cannot be compared, and each stands alone.
    ("P0000021", None,         "consented", CONSENTED, None,             "keep", None),
    ("P0000022", None,         "consented", CONSENTED, None,             "keep", None),
    ("P0000023", "9990000019", "consented", CONSENTED, None,             "keep", None),  # fails Modulus 11
    ("P0000024", "9990000019", "declined",  CONSENTED, None,             "declined", None),
]  # fmt: skip


def spec_register() -> pl.DataFrame:
    columns = ["participant_id", "nhs_number", "consent_status", "consent_date", "withdrawal_date"]
    return pl.DataFrame([row[:5] for row in SPEC], schema=dict(zip(columns, [pl.String, pl.String, pl.String, pl.Date, pl.Date], strict=True)), orient="row")


def test_each_register_row_gets_the_decision_in_the_table():
    decided = decide_consent(spec_register(), RUN)
    got = list(zip(decided.get_column("participant_id"), decided.get_column("_consent"), decided.get_column("_reason"), strict=True))
    assert got == [(row[0], row[5], row[6]) for row in SPEC]


def test_the_counts_add_up_and_count_each_category():
    kept, errors, counts = apply_consent_gate(spec_register(), EXTRACT, RUN)
    assert kept.get_column("participant_id").to_list() == ["P0000001", "P0000021", "P0000022", "P0000023"]
    assert kept.columns == spec_register().columns
    assert errors.get_column("participant_id").to_list() == ["P0000008", "P0000009", "P0000010", "P0000011", "P0000012", "P0000018", "P0000019", "P0000020"]
    assert counts == {
        "in_register": 24,
        "consented": 20,
        "declined": 3,
        "withdrawn": 6,
        "withdrawn_after_extract": 3,  # P0000005, P0000006, P0000016
        "same_person_excluded": 3,
        "eligible_for_linkage": 4,
        "register_errors": {
            REGISTER_ERRORS["consent_after_run"]: 1, AFTER_RUN: 3, BEFORE_CONSENT: 2, TWICE: 2,
        },
    }  # fmt: skip
    parts = counts["declined"] + counts["withdrawn"] + counts["same_person_excluded"] + counts["eligible_for_linkage"]
    assert parts + sum(counts["register_errors"].values()) == counts["in_register"]


def test_no_run_date_lets_a_recorded_withdrawal_through():
    """Run on the extract date itself, as the old gate effectively did, the late withdrawals are
    register errors (not yet received), never kept: no run date lets a recorded withdrawal through."""
    kept, _, counts = apply_consent_gate(spec_register(), EXTRACT, EXTRACT)
    assert not {"P0000005", "P0000006", "P0000016"} & set(kept.get_column("participant_id"))
    assert counts["withdrawn_after_extract"] == 0


def test_the_run_date_is_today_in_utc_unless_pinned_and_never_before_the_extract(tmp_path):
    base = {"raw_dir": str(tmp_path), "work_dir": str(tmp_path), "release_label": "r"}
    assert resolve_run_date(RunConfig.from_conf(base), today=D(2026, 12, 6)) == D(2026, 12, 6)
    assert resolve_run_date(RunConfig.from_conf(base)) == dt.datetime.now(dt.UTC).date()
    assert resolve_run_date(RunConfig.from_conf({**base, "run_date": "2026-04-02"}), today=D(2030, 1, 1)) == D(2026, 4, 2)
    with pytest.raises(PipelineError, match=r"run_date\) must be on or after --extract-date"):
        RunConfig.from_conf({**base, "run_date": "2026-03-30"})
    with pytest.raises(PipelineError, match=r"run_date\) must be a date written YYYY-MM-DD"):
        RunConfig.from_conf({**base, "run_date": "15/06/2026"})
    with pytest.raises(PipelineError, match="before extract_date 2027-01-01"):
        resolve_run_date(RunConfig.from_conf({**base, "extract_date": "2027-01-01"}), today=D(2026, 12, 6))


# --- the attack: withdrawals received between the extract and the run --------------------------------

ATTACK_RUN_DATE = "2026-07-01"  # after every synthetic withdrawal (they end on 2026-06-30), long before today


@pytest.fixture(scope="module")
def attack(tmp_path_factory):
    """A hard-profile run of 300 people (seed 3: three withdrawals received after the extract date,
    and one register error of each kind), the run date pinned."""
    base = tmp_path_factory.mktemp("consent_attack")
    conf = {**new_run(base, "attack", persons=300, seed=3, profile="hard"), **RETAIN}
    conf["run_date"] = ATTACK_RUN_DATE
    run_steps(conf)
    cfg = RunConfig.from_conf(conf)
    register = pl.read_parquet(cfg.raw / "consent_register.parquet")
    return cfg, register, io.read_json(base / "input" / "truth" / "parameters.json")["register_errors"]


def _excluded(cfg: RunConfig, register: pl.DataFrame, parameters: dict) -> tuple[set[str], set[str]]:
    """(people withdrawn after the extract date and before the run, everyone the register excludes)."""
    late = register.filter(
        (pl.col("consent_status") == "consented")
        & (pl.col("withdrawal_date") > cfg.extract)
        & (pl.col("withdrawal_date") <= D.fromisoformat(ATTACK_RUN_DATE))
    )
    originals = [pair.split("=")[0] for pair in parameters["same_nhs_number_declined"]]
    everyone = set(register.filter(pl.col("withdrawal_date").is_not_null() | (pl.col("consent_status") != "consented")).get_column("participant_id"))
    return set(late.get_column("participant_id")), everyone | set(originals)


def test_no_one_withdrawn_before_the_run_reaches_linked_or_the_release(attack):
    cfg, register, parameters = attack
    late, excluded = _excluded(cfg, register, parameters)
    assert len(late) >= 3 and late <= excluded
    persons = set(pl.read_parquet(cfg.pseudonymised_dir / "persons.parquet").get_column("participant_id"))
    assert not excluded & persons
    linked = sorted(cfg.linked_dir.rglob("*.parquet"))
    assert any(f.name == "link_map.parquet" for f in linked)
    for f in linked:
        df = pl.read_parquet(f)
        if "participant_id" in df.columns:
            assert not excluded & set(df.get_column("participant_id").drop_nulls()), f
    # Release files hold study IDs: the ones these people would have had under this release's label.
    forbidden = set(study_ids(load_key(cfg.key_file), cfg.release_label, sorted(excluded)))
    released = sorted(cfg.release_dir.glob("*.parquet"))
    assert {f.name for f in released} >= {"cohort.parquet", "service_use.parquet", "panel.parquet", "outcomes.parquet"}
    for f in released:
        df = pl.read_parquet(f)
        for column in df.select(pl.col(pl.String)).columns:
            assert not forbidden & set(df.get_column(column).drop_nulls()), (f.name, column)


def test_register_errors_are_quarantined_counted_and_do_not_stop_the_run(attack):
    cfg, register, parameters = attack
    quarantined = pl.read_parquet(cfg.quarantine_dir / "consent_register.parquet")
    reasons = dict(zip(quarantined.get_column("participant_id"), quarantined.get_column("quarantine_reason"), strict=True))
    assert reasons[parameters["withdrawal_far_future"][0]] == REGISTER_ERRORS["withdrawal_after_run"]
    assert reasons[parameters["withdrawal_before_consent"][0]] == REGISTER_ERRORS["withdrawal_before_consent"]
    consent = io.read_json(cfg.pseudonymised_dir / "consent.json")
    counts = consent["consent"]
    assert counts["register_errors"][REGISTER_ERRORS["withdrawal_after_run"]] == 1
    assert counts["register_errors"][REGISTER_ERRORS["withdrawal_before_consent"]] == 1
    assert counts["same_person_excluded"] == 1  # the original row of the declined duplicate
    late, _ = _excluded(cfg, register, parameters)
    assert counts["withdrawn_after_extract"] == len(late)
    assert counts["in_register"] == register.height
    assert counts["quarantined"] == quarantined.height == sum(counts["quarantine_reasons"].values())
    # The raw zone's validation passed: the withdrawal before consent is a reviewed warning there.
    raw = io.read_json(cfg.reports_dir / "validation" / "raw.json")
    assert raw["success"] is True
    # The run date is recorded beside the counts, and kept out of the content manifest.
    assert consent["run_date"] == ATTACK_RUN_DATE and "run_date" not in counts
    manifest = io.read_json(cfg.release_dir / "manifest.json")
    assert "run_date" not in manifest["settings"]
    # The released manifest holds the counts disclosure-controlled; the exact ones stay in reports/.
    assert manifest["consent"] == disclosure.control_manifest({"consent": counts})["consent"]
    assert io.read_json(cfg.reports_dir / "figures.json")["manifest"]["consent"] == counts


def test_the_audit_page_shows_every_consent_category(attack):
    cfg, _, _ = attack
    page = (cfg.reports_dir / "audit.html").read_text()
    section = page[page.index('<section id="consent">') : page.index("</section>", page.index('<section id="consent">'))]
    for key in ("in_register", "consented", "declined", "withdrawn", "withdrawn_after_extract", "same_person_excluded",
                "eligible_for_linkage", "quarantined", "persons_pseudonymised"):  # fmt: skip
        assert f'[[&quot;consent&quot;, &quot;{key}&quot;]]' in section, key
    for reason in REGISTER_ERRORS.values():
        assert f'[[&quot;consent&quot;, &quot;register_errors&quot;, &quot;{reason}&quot;]]' in section, reason


@pytest.mark.parametrize("run_date", ["2026-03-31", "2026-04-01", "2026-07-01", "2027-01-01", "2099-12-31"])
def test_no_run_date_keeps_anyone_whose_register_row_holds_a_withdrawal(run_date) -> None:
    """The attack: pin an early run date so that later withdrawals are 'not received yet'. Whatever the
    run date, a withdrawal dated after it is a register error, set aside: nobody with a withdrawal
    date in the register is ever kept."""
    day = dt.date.fromisoformat
    register = pl.DataFrame(
        {
            "participant_id": ["P1", "P2", "P3", "P4"],
            "nhs_number": ["9990000018", "9990000026", "9990000034", "9990000042"],
            "consent_status": ["consented"] * 4,
            "consent_date": [day("2025-01-01")] * 4,
            "withdrawal_date": [day("2026-04-01"), day("2026-06-30"), day("2026-11-30"), None],
        }
    )
    kept, _, _ = apply_consent_gate(register, day("2026-03-31"), day(run_date))
    assert kept.get_column("participant_id").to_list() == ["P4"]


def test_the_gate_in_pieces_writes_the_same_bytes_as_in_one(attack, tmp_path, monkeypatch):
    """Issue 19: the gate tokenises a piece of participants at a time (CONSENT_PIECE_ROWS); its files,
    counts and quarantine are byte for byte those of the register done in one piece."""
    import pipeline.pseudonymise.consent as consent
    from pipeline.zones import consent_file, persons_file, quarantine_file, study_persons_file, survey_file

    cfg = attack[0]
    outputs = (persons_file, study_persons_file, survey_file, consent_file, lambda c: quarantine_file(c, "consent_register"))
    key = load_key(cfg.key_file)
    monkeypatch.setattr(consent, "CONSENT_PIECE_ROWS", 1_000_000)
    whole = RunConfig.from_conf({**cfg.to_conf(), "work_dir": str(tmp_path / "whole")})
    consent.run_consent_gate(whole, key)
    monkeypatch.setattr(consent, "CONSENT_PIECE_ROWS", 7)
    pieces = RunConfig.from_conf({**cfg.to_conf(), "work_dir": str(tmp_path / "pieces")})
    consent.run_consent_gate(pieces, key)
    for output in outputs:
        assert output(whole).read_bytes() == output(pieces).read_bytes(), output(whole).name
    assert pl.read_parquet(persons_file(pieces)).height > 7 * 10
