"""A provider's mapping: from its own layout (names, codes, text dates, NHS numbers with spaces) to a
contract's columns, and back again for synthetic deliveries.

A mapping is a YAML file, shipped in `schemas/mappings/` or written by a team for its own provider:

    mapping: hes_apc                      # its name and version go into the input manifest
    version: 1
    dataset: hospital_apc                 # the contract it fills
    follows: {dictionary: ..., version: ..., url: ...}
    columns:                              # contract column: how to get it from the provider's file
      record_id: {from: EPIKEY, prefix: APC, digits: 9}
      nhs_number: {from: NEWNHSNO, nhs_number: true}   # spaces and hyphens removed, then 10 digits
      sex: {from: SEX, codes: sex}                     # recoded with the code list `sex` below
      admission_date: {from: ADMIDATE, date: yyyy-mm-dd}
      given_name: {absent: true}                       # the source does not carry it
    codes:
      sex: {"1": M, "2": F, "9": U, "0": U}
    rows: {Event_Type: [Service]}         # optional: keep only rows with these provider values

Applying it (`to_canonical`) is a LazyFrame -> LazyFrame transform, so the provider's file is read,
renamed, recoded and parsed as it streams and no identifiable copy in the canonical layout is ever
written. `problems` counts, in one pass, the rows that break each of the mapping's own rules (a code
not in the code list, text that is not a date in the named format, an NHS number that is not 10
digits once cleaned): a Violation names the file, the provider's column and the rule, never a value.
`to_native` applies the mapping backwards (pipeline.synth's `--layout nhs`).

    >>> m = parse_mapping({"mapping": "m", "version": 1, "dataset": "hospital_ae",
    ...     "columns": {"sex": {"from": "GENDER", "codes": "sex"}}, "codes": {"sex": {"1": "M", "2": "F"}}}, "m.yaml")
    >>> m.columns["sex"].source, m.code_lists["sex"]["1"]
    ('GENDER', 'M')
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from pipeline.contracts import SCHEMAS_DIR, Contract
from pipeline.errors import ContractError, Violation

MAPPINGS_DIR = SCHEMAS_DIR / "mappings"

# Date formats a mapping may name, and the strptime/strftime pattern of each. "yyyy-mm" is a date of
# birth given to the month only (some social-care and survey sources): it is checked, but no full
# date is made up from it, so the column is left empty and the source links on what else it carries.
DATE_FORMATS: dict[str, str] = {
    "yyyy-mm-dd": "%Y-%m-%d",
    "dd/mm/yyyy": "%d/%m/%Y",
    "dd-mm-yyyy": "%d-%m-%Y",
    "yyyymmdd": "%Y%m%d",
    "yyyy-mm": "%Y-%m",
}
MONTH_ONLY_FORMATS: frozenset[str] = frozenset({"yyyy-mm"})
# An NHS number as delivered may be grouped 3-3-4 with spaces or hyphens; once they are removed it
# must be 10 digits. The Modulus 11 check is pseudonymisation's (an invalid number is treated as missing).
NHS_NUMBER_SEPARATORS = r"[\s\-]"
NHS_NUMBER_DIGITS = r"^[0-9]{10}$"
_COLUMN_KEYS = frozenset({"from", "codes", "date", "nhs_number", "prefix", "digits", "absent", "note"})


@dataclass(frozen=True)
class ColumnMap:
    """How one contract column is made from the provider's file."""

    column: str
    source: str | None = None  # the provider's column; None when `absent`
    codes: str | None = None  # name of a code list in the mapping
    date: str | None = None  # a name of DATE_FORMATS
    nhs_number: bool = False
    prefix: str | None = None  # put before the provider's value (EPIKEY 1234 -> APC000001234)
    digits: int = 0  # with `prefix`: the number zero-padded to this many digits (0: as delivered)
    absent: bool = False

    @property
    def month_only(self) -> bool:
        return self.date in MONTH_ONLY_FORMATS


@dataclass(frozen=True)
class Mapping:
    name: str
    version: str
    dataset: str
    follows: dict[str, str]
    columns: dict[str, ColumnMap]
    code_lists: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows: dict[str, tuple[str, ...]] = field(default_factory=dict)
    sha256: str = ""

    def identifiers(self, identifier_columns: tuple[str, ...]) -> dict[str, str]:
        """What the source carries of each identifier: 'carried', 'absent', or 'year and month only'."""
        out = {}
        for c in identifier_columns:
            m = self.columns.get(c)
            # A column the mapping does not name is read under the contract's own name.
            out[c] = "absent" if m is not None and m.absent else "year and month only" if m is not None and m.month_only else "carried"
        return out


