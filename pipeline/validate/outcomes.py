"""What a validation found, per file and per zone, in counts and words: never a value.

GX gives one result per batch; a file read in several batches gets its results combined here, so
the summary speaks of files. The same records feed the JSON summary and the ValidationFailed
message.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.errors import ValidationFailed


@dataclass(frozen=True)
class Failure:
    """One failed expectation of one file."""

    zone: str
    dataset: str
    file: str
    column: str | None
    expectation: str
    severity: str
    rule: str
    unexpected_count: int | None
    could_not_evaluate: bool = False
    # Rows the rule was checked on (not null) and the rule's `mostly` (the share that must meet it;
    # None for "every row"), so the audit page can set the share breaking it against its threshold.
    checked_count: int | None = None
    mostly: float | None = None

    def sentence(self) -> str:
        where = f"dataset {self.dataset}, file {self.file}" + (f", column {self.column}" if self.column else "")
        if self.could_not_evaluate:
            found = "could not be evaluated (check the column exists and has the contract's type)"
        elif self.unexpected_count is not None:
            found = f"{self.unexpected_count} row(s) break it"
        else:
            found = "the file does not meet it"
        return f"{where}: {self.expectation} failed [{self.severity}], rule: {self.rule}; {found}"


@dataclass
class FileOutcome:
    """Every expectation of one file, combined over its batches."""

    zone: str
    dataset: str
    file: str
    path: str
    rows: int
    batches: list[str]
    evaluated: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def critical(self) -> list[Failure]:
        return [f for f in self.failures if f.severity == "critical"]

    @property
    def warnings(self) -> list[Failure]:
        return [f for f in self.failures if f.severity != "critical"]

    def to_json(self) -> dict[str, Any]:
        """The file's entry in the summary: only what the data decides (no paths or timings)."""
        return {
            "file": self.file,
            "rows": self.rows,
            "batches": self.batches,
            "success": not self.critical,
            "evaluated_expectations": self.evaluated,
            "failed_expectations": len(self.failures),
            "failed_critical": len(self.critical),
            "failed_warning": len(self.warnings),
            "failures": [_failure_json(f) for f in self.failures],
        }


def _failure_json(f: Failure) -> dict[str, Any]:
    d = asdict(f)
    d.pop("zone")
    return d


def column_label(expectation_type: str, kwargs: dict[str, Any]) -> str | None:
    """The column(s) an expectation is about, as words; None for a table-level expectation."""
    if expectation_type.startswith("expect_table_"):
        return None  # its column_list is the whole table's, not the subject of a rule
    if "column" in kwargs:
        return str(kwargs["column"])
    if "column_A" in kwargs:
        return f"{kwargs['column_A']}, {kwargs['column_B']}"
    if "column_list" in kwargs:
        return ", ".join(kwargs["column_list"])
    return None


def _key(config: Any) -> str:
    kwargs = {k: v for k, v in config.to_json_dict()["kwargs"].items() if k != "batch_id"}
    return json.dumps([config.type, kwargs], sort_keys=True, default=str)


def _combined_success(kwargs: dict[str, Any], results: list[Any]) -> bool:
    mostly = kwargs.get("mostly")
    if mostly is None or mostly >= 1 or any(r.exception_info.get("raised_exception") for r in results):
        return all(r.success for r in results)
    # `mostly` is a share of the whole file, so it is judged on the summed counts, not per batch.
    unexpected = sum(r.result.get("unexpected_count", 0) for r in results)
    checked = sum(r.result.get("element_count", 0) - r.result.get("missing_count", 0) for r in results)
    return checked == 0 or unexpected <= (1 - mostly) * checked


def add_results(outcome: FileOutcome, suite_results: list[Any]) -> None:
    """Fold the (scrubbed) GX results of a file's batches into `outcome`."""
    by_expectation: dict[str, list[Any]] = {}
    for suite_result in suite_results:
        for r in suite_result.results:
            by_expectation.setdefault(_key(r.expectation_config), []).append(r)
    for results in by_expectation.values():
        config = results[0].expectation_config
        kwargs = config.kwargs
        outcome.evaluated += 1
        if _combined_success(kwargs, results):
            continue
        counts = [r.result.get("unexpected_count") for r in results]
        raised = any(r.exception_info.get("raised_exception") for r in results)
        outcome.failures.append(
            Failure(
                zone=outcome.zone,
                dataset=outcome.dataset,
                file=outcome.file,
                column=column_label(config.type, kwargs),
                expectation=config.type,
                severity=(config.meta or {}).get("severity", "critical"),
                rule=(config.meta or {}).get("rule", config.type),
                unexpected_count=None if raised or all(c is None for c in counts) else sum(c or 0 for c in counts),
                could_not_evaluate=raised,
                checked_count=None if raised else sum(r.result.get("element_count", 0) - r.result.get("missing_count", 0) for r in results) or None,
                mostly=kwargs.get("mostly"),
            )
        )


def raise_if_blocking(zone: str, run_name: str, outcomes: list[FileOutcome], summary_path: str, docs_index: str) -> None:
    """Raise ValidationFailed naming every critical failure and what to do; warnings never raise."""
    critical = [f for o in outcomes for f in o.critical]
    if not critical:
        return
    lines = [
        f"Validation of zone '{zone}' (run {run_name}) failed: {len(critical)} critical expectation(s) failed, "
        "so publication is blocked."
    ]
    lines += [f"  - {f.sentence()}" for f in critical]
    warnings = sum(len(o.warnings) for o in outcomes)
    if warnings:
        lines.append(f"{warnings} warning(s), which do not block, are listed in the summary.")
    lines.append(
        "What to do: fix the extract (or the pipeline step that wrote these files) and rerun. "
        f"Counts per file are in {summary_path}; the Data Docs are at {docs_index}. Neither shows data values."
    )
    raise ValidationFailed("\n".join(lines))
