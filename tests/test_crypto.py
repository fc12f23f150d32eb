"""Keys, canonical forms and tokens (token spec v3, docs/token-spec.md): the published test vectors,
an independent implementation, property tests of every canonical form, the fast HMAC path, and
where keys come from."""

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import importlib.util
import json
import re
import os
import signal
import subprocess
import string
import sys
import threading
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.crypto import hmac_pool, names, near, normalise
from pipeline.crypto.hmac_batch import HmacSha256
from pipeline.crypto.keys import LinkageKey, key_id, load_key, new_key_file, read_key_file
from pipeline.crypto.tokens import FIELDS, field_key, study_ids, tokenise, tokenise_series
from pipeline.errors import KeyFileError
from pipeline.settings import REPO_DIR

VECTORS_DIR = Path(__file__).resolve().parent / "vectors"
FIXED_KEY = b"pprl-v3 public TEST key #005227."  # the published test key of tests/vectors/tokens_v3.json
V2_KEY = b"pprl-v2 published TEST key #112."  # that of tests/vectors/tokens_v2.json (spec v2, still valid)


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, VECTORS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = _load("reference_v3")
VECTORS = json.loads((VECTORS_DIR / "tokens_v3.json").read_text(encoding="utf-8"))
NEAR_FIELDS = ("name_near",)  # added by version 3 (info pprl/v3/)


def independent_token(key: bytes, field: str, value: str) -> str:
    """The spec, written out with the standard library only: HKDF-SHA256 (RFC 5869) then HMAC."""
    version = b"v3" if field in NEAR_FIELDS else b"v2"
    prk = hmac.new(b"\x00" * 32, key, hashlib.sha256).digest()  # extract with the default all-zero salt
    okm = hmac.new(prk, b"pprl/" + version + b"/" + field.encode() + b"\x01", hashlib.sha256).digest()  # expand, one block
    return hmac.new(okm, value.encode(), hashlib.sha256).hexdigest()


# --- the published test vectors ---------------------------------------------------------------------


def test_the_vectors_file_is_exactly_what_the_pipeline_makes():
    # A change to a canonical form or a token shows up here; regenerate deliberately with
    # `python tests/vectors/make_tokens_v3.py` and say why in the change.
    maker = _load("make_tokens_v3")
    assert maker.render(maker.build()) == (VECTORS_DIR / "tokens_v3.json").read_text(encoding="utf-8")


def test_version_3_left_every_version_2_token_as_it_was():
    # Version 3 added fields and changed none: the pipeline and the v3 reference still make every
    # field key, token and study ID of version 2's published vectors, under version 2's test key.
    v2 = json.loads((VECTORS_DIR / "tokens_v2.json").read_text(encoding="utf-8"))
    key = LinkageKey(V2_KEY, key_id(V2_KEY))
    assert base64.b64decode(v2["key_file"]["key"]) == V2_KEY
    for field, hex_key in v2["field_keys"].items():
        assert field_key(key, field).hex() == reference.field_key(V2_KEY, field).hex() == hex_key
    for v in v2["vectors"]:
        assert reference.canonical_values(v["raw"])[v["column"]] == (v["field"], v["canonical"])
        if v["canonical"] is not None:
            assert tokenise(key, v["field"], v["canonical"]) == v["token"]
    for v in v2["study_ids"]:
        assert study_ids(key, v["release_label"], [v["participant_id"]]) == [v["study_id"]]
    assert {v["field"] for v in VECTORS["vectors"]} == set(FIELDS)


def test_no_vector_holds_ten_digits_a_scanner_could_take_for_an_nhs_number():
    # The vectors are published: a run of ten digits (as a privacy scanner reads them, 3-3-4 spacing
    # allowed) outside the 999 test range, inside a hex token, would look like a real NHS number.
    nhs_like = re.compile(r"(?<![0-9])[0-9]{3}[ -]?[0-9]{3}[ -]?[0-9]{4}(?![0-9])")
    text = (VECTORS_DIR / "tokens_v3.json").read_text(encoding="utf-8")
    assert [m.group() for m in nhs_like.finditer(text) if not re.sub("[ -]", "", m.group()).startswith("999")] == []


