"""What an NHS number or a UK postcode looks like, for scanning release values and text.

Whole values and embedded ones both count: "ref 999 765 4323" hides an NHS number as surely as
"9997654323" does. An NHS-number-like value is ten digits (optionally grouped 3-3-4 by spaces or
hyphens) that pass the Modulus 11 check, so ordinary numbers rarely trip it; a postcode-like value
is the outward and inward code of a UK postcode, with or without the space.
"""

from __future__ import annotations

import re

import polars as pl

from pipeline.crypto.normalise import canonical_nhs_number, nhs_number_expr

POSTCODE_ANYWHERE = r"(?i)\b[A-Z]{1,2}[0-9][0-9A-Z]?\s?[0-9][A-Z]{2}\b"
TEN_DIGITS = r"[0-9]{3}[ -]?[0-9]{3}[ -]?[0-9]{4}"
# In free text (manifest, dictionary) a candidate must stand alone: inside a hex hash or a longer
# number a ten-digit run is chance, and SHA-256 hashes are what a manifest is made of.
_TEXT_TEN_DIGITS = re.compile(r"(?<![0-9A-Za-z])" + TEN_DIGITS + r"(?![0-9A-Za-z])")
_TEXT_POSTCODE = re.compile(POSTCODE_ANYWHERE)


def postcode_like_expr(column: str) -> pl.Expr:
    """True for a value with a postcode anywhere in it."""
    return pl.col(column).str.contains(POSTCODE_ANYWHERE).fill_null(False)


def nhs_number_like_count(column: str) -> pl.Expr:
    """Rows of a string column with at least one valid NHS number anywhere in the value."""
    found = pl.col(column).str.extract_all(TEN_DIGITS).list.eval(nhs_number_expr("").is_not_null())
    return found.list.any().fill_null(False).sum()


def nhs_number_like_numbers(column: str) -> pl.Expr:
    """Rows of a numeric column holding a whole ten-digit number that passes the NHS number check."""
    v = pl.col(column).cast(pl.Float64)
    # Only whole ten-digit numbers can be one; they are few, so only they are turned into digits and
    # checked, together in one list (checking a one-element list per row took seconds per million).
    digits = v.filter((v >= 1e9) & (v < 1e10) & (v == v.floor())).cast(pl.Int64).cast(pl.String)
    # nhs_number_expr works on a named column; inside list.eval the element is that column.
    return digits.implode().list.eval(nhs_number_expr("").is_not_null().sum()).list.first().fill_null(0)


def text_identifier_counts(text: str) -> dict[str, int]:
    """NHS-number-like and postcode-like strings in a text file."""
    nhs = sum(1 for m in _TEXT_TEN_DIGITS.finditer(text) if canonical_nhs_number(m.group(0)) is not None)
    return {"nhs_number": nhs, "postcode": len(_TEXT_POSTCODE.findall(text))}
