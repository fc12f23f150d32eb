"""Reference tables a study supplies and a user can replace: the unit-cost table and the EQ-5D-5L
value set. Both are read and checked against their contracts here, apart from any stage, so the
input check (key holder) and the cohort stage (no key) share them without importing each other.

Unit costs: a CSV following schemas/unit_costs.yaml (the shipped `reference/unit_costs.csv`, or the
user's own, given as the run's `unit_costs`).

EQ-5D-5L value set (`reference/eq5d5l_value_set_england.csv` unless the run names another):
- the shipped one is the England EQ-5D-5L value set (Devlin et al., Health Economics 2018;27:7-22),
  in the additive form it was published in: a decrement per dimension and level, index = 1 minus the
  five decrements (11111 -> 1, 55555 -> -0.285); its form is the contract schemas/eq5d_value_set.yaml;
- a table of all 3,125 profiles and their values (columns `profile`, `value`; profile written as
  five digits MO SC UA PD AD, e.g. 21341) is accepted too, so a non-additive set such as the
  EQ-5D-5L to 3L crosswalk (van Hout et al. 2012) can be used without code.

    >>> read_value_set().values.height
    3125
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline.contracts import check_frame, load_contract
from pipeline.errors import ContractError, Violation
from pipeline.settings import REPO_DIR

DEFAULT_VALUE_SET = REPO_DIR / "reference" / "eq5d5l_value_set_england.csv"
# Survey columns of the five dimensions, in the order of a profile's digits (MO SC UA PD AD).
EQ5D_DIMENSIONS: dict[str, str] = {
    "MO": "eq5d_mobility", "SC": "eq5d_selfcare", "UA": "eq5d_usual", "PD": "eq5d_pain", "AD": "eq5d_anxiety",
}  # fmt: skip
ALL_PROFILES: tuple[str, ...] = tuple("".join(p) for p in itertools.product("12345", repeat=5))


def scan_unit_costs(path: Path) -> pl.LazyFrame:
    """The unit-cost table: a CSV (the shipped one, or the user's own) checked against its contract."""
    contract = load_contract("unit_costs")
    path = Path(path)
    if not path.exists():
        raise ContractError([Violation(str(path), None, "file present", "no unit-cost table there; give the path of one that follows schemas/unit_costs.yaml")])
    try:
        df = pl.read_csv(path, schema_overrides=contract.polars_schema())
    except Exception as exc:
        raise ContractError([Violation(str(path), None, "readable CSV", f"could not read it as CSV ({type(exc).__name__}); check the header and types")]) from None
    missing = [c for c in contract.column_names if c not in df.columns]
    if missing:
        raise ContractError([Violation(str(path), c, "column present", "add the column") for c in missing])
    violations = check_frame(df.lazy().select(contract.column_names), contract, str(path))
    if violations:
        raise ContractError(violations)
    return df.lazy().select(contract.column_names)


@dataclass(frozen=True)
class ValueSet:
    """Every EQ-5D-5L profile with its value, and the set's name."""

    name: str
    values: pl.DataFrame  # profile (str, 5 digits), value (float64); 3,125 rows


def _fail(path: Path, column: str | None, rule: str, advice: str) -> ContractError:
    return ContractError([Violation(str(path), column, rule, advice)])


def read_value_set(path: Path = DEFAULT_VALUE_SET) -> ValueSet:
    """Read a value set in either form (see the module docstring); ContractError says what is wrong."""
    path = Path(path)
    if not path.exists():
        raise _fail(path, None, "file present", "no EQ-5D value set there; give a CSV following schemas/eq5d_value_set.yaml")
    try:
        df = pl.read_csv(path, infer_schema_length=0)  # all strings first: the form decides the types
    except Exception as exc:
        raise _fail(path, None, "readable CSV", f"could not read it as CSV ({type(exc).__name__}); check the header") from None
    if "profile" in df.columns:
        return _profile_table(path, df)
    contract = load_contract("eq5d_value_set")
    missing = [c for c in contract.column_names if c not in df.columns]
    if missing:
        raise ContractError([Violation(str(path), c, "column present", "add the column, or give columns profile and value") for c in missing])
    try:
        df = df.select([pl.col(c.name).cast(c.polars_type) for c in contract.columns])
    except pl.exceptions.PolarsError:
        raise _fail(path, None, "column types", "level must be a whole number and decrement a number") from None
    violations = check_frame(df.lazy(), contract, str(path))
    if df.select(pl.struct("dimension", "level").n_unique()).item() != 25 or df.height != 25:
        violations.append(Violation(str(path), "level", "complete", "give exactly one row for each of the 5 levels of the 5 dimensions"))
    if df.get_column("value_set").n_unique() != 1:
        violations.append(Violation(str(path), "value_set", "one value set", "every row must name the same value set"))
    if violations:
        raise ContractError(violations)
    decrement = {(d, int(lv)): float(x) for d, lv, x in df.select("dimension", "level", "decrement").iter_rows()}
    dims = list(EQ5D_DIMENSIONS)
    values = [1.0 - sum(decrement[(dims[i], int(p[i]))] for i in range(5)) for p in ALL_PROFILES]
    table = pl.DataFrame({"profile": list(ALL_PROFILES), "value": values}).with_columns(pl.col("value").round(6))
    return ValueSet(name=str(df.get_column("value_set")[0]), values=table)


def _profile_table(path: Path, df: pl.DataFrame) -> ValueSet:
    if "value" not in df.columns:
        raise _fail(path, "value", "column present", "a profile table needs columns profile and value")
    try:
        table = df.select(pl.col("profile").str.strip_chars(), pl.col("value").cast(pl.Float64))
    except pl.exceptions.PolarsError:
        raise _fail(path, "value", "numeric", "every value must be a number") from None
    profiles = set(table.get_column("profile").to_list())
    if profiles != set(ALL_PROFILES) or table.height != len(ALL_PROFILES):
        raise _fail(path, "profile", "all 3,125 profiles once", "give each five-digit profile 11111 to 55555 (MO SC UA PD AD) exactly once")
    if table.get_column("value").is_null().any() or table.get_column("value").max() > 1:
        raise _fail(path, "value", "value at most 1", "every profile needs a value of at most 1")
    return ValueSet(name=path.stem, values=table.sort("profile"))