def test_no_older_vectors_or_reference_are_left_beside_v3():
    # tokens_v2.json stays: version 3 keeps every version 2 token, and the test above holds it to that.
    assert sorted(p.name for p in VECTORS_DIR.iterdir() if p.suffix in (".py", ".json")) == [
        "make_tokens_v3.py", "reference_v3.py", "tokens_v2.json", "tokens_v3.json",
    ]  # fmt: skip


def test_the_test_key_and_its_kid():
    key = base64.b64decode(VECTORS["key_file"]["key"])
    assert key == FIXED_KEY
    assert VECTORS["key_file"]["kid"] == key_id(key) == reference.kid(key)


def test_field_keys_match_the_independent_implementations():
    assert set(VECTORS["field_keys"]) == set(FIELDS)
    for field, hex_key in VECTORS["field_keys"].items():
        assert reference.field_key(FIXED_KEY, field).hex() == hex_key
        assert field_key(LinkageKey(FIXED_KEY, key_id(FIXED_KEY)), field).hex() == hex_key


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: f"{v['column']}:{v['raw']}")
def test_the_reference_implementation_reproduces_every_vector(vector):
    field, canonical = reference.canonical_values(vector["raw"])[vector["column"]]
    assert (field, canonical) == (vector["field"], vector["canonical"])
    if isinstance(canonical, list):  # a near-miss column: the sorted tokens of its fragments
        assert vector["token"] == reference.set_token(FIXED_KEY, field, canonical)
        assert vector["token"] == sorted({independent_token(FIXED_KEY, field, f) for f in canonical})
        return
    expected = None if canonical is None else reference.token(FIXED_KEY, field, canonical)
    assert vector["token"] == expected
    if canonical is not None:
        assert vector["token"] == independent_token(FIXED_KEY, field, canonical)


def _scalar_canonical(column: str, raw: dict) -> str | None:
    """The pipeline's scalar canonical forms, composed the way docs/token-spec.md describes."""
    dob = dt.date.fromisoformat(raw["date_of_birth"]) if raw.get("date_of_birth") else None
    nhs, sex = normalise.canonical_nhs_number(raw.get("nhs_number")), normalise.canonical_sex(raw.get("sex"))
    pc = normalise.canonical_postcode(raw.get("postcode"))
    first, full = names.canonical_forenames(raw.get("given_name"))
    surname = names.canonical_name(raw.get("family_name"))

    def joined(*parts):
        return None if None in parts else "|".join(parts)

    date, swap = normalise.canonical_date(dob), normalise.canonical_date_swapped(dob)
    first_initial, surname_initial = first and first[0], surname and surname[0]
    return {
        "tok_nhs": nhs, "tok_dob": date, "tok_dob_sex": joined(date, sex), "tok_postcode": pc,
        "tok_surname": surname, "tok_forename": full, "tok_forename_first": first,
        "tok_surname_phonetic_initial": joined(names.name_soundex(surname), first and first[0]),
        "tok_forename_phonetic_initial": joined(names.name_soundex(first), surname and surname[0]),
        "tok_nhs_dob": joined(nhs, date),
        "tok_nhs_dob_swap": joined(nhs, swap) if swap else joined(nhs, date, date and "unswappable"),
        "tok_rank1": joined(nhs, date, sex, pc),
        "tok_rank2": joined(nhs, date, sex),
        "tok_rank3": joined(nhs, normalise.canonical_date_ym(dob)),
        "tok_rank4": joined(nhs, pc),
        "tok_rank5": joined(date, sex, pc),
        "tok_surname_near": near.name_fragments(surname, first_initial),
        "tok_forename_near": near.name_fragments(first, surname_initial),
    }[column]  # fmt: skip


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: f"{v['column']}:{v['raw']}")
def test_the_scalar_canonical_forms_agree_with_the_vectors(vector):
    canonical = _scalar_canonical(vector["column"], vector["raw"])
    assert canonical == vector["canonical"]
    key = LinkageKey(FIXED_KEY, key_id(FIXED_KEY))
    if isinstance(canonical, list):
        assert sorted({tokenise(key, vector["field"], f) for f in canonical}) == vector["token"]
    elif canonical is not None:
        assert tokenise(key, vector["field"], canonical) == vector["token"]


