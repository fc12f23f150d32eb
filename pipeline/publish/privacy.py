"""Privacy checks every release must pass before it is published, and again in `pipeline audit`.

Each check is a named rule (`RULES`); the manifest and the audit page list every rule with its
result. Messages name the file, column and rule and say what to do; they never hold a value.

Why names are stopped by the contract, not by a list of names. Publish code never reads `raw/`
(only the key holder's tasks may), so it cannot compare release values with the names in the
extracts, and the pseudonymise stage must not hand names on either: a list of names would itself be
a file of identifiers outside `raw/`. Instead every string column of a release table must be
constrained by its contract, with `allowed` values or a strict `pattern` (one that accepts no
plain word, checked against `NAME_PROBES`), and every value must meet that constraint. A free-text
column, the only place a name could hide, then cannot exist. NHS numbers and postcodes are also
searched for anywhere inside a value, so a pattern cannot smuggle one in either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.cohort.outputs import RELEASE_TABLES
from pipeline.contracts import Column, Contract, load_contract
from pipeline.errors import Violation
from pipeline.publish import disclosure
from pipeline.publish.identifiers import (
    nhs_number_like_count,
    nhs_number_like_numbers,
    postcode_like_expr,
    text_identifier_counts,
)

FORBIDDEN_CLASSES = ("direct_identifier", "token")
DATE_OF_BIRTH_NAME = re.compile(r"(?i)(birth|(^|_)dob($|_))")
STUDY_ID_PATTERN = r"^S[0-9a-f]{16}$"
# A generalised quasi-identifier has few levels: bands, quintiles, a handful of categories.
MAX_QUASI_IDENTIFIER_LEVELS = 20
# A pattern that fully matches any of these accepts a plain word, so it could carry a name.
NAME_PROBES: tuple[str, ...] = (
    "SMITH", "Smith", "smith", "ANN", "Ann", "ann", "LI", "Li", "MARY SMITH", "Mary Smith",
    "O'BRIEN", "SMITH-JONES", "Zoë",
)  # fmt: skip
# Files a release may hold besides its tables: manifest, dictionary and reference tables (text, scanned
# for identifiers) and images such as the love plot (artefacts). The signature and the per-run files
# (pipeline.publish.signing: signature.json, provenance.json) are JSON, so they are scanned too; they
# hold hex, never base64, so no postcode-like string can appear in them by chance.
TEXT_SUFFIXES = (".json", ".md", ".csv", ".svg")
BINARY_SUFFIXES = (".png", ".pdf")
INTEGER_TYPES = ("int8", "int16", "int32", "int64")
# Release string columns whose contract did not constrain them when this check arrived: reported as a
# warning (in the manifest and on the audit page) instead of blocking, and only while their contract
# still lacks `allowed` or a strict `pattern`. Remove an entry once its contract constrains the column;
# never add one (tests/test_governance.py holds every other release string column to the rule).
AWAITING_CONTRACT_CONSTRAINT: frozenset[tuple[str, str]] = frozenset({("balance", "sample"), ("balance", "covariate")})

RULES: dict[str, str] = {
    "release files": "every release table is present, and the release holds no file it does not declare",
    "no identifier or token column": "no column of class direct_identifier or token, and no column outside the contract",
    "no date of birth": "no column that holds a date of birth",
    "string columns constrained": (
        "every string column has allowed values or a strict pattern in its contract, so no free text (and no name) can be released"
    ),
    "string values as the contract allows": "every string value is one of the contract's allowed values or matches its pattern in full",
    "no NHS-number-like value": "no value anywhere holds ten digits that pass the NHS number check (Modulus 11)",
    "no postcode-like value": "no value anywhere looks like a UK postcode",
    "study IDs well-formed and unique": "study IDs have the release format (S and 16 hex digits) and each appears once in the cohort",
    "study IDs are not tokens": "no study ID equals a linkage token or internal participant key",
    "quasi-identifiers generalised": "quasi-identifiers are bands or small categories (at most 20 levels), never dates",
    "quasi-identifier groups large enough": (
        f"in every row-level table, each combination of all its quasi-identifiers (a withheld value counting as one) "
        f"describes at least {disclosure.MIN_GROUP_SIZE} people"
    ),
    "continuous values at release precision": "costs, propensity scores and other continuous values are no finer than their contract's precision",
    "aggregate counts disclosure-controlled": disclosure.RULE_TEXT,
}


@dataclass
class PrivacyReport:
    """What the checks found: violations block publication, warnings are shown for review."""

    violations: list[tuple[str, Violation]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    quasi_identifiers: dict[str, Any] = field(default_factory=dict)
    tokens_checked: bool = False

    def fail(self, rule: str, file: str, column: str | None, detail: str) -> None:
        self.violations.append((rule, Violation(file, column, rule, detail)))

    def warn(self, rule: str, text: str) -> None:
        self.warnings.append((rule, text))

    @property
    def blocking(self) -> list[Violation]:
        return [v for _, v in self.violations]

    def status(self, rule: str) -> str:
        if any(r == rule for r, _ in self.violations):
            return "failed"
        if rule == "study IDs are not tokens" and not self.tokens_checked:
            return "not checked here"
        return "passed with warnings" if any(r == rule for r, _ in self.warnings) else "passed"

    def to_json(self) -> dict[str, Any]:
        """The manifest's `privacy` section: rules, results and counts, never a value."""
        return {
            "rules": [{"rule": r, "checks": text, "result": self.status(r)} for r, text in RULES.items()],
            "violations": [str(v) for v in self.blocking],
            "warnings": [f"{r}: {text}" for r, text in self.warnings],
            "quasi_identifiers": self.quasi_identifiers,
            "suppression_threshold": disclosure.SUPPRESSION_THRESHOLD,
            "min_group_size": disclosure.MIN_GROUP_SIZE,
        }


