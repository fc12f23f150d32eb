"""Tokens, token spec v3 (docs/token-spec.md): HMAC-SHA256 under a per-field key derived with HKDF-SHA256.

    field key = HKDF-SHA256(key, length=32, salt=None, info=b"pprl/" + VERSION + b"/" + FIELD)

VERSION is the spec version that introduced the field (`FIELD_VERSIONS`): v2 for every field of
version 2, whose tokens version 3 leaves unchanged, and v3 for the near-miss fields.
    token     = hex(HMAC-SHA256(field key, canonical value as UTF-8))

Composite fields join their canonical parts with "|". Release study IDs use a separate derivation
(info b"pprl/v2/release/" + label), so two releases cannot be joined on their IDs (their rows' content
still can be: docs/governance.md) and no linkage token ever reaches a release.

A field with few possible values (sex, a postcode district, initials) is never a token on its own,
since the frequency of its tokens gives it away: it only appears inside a composite whose combined
values number at least MIN_TOKEN_DOMAIN (`field_domain`).

Tokens are computed once per distinct value, never per row (`tokenise_distinct`): an extract of
50 million rows has only about as many distinct NHS numbers as people.
"""

from __future__ import annotations

import hmac
import math
from functools import lru_cache

import polars as pl
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pipeline.crypto.hmac_pool import hex_hmac
from pipeline.crypto.keys import LinkageKey
from pipeline.crypto.spec import KID_METADATA, SPEC_METADATA, SPEC_VERSION, token_file_metadata  # noqa: F401 (re-exported)
# Every field a token may be made for, with what its canonical value is. The field name is part of
# the key derivation, so adding a field never changes an existing token; changing what a field's
# canonical value means needs a new field name (which is why the phonetic field names its algorithm).
FIELDS: dict[str, str] = {
    "nhs_number": "10 digits passing Modulus 11",
    "date_of_birth": "YYYY-MM-DD",
    "date_of_birth_sex": "date_of_birth|sex",
    "postcode": "postcode unit, upper case without spaces",
    "name": "a canonical name: surname, all forenames joined, or the first forename",
    "name_soundex_initial": "Soundex of the surname|initial of the first forename, or Soundex of the first forename|initial of the surname",
    "nhs_dob": "nhs_number|date_of_birth (also the day-and-month-swapped date, or the date and the marker 'unswappable')",
    "rank1": "nhs_number|date_of_birth|sex|postcode",
    "rank2": "nhs_number|date_of_birth|sex",
    "rank3": "nhs_number|date_of_birth_ym",
    "rank4": "nhs_number|postcode",
    "rank5": "date_of_birth|sex|postcode",
    # Token spec v3: near-miss fragments (pipeline.crypto.near), names only, each salted with the other name's initial.
    "name_near": "a canonical name of 4 or more letters, or it with one letter deleted|the other name's initial",
}
# The spec version whose `info` prefix derives each field's key: fields of version 2 keep theirs, so
# their tokens (and the version 2 test vectors) are unchanged; a new field takes the version adding it.
FIELD_VERSIONS: dict[str, str] = {f: ("v3" if f.endswith("_near") else "v2") for f in FIELDS}
# Release study IDs and record tokens keep version 2's derivation (nothing about them changed).
_STABLE_INFO_VERSION = "v2"
COMPOSITE_SEPARATOR = "|"

# A token keeps its value from anyone without the key, not how often it occurs: the k-th most frequent
# token of a column is the k-th most common value, for anyone who knows the population (a sex ratio,
# district sizes). So no token column may be made from fewer possible values than this, which public
# tables never give frequencies for one by one and where most values are held by few people each.
MIN_TOKEN_DOMAIN = 10_000
# How many canonical values each field can take in the population a study draws from, an area the
# size of an integrated care board (docs/token-spec.md section 7): geography counts what such an area
# holds, not the country. A composite field takes the product of its parts'.
DOMAINS: dict[str, int] = {
    "nhs_number": 900_000_000,  # 10-digit numbers passing Modulus 11
    "date_of_birth": 36_525,  # a century of dates
    "date_of_birth_ym": 1_200,
    "sex": 2,
    "postcode": 30_000,  # units in a study area (1.7 million in the UK)
    "postcode_sector": 300,  # sectors in a study area (about 11,000 in the UK)
    "postcode_district": 40,  # districts in a study area (about 3,000 in the UK)
    "name": 100_000,  # forenames and surnames in use in England
    "name_soundex": 8_918,  # every Soundex code there is; far fewer are in use
    "initial": 26,
    "initials": 676,
    # Near-miss fragments (token spec v3): strings, not values; each counted with its position.
    "name_fragment": 700_000,  # a name or it less one letter: about 7 per name
}
COMPOSITES: dict[str, tuple[str, ...]] = {
    "date_of_birth_sex": ("date_of_birth", "sex"),
    "name_soundex_initial": ("name_soundex", "initial"),
    "nhs_dob": ("nhs_number", "date_of_birth"),
    "rank1": ("nhs_number", "date_of_birth", "sex", "postcode"),
    "rank2": ("nhs_number", "date_of_birth", "sex"),
    "rank3": ("nhs_number", "date_of_birth_ym"),
    "rank4": ("nhs_number", "postcode"),
    "rank5": ("date_of_birth", "sex", "postcode"),
    "name_near": ("name_fragment", "initial"),
}


