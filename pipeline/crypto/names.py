"""Canonical forms of names, their phonetic codes and initials (token spec v2, docs/token-spec.md).

    >>> canonical_name("O'Brien-Smith")
    'OBRIENSMITH'
    >>> canonical_forenames("Dr Zoë  Mary-Jane")
    ('ZOE', 'ZOEMARYJANE')
    >>> name_soundex("OBRIENSMITH"), initials("ZOE", "OBRIENSMITH")
    ('O165', 'ZO')

The steps, which a provider reimplements exactly:
1. Unicode NFKD; delete apostrophes (' ` and U+2018, U+2019, U+02BC, so O'Brien is one word);
2. spell out the letters NFKD leaves whole (`FOLD_TABLE`, e.g. ß -> ss, Ø -> O), delete combining
   marks (general category M: the accents NFKD split off), and turn every other non-ASCII
   character into a space (so an en dash separates words as a hyphen does);
3. upper-case, and split into words at every run of characters other than A-Z;
4. drop leading title words (`TITLES`) while more than one word is left, so the surname "Lord"
   survives but "Mr John" becomes JOHN;
5. surname = all words joined; forenames = all words joined, first forename = the first word.

Names are normalised in Python, once per distinct raw value: a 50-million-row extract has only
tens of thousands of distinct surnames.
"""

from __future__ import annotations

import re
import unicodedata

import jellyfish

# Letters with no decomposition in Unicode, so NFKD leaves them whole, spelt the way English
# registers spell them. Everything else non-ASCII that survives NFKD is dropped.
FOLD_TABLE: dict[str, str] = {
    "ß": "ss", "ẞ": "SS", "Æ": "AE", "æ": "ae", "Œ": "OE", "œ": "oe", "Ø": "O", "ø": "o",
    "Đ": "D", "đ": "d", "Ð": "D", "ð": "d", "Þ": "TH", "þ": "th", "Ł": "L", "ł": "l",
    "ı": "i", "Ħ": "H", "ħ": "h", "Ŧ": "T", "ŧ": "t",
}  # fmt: skip
_FOLD = str.maketrans(FOLD_TABLE)
_DELETE_APOSTROPHES = str.maketrans("", "", "'`\u2018\u2019\u02bc")
# Only titles that come before a forename; removed only from the front and only when a name remains.
TITLES: frozenset[str] = frozenset(
    {"MR", "MRS", "MS", "MISS", "MX", "MASTER", "DR", "PROF", "REV", "REVD", "SIR", "DAME", "LADY", "LORD"}
)
_NOT_LETTERS = re.compile(r"[^A-Z]+")


def fold_ascii(raw: str) -> str:
    """Steps 1-2: ASCII only ('Zoë Ødegård' -> 'Zoe Odegard', "D'Arcy" -> 'DArcy', '李' -> ' ')."""
    text = unicodedata.normalize("NFKD", raw).translate(_DELETE_APOSTROPHES).translate(_FOLD)
    return "".join(
        c if c.isascii() else ("" if unicodedata.category(c).startswith("M") else " ") for c in text
    )


def name_words(raw: str | None) -> list[str]:
    """The words of a name after steps 1-4 above; [] when nothing is left."""
    if raw is None:
        return []
    text = fold_ascii(raw).upper()
    words = [w for w in _NOT_LETTERS.split(text) if w]
    while len(words) > 1 and words[0] in TITLES:
        words.pop(0)
    return words


def canonical_name(raw: str | None) -> str | None:
    """A surname (or any whole name) in canonical form: its words joined; None when nothing is left."""
    return "".join(name_words(raw)) or None


def canonical_forenames(raw: str | None) -> tuple[str | None, str | None]:
    """(first forename, all forenames joined), each in canonical form; (None, None) when nothing is left."""
    words = name_words(raw)
    if not words:
        return None, None
    return words[0], "".join(words)


def name_soundex(canonical: str | None) -> str | None:
    """American Soundex (letter + three digits, the H/W rule) of a canonical name, from jellyfish.

    Soundex, not Metaphone or NYSIIS: it is fully specified in a few lines, so every provider can
    reproduce it exactly, and on the synthetic keying errors it agreed most often (docs/token-spec.md).
    """
    return None if not canonical else jellyfish.soundex(canonical)


def initials(first_forename: str | None, surname: str | None) -> str | None:
    """Initial of the first forename then of the surname ('JOHN', 'SMITH' -> 'JS'); None unless both are known."""
    if not first_forename or not surname:
        return None
    return first_forename[0] + surname[0]
