"""Write tokens_v1.json, the published test vectors of token spec v1, from the pipeline's own code path.

    .venv/bin/python tests/vectors/make_tokens_v1.py          # rewrites tests/vectors/tokens_v1.json

Each vector is (token column, field, raw identifiers, canonical string, token) under a fixed,
published test key that must never be used for real data. The canonical strings and tokens come
from `pipeline.pseudonymise.identifiers` exactly as a run makes them. tests/test_crypto.py checks
that this script still writes the checked-in file (so a change to a canonical form or a token
cannot slip in unnoticed) and that tests/vectors/reference_v1.py, written from the spec alone,
reproduces every vector.
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

OUT = HERE / "tokens_v1.json"
# Published, never for real data: 32 ASCII bytes, easy to type in any language. #056 is the first
# number whose vectors hold no run of ten digits that a data scanner could take for an NHS number.
TEST_KEY = b"pprl-v1 published TEST key #056."
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
    ("tok_dob_ym", {"date_of_birth": "1950-03-07"}),
    ("tok_dob_swap", {"date_of_birth": "1950-03-07"}),
    ("tok_dob_swap", {"date_of_birth": "1950-07-03"}),
    ("tok_dob_swap", {"date_of_birth": "1950-03-03"}),  # swapping changes nothing
    ("tok_dob_swap", {"date_of_birth": "1950-03-25"}),  # 25 is no month
    ("tok_sex", {"sex": "F"}),
    ("tok_sex", {"sex": " female "}),
    ("tok_sex", {"sex": "2"}),
    ("tok_sex", {"sex": "M"}),
    ("tok_sex", {"sex": "1"}),
    ("tok_sex", {"sex": "U"}),
    ("tok_postcode", {"postcode": "ls1 4ab"}),
    ("tok_postcode", {"postcode": "LS14AB"}),
    ("tok_postcode", {"postcode": "SW1A 1AA"}),
    ("tok_postcode", {"postcode": "M1 1AE"}),
    ("tok_postcode", {"postcode": "DN55 1PT"}),
    ("tok_postcode", {"postcode": "ZZ99 3VZ"}),  # NHS pseudo-postcode: no fixed abode
    ("tok_postcode", {"postcode": "LS1 4A"}),
    ("tok_pc_sector", {"postcode": "ls1 4ab"}),
    ("tok_pc_sector", {"postcode": "SW1A 1AA"}),
    ("tok_pc_district", {"postcode": "ls1 4ab"}),
    ("tok_pc_district", {"postcode": "SW1A 1AA"}),
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
    ("tok_surname_phonetic", {"family_name": "Ashcraft"}),
    ("tok_surname_phonetic", {"family_name": "Tymczak"}),
    ("tok_surname_phonetic", {"family_name": "Pfister"}),
    ("tok_surname_phonetic", {"family_name": "Honeyman"}),
    ("tok_surname_phonetic", {"family_name": "Lee"}),
    ("tok_surname_phonetic", {"family_name": "O'Brien-Smith"}),
    ("tok_forename_phonetic", {"given_name": "Robert"}),
    ("tok_forename_phonetic", {"given_name": "Rupert"}),
    ("tok_forename_phonetic", {"given_name": "Mary-Jane"}),
    ("tok_initials", {"given_name": "Mary-Jane", "family_name": "O'Brien"}),
    ("tok_initials", {"given_name": "Mr John", "family_name": "Smith"}),
    ("tok_initials", {"given_name": "John"}),  # no surname: no initials
    *[(f"tok_rank{r}", FULL) for r in range(1, 6)],
    ("tok_rank1", {**FULL, "sex": "U"}),  # a part is unknown: no composite
    ("tok_rank5", {**FULL, "nhs_number": None}),
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
            "canonical": canonical.get_column(column)[i],
            "token": tokened.get_column(column)[i],
        }
        for i, (column, raw) in enumerate(CASES)
    ]
    return {
        "spec": "pprl token spec v1 (docs/token-spec.md)",
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
