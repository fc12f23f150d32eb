"""Canonical forms of NHS numbers, dates, sex and postcodes (token spec v2, docs/token-spec.md).

A value that cannot be put in canonical form becomes None: it is counted by the caller and never
tokenised. Every function is idempotent. The scalar functions define the behaviour; the Polars
expressions beside them are what the pipeline runs on whole columns, and tests check they agree.
Names live in `pipeline.crypto.names`.

    >>> canonical_nhs_number("999 000 0018")
    '9990000018'
    >>> canonical_postcode(" ls1 4ab "), postcode_sector("LS14AB"), postcode_district("LS14AB")
    ('LS14AB', 'LS14', 'LS1')
    >>> canonical_date_swapped(dt.date(1950, 3, 7))
    '1950-07-03'
"""

from __future__ import annotations

import datetime as dt
import re

import polars as pl

# The characters of Unicode's White_Space property. Written out because Python's `str.isspace` and
# `\s` also count the ASCII separators 0x1C-0x1F while Rust's regex (Polars) does not, and the
# scalar and vectorised forms must agree exactly. `\uXXXX` means the same in both regex dialects.
WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
_WS_CLASS = "".join(f"\\u{ord(c):04x}" for c in WHITESPACE)
_NHS_WEIGHTS = (10, 9, 8, 7, 6, 5, 4, 3, 2)
_NHS_SEPARATORS = f"[{_WS_CLASS}-]"
# Ten equal digits pass Modulus 11 for some digits (9999999999, for one) but are the
# placeholders systems type when the number is unknown; tokenising them would link strangers.
_NHS_PLACEHOLDER = re.compile(r"^(\d)\1{9}$")
# Checked before upper-casing so that no non-ASCII letter can upper-case its way into the format.
_POSTCODE = re.compile(r"^[A-Za-z]{1,2}[0-9][0-9A-Za-z]?[0-9][A-Za-z]{2}$")
# NHS pseudo-postcodes (ZZ99 3VZ no fixed abode, ZZ99 3WZ address not known, ZZ99 3CZ England
# not otherwise specified, ...) are well formed but name no place: many strangers share them.
_PSEUDO_POSTCODE_PREFIX = "ZZ99"
_SEX = {"F": "F", "FEMALE": "F", "2": "F", "M": "M", "MALE": "M", "1": "M"}


# ---------------------------------------------------------------------------------------------------
# NHS number


def nhs_check_digit(first_nine: str) -> int | None:
    """Modulus 11 check digit for nine digits, or None when no valid check digit exists (remainder 10)."""
    total = sum(int(d) * w for d, w in zip(first_nine, _NHS_WEIGHTS, strict=True))
    check = 11 - total % 11
    if check == 11:
        return 0
    if check == 10:
        return None
    return check


def canonical_nhs_number(raw: str | None) -> str | None:
    """Ten ASCII digits passing Modulus 11, spaces and dashes removed; ten equal digits and anything else are None."""
    if raw is None:
        return None
    digits = re.sub(_NHS_SEPARATORS, "", raw)
    if len(digits) != 10 or not digits.isascii() or not digits.isdigit() or _NHS_PLACEHOLDER.match(digits):
        return None
    return digits if nhs_check_digit(digits[:9]) == int(digits[9]) else None


