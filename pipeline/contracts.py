"""Data contracts: one YAML file per dataset in `schemas/`, declared once.

From a contract this module derives the PyArrow schema, checks a Parquet file against it (every
violation reported together, naming file, column and rule, never a value) and renders the data
dictionary. The structural Great Expectations suite and the synthetic generator's shape are derived
from the same objects elsewhere.

    >>> apc = load_contract("hospital_apc")
    >>> apc.arrow_schema().field("admission_date").type
    DataType(date32[day])
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from string import Template
from typing import Any, Literal

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipeline.errors import ContractError, UnknownDatasetError, Violation
from pipeline.repeats import count_repeats

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"

ColumnClass = Literal["direct_identifier", "quasi_identifier", "token", "key", "payload"]
COLUMN_CLASSES: tuple[str, ...] = ("direct_identifier", "quasi_identifier", "token", "key", "payload")

ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "date": pa.date32(),
    # A set of strings, sorted and without repeats (token spec v3's near-miss token columns); a
    # `pattern` applies to every element.
    "list[string]": pa.large_list(pa.large_string()),
}
POLARS_TYPES: dict[str, pl.DataType] = {
    "string": pl.String(),
    "int8": pl.Int8(),
    "int16": pl.Int16(),
    "int32": pl.Int32(),
    "int64": pl.Int64(),
    "float64": pl.Float64(),
    "bool": pl.Boolean(),
    "date": pl.Date(),
    "list[string]": pl.List(pl.String()),
}
# Arrow types a delivered file may use for a contract type; they are cast on read without loss.
COMPATIBLE_ARROW_TYPES: dict[str, tuple[pa.DataType, ...]] = {
    "string": (pa.string(), pa.large_string(), pa.string_view()),
    "int8": (pa.int8(),),
    "int16": (pa.int8(), pa.int16()),
    "int32": (pa.int8(), pa.int16(), pa.int32()),
    "int64": (pa.int8(), pa.int16(), pa.int32(), pa.int64()),
    "float64": (pa.float32(), pa.float64(), pa.int8(), pa.int16(), pa.int32()),
    "bool": (pa.bool_(),),
    "date": (pa.date32(), pa.date64()),
    "list[string]": tuple(
        outer(inner) for outer in (pa.list_, pa.large_list, pa.list_view, pa.large_list_view) for inner in (pa.string(), pa.large_string(), pa.string_view())
    ),
}


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool
    column_class: ColumnClass
    description: str
    allowed: tuple[Any, ...] | None = None
    pattern: str | None = None
    min: Any = None
    max: Any = None
    unique: bool = False
    # Rules whose values the study gives at run time: (rule, study value name), such as
    # ("allowed", "sites") for `allowed: {study: sites}`. Until bound (Contract.for_study) the rule's
    # own field is None; the structural GX suite refers to it as the suite parameter of that name.
    study_refs: tuple[tuple[str, str], ...] = ()

    @property
    def arrow_type(self) -> pa.DataType:
        return ARROW_TYPES[self.type]

    @property
    def polars_type(self) -> pl.DataType:
        return POLARS_TYPES[self.type]

    def rules(self) -> list[str]:
        """The rules of this column, in words, for the data dictionary."""
        out = [] if self.nullable else ["not null"]
        refs = dict(self.study_refs)
        if self.allowed is not None:
            out.append("one of " + ", ".join(str(v) for v in self.allowed))
        elif "allowed" in refs:
            out.append(f"one of the study's {refs['allowed'].replace('_', ' ')}")
        if self.pattern is not None:
            out.append(f"matches `{self.pattern}`")
        for bound, op in (("min", ">="), ("max", "<=")):
            if getattr(self, bound) is not None:
                out.append(f"{op} {getattr(self, bound)}")
            elif bound in refs:
                out.append(f"{op} the study's {refs[bound].replace('_', ' ')}")
        if self.unique:
            out.append("unique")
        return out


@dataclass(frozen=True)
class Contract:
    name: str
    zone: str
    description: str
    primary_key: tuple[str, ...]
    columns: tuple[Column, ...] = field(default_factory=tuple)
    # What an analyst must know before using a release table (withheld values, rounding, samples):
    # shown by `pipeline describe` and in the data dictionary.
    caveats: tuple[str, ...] = ()

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")

    def columns_of_class(self, *classes: str) -> list[Column]:
        return [c for c in self.columns if c.column_class in classes]

    def arrow_schema(self) -> pa.Schema:
        """The PyArrow schema, with each column's description as field metadata."""
        return pa.schema(
            [
                pa.field(
                    c.name,
                    c.arrow_type,
                    nullable=c.nullable,
                    metadata={"description": c.description, "class": c.column_class},
                )
                for c in self.columns
            ],
            metadata={"contract": self.name, "description": self.description.strip()},
        )

    def polars_schema(self) -> dict[str, pl.DataType]:
        return {c.name: c.polars_type for c in self.columns}

    def with_column(self, column: Column) -> Contract:
        """The contract with its column of the same name replaced by `column` (a derived zone's
        record_id, say, which holds a token where the raw extract held the provider's ID)."""
        self.column(column.name)  # KeyError if there is no such column
        columns = tuple(column if c.name == column.name else c for c in self.columns)
        return Contract(name=self.name, zone=self.zone, description=self.description, primary_key=self.primary_key, columns=columns)

    @property
    def study_values(self) -> set[str]:
        """The names of the study values (pipeline.study.Study.suite_parameters) its rules need."""
        return {name for c in self.columns for _, name in c.study_refs}

    def for_study(self, values: Mapping[str, Any], texts: Mapping[str, str] | None = None) -> Contract:
        """The contract with its study-given rules filled in from `values` (a study's
        `suite_parameters()`), so it checks, and documents, that study's own values; with `texts`
        (a study's `description_values()`) its descriptions' `${NAME}` placeholders filled in too.

        The unbound contract is the same for every study; this is the only place they differ.
        """
        missing = sorted(self.study_values - set(values))
        if missing:
            raise KeyError(f"contract {self.name} needs the study values {missing}")

        def words(text: str) -> str:
            return Template(text).substitute(texts) if texts is not None else text

        columns = []
        for c in self.columns:
            if c.study_refs:
                bound = {rule: (tuple(values[name]) if rule == "allowed" else values[name]) for rule, name in c.study_refs}
                c = replace(c, study_refs=(), **bound)
            columns.append(replace(c, description=words(c.description)))
        return replace(self, description=words(self.description), columns=tuple(columns))

    def restricted_to(self, classes: tuple[str, ...], name: str, zone: str) -> Contract:
        """A derived contract keeping only columns of the given classes (plus the primary key)."""
        keep = tuple(c for c in self.columns if c.column_class in classes or c.name in self.primary_key)
        return Contract(name=name, zone=zone, description=self.description, primary_key=self.primary_key, columns=keep)