def is_strict_pattern(pattern: str) -> bool:
    """True when the pattern, matched in full, accepts none of `NAME_PROBES`."""
    compiled = re.compile(f"^(?:{pattern})$")
    return not any(compiled.match(probe) for probe in NAME_PROBES)


def assess_release_privacy(release_dir: Path, token_files: list[tuple[str, Path]] | None = None) -> PrivacyReport:
    """Run every rule on a (staged or published) release folder.

    `token_files` lists (contract name, file) pairs, such as ("pseudo_persons", persons.parquet),
    whose token columns study IDs must differ from. Publication passes them; `pipeline audit`,
    which sees only the release, cannot, and the rule then reads "not checked here".
    """
    release_dir = Path(release_dir)
    report = PrivacyReport()
    _check_files(release_dir, report)
    values = _study_values(release_dir)
    for table in RELEASE_TABLES:
        path = release_dir / f"{table}.parquet"
        if path.exists():
            contract = load_contract(table)
            if contract.study_values and values is not None:
                contract = contract.for_study(values)
            _check_table(path, contract, report)
    if token_files:
        _check_not_tokens(release_dir, token_files, report)
        report.tokens_checked = True
    return report


def _study_values(release_dir: Path) -> dict[str, Any] | None:
    """The study values the release's contracts were bound to, from its manifest (pipeline.study's
    manifest record); None when there is none, and the study-given rules then fail as unconstrained."""
    import json

    manifest = release_dir / "manifest.json"
    try:
        return json.loads(manifest.read_text())["study"]["values"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_release_privacy(release_dir: Path, token_files: list[tuple[str, Path]] | None = None) -> list[Violation]:
    """The violations only: empty means the release may be published."""
    return assess_release_privacy(release_dir, token_files).blocking


# ---------------------------------------------------------------------------------------------------
# Files


def _check_files(release_dir: Path, report: PrivacyReport) -> None:
    rule = "release files"
    for table in RELEASE_TABLES:
        if not (release_dir / f"{table}.parquet").exists():
            report.fail(rule, f"{table}.parquet", None, "the release table is missing; rebuild the release")
    for path in sorted(release_dir.iterdir()):
        name = path.name
        if path.is_dir():
            report.fail(rule, name, None, "a release holds files only, not folders; remove it and republish")
        elif path.suffix == ".parquet":
            if path.stem not in RELEASE_TABLES:
                report.fail(rule, name, None, "not a release table (pipeline.cohort.outputs.RELEASE_TABLES); no contract says what it may hold")
        elif path.suffix in TEXT_SUFFIXES:
            counts = text_identifier_counts(path.read_text(errors="replace"))
            if counts["nhs_number"]:
                report.fail("no NHS-number-like value", name, None, f"{counts['nhs_number']} NHS-number-like value(s) in the text")
            if counts["postcode"]:
                report.fail("no postcode-like value", name, None, f"{counts['postcode']} postcode-like value(s) in the text")
        elif path.suffix not in BINARY_SUFFIXES:
            allowed = ", ".join((".parquet", *TEXT_SUFFIXES, *BINARY_SUFFIXES))
            report.fail(rule, name, None, f"files of type {path.suffix or '(none)'} are not released; allowed: {allowed}")


# ---------------------------------------------------------------------------------------------------
# One table


def _check_table(path: Path, contract: Contract, report: PrivacyReport) -> None:
    lf = pl.scan_parquet(path)
    schema = lf.collect_schema()
    declared = set(contract.column_names)
    for name in schema.names():
        if name not in declared:
            what = "the release contract does not declare this column; columns outside it are never published"
            report.fail("no identifier or token column", path.name, name, what)
        elif contract.column(name).column_class in FORBIDDEN_CLASSES:
            what = f"class {contract.column(name).column_class} may not be released; drop it in stage_release"
            report.fail("no identifier or token column", path.name, name, what)
        if DATE_OF_BIRTH_NAME.search(name):
            report.fail("no date of birth", path.name, name, "a date of birth may not be released; release an age band instead")
    present = [c for c in contract.columns if c.name in schema.names()]
    for c in contract.columns:
        _check_contract_column(contract, c, report)
    _check_values(lf, path.name, present, schema, report)
    _check_study_ids(lf, path.name, contract, present, report)
    _check_groups(lf, path.name, contract, present, report)
    _check_precision(lf, path.name, contract, present, report)
    _check_counts(lf, path.name, contract, present, report)


def _check_contract_column(contract: Contract, c: Column, report: PrivacyReport) -> None:
    """Rules about what the contract lets a column hold, whatever the file holds today."""
    where = f"schemas/{contract.name}.yaml"
    if c.type == "string" and c.allowed is None and not (c.pattern and is_strict_pattern(c.pattern)):
        what = "its pattern accepts a plain word" if c.pattern else "it has neither allowed values nor a pattern"
        if (contract.name, c.name) in AWAITING_CONTRACT_CONSTRAINT:
            report.warn("string columns constrained", f"{where}, column {c.name}: {what}; add allowed values or a strict pattern")
        else:
            detail = f"{what}, so free text (a name) could be released; add allowed values or a strict pattern"
            report.fail("string columns constrained", where, c.name, detail)
    if c.column_class == "quasi_identifier":
        levels = len(c.allowed) if c.allowed is not None else None
        if levels is None and c.type in INTEGER_TYPES and c.min is not None and c.max is not None:
            levels = int(c.max) - int(c.min) + 1
        if c.type == "date" or levels is None or levels > MAX_QUASI_IDENTIFIER_LEVELS:
            report.fail(
                "quasi-identifiers generalised", where, c.name,
                f"a quasi-identifier must be released as bands or categories of at most {MAX_QUASI_IDENTIFIER_LEVELS} levels "
                "(allowed values, or an integer min-max range)",
            )


def _check_values(lf: pl.LazyFrame, file: str, present: list[Column], schema: Any, report: PrivacyReport) -> None:
    """One pass over the table: string values against the contract, NHS numbers and postcodes anywhere.

    Columns the contract does not declare (already a violation) are scanned too, so the message says
    what they hold.
    """
    declared = {c.name: c for c in present}
    exprs: list[pl.Expr] = []
    checks: list[tuple[str, str, str]] = []  # (rule, column, detail template)
    for name, dtype in schema.items():
        if dtype.is_numeric():
            # An NHS number stored as a number is still an NHS number.
            exprs.append(nhs_number_like_numbers(name))
            checks.append(("no NHS-number-like value", name, "{n} value(s) are a valid NHS number stored as a number"))
        if dtype != pl.String:
            continue
        c, col = declared.get(name), pl.col(name)
        if c is not None and c.allowed is not None:
            outside = col.is_not_null() & ~col.is_in(pl.Series([str(v) for v in c.allowed]).implode())
            exprs.append(outside.sum())
            checks.append(("string values as the contract allows", name, "{n} value(s) are not among the contract's allowed values"))
        elif c is not None and c.pattern is not None:
            exprs.append((col.is_not_null() & ~col.str.contains(f"^(?:{c.pattern})$")).sum())
            checks.append(("string values as the contract allows", name, "{n} value(s) do not match the contract's pattern"))
        exprs.append(postcode_like_expr(name).sum())
        checks.append(("no postcode-like value", name, "{n} value(s) look like a UK postcode"))
        # Study IDs are random hex under the strict format check; a digit run in one is chance.
        if c is None or c.column_class != "key":
            exprs.append(nhs_number_like_count(name))
            checks.append(("no NHS-number-like value", name, "{n} value(s) hold a valid NHS number"))
    if not exprs:
        return
    counts = lf.select([e.alias(f"c{i}") for i, e in enumerate(exprs)]).collect(engine="streaming").row(0)
    for (rule, column, detail), n in zip(checks, counts, strict=True):
        if n:
            report.fail(rule, file, column, detail.format(n=int(n)) + "; rebuild the release from a fixed cohort stage")


def _check_study_ids(lf: pl.LazyFrame, file: str, contract: Contract, present: list[Column], report: PrivacyReport) -> None:
    rule = "study IDs well-formed and unique"
    for c in present:
        if c.column_class != "key":
            continue
        col = pl.col(c.name)
        row = lf.select(
            (col.is_null() | ~col.cast(pl.String).str.contains(STUDY_ID_PATTERN)).sum().alias("malformed"),
            (col.len() - col.n_unique()).alias("repeats"),
        ).collect(engine="streaming").row(0, named=True)
        if row["malformed"]:
            report.fail(rule, file, c.name, f"{row['malformed']} study ID(s) are not S followed by 16 hex digits")
        # Only a table keyed by the study ID alone (the cohort) has one row per person.
        if tuple(contract.primary_key) == (c.name,) and row["repeats"]:
            report.fail(rule, file, c.name, f"{row['repeats']} study ID(s) repeat; the table must have one row per participant")


def _check_groups(lf: pl.LazyFrame, file: str, contract: Contract, present: list[Column], report: PrivacyReport) -> None:
    """k-anonymity of a row-level table over ALL its quasi-identifiers: the fewest people (distinct
    study IDs) sharing one combination. Null is grouped as a value of its own, so withholding a value
    can only merge a group into another, never take it out of the count."""
    rule = "quasi-identifier groups large enough"
    qi = [c.name for c in present if c.column_class == "quasi_identifier"]
    keys = [c.name for c in present if c.column_class == "key"]
    if not qi or not keys:
        return
    minimum = disclosure.MIN_GROUP_SIZE
    groups = lf.group_by(qi).agg(pl.col(keys[0]).n_unique().alias("people")).select(
        pl.len().alias("groups"),
        pl.col("people").min().alias("smallest_group"),
        (pl.col("people") < minimum).sum().alias("groups_below_minimum"),
        pl.col("people").filter(pl.col("people") < minimum).sum().alias("people_in_small_groups"),
    ).collect(engine="streaming").row(0, named=True)
    found = {k: int(v or 0) for k, v in groups.items()}
    report.quasi_identifiers[contract.name] = {"columns": qi, **found}
    if found["groups_below_minimum"]:
        report.fail(
            rule, file, ", ".join(qi),
            f"{found['groups_below_minimum']} group(s) describe fewer than {minimum} people (smallest: {found['smallest_group']}); "
            "set the run setting small_groups to 'suppress' (withhold those rows' quasi-identifiers) or 'coarsen' (merge age bands "
            "and IMD quintiles) so that stage_release protects them (pipeline run --small-groups), or generalise the column in its contract",
        )


def _check_precision(lf: pl.LazyFrame, file: str, contract: Contract, present: list[Column], report: PrivacyReport) -> None:
    rule = "continuous values at release precision"
    rules = {c.name: r for c in present if (r := disclosure.declared_precision(contract.name).get(c.name))}
    if not rules:
        return
    row = lf.select([disclosure.imprecise_expr(c, r).sum().alias(c) for c, r in rules.items()]).collect(engine="streaming").row(0, named=True)
    for column, n in row.items():
        if n:
            what = f"{n} value(s) are finer than {disclosure.precision_text(rules[column])}; publish through stage_release, which rounds them"
            report.fail(rule, file, column, what)


def _check_counts(lf: pl.LazyFrame, file: str, contract: Contract, present: list[Column], report: PrivacyReport) -> None:
    rule = "aggregate counts disclosure-controlled"
    declared = disclosure.declared_disclosure(contract.name)
    aggregate = not contract.columns_of_class("key")
    for c in contract.columns:
        if aggregate and c.type in INTEGER_TYPES and c.name not in declared:
            what = "an integer column of an aggregate table must declare `disclosure: count` or `disclosure: not_a_count`"
            report.fail(rule, f"schemas/{contract.name}.yaml", c.name, what)
        if declared.get(c.name) == disclosure.COUNT and c.type not in INTEGER_TYPES:
            report.fail(rule, f"schemas/{contract.name}.yaml", c.name, "a count column must have an integer type")
    counts = [c.name for c in present if declared.get(c.name) == disclosure.COUNT and c.type in INTEGER_TYPES]
    if counts:
        row = lf.select([disclosure.uncontrolled_expr(c).sum().alias(c) for c in counts]).collect(engine="streaming").row(0, named=True)
        for column, n in row.items():
            if n:
                what = f"{n} count(s) are not suppressed or rounded; publish through stage_release, which applies the control"
                report.fail(rule, file, column, what)


# ---------------------------------------------------------------------------------------------------
# Study IDs against tokens


# The shape of a token column's values where its contract gives no pattern: a block number's digits.
_TOKEN_SHAPES: dict[str, str] = {"int64": "-?[0-9]+", "int32": "-?[0-9]+"}


def _check_not_tokens(release_dir: Path, token_files: list[tuple[str, Path]], report: PrivacyReport) -> None:
    ids = []
    for table in RELEASE_TABLES:
        path = release_dir / f"{table}.parquet"
        if not path.exists():
            continue
        names = pl.scan_parquet(path).collect_schema().names()
        for c in load_contract(table).columns_of_class("key"):
            if c.name in names:
                ids.append(pl.scan_parquet(path).select(pl.col(c.name).cast(pl.String).alias("id")))
    if not ids:
        return
    # The study IDs are few (one per participant); the token files hold millions of blocks. So the
    # study IDs are gathered once (streamed: the key columns of every table are many rows, the panel
    # has one a person-month, their distinct values one a participant), and each token column that
    # could hold one of them is streamed past that set.
    all_ids = pl.concat(ids).unique().collect(engine="streaming").get_column("id")
    for contract_name, path in token_files:
        names = pl.scan_parquet(path).collect_schema().names()
        contract = load_contract(contract_name)
        columns = [c for c in contract.columns_of_class("token") if c.name in names]
        scan = pl.scan_parquet(path)
        for c in columns:
            # Only a study ID of the column's shape can equal one of its values: the shape its contract
            # gives (`pattern`, which validate_pseudonymised checked on every row before any release
            # could be staged; a block number's digits). Study IDs as the release derives them ('S' and
            # 16 hex digits) have no token's shape, so the 64-character tokens are not read for them
            # (48 million record tokens at 1 million people: most of this check's 25 s). A study ID
            # that has the shape is looked up in every row of the column.
            shape = _TOKEN_SHAPES.get(c.type, c.pattern)
            candidates = all_ids if shape is None else all_ids.filter(all_ids.str.contains(f"^(?:{shape})$"))
            if candidates.is_empty():
                continue
            # A list column (token spec v3's near-miss tokens) is looked up element by element.
            value = pl.col(c.name).explode() if c.type == "list[string]" else pl.col(c.name).cast(pl.String)
            # A sum streams in constant memory; the study IDs found are counted only where there are some.
            # One column a query: a token file's row group is decoded a column at a time, not 18 at once.
            if not scan.select(value.is_in(candidates.implode()).sum()).collect(engine="streaming").item():
                continue
            found = scan.select(value.alias(c.name)).filter(pl.col(c.name).is_in(candidates.implode()))
            n = found.select(pl.col(c.name).n_unique()).collect(engine="streaming").item()
            what = f"{n} study ID(s) equal a value of this token column; study IDs must come from the release derivation"
            report.fail("study IDs are not tokens", path.name, c.name, what)


__all__ = ["RULES", "PrivacyReport", "assess_release_privacy", "check_release_privacy", "is_strict_pattern"]
