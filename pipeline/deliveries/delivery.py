"""Deliveries: which provider file fills which source, in what format, through which mapping.

A run given a deliveries file (RunConfig.deliveries_file, `pipeline run --deliveries FILE`) reads each
source it lists from the provider's own file; the sources it does not list, and the consent register,
survey and postcode lookup, come from the raw folder as `<dataset>.parquet`, as without one:

    # deliveries.yaml: paths are relative to this file's folder and must stay inside it
    deliveries:
      hospital_apc: {path: hes_apc.csv, format: csv, mapping: hes_apc}
      hospital_ae: {path: ecds.txt.gz, format: pipe.gz, mapping: ecds}

`format` is one of FORMATS: Parquet, CSV, or pipe-delimited text, each with a header row, and the two
text formats also gzipped. `mapping` names a shipped mapping (schemas/mappings/<name>.yaml) or gives
the path of a team's own. Every value of a text file is read as text and the mapping parses it;
Parquet columns are read as text too, so one mapping serves a provider whichever format it sends.

`scan_delivery` is the one entry point: it checks the file (present, readable, the columns the
mapping reads), the mapping's rules (pipeline.deliveries.mapping.problems) and the contract's value
rules, all reported together by file, column and rule, and returns the rows lazily in the contract's
layout. Nothing is written on the way, so no identifiable copy of a delivery exists but the delivery.

Scale: CSV and pipe-delimited text stream; a gzipped file is decompressed in memory by Polars as it is
read, so an extract of tens of millions of rows is better delivered uncompressed or as Parquet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import yaml

from pipeline import io
from pipeline.contracts import Contract, check_frame, missing_file_detail, read_parquet_schema
from pipeline.deliveries.mapping import Mapping, effective_columns, load_mapping, mapping_path, problems, to_canonical, unknown_columns
from pipeline.errors import ContractError, Violation

# Format name: (separator of a text format or None for Parquet, gzipped).
FORMATS: dict[str, tuple[str | None, bool]] = {
    "parquet": (None, False),
    "csv": (",", False),
    "csv.gz": (",", True),
    "pipe": ("|", False),
    "pipe.gz": ("|", True),
}
# The file name endings `format_of` recognises, longest first.
SUFFIXES: dict[str, str] = {
    ".csv.gz": "csv.gz", ".txt.gz": "pipe.gz", ".psv.gz": "pipe.gz",
    ".parquet": "parquet", ".csv": "csv", ".txt": "pipe", ".psv": "pipe",
}  # fmt: skip
IDENTIFIERS: tuple[str, ...] = ("nhs_number", "given_name", "family_name", "date_of_birth", "sex", "postcode")


@dataclass(frozen=True)
class Delivery:
    """One provider file for one source."""

    dataset: str
    path: Path
    format: str
    mapping: Mapping
    listed_in: str  # the deliveries file (or the flag) that named it, for messages

    def record(self) -> dict[str, Any]:
        """What the input manifest records of the delivery: the file, its format and hash, the mapping's
        name, version and hash, and which identifiers the source carried."""
        return {
            "file": self.path.name,
            "sha256": io.sha256_file(self.path),
            "format": self.format,
            "mapping": {"name": self.mapping.name, "version": self.mapping.version, "sha256": self.mapping.sha256, **({"follows": self.mapping.follows} if self.mapping.follows else {})},
            "identifiers": self.mapping.identifiers(IDENTIFIERS),
        }


def format_of(path: Path) -> str | None:
    """The format a file's name suggests (`hes_apc.csv.gz` -> "csv.gz"), or None."""
    name = Path(path).name.lower()
    return next((fmt for suffix, fmt in SUFFIXES.items() if name.endswith(suffix)), None)


def load_deliveries(path: Path, datasets: tuple[str, ...]) -> dict[str, Delivery]:
    """Read a deliveries file; refuse (ContractError, every problem at once) an unknown dataset or
    format, a mapping for another dataset, or a path outside the file's folder."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ContractError([Violation(str(path), None, "file present", "no deliveries file there; check --deliveries (Airflow Param deliveries_file)")]) from None
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise ContractError([Violation(str(path), None, "plain YAML", f"the deliveries file cannot be read as plain YAML ({type(exc).__name__})")]) from None
    if not isinstance(spec, dict) or not isinstance(spec.get("deliveries"), dict):
        raise ContractError([Violation(str(path), None, "deliveries format", "write `deliveries:` and under it one entry per source: {path, format, mapping}")])
    folder = path.parent.resolve()
    out: dict[str, Delivery] = {}
    violations: list[Violation] = []
    for dataset, entry in spec["deliveries"].items():
        where = f"{path} (deliveries.{dataset})"
        if dataset not in datasets:
            violations.append(Violation(where, None, "known source", f"deliveries can fill the sources {', '.join(datasets)}; the other inputs stay <dataset>.parquet in the raw folder"))
            continue
        if not isinstance(entry, dict) or not {"path", "mapping"} <= set(entry):
            violations.append(Violation(where, None, "deliveries format", "give `path:`, `mapping:` and optionally `format:`"))
            continue
        file = Path(entry["path"])
        file = file if file.is_absolute() else folder / file
        fmt = entry.get("format") or format_of(file)
        if fmt not in FORMATS:
            violations.append(Violation(where, None, "known format", f"`format:` must be one of {', '.join(FORMATS)}"))
            continue
        resolved = file.resolve()
        if resolved != folder and folder not in resolved.parents:
            violations.append(Violation(where, None, "inside the deliveries folder", f"the delivery must be inside {folder} (links resolved); copy it there"))
            continue
        try:
            mapping = load_mapping(mapping_path(str(entry["mapping"]), folder))
        except ContractError as exc:
            violations += exc.violations
            continue
        if mapping.dataset != dataset:
            violations.append(Violation(where, None, "mapping dataset", f"the mapping {mapping.name} is for {mapping.dataset}, not {dataset}"))
            continue
        out[dataset] = Delivery(dataset, file, fmt, mapping, str(path))
    if violations:
        raise ContractError(violations)
    return out


def scan_native(path: Path, fmt: str) -> pl.LazyFrame:
    """The provider's file as it is, every column as text (see the module docstring)."""
    separator, _ = FORMATS[fmt]
    if separator is None:
        lf = pl.scan_parquet(path)
        return lf.select(pl.all().cast(pl.String))
    # An empty field is a null; a quoted empty field ("") is an empty text, as Polars writes them.
    return pl.scan_csv(path, separator=separator, has_header=True, infer_schema=False)