def _parse_columns(spec: dict[str, Any], source: str) -> list[Column]:
    cols = []
    for name, c in spec.items():
        cls = c.get("class")
        if cls not in COLUMN_CLASSES:
            raise ValueError(f"{source}: column {name!r} has class {cls!r}; use one of {COLUMN_CLASSES}")
        if c.get("type") not in ARROW_TYPES:
            raise ValueError(f"{source}: column {name!r} has type {c.get('type')!r}; use one of {list(ARROW_TYPES)}")
        if not c.get("description"):
            raise ValueError(f"{source}: column {name!r} needs a description for the data dictionary")
        # `allowed: {study: sites}`, `min: {study: panel_first_month}`: the study gives the value.
        refs = tuple((rule, c[rule]["study"]) for rule in ("allowed", "min", "max") if isinstance(c.get(rule), dict))
        for rule, ref in refs:
            if set(c[rule]) != {"study"} or not isinstance(ref, str):
                raise ValueError(f"{source}: column {name!r}: {rule} must be a list, a value, or {{study: NAME}}")
        c = {k: v for k, v in c.items() if k not in dict(refs)}
        cols.append(
            Column(
                name=name,
                type=c["type"],
                nullable=bool(c.get("nullable", False)),
                column_class=cls,
                description=" ".join(str(c["description"]).split()),
                allowed=tuple(c["allowed"]) if "allowed" in c else None,
                pattern=c.get("pattern"),
                min=c.get("min"),
                max=c.get("max"),
                unique=bool(c.get("unique", False)),
                study_refs=refs,
            )
        )
    return cols


