"""Write tokens_v3.json, the published test vectors of token spec v3, from the pipeline's own code path.

    .venv/bin/python tests/vectors/make_tokens_v3.py          # rewrites tests/vectors/tokens_v3.json

Each vector is (token column, field, raw identifiers, canonical string, token) under a fixed,
published test key that must never be used for real data. The canonical strings and tokens come
from `pipeline.pseudonymise.identifiers` exactly as a run makes them. tests/test_crypto.py checks
that this script still writes the checked-in file (so a change to a canonical form or a token
cannot slip in unnoticed) and that tests/vectors/reference_v3.py, written from the spec alone,
reproduces every vector. Version 3 left every version 2 field as it was, so the cases and vectors of
version 2 are here (under this version's test key), followed by the near-miss columns' cases; a
near-miss vector's canonical value and token are lists (its fragments, and their tokens, sorted).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

OUT = HERE / "tokens_v3.json"
# Published, never for real data: 32 ASCII bytes, easy to type in any language. #005227 is the first
# number whose v3 vectors hold no run of ten digits, outside the 999 test range, that a data scanner
# could take for an NHS number (tests/test_crypto.py checks it); version 2's key (#112, whose vectors
# stay in tokens_v2.json and still hold) would put such runs into the near-miss tokens.
TEST_KEY = b"pprl-v3 public TEST key #005227."
TEST_KEY_CREATED = "2026-01-01T00:00:00+00:00"

FULL = {"nhs_number": "999 000 0018", "date_of_birth": "1950-03-07", "sex": "female", "postcode": "ls1 4ab",
        "given_name": "Mary-Jane", "family_name": "O'Brien"}  # fmt: skip

# (token column, raw identifiers). A raw date of birth is the date the extract holds, written YYYY-MM-DD.
CASES: list[tuple[str, dict[str, str]]] = [
    ("tok_nhs", {"nhs_number": "9990000018"}),
    ("tok_nhs", {"nhs_number": "999 000 0018"}),
    ("tok_nhs", {"nhs_number": "999-000-0018"}),
    ("tok_nhs", {"nhs_number": "999\u00a0765\u00a04323"}),  # no-break spaces
    ("tok_nhs", {"nhs_number": "9990000123"}),
    ("tok_nhs", {"nhs_number": "9990000019"}),  # fails Modulus 11
    ("tok_nhs", {"nhs_number": "9991234560"}),  # stem has no valid check digit (remainder 10)
    ("tok_nhs", {"nhs_number": "999000001"}),  # nine digits
    ("tok_nhs", {"nhs_number": "9999999999"}),  # passes Modulus 11 but is a placeholder
    ("tok_nhs", {"nhs_number": "999000001８"}),  # a full-width digit
    ("tok_dob", {"date_of_birth": "1950-03-07"}),
    ("tok_dob", {"date_of_birth": "1929-12-31"}),
    ("tok_dob_sex", {"date_of_birth": "1950-03-07", "sex": "F"}),
    ("tok_dob_sex", {"date_of_birth": "1950-03-07", "sex": " female "}),
    ("tok_dob_sex", {"date_of_birth": "1950-03-07", "sex": "2"}),
    ("tok_dob_sex", {"date_of_birth": "1950-03-07", "sex": "M"}),
    ("tok_dob_sex", {"date_of_birth": "1950-03-07", "sex": "1"}),
    ("tok_dob_sex", {"date_of_birth": "1950-03-07", "sex": "U"}),  # sex unknown: no composite
    ("tok_dob_sex", {"sex": "F"}),  # no date: no composite
    ("tok_nhs_dob", {"nhs_number": "9990000018", "date_of_birth": "1950-03-07"}),
    ("tok_nhs_dob", {"nhs_number": "9990000018", "date_of_birth": "1950-07-03"}),
    ("tok_nhs_dob_swap", {"nhs_number": "9990000018", "date_of_birth": "1950-07-03"}),  # equals the tok_nhs_dob above
    ("tok_nhs_dob_swap", {"nhs_number": "9990000018", "date_of_birth": "1950-03-07"}),
    ("tok_nhs_dob_swap", {"nhs_number": "9990000018", "date_of_birth": "1950-03-03"}),  # swapping changes nothing
    ("tok_nhs_dob_swap", {"nhs_number": "9990000018", "date_of_birth": "1950-03-25"}),  # 25 is no month
    ("tok_nhs_dob_swap", {"date_of_birth": "1950-03-07"}),  # no NHS number: no composite
    ("tok_postcode", {"postcode": "ls1 4ab"}),
    ("tok_postcode", {"postcode": "LS14AB"}),
    ("tok_postcode", {"postcode": "SW1A 1AA"}),
    ("tok_postcode", {"postcode": "M1 1AE"}),
    ("tok_postcode", {"postcode": "DN55 1PT"}),
    ("tok_postcode", {"postcode": "ZZ99 3VZ"}),  # NHS pseudo-postcode: no fixed abode
    ("tok_postcode", {"postcode": "LS1 4A"}),
    ("tok_surname", {"family_name": "Smith"}),
    ("tok_surname", {"family_name": "O'Brien-Smith"}),
    ("tok_surname", {"family_name": "D\u2019Souza"}),
    ("tok_surname", {"family_name": "Núñez"}),
    ("tok_surname", {"family_name": "Wójcik"}),
    ("tok_surname", {"family_name": "Strauß"}),
    ("tok_surname", {"family_name": "Ødegård"}),
    ("tok_surname", {"family_name": "Mrs Lord"}),
    ("tok_surname", {"family_name": "Lord"}),
    ("tok_surname", {"family_name": "李"}),
    ("tok_forename", {"given_name": "Mary-Jane"}),
    ("tok_forename", {"given_name": "Dr Zoë  Mary\u2013Jane"}),
    ("tok_forename", {"given_name": "J.R.R."}),
    ("tok_forename", {"given_name": "Siân"}),
    ("tok_forename_first", {"given_name": "Mary-Jane"}),
    ("tok_forename_first", {"given_name": "Mary"}),
    ("tok_forename_first", {"given_name": "Dr Zoë  Mary\u2013Jane"}),
    ("tok_forename_first", {"given_name": "J.R.R."}),
    ("tok_surname_phonetic_initial", {"given_name": "Mary", "family_name": "Ashcraft"}),
    ("tok_surname_phonetic_initial", {"given_name": "Mary", "family_name": "Tymczak"}),
    ("tok_surname_phonetic_initial", {"given_name": "Mary", "family_name": "Pfister"}),
    ("tok_surname_phonetic_initial", {"given_name": "Mary", "family_name": "Honeyman"}),
    ("tok_surname_phonetic_initial", {"given_name": "Mary", "family_name": "Lee"}),
    ("tok_surname_phonetic_initial", {"given_name": "Mary-Jane", "family_name": "O'Brien-Smith"}),
    ("tok_surname_phonetic_initial", {"family_name": "Lee"}),  # no forename: no composite
    ("tok_forename_phonetic_initial", {"given_name": "Robert", "family_name": "Lee"}),
    ("tok_forename_phonetic_initial", {"given_name": "Rupert", "family_name": "Lee"}),
    ("tok_forename_phonetic_initial", {"given_name": "Mr John", "family_name": "Smith"}),
    ("tok_forename_phonetic_initial", {"given_name": "Lee", "family_name": "Mary"}),  # names swapped: equals Mary Lee's surname one
    *[(f"tok_rank{r}", FULL) for r in range(1, 6)],
    ("tok_rank1", {**FULL, "sex": "U"}),  # a part is unknown: no composite
    ("tok_rank5", {**FULL, "nhs_number": None}),
    # Token spec v3: near-miss fragments, each salted (section 3.8).
    ("tok_surname_near", {"given_name": "Mary", "family_name": "Smith"}),
    ("tok_surname_near", {"given_name": "Mary", "family_name": "Smyth"}),  # shares SMTH|M with Smith
    ("tok_surname_near", {"given_name": "Mary", "family_name": "Simth"}),  # two letters swapped: shares SITH|M and SMTH|M with Smith
    ("tok_surname_near", {"given_name": "Mary", "family_name": "Aaron"}),  # deleting either A gives ARON once
    ("tok_surname_near", {"given_name": "Mary", "family_name": "Lee"}),  # under 4 letters: none
    ("tok_surname_near", {"family_name": "Smith"}),  # no forename, no salt: none
    ("tok_forename_near", {"given_name": "Dr Zoë  Mary–Jane", "family_name": "Smith"}),  # the first forename, ZOE: none
    ("tok_forename_near", {"given_name": "Mary-Jane", "family_name": "O'Brien"}),
    ("tok_forename_near", {"given_name": "Mari", "family_name": "Obrien"}),  # shares MAR|O with Mary-Jane O'Brien's
]
STUDY_IDS: list[tuple[str, str]] = [("2026-q1", "P0000001"), ("2026-q1", "P0000002"), ("2026-q2", "P0000001")]
IDENTIFIERS = ("nhs_number", "given_name", "family_name", "date_of_birth", "sex", "postcode")


def build() -> dict[str, Any]:
    import polars as pl

    from pipeline.crypto.keys import LinkageKey, key_id
    from pipeline.crypto.tokens import FIELDS, field_key, study_ids
    from pipeline.pseudonymise.identifiers import TOKEN_COLUMNS, canonical_forms, tokenise_identifiers

    key = LinkageKey(key=TEST_KEY, kid=key_id(TEST_KEY))
    frame = pl.DataFrame(
        {c: [raw.get(c) for _, raw in CASES] for c in IDENTIFIERS}, schema={c: pl.String for c in IDENTIFIERS}
    ).with_columns(pl.col("date_of_birth").str.to_date(), pl.int_range(pl.len()).alias("_case"))
    canonical = canonical_forms(frame.lazy()).sort("_case").collect()
    tokened = tokenise_identifiers(frame.lazy(), key)[0].sort("_case").collect()
    field_of = {c.name: c.field for c in TOKEN_COLUMNS}
    vectors = [
        {
            "column": column,
            "field": field_of[column],
            "raw": {k: v for k, v in raw.items() if v is not None},
            "canonical": canonical.get_column(column).to_list()[i],
            "token": tokened.get_column(column).to_list()[i],
        }
        for i, (column, raw) in enumerate(CASES)
    ]
    return {
        "spec": "pprl token spec v3 (docs/token-spec.md)",
        "warning": "TEST KEY: published so anyone can check an implementation; never use it for real data",
        "key_file": {"kid": key.kid, "key": base64.b64encode(TEST_KEY).decode(), "created": TEST_KEY_CREATED},
        "field_keys": {f: field_key(key, f).hex() for f in FIELDS},
        "vectors": vectors,
        "study_ids": [
            {"release_label": label, "participant_id": pid, "study_id": study_ids(key, label, [pid])[0]}
            for label, pid in STUDY_IDS
        ],
    }


def render(spec: dict[str, Any]) -> str:
    return json.dumps(spec, indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(build()), encoding="utf-8")
    print(f"wrote {OUT} ({len(CASES)} vectors) at {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}")
