"""Probabilistic linkage (rank P) of the records the deterministic ranks leave unlinked, with Splink
over token codes (pipeline.link.profiles), on DuckDB or Spark (pipeline.link.backends). The model is
pipeline.link.model.

Per source:
1. train: u by random sampling and m by EM (two sessions, pipeline.link.model.TRAINING_RULES) on all
   of the source's profiles against the participants, so EM sees plenty of true pairs;
2. score: every blocked pair of an unlinked profile and a participant;
3. re-estimate the prior (the probability that two random records match) for the unlinked profiles
   alone, by EM over the scored pairs with m and u held fixed: they are a different population from
   the whole source (most of the source's true pairs were taken by ranks 1-5);
4. resolve (`resolve_probabilistic`): a record links to the one participant whose match probability
   reaches the threshold; two or more make a conflict, reported and left unlinked.

Memory: the scored pairs (76.8 million for one source at a million people, growing with records
times participants) never sit in this process whole. The engine writes them to Parquet a scoring
chunk at a time; they are split into parts by ranges of the record uid and each part sorted alone
(`score_pairs_to_parts`); the prior's EM reads their weights from a file (`Weights`), and the link
stage reweights and resolves one part at a time (`Reweighted`). What stays in memory is one chunk
in the engine (within DuckDB's memory limit), one part, and the profiles and participants.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from pipeline import io
from pipeline.link.backends import SplinkBackend, open_backend
from pipeline.link.model import (
    ADDRESS_LISTS,
    COMPARISON_COLUMNS,
    MODEL_VERSION,
    TRAINING_RULES,
    ProbabilisticOptions,
    floor_m,
    model_columns,
    splink_settings,
    with_nhs_rule,
)
from pipeline.link.profiles import PROFILE_KEY

log = logging.getLogger(__name__)
RECORDS, PARTICIPANTS = "records", "participants"


# ---------------------------------------------------------------------------------------------------
# Resolution: pure, spec-tested (tests/test_link_probabilistic.py).


def resolve_probabilistic(records: pl.LazyFrame, pairs: pl.LazyFrame, threshold: float) -> pl.LazyFrame:
    """One row per record from its scored candidate pairs.

    `pairs`: record_id, participant_id, match_probability, match_weight (any number per record).
    A record links (rank "P") to the one participant whose match probability reaches `threshold`.
    Two or more participants reaching it is a conflict: no link, `conflict` true. A record with no
    pair reaching it stays unlinked. `match_weight` is the best candidate's, linked or not (null
    when no pair was scored), for the quality report's weight distribution.

    Output columns: record_id, participant_id, rank, match_probability, match_weight, conflict.
    """
    per_record = pairs.group_by("record_id").agg(
        pl.col("match_weight").max().alias("match_weight"),
        pl.col("participant_id").filter(pl.col("match_probability") >= threshold).n_unique().alias("_n"),
        pl.col("participant_id").filter(pl.col("match_probability") >= threshold).min().alias("_pid"),
        pl.col("match_probability").filter(pl.col("match_probability") >= threshold).max().alias("_p"),
    )
    linked = pl.col("_n") == 1
    return (
        records.select("record_id")
        .join(per_record, on="record_id", how="left")
        .select(
            "record_id",
            pl.when(linked).then(pl.col("_pid")).alias("participant_id"),
            pl.when(linked).then(pl.lit("P")).alias("rank"),
            pl.when(linked).then(pl.col("_p")).alias("match_probability"),
            "match_weight",
            (pl.col("_n") > 1).fill_null(False).alias("conflict"),
        )
    )


# ---------------------------------------------------------------------------------------------------
# Tables handed to Splink: the model's column names, 64-bit codes, address lists.


def _address_lists(base: pl.LazyFrame) -> pl.LazyFrame:
    return base.with_columns(
        [pl.when(pl.col(one).is_not_null()).then(pl.concat_list(one)).alias(many) for many, one in ADDRESS_LISTS.items()]
    )


def model_frame(coded: pl.LazyFrame, uid: str) -> pl.LazyFrame:
    """A coded profile or participant table (token column names) in the model's columns, each row
    carrying its own address as a one-element list."""
    renamed = coded.select(pl.col(uid).cast(pl.UInt64).alias("uid"), *[pl.col(t).alias(m) for m, t in COMPARISON_COLUMNS.items()])
    return _address_lists(renamed).select(model_columns())


def with_known_addresses(participants: pl.LazyFrame, linked_addresses: pl.LazyFrame) -> pl.LazyFrame:
    """Participants (model columns) whose address lists also hold every address of `linked_addresses`
    (uid plus the three address parts, one row per address seen on an NHS-linked record)."""
    own = participants.select("uid", *ADDRESS_LISTS.values())
    every = pl.concat([own, linked_addresses.select("uid", *ADDRESS_LISTS.values())], how="vertical")
    lists = every.group_by("uid").agg(
        [pl.col(one).drop_nulls().unique().sort().alias(many) for many, one in ADDRESS_LISTS.items()]
    ).with_columns([pl.when(pl.col(m).list.len() > 0).then(pl.col(m)).alias(m) for m in ADDRESS_LISTS])
    return participants.drop(*ADDRESS_LISTS).join(lists, on="uid", how="left").select(model_columns())


# ---------------------------------------------------------------------------------------------------
# Running Splink.


@dataclass
class SourceModel:
    """What the probabilistic step did for one source (written into linkage_summary.json)."""

    source: str
    trained: bool
    reason: str | None = None
    model_file: str | None = None
    prior_initial: float | None = None
    prior_unlinked: float | None = None
    records_scored: int = 0
    pairs_scored: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def _linker(backend: SplinkBackend, records: pl.DataFrame, participants: pl.DataFrame, settings: dict[str, Any]):
    from splink import Linker

    left = backend.register(records, RECORDS)
    right = backend.register(participants, PARTICIPANTS)
    return Linker([left, right], backend.settings(settings), log_level=logging.WARNING)


def train_model(
    records: pl.DataFrame,
    participants: pl.DataFrame,
    options: ProbabilisticOptions,
    temp_dir: Path,
    settings: dict[str, Any] | None = None,
    training_rules: tuple[str, ...] = TRAINING_RULES,
    seconds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Splink model (settings dictionary with m and u) trained on `records` against `participants`:
    u by random sampling, then m by one EM session per training rule. `settings` defaults to the
    token model (pipeline.link.model.splink_settings). Step times go into `seconds`."""
    settings = settings or splink_settings(options, 1.0 / max(participants.height, 1))
    seconds = {} if seconds is None else seconds
    with open_backend(options, temp_dir) as backend:
        t = time.perf_counter()
        linker = _linker(backend, records, participants, settings)
        # Every sampled pair, in one pass: Splink's default stops once each level has 100 pairs, at
        # a chunk its engine's hash function picks, so DuckDB and Spark would estimate u on different
        # pairs (pipeline.link.backends).
        linker.training.estimate_u_using_random_sampling(
            max_pairs=options.u_max_pairs, seed=options.seed, min_count_per_level=None, num_chunks=1
        )
        seconds["train_u"] = round(time.perf_counter() - t, 1)
        for i, rule in enumerate(training_rules, 1):
            t = time.perf_counter()
            linker.training.estimate_parameters_using_expectation_maximisation(
                backend.sql(with_nhs_rule(rule)), estimate_without_term_frequencies=True, max_pairs=options.em_max_pairs
            )
            seconds[f"train_em{i}"] = round(time.perf_counter() - t, 1)
        model = backend.model(linker.misc.save_model_to_json(), settings)
        # Splink names each linker with a fresh random ID and saves it with the model; without it the
        # model file is the same on every run of the same inputs (Splink names a loaded model anew).
        model.pop("linker_uid", None)
        return floor_m(model, options.m_floor)


