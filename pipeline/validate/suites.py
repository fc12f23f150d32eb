"""Expectation suites: structural ones derived from the data contracts, business ones checked in.

Every expectation carries `meta` = {"severity": "critical" | "warning", "rule": <one line in words>,
"source": "contract" | "business"}; the runner blocks publication on critical failures only.

    >>> suite = validation_suite("hospital_apc")
    >>> suite.expectations[0].expectation_type
    'expect_table_columns_to_match_ordered_list'

The structural suites are also checked in, under `expectations/structural/`, so a reviewer sees in
a diff what a contract change does to validation; a test fails when they drift from the contracts.
Regenerate them with `python -m pipeline.validate.suites`.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.contracts import Column, Contract, all_contract_names, load_contract
from pipeline.settings import SOURCES
from pipeline.validate._gx import ExpectationConfiguration, gx
from pipeline.validate.parameters import check_known, parameter_names
from pipeline.zones import payload_contract

EXPECTATIONS_DIR = Path(__file__).resolve().parents[2] / "expectations"
STRUCTURAL_DIR = EXPECTATIONS_DIR / "structural"
REGENERATE_COMMAND = "python -m pipeline.validate.suites  (pipeline.validate.suites.write_structural_suites)"
SEVERITIES = ("critical", "warning")
PAYLOAD_SUFFIX = "_payload"
QUARANTINE_SUFFIX = "_quarantine"
# Datasets whose rows the pseudonymise stage can set aside in raw/quarantine/<label>/.
QUARANTINED_DATASETS: tuple[str, ...] = ("consent_register", *SOURCES)
QUARANTINE_REASON = Column(
    name="quarantine_reason",
    type="string",
    nullable=False,
    column_class="payload",
    description="Why the pseudonymise stage set the row aside instead of using it.",
)

E = gx.expectations


# ---------------------------------------------------------------------------------------------------
# Which contract a dataset name stands for


def validated_contract(dataset: str) -> Contract:
    """The contract a dataset is validated against.

    `<source>_payload` is the pseudonymised payload; `<dataset>_quarantine` is the rows of an
    extract set aside in raw/quarantine/, as delivered plus the reason they were set aside.
    """
    if dataset.endswith(PAYLOAD_SUFFIX) and dataset.removesuffix(PAYLOAD_SUFFIX) in SOURCES:
        return payload_contract(dataset.removesuffix(PAYLOAD_SUFFIX))
    if dataset.endswith(QUARANTINE_SUFFIX) and dataset.removesuffix(QUARANTINE_SUFFIX) in QUARANTINED_DATASETS:
        base = load_contract(dataset.removesuffix(QUARANTINE_SUFFIX))
        return Contract(
            name=dataset,
            zone="raw",
            description=f"Rows of {base.name} set aside by the pseudonymise stage, with the reason. {base.description}",
            primary_key=base.primary_key,
            columns=(*base.columns, QUARANTINE_REASON),
        )
    return load_contract(dataset)


def validated_dataset_names() -> list[str]:
    """Every dataset name `validate_files` accepts: each contract, each source's payload, each quarantine."""
    return (
        all_contract_names()
        + [f"{s}{PAYLOAD_SUFFIX}" for s in SOURCES]
        + [f"{d}{QUARANTINE_SUFFIX}" for d in QUARANTINED_DATASETS]
    )


def _business_file_dataset(dataset: str) -> str | None:
    """Payload files share the business rules of their source (those whose columns they keep).

    Quarantine files get none: their rows are not used, and a rule they break is why they are there.
    """
    if dataset.endswith(QUARANTINE_SUFFIX) and dataset.removesuffix(QUARANTINE_SUFFIX) in QUARANTINED_DATASETS:
        return None
    return dataset.removesuffix(PAYLOAD_SUFFIX) if dataset.endswith(PAYLOAD_SUFFIX) else dataset


# ---------------------------------------------------------------------------------------------------
# Structural suites, from the contract


def _meta(rule: str) -> dict[str, str]:
    return {"severity": "critical", "rule": rule, "source": "contract"}


def _bound(column: Column, value: Any) -> Any:
    # Date bounds are compared as dates: a string bound would not compare with a date column.
    if column.type == "date" and not isinstance(value, dt.date):
        return dt.date.fromisoformat(str(value))
    return value


