"""What `pipeline describe RELEASE_DIR` prints for an economist opening a release.

Per table: its purpose (the contract's description), its rows, the sizes of each matched sample
it holds (from the manifest, disclosure-controlled like every count economists see), the caveats
its contract lists, and its columns with their types; then a short starter script in Python
(Polars) and R (arrow) that reads the release and takes a matched sample with its weights.

Everything comes from the release folder and the contracts in schemas/: nothing here is
recomputed from row-level data except the row counts, which anyone holding the files can see.

    >>> print(describe_release(Path("releases/r1")))  # doctest: +SKIP
    cohort.parquet: 155 rows
      purpose: One row per eligible participant ...
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.errors import ReleaseFolderError, UnknownDatasetError

# Contracts and disclosure load Polars and PyArrow: imported where used, so that a wrong path is
# answered at once.

MANIFEST = "manifest.json"
# The whole-study sample: the one cohort's and panel's matching columns describe.
WHOLE_STUDY_SAMPLE = "all"
# How each figure of a manifest sample reads; a figure not listed here is shown under its own key.
SAMPLE_FIGURES: dict[str, str] = {
    "mdt": "MDT eligible", "comparators": "comparators eligible", "matched_mdt": "MDT matched",
    "matched_comparators": "comparators matched", "unmatched_mdt": "MDT unmatched",
}  # fmt: skip
# The analysis tables first, in the order an analysis uses them; other files after, by name.
TABLE_ORDER: tuple[str, ...] = ("cohort", "outcomes", "service_use", "panel", "matches", "balance")
# Files of a release that are not tables under a contract.
OTHER_FILES: dict[str, str] = {
    "data_dictionary.md": "every column's type, description and rules, with the type policy and each table's caveats",
    "data_dictionary.json": "the data dictionary, one record per table and column, for programs",
    "love_plot.png": "standardised mean differences before and after matching, per covariate and sample",
    "manifest.json": "what the release holds: counts (disclosure-controlled), settings, linkage, hashes of every file",
    "signature.json": "the publisher's signature over the manifest; check it with `pipeline audit`",
    "provenance.json": "who ran the release, when and from where",
}


def read_manifest(release_dir: Path) -> dict[str, Any]:
    """The release's manifest, or a ReleaseFolderError naming the path and what to give instead."""
    release_dir = Path(release_dir)
    if not release_dir.exists():
        raise ReleaseFolderError(f"{release_dir}: rule 'release folder present' broken: no such folder; give a release folder, releases/<label>/ in the work folder")
    if not release_dir.is_dir():
        raise ReleaseFolderError(f"{release_dir}: rule 'release folder present' broken: this is a file; give its folder, releases/<label>/")
    manifest = release_dir / MANIFEST
    if not manifest.is_file():
        labels = sorted(p.name for p in (release_dir / "releases").glob("*") if (p / MANIFEST).is_file())
        hint = (
            f"this looks like a work folder; give one of its releases: {', '.join(f'releases/{label}' for label in labels)}"
            if labels else "give a release folder, releases/<label>/, which holds manifest.json"
        )  # fmt: skip
        raise ReleaseFolderError(f"{release_dir}: rule 'release folder with a manifest' broken: it has no {MANIFEST}; {hint}")
    try:
        return json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise ReleaseFolderError(
            f"{manifest}: rule 'readable manifest' broken: not readable JSON; copy the release again, and check it with `pipeline audit`"
        ) from None


def describe_release(release_dir: Path) -> str:
    """The text `pipeline describe` prints after the release summary (see the module docstring)."""
    release_dir = Path(release_dir)
    manifest = read_manifest(release_dir)
    samples = manifest.get("cohort", {}).get("samples", {})
    dropped = manifest.get("disclosure_control", {}).get("small_groups", {}).get("rows_dropped", {})
    lines: list[str] = []
    files = sorted(manifest.get("files") or [p.name for p in release_dir.iterdir()], key=_reading_order)
    for name in files:
        lines += ["", *_describe_file(release_dir / name, samples, dropped)]
    tables = [Path(n).stem for n in files if n.endswith(".parquet")]
    lines += ["", "starter script, Python (Polars):", *_indented(python_starter(release_dir, tables))]
    lines += ["", "starter script, R (arrow, dplyr):", *_indented(r_starter(release_dir, tables))]
    return "\n".join(lines)


def _reading_order(name: str) -> tuple[int, str]:
    stem = Path(name).stem
    return (TABLE_ORDER.index(stem) if stem in TABLE_ORDER else len(TABLE_ORDER), name)


def _indented(code: str) -> list[str]:
    return [f"    {line}" if line else "" for line in code.splitlines()]