@cache
def load_contract(name: str, schemas_dir: Path = SCHEMAS_DIR) -> Contract:
    """Load `schemas/<name>.yaml`, with its `include`d column blocks after its own key columns."""
    path = schemas_dir / f"{name}.yaml"
    # A name is looked up among the contracts, never used as a path (`../x` would leave schemas/).
    if "/" in name or "\\" in name or not path.is_file():
        names = ", ".join(all_contract_names(schemas_dir))
        raise UnknownDatasetError(f"no data contract named {name!r} (no {path.name} in {schemas_dir}); the dataset names are: {names}")
    spec = yaml.safe_load(path.read_text())
    own = _parse_columns(spec.get("columns", {}), path.name)
    included: list[Column] = []
    for inc in spec.get("include", []):
        inc_spec = yaml.safe_load((schemas_dir / f"{inc}.yaml").read_text())
        included += _parse_columns(inc_spec["columns"], f"{inc}.yaml")
    # Primary-key columns first, then the included block, then the rest, so files read naturally.
    pk = tuple(spec.get("primary_key", []))
    ordered = [c for c in own if c.name in pk] + included + [c for c in own if c.name not in pk]
    names = [c.name for c in ordered]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"{path.name}: columns declared twice: {sorted(dupes)}")
    return Contract(
        name=spec["name"],
        zone=spec["zone"],
        description=" ".join(str(spec.get("description", "")).split()),
        primary_key=pk,
        columns=tuple(ordered),
        caveats=tuple(" ".join(str(c).split()) for c in spec.get("caveats", [])),
    )


def all_contract_names(schemas_dir: Path = SCHEMAS_DIR) -> list[str]:
    return sorted(p.stem for p in schemas_dir.glob("*.yaml") if not p.stem.startswith("_"))


# ---------------------------------------------------------------------------------------------------
# Checking a file against its contract


def _is_bytes(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)


def _schema_violations(path: Path, contract: Contract, schema: pa.Schema, allow_extra: bool) -> list[Violation]:
    out = []
    present = {f.name: f.type for f in schema}
    for c in contract.columns:
        if c.name not in present:
            out.append(Violation(str(path), c.name, "column present", "the column is missing; add it, or read the file through a mapping (pipeline check --mapping, or a deliveries file)"))
        elif present[c.name] not in COMPATIBLE_ARROW_TYPES[c.type] and not pa.types.is_null(present[c.name]):
            found = present[c.name]
            hint = " (bytes, not text: re-export it as UTF-8 text)" if c.type == "string" and _is_bytes(found) else ""
            out.append(Violation(str(path), c.name, f"type {c.type}", f"found Arrow type {found}{hint}; deliver it as {c.arrow_type}"))
    if not allow_extra:
        for name in present:
            if name not in contract.column_names:
                out.append(
                    Violation(str(path), name, "declared column", "the contract does not declare this column; remove it or add it to the contract")
                )
    return out


def _value_rule_exprs(contract: Contract, columns: set[str]) -> list[tuple[Column, str, pl.Expr]]:
    """(column, rule, expression counting rows that break the rule) for every value rule."""
    if contract.study_values:
        raise ValueError(f"contract {contract.name}: bind it to the run's study (Contract.for_study) before checking a file")
    rules: list[tuple[Column, str, pl.Expr]] = []
    for c in contract.columns:
        if c.name not in columns:
            continue
        col = pl.col(c.name).cast(c.polars_type)
        if not c.nullable:
            rules.append((c, "not null", col.is_null().sum()))
        if c.allowed is not None:
            allowed = pl.Series(list(c.allowed), dtype=c.polars_type)
            rules.append((c, "allowed values", (col.is_not_null() & ~col.is_in(allowed.implode())).sum()))
        if c.pattern is not None and c.type == "list[string]":
            broken = col.list.eval(~pl.element().str.contains(f"^(?:{c.pattern})$").fill_null(False)).list.any()
            rules.append((c, f"pattern {c.pattern}", (col.is_not_null() & broken).sum()))
        elif c.pattern is not None:
            rules.append((c, f"pattern {c.pattern}", (col.is_not_null() & ~col.str.contains(f"^(?:{c.pattern})$")).sum()))
        for bound, op in ((c.min, "ge"), (c.max, "le")):
            if bound is None:
                continue
            lit = pl.lit(bound).str.to_date() if c.type == "date" else pl.lit(bound)
            broken = col < lit if op == "ge" else col > lit
            rules.append((c, f"{'minimum' if op == 'ge' else 'maximum'} {bound}", (col.is_not_null() & broken).sum()))
        if c.unique:
            rules.append((c, "unique", col.drop_nulls().len() - col.drop_nulls().n_unique()))
    return rules