def _refuse(path: str, detail: str, column: str | None = None) -> ContractError:
    return ContractError([Violation(path, column, "mapping format", detail)])


def parse_mapping(spec: Any, path: str, sha256: str = "") -> Mapping:
    """Build a Mapping from parsed YAML, refusing anything malformed with a named violation."""
    if not isinstance(spec, dict) or not {"mapping", "version", "dataset", "columns"} <= set(spec) or not isinstance(spec["columns"], dict):
        raise _refuse(path, "a mapping needs `mapping:` (its name), `version:`, `dataset:` and a `columns:` dictionary")
    code_lists = spec.get("codes") or {}
    if not isinstance(code_lists, dict) or not all(isinstance(v, dict) for v in code_lists.values()):
        raise _refuse(path, "`codes:` must be a dictionary of code lists, each provider code: contract value")
    for list_name, codes in code_lists.items():
        if not all(isinstance(code, str) for code in codes):
            # YAML reads 01 as the number 1 and 2A as text: unquoted codes would silently lose their zeros.
            raise _refuse(path, f"quote every code of the code list {list_name!r} (\"01\": ..., not 01: ...), so YAML keeps it as written")
    columns: dict[str, ColumnMap] = {}
    for name, c in spec["columns"].items():
        c = {"from": c} if isinstance(c, str) else c
        if not isinstance(c, dict) or set(c) - _COLUMN_KEYS:
            raise _refuse(path, f"give `from:` and optionally {sorted(_COLUMN_KEYS - {'from'})}", str(name))
        absent = bool(c.get("absent", False))
        if absent == ("from" in c):
            raise _refuse(path, "give either `from:` (the provider's column) or `absent: true`", str(name))
        if c.get("codes") is not None and c["codes"] not in code_lists:
            raise _refuse(path, f"the code list {c['codes']!r} is not under `codes:`", str(name))
        if c.get("date") is not None and c["date"] not in DATE_FORMATS:
            raise _refuse(path, f"`date:` must name one of {sorted(DATE_FORMATS)}", str(name))
        columns[str(name)] = ColumnMap(
            column=str(name),
            source=None if absent else str(c["from"]),
            codes=c.get("codes"),
            date=c.get("date"),
            nhs_number=bool(c.get("nhs_number", False)),
            prefix=None if c.get("prefix") is None else str(c["prefix"]),
            digits=int(c.get("digits") or 0),
            absent=absent,
        )
    rows = spec.get("rows") or {}
    if not isinstance(rows, dict) or not all(isinstance(v, list) and v for v in rows.values()):
        raise _refuse(path, "`rows:` must map a provider column to the list of its values to keep")
    return Mapping(
        name=str(spec["mapping"]),
        version=str(spec["version"]),
        dataset=str(spec["dataset"]),
        follows={str(k): str(v) for k, v in (spec.get("follows") or {}).items()},
        columns=columns,
        code_lists={str(k): {str(code): value for code, value in v.items()} for k, v in code_lists.items()},
        rows={str(k): tuple(str(x) for x in v) for k, v in rows.items()},
        sha256=sha256,
    )


def mapping_path(name_or_path: str, relative_to: Path | None = None) -> Path:
    """A shipped mapping by name (`hes_apc` -> schemas/mappings/hes_apc.yaml), or a YAML file path
    (relative to `relative_to`, the deliveries file's folder, when not absolute)."""
    if "/" not in name_or_path and not name_or_path.endswith((".yaml", ".yml")):
        return MAPPINGS_DIR / f"{name_or_path}.yaml"
    path = Path(name_or_path)
    return path if path.is_absolute() or relative_to is None else relative_to / path


