"""Stage 2: link every source's records to the participants. Reads only `pseudonymised/`, never the
key and never `raw/`, and refuses tokens made under different key ids.

What the stage reads, writes and runs with is decided first, from the run's settings alone
(pipeline.link.plan); the steps below then run that plan, as tasks of their own in the link DAG
(those of one source mapped per source) or one after another in `execute_link`:

0. `prepare_link` checks the token files and starts the work folder.
1. `link_ranks`, per source: its records are grouped into identity profiles
   (pipeline.link.profiles) and the deterministic ranks 1-5 run on the profiles
   (pipeline.link.deterministic).
2. `model_participants`: the addresses on records linked by NHS number (ranks 1-4) on any source are
   added to each participant's known addresses (pipeline.link.model.ProbabilisticOptions.addresses).
3. `link_rank_p`, per source: the probabilistic step links what the ranks left unlinked
   (pipeline.link.probabilistic), with a Splink model per source saved in linked/<label>/
   (pipeline.zones.splink_model_file).
4. `write_link_map`: the link map (one row per record), the linkage quality report and the linkage
   summary (pipeline.link.quality), at the paths pipeline.zones declares.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
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
    link_probabilistic_parts,
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
    """Run a plan's steps one after another in this process (the link DAG runs each as a task of its
    own, the per-source ones mapped): check the token files, rank every source's profiles, model
    the participants, add rank P to every source, and write the link map, the linkage quality report
    and the summary."""
    prepare_link(plan)
    for source in plan.sources:
        link_ranks(plan, source)
    model_participants(plan)
    for source in plan.sources:
        link_rank_p(plan, source)
    return write_link_map(plan)


# The link stage's steps. Each reads what the steps before it left in the plan's work folder and
# writes its own files there, so each can run as a task of its own, on any worker that mounts the
# linked/ zone, and the per-source steps of different sources side by side:
#
#   prepare_link -> link_ranks (per source) -> model_participants -> link_rank_p (per source) -> write_link_map
#
# A step rerun on its own rewrites only its own files. write_link_map removes the work folder, so
# after it only a rerun from prepare_link can link again.
STATE = "link.json"
PERSONS = "coded_persons.parquet"  # the scratch copy prepare_link codes, not the zone file


def prepare_link(plan: LinkPlan) -> Path:
    """Check the token files (present, one key id, this token spec, the ranks' columns), empty the
    work folder and note there what the later steps run with: the key id, the token columns read
    and the model's columns missing from some file. Returns the work folder."""
    if plan.options.backend == "spark":
        check_spark_available()  # before the ranks, not after them
    files = check_token_files(plan)
    kid = common_kid(files)
    check_spec_version(files)
    columns, missing = model_token_columns(plan, files)
    shutil.rmtree(plan.work, ignore_errors=True)
    plan.work.mkdir(parents=True)
    # The participants with their token codes and row number `uid`, in participant_id order, coded
    # once here: every later step numbers them the same way, from this file.
    coded = pl.scan_parquet(plan.persons).select("participant_id", *token_codes(columns)).sort("participant_id").with_row_index("uid")
    io.write_scratch(coded, plan.work / PERSONS)
    io.write_json({"kid": kid, "columns": columns, "missing": missing}, plan.work / STATE)
    return plan.work


def _state(plan: LinkPlan) -> dict[str, Any]:
    path = plan.work / STATE
    if not path.exists():
        raise PipelineError(
            f"{path} is missing: the link stage's steps after prepare_link read what it wrote there "
            "(and write_link_map removes it when done); rerun the link from prepare_link"
        )
    return io.read_json(path)


def _persons(plan: LinkPlan, columns: list[str]) -> pl.DataFrame:
    """The participants as prepare_link coded them: uid, participant_id and the token `columns`."""
    return pl.read_parquet(plan.work / PERSONS, columns=["uid", "participant_id", *columns])


def _seconds(plan: LinkPlan, step: str, started: float, **facts: Any) -> None:
    """Note how long a step took (and what else the summary wants of it) for write_link_map."""
    io.write_json({"seconds": round(time.perf_counter() - started, 1), **facts}, plan.work / f"{step}.seconds.json")


def link_ranks(plan: LinkPlan, source: str) -> Path:
    """Profiles and ranks 1-5 of one source (_deterministic_pass). Returns its profiles file."""
    started = time.perf_counter()
    columns = _state(plan)["columns"]
    with Progress(f"link {source}", total=1, unit="steps") as progress:
        progress.step(f"profiles and ranks 1-5 of {source}")
        addresses = _deterministic_pass(plan, source, columns, _persons(plan, columns))
        io.write_scratch(addresses, plan.work / f"{source}.addresses.parquet")
        progress.advance()
    _seconds(plan, f"{source}.ranks", started)
    return plan.work / f"{source}.profiles.parquet"


def model_participants(plan: LinkPlan) -> Path | None:
    """The participants as the probabilistic step compares them, with their known addresses, once
    for every source (_participant_frames; the addresses are those of every source's ranks). None,
    and nothing written, when the token files lack some of the model's columns: rank P is skipped."""
    started = time.perf_counter()
    state = _state(plan)
    if state["missing"]:
        log.warning("probabilistic linkage skipped: token files lack %s (pipeline.link.model.COMPARISON_COLUMNS)", state["missing"])
        return None
    addresses = [pl.read_parquet(plan.work / f"{source}.addresses.parquet") for source in plan.sources]
    participants, known = _participant_frames(plan, _persons(plan, state["columns"]), addresses)
    io.write_scratch(participants, plan.work / "participants.parquet")
    io.write_scratch(known, plan.work / "known.parquet")
    _seconds(plan, "participants", started)
    return plan.work / "participants.parquet"


def link_rank_p(plan: LinkPlan, source: str) -> Path:
    """One source's result per profile: its ranks 1-5 and, unless the model's columns are missing,
    rank P for the profiles they left (_probabilistic_pass). Returns the result's file."""
    started = time.perf_counter()
    state = _state(plan)
    # Only the columns the result and the model read: a profile's deterministic tokens are not.
    outcome = [PROFILE_KEY, "participant_id", "rank", "match_probability", "conflict"]
    model_tokens = [] if state["missing"] else list(COMPARISON_COLUMNS.values())
    profiles = pl.read_parquet(plan.work / f"{source}.profiles.parquet", columns=[*outcome, *model_tokens])
    model = None
    if state["missing"]:
        result = profiles.select(PROFILE_KEY, "participant_id", "rank", "match_probability", "conflict").with_columns(
            match_weight=pl.lit(None, dtype=pl.Float64)
        )
    else:
        with Progress(f"link {source}", total=1, unit="steps") as progress:
            progress.step(f"rank P of {source}")
            participants = pl.read_parquet(plan.work / "participants.parquet")
            known = pl.read_parquet(plan.work / "known.parquet")
            result, info = _probabilistic_pass(plan, source, profiles, participants, known, _persons(plan, ["tok_nhs"]))
            model = info.as_dict()
            progress.advance()
    path = io.write_scratch(result, plan.work / f"{source}.result.parquet")
    _seconds(plan, f"{source}.rank_p", started, model=model)
    return path


def write_link_map(plan: LinkPlan) -> Path:
    """The link map, the linkage quality report and the summary, from every source's result; then
    the work folder is removed. Returns the link map."""
    started = time.perf_counter()
    state = _state(plan)
    kid, missing = state["kid"], state["missing"]
    persons = _persons(plan, [])
    with Progress("link map", total=2, unit="steps") as progress:
        progress.step("the link map")
        tallies = _write_link_map(plan, kid, persons)
        progress.advance()
        t = time.perf_counter()
        progress.step("linkage quality report")
        from pipeline.link.quality import PARTICIPANT, person_groups, quality_report, summary_figures

        covariates = pl.scan_parquet(plan.study_persons).select("participant_id", *QUALITY_COVARIATES)
        uids = persons.lazy().select("participant_id", pl.col("uid").cast(pl.UInt32).alias(PARTICIPANT))
        groups = person_groups(covariates).join(uids, on="participant_id", how="left").drop("participant_id")
        quality = quality_report(*tallies, groups, covariates.select(pl.len()).collect().item())
        io.write_frame(quality, load_contract("linkage_quality"), plan.quality, {"pprl_kid": kid})
        progress.advance()
    quality_seconds = time.perf_counter() - t

    def seconds(step: str) -> dict[str, Any]:
        path = plan.work / f"{step}.seconds.json"
        return io.read_json(path) if path.exists() else {"seconds": 0.0}

    steps = {s: (seconds(f"{s}.ranks"), seconds(f"{s}.rank_p")) for s in plan.sources}
    summary = _summary(quality, persons.height, kid)
    summary["probabilistic"] = {
        "status": f"skipped: token files lack {missing}; re-pseudonymise to add them" if missing else "run",
        **model_metadata(plan.options),
        "sources": {} if missing else {s: rank_p["model"] for s, (_, rank_p) in steps.items()},
    }
    summary["quality"] = summary_figures(quality)
    link_map_seconds = time.perf_counter() - started - quality_seconds
    # Seconds of each step, as the steps measured them: their sum, not the wall time of a run whose
    # per-source steps may have run side by side.
    timings = {
        "profiles_and_ranks_1_5": round(sum(ranks["seconds"] for ranks, _ in steps.values()), 1),
        "participants": seconds("participants")["seconds"],
        "rank_p": round(sum(rank_p["seconds"] for _, rank_p in steps.values()), 1),
        "link_map": round(link_map_seconds, 1),
        "quality_report": round(quality_seconds, 1),
    }
    timings["total"] = round(sum(timings.values()), 1)
    summary["seconds"] = timings
    io.write_json(summary, plan.summary)
    shutil.rmtree(plan.work, ignore_errors=True)
    log.info("linked %d sources for %d participants in %.0fs of steps", len(plan.sources), persons.height, timings["total"])
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


def _write_link_map(plan: LinkPlan, kid: str, persons: pl.DataFrame) -> Tallies:
    """Append each source's links to the one link map file, in the plan's link map order, from its
    result per profile (link_rank_p). Returns the tallies of the quality report
    (pipeline.link.quality.tally) of every record written.

    Profiles were linked once each; records take their profile's result through their token block,
    WINDOW rows at a time, and are tallied as they are written, so memory follows the window and the
    number of profiles, never the number of records."""
    contract = load_contract("link_map")
    facts = all(plan.payloads.get(s) and plan.payloads[s].exists() for s in plan.sources)
    # Each payload is checked against its record blocks record ID by record ID below (`_windows`);
    # its digest, and the link map's, let the cohort know both files again without reading them.
    payloads = {s: io.sha256_file(plan.payloads[s]) for s in plan.link_map_order} if facts else {}
    schema = contract.arrow_schema()
    schema = schema.with_metadata({**(schema.metadata or {}), b"pprl_kid": kid.encode()})
    participant_ids = numbered_lookup(persons.select(pl.col("uid").cast(pl.UInt32).alias(PARTICIPANT), "participant_id"), PARTICIPANT)
    uids = persons.select("participant_id", pl.col("uid").cast(pl.UInt32).alias(PARTICIPANT))
    categories: list[pl.DataFrame] = []
    linked: list[pl.DataFrame] = []
    with io.parquet_writer(plan.link_map, schema) as writer:
        for source in plan.link_map_order:
            result = pl.read_parquet(plan.work / f"{source}.result.parquet")
            # Each token block's result, with the participant as its row number (a 4-byte key; the
            # participant's ID is put back on the rows written).
            by_block = (
                pl.read_parquet(plan.work / f"{source}.blocks.parquet")
                .join(result.join(uids, on="participant_id", how="left").drop("participant_id"), on=PROFILE_KEY, how="left")
                .drop(PROFILE_KEY)
            )
            if facts:
                by_block = by_block.join(_identifiers_present(plan.blocks[source]), on=TOKEN_BLOCK, how="left")
            block_results = numbered_lookup(by_block, TOKEN_BLOCK)
            del result, by_block
            source_categories, source_linked = [], []
            for window in _windows(plan, source, facts):
                rows = block_results(window).with_columns(source=pl.lit(source))
                link = participant_ids(rows)
                writer.write_table(to_arrow(link, contract).replace_schema_metadata(schema.metadata), row_group_size=WINDOW)
                c, p = tally(rows.lazy(), facts)
                source_categories.append(c.collect())
                source_linked.append(p.collect())
                del rows, link
            categories.append(add_tallies(source_categories))
            linked.append(add_tallies(source_linked))
    if facts:
        io.write_json({"link_map": io.sha256_file(plan.link_map), "payloads": payloads}, plan.digests)
    else:
        plan.digests.unlink(missing_ok=True)  # a rerun must not leave digests of another link map
    return add_tallies(categories), add_tallies(linked)


Tallies = tuple[pl.DataFrame, pl.DataFrame]


def numbered_lookup(table: pl.DataFrame, key: str) -> Callable[[pl.DataFrame], pl.DataFrame]:
    """A function that left-joins a window of rows to `table` (one row per `key` value) on `key`,
    keeping the window's order.

    Token blocks and participants are numbered 0 to n - 1 (pipeline.pseudonymise numbers the blocks,
    prepare_link the participants), so where the table's keys are exactly those numbers, row k of
    the table sorted by key is key k's, and the join is a gather by position: the same rows, without
    a join against the whole table for each window (at 1 million people, 2.5 million GP blocks 32
    times over: a quarter of the link map's time). A key outside 0..n-1 finds nothing,
    as in the join. Any other table is joined.

    >>> blocks = pl.DataFrame({"b": [1, 0], "p": ["y", "x"]})
    >>> numbered_lookup(blocks, "b")(pl.DataFrame({"b": [0, None, 1, 7]})).rows()
    [(0, 'x'), (None, None), (1, 'y'), (7, None)]
    """
    n = table.height
    keys = table.get_column(key)
    if n == 0 or not (keys.min() == 0 and keys.max() == n - 1 and keys.n_unique() == n):
        return lambda window: window.join(table, on=key, how="left", maintain_order="left")
    values = table.sort(key).drop(key)

    def join(window: pl.DataFrame) -> pl.DataFrame:
        at = window.get_column(key)
        at = pl.select(pl.when(at.is_between(0, n - 1)).then(at)).to_series()
        return pl.concat([window, values.select(pl.all().gather(at))], how="horizontal")

    return join


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
    """Profile results of one source: the deterministic ones, plus rank P for the unlinked profiles.

    The scored pairs stay on disk (pipeline.link.probabilistic.score_pairs_to_parts) and are
    resolved a part (a range of profile keys) at a time: memory follows the profiles and one part,
    not the number of pairs, which grows with records times participants."""
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
    scored, info = link_probabilistic_parts(
        source,
        model_frame(training.lazy(), PROFILE_KEY).collect(),
        model_frame(unlinked.lazy(), PROFILE_KEY).collect(),
        participants,
        known,
        options,
        plan.models[source],
        # Its own spill folder: the rank P steps of two sources may run side by side (mapped tasks).
        plan.work / f"duckdb-{source}",
    )
    del training
    # Resolved part by part (a part holds every pair of a range of profile keys), on the
    # participants' row numbers (8 bytes a pair, where their IDs would be 64 characters): each
    # pair's participant, and the tie rule's "one participant", are the same.
    keys = unlinked.select(pl.col(PROFILE_KEY).alias("record_id"), scored.part_of(PROFILE_KEY).alias("_part"))
    resolved_parts = []
    for part, pairs in scored.parts_reweighted():
        resolved_parts.append(
            resolve_probabilistic(
                keys.lazy().filter(pl.col("_part") == part).drop("_part"),
                pairs.lazy().rename({PROFILE_KEY: "record_id", "participant_uid": "participant_id"}),
                options.threshold_match_probability,
            ).collect()
        )
        del pairs
    resolved = pl.concat(resolved_parts).rename({"record_id": PROFILE_KEY})
    del resolved_parts, keys
    scored.discard()
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