# What to do about each kind of broken value rule; the count of rows is said before it.
_VALUE_RULE_ADVICE: dict[str, str] = {
    "not null": "have no value, and every row needs one",
    "allowed values": "hold a value the contract does not allow; map the provider's codes to the allowed ones",
    "pattern": "do not have the declared form",
    "minimum": "are below the declared minimum",
    "maximum": "are above the declared maximum",
    "unique": "repeat a value that must be unique (a record or person delivered twice, or two under one ID)",
}


def _value_rule_detail(rule: str, n: int) -> str:
    kind = rule if rule in ("not null", "allowed values") else rule.split(" ")[0]
    advice = _VALUE_RULE_ADVICE.get(kind, "break it")
    return f"{n} row(s) break the rule: they {advice}; correct them at the source and deliver the file again"


# Rows per window of a file checked in pieces (`check_frame` with `window`): the rules are counted
# one window at a time, so the memory they take is a window's, whatever the size of the file
# (Polars decodes only the rows of a slice of a Parquet scan, not its whole row group). Each window
# has a cost of its own: check_inputs at 1M people took 16.6-17.6 s and peaked at 303 MB in windows
# of 131,072 rows, 13.5 s and 522 MB in windows of 524,288, and 12.3 s and 599 MB in these.
CHECK_WINDOW_ROWS = 1_048_576


def check_frame(
    lf: pl.LazyFrame, contract: Contract, path: str, read_all: bool = False, window: int | None = None
) -> list[Violation]:
    """Count rows breaking each value rule over `lf`; one Violation per broken rule.

    With `read_all` the same pass also decodes every column (a column without rules is otherwise
    never read), so a damaged page or text that is not UTF-8 is found here and not in a later stage.

    Without `window`, one pass over the whole of `lf`. With `window` (for a scan that slices
    cheaply, such as Parquet), the rules are counted in row windows of that many rows and added up,
    and uniqueness per column in buckets of 64-bit hashes (pipeline.repeats), so memory is bounded
    by the window and the bucket size, not the number of rows. The counts, and so the violations, are the same.
    """
    columns = lf.collect_schema().names()
    rules = _value_rule_exprs(contract, set(columns))
    exprs = [expr.alias(f"r{i}") for i, (_, _, expr) in enumerate(rules)]
    if read_all:
        exprs += [pl.col(c).null_count().alias(f"_read_{i}") for i, c in enumerate(columns)]
    if not exprs:
        return []
    if window is None:
        counts = lf.select(exprs).collect().row(0)
    else:
        needed = columns if read_all else list(dict.fromkeys(c.name for c, _, _ in rules))
        counts = _windowed_counts(lf.select(needed), rules, exprs, window)
    out = []
    for (c, rule, _), n in zip(rules, counts[: len(rules)], strict=True):
        if n:
            out.append(Violation(path, c.name, rule, _value_rule_detail(rule, n)))
    return out


def _windowed_counts(lf: pl.LazyFrame, rules: list[tuple[Column, str, pl.Expr]], exprs: list[pl.Expr], window: int) -> tuple[int, ...]:
    """`lf.select(exprs)`'s counts: the rules but uniqueness summed over row windows of `lf` (each
    window decoded once), uniqueness over the whole of `lf` by pipeline.repeats."""
    rows = lf.select(pl.len()).collect().item()
    unique = {i for i, (_, rule, _) in enumerate(rules) if rule == "unique"}
    summed = [e for i, e in enumerate(exprs) if i not in unique]
    totals = [0] * len(summed)
    if summed:
        for offset in range(0, rows, window):
            got = lf.slice(offset, window).select(summed).collect().row(0)
            totals = [t + (n or 0) for t, n in zip(totals, got, strict=True)]
    counts, rest = [], iter(totals)
    for i in range(len(exprs)):
        if i in unique:
            name = rules[i][0].name
            counts.append(count_repeats(lf.select(name), [name], keep=pl.col(name).is_not_null(), window=window).rows_beyond_first)
        else:
            counts.append(next(rest))
    return tuple(counts)


def parquet_files(path: Path) -> list[Path]:
    """The Parquet files of an input: the file itself, or every `*.parquet` of a folder (a source
    delivered in parts), in name order so the rows always come in the same order."""
    path = Path(path)
    return sorted(path.glob("*.parquet")) if path.is_dir() else [path]


_PARQUET_MAGIC = b"PAR1"


