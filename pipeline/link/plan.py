"""The link stage's plan: which sources, which files, which ranks and options, decided from the run's
settings and the zone layout alone, before any file is read.

pipeline.link.stage runs a plan; building it is kept apart so what a run will do can be read (and
tested) without data, as pipeline.link.model builds Splink's settings apart from the code that runs
Splink.

    >>> from pipeline.settings import RunConfig
    >>> plan = plan_link(RunConfig.from_conf({"raw_dir": "/d/raw", "work_dir": "/d/work", "release_label": "r1"}))
    >>> plan.link_map_order[0], plan.link_map.is_relative_to("/d/work/linked/r1")
    ('gp_events', True)
    >>> sorted(plan.token_files())[:3]
    ['gp_events', 'gp_events records', 'hospital_ae']
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.link.model import COMPARISON_COLUMNS, ProbabilisticOptions
from pipeline.settings import SOURCES, LinkageOptions
from pipeline.zones import (
    LINK_SCRATCH,
    blocks_path,
    link_map_digests_file,
    link_map_file,
    linkage_quality_file,
    linkage_summary_file,
    payload_file,
    persons_file,
    records_path,
    splink_model_file,
    study_persons_file,
)

if TYPE_CHECKING:
    from pipeline.settings import RunConfig

# Token columns the deterministic ranks need (schemas/_tokens.yaml, token spec v2).
DETERMINISTIC_COLUMNS: tuple[str, ...] = (
    "tok_nhs", "tok_nhs_dob", "tok_nhs_dob_swap", "tok_rank1", "tok_rank2", "tok_rank3", "tok_rank4", "tok_rank5",
)  # fmt: skip
# Tokens every other token is a function of (token spec v3): a profile is the combination of these.
# Sex has no token of its own; with the date of birth, tok_dob_sex carries it wherever a token uses it.
# The near-miss lists (spec v3) are functions of these too: of a name, date or postcode and a salt
# taken from a name or the date.
KEY_COLUMNS: tuple[str, ...] = ("tok_nhs", "tok_dob", "tok_dob_sex", "tok_postcode", "tok_surname", "tok_forename")
# Ranks whose links rest on the NHS number; the addresses on their records are a participant's own.
NHS_RANKS: tuple[str, ...] = ("1", "2", "3", "4")
# The covariates the linkage quality report groups participants by (pipeline.link.quality), read
# from the study side of the participants (pipeline.zones.study_persons_file), never its study IDs.
QUALITY_COVARIATES: tuple[str, ...] = ("age_at_index", "sex", "imd_quintile", "site")
# token_files' name of a source's record blocks file: the source's name and this.
RECORDS = " records"


@dataclass(frozen=True)
class LinkPlan:
    """Everything the link stage will read and write for one label, and the options it runs with."""

    sources: tuple[str, ...]  # in pipeline.settings.SOURCES order: the ranks' and the summary's
    persons: Path  # participant IDs and tokens
    study_persons: Path  # the quality report's covariates
    blocks: dict[str, Path]  # per source: its token blocks
    records: dict[str, Path]  # per source: each record's token block
    payloads: dict[str, Path]  # per source: each record's payload (provider, date, kind: the quality report's)
    models: dict[str, Path]  # per source: where its Splink model is saved
    work: Path  # scratch folder, removed when the stage ends
    link_map: Path
    digests: Path  # the link map's and the payloads' SHA-256 (pipeline.zones.link_map_digests_file)
    quality: Path
    summary: Path
    deterministic_columns: tuple[str, ...]
    key_columns: tuple[str, ...]
    address_ranks: tuple[str, ...]  # ranks whose records' addresses count as the participant's
    # Token columns the stage reads when the files have them: the ranks' and the model's.
    wanted_columns: tuple[str, ...]
    options: ProbabilisticOptions

    @property
    def link_map_order(self) -> tuple[str, ...]:
        """Sources in name order: each is appended to the one link map file in this order, its
        records in the order of its payload file (pipeline.link.stage), so a reader takes a source's
        rows by their offset and reads them beside the payload, with no sort and no join."""
        return tuple(sorted(self.sources))

    def token_files(self) -> dict[str, Path]:
        """Every token file, by the name errors give it: "persons", a source, "<source> records"."""
        files = {"persons": self.persons}
        files.update(self.blocks)
        files.update({f"{s}{RECORDS}": p for s, p in self.records.items()})
        return files


def probabilistic_options(linkage: LinkageOptions) -> ProbabilisticOptions:
    """The run's linkage choices (RunConfig.linkage) with the engine's own settings at their defaults.

    >>> probabilistic_options(LinkageOptions()) == ProbabilisticOptions()
    True
    """
    return ProbabilisticOptions(
        threshold_match_probability=linkage.threshold,
        addresses=linkage.addresses,
        u_max_pairs=linkage.u_max_pairs,
        em_max_pairs=linkage.em_max_pairs,
        seed=linkage.seed,
        backend=linkage.backend,
    )


def plan_link(cfg: RunConfig, options: ProbabilisticOptions | None = None) -> LinkPlan:
    """The plan of the link stage for `cfg`'s label; reads nothing. `options` (benchmarks and tests
    that tune the engine) replaces the run's own, `probabilistic_options(cfg.linkage)`."""
    return LinkPlan(
        sources=SOURCES,
        persons=persons_file(cfg),
        study_persons=study_persons_file(cfg),
        blocks={s: blocks_path(cfg.pseudonymised_dir, s) for s in SOURCES},
        records={s: records_path(cfg.pseudonymised_dir, s) for s in SOURCES},
        payloads={s: payload_file(cfg, s) for s in SOURCES},
        models={s: splink_model_file(cfg, s) for s in SOURCES},
        work=cfg.linked_dir / LINK_SCRATCH,
        link_map=link_map_file(cfg),
        digests=link_map_digests_file(cfg),
        quality=linkage_quality_file(cfg),
        summary=linkage_summary_file(cfg),
        deterministic_columns=DETERMINISTIC_COLUMNS,
        key_columns=KEY_COLUMNS,
        address_ranks=NHS_RANKS,
        wanted_columns=tuple(dict.fromkeys([*DETERMINISTIC_COLUMNS, *COMPARISON_COLUMNS.values()])),
        options=options or probabilistic_options(cfg.linkage),
    )
