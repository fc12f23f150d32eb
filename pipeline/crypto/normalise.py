"""Canonical forms of identifiers (token spec v1). Every function is idempotent.

A value that cannot be put in canonical form becomes None: it is counted by the caller and never
tokenised. Vectorised Polars versions sit beside the scalar ones, which define the behaviour.

    >>> canonical_nhs_number("999 000 0018")
    '9990000018'
    >>> canonical_postcode(" ls1 4ab ")
    'LS14AB'
    >>> canonical_name("Zoë O'Brien-Smith")
    'ZOEOBRIENSMITH'
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata

import polars as pl

_NHS_WEIGHTS = (10, 9, 8, 7, 6, 5, 4, 3, 2)
_POSTCODE = re.compile(r"^[A-Z]{1,2}[0-9][0-9A-Z]?[0-9][A-Z]{2}$")
_NON_ALPHA = re.compile(r"[^A-Z]")
_TITLES = {"MR", "MRS", "MS", "MISS", "DR", "PROF", "REV", "SIR", "DAME", "LADY", "LORD", "MX"}


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
    """Ten digits that pass Modulus 11, spaces and dashes removed; otherwise None."""
    if raw is None:
        return None
    digits = re.sub(r"[\s\-]", "", raw)
    if len(digits) != 10 or not digits.isascii() or not digits.isdigit():
        return None
    return digits if nhs_check_digit(digits[:9]) == int(digits[9]) else None


def canonical_date(value: dt.date | None) -> str | None:
    return None if value is None else value.isoformat()


def canonical_sex(raw: str | None) -> str | None:
    """F or M; anything else (unknown, missing) is None and not tokenised."""
    if raw is None:
        return None
    s = raw.strip().upper()
    return {"F": "F", "FEMALE": "F", "2": "F", "M": "M", "MALE": "M", "1": "M"}.get(s)


def canonical_postcode(raw: str | None) -> str | None:
    """Upper case, no spaces, and a valid UK postcode unit format; otherwise None."""
    if raw is None:
        return None
    s = "".join(raw.split()).upper()
    return s if _POSTCODE.match(s) else None


def postcode_sector(canonical: str) -> str:
    """'LS14AB' -> 'LS14': outward code plus the sector digit."""
    return canonical[:-2]


def postcode_district(canonical: str) -> str:
    """'LS14AB' -> 'LS1': the outward code."""
    return canonical[:-3]


def fold_ascii(raw: str) -> str:
    """Fold accents to ASCII ('Zoë' -> 'Zoe'); characters with no ASCII form are dropped."""
    return unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode("ascii")


def canonical_name(raw: str | None) -> str | None:
    """Upper case, accents folded to ASCII, only A-Z kept; None when nothing is left."""
    if raw is None:
        return None
    s = _NON_ALPHA.sub("", fold_ascii(raw).upper())
    return s or None


def canonical_forenames(raw: str | None) -> tuple[str | None, str | None]:
    """(first forename, all forenames joined) with titles removed, each in canonical name form."""
    if raw is None:
        return None, None
    words = [w for w in re.split(r"[\s\-.,']+", fold_ascii(raw).upper()) if w]
    words = [_NON_ALPHA.sub("", w) for w in words if _NON_ALPHA.sub("", w) not in _TITLES]
    words = [w for w in words if w]
    if not words:
        return None, None
    return words[0], "".join(words)


# ---------------------------------------------------------------------------------------------------
# Vectorised forms used on whole columns. Tests check they agree with the scalar forms above.


def nhs_number_expr(col: str) -> pl.Expr:
    """Canonical NHS number as a Polars expression (null when missing or failing Modulus 11)."""
    digits = pl.col(col).str.replace_all(r"[\s\-]", "")
    ok_shape = digits.str.contains(r"^[0-9]{10}$")
    total = pl.sum_horizontal(
        [digits.str.slice(i, 1).cast(pl.Int32, strict=False) * w for i, w in enumerate(_NHS_WEIGHTS)]
    )
    check = 11 - total % 11
    check = pl.when(check == 11).then(0).otherwise(check)
    last = digits.str.slice(9, 1).cast(pl.Int32, strict=False)
    valid = ok_shape & (check != 10) & (check == last)
    return pl.when(valid).then(digits).otherwise(None)


def postcode_expr(col: str) -> pl.Expr:
    s = pl.col(col).str.replace_all(r"\s", "").str.to_uppercase()
    return pl.when(s.str.contains(_POSTCODE.pattern)).then(s).otherwise(None)


def sex_expr(col: str) -> pl.Expr:
    s = pl.col(col).str.strip_chars().str.to_uppercase()
    return s.replace_strict(
        {"F": "F", "FEMALE": "F", "2": "F", "M": "M", "MALE": "M", "1": "M"}, default=None, return_dtype=pl.String
    )


def date_expr(col: str) -> pl.Expr:
    return pl.col(col).dt.strftime("%Y-%m-%d")


def date_ym_expr(col: str) -> pl.Expr:
    return pl.col(col).dt.strftime("%Y-%m")


def date_swapped_expr(col: str) -> pl.Expr:
    """Day and month swapped as YYYY-MM-DD; null where the swap is not a date or changes nothing."""
    d = pl.col(col)
    day, month = d.dt.day(), d.dt.month()
    swapped = pl.date(d.dt.year(), day, month)
    valid = (day <= 12) & (day != month)
    return pl.when(valid).then(swapped.dt.strftime("%Y-%m-%d")).otherwise(None)
