"""The zone layout: every folder and file a run writes outside its release, declared once.

Each zone is a top-level folder of the work folder so access can be granted per zone; inside it every
run has its own folder named by release label, so concurrent runs never share a file:

    raw/quarantine/<label>/   rows set aside, with reasons (identifiable; the key holder's only)
    pseudonymised/<label>/    tokens, study IDs and covariates (never in one file), payload, counts
    linked/<label>/           link map, linkage quality, the cohort tables built for the release
    releases/<label>/         the published release (and `.staging-<label>/` while it is built)
    reports/<label>/          the published reports (and `.staging-<label>/` while a run writes them)

`ZONE_FILES` lists every file of the pseudonymised and linked zones with its path under the label's
folder, its contract (a schemas/ name, or None for JSON) and the stage (pipeline.tasks) that writes
it. Those two zones hold working files only: they exist so the next stage can read them, and once the
label is published `purge_working_files` removes both folders, unless the run was told to keep them
(RunConfig.retain_working_files, with its reason). Nothing else in the pipeline spells a zone file's
name; code asks this module for the path:

    >>> from pipeline.settings import RunConfig
    >>> cfg = RunConfig.from_conf({"raw_dir": "/d/raw", "work_dir": "/d/work", "release_label": "r1"})
    >>> str(link_map_file(cfg))
    '/d/work/linked/r1/link_map.parquet'
    >>> str(payload_file(cfg, "gp_events"))
    '/d/work/pseudonymised/r1/payload/gp_events.parquet'

Tokens are stored once per token block (schemas/token_blocks.yaml, tokens/<source>.parquet) and each
record names its block (schemas/record_blocks.yaml, records/<source>.parquet). The link stage works on
the blocks; `scan_record_tokens` gives the record-level view, one row per record with its tokens, for
readers that want it (tests, benchmarks, checks against the token spec's reference implementation).

Row order is part of the layout: a source's record blocks, its payload and its rows of the link map
hold the same records in the same order (the delivered extract's), so later stages read them side
by side, window by window (pipeline.io.side_by_side), instead of joining tens of millions of rows on
64-character record IDs. The link map holds the sources one after another in name order. The link
stage checks a source's record blocks and payload against each other record ID by record ID, then
records the SHA-256 of the link map it wrote and of each payload file it checked
(`link_map_digests_file`): the cohort knows both files are the ones written in step, unchanged
since, by their digests, without reading their record IDs again.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

# Polars and the contracts are imported where they are used: RunConfig takes its folder layout from
# here, and the DAG files import RunConfig, so this module must stay cheap to import (tests/test_dags.py).

if TYPE_CHECKING:
    import polars as pl

    from pipeline.contracts import Contract
    from pipeline.settings import RunConfig

log = logging.getLogger(__name__)

Zone = Literal["pseudonymised", "linked"]
# Zones whose label folders hold working files only, removed once the label is published.
WORKING_ZONES: tuple[Zone, ...] = ("pseudonymised", "linked")
TOKEN_BLOCK = "token_block"


# ---------------------------------------------------------------------------------------------------
# Folders (RunConfig's zone properties return these).


def quarantine_dir(work: Path, label: str) -> Path:
    return Path(work) / "raw" / "quarantine" / label


def zone_dir(work: Path, zone: str, label: str) -> Path:
    """`<work>/<zone>/<label>` for the pseudonymised and linked zones."""
    return Path(work) / zone / label


def staging_dir(work: Path, label: str) -> Path:
    """Where the release is built and checked before it is renamed into `releases/`."""
    return Path(work) / "releases" / f".staging-{label}"


def release_dir(work: Path, label: str) -> Path:
    return Path(work) / "releases" / label


def reports_dir(work: Path, label: str) -> Path:
    """The published reports of the label: written only by publish_release, with the release."""
    return Path(work) / "reports" / label


def reports_staging_dir(work: Path, label: str) -> Path:
    """Where a run writes its reports; publish_release moves the folder to `reports_dir`."""
    return Path(work) / "reports" / f".staging-{label}"


# ---------------------------------------------------------------------------------------------------
# Files of the working zones.


@dataclass(frozen=True)
class ZoneFile:
    """One file of a working zone: `relative` is its path under `<zone>/<label>/`, with `{source}`
    standing for a service-use source where there is one file per source."""

    zone: Zone
    relative: str
    contract: str | None  # schemas/ name (with `{source}` likewise), or None for JSON
    stage: str  # the pipeline.tasks function that writes it
    # Validated with Great Expectations by the zone's validate_* task (pipeline.tasks).
    validated: bool = True

    def at(self, folder: Path, source: str | None = None) -> Path:
        """The file in the zone folder `folder` (cfg.pseudonymised_dir or cfg.linked_dir)."""
        if ("{source}" in self.relative) != (source is not None):
            raise ValueError(f"{self.relative}: {'a source is needed' if source is None else 'takes no source'}")
        return Path(folder) / self.relative.format(source=source)

    def path(self, cfg: RunConfig, source: str | None = None) -> Path:
        return self.at(zone_dir(cfg.work, self.zone, cfg.release_label), source)

    def contract_name(self, source: str | None = None) -> str | None:
        return None if self.contract is None else self.contract.format(source=source)

    @property
    def per_source(self) -> bool:
        return "{source}" in self.relative


ZONE_FILES: dict[str, ZoneFile] = {
    "inputs": ZoneFile("pseudonymised", "inputs.json", None, "check_inputs"),
    "consent": ZoneFile("pseudonymised", "consent.json", None, "consent_gate"),
    # The participants are written in two halves so that no file holds participant ID, study ID and
    # tokens together: the link stage needs the tokens, the cohort and the release the study ID and
    # covariates, and neither needs the other's half to do its work.
    "persons": ZoneFile("pseudonymised", "persons.parquet", "pseudo_persons", "consent_gate"),
    "study_persons": ZoneFile("pseudonymised", "study_persons.parquet", "study_persons", "consent_gate"),
    "survey": ZoneFile("pseudonymised", "survey.parquet", "survey", "consent_gate"),
    "token_blocks": ZoneFile("pseudonymised", "tokens/{source}.parquet", "token_blocks", "pseudonymise_source"),
    "record_blocks": ZoneFile("pseudonymised", "records/{source}.parquet", "record_blocks", "pseudonymise_source"),
    "payload": ZoneFile("pseudonymised", "payload/{source}.parquet", "{source}_payload", "pseudonymise_source"),
    "pseudonymisation_counts": ZoneFile("pseudonymised", "counts/{source}.json", None, "pseudonymise_source"),
    "link_map": ZoneFile("linked", "link_map.parquet", "link_map", "link"),
    "linkage_quality": ZoneFile("linked", "linkage_quality.parquet", "linkage_quality", "link", validated=False),
    "linkage_summary": ZoneFile("linked", "linkage_summary.json", None, "link"),
    # {"link_map": its SHA-256, "payloads": {source: SHA-256}}: the payload files whose order the link
    # map's rows follow (pipeline.link.stage writes it; pipeline.cohort.events checks it).
    "link_map_digests": ZoneFile("linked", "link_map_digests.json", None, "link"),
    "splink_model": ZoneFile("linked", "splink_model_{source}.json", None, "link"),
    # The tables build_cohort hands to stage_release (pipeline.cohort.outputs names them), its
    # summary, and its artefacts folder.
    "cohort_summary": ZoneFile("linked", "cohort/cohort.json", None, "build_cohort"),
}
# Folders of scratch files a stage makes and removes itself (kept here so the purge and the crash
# tests know them): the link stage's and the cohort's work folders.
LINK_SCRATCH = ".work"
COHORT_DIR = "cohort"
COHORT_SCRATCH = ".events"


def inputs_file(cfg: RunConfig) -> Path:
    return ZONE_FILES["inputs"].path(cfg)


def consent_file(cfg: RunConfig) -> Path:
    return ZONE_FILES["consent"].path(cfg)


def persons_file(cfg: RunConfig) -> Path:
    """persons.parquet: participant_id and the linkage tokens (schemas/pseudo_persons.yaml)."""
    return ZONE_FILES["persons"].path(cfg)


def study_persons_file(cfg: RunConfig) -> Path:
    """study_persons.parquet: participant_id, study_id and covariates, no token (schemas/study_persons.yaml)."""
    return ZONE_FILES["study_persons"].path(cfg)


def survey_file(cfg: RunConfig) -> Path:
    return ZONE_FILES["survey"].path(cfg)


def payload_file(cfg: RunConfig, source: str) -> Path:
    return ZONE_FILES["payload"].path(cfg, source)


def counts_file(cfg: RunConfig, source: str) -> Path:
    return ZONE_FILES["pseudonymisation_counts"].path(cfg, source)


def blocks_path(pseudonymised_dir: Path, source: str) -> Path:
    """tokens/<source>.parquet: token_block and the token columns, one row per block."""
    return ZONE_FILES["token_blocks"].at(pseudonymised_dir, source)


def records_path(pseudonymised_dir: Path, source: str) -> Path:
    """records/<source>.parquet: record_id (the record token) and token_block, one row per record."""
    return ZONE_FILES["record_blocks"].at(pseudonymised_dir, source)


def link_map_file(cfg: RunConfig) -> Path:
    return ZONE_FILES["link_map"].path(cfg)


def link_map_digests_file(cfg: RunConfig) -> Path:
    return ZONE_FILES["link_map_digests"].path(cfg)


def linkage_quality_file(cfg: RunConfig) -> Path:
    return ZONE_FILES["linkage_quality"].path(cfg)


def linkage_summary_file(cfg: RunConfig) -> Path:
    return ZONE_FILES["linkage_summary"].path(cfg)


def splink_model_file(cfg: RunConfig, source: str) -> Path:
    return ZONE_FILES["splink_model"].path(cfg, source)


def cohort_dir(cfg: RunConfig) -> Path:
    """linked/<label>/cohort/: the tables build_cohort hands to the release (pipeline.cohort.outputs)."""
    return cfg.linked_dir / COHORT_DIR


def cohort_summary_file(cfg: RunConfig) -> Path:
    return ZONE_FILES["cohort_summary"].path(cfg)


def quarantine_file(cfg: RunConfig, dataset: str) -> Path:
    """raw/quarantine/<label>/<dataset>.parquet: the dataset's rows set aside, with their reasons."""
    return cfg.quarantine_dir / f"{dataset}.parquet"