def _not_parquet_detail(path: Path, exc: Exception) -> str:
    """Why `path` is not readable Parquet, in words a data engineer can act on (never its content)."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes), so the export or the copy failed; deliver it again"
    with open(path, "rb") as fh:
        head = fh.read(4)
        fh.seek(max(0, size - 4))
        tail = fh.read(4)
    if head != _PARQUET_MAGIC:
        return (
            "the file is not valid Parquet (it does not start with Parquet's marker: a CSV or a spreadsheet "
            "renamed .parquet?); export the extract as Parquet"
        )
    if tail != _PARQUET_MAGIC:
        return "the file is truncated (it has no Parquet footer: an interrupted copy or export?); copy or export it again"
    return f"the file is damaged ({type(exc).__name__} reading its footer); export it again as Parquet"


def missing_file_detail(path: Path) -> str:
    """What to do about an input file that is not there (naming a look-alike such as a CSV, if any)."""
    path = Path(path)
    others = sorted(p.name for p in path.parent.glob(f"{path.stem}.*") if p != path) if path.parent.is_dir() else []
    if others:
        return f"the file does not exist, but {', '.join(others)} does; deliver the extract as Parquet, named {path.name}"
    return "the file does not exist; check the input folder"


def read_parquet_schema(path: Path) -> pa.Schema:
    """The file's Arrow schema, or a ContractError saying the file is missing or not readable Parquet."""
    path = Path(path)
    if not path.exists():
        raise ContractError([Violation(str(path), None, "file present", missing_file_detail(path))])
    if path.is_dir():
        raise ContractError([Violation(str(path), None, "readable Parquet", "a folder, not a Parquet file; give the path of a file")])
    try:
        return pq.read_schema(path)
    except Exception as exc:  # pyarrow raises several types for truncated or non-Parquet files
        raise ContractError([Violation(str(path), None, "readable Parquet", _not_parquet_detail(path, exc))]) from None


def unreadable_columns(path: Path, columns: list[str]) -> list[Violation]:
    """One Violation per column of `path` whose values cannot be decoded (a damaged page, or text
    that is not UTF-8), found by reading the columns one at a time. Never carries a value."""
    out = []
    for c in columns:
        try:
            pl.scan_parquet(path).select(pl.col(c).null_count()).collect()
        except (pl.exceptions.PolarsError, OSError, pa.ArrowException) as exc:
            utf8 = "utf-8" in str(exc).lower() or "utf8" in str(exc).lower()
            why = "holds text that is not valid UTF-8" if utf8 else "holds damaged data that cannot be decoded"
            todo = "re-export the file with text encoded as UTF-8" if utf8 else "export or copy the file again"
            out.append(Violation(str(path), c, "readable values", f"the column {why}; {todo}"))
    if not out:
        out.append(Violation(str(path), None, "readable values", "the file cannot be read to the end; export or copy it again"))
    return out


def scan_checked(
    path: Path,
    contract: Contract,
    allow_extra: bool = False,
    read_all: bool = False,
) -> pl.LazyFrame:
    """Check `path` against `contract` and return it as a lazy frame with the contract's columns and types.

    `path` is a Parquet file, or a folder of Parquet files holding one extract in parts (every part
    is checked; value rules such as uniqueness hold across the parts). Raises ContractError listing
    every violation (file, column, rule, what to do) when the input breaks its contract. Values never
    appear in the message. `read_all`: decode every value too (see check_frame).
    """
    path = Path(path)
    files = parquet_files(path)
    if not files:
        raise ContractError([Violation(str(path), None, "file present", "the folder holds no .parquet file; put the extract's parts in it")])
    violations: list[Violation] = []
    for f in files:
        try:
            schema = read_parquet_schema(f)
        except ContractError as exc:
            violations += exc.violations
            continue
        violations += _schema_violations(f, contract, schema, allow_extra)
    if violations:
        raise ContractError(violations)
    lf = scan_as_contract(files, contract)
    try:
        violations = check_frame(lf, contract, str(path), read_all=read_all, window=CHECK_WINDOW_ROWS)
    except (pl.exceptions.PolarsError, OSError, pa.ArrowException):
        # A page that cannot be decoded: say which file and column, not Polars' traceback.
        raise ContractError([v for f in files for v in unreadable_columns(f, contract.column_names)]) from None
    if violations:
        raise ContractError(violations)
    return lf