def _native_columns(delivery: Delivery) -> list[str]:
    if FORMATS[delivery.format][0] is None:
        return read_parquet_schema(delivery.path).names
    try:
        return scan_native(delivery.path, delivery.format).collect_schema().names()
    except (pl.exceptions.PolarsError, OSError, pa.ArrowException) as exc:
        # Polars' message may quote the file's text: only its kind is said.
        raise ContractError(
            [Violation(str(delivery.path), None, f"readable {delivery.format}", f"the file cannot be read as {delivery.format} with a header row ({type(exc).__name__}); check `format:` in {delivery.listed_in} and export the file again")]
        ) from None


def scan_delivery(delivery: Delivery, contract: Contract, read_all: bool = False) -> pl.LazyFrame:
    """Check a delivery and return its rows, lazily, with the contract's columns and types.

    Raises ContractError listing every violation: the file missing or unreadable, a column the mapping
    reads missing, a mapping rule broken (a code not in a code list, a date not in its format, an NHS
    number that is not 10 digits), a contract rule broken. A violation names the file, the provider's
    column and the rule, with a count of rows; never a value. `read_all`: decode every value too.
    """
    path = delivery.path
    if not path.is_file():
        raise ContractError([Violation(str(path), None, "file present", missing_file_detail(path) + f" (listed in {delivery.listed_in})")])
    mapping = delivery.mapping
    unknown = unknown_columns(mapping, contract, str(path))
    if unknown:
        raise ContractError(unknown)
    present = set(_native_columns(delivery))
    needed = [m.source for m in effective_columns(mapping, contract) if m.source] + list(mapping.rows)
    missing = [c for c in dict.fromkeys(needed) if c not in present]
    if missing:
        raise ContractError(
            [Violation(str(path), c, "column present", f"the mapping {mapping.name} v{mapping.version} reads this column, and the file has none of that name; "
                       "correct the header or the mapping's `from:`") for c in missing]  # fmt: skip
        )
    native = scan_native(path, delivery.format)
    try:
        if read_all:
            # Every field of every row, the provider's extra columns too: a row with more fields than
            # the header is only found when the whole width is parsed (Polars reads only the columns
            # a query needs).
            native.select(pl.all().null_count()).collect()
        violations = problems(native, mapping, contract, str(path))
        canonical = to_canonical(native, mapping, contract)
        if not violations:
            violations = [_in_provider_terms(v, mapping) for v in check_frame(canonical, contract, str(path), read_all=read_all)]
    except (pl.exceptions.PolarsError, OSError, pa.ArrowException) as exc:
        raise ContractError(
            [Violation(str(path), None, f"readable {delivery.format}", f"the file cannot be read to the end ({type(exc).__name__}: a damaged or truncated file, a row with too many fields, or text that is not UTF-8); export or copy it again")]
        ) from None
    if violations:
        raise ContractError(violations)
    return canonical


def scan_delivery_as_contract(delivery: Delivery, contract: Contract) -> pl.LazyFrame:
    """A delivery's rows, lazily, with the contract's columns and types, through its mapping.
    Nothing is checked: `scan_delivery` checks first."""
    return to_canonical(scan_native(delivery.path, delivery.format), delivery.mapping, contract)


def _in_provider_terms(v: Violation, mapping: Mapping) -> Violation:
    """A contract violation named by the provider's column, with the contract's beside it."""
    m = mapping.columns.get(v.column or "")
    if m is None or m.source is None or m.source == v.column:
        return v
    return Violation(v.file, f"{m.source} (contract column {v.column})", v.rule, v.detail)


def delivery_for_file(path: Path, mapping_file: str, dataset: str, fmt: str | None = None) -> Delivery:
    """A single file checked with a mapping (`pipeline check DATASET FILE --mapping M`)."""
    mapping = load_mapping(mapping_path(mapping_file, Path.cwd()))
    if mapping.dataset != dataset:
        raise ContractError([Violation(mapping_file, None, "mapping dataset", f"the mapping is for {mapping.dataset!r}, not {dataset!r}")])
    fmt = fmt or format_of(path) or "parquet"
    return Delivery(dataset, Path(path), fmt, mapping, "--mapping")
