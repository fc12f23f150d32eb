"""Stage 2: link every source's records to the participants. Reads only `pseudonymised/`, never the
key and never `raw/`, and refuses tokens made under different key ids.

What the stage reads, writes and runs with is decided first, from the run's settings alone
(pipeline.link.plan); `execute_link` then runs that plan:

1. Each source's records are grouped into identity profiles (pipeline.link.profiles) and the
   deterministic ranks 1-5 run on the profiles (pipeline.link.deterministic).
2. The addresses on records linked by NHS number (ranks 1-4) are added to each participant's known
   addresses (pipeline.link.model.ProbabilisticOptions.addresses).
3. The probabilistic step links what the ranks left unlinked (pipeline.link.probabilistic), with a
   Splink model per source saved in linked/<label>/ (pipeline.zones.splink_model_file).
4. The link map (one row per record), the linkage quality report and the linkage summary
   (pipeline.link.quality), at the paths pipeline.zones declares.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from pipeline import io
from pipeline.contracts import load_contract, to_arrow
from pipeline.crypto.spec import KID_METADATA, SPEC_METADATA, SPEC_VERSION
from pipeline.errors import KeyMismatchError, PipelineError, TokenSpecMismatchError
from pipeline.link.backends import check_spark_available
from pipeline.link.deterministic import DETERMINISTIC_RANKS, link_deterministic
from pipeline.link.model import ADDRESS_LISTS, COMPARISON_COLUMNS, ProbabilisticOptions
from pipeline.link.probabilistic import (
    SourceModel,
    link_probabilistic,
    model_frame,
    model_metadata,
    resolve_probabilistic,
    with_known_addresses,
)
# DETERMINISTIC_COLUMNS is imported from here by tests and benchmarks; pipeline.link.plan owns it.
from pipeline.link.plan import DETERMINISTIC_COLUMNS, QUALITY_COVARIATES, RECORDS, LinkPlan, plan_link  # noqa: F401
from pipeline.link.profiles import PROFILE_KEY, build_profiles, token_codes
from pipeline.link.quality import IDENTIFIER_TOKENS, PARTICIPANT, add_tallies, record_facts, tally
from pipeline.progress import Progress
from pipeline.settings import SOURCES, RunConfig
from pipeline.zones import TOKEN_BLOCK

log = logging.getLogger(__name__)

# Records of a source read, linked, written (one row group of the link map) and tallied at a time.
WINDOW = 1_000_000


def check_token_files(plan: LinkPlan) -> dict[str, Path]:
    """The plan's token files, all of which must exist."""
    files = plan.token_files()
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise PipelineError(f"pseudonymised files missing: {missing}; run the pprl_pseudonymise DAG for this label first")
    return files


def common_kid(files: dict[str, Path]) -> str:
    """The one kid every token file was made under; KeyMismatchError if they differ or one has none.
    A source's token blocks and record blocks are reported together, under the source's name."""
    kids: dict[str, set[str | None]] = {}
    for name, p in files.items():
        kids.setdefault(name.removesuffix(RECORDS), set()).add(io.parquet_metadata(p).get(KID_METADATA))
    distinct = set().union(*kids.values())
    if len(distinct) != 1 or None in distinct:
        raise KeyMismatchError(
            "tokens were made under different key ids ("
            + ", ".join(f"{n}: {'/'.join(sorted(k or 'none' for k in ks))}" for n, ks in sorted(kids.items()))
            + "); re-pseudonymise every source with the same key before linking"
        )
    return distinct.pop()