ANY_TEXT = st.one_of(st.none(), st.text(max_size=16), st.text(alphabet=string.digits + " -abcdefXYZ\u00a0\u2003ÄäÖøß'’.", max_size=14))


@given(nhs=ANY_TEXT, pc=st.one_of(ANY_TEXT, st.from_regex(r"[A-Za-z]{1,2}[0-9][0-9A-Za-z]? ?[0-9][A-Za-z]{2}", fullmatch=True)),
       sex=ANY_TEXT, given_name=ANY_TEXT, family_name=ANY_TEXT, dob=st.one_of(st.none(), st.dates(dt.date(1900, 1, 1), dt.date(2030, 1, 1))))  # fmt: skip
def test_the_reference_implementation_agrees_with_the_pipeline_on_any_input(nhs, pc, sex, given_name, family_name, dob):
    raw = {"nhs_number": nhs, "postcode": pc, "sex": sex, "given_name": given_name, "family_name": family_name,
           "date_of_birth": dob and dob.isoformat()}  # fmt: skip
    for column, (_, canonical) in reference.canonical_values(raw).items():
        assert canonical == _scalar_canonical(column, raw), column


def test_study_ids_match_the_vectors_and_differ_between_releases():
    key = LinkageKey(key=FIXED_KEY, kid=key_id(FIXED_KEY))
    for v in VECTORS["study_ids"]:
        assert study_ids(key, v["release_label"], [v["participant_id"]]) == [v["study_id"]]
        assert reference.study_id(FIXED_KEY, v["release_label"], v["participant_id"]) == v["study_id"]
    a, b = study_ids(key, "r1", ["P0000001"]), study_ids(key, "r2", ["P0000001"])
    assert a != b and a[0].startswith("S") and len(a[0]) == 17


def test_reference_soundex_is_jellyfish_soundex():
    import jellyfish

    for word in ["ASHCRAFT", "TYMCZAK", "PFISTER", "HONEYMAN", "LEE", "A", "SCHWARZENEGGER", "WHW", "BHWB", "ABBA"]:
        assert reference.soundex(word) == jellyfish.soundex(word)


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=14))
def test_soundex_as_specified_equals_the_library(word):
    assert reference.soundex(word) == names.name_soundex(word)


# --- keys ------------------------------------------------------------------------------------------


def test_kid_is_first_8_bytes_of_hmac_of_the_label():
    assert key_id(FIXED_KEY) == hmac.new(FIXED_KEY, b"pprl key id", hashlib.sha256).digest()[:8].hex()


def test_new_key_file_is_0600_and_round_trips(tmp_path):
    path = tmp_path / "k.json"
    key = new_key_file(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert read_key_file(path) == key
    assert json.loads(path.read_text())["kid"] == key.kid
    assert "key=" not in repr(key)  # the key never shows up in logs or tracebacks


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o620])
def test_a_key_file_readable_or_writable_by_group_or_others_is_refused(tmp_path, mode):
    path = tmp_path / "k.json"
    new_key_file(path)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError) as err:
        read_key_file(path)
    assert str(err.value) == (
        f"{path}: the key file is readable or writable by group or others (mode {mode:04o}); "
        f"run `chmod 600 {path}` and check who may have copied it"
    )
    assert base64.b64encode(read_key_bytes(path)).decode() not in str(err.value)


def read_key_bytes(path: Path) -> bytes:
    return base64.b64decode(json.loads(path.read_text())["key"])


def test_an_existing_key_is_never_overwritten(tmp_path):
    path = tmp_path / "k.json"
    new_key_file(path)
    with pytest.raises(KeyFileError, match="already exists"):
        new_key_file(path)


def test_missing_key_file_says_how_to_make_one(tmp_path):
    with pytest.raises(KeyFileError, match="pipeline keys new"):
        read_key_file(tmp_path / "absent.json")


def test_a_key_whose_recorded_kid_does_not_match_is_refused(tmp_path):
    path = tmp_path / "edited.json"
    path.write_text(json.dumps({"kid": "0000000000000000", "key": base64.b64encode(FIXED_KEY).decode()}))
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=f"{path}: the recorded kid does not match"):
        load_key(path)


