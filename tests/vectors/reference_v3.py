"""A second, independent implementation of token spec v3, written from docs/token-spec.md alone.

It imports nothing from `pipeline`: HKDF and HMAC come from the `cryptography` package, and the
canonical forms (Soundex included) are written out here. Tests check that it reproduces the test
vectors in tokens_v3.json and every token the pipeline writes to the pseudonymised zone. A
provider porting the spec to another language can read it as a worked example.

    python tests/vectors/reference_v3.py KEY_FILE < records.jsonl   # one JSON object of tokens per line
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import sys
import unicodedata

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# --- keys and tokens --------------------------------------------------------------------------------


def kid(key: bytes) -> str:
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(b"pprl key id")
    return h.finalize()[:8].hex()


# Fields added by version 3 take the info prefix pprl/v3/; every version 2 field keeps pprl/v2/.
V3_FIELDS = ("name_near",)


def field_key(key: bytes, field: str) -> bytes:
    version = b"v3" if field in V3_FIELDS else b"v2"
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"pprl/" + version + b"/" + field.encode()).derive(key)


def token(key: bytes, field: str, canonical: str) -> str:
    h = hmac.HMAC(field_key(key, field), hashes.SHA256())
    h.update(canonical.encode("utf-8"))
    return h.finalize().hex()


def study_id(key: bytes, release_label: str, participant_id: str) -> str:
    release = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"pprl/v2/release/" + release_label.encode("utf-8")
    ).derive(key)
    h = hmac.HMAC(release, hashes.SHA256())
    h.update(participant_id.encode("utf-8"))
    return "S" + h.finalize().hex()[:16]


# --- canonical forms --------------------------------------------------------------------------------

WHITE_SPACE = {0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000}


def nhs_number(raw: str | None) -> str | None:
    if raw is None:
        return None
    s = "".join(c for c in raw if ord(c) not in WHITE_SPACE and c != "-")
    if len(s) != 10 or not (s.isascii() and s.isdigit()) or len(set(s)) == 1:
        return None
    remainder = sum(int(s[i]) * (10 - i) for i in range(9)) % 11
    check = (11 - remainder) % 11  # 11 -> 0; 10 means no valid number
    return s if check != 10 and check == int(s[9]) else None


def dob(raw: str | None) -> str | None:
    return None if raw is None else dt.date.fromisoformat(raw).strftime("%Y-%m-%d")


def dob_ym(raw: str | None) -> str | None:
    return None if raw is None else dob(raw)[:7]


def dob_swap(raw: str | None) -> str | None:
    if raw is None:
        return None
    d = dt.date.fromisoformat(raw)
    if d.day > 12 or d.day == d.month:
        return None
    return f"{d.year:04d}-{d.day:02d}-{d.month:02d}"


def sex(raw: str | None) -> str | None:
    if raw is None:
        return None
    s = raw
    while s and ord(s[0]) in WHITE_SPACE:
        s = s[1:]
    while s and ord(s[-1]) in WHITE_SPACE:
        s = s[:-1]
    return {"F": "F", "FEMALE": "F", "2": "F", "M": "M", "MALE": "M", "1": "M"}.get(s.upper())


def postcode(raw: str | None) -> str | None:
    if raw is None:
        return None
    s = "".join(c for c in raw if ord(c) not in WHITE_SPACE)
    if not 5 <= len(s) <= 7 or not all(c.isascii() and c.isalnum() for c in s):
        return None
    s = s.upper()
    outward, inward = s[:-3], s[-3:]
    if not (inward[0].isdigit() and inward[1:].isalpha()):
        return None
    letters = len(outward) - len(outward.lstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    rest = outward[letters:]
    if letters not in (1, 2) or not rest or not rest[0].isdigit() or len(rest) > 2:
        return None
    if s.startswith("ZZ99"):
        return None
    return s


SPELL_OUT = {"ß": "ss", "ẞ": "SS", "Æ": "AE", "æ": "ae", "Œ": "OE", "œ": "oe", "Ø": "O", "ø": "o", "Đ": "D", "đ": "d",
             "Ð": "D", "ð": "d", "Þ": "TH", "þ": "th", "Ł": "L", "ł": "l", "ı": "i", "Ħ": "H", "ħ": "h", "Ŧ": "T", "ŧ": "t"}  # fmt: skip
TITLES = {"MR", "MRS", "MS", "MISS", "MX", "MASTER", "DR", "PROF", "REV", "REVD", "SIR", "DAME", "LADY", "LORD"}


def words(raw: str | None) -> list[str]:
    if raw is None:
        return []
    folded = []
    for c in unicodedata.normalize("NFKD", raw):
        if c in "'`\u2018\u2019\u02bc":
            continue
        c = SPELL_OUT.get(c, c)
        if not c.isascii():
            c = "" if unicodedata.category(c)[0] == "M" else " "
        folded.append(c)
    upper = "".join(folded).upper()
    out, word = [], ""
    for c in upper + " ":
        if "A" <= c <= "Z":
            word += c
        elif word:
            out.append(word)
            word = ""
    while len(out) > 1 and out[0] in TITLES:
        out = out[1:]
    return out


def surname(raw: str | None) -> str | None:
    return "".join(words(raw)) or None


def forenames(raw: str | None) -> str | None:
    return "".join(words(raw)) or None


def forename_first(raw: str | None) -> str | None:
    w = words(raw)
    return w[0] if w else None


def soundex(name: str | None) -> str | None:
    """American Soundex: first letter, then digits of the following consonants; letters with the same
    digit next to each other, or separated only by H or W, count once; vowels separate; pad to 4."""
    if not name:
        return None
    codes = {**dict.fromkeys("BFPV", "1"), **dict.fromkeys("CGJKQSXZ", "2"), **dict.fromkeys("DT", "3"),
             "L": "4", **dict.fromkeys("MN", "5"), "R": "6"}  # fmt: skip
    out, last = name[0], codes.get(name[0], "")
    for c in name[1:]:
        if c in "HW":
            continue
        digit = codes.get(c, "")
        if digit and digit != last:
            out += digit
        last = digit
    return (out + "000")[:4]


def composite(*parts: str | None) -> str | None:
    return None if any(p is None for p in parts) else "|".join(parts)


# --- near-miss fragments (section 3.8) ----------------------------------------------------------------


def one_deleted(name: str | None, initial: str | None) -> list[str] | None:
    """Canonical name of 4 letters or more: the name and the name without each letter in turn, each
    followed by "|" and the initial; sorted, repeats removed."""
    if name is None or initial is None or len(name) < 4:
        return None
    out = {name + "|" + initial}
    for i in range(len(name)):
        out.add(name[:i] + name[i + 1 :] + "|" + initial)
    return sorted(out)


def canonical_values(record: dict) -> dict[str, tuple[str, str | None]]:
    """Token column -> (field, canonical value or None) for one record of the identifier block
    (dates as YYYY-MM-DD strings)."""
    n, d, s, p = nhs_number(record.get("nhs_number")), dob(record.get("date_of_birth")), sex(record.get("sex")), postcode(record.get("postcode"))
    sn, first = surname(record.get("family_name")), forename_first(record.get("given_name"))
    swap = dob_swap(record.get("date_of_birth"))
    return {
        "tok_nhs": ("nhs_number", n),
        "tok_dob": ("date_of_birth", d),
        "tok_dob_sex": ("date_of_birth_sex", composite(d, s)),
        "tok_postcode": ("postcode", p),
        "tok_surname": ("name", sn),
        "tok_forename": ("name", forenames(record.get("given_name"))),
        "tok_forename_first": ("name", first),
        "tok_surname_phonetic_initial": ("name_soundex_initial", composite(soundex(sn), first and first[0])),
        "tok_forename_phonetic_initial": ("name_soundex_initial", composite(soundex(first), sn and sn[0])),
        "tok_nhs_dob": ("nhs_dob", composite(n, d)),
        # Always made when NHS number and date are known, so its absence never says the day is over 12.
        "tok_nhs_dob_swap": ("nhs_dob", composite(n, swap) if swap else composite(n, d, d and "unswappable")),
        "tok_rank1": ("rank1", composite(n, d, s, p)),
        "tok_rank2": ("rank2", composite(n, d, s)),
        "tok_rank3": ("rank3", composite(n, d and d[:7])),
        "tok_rank4": ("rank4", composite(n, p)),
        "tok_rank5": ("rank5", composite(d, s, p)),
        "tok_surname_near": ("name_near", one_deleted(sn, first and first[0])),
        "tok_forename_near": ("name_near", one_deleted(first, sn and sn[0])),
    }


def set_token(key: bytes, field: str, fragments: list[str]) -> list[str]:
    """A near-miss column: the tokens of its fragments, sorted, repeats removed."""
    return sorted({token(key, field, f) for f in fragments})


def tokens(key: bytes, record: dict) -> dict[str, str | list[str] | None]:
    out: dict[str, str | list[str] | None] = {}
    for col, (field, v) in canonical_values(record).items():
        if v is None:
            out[col] = None
        elif isinstance(v, list):
            out[col] = set_token(key, field, v)
        else:
            out[col] = token(key, field, v)
    return out


def read_key_file(path: str) -> bytes:
    spec = json.loads(open(path).read())
    key = base64.b64decode(spec["key"], validate=True)
    if len(key) != 32 or spec.get("kid", kid(key)) != kid(key):
        raise SystemExit(f"{path}: not a token spec v3 key")
    return key


if __name__ == "__main__":
    secret = read_key_file(sys.argv[1])
    for line in sys.stdin:
        print(json.dumps(tokens(secret, json.loads(line))))