# Scored pairs per range part, about this many (each part is sorted, reweighted and resolved in
# memory on its own); and the match weights summed at a time when the prior is re-estimated.
PAIRS_PER_PART = 4_000_000
WEIGHTS_PER_READ = 1 << 22
# numpy adds at most this many float64 values in one unrolled loop, without halving them (its
# PW_BLOCKSIZE): a range this short must be summed by numpy whole, never split.
NUMPY_PAIRWISE_BLOCK = 128


@dataclass
class ScoredPairs:
    """One source's scored pairs on disk: (record_uid, participant_uid, match_weight) split into
    parts by ranges of the record uid (`bounds`: the first uid of every part but the first), each
    part's file sorted by the uids, so the parts in order are every pair sorted by the uids; and
    every pair's match weight in that order, as float64 in `weights` (pipeline.link.probabilistic.
    Weights), for the prior's sum."""

    parts: list[Path | None]  # by part; None: no pair in the part's range
    bounds: np.ndarray
    weights: Path
    count: int

    def part_of(self, uid: str) -> pl.Expr:
        """The part of each row by its record uid column `uid`."""
        bounds = pl.Series(self.bounds, dtype=pl.UInt64)
        return pl.col(uid).map_batches(lambda s: bounds.search_sorted(s, side="right"), return_dtype=pl.UInt32)

    def read(self, part: int) -> pl.DataFrame:
        path = self.parts[part]
        return pl.read_parquet(path) if path else pl.DataFrame(schema=PAIR_SCHEMA)

    def read_all(self) -> pl.DataFrame:
        return pl.concat([self.read(i) for i in range(len(self.parts))])