def scan_as_contract(files: list[Path], contract: Contract) -> pl.LazyFrame:
    """Parquet `files` (one extract, in parts or not), lazily, as the contract's columns and types.
    Nothing is checked: `scan_checked` checks first."""
    return pl.scan_parquet(files).select([pl.col(c.name).cast(c.polars_type) for c in contract.columns])


def contract_sha256(contract: Contract) -> str:
    """The SHA-256 of everything a contract says (bound to a study, its study values too): two
    contracts with the same digest check a file by the same rules."""
    return hashlib.sha256(repr(contract).encode("utf-8")).hexdigest()


def study_contract(name: str, study: Any) -> Contract:
    """The contract `name` bound to a study's values and words (a pipeline.study.Study)."""
    return load_contract(name).for_study(study.suite_parameters(), study.description_values())


def check_file(path: Path, contract: Contract | str, mapping_file: Path | str | None = None, study: Any = None) -> int:
    """Check one file; return its row count or raise ContractError with every violation.

    With `mapping_file` (a shipped mapping's name or a mapping's path) the file is read in the
    provider's layout, its format taken from its name (pipeline.deliveries). `study` (a
    pipeline.study.Study) gives the values of the study-given rules (sites, teams, ...); the default
    study when None.
    """
    if isinstance(contract, str):
        contract = load_contract(contract)
    if contract.study_values:
        from pipeline.study import load_study

        contract = contract.for_study((study or load_study()).suite_parameters())
    if mapping_file is not None:
        from pipeline.deliveries.delivery import delivery_for_file, scan_delivery

        lf = scan_delivery(delivery_for_file(Path(path), str(mapping_file), contract.name), contract)
    else:
        lf = scan_checked(path, contract)
    return lf.select(pl.len()).collect().item()


def to_arrow(df: pl.DataFrame, contract: Contract) -> pa.Table:
    """Cast a frame to the contract's Arrow schema (columns in contract order, descriptions as metadata)."""
    table = df.select(contract.column_names).to_arrow()
    return table.cast(contract.arrow_schema())


# ---------------------------------------------------------------------------------------------------
# Data dictionary


# One type per kind of value across the release tables, so a column means the same in every table
# it appears in and joins and stacks without casts (tests/test_contracts.py holds the release
# contracts to it). Printed at the head of each release's data dictionary.
TYPE_POLICY = (
    "Types: one per kind of value, the same in every table.",
    "- Counts (admissions, bed days, attendances, consultations, conditions, matched-set numbers): `int32`.",
    "- Points of a marked scale: `int8` for the EQ-5D and ASCOT levels, the IMD quintile and the month; "
    "`int16` for EQ VAS (0-100), in cohort (`baseline_eq_vas`) as in outcomes (`eq_vas`).",
    "- Quantities that can be fractional: `float64` (costs, hours and weeks of care, service_use's `units`, which "
    "holds them beside the counts, indices, scores, weights, standardised differences).",
    "- A missing value is null in every type (Polars nulls; NA in R's arrow), never a sentinel such as -1 or NaN.",
)


def render_dictionary_markdown(contracts: list[Contract], title: str = "Data dictionary") -> str:
    lines = [f"# {title}", ""]
    if any(ct.zone == "release" for ct in contracts):
        lines += [*TYPE_POLICY, ""]
    for ct in contracts:
        lines += [f"## `{ct.name}`", "", ct.description, ""]
        if ct.caveats:
            lines += ["Caveats:", *(f"- {c}" for c in ct.caveats), ""]
        if ct.primary_key:
            lines += [f"One row per {', '.join(ct.primary_key)}.", ""]
        lines += ["| column | type | nullable | class | description | rules |", "| --- | --- | --- | --- | --- | --- |"]
        for c in ct.columns:
            rules = "; ".join(r for r in c.rules() if r != "not null")
            lines.append(
                f"| `{c.name}` | {c.type} | {'yes' if c.nullable else 'no'} | {c.column_class} | {c.description} | {rules} |"
            )
        lines.append("")
    return "\n".join(lines)


def dictionary_records(contracts: list[Contract]) -> list[dict[str, Any]]:
    """The machine-readable data dictionary: one record per dataset and column."""
    return [
        {
            "dataset": ct.name,
            "column": c.name,
            "type": c.type,
            "nullable": c.nullable,
            "class": c.column_class,
            "description": c.description,
            "rules": c.rules(),
        }
        for ct in contracts
        for c in ct.columns
    ]