def test_an_explicit_key_file_wins_over_the_key_file_variable(tmp_path, monkeypatch):
    new_key_file(tmp_path / "given.json", random_bytes=FIXED_KEY)
    new_key_file(tmp_path / "other.json")
    monkeypatch.setenv("PPRL_KEY_FILE", str(tmp_path / "other.json"))
    key = load_key(tmp_path / "given.json")
    assert key.kid == key_id(FIXED_KEY) and key.source == str(tmp_path / "given.json")


def test_keys_which_names_the_source_and_kid_never_the_key(tmp_path, monkeypatch, capsys):
    from pipeline.crypto.cli_keys import add_keys_parser
    import argparse

    parser = argparse.ArgumentParser()
    add_keys_parser(parser.add_subparsers(dest="command"))
    new_key_file(tmp_path / "key.json", random_bytes=FIXED_KEY)
    monkeypatch.setenv("PPRL_KEY_FILE", str(tmp_path / "key.json"))
    args = parser.parse_args(["keys", "which"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out == f"kid {key_id(FIXED_KEY)} from {tmp_path / 'key.json'}\n"


AIRFLOW_KEY_SCRIPT = """
import json, os
from pipeline.crypto.keys import load_key
out = []
for conn in json.loads(os.environ.pop("CONNS")):
    os.environ["AIRFLOW_CONN_PPRL_KEY"] = json.dumps(conn)
    key = load_key()
    out.append([key.kid, key.source])
print(json.dumps(out))
"""


def test_the_key_loads_from_the_airflow_connection_password_or_extra(tmp_path):
    """A real Airflow SDK, in a child process with a private AIRFLOW_HOME; the connection comes from
    the environment-variable secrets backend, as a platform would inject it."""
    spec = {"kid": key_id(FIXED_KEY), "key": base64.b64encode(FIXED_KEY).decode()}
    conns = [{"conn_type": "generic", "password": json.dumps(spec)}, {"conn_type": "generic", "extra": spec}]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PPRL_KEY"))}
    env.update(AIRFLOW_HOME=str(tmp_path), AIRFLOW__CORE__LOAD_EXAMPLES="False", CONNS=json.dumps(conns))
    done = subprocess.run(
        [sys.executable, "-c", AIRFLOW_KEY_SCRIPT], env=env, cwd=REPO_DIR, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [[key_id(FIXED_KEY), "Airflow connection pprl_key"]] * 2


# --- tokens and the fast HMAC path ---------------------------------------------------------------------


@pytest.mark.parametrize("field,value", [("nhs_number", "9990000018"), ("date_of_birth", "1950-01-02"), ("postcode", "LS14AB"), ("date_of_birth_sex", "1950-01-02|F"), ("name_near", "SMTH|M")])
def test_tokens_match_an_independent_implementation_of_the_spec(field, value):
    key = LinkageKey(key=FIXED_KEY, kid=key_id(FIXED_KEY))
    assert tokenise(key, field, value) == independent_token(FIXED_KEY, field, value)


def test_tokenise_series_hashes_distinct_values_and_keeps_nulls():
    key = LinkageKey(key=FIXED_KEY, kid=key_id(FIXED_KEY))
    s = pl.Series("v", ["a", None, "b", "a"])
    out = tokenise_series(key, "name", s).to_list()
    assert out[0] == out[3] == tokenise(key, "name", "a") and out[1] is None


@given(st.binary(min_size=1, max_size=100), st.lists(st.binary(max_size=80).filter(lambda b: b"\n" not in b), max_size=20))
def test_precomputed_hmac_states_equal_hmac(key, messages):
    fast = HmacSha256(key)
    assert fast.digest_many(messages) == b"".join(hmac.digest(key, m, "sha256") for m in messages)


def test_the_worker_processes_give_the_same_tokens_as_this_process(monkeypatch):
    monkeypatch.setattr(hmac_pool, "PARALLEL_MIN_VALUES", 10)
    monkeypatch.setattr(hmac_pool, "CHUNK_VALUES", 7)  # many chunks, shared out among the workers
    values = pl.Series("v", [f"value-{i}-é" for i in range(100)] + [""])
    parallel = hmac_pool.hex_hmac(b"k" * 32, values, workers=2)
    serial = hmac_pool.hex_hmac(b"k" * 32, values, workers=0)
    assert parallel.to_list() == serial.to_list() == [hmac.new(b"k" * 32, v.encode(), "sha256").hexdigest() for v in values]
    assert parallel.name == "v" and parallel.dtype == pl.String


def test_the_worker_processes_never_see_the_linkage_key(monkeypatch):
    from pipeline.crypto.keys import KEY_ENVIRONMENT

    for name in KEY_ENVIRONMENT:
        monkeypatch.setenv(name, json.dumps({"key": base64.b64encode(FIXED_KEY).decode()}))
    hmac_pool._discard_pool()
    pool = hmac_pool._shared_pool(2)
    try:
        for worker in pool.workers:
            environ = Path(f"/proc/{worker.proc.pid}/environ").read_bytes().split(b"\0")
            assert not [v for v in environ if v.split(b"=")[0].decode() in KEY_ENVIRONMENT]
            assert base64.b64encode(FIXED_KEY) not in b"".join(environ)
    finally:
        hmac_pool._discard_pool()


def test_a_dead_worker_fails_the_call_and_the_next_call_starts_fresh_workers(monkeypatch):
    monkeypatch.setattr(hmac_pool, "PARALLEL_MIN_VALUES", 10)
    monkeypatch.setattr(hmac_pool, "CHUNK_VALUES", 5)
    values = pl.Series("v", [str(i) for i in range(50)])
    hmac_pool._discard_pool()
    hmac_pool._shared_pool(2).workers[0].proc.kill()
    with pytest.raises((RuntimeError, OSError)):
        hmac_pool.hex_hmac(b"k" * 32, values, workers=2)
    assert hmac_pool._pool is None
    assert hmac_pool.hex_hmac(b"k" * 32, values, workers=2).to_list() == hmac_pool.hex_hmac(b"k" * 32, values, workers=0).to_list()
    hmac_pool._discard_pool()


def test_a_worker_that_stops_answering_fails_the_call_instead_of_hanging(monkeypatch):
    """A stuck worker (stopped with SIGSTOP, as a profiler or the kernel can stop a process) makes the
    call fail with an error within the reply timeout, and the next call starts fresh workers."""
    monkeypatch.setattr(hmac_pool, "PARALLEL_MIN_VALUES", 10)
    monkeypatch.setattr(hmac_pool, "CHUNK_VALUES", 5)
    monkeypatch.setattr(hmac_pool, "REPLY_TIMEOUT_S", 0.5)
    values = pl.Series("v", [str(i) for i in range(50)])
    hmac_pool._discard_pool()
    stuck = hmac_pool._shared_pool(2).workers[0].proc
    os.kill(stuck.pid, signal.SIGSTOP)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            hmac_pool.hex_hmac(b"k" * 32, values, workers=2)
        except BaseException as exc:
            outcome.append(exc)

    try:
        # In a thread, so that a call that waits for ever fails this test instead of hanging the suite.
        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        caller.join(timeout=30)
        assert not caller.is_alive(), "the call still waits for the stopped worker"
        assert len(outcome) == 1 and isinstance(outcome[0], TimeoutError) and "sent no reply for 0 s" in str(outcome[0])
        assert hmac_pool._pool is None and stuck.wait(timeout=10) == -signal.SIGKILL
        assert hmac_pool.hex_hmac(b"k" * 32, values, workers=2).to_list() == hmac_pool.hex_hmac(b"k" * 32, values, workers=0).to_list()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stuck.pid, signal.SIGKILL)
        hmac_pool._discard_pool()


@pytest.mark.parametrize("values,message", [([None, "a"], "must not be null"), (["a\nb"], "line feed")])
def test_values_that_cannot_be_tokenised_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        hmac_pool.hex_hmac(b"k" * 32, pl.Series(values, dtype=pl.String))


# --- canonical forms: examples and properties -----------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,canonical",
    [("999 000 0018", "9990000018"), ("999-000-0018", "9990000018"), ("9990000019", None), ("99900000", None),
     ("", None), (None, None), ("9999999999", None)],
)  # fmt: skip
def test_nhs_number_canonical_form(raw, canonical):
    assert normalise.canonical_nhs_number(raw) == canonical


def _valid_nhs_numbers():
    stems = st.integers(100_000_000, 999_999_999).map(str)
    return stems.filter(lambda s: normalise.nhs_check_digit(s) is not None and len(set(s)) > 1).map(
        lambda s: s + str(normalise.nhs_check_digit(s))
    )


@given(_valid_nhs_numbers(), st.lists(st.sampled_from([" ", "-", "\u00a0", "\t"]), max_size=4), st.randoms())
def test_nhs_number_is_stable_under_spaces_and_dashes(number, separators, rnd):
    spaced = list(number)
    for sep in separators:
        spaced.insert(rnd.randint(0, len(spaced)), sep)
    assert normalise.canonical_nhs_number("".join(spaced)) == number


@given(_valid_nhs_numbers(), st.integers(0, 9), st.integers(1, 9))
def test_modulus_11_catches_every_single_digit_error(number, position, shift):
    wrong = number[:position] + str((int(number[position]) + shift) % 10) + number[position + 1 :]
    assert normalise.canonical_nhs_number(wrong) is None


WORDS = st.text(alphabet=st.characters(codec="utf-8"), max_size=20)


@given(WORDS)
def test_canonical_forms_are_idempotent(s):
    for f in (names.canonical_name, normalise.canonical_postcode, normalise.canonical_nhs_number, normalise.canonical_sex):
        once = f(s)
        assert once is None or f(once) == once
    first, full = names.canonical_forenames(s)
    assert full is None or names.canonical_forenames(full)[1] == full
    assert first is None or names.canonical_forenames(first) == (first, first)


@given(WORDS)
def test_names_are_only_letters_a_to_z_and_the_first_forename_starts_the_full(s):
    first, full = names.canonical_forenames(s)
    for value in (first, full, names.canonical_name(s)):
        assert value is None or (value.isascii() and value.isalpha() and value.isupper())
    assert (first is None) == (full is None) and (full is None or full.startswith(first))


NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=2, max_size=12).filter(
    lambda w: w.upper() not in names.TITLES
)


