"""True identifiers of synthetic people: NHS numbers and dates of birth.

NHS numbers come only from the 999 000 0000 - 999 999 9999 test range that NHS England reserves
for test data, and pass the Modulus 11 check (`pipeline.crypto.normalise.nhs_check_digit`). That
range has 10^6 nine-digit stems of which 909,091 have a valid check digit, so it can number at
most 909,091 people; above that, people not in the study share numbers with others not in the study
(see `allocate_nhs_numbers`). Numbers are kept as int64 inside the generator and formatted only when a
file is written.
"""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl

from pipeline.crypto.normalise import nhs_check_digit
from pipeline.errors import SynthSettingsError

_WEIGHTS = np.array([10, 9, 8, 7, 6, 5, 4, 3, 2], dtype=np.int64)
_STEM_LO, _STEM_HI = 999_000_000, 1_000_000_000  # nine-digit stems of the test range
NO_NHS_NUMBER = -1


def _digits(stems: np.ndarray, width: int) -> np.ndarray:
    """(n, width) array of the decimal digits of each number, most significant first."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return (stems[:, None] // powers) % 10


def check_digits(stems: np.ndarray) -> np.ndarray:
    """Vectorised Modulus 11 check digit of nine-digit stems; 10 where no valid number exists."""
    total = (_digits(stems, 9) * _WEIGHTS).sum(axis=1)
    check = 11 - total % 11
    return np.where(check == 11, 0, check)


def valid_test_numbers() -> np.ndarray:
    """Every valid NHS number in the test range, ascending (909,091 of them)."""
    stems = np.arange(_STEM_LO, _STEM_HI, dtype=np.int64)
    check = check_digits(stems)
    ok = check != 10
    numbers = stems[ok] * 10 + check[ok]
    # Cross-check the vectorised arithmetic against the pipeline's own definition on a few stems.
    for stem, number in zip(stems[ok][:: 100_003], numbers[:: 100_003], strict=True):
        assert nhs_check_digit(str(stem)) == number % 10
    return numbers


def allocate_nhs_numbers(rng: np.random.Generator, priority: np.ndarray) -> tuple[np.ndarray, int]:
    """A valid test-range NHS number for each person, in random order: distinct while the range lasts.

    `priority` is True for people who must have a number of their own (everyone in the consent
    register). When there are more people than valid test numbers, the shortfall falls on people
    without priority: each takes, at random, the number of someone else without priority, so a
    participant's number is never shared. The count is returned and recorded in parameters.json.

    Shared, not left out: in a real population nearly everyone's records carry an NHS number, and
    the link stage sets aside before scoring every record whose number is no participant's
    (pipeline.link.model.NHS_DO_NOT_CONTRADICT). People without one would all go to scoring
    instead: at 3 million people with the range's 909,091 numbers, 2.1 million of them, about seven
    times the probabilistic linkage of a real population of that size. Only if nobody without
    priority has a number to share do the rest go without (NO_NHS_NUMBER, -1).
    """
    n = priority.shape[0]
    pool = valid_test_numbers()
    take = min(n, pool.shape[0])
    chosen = rng.choice(pool, size=take, replace=False)
    out = np.full(n, NO_NHS_NUMBER, dtype=np.int64)
    # Priority people first, then the rest, each group in person order; the numbers are random anyway.
    order = np.concatenate([np.flatnonzero(priority), np.flatnonzero(~priority)])
    if int(priority.sum()) > take:
        raise SynthSettingsError(
            f"{int(priority.sum())} people in the consent register, but the 999 test range holds only {take} NHS numbers; "
            "generate fewer people or a smaller register (register_share, --register-share)"
        )
    out[order[:take]] = chosen
    short = n - take
    if short:
        others = out[order[int(priority.sum()) : take]]
        if others.size:
            out[order[take:]] = rng.choice(others, size=short, replace=True)
        warnings.warn(
            f"{n} people but only {take} valid NHS numbers in the 999 test range: {short} people outside the "
            + ("study share an NHS number with another person outside it" if others.size else "study have no NHS number on any record"),
            stacklevel=3,
        )
    return out, short


def invalidate(rng: np.random.Generator, numbers: np.ndarray) -> np.ndarray:
    """Keying errors that Modulus 11 catches: two adjacent digits transposed, or a wrong check digit.

    Transpositions only touch digits 4-9 (the '999' stays, so the number stays in the test range) and
    two adjacent weighted digits a != b change the weighted sum by a - b, never a multiple of 11, so
    the result always fails the check. When the two digits are equal the check digit is changed instead.
    """
    n = numbers.shape[0]
    if n == 0:
        return numbers.copy()
    digits = _digits(numbers, 10)
    rows = np.arange(n)
    pos = rng.integers(3, 8, size=n)  # swap digit pos with pos + 1, both among the weighted nine
    a, b = digits[rows, pos], digits[rows, pos + 1]
    transpose = (rng.random(n) < 0.5) & (a != b)
    digits[rows[transpose], pos[transpose]] = b[transpose]
    digits[rows[transpose], pos[transpose] + 1] = a[transpose]
    # Otherwise a different last digit: any of the nine others fails, as only one check digit is valid.
    wrong = ~transpose
    digits[rows[wrong], 9] = (digits[rows[wrong], 9] + rng.integers(1, 10, size=int(wrong.sum()))) % 10
    powers = 10 ** np.arange(9, -1, -1, dtype=np.int64)
    return (digits * powers).sum(axis=1)


def nhs_strings(numbers: np.ndarray) -> pl.Series:
    """Ten-digit strings, null where the person has no number (all test numbers start 999, no padding)."""
    s = pl.Series("nhs_number", numbers, dtype=pl.Int64)
    return pl.select(pl.when(s >= 0).then(s.cast(pl.String)).otherwise(None).alias("nhs_number")).to_series()


def dates_of_birth(rng: np.random.Generator, index_day: np.ndarray, age: np.ndarray) -> np.ndarray:
    """A date of birth (days since 1970) giving exactly `age` whole years on `index_day`.

    The birthday falls uniformly in the year ending on the index date: after the (age+1)th
    anniversary-to-be and on or before the age-th. Calendar arithmetic (29 February) is left to Polars.
    """
    df = pl.DataFrame({"index": pl.Series(index_day, dtype=pl.Int32).cast(pl.Date), "age": age.astype(np.int32)})
    bounds = df.select(
        latest=pl.col("index").dt.offset_by(pl.format("-{}y", pl.col("age"))),
        earliest=pl.col("index").dt.offset_by(pl.format("-{}y", pl.col("age") + 1)) + pl.duration(days=1),
    )
    lo = bounds.get_column("earliest").cast(pl.Int32).to_numpy().astype(np.int64)
    hi = bounds.get_column("latest").cast(pl.Int32).to_numpy().astype(np.int64)
    return (lo + np.floor(rng.random(index_day.shape[0]) * (hi - lo + 1)).astype(np.int64)).astype(np.int32)