def _nhs_from_digits(digits: pl.Expr, number: pl.Expr) -> pl.Expr:
    """The canonical NHS number from its separator-free string and that string as an integer (null
    unless it was ten ASCII digits). Modulus 11 is done in integer arithmetic on `number`."""
    total = pl.sum_horizontal([(number // 10 ** (9 - i)) % 10 * w for i, w in enumerate(_NHS_WEIGHTS)])
    check = (11 - total % 11) % 11  # 11 becomes 0; 10 means no valid number
    # Ten equal digits are multiples of 1,111,111,111 (all zeros included).
    valid = (check != 10) & (check == number % 10) & (number % 1_111_111_111 != 0)
    return pl.when(valid).then(digits).otherwise(None)


def _nhs_digits(col: str) -> tuple[pl.Expr, pl.Expr]:
    digits = pl.col(col).str.replace_all(_NHS_SEPARATORS, "")
    number = pl.when(digits.str.contains(r"^[0-9]{10}$")).then(digits).otherwise(None).cast(pl.Int64)
    return digits, number


def nhs_number_expr(col: str) -> pl.Expr:
    """Canonical NHS number as a Polars expression (null when missing, malformed or failing Modulus 11).

    One expression, for use anywhere; on big frames prefer `with_nhs_number`, because Polars
    recomputes each repeated subexpression in filters and eager selects.
    """
    return _nhs_from_digits(*_nhs_digits(col))


def with_nhs_number(lf: pl.LazyFrame, col: str, out: str) -> pl.LazyFrame:
    """`lf` with column `out` = the canonical NHS number of `col`, each intermediate computed once."""
    digits, number = _nhs_digits(col)
    d, n = f"_{out}_digits", f"_{out}_number"
    return (
        lf.with_columns(digits.alias(d))
        .with_columns(pl.when(pl.col(d).str.contains(r"^[0-9]{10}$")).then(pl.col(d)).otherwise(None).cast(pl.Int64).alias(n))
        .with_columns(_nhs_from_digits(pl.col(d), pl.col(n)).alias(out))
        .drop(d, n)
    )


# ---------------------------------------------------------------------------------------------------
# Dates of birth: the whole date, its year and month, and its day and month swapped


def canonical_date(value: dt.date | None) -> str | None:
    """YYYY-MM-DD."""
    return None if value is None else value.isoformat()


def canonical_date_ym(value: dt.date | None) -> str | None:
    """YYYY-MM."""
    return None if value is None else value.isoformat()[:7]


def canonical_date_swapped(value: dt.date | None) -> str | None:
    """The date with day and month swapped, YYYY-MM-DD; None when that is no date or the same date."""
    if value is None or value.day > 12 or value.day == value.month:
        return None
    return dt.date(value.year, value.day, value.month).isoformat()


def date_expr(col: str) -> pl.Expr:
    return pl.col(col).dt.strftime("%Y-%m-%d")


def date_ym_expr(col: str) -> pl.Expr:
    return pl.col(col).dt.strftime("%Y-%m")


def date_swapped_expr(col: str) -> pl.Expr:
    """Day and month swapped as YYYY-MM-DD; null where the swap is not a date or changes nothing."""
    d = pl.col(col)
    day, month = d.dt.day(), d.dt.month()
    valid = (day <= 12) & (day != month)
    # Month 1 where there is no swap: Polars may build the date for every row before `when` picks,
    # and a day over 12 as the month would raise.
    swapped = pl.date(d.dt.year(), pl.when(valid).then(day).otherwise(1), month)
    return pl.when(valid).then(swapped.dt.strftime("%Y-%m-%d")).otherwise(None)


# ---------------------------------------------------------------------------------------------------
# Sex


def canonical_sex(raw: str | None) -> str | None:
    """F or M; anything else (U, unknown, missing) is None and not tokenised."""
    if raw is None:
        return None
    return _SEX.get(raw.strip(WHITESPACE).upper())


def sex_expr(col: str) -> pl.Expr:
    s = pl.col(col).str.strip_chars(WHITESPACE).str.to_uppercase()
    return s.replace_strict(_SEX, default=None, return_dtype=pl.String)


# ---------------------------------------------------------------------------------------------------
# Postcodes: the unit, its sector and its district


def canonical_postcode(raw: str | None) -> str | None:
    """Upper case without whitespace, in UK postcode unit format, not an NHS pseudo-postcode; otherwise None."""
    if raw is None:
        return None
    s = re.sub(f"[{_WS_CLASS}]", "", raw)
    if not _POSTCODE.match(s) or s.upper().startswith(_PSEUDO_POSTCODE_PREFIX):
        return None
    return s.upper()


def postcode_sector(canonical: str) -> str:
    """'LS14AB' -> 'LS14' (LS1 4): the outward code and the sector digit, i.e. all but the last two characters.

    Unambiguous without a space because the inward code always has three characters.
    """
    return canonical[:-2]


def postcode_district(canonical: str) -> str:
    """'LS14AB' -> 'LS1': the outward code, i.e. all but the last three characters."""
    return canonical[:-3]


def _postcode_from_stripped(s: pl.Expr) -> pl.Expr:
    upper = s.str.to_uppercase()
    ok = s.str.contains(_POSTCODE.pattern) & ~upper.str.starts_with(_PSEUDO_POSTCODE_PREFIX)
    return pl.when(ok).then(upper).otherwise(None)


def postcode_expr(col: str) -> pl.Expr:
    """Canonical postcode unit as one Polars expression; on big frames prefer `with_postcode`."""
    return _postcode_from_stripped(pl.col(col).str.replace_all(f"[{_WS_CLASS}]", ""))


def with_postcode(lf: pl.LazyFrame, col: str, out: str) -> pl.LazyFrame:
    """`lf` with column `out` = the canonical postcode unit of `col`, each intermediate computed once."""
    stripped = f"_{out}_stripped"
    return (
        lf.with_columns(pl.col(col).str.replace_all(f"[{_WS_CLASS}]", "").alias(stripped))
        .with_columns(_postcode_from_stripped(pl.col(stripped)).alias(out))
        .drop(stripped)
    )


def postcode_sector_expr(col: str) -> pl.Expr:
    return postcode_expr(col).str.head(-2)


def postcode_district_expr(col: str) -> pl.Expr:
    return postcode_expr(col).str.head(-3)