@given(st.lists(NAME, min_size=1, max_size=3), st.sampled_from(["", "Mr ", "Mrs ", "Dr ", "Prof Dr "]), st.booleans())
def test_names_are_stable_under_case_accents_apostrophes_and_titles(words, title, accent):
    plain = " ".join(words)
    first_letter = words[0][0]
    marked = words[0][0] + ("\u0301" if accent else "") + "'" + words[0][1:]  # an accent and an apostrophe
    variant = title + " ".join([marked, *words[1:]]).swapcase()
    assert names.canonical_forenames(variant) == names.canonical_forenames(plain)
    assert names.canonical_name(variant) == names.canonical_name(plain) == "".join(words).upper()
    assert names.canonical_forenames(plain)[0] == words[0].upper() and first_letter.upper() == names.canonical_name(plain)[0]


def test_folding_examples():
    assert names.fold_ascii("Zoë Ødegård Strauß") == "Zoe Odegard Strauss"
    assert names.canonical_forenames("Mary\u2013Jane") == names.canonical_forenames("Mary-Jane") == ("MARY", "MARYJANE")
    assert names.canonical_name("Mr") == "MR" and names.canonical_name("Lord") == "LORD"  # a title alone is kept
    assert names.canonical_name("李") is None and names.canonical_forenames("  ") == (None, None)