def _column_expectations(c: Column) -> list[Any]:
    listed = c.type == "list[string]"
    out: list[Any] = [
        # Batches are pandas frames with Arrow-backed dtypes, so the dtype name is the Arrow type. A
        # list column reaches GX as text, its elements in brackets (pipeline.validate.batches).
        E.ExpectColumnTypeToBe(
            column=c.name,
            type_=f"{pa.large_string() if listed else c.arrow_type}[pyarrow]",
            meta=_meta(f"{c.name} has type {c.type}" + (" (seen by validation as [element element ...])" if listed else "")),
            severity="critical",
        )
    ]
    if not c.nullable:
        out.append(E.ExpectColumnValuesToNotBeNull(column=c.name, meta=_meta(f"{c.name} is never missing"), severity="critical"))
    refs = dict(c.study_refs)
    if "allowed" in refs:
        # The study gives the values at run time (pipeline.validate.parameters): no study's values here.
        out.append(
            E.ExpectColumnValuesToBeInSet(
                column=c.name,
                value_set={"$PARAMETER": refs["allowed"]},
                meta=_meta(f"{c.name} is one of the study's {refs['allowed'].replace('_', ' ')} (run parameter {refs['allowed']})"),
                severity="critical",
            )
        )
    if c.allowed is not None:
        out.append(
            E.ExpectColumnValuesToBeInSet(
                column=c.name,
                value_set=list(c.allowed),
                meta=_meta(f"{c.name} is one of {', '.join(str(v) for v in c.allowed)}"),
                severity="critical",
            )
        )
    if c.pattern is not None:
        out.append(
            E.ExpectColumnValuesToMatchRegex(
                column=c.name,
                # Anchored so the whole value must match, as the contract says (not just a prefix); a
                # list column: one or more elements, every one matching.
                regex=rf"^\[(?:{c.pattern})(?: (?:{c.pattern}))*\]$" if listed else f"^(?:{c.pattern})$",
                meta=_meta(f"{c.name} {'is a list of one or more elements each matching' if listed else 'matches'} the pattern {c.pattern} in full"),
                severity="critical",
            )
        )
    if c.min is not None or c.max is not None or "min" in refs or "max" in refs:
        low = {"$PARAMETER": refs["min"]} if "min" in refs else None if c.min is None else _bound(c, c.min)
        high = {"$PARAMETER": refs["max"]} if "max" in refs else None if c.max is None else _bound(c, c.max)
        shown = {"min": refs.get("min", low), "max": refs.get("max", high)}
        words = " and ".join(w for w in (low is not None and f">= {shown['min']}", high is not None and f"<= {shown['max']}") if w)
        out.append(
            E.ExpectColumnValuesToBeBetween(
                column=c.name, min_value=low, max_value=high, meta=_meta(f"{c.name} is {words}"), severity="critical"
            )
        )
    if c.unique:
        out.append(E.ExpectColumnValuesToBeUnique(column=c.name, meta=_meta(f"no two rows share a {c.name}"), severity="critical"))
    return out


def structural_suite(contract: Contract) -> gx.ExpectationSuite:
    """The contract as expectations: ordered columns, then per column type, nulls, values and range."""
    expectations: list[Any] = [
        E.ExpectTableColumnsToMatchOrderedList(
            column_list=contract.column_names,
            meta=_meta(f"the file has exactly the {len(contract.columns)} columns of the {contract.name} contract, in its order"),
            severity="critical",
        )
    ]
    for c in contract.columns:
        expectations += _column_expectations(c)
    return gx.ExpectationSuite(
        name=f"{contract.name}.structural",
        expectations=expectations,
        meta={"contract": contract.name, "generated_by": "pipeline.validate.suites.structural_suite"},
    )


# ---------------------------------------------------------------------------------------------------
# Business suites, checked in as expectations/<dataset>.json


def expectation_columns(kwargs: dict[str, Any]) -> list[str]:
    """Every column an expectation reads, its row condition included."""
    cols = [kwargs[k] for k in ("column", "column_A", "column_B") if k in kwargs]
    cols += list(kwargs.get("column_list", []))
    condition = kwargs.get("row_condition")
    if isinstance(condition, dict) and isinstance(condition.get("column"), dict):
        cols.append(condition["column"]["name"])
    return cols


def _business_expectation(spec: dict[str, Any], where: str) -> Any:
    meta = spec.get("meta") or {}
    severity = meta.get("severity")
    if severity not in SEVERITIES:
        raise ValueError(f"{where}: meta.severity must be one of {SEVERITIES}, got {severity!r}")
    rule = meta.get("rule")
    if not isinstance(rule, str) or not rule.strip() or "\n" in rule:
        raise ValueError(f"{where}: meta.rule must explain the expectation in one line of words")
    if spec.get("severity", severity) != severity:
        raise ValueError(f"{where}: top-level severity disagrees with meta.severity")
    check_known(spec.get("kwargs", {}), where)
    config = ExpectationConfiguration(
        type=spec["type"], kwargs=spec.get("kwargs", {}), meta={**meta, "source": "business"}, severity=severity
    )
    # Built one by one because gx.ExpectationSuite(expectations=...) logs and drops an invalid one.
    return config.to_domain_obj()


