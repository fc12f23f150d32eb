"""Checking a run's input folder against the contracts before anything is read for real.

Every file is checked and every violation reported together, so a data engineer can fix a delivery
in one go. The input manifest (file hashes and row counts) goes into the release manifest.

A source listed in the run's deliveries file (RunConfig.deliveries_file) is read from the provider's
own file through its mapping (pipeline.deliveries); `scan_input` is the one way an input is read
(`scan_checked_input` after check_inputs, which does not check every row twice), so the rest of the
pipeline sees the contracts' columns whichever way a source came in.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from pipeline import io
from pipeline.costs import scan_unit_costs
from pipeline.contracts import ContractError, contract_sha256, parquet_files, scan_as_contract, scan_checked, study_contract
from pipeline.errors import InputOutsideFolderError, Violation
from pipeline.settings import SOURCES, RunConfig
from pipeline.zones import inputs_file

if TYPE_CHECKING:
    from pipeline.deliveries.delivery import Delivery

log = logging.getLogger(__name__)

# Files every run needs in its raw folder, by contract name.
REQUIRED_INPUTS: tuple[str, ...] = ("consent_register", "survey", *SOURCES, "postcode_imd")


def deliveries(cfg: RunConfig) -> dict[str, Delivery]:
    """The sources the run's deliveries file lists (none without one)."""
    if not cfg.deliveries_file:
        return {}
    from pipeline.deliveries.delivery import load_deliveries

    return load_deliveries(Path(cfg.deliveries_file), SOURCES)


def input_path(cfg: RunConfig, dataset: str) -> Path:
    """The provider's file when the deliveries file lists `dataset`; otherwise `<dataset>.parquet` in
    the raw folder or, for an extract delivered in parts, the folder `<dataset>/` of Parquet files
    (read in name order, checked together against the contract).

    Every input is found here, so this is where a symbolic link out of the input folder is refused
    (InputOutsideFolderError): the input folder is what the key holder was given to read, and a
    link would make the run read, hash and quarantine whatever file it points at, unseen.
    """
    delivered = deliveries(cfg).get(dataset)
    if delivered is not None:
        return delivered.path  # load_deliveries refused one outside the deliveries file's folder
    folder = cfg.raw / dataset
    path = folder if folder.is_dir() and not (cfg.raw / f"{dataset}.parquet").exists() else cfg.raw / f"{dataset}.parquet"
    for found in [path, *(parquet_files(path) if path.is_dir() else [])]:
        _refuse_link_outside(cfg.raw, found)
    return path


def _refuse_link_outside(folder: Path, path: Path) -> None:
    """Raise InputOutsideFolderError when `path`, links resolved, is not inside `folder`.

    A link to another file inside the folder (a delivery kept in a subfolder, say) is allowed.
    """
    inside = Path(folder).resolve()
    target = Path(path).resolve()
    if target != inside and inside not in target.parents:
        raise InputOutsideFolderError(
            str(
                Violation(
                    str(path), None, "inside the input folder",
                    f"it is a symbolic link to a file outside the input folder {folder}; copy the file into the "
                    "input folder instead of linking to it (a link to a file inside the folder is allowed)",
                )
            )
        )


def input_files(cfg: RunConfig, dataset: str) -> list[Path]:
    return parquet_files(input_path(cfg, dataset))


def scan_input(cfg: RunConfig, dataset: str, read_all: bool = False) -> pl.LazyFrame:
    """An input, checked against its contract, lazily in the contract's layout (through its mapping
    when it is a delivery in a provider's layout)."""
    delivered = deliveries(cfg).get(dataset)
    if delivered is not None:
        from pipeline.deliveries.delivery import scan_delivery

        return scan_delivery(delivered, study_contract(dataset, cfg.study), read_all=read_all)
    return scan_checked(input_path(cfg, dataset), study_contract(dataset, cfg.study), read_all=read_all)


