"""Privacy checks every release must pass before it is published (and again in `pipeline audit`).

- no column of direct-identifier or token class, by contract, and no column that is not in a contract;
- no string value anywhere that looks like a valid NHS number or a UK postcode;
- study IDs well-formed (so never a 64-hex linkage token) and unique in the cohort.

Messages name the file, column and rule and never the offending value.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.cohort.outputs import RELEASE_TABLES
from pipeline.contracts import load_contract
from pipeline.crypto.normalise import nhs_number_expr
from pipeline.errors import Violation

FORBIDDEN_CLASSES = ("direct_identifier", "token")
# Whole-value and embedded forms: a postcode or NHS number hidden inside a longer string counts too.
_POSTCODE_ANYWHERE = r"(?i)\b[A-Z]{1,2}[0-9][0-9A-Z]?\s?[0-9][A-Z]{2}\b"
_TEN_DIGITS_ANYWHERE = r"(?:^|[^0-9])([0-9]{3}[ -]?[0-9]{3}[ -]?[0-9]{4})(?:[^0-9]|$)"


def _identifier_like_counts(lf: pl.LazyFrame, name: str) -> dict[str, int]:
    """Rows of a string column holding a postcode, or ten digits that pass Modulus 11, anywhere in the value."""
    col = pl.col(name)
    embedded = col.str.extract(_TEN_DIGITS_ANYWHERE, 1).str.replace_all(r"[ -]", "").alias("_digits")
    row = (
        lf.select(col.str.contains(_POSTCODE_ANYWHERE).alias("_pc"), embedded)
        .select(pl.col("_pc").sum().alias("postcode"), nhs_number_expr("_digits").is_not_null().sum().alias("nhs_number"))
        .collect()
        .row(0, named=True)
    )
    return {k: int(v) for k, v in row.items()}


def check_release_privacy(release_dir: Path) -> list[Violation]:
    out: list[Violation] = []
    for table in RELEASE_TABLES:
        path = Path(release_dir) / f"{table}.parquet"
        if not path.exists():
            out.append(Violation(str(path), None, "release file present", "the release is incomplete; rebuild it"))
            continue
        contract = load_contract(table)
        lf = pl.scan_parquet(path)
        for name, dtype in lf.collect_schema().items():
            if name not in contract.column_names:
                out.append(Violation(path.name, name, "declared release column", "columns not in the release contract may not be published"))
            elif contract.column(name).column_class in FORBIDDEN_CLASSES:
                out.append(Violation(path.name, name, "no identifier or token column", f"class {contract.column(name).column_class} may not be released"))
            # Study IDs (class key) are random hex under a strict format check below; scanning them for
            # digit runs would only find chance matches.
            is_key = name in contract.column_names and contract.column(name).column_class == "key"
            if dtype == pl.String and not is_key:
                found = _identifier_like_counts(lf, name)
                if found["postcode"]:
                    out.append(Violation(path.name, name, "no postcode-like value", f"{found['postcode']} value(s) look like a UK postcode"))
                if found["nhs_number"]:
                    out.append(Violation(path.name, name, "no NHS-number-like value", f"{found['nhs_number']} value(s) hold a valid NHS number"))
        if table == "cohort" and "study_id" in lf.collect_schema().names():
            ids = lf.select(
                (pl.col("study_id").len() - pl.col("study_id").n_unique()).alias("dupes"),
                (~pl.col("study_id").str.contains(r"^S[0-9a-f]{16}$")).sum().alias("malformed"),
            ).collect().row(0, named=True)
            if ids["dupes"]:
                out.append(Violation(path.name, "study_id", "study IDs unique", f"{ids['dupes']} repeated study ID(s)"))
            if ids["malformed"]:
                out.append(Violation(path.name, "study_id", "study ID format S+16 hex", f"{ids['malformed']} malformed study ID(s)"))
    return out