POSTCODES = st.from_regex(r"[A-Z]{1,2}[0-9][0-9A-Z]? ?[0-9][A-Z]{2}", fullmatch=True)


@given(POSTCODES, st.booleans(), st.sampled_from(["", " ", "  ", "\u00a0"]))
def test_postcodes_are_stable_under_case_and_spacing(pc, lower, pad):
    canonical = normalise.canonical_postcode(pc)
    variant = pad + (pc.lower() if lower else pc) + pad
    assert normalise.canonical_postcode(variant) == canonical
    if canonical is not None:
        sector, district = normalise.postcode_sector(canonical), normalise.postcode_district(canonical)
        assert canonical == district + canonical[-3:] and sector == district + canonical[-3]
        assert canonical == pc.replace(" ", "") and not canonical.startswith("ZZ99")


@given(st.lists(st.one_of(st.none(), POSTCODES, WORDS, st.sampled_from(["zz99 3vz", "ls1\x1c4ab", "LS1 4AB\u2003"])), max_size=30))
def test_vectorised_postcode_forms_agree_with_scalar(values):
    df = pl.DataFrame({"p": values}, schema={"p": pl.String}).select(
        normalise.postcode_expr("p").alias("unit"),
        normalise.postcode_sector_expr("p").alias("sector"),
        normalise.postcode_district_expr("p").alias("district"),
    )
    scalar = [normalise.canonical_postcode(v) for v in values]
    assert df.get_column("unit").to_list() == scalar
    assert df.get_column("sector").to_list() == [s and normalise.postcode_sector(s) for s in scalar]
    assert df.get_column("district").to_list() == [s and normalise.postcode_district(s) for s in scalar]


