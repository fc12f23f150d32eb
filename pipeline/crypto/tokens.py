"""Tokens, token spec v1: HMAC-SHA256 under a per-field key derived with HKDF-SHA256.

    field key = HKDF-SHA256(key, length=32, salt=None, info=b"pprl/v1/" + FIELD)
    token     = hex(HMAC-SHA256(field key, canonical value as UTF-8))

Composite fields join their canonical parts with "|". Release study IDs use a separate derivation
(info b"pprl/v1/release/" + label), so two releases cannot be joined on their IDs and no linkage
token ever reaches a release.

Tokens are computed once per distinct value, never per row: an extract of 50 million rows has only
about as many distinct NHS numbers as people.
"""

from __future__ import annotations

import hmac
from functools import lru_cache

import polars as pl
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pipeline.crypto.keys import LinkageKey

SPEC_VERSION = "v1"
# Every field a token may be made for. The field name is part of the derivation, so adding a field
# never changes an existing token.
FIELDS: tuple[str, ...] = (
    "nhs_number",
    "date_of_birth",
    "date_of_birth_ym",
    "sex",
    "postcode",
)


def _hkdf(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


@lru_cache(maxsize=256)
def _field_key(key: bytes, field: str) -> bytes:
    if field not in FIELDS:
        raise ValueError(f"no token field {field!r}; token spec v1 fields are {FIELDS}")
    return _hkdf(key, b"pprl/" + SPEC_VERSION.encode() + b"/" + field.encode())


def field_key(key: LinkageKey, field: str) -> bytes:
    return _field_key(key.key, field)


def tokenise(key: LinkageKey, field: str, canonical: str) -> str:
    """The token of one canonical value. Callers normalise first (pipeline.crypto.normalise)."""
    return hmac.digest(_field_key(key.key, field), canonical.encode("utf-8"), "sha256").hex()


def tokenise_composite(key: LinkageKey, field: str, parts: list[str]) -> str:
    return tokenise(key, field, "|".join(parts))


def tokenise_many(key: LinkageKey, field: str, values: list[str]) -> list[str]:
    fk = _field_key(key.key, field)
    digest = hmac.digest
    return [digest(fk, v.encode("utf-8"), "sha256").hex() for v in values]


def tokenise_series(key: LinkageKey, field: str, canonical: pl.Series) -> pl.Series:
    """Tokenise a column of canonical values, hashing each distinct value once; nulls stay null."""
    distinct = canonical.drop_nulls().unique().sort()
    tokens = pl.Series(tokenise_many(key, field, distinct.to_list()), dtype=pl.String)
    mapping = pl.DataFrame({"v": distinct, "t": tokens})
    return (
        canonical.to_frame("v")
        .join(mapping, on="v", how="left", maintain_order="left")
        .get_column("t")
        .alias(canonical.name)
    )


def release_key(key: LinkageKey, release_label: str) -> bytes:
    return _hkdf(key.key, b"pprl/" + SPEC_VERSION.encode() + b"/release/" + release_label.encode("utf-8"))


def study_ids(key: LinkageKey, release_label: str, participant_ids: list[str]) -> list[str]:
    """Study IDs of one release: 'S' + the first 16 hex digits of HMAC(release key, participant id)."""
    rk = release_key(key, release_label)
    return ["S" + hmac.digest(rk, p.encode("utf-8"), "sha256").hex()[:16] for p in participant_ids]