def load_mapping(path: Path) -> Mapping:
    """Read a mapping file with `safe_load`: a tag asking to build an object, a syntax error or bytes
    that are not text are refused as a named violation (never the file's text)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        spec = yaml.safe_load(raw.decode("utf-8"))
    except FileNotFoundError:
        raise ContractError([Violation(str(path), None, "file present", "no mapping there; name a shipped mapping (schemas/mappings/) or give its path")]) from None
    except OSError as exc:
        raise ContractError([Violation(str(path), None, "file present", f"cannot read the mapping ({exc.strerror})")]) from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ContractError(
            [Violation(str(path), None, "plain YAML", f"the mapping (given with --mapping or named in the deliveries file) is not plain YAML{where} "
                       f"({type(exc).__name__}); tags such as !!python/... are never accepted")]
        ) from None
    return parse_mapping(spec, str(path), hashlib.sha256(raw).hexdigest())


# ---------------------------------------------------------------------------------------------------
# Provider's layout -> contract (reading)


def _clean_nhs(col: pl.Expr) -> pl.Expr:
    return col.str.replace_all(NHS_NUMBER_SEPARATORS, "")


BOOLEAN_TEXT = {"true": True, "false": False}


def unknown_columns(mapping: Mapping, contract: Contract, file: str) -> list[Violation]:
    """A mapping entry for a column the contract does not have (a typo would otherwise be ignored)."""
    return [
        Violation(file, c, "contract column", f"the mapping {mapping.name} fills {c}, which the contract {contract.name} does not have; "
                  "correct the column's name in the mapping")  # fmt: skip
        for c in mapping.columns
        if c not in contract.column_names
    ]


def effective_columns(mapping: Mapping, contract: Contract) -> list[ColumnMap]:
    """How each contract column is read: the mapping's entry, or the column of the same name. Every
    value is read as text, so a date with no `date:` is taken as yyyy-mm-dd, as Parquet and Polars
    write dates."""
    out = []
    for c in contract.columns:
        m = mapping.columns.get(c.name) or ColumnMap(column=c.name, source=c.name)
        if c.type == "date" and m.date is None and m.codes is None and not m.absent:
            m = ColumnMap(column=m.column, source=m.source, date="yyyy-mm-dd")
        out.append(m)
    return out


def _canonical_expr(m: ColumnMap, mapping: Mapping, contract: Contract) -> pl.Expr:
    target = contract.column(m.column)
    if m.absent or m.month_only:
        return pl.lit(None, dtype=target.polars_type).alias(m.column)
    col = pl.col(m.source)
    if m.codes is not None:
        codes = mapping.code_lists[m.codes]
        col = col.replace_strict(list(codes), list(codes.values()), default=None, return_dtype=target.polars_type)
    elif m.date is not None:
        col = col.str.strip_chars().str.strptime(pl.Date, DATE_FORMATS[m.date], strict=False)
    elif m.nhs_number:
        col = _clean_nhs(col)
    elif m.prefix is not None:
        col = pl.lit(m.prefix) + col.str.strip_chars().str.zfill(m.digits)
    elif target.type == "bool":
        col = col.str.strip_chars().str.to_lowercase().replace_strict(list(BOOLEAN_TEXT), list(BOOLEAN_TEXT.values()), default=None, return_dtype=pl.Boolean)
    elif target.type != "string":
        col = col.str.strip_chars().cast(target.polars_type, strict=False)
    return col.cast(target.polars_type).alias(m.column)


def to_canonical(lf: pl.LazyFrame, mapping: Mapping, contract: Contract) -> pl.LazyFrame:
    """The provider's rows as the contract's columns, lazily: rows kept by `rows:`, then every column
    renamed, recoded, parsed or cleaned. A contract column the mapping does not name is read under
    its own name (a provider that already uses the contract's name needs no entry)."""
    for column, keep in mapping.rows.items():
        lf = lf.filter(pl.col(column).is_in(list(keep)))
    return lf.select([_canonical_expr(m, mapping, contract) for m in effective_columns(mapping, contract)])


def _rule_counts(m: ColumnMap, mapping: Mapping, contract: Contract) -> list[tuple[str, str, pl.Expr]]:
    """(provider column, rule, rows breaking it) for the mapping's own rules on one column, and for
    text that must become a number or true/false."""
    if m.absent or m.source is None:
        return []
    col = pl.col(m.source)
    present = col.is_not_null() & (col.str.strip_chars() != "")
    if m.codes is not None:
        known = pl.Series(list(mapping.code_lists[m.codes]), dtype=pl.String)
        return [(m.source, f"code list {m.codes}", (col.is_not_null() & ~col.is_in(known.implode())).sum())]
    if m.date is not None:
        parsed = col.str.strip_chars()
        fmt = DATE_FORMATS[m.date]
        if m.month_only:
            parsed, fmt = parsed + "-01", fmt + "-%d"
        return [(m.source, f"date {m.date}", (present & parsed.str.strptime(pl.Date, fmt, strict=False).is_null()).sum())]
    if m.nhs_number:
        return [(m.source, "NHS number: 10 digits once spaces and hyphens are removed", (present & ~_clean_nhs(col).str.contains(NHS_NUMBER_DIGITS)).sum())]
    if m.prefix is not None:
        return [(m.source, "record number: digits", (present & ~col.str.strip_chars().str.contains(r"^[0-9]+$")).sum())]
    target = contract.column(m.column)
    if target.type == "bool":
        return [(m.source, "true or false", (present & ~col.str.strip_chars().str.to_lowercase().is_in(list(BOOLEAN_TEXT))).sum())]
    if target.type != "string":
        return [(m.source, f"number ({target.type})", (present & col.str.strip_chars().cast(target.polars_type, strict=False).is_null()).sum())]
    return []


_RULE_ADVICE: dict[str, str] = {
    "code list": "hold a code the mapping's code list does not have; add the code to the list (with the contract value it means) or correct the extract",
    "date": "hold text that is not a date in this format; correct the extract or name its format in the mapping's `date:`",
    "NHS number": "hold an NHS number that is not 10 digits once spaces and hyphens are removed; correct the extract (leave it empty when unknown)",
    "record number": "hold a record number that is not digits; correct the extract or drop `prefix:` from the mapping",
    "true or false": "hold text that is not true or false; give the column a code list in the mapping (`codes:`)",
    "number": "hold text that is not a number of this type; correct the extract",
}


def problems(lf: pl.LazyFrame, mapping: Mapping, contract: Contract, file: str) -> list[Violation]:
    """One Violation per broken mapping rule, with its count of rows, from one pass over the provider's
    rows (after `rows:`). Names the file, the provider's column and the rule; never a value."""
    for column, keep in mapping.rows.items():
        lf = lf.filter(pl.col(column).is_in(list(keep)))
    rules = [r for m in effective_columns(mapping, contract) for r in _rule_counts(m, mapping, contract)]
    if not rules:
        return []
    counts = lf.select([expr.alias(f"r{i}") for i, (_, _, expr) in enumerate(rules)]).collect().row(0)
    out = []
    for (column, rule, _), n in zip(rules, counts, strict=True):
        if n:
            advice = next(v for k, v in _RULE_ADVICE.items() if rule.startswith(k))
            out.append(Violation(file, column, rule, f"{n} row(s) {advice} (mapping {mapping.name} v{mapping.version})"))
    return out


# ---------------------------------------------------------------------------------------------------
# Contract -> provider's layout (writing synthetic deliveries)


def _native_expr(m: ColumnMap, mapping: Mapping, contract: Contract) -> pl.Expr:
    col = pl.col(m.column)
    if m.codes is not None:
        # Several provider codes may mean one value (HES sex 9 and 0 are both "unknown"): the first listed is written.
        back: dict[Any, str] = {}
        for code, value in mapping.code_lists[m.codes].items():
            back.setdefault(value, code)
        return col.replace_strict(list(back), list(back.values()), default=None, return_dtype=pl.String).alias(m.source)
    if m.date is not None:
        return col.dt.strftime(DATE_FORMATS[m.date]).alias(m.source)
    if m.nhs_number:
        # Grouped 3-3-4 with spaces, as printed on NHS letters and cards.
        return pl.concat_str([col.str.slice(0, 3), col.str.slice(3, 3), col.str.slice(6)], separator=" ").alias(m.source)
    if m.prefix is not None:
        # A provider's record number has no leading zeros (EPIKEY 1234, not 000001234).
        number = col.str.strip_prefix(m.prefix).str.strip_chars_start("0")
        return pl.when(number == "").then(pl.lit("0")).otherwise(number).alias(m.source)
    return col.alias(m.source)


def to_native(df: pl.DataFrame, mapping: Mapping, contract: Contract) -> pl.DataFrame:
    """A frame in the contract's layout written back in the provider's: the inverse of `to_canonical`
    for every column the mapping carries (an absent identifier is simply not written)."""
    exprs = [pl.lit(keep[0]).alias(column) for column, keep in mapping.rows.items()]
    for c in contract.columns:
        m = mapping.columns.get(c.name)
        if m is None:
            exprs.append(pl.col(c.name))
        elif not m.absent:
            exprs.append(_native_expr(m, mapping, contract))
    return df.select(exprs)