def check_spec_version(files: dict[str, Path]) -> str:
    """The token spec version every token file follows (Parquet metadata `pprl_spec`); this stage reads
    version SPEC_VERSION only. TokenSpecMismatchError if a file follows another or records none (a
    file written before spec v2): tokens of different versions never meet, whatever they hash."""
    specs: dict[str, set[str | None]] = {}
    for name, p in files.items():
        specs.setdefault(name.removesuffix(RECORDS), set()).add(io.parquet_metadata(p).get(SPEC_METADATA))
    wrong = {n: s for n, s in specs.items() if s != {SPEC_VERSION}}
    if wrong:
        raise TokenSpecMismatchError(
            f"tokens were made under a token spec other than {SPEC_VERSION} ("
            + ", ".join(f"{n}: {'/'.join(sorted(v or 'none' for v in vs))}" for n, vs in sorted(wrong.items()))
            + f"); re-pseudonymise every source with this pipeline (token spec {SPEC_VERSION}) before linking"
        )
    return SPEC_VERSION


def model_token_columns(plan: LinkPlan, files: dict[str, Path]) -> tuple[list[str], list[str]]:
    """(token columns to read, comparison token columns missing from some file). The probabilistic
    step needs every column of pipeline.link.model.COMPARISON_COLUMNS."""
    present = set.intersection(*[set(pq.read_schema(p).names) for name, p in files.items() if not name.endswith(RECORDS)])
    missing_det = [c for c in plan.deterministic_columns if c not in present]
    if missing_det:
        raise PipelineError(f"token files lack {missing_det} (schemas/_tokens.yaml); re-pseudonymise with this version")
    return [c for c in plan.wanted_columns if c in present], [c for c in plan.wanted_columns if c not in present]


def run_link(cfg: RunConfig, options: ProbabilisticOptions | None = None) -> Path:
    """Link every source of `cfg`'s label (the plan of pipeline.link.plan); returns the link map."""
    return execute_link(plan_link(cfg, options))


def execute_link(plan: LinkPlan) -> Path:
    """Run a plan: check the token files, rank every source's profiles, add rank P, and write the
    link map, the linkage quality report and the summary. Says every minute how far it is
    (pipeline.progress): one step per source's ranks 1-5, then the link map, then the quality report."""
    if plan.options.backend == "spark":
        check_spark_available()  # before the ranks, not after them
    with Progress("link", total=len(plan.sources) + 2, unit="steps") as progress:
        return _execute_link(plan, progress)