@given(st.lists(st.one_of(st.none(), st.from_regex(r"999[ -]?[0-9]{3}[ -]?[0-9]{4}", fullmatch=True), st.text(max_size=12), st.sampled_from(["9999999999", "999\x1c0000018"])), max_size=30))
def test_vectorised_nhs_number_agrees_with_scalar(values):
    out = pl.DataFrame({"n": values}, schema={"n": pl.String}).select(normalise.nhs_number_expr("n")).to_series().to_list()
    assert out == [normalise.canonical_nhs_number(v) for v in values]


@given(st.lists(st.one_of(st.none(), st.sampled_from(["F", "m", " female", "MALE ", "1", "2", "U", "\x1cF", "f\u3000"]), st.text(max_size=6)), max_size=20))
def test_vectorised_sex_agrees_with_scalar_and_is_f_m_or_null(values):
    out = pl.DataFrame({"s": values}, schema={"s": pl.String}).select(normalise.sex_expr("s")).to_series().to_list()
    assert out == [normalise.canonical_sex(v) for v in values]
    assert set(out) <= {"F", "M", None}


@given(st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2030, 12, 31)))
@settings(max_examples=200)
def test_date_forms_round_trip_and_agree_with_the_vectorised_forms(d):
    canonical = normalise.canonical_date(d)
    assert dt.date.fromisoformat(canonical) == d and normalise.canonical_date_ym(d) == canonical[:7]
    swapped = normalise.canonical_date_swapped(d)
    if swapped is not None:  # swapping twice gives the date back
        assert normalise.canonical_date_swapped(dt.date.fromisoformat(swapped)) == canonical
    row = pl.DataFrame({"d": [d]}).select(
        normalise.date_expr("d").alias("a"), normalise.date_ym_expr("d").alias("b"), normalise.date_swapped_expr("d").alias("c")
    )
    assert row.row(0) == (canonical, canonical[:7], swapped)


@given(st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2020, 12, 31)))
def test_swapped_date_is_a_valid_different_date_or_null(d):
    out = pl.DataFrame({"d": [d]}).select(normalise.date_swapped_expr("d")).item()
    if d.day <= 12 and d.day != d.month:
        assert out == dt.date(d.year, d.day, d.month).isoformat()
    else:
        assert out is None


# --- near-miss fragments (token spec v3, section 3.8) -------------------------------------------------

NAMES = st.text(alphabet=string.ascii_uppercase, min_size=5, max_size=12)


@given(name=NAMES, edit=st.sampled_from(["insert", "delete", "change", "swap"]), where=st.integers(0, 10), letter=st.sampled_from(string.ascii_uppercase))
def test_names_one_edit_apart_share_a_fragment(name, edit, where, letter):
    i = where % (len(name) - 1)
    other = {
        "insert": name[:i] + letter + name[i:],
        "delete": name[:i] + name[i + 1 :],
        "change": name[:i] + letter + name[i + 1 :],
        "swap": name[:i] + name[i + 1] + name[i] + name[i + 2 :],
    }[edit]
    assert set(near.name_fragments(name, "J")) & set(near.name_fragments(other, "J"))
    assert not set(near.name_fragments(name, "J")) & set(near.name_fragments(other, "K"))  # another salt: nothing