def _describe_file(path: Path, samples: dict[str, dict[str, Any]], dropped: dict[str, Any]) -> list[str]:
    from pipeline.publish.disclosure import SUPPRESSED_TEXT

    contract = _contract_of(path)
    if contract is None:
        return [f"{path.name}: {OTHER_FILES.get(path.name, 'see the manifest')}"]
    lines = [f"{path.name}: {_rows(path)} rows", f"  purpose: {contract.description}"]
    if dropped.get(contract.name, 0) != 0:
        n = dropped[contract.name]
        lines.append(
            f"  left out: about {SUPPRESSED_TEXT if n is None else n} rows of people no withholding of quasi-identifiers "
            "could protect (manifest: disclosure_control.small_groups), so counts of this table can fall short of the manifest's"
        )
    if contract.primary_key:
        lines.append(f"  one row per: {', '.join(contract.primary_key)}")
    names = contract.column_names
    shown = sorted(samples) if "sample" in names else [WHOLE_STUDY_SAMPLE] if "matched_set" in names or "matched" in names else []
    if shown and samples:
        lines.append("  sample sizes (disclosure-controlled: 1-7 hidden, the rest rounded to 5):")
        lines += [f"    {sample}: {_sample_sizes(samples[sample])}" for sample in shown if sample in samples]
    if contract.caveats:
        lines.append("  caveats:")
        lines += [f"    - {c}" for c in contract.caveats]
    lines.append("  columns: " + ", ".join(f"{c.name} ({c.type}{', nullable' if c.nullable else ''})" for c in contract.columns))
    return lines


def _contract_of(path: Path):
    from pipeline.contracts import load_contract

    if path.suffix not in (".parquet", ".csv"):
        return None
    try:
        return load_contract(path.stem)
    except UnknownDatasetError:
        return None


def _rows(path: Path) -> int:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    import polars as pl

    return pl.scan_csv(path).select(pl.len()).collect().item()


def _sample_sizes(figures: dict[str, Any]) -> str:
    from pipeline.publish.disclosure import SUPPRESSED_TEXT

    known = [k for k in SAMPLE_FIGURES if k in figures]
    others = sorted(k for k in figures if k not in SAMPLE_FIGURES and k != "max_abs_smd_after")
    parts = [f"{SAMPLE_FIGURES.get(k, k)} {SUPPRESSED_TEXT if figures[k] is None else figures[k]}" for k in known + others]
    if figures.get("max_abs_smd_after") is not None:
        parts.append(f"largest |SMD| after matching {figures['max_abs_smd_after']:.3f}")
    return ", ".join(parts)


def python_starter(release_dir: Path, tables: list[str]) -> str:
    """A Python (Polars) script that reads every table of the release and takes the whole-study
    matched sample with its weights, and every sample's weights from matches."""
    lines = ["import polars as pl", "", f"release = {str(Path(release_dir).resolve())!r}"]
    lines += [f'{n} = pl.read_parquet(f"{{release}}/{n}.parquet")' for n in tables]
    if {"cohort", "panel", "matches"} <= set(tables):
        lines += [
            "",
            "# The whole-study matched sample and its weights (as MatchIt's match_data), joined to the panel.",
            'matched = cohort.filter(pl.col("matched")).select("study_id", "arm", "matched_set", "match_weight")',
            'panel_matched = panel.drop("arm", "matched_set", "match_weight").join(matched, on="study_id")',
            "# Every sample's weights: one row per sample and participant, the sum of their rows in matches.",
            'weights = matches.group_by("sample", "study_id", "arm").agg(pl.col("weight").sum())',
            'print(matched.group_by("arm").len(), panel_matched.height, weights.height)',
        ]
    return "\n".join(lines) + "\n"


def r_starter(release_dir: Path, tables: list[str]) -> str:
    """The same as python_starter, in R with arrow and dplyr."""
    lines = ["library(arrow)", "library(dplyr)", "", f"release <- {json.dumps(str(Path(release_dir).resolve()))}"]
    lines += [f'{n} <- read_parquet(file.path(release, "{n}.parquet"))' for n in tables]
    if {"cohort", "panel", "matches"} <= set(tables):
        lines += [
            "",
            "# The whole-study matched sample and its weights (as MatchIt's match_data), joined to the panel.",
            "matched <- cohort |> filter(matched) |> select(study_id, arm, matched_set, match_weight)",
            'panel_matched <- panel |> select(-arm, -matched_set, -match_weight) |> inner_join(matched, by = "study_id")',
            "# Every sample's weights: one row per sample and participant, the sum of their rows in matches.",
            'weights <- matches |> group_by(sample, study_id, arm) |> summarise(weight = sum(weight), .groups = "drop")',
            "print(count(matched, arm))",
        ]
    return "\n".join(lines) + "\n"