def _execute_link(plan: LinkPlan, progress: Progress) -> Path:
    files = check_token_files(plan)
    kid = common_kid(files)
    check_spec_version(files)
    columns, missing = model_token_columns(plan, files)
    shutil.rmtree(plan.work, ignore_errors=True)
    plan.work.mkdir(parents=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    persons = (
        pl.scan_parquet(plan.persons)
        .select("participant_id", *token_codes(columns))
        .sort("participant_id")
        .with_row_index("uid")
        .collect()
    )
    addresses = []
    for source in plan.sources:
        progress.step(f"ranks 1-5 of {source}")
        addresses.append(_deterministic_pass(plan, source, columns, persons))
        progress.advance()
    timings["profiles_and_ranks_1_5"] = round(time.perf_counter() - t0, 1)

    probabilistic = not missing
    if missing:
        log.warning("probabilistic linkage skipped: token files lack %s (pipeline.link.model.COMPARISON_COLUMNS)", missing)
    participants = known = None
    if probabilistic:
        participants, known = _participant_frames(plan, persons, addresses)
    del addresses

    t = time.perf_counter()
    progress.step("probabilistic linkage and the link map")
    models, tallies = _write_link_map(plan, kid, persons, participants, known)
    progress.advance()
    timings["probabilistic_and_link_map"] = round(time.perf_counter() - t, 1)

    from pipeline.link.quality import PARTICIPANT, person_groups, quality_report, summary_figures

    t = time.perf_counter()
    progress.step("linkage quality report")
    covariates = pl.scan_parquet(plan.study_persons).select("participant_id", *QUALITY_COVARIATES)
    uids = persons.lazy().select("participant_id", pl.col("uid").cast(pl.UInt32).alias(PARTICIPANT))
    groups = person_groups(covariates).join(uids, on="participant_id", how="left").drop("participant_id")
    quality = quality_report(*tallies, groups, covariates.select(pl.len()).collect().item())
    io.write_frame(quality, load_contract("linkage_quality"), plan.quality, {"pprl_kid": kid})
    progress.advance()
    timings["quality_report"] = round(time.perf_counter() - t, 1)

    summary = _summary(quality, persons.height, kid)
    summary["probabilistic"] = {
        "status": "run" if probabilistic else f"skipped: token files lack {missing}; re-pseudonymise to add them",
        **model_metadata(plan.options),
        "sources": {s: m.as_dict() for s, m in models.items()},
    }
    summary["quality"] = summary_figures(quality)
    shutil.rmtree(plan.work, ignore_errors=True)
    timings["total"] = round(time.perf_counter() - t0, 1)
    summary["seconds"] = timings
    io.write_json(summary, plan.summary)
    log.info("linked %d sources for %d participants in %.0fs", len(plan.sources), persons.height, timings["total"])
    return plan.link_map


def _deterministic_pass(plan: LinkPlan, source: str, columns: list[str], persons: pl.DataFrame) -> pl.DataFrame:
    """Profiles and ranks 1-5 for one source. Writes each token block's profile and the coded
    profiles with their deterministic result to the work folder; returns the addresses of the
    profiles linked by the plan's address ranks (the NHS number's)."""
    t = time.perf_counter()
    work = plan.work
    key_columns = [c for c in plan.key_columns if c in columns]
    records, blocks = plan.records[source], plan.blocks[source]
    profiles, block_profiles = build_profiles(
        pl.scan_parquet(records), pl.scan_parquet(blocks), columns, key_columns, where=f"{records}, {blocks}"
    )
    io.write_scratch(block_profiles, work / f"{source}.blocks.parquet")
    del block_profiles
    t_profiles = time.perf_counter() - t
    det = link_deterministic(
        profiles.lazy().rename({PROFILE_KEY: "record_id"}), persons.lazy().select("participant_id", *plan.deterministic_columns)
    ).collect()
    det = det.rename({"record_id": PROFILE_KEY})
    t_ranks = time.perf_counter() - t - t_profiles
    io.write_scratch(profiles.join(det, on=PROFILE_KEY, how="left"), work / f"{source}.profiles.parquet")
    log.info(
        "%s: %d profiles (%.1fs), ranks 1-5 (%.1fs), written (%.1fs)",
        source, profiles.height, t_profiles, t_ranks, time.perf_counter() - t - t_profiles - t_ranks,
    )  # fmt: skip
    cols = [c for c in ("tok_postcode",) if c in columns]
    return (
        det.filter(pl.col("rank").is_in(plan.address_ranks))
        .join(profiles.select(PROFILE_KEY, *cols), on=PROFILE_KEY)
        .select("participant_id", *cols)
        .unique()
    )


def _participant_frames(plan: LinkPlan, persons: pl.DataFrame, addresses: list[pl.DataFrame]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(participants as the model compares them, the same with their known addresses), per the
    plan's `addresses` option."""
    participants = model_frame(persons.lazy(), "uid").collect()
    if plan.options.addresses != "register_and_linked":
        return participants, participants
    seen = (
        pl.concat(addresses)
        .unique()
        .join(persons.select("participant_id", "uid"), on="participant_id")
        .select(pl.col("uid").cast(pl.UInt64), *[pl.col(COMPARISON_COLUMNS[one]).alias(one) for one in ADDRESS_LISTS.values()])
    )
    return participants, with_known_addresses(participants.lazy(), seen.lazy()).collect()


def _write_link_map(
    plan: LinkPlan, kid: str, persons: pl.DataFrame, participants: pl.DataFrame | None, known: pl.DataFrame | None
) -> tuple[dict[str, SourceModel], Tallies]:
    """Append each source's links to the one link map file, in the plan's link map order; with
    `participants`, rank P is added first. Returns the Splink model of each source and the tallies
    of the quality report (pipeline.link.quality.tally) of every record written.

    Profiles are linked once each; records take their profile's result through their token block,
    WINDOW rows at a time, and are tallied as they are written, so memory follows the window and the
    number of profiles, never the number of records."""
    models: dict[str, SourceModel] = {}
    contract = load_contract("link_map")
    schema = contract.arrow_schema()
    schema = schema.with_metadata({**(schema.metadata or {}), b"pprl_kid": kid.encode()})
    ids = persons.select(pl.col("uid").cast(pl.UInt32).alias(PARTICIPANT), "participant_id")
    uids = persons.select("participant_id", pl.col("uid").cast(pl.UInt32).alias(PARTICIPANT))
    facts = all(plan.payloads.get(s) and plan.payloads[s].exists() for s in plan.sources)
    categories: list[pl.DataFrame] = []
    linked: list[pl.DataFrame] = []
    with io.parquet_writer(plan.link_map, schema) as writer:
        for source in plan.link_map_order:
            profiles = pl.read_parquet(plan.work / f"{source}.profiles.parquet")
            if participants is not None:
                result, models[source] = _probabilistic_pass(plan, source, profiles, participants, known, persons)
            else:
                result = profiles.select(PROFILE_KEY, "participant_id", "rank", "match_probability", "conflict").with_columns(
                    match_weight=pl.lit(None, dtype=pl.Float64)
                )
            del profiles
            # Each token block's result, with the participant as its row number (a 4-byte key; the
            # participant's ID is put back on the rows written).
            by_block = (
                pl.read_parquet(plan.work / f"{source}.blocks.parquet")
                .join(result.join(uids, on="participant_id", how="left").drop("participant_id"), on=PROFILE_KEY, how="left")
                .drop(PROFILE_KEY)
            )
            if facts:
                by_block = by_block.join(_identifiers_present(plan.blocks[source]), on=TOKEN_BLOCK, how="left")
            del result
            source_categories, source_linked = [], []
            for window in _windows(plan, source, facts):
                rows = window.join(by_block, on=TOKEN_BLOCK, how="left", maintain_order="left").with_columns(source=pl.lit(source))
                link = rows.join(ids, on=PARTICIPANT, how="left", maintain_order="left")
                writer.write_table(to_arrow(link, contract).replace_schema_metadata(schema.metadata), row_group_size=WINDOW)
                c, p = tally(rows.lazy(), facts)
                source_categories.append(c.collect())
                source_linked.append(p.collect())
                del rows, link
            categories.append(add_tallies(source_categories))
            linked.append(add_tallies(source_linked))
    return models, (add_tallies(categories), add_tallies(linked))


Tallies = tuple[pl.DataFrame, pl.DataFrame]


def _identifiers_present(blocks: Path) -> pl.DataFrame:
    """token_block and whether each identifier of pipeline.link.quality.IDENTIFIER_TOKENS was usable
    (its token is present) in the block."""
    return pl.scan_parquet(blocks).select(
        TOKEN_BLOCK, *[pl.col(t).is_not_null().alias(f"has_{i}") for i, t in IDENTIFIER_TOKENS.items()]
    ).collect()


def _windows(plan: LinkPlan, source: str, facts: bool) -> Iterator[pl.DataFrame]:
    """A source's records, WINDOW rows at a time, in the records file's order: record_id and
    token_block and, with `facts`, what the record's payload says of it (provider, month, kind:
    pipeline.link.quality.record_facts).

    The payload file is read beside the records file, row by row (pipeline.io.side_by_side): the
    pseudonymisation stage writes both from one pass in the same order (pipeline.pseudonymise.
    records), so no join on the record IDs is needed; files that differ in any record ID (files of
    different runs) are refused."""
    records = pl.scan_parquet(plan.records[source]).select("record_id", TOKEN_BLOCK)
    if not facts:
        n = records.select(pl.len()).collect().item()
        for start in range(0, n, WINDOW):
            yield records.slice(start, WINDOW).collect()
        return
    payload = record_facts(source, pl.scan_parquet(plan.payloads[source]))
    for window, payload_window in io.side_by_side([records, payload], "record_id", WINDOW, lambda: _misaligned(plan, source)):
        yield pl.concat([window, payload_window.drop("record_id")], how="horizontal")


def _misaligned(plan: LinkPlan, source: str) -> PipelineError:
    return PipelineError(
        f"{plan.payloads[source]} and {plan.records[source]} do not hold the same records in the same order "
        "(rule: the pseudonymisation stage writes both in one pass); they are from different runs: "
        "re-pseudonymise the source"
    )


def _probabilistic_pass(
    plan: LinkPlan,
    source: str,
    profiles: pl.DataFrame,
    participants: pl.DataFrame,
    known: pl.DataFrame,
    persons: pl.DataFrame,
) -> tuple[pl.DataFrame, SourceModel]:
    """Profile results of one source: the deterministic ones, plus rank P for the unlinked profiles."""
    options = plan.options
    det = profiles.select(PROFILE_KEY, "participant_id", "rank", "match_probability", "conflict")
    unlinked = profiles.filter(pl.col("rank").is_null() & ~pl.col("conflict"))
    if persons.get_column("tok_nhs").null_count() == 0:
        # Every participant has an NHS number, so a record whose number is none of theirs can pair
        # with no one (pipeline.link.model.NHS_DO_NOT_CONTRADICT): leave it out of scoring.
        unlinked = unlinked.filter(pl.col("tok_nhs").is_null() | pl.col("tok_nhs").is_in(persons.get_column("tok_nhs").implode()))
    training = profiles
    if training.height > options.max_training_profiles:
        training = training.sample(options.max_training_profiles, seed=options.seed).sort(PROFILE_KEY)
    pairs, info = link_probabilistic(
        source,
        model_frame(training.lazy(), PROFILE_KEY).collect(),
        model_frame(unlinked.lazy(), PROFILE_KEY).collect(),
        participants,
        known,
        options,
        plan.models[source],
        plan.work / "duckdb",
    )
    # Resolved on the participants' row numbers (8 bytes a pair, where their IDs would be 64
    # characters): each pair's participant, and the tie rule's "one participant", are the same.
    resolved = resolve_probabilistic(
        unlinked.lazy().select(pl.col(PROFILE_KEY).alias("record_id")),
        pairs.lazy().rename({PROFILE_KEY: "record_id", "participant_uid": "participant_id"}),
        options.threshold_match_probability,
    ).collect().rename({"record_id": PROFILE_KEY})
    del pairs
    ids = persons.select(pl.col("uid").cast(pl.UInt64), pl.col("participant_id").alias("_id"))
    resolved = resolved.join(ids, left_on="participant_id", right_on="uid", how="left").with_columns(participant_id=pl.col("_id")).drop("_id")
    det = det.join(resolved.select(PROFILE_KEY), on=PROFILE_KEY, how="anti").with_columns(match_weight=pl.lit(None, dtype=pl.Float64))
    return pl.concat([det, resolved.select(det.columns)]), info


def _summary(quality: pl.DataFrame, n_persons: int, kid: str) -> dict[str, Any]:
    """The figures the summary has always had, per source (linked_by_rank now includes P), read off
    the quality report."""
    by_outcome = quality.filter(pl.col("measure") == "records_by_outcome")
    found = quality.filter(pl.col("measure") == "participants_found")
    by_source = {}
    for source in SOURCES:
        counts = dict(by_outcome.filter(pl.col("source") == source).select("outcome", "count").iter_rows())
        n_found = int(found.filter(pl.col("source") == source).get_column("count").sum())
        by_source[source] = {
            "records": int(sum(counts.values())),
            "linked_by_rank": {r: int(counts.get(r, 0)) for r in (*DETERMINISTIC_RANKS, "P")},
            "unlinked": int(counts.get("unlinked", 0)),
            "conflicts": int(counts.get("conflict", 0)),
            "participants_found": n_found,
            "share_of_participants_found": round(n_found / n_persons, 4) if n_persons else None,
        }
    return {"kid": kid, "participants": n_persons, "sources": by_source}