PAIR_SCHEMA = {"record_uid": pl.UInt64, "participant_uid": pl.UInt64, "match_weight": pl.Float64}


def score_pairs(records: pl.DataFrame, participants: pl.DataFrame, model: dict[str, Any], options: ProbabilisticOptions, temp_dir: Path) -> pl.DataFrame:
    """Every blocked (record uid, participant uid) pair with its match weight under `model`, sorted
    by the uids, in memory (score_pairs_to_parts keeps them on disk)."""
    return score_pairs_to_parts(records, participants, model, options, temp_dir).read_all()


def score_pairs_to_parts(
    records: pl.DataFrame, participants: pl.DataFrame, model: dict[str, Any], options: ProbabilisticOptions, temp_dir: Path
) -> ScoredPairs:
    """Every blocked (record uid, participant uid) pair with its match weight under `model`, on disk
    in `temp_dir`/pairs (ScoredPairs): memory follows a chunk and a part, not the number of pairs.

    Scored in chunks (Splink's `predict_chunk`: one input split by a hash of its uid, so each chunk
    forms about 1/k of the pairs), each chunk's pairs written to Parquet by the engine and its table
    dropped before the next: the engine holds one chunk's pairs at a time, not every pair of the
    source. Term frequencies are computed once over both whole inputs, so a pair's weight does not
    depend on its chunk, and the sorted pairs are the same whatever the number of chunks. Once the
    engine is closed, the chunks' pairs are split into parts by ranges of the record uid (of about
    PAIRS_PER_PART pairs: ranges of equally many records), and each part sorted on its own."""
    folder = temp_dir / "pairs"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    chunks = max(1, math.ceil(records.height / options.records_per_scoring_chunk))
    files = []
    with open_backend(options, temp_dir) as backend:
        linker = _linker(backend, records, participants, model)
        for i in range(1, chunks + 1):
            predictions = linker.inference.predict_chunk(left_chunk=(i, chunks), warning_mode="never")
            files.append(backend.write_pairs(predictions, RECORDS, folder / f"chunk-{i:04d}.parquet"))
            predictions.drop_table_from_database_and_remove_from_cache()
    count = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    uids = records.get_column("uid").sort()
    n_parts = min(max(1, math.ceil(count / PAIRS_PER_PART)), max(uids.len(), 1))
    bounds = uids.gather([uids.len() * k // n_parts for k in range(1, n_parts)]).to_numpy()
    scored = ScoredPairs([None] * n_parts, bounds, folder / "weights.f64", count)
    split = io.split_scratch(pl.scan_parquet(files), scored.part_of("record_uid"), folder / "parts", PAIRS_PER_PART)
    for f in files:
        f.unlink()
    with open(scored.weights, "wb") as weights:
        for k, path in split.items():
            part = pl.read_parquet(path).sort("record_uid", "participant_uid")
            scored.parts[k] = io.write_scratch(part, path)
            part.get_column("match_weight").to_numpy().tofile(weights)
            del part
    return scored


class Weights:
    """Match weights on disk (float64, in the scored pairs' order), read WEIGHTS_PER_READ at a time.

    `total(f)` is numpy's sum of f(weights) for an elementwise `f`, bit for bit: numpy adds a
    float64 array pairwise, halving it (at a multiple of 8) down to blocks of at most 128 it adds in
    one loop, so the sum of a longer array is the sum of its two halves' sums, each summed by numpy
    the same way (tests/test_link_probabilistic.py checks it against numpy)."""

    def __init__(self, path: Path, size: int):
        self.path, self.size = path, size

    def total(self, f) -> float:
        def pairwise(start: int, n: int) -> float:
            if n <= max(WEIGHTS_PER_READ, NUMPY_PAIRWISE_BLOCK):
                return np.sum(f(np.fromfile(self.path, dtype=np.float64, count=n, offset=start * 8)))
            half = n // 2
            half -= half % 8
            return pairwise(start, half) + pairwise(start + half, n - half)

        return float(pairwise(0, self.size)) if self.size else 0.0


def estimate_prior(match_weights: np.ndarray | Weights, model_prior: float, n_possible_pairs: int, iterations: int = 200) -> float:
    """The probability that two random records match, re-estimated for the scored population by EM
    with m and u fixed: each pair's Bayes factor stays; only the prior moves. Pairs blocking did not
    form are taken as non-matches. `match_weights` in memory, or on disk (Weights: the same figure).

        >>> round(estimate_prior(np.array([40.0, 40.0, -20.0]), 1e-6, 1_000_000), 8)
        2e-06
    """
    size = match_weights.size
    if n_possible_pairs <= 0 or size == 0:
        return model_prior
    total = match_weights.total if isinstance(match_weights, Weights) else (lambda f: float(np.sum(f(match_weights))))
    log2_prior_odds = math.log2(model_prior / (1 - model_prior))
    prior = model_prior
    for _ in range(iterations):
        odds = prior / (1 - prior)
        # posterior = odds*bf / (1 + odds*bf), computed in log space against overflow
        shift = math.log2(odds)
        new = total(lambda w: 1.0 / (1.0 + np.exp2(-((w - log2_prior_odds) + shift)))) / n_possible_pairs
        new = min(max(new, 1e-15), 0.5)
        if abs(new - prior) <= 1e-6 * prior:
            prior = new
            break
        prior = new
    return prior


def reweight(pairs: pl.DataFrame, model_prior: float, prior: float) -> pl.DataFrame:
    """Match weight and probability of each pair under a new prior (the Bayes factors unchanged)."""
    shift = math.log2(prior / (1 - prior)) - math.log2(model_prior / (1 - model_prior))
    weight = pl.col("match_weight") + shift
    return pairs.with_columns(weight.alias("match_weight"), (1.0 / (1.0 + (2.0 ** (-weight)))).alias("match_probability"))


def link_probabilistic(
    source: str,
    all_profiles: pl.DataFrame,
    unlinked: pl.DataFrame,
    participants: pl.DataFrame,
    known_participants: pl.DataFrame,
    options: ProbabilisticOptions,
    model_path: Path,
    temp_dir: Path,
    settings: dict[str, Any] | None = None,
    training_rules: tuple[str, ...] = TRAINING_RULES,
) -> tuple[pl.DataFrame, SourceModel]:
    """Scored pairs (profile_key, participant uid, match_weight, match_probability) of one source's
    unlinked profiles, in memory, and what was done (link_probabilistic_parts, whose arguments these
    are; the benchmarks take every pair at once, the link stage a part at a time)."""
    scored, info = link_probabilistic_parts(
        source, all_profiles, unlinked, participants, known_participants, options, model_path, temp_dir, settings, training_rules
    )
    pairs = pl.concat([pairs for _, pairs in scored.parts_reweighted()], how="vertical")
    scored.discard()  # every pair is in memory now: the caller's temp_dir keeps no copy
    return pairs, info


@dataclass
class Reweighted:
    """A source's scored pairs on disk (ScoredPairs, or none) and the prior they are weighted with."""

    scored: ScoredPairs | None
    prior_initial: float | None = None
    prior: float | None = None

    @property
    def parts(self) -> int:
        return len(self.scored.parts) if self.scored else 1

    def discard(self) -> None:
        """Remove the pairs' files (the link stage's work folder would, but only when it ends)."""
        if self.scored:
            shutil.rmtree(self.scored.weights.parent, ignore_errors=True)

    def part_of(self, uid: str) -> pl.Expr:
        """The part of each row by its record uid column `uid` (0 when there are no pairs)."""
        return self.scored.part_of(uid) if self.scored else pl.lit(0, dtype=pl.UInt32)

    def parts_reweighted(self):
        """(part, its pairs: profile_key, participant_uid, match_weight, match_probability) of every
        part in record uid order, each read and reweighted under the unlinked profiles' prior when
        asked for."""
        for k in range(self.parts):
            if self.scored is None:
                yield k, pl.DataFrame(schema={PROFILE_KEY: pl.UInt64, "participant_uid": pl.UInt64, "match_weight": pl.Float64, "match_probability": pl.Float64})
                continue
            yield k, reweight(self.scored.read(k), self.prior_initial, self.prior).rename({"record_uid": PROFILE_KEY})


def link_probabilistic_parts(
    source: str,
    all_profiles: pl.DataFrame,
    unlinked: pl.DataFrame,
    participants: pl.DataFrame,
    known_participants: pl.DataFrame,
    options: ProbabilisticOptions,
    model_path: Path,
    temp_dir: Path,
    settings: dict[str, Any] | None = None,
    training_rules: tuple[str, ...] = TRAINING_RULES,
) -> tuple[Reweighted, SourceModel]:
    """Scored pairs of one source's unlinked profiles, on disk in parts (Reweighted), and what was done.

    `all_profiles` / `unlinked`: coded profiles in the model's columns (uid = profile key);
    `participants`: the participants with their register address (training); `known_participants`:
    the same with every known address (scoring). `settings` and `training_rules` default to the
    token model; bench/linkage_quality.py passes a plaintext model through the same steps.
    """
    info = SourceModel(source=source, trained=False)
    if unlinked.height == 0:
        info.reason = "no unlinked record to score"
        return Reweighted(None), info
    if all_profiles.height < options.min_records_to_train or participants.height < options.min_records_to_train:
        info.reason = f"fewer than {options.min_records_to_train} records or participants to train on"
        return Reweighted(None), info
    model = train_model(all_profiles, participants, options, temp_dir, settings, training_rules, info.seconds)
    info.trained = True
    info.prior_initial = model["probability_two_random_records_match"]

    t = time.perf_counter()
    scored = score_pairs_to_parts(unlinked, known_participants, model, options, temp_dir)
    info.seconds["score"] = round(time.perf_counter() - t, 1)
    prior = estimate_prior(Weights(scored.weights, scored.count), info.prior_initial, unlinked.height * known_participants.height)
    info.prior_unlinked = prior
    info.records_scored = unlinked.height
    info.pairs_scored = scored.count
    model = dict(model, probability_two_random_records_match=prior)
    io.write_json(model, model_path)
    info.model_file = model_path.name
    return Reweighted(scored, info.prior_initial, prior), info


def model_metadata(options: ProbabilisticOptions) -> dict[str, Any]:
    return {"model_version": MODEL_VERSION, "options": options.as_dict(), "columns": dict(COMPARISON_COLUMNS)}