def validated_files(cfg: RunConfig, zone: Zone, sources: tuple[str, ...]) -> dict[str, list[Path]]:
    """Every Parquet file of a working zone, by contract name, as Great Expectations validates them."""
    files: dict[str, list[Path]] = {}
    for f in ZONE_FILES.values():
        if f.zone != zone or f.contract is None or not f.validated:
            continue
        if not f.per_source:
            files.setdefault(f.contract_name(), []).append(f.path(cfg))
            continue
        for s in sources:
            files.setdefault(f.contract_name(s), []).append(f.path(cfg, s))
    return files


def payload_contract(source: str) -> Contract:
    """The contract of payload/<source>.parquet: the source's payload columns and record_id, which
    here holds the record's keyed token (as in schemas/record_blocks.yaml), not the provider's ID."""
    from pipeline.contracts import load_contract

    contract = load_contract(source).restricted_to(("payload",), name=f"{source}_payload", zone="pseudonymised")
    return contract.with_column(load_contract("record_blocks").column("record_id"))


def scan_record_tokens(pseudonymised_dir: Path, source: str) -> pl.LazyFrame:
    """One row per pseudonymised record of `source`: record_id (its record token) and its token
    columns, in the records file's order (the delivered extract's).

        scan_record_tokens(cfg.pseudonymised_dir, "gp_events").filter(pl.col("tok_nhs").is_null())
    """
    import polars as pl

    blocks = pl.scan_parquet(blocks_path(pseudonymised_dir, source))
    records = pl.scan_parquet(records_path(pseudonymised_dir, source))
    return records.join(blocks, on=TOKEN_BLOCK, how="left", maintain_order="left").drop(TOKEN_BLOCK)


# ---------------------------------------------------------------------------------------------------
# Retention.


def working_dirs(cfg: RunConfig) -> list[Path]:
    """The label's folders of working files: pseudonymised/<label>/ and linked/<label>/."""
    return [zone_dir(cfg.work, zone, cfg.release_label) for zone in WORKING_ZONES]


def purge_working_files(cfg: RunConfig) -> list[Path]:
    """Remove the label's working folders once it is published, unless the run keeps them
    (`retain_working_files`, with its `retention_reason`); return the folders removed.

    Tokens, payload and link map are what would let someone re-link a person after the release: an
    old label's persons file joined to a newer label's tokens would link people who withdrew in
    between. Published, the label needs none of them. Removing a folder that is half gone (a crash
    during an earlier purge) finishes the job, so the publication's retry can call this again.
    """
    if cfg.retain_working_files:
        log.info("working files of %s kept: %s", cfg.release_label, cfg.retention_reason)
        return []
    removed = []
    for folder in working_dirs(cfg):
        if folder.exists():
            shutil.rmtree(folder)
            removed.append(folder)
    log.info("working files of %s removed after publication (%d folders)", cfg.release_label, len(removed))
    return removed