def business_suite(dataset: str, expectations_dir: Path = EXPECTATIONS_DIR) -> gx.ExpectationSuite:
    """The checked-in business rules of a dataset (empty when it has none).

    A payload dataset keeps those rules of its source whose columns it still has.
    """
    contract = validated_contract(dataset)
    source = _business_file_dataset(dataset)
    path = Path(expectations_dir) / f"{source}.json"
    expectations: list[Any] = []
    if source is not None and path.exists():
        spec = json.loads(path.read_text())
        for i, item in enumerate(spec.get("expectations", [])):
            where = f"{path.name}, expectation {i + 1} ({item.get('type')})"
            missing = [c for c in expectation_columns(item.get("kwargs", {})) if c not in contract.column_names]
            if missing and source != dataset:
                continue  # a payload file does not carry every column of its source
            if missing:
                raise ValueError(f"{where}: columns {missing} are not in the {contract.name} contract")
            expectations.append(_business_expectation(item, where))
    return gx.ExpectationSuite(name=f"{dataset}.business", expectations=expectations, meta={"dataset": dataset})


def validation_suite(dataset: str, expectations_dir: Path = EXPECTATIONS_DIR) -> gx.ExpectationSuite:
    """Structural then business expectations of a dataset, as one suite named after the dataset."""
    merged: list[Any] = []
    seen: set[str] = set()
    for suite in (structural_suite(validated_contract(dataset)), business_suite(dataset, expectations_dir)):
        for exp in suite.expectations:
            # A business rule may restate a contract rule on purpose (it keeps holding if the
            # contract is relaxed); it is checked once, under the contract's wording.
            key = json.dumps([exp.expectation_type, exp.configuration.to_json_dict()["kwargs"]], sort_keys=True)
            if key not in seen:
                seen.add(key)
                merged.append(exp)
    return gx.ExpectationSuite(name=dataset, expectations=merged, meta={"dataset": dataset})


def suite_parameter_names(dataset: str, expectations_dir: Path = EXPECTATIONS_DIR) -> set[str]:
    """The run parameters (such as study_start) the rules of a dataset need."""
    names: set[str] = set()
    for exp in validation_suite(dataset, expectations_dir).expectations:
        names |= parameter_names(exp.configuration.to_json_dict()["kwargs"])
    return names


# ---------------------------------------------------------------------------------------------------
# Checked-in structural suites and drift


def suite_to_json(suite: gx.ExpectationSuite) -> dict[str, Any]:
    """A stable JSON form: no ids and no GX version, so only a real change shows as a diff."""
    expectations = []
    for exp in suite.expectations:
        config = exp.configuration.to_json_dict()
        expectations.append({k: config[k] for k in ("type", "kwargs", "meta", "severity") if k in config})
    meta = {k: v for k, v in suite.meta.items() if k != "great_expectations_version"}
    return {"name": suite.name, "meta": meta, "expectations": expectations}


def _render(suite: gx.ExpectationSuite) -> str:
    return json.dumps(suite_to_json(suite), indent=2) + "\n"


def _structural_texts() -> dict[str, str]:
    return {name: _render(structural_suite(validated_contract(name))) for name in validated_dataset_names()}


def write_structural_suites(directory: Path = STRUCTURAL_DIR) -> list[Path]:
    """Write `<dataset>.json` for every contract (and payload) and remove files of deleted contracts."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    texts = _structural_texts()
    for stale in directory.glob("*.json"):
        if stale.stem not in texts:
            stale.unlink()
    written = []
    for name, text in texts.items():
        path = directory / f"{name}.json"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        written.append(path)
    return written


def structural_suite_drift(directory: Path = STRUCTURAL_DIR) -> list[str]:
    """One line per checked-in structural suite that no longer matches its contract (none: in sync)."""
    directory = Path(directory)
    texts = _structural_texts()
    problems = []
    for name, text in texts.items():
        path = directory / f"{name}.json"
        if not path.exists():
            problems.append(f"{path.name}: missing (contract {name} has no checked-in structural suite)")
        elif path.read_text() != text:
            problems.append(f"{path.name}: differs from what contract {name} now says")
    for path in sorted(directory.glob("*.json")):
        if path.stem not in texts:
            problems.append(f"{path.name}: no contract of that name any more")
    return problems


if __name__ == "__main__":
    for written in write_structural_suites():
        print(written)