def scan_checked_input(cfg: RunConfig, dataset: str) -> pl.LazyFrame:
    """An input as `scan_input` gives it, for the stages after check_inputs: read without checking
    every row again when this run's input manifest (check_inputs) records this very file (same
    SHA-256; for a delivery, the same mapping too) checked against the same contract. At 1 million
    people checking the five extracts again took 17 s, and hashing them takes 0.6 s.

    Raises ContractError when the file, or the study, has changed since the check: the release's
    input manifest would otherwise name a file the run never read. Checks every row (`scan_input`)
    when there is no input manifest, or it does not record the check.
    """
    manifest_path = inputs_file(cfg)
    manifest = io.read_json(manifest_path) if manifest_path.exists() else {}
    recorded = manifest.get("files", {}).get(dataset)
    checked_against = manifest.get("contracts", {}).get(dataset)
    if recorded is None or checked_against is None:
        return scan_input(cfg, dataset)
    contract = study_contract(dataset, cfg.study)
    delivered = deliveries(cfg).get(dataset)
    path = input_path(cfg, dataset)
    now = delivered.record() if delivered is not None else {"file": path.name, "sha256": input_hash(path)}
    changed = [k for k in ("file", "sha256", "format", "mapping") if k in now and recorded.get(k) != now[k]]
    if changed:
        what = "its mapping is" if changed == ["mapping"] else "its SHA-256 is"
        raise ContractError(
            [Violation(str(path), None, "unchanged since the input check",
                       f"{what} not the one check_inputs recorded in {manifest_path}, so it was changed or replaced "
                       "after it was checked; put back the file that was checked, or run the pipeline again from "
                       "check_inputs (a new run of the pseudonymise DAG)")]  # fmt: skip
        )
    if checked_against != contract_sha256(contract):
        raise ContractError(
            [Violation(str(path), None, "checked against this run's study",
                       f"check_inputs checked it against other rules (the study file, or the contracts, changed "
                       f"since {manifest_path} was written); run the pipeline again from check_inputs")]  # fmt: skip
        )
    if delivered is not None:
        from pipeline.deliveries.delivery import scan_delivery_as_contract

        return scan_delivery_as_contract(delivered, contract)
    return scan_as_contract(parquet_files(path), contract)


def input_hash(path: Path) -> str:
    """The SHA-256 of an input file; of a folder in parts, the SHA-256 of its parts' names and hashes."""
    if not path.is_dir():
        return io.sha256_file(path)
    listing = "".join(f"{p.name} {io.sha256_file(p)}\n" for p in parquet_files(path))
    return hashlib.sha256(listing.encode()).hexdigest()


def check_inputs(cfg: RunConfig) -> Path:
    """Check every input against its contract; write `inputs.json` (hash and rows per file)."""
    violations: list[Violation] = []
    files: dict[str, Any] = {}
    contracts: dict[str, str] = {}
    delivered = deliveries(cfg)
    for dataset in REQUIRED_INPUTS:
        path = input_path(cfg, dataset)
        if dataset not in delivered and (cfg.raw / dataset).is_dir() and (cfg.raw / f"{dataset}.parquet").exists():
            # Two deliveries of one extract: reading either would silently drop the other.
            violations.append(
                Violation(str(cfg.raw / dataset), None, "one delivery per dataset",
                          f"both {dataset}.parquet and a folder {dataset}/ of parts are here; keep the one that is "
                          "the delivery and move the other out of the raw folder")
            )
            continue
        try:
            # Every value decoded once here, so a damaged or wrongly encoded file stops the run now.
            rows = scan_input(cfg, dataset, read_all=True).select(pl.len()).collect().item()
        except ContractError as exc:
            violations += exc.violations
            continue
        if rows == 0:
            violations.append(
                Violation(str(path), None, "not empty", "the file has no rows, which means a failed or filtered export; "
                          "check it with the provider and deliver it again")
            )
            continue
        if dataset in delivered:
            files[dataset] = {**delivered[dataset].record(), "rows": int(rows)}
        else:
            files[dataset] = {"file": path.name, "sha256": input_hash(path), "rows": int(rows)}
        contracts[dataset] = contract_sha256(study_contract(dataset, cfg.study))
        log.info("checked %s: %d rows", dataset, rows)
    try:
        costs = scan_unit_costs(Path(cfg.unit_costs)).collect()
        files["unit_costs"] = {
            "file": Path(cfg.unit_costs).name,
            "sha256": io.sha256_file(Path(cfg.unit_costs)),
            "rows": costs.height,
            "version": costs.get_column("version").unique().sort().to_list(),
        }
    except ContractError as exc:
        violations += exc.violations
    if violations:
        raise ContractError(violations)
    # `contracts`: what each file was checked against, so the stages after this one read it without
    # checking it again (scan_checked_input). The release's manifest takes `files` only.
    return io.write_json({"release_label": cfg.release_label, "files": files, "contracts": contracts}, inputs_file(cfg))
