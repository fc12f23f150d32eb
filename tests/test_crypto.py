"""Keys, canonical forms and tokens (token spec v1)."""

import base64
import datetime as dt
import hashlib
import hmac
import json
import os

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.crypto import normalise
from pipeline.crypto.keys import LinkageKey, key_id, load_key, new_key_file, read_key_file
from pipeline.crypto.tokens import study_ids, tokenise, tokenise_series
from pipeline.errors import KeyFileError

FIXED_KEY = bytes(range(32))


def independent_token(key: bytes, field: str, value: str) -> str:
    """The spec, written out with the standard library only: HKDF-SHA256 (RFC 5869) then HMAC."""
    prk = hmac.new(b"\x00" * 32, key, hashlib.sha256).digest()  # extract with the default all-zero salt
    okm = hmac.new(prk, b"pprl/v1/" + field.encode() + b"\x01", hashlib.sha256).digest()  # expand, one block
    return hmac.new(okm, value.encode(), hashlib.sha256).hexdigest()


@pytest.mark.parametrize("field,value", [("nhs_number", "9990000018"), ("date_of_birth", "1950-01-02"), ("postcode", "LS14AB"), ("sex", "F")])
def test_tokens_match_an_independent_implementation_of_the_spec(field, value):
    key = LinkageKey(key=FIXED_KEY, kid=key_id(FIXED_KEY))
    assert tokenise(key, field, value) == independent_token(FIXED_KEY, field, value)


def test_kid_is_first_8_bytes_of_hmac_of_the_label():
    assert key_id(FIXED_KEY) == hmac.new(FIXED_KEY, b"pprl key id", hashlib.sha256).digest()[:8].hex()


def test_new_key_file_is_0600_and_round_trips(tmp_path):
    path = tmp_path / "k.json"
    key = new_key_file(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert read_key_file(path) == key
    assert json.loads(path.read_text())["kid"] == key.kid
    assert "key=" not in repr(key)  # the key never shows up in logs or tracebacks


def test_a_group_readable_key_file_is_refused(tmp_path):
    path = tmp_path / "k.json"
    new_key_file(path)
    os.chmod(path, 0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        read_key_file(path)


def test_an_existing_key_is_never_overwritten(tmp_path):
    path = tmp_path / "k.json"
    new_key_file(path)
    with pytest.raises(KeyFileError, match="already exists"):
        new_key_file(path)


def test_missing_key_file_says_how_to_make_one(tmp_path):
    with pytest.raises(KeyFileError, match="pipeline keys new"):
        read_key_file(tmp_path / "absent.json")


def test_key_from_environment_wins(tmp_path, monkeypatch):
    body = json.dumps({"key": base64.b64encode(FIXED_KEY).decode()})
    monkeypatch.setenv("PPRL_KEY", body)
    assert load_key(tmp_path / "ignored.json").kid == key_id(FIXED_KEY)


def test_release_study_ids_differ_between_labels():
    key = LinkageKey(key=FIXED_KEY, kid=key_id(FIXED_KEY))
    a, b = study_ids(key, "r1", ["P0000001"]), study_ids(key, "r2", ["P0000001"])
    assert a != b and a[0].startswith("S") and len(a[0]) == 17


def test_tokenise_series_hashes_distinct_values_and_keeps_nulls():
    key = LinkageKey(key=FIXED_KEY, kid=key_id(FIXED_KEY))
    s = pl.Series("v", ["a", None, "b", "a"])
    out = tokenise_series(key, "sex", s).to_list()
    assert out[0] == out[3] == tokenise(key, "sex", "a") and out[1] is None


@pytest.mark.parametrize(
    "raw,canonical",
    [("999 000 0018", "9990000018"), ("999-000-0018", "9990000018"), ("9990000019", None), ("99900000", None), ("", None), (None, None)],
)
def test_nhs_number_canonical_form(raw, canonical):
    assert normalise.canonical_nhs_number(raw) == canonical


@given(st.text(max_size=20))
def test_canonical_forms_are_idempotent(s):
    for f in (normalise.canonical_name, normalise.canonical_postcode, normalise.canonical_nhs_number, normalise.canonical_sex):
        once = f(s)
        assert once is None or f(once) == once


@given(st.lists(st.one_of(st.none(), st.from_regex(r"999[ -]?[0-9]{3}[ -]?[0-9]{4}", fullmatch=True), st.text(max_size=12)), max_size=30))
def test_vectorised_nhs_number_agrees_with_scalar(values):
    out = pl.DataFrame({"n": values}, schema={"n": pl.String}).select(normalise.nhs_number_expr("n")).to_series().to_list()
    assert out == [normalise.canonical_nhs_number(v) for v in values]


@given(st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2020, 12, 31)))
def test_swapped_date_is_a_valid_different_date_or_null(d):
    out = pl.DataFrame({"d": [d]}).select(normalise.date_swapped_expr("d")).item()
    if d.day <= 12 and d.day != d.month:
        assert out == dt.date(d.year, d.day, d.month).isoformat()
    else:
        assert out is None
