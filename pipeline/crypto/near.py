"""Near-miss fragments, token spec v3 (docs/token-spec.md section 3.8): the canonical strings whose
tokens let two names one edit apart agree without either name leaving the key holder.

A whole-value token only says "equal" or "not"; a name typo that changes its Soundex code then counts
as plain disagreement. Each canonical name of at least MIN_NAME_LENGTH letters becomes the name itself
and the name with one letter deleted, once per position; two names share one when one is the other
with a letter inserted or deleted, a letter changed, or two neighbouring letters swapped.

Every fragment is salted (`|` and the salt) so that fragments meet only within people who share the
salt (section 7: the similarity graph the fragments reveal breaks into unconnected pieces): a
forename's fragments with the surname's initial, a surname's with the first forename's initial. A
name, or its salt, missing: no fragments. Dates of birth and postcode units have none: their
similarity graphs are the calendar's and the postcode map's, which stay in large decodable pieces at
a million people under every salt measured (bench/near_graph.py).

    >>> name_fragments("SMITH", "J")
    ['MITH|J', 'SITH|J', 'SMIH|J', 'SMITH|J', 'SMIT|J', 'SMTH|J']
    >>> name_fragments("LEE", "J") is None
    True
"""

from __future__ import annotations

SALT_SEPARATOR = "|"
# Names shorter than this have no fragments: a three-letter name's fragments are two-letter strings,
# a few hundred in all, each shared by many unrelated names (and decoded by frequency).
MIN_NAME_LENGTH = 4


def _salted(fragments: set[str], salt: str | None) -> list[str] | None:
    if not salt:
        return None
    return sorted(f + SALT_SEPARATOR + salt for f in fragments)


def name_fragments(name: str | None, salt: str | None) -> list[str] | None:
    """The canonical name and the name with each letter deleted in turn, each `|` salt, distinct,
    sorted; none for a name shorter than MIN_NAME_LENGTH."""
    if not name or len(name) < MIN_NAME_LENGTH:
        return None
    return _salted({name} | {name[:i] + name[i + 1 :] for i in range(len(name))}, salt)
