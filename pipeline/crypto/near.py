"""Near-miss fragments, token spec v3 (docs/token-spec.md section 3.8): the canonical strings whose
tokens let two values one edit apart agree without either value leaving the key holder.

A whole-value token only says "equal" or "not"; a date of birth or postcode one character off, or a
name typo that changes its Soundex code, then counts as plain disagreement. Each value here becomes a
small set of fragments, and two values share a fragment exactly when they are close:

- a postcode unit (or, for bench/near_graph.py only, a date of birth `YYYY-MM-DD`): the value with
  one character other than `-` replaced by `_`, once per position. Two values of equal length share a
  fragment exactly when they differ in at most one position. Token spec v3 has no date-of-birth
  fragments: salted or not, at a million people they join the calendar into pieces a graph-matching
  attack could decode (docs/token-spec.md section 7);
- a canonical name of at least MIN_NAME_LENGTH letters: the name itself and the name with one letter
  deleted, once per position. Two names share a fragment when one is the other with a letter
  inserted or deleted, a letter changed, or two neighbouring letters swapped.

Every fragment is salted (`|` and the salt) so that fragments meet only within people who share the
salt (section 7: the similarity graph the fragments reveal breaks into unconnected pieces): a
forename's fragments with the surname's initial, a surname's with the first forename's initial, a
postcode's with the year of birth (`YYYY`). A value, or its salt, missing: no fragments.

    >>> masked_fragments("1985-03-12", "S")[:3]
    ['1985-03-1_|S', '1985-03-_2|S', '1985-0_-12|S']
    >>> name_fragments("SMITH", "J")
    ['MITH|J', 'SITH|J', 'SMIH|J', 'SMITH|J', 'SMIT|J', 'SMTH|J']
    >>> name_fragments("LEE", "J") is None
    True
"""

from __future__ import annotations

MASK = "_"
SALT_SEPARATOR = "|"
# Names shorter than this have no fragments: a three-letter name's fragments are two-letter strings,
# a few hundred in all, each shared by many unrelated names (and decoded by frequency).
MIN_NAME_LENGTH = 4


def _salted(fragments: set[str], salt: str | None) -> list[str] | None:
    if not salt:
        return None
    return sorted(f + SALT_SEPARATOR + salt for f in fragments)


def masked_fragments(value: str | None, salt: str | None) -> list[str] | None:
    """The value with each character other than `-` replaced by `_` in turn, each `|` salt, sorted."""
    if not value:
        return None
    return _salted({value[:i] + MASK + value[i + 1 :] for i, ch in enumerate(value) if ch != "-"}, salt)


def name_fragments(name: str | None, salt: str | None) -> list[str] | None:
    """The canonical name and the name with each letter deleted in turn, each `|` salt, distinct,
    sorted; none for a name shorter than MIN_NAME_LENGTH."""
    if not name or len(name) < MIN_NAME_LENGTH:
        return None
    return _salted({name} | {name[:i] + name[i + 1 :] for i in range(len(name))}, salt)