def is_composite(field: str) -> bool:
    return field in COMPOSITES


def field_domain(field: str) -> int:
    """How many canonical values `field` can take: a composite the product of its parts'."""
    if field in COMPOSITES:
        return math.prod(field_domain(p) for p in COMPOSITES[field])
    return DOMAINS[field]


def _hkdf(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


@lru_cache(maxsize=256)
def _field_key(key: bytes, field: str) -> bytes:
    if field not in FIELDS:
        raise ValueError(f"no token field {field!r}; token spec {SPEC_VERSION} fields are {tuple(FIELDS)}")
    return _hkdf(key, b"pprl/" + FIELD_VERSIONS[field].encode() + b"/" + field.encode())


def field_key(key: LinkageKey, field: str) -> bytes:
    return _field_key(key.key, field)


def tokenise(key: LinkageKey, field: str, canonical: str) -> str:
    """The token of one canonical value. Callers normalise first (pipeline.crypto.normalise, .names)."""
    return hmac.digest(_field_key(key.key, field), canonical.encode("utf-8"), "sha256").hex()


def tokenise_distinct(key: LinkageKey, field: str, distinct: pl.Series) -> pl.Series:
    """Tokens of a Series of distinct canonical values without nulls, in order, on every core."""
    return hex_hmac(_field_key(key.key, field), distinct)


def tokenise_series(key: LinkageKey, field: str, canonical: pl.Series) -> pl.Series:
    """Tokenise a column of canonical values, hashing each distinct value once; nulls stay null."""
    distinct = canonical.drop_nulls().unique()
    mapping = pl.DataFrame({"v": distinct, "t": tokenise_distinct(key, field, distinct)})
    return (
        canonical.to_frame("v")
        .join(mapping, on="v", how="left", maintain_order="left")
        .get_column("t")
        .alias(canonical.name)
    )


def release_key(key: LinkageKey, release_label: str) -> bytes:
    return _hkdf(key.key, b"pprl/" + _STABLE_INFO_VERSION.encode() + b"/release/" + release_label.encode("utf-8"))


def study_ids(key: LinkageKey, release_label: str, participant_ids: list[str]) -> list[str]:
    """Study IDs of one release: 'S' + the first 16 hex digits of HMAC(release key, participant id)."""
    rk = release_key(key, release_label)
    return ["S" + hmac.digest(rk, p.encode("utf-8"), "sha256").hex()[:16] for p in participant_ids]




# Provider record IDs. A record's ID leaves raw/ only as this keyed token of (source, record ID): the
# link map and the payload files need a key per record to join on, and a provider's own ID in clear
# would let anyone holding the provider's extract (or its later deliveries) read off which of its
# records are a participant's. Keyed, only the key holder can go from a record ID to its token.
RECORD_FIELD_INFO = f"pprl/{_STABLE_INFO_VERSION}/record".encode()


def record_token_key(key: LinkageKey) -> bytes:
    """The HMAC key of record tokens: HKDF-SHA256(key, info=b"pprl/v2/record"), apart from every
    identifier field's key, so a record token can never equal an identifier token."""
    return _hkdf(key.key, RECORD_FIELD_INFO)


def tokenise_record_ids(record_key: bytes, source: str, record_ids: pl.Series) -> pl.Series:
    """Record tokens: hex HMAC-SHA256(record key, "<source>|<record ID>") of each ID, in order.

    >>> k = b"k" * 32
    >>> import hmac; tokenise_record_ids(k, "gp_events", pl.Series(["GP1"])).item() == hmac.new(k, b"gp_events|GP1", "sha256").hexdigest()
    True
    """
    return hex_hmac(record_key, (source + COMPOSITE_SEPARATOR + record_ids).alias(record_ids.name))
