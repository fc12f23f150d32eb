"""Spec tests for probabilistic linkage (rank P).

1. The threshold and conflict rule, on scored pairs written out (`resolve_probabilistic`).
2. Scoring with Splink under a hand-set model on a few written-out people: which pairs blocking
   forms (never two different NHS numbers) and how agreement moves the weight.
3. The model's plan: its columns are token columns of the contract, its options are checked.
4. The whole link stage on a small `hard` synthetic world, against the generator's ground truth.

Token values in 1-2 are small integers standing in for 64-bit token codes: the model only compares
codes for equality, so stand-ins test exactly the same logic.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math

import numpy as np
import polars as pl

from pipeline.crypto.tokens import token_file_metadata
import pytest
import yaml

from pipeline.contracts import SCHEMAS_DIR, check_file, load_contract
from pipeline.link.model import COMPARISON_COLUMNS, ProbabilisticOptions, splink_settings
from pipeline.link import probabilistic
from pipeline.link.probabilistic import Weights, estimate_prior, model_frame, resolve_probabilistic, reweight, score_pairs, score_pairs_to_parts

THRESHOLD = 0.9


def resolve(pairs: list[tuple], records: list[str]) -> dict[str, tuple]:
    p = pl.DataFrame(
        pairs,
        schema={"record_id": pl.String, "participant_id": pl.String, "match_probability": pl.Float64, "match_weight": pl.Float64},
        orient="row",
    )
    out = resolve_probabilistic(pl.LazyFrame({"record_id": records}), p.lazy(), THRESHOLD).collect()
    return {r["record_id"]: (r["participant_id"], r["rank"], r["match_probability"], r["match_weight"], r["conflict"]) for r in out.iter_rows(named=True)}


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        # scored pairs of record R: (participant, probability, weight)  -> (participant, rank, probability, weight, conflict)
        ([("P1", 0.95, 4.2)], ("P1", "P", 0.95, 4.2, False)),  # one candidate above the threshold
        ([("P1", 0.9, 3.2)], ("P1", "P", 0.9, 3.2, False)),  # exactly at the threshold links
        ([("P1", 0.89, 3.0)], (None, None, None, 3.0, False)),  # below: unlinked, its weight kept for the report
        ([("P1", 0.99, 6.6), ("P2", 0.40, -0.6)], ("P1", "P", 0.99, 6.6, False)),  # only one reaches it
        ([("P1", 0.99, 6.6), ("P2", 0.95, 4.2)], (None, None, None, 6.6, True)),  # two reach it: conflict, never resolved
        ([("P1", 0.99, 6.6), ("P1", 0.95, 4.2)], ("P1", "P", 0.99, 6.6, False)),  # two pairs, one participant: no conflict
        ([], (None, None, None, None, False)),  # nothing scored
    ],
)
def test_threshold_and_conflict_rule(pairs, expected):
    assert resolve([("R", pid, p, w) for pid, p, w in pairs], ["R"])["R"] == expected


def test_every_record_appears_once_and_pairs_of_other_records_do_not_leak():
    out = resolve([("R1", "P1", 0.99, 7.0), ("X", "P2", 0.99, 7.0)], ["R1", "R2"])
    assert set(out) == {"R1", "R2"}
    assert out["R2"] == (None, None, None, None, False)


# ---------------------------------------------------------------------------------------------------
# Scoring with a hand-set model.


def hand_set_model() -> dict:
    """The model's settings with fixed m and u: the best level of each comparison m=0.9, u=0.001;
    the other agreement levels m=0.04, u=0.01; 'all other' m=0.01, u=0.98."""
    model = copy.deepcopy(splink_settings(ProbabilisticOptions(), prior=1e-4))
    for comparison in model["comparisons"]:
        levels = [lvl for lvl in comparison["comparison_levels"] if not lvl.get("is_null_level")]
        for i, lvl in enumerate(levels):
            best, last = i == 0, i == len(levels) - 1
            lvl["m_probability"], lvl["u_probability"] = (0.9, 0.001) if best else (0.01, 0.98) if last else (0.04, 0.01)
            lvl.pop("tf_adjustment_column", None)
    return model


TOKENS = list(COMPARISON_COLUMNS.values())
# Token spec v3's near-miss columns hold lists of tokens (coded: lists of codes).
SETS = {c.name for c in load_contract("token_blocks").columns if c.type == "list[string]"}


def coded(key: str, rows: list[dict]) -> pl.DataFrame:
    """A coded table: `key` (uid) and every token column, unspecified tokens null."""
    schema = {key: pl.UInt64, **{t: pl.List(pl.UInt64) if t in SETS else pl.UInt64 for t in TOKENS}}
    return pl.DataFrame([{key: r[key], **{t: r.get(t) for t in TOKENS}} for r in rows], schema=schema)


def person(uid: int, nhs: int | None, **over) -> dict:
    # One person's tokens: surname 10 (phonetic with initial 11, near-miss [100, 101]), forenames 20
    # (phonetic with initial 21, near-miss [200]), dob 30 (with sex 31), postcode 50.
    # `over` replaces any of them.
    base = {
        "tok_surname": 10, "tok_surname_phonetic_initial": 11, "tok_forename": 20, "tok_forename_first": 20,
        "tok_forename_phonetic_initial": 21, "tok_dob": 30, "tok_dob_sex": 31, "tok_postcode": 50,
        "tok_surname_near": [100, 101], "tok_forename_near": [200],
    }  # fmt: skip
    return {"uid": uid, "tok_nhs": nhs, **base, **over}


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> dict[int, dict[int, float]]:
    participants = coded("uid", [person(1, nhs=100), person(2, nhs=None, tok_forename=29, tok_forename_first=29, tok_forename_phonetic_initial=28)])
    records = coded(
        "uid",
        [
            person(11, nhs=None),  # no NHS number, everything else as participant 1 (and 2's surname, dob)
            person(12, nhs=999),  # an NHS number that contradicts participant 1's
            person(13, nhs=None, tok_postcode=59),  # moved house
            person(14, nhs=None, tok_dob=32, tok_dob_sex=33),  # day and month swapped: the date disagrees
            person(16, nhs=None, tok_surname=17, tok_surname_phonetic_initial=16, tok_surname_near=[101, 170]),  # surname one edit apart
            person(17, nhs=None, tok_surname=19, tok_surname_phonetic_initial=18, tok_surname_near=[190]),  # another surname
            person(15, nhs=None, tok_surname=19, tok_surname_phonetic_initial=18, tok_dob=39, tok_dob_sex=38, tok_forename_phonetic_initial=26, tok_postcode=58),
        ],
    )
    pairs = score_pairs(
        model_frame(records.lazy(), "uid").collect(), model_frame(participants.lazy(), "uid").collect(), hand_set_model(), ProbabilisticOptions(), tmp_path_factory.mktemp("duckdb")
    )
    out: dict[int, dict[int, float]] = {}
    for r, p, w in pairs.iter_rows():
        out.setdefault(r, {})[p] = w
    return out


def test_blocking_never_pairs_two_different_nhs_numbers(scored):
    # Record 12 agrees with participant 1 on every identifier but the NHS number: no pair with 1.
    # Participant 2 has no NHS number, so 12 may still pair with 2 (they share surname and dob).
    assert 1 not in scored.get(12, {})
    assert 2 in scored[12]


def test_agreement_raises_the_weight_and_each_fault_costs_less_than_disagreement(scored):
    full = scored[11][1]
    moved, swapped = scored[13][1], scored[14][1]
    assert full > moved > 0 and full > swapped > 0
    # A surname one edit apart (a shared near-miss token) costs less than one that disagrees.
    assert full > scored[16][1] > scored[17][1]
    # Full agreement with 1 beats the same surname and dob with a different forename (participant 2).
    assert scored[11][1] > scored[11][2]


def test_scoring_in_chunks_gives_the_same_pairs_and_weights_as_scoring_at_once(tmp_path):
    """score_pairs scores a source in chunks so the engine holds one chunk's pairs at a time; the
    chunks must not change which pairs are formed or any weight (term frequencies are the whole
    inputs')."""
    participants = coded("uid", [person(i, nhs=100 + i, tok_surname=10 + i % 3) for i in range(1, 9)])
    records = coded("uid", [person(20 + i, nhs=None, tok_surname=10 + i % 3, tok_postcode=50 + i % 2) for i in range(12)])
    args = (model_frame(records.lazy(), "uid").collect(), model_frame(participants.lazy(), "uid").collect(), hand_set_model())
    whole = score_pairs(*args, ProbabilisticOptions(), tmp_path / "a")
    chunked = score_pairs(*args, ProbabilisticOptions(records_per_scoring_chunk=3), tmp_path / "b")
    assert whole.height > 20
    assert chunked.equals(whole)


def test_pairs_split_into_record_ranges_are_the_same_pairs_in_the_same_order(tmp_path, monkeypatch):
    """The pairs stay on disk in parts by ranges of the record uid (memory: one part, not every
    pair); the parts in order are every pair sorted by the uids, and the weights file holds their
    weights in that order."""
    participants = coded("uid", [person(i, nhs=100 + i, tok_surname=10 + i % 3) for i in range(1, 9)])
    records = coded("uid", [person(20 + i, nhs=None, tok_surname=10 + i % 3, tok_postcode=50 + i % 2) for i in range(12)])
    args = (model_frame(records.lazy(), "uid").collect(), model_frame(participants.lazy(), "uid").collect(), hand_set_model())
    whole = score_pairs(*args, ProbabilisticOptions(), tmp_path / "a")
    monkeypatch.setattr(probabilistic, "PAIRS_PER_PART", 7)
    parts = score_pairs_to_parts(*args, ProbabilisticOptions(records_per_scoring_chunk=5), tmp_path / "b")
    assert len(parts.parts) > 3 and parts.count == whole.height
    assert parts.read_all().equals(whole)
    weights = np.fromfile(parts.weights, dtype=np.float64)
    assert np.array_equal(weights, whole.get_column("match_weight").to_numpy())
    # Each part holds the pairs of the records its range gives it.
    for k in range(len(parts.parts)):
        assert (parts.read(k).select(parts.part_of("record_uid")).to_series() == k).all()


@pytest.mark.parametrize("n", [0, 1, 7, 8, 129, 1000, 4099])
def test_the_weights_sum_from_disk_is_numpys_sum_bit_for_bit(tmp_path, monkeypatch, n):
    """The prior's EM sums a function of every weight: read from disk a block at a time, the sum
    must be numpy's of the whole array, bit for bit (the prior, and so every weight, is written)."""
    monkeypatch.setattr(probabilistic, "WEIGHTS_PER_READ", 16)
    w = np.random.default_rng(n).standard_normal(n) * 30
    w.tofile(tmp_path / "w.f64")
    f = lambda x: 1.0 / (1.0 + np.exp2(-(x - 3.25)))  # noqa: E731
    assert Weights(tmp_path / "w.f64", n).total(f) == (float(np.sum(f(w))) if n else 0.0)
    assert estimate_prior(Weights(tmp_path / "w.f64", n), 1e-4, 10**7) == estimate_prior(w, 1e-4, 10**7)


def test_pairs_no_blocking_rule_admits_are_never_scored(scored):
    # Record 15 has another surname, forename sound, dob and postcode: no rule pairs it with anyone.
    assert 15 not in scored


# ---------------------------------------------------------------------------------------------------
# The prior and the plan.


def test_prior_is_re_estimated_from_the_pairs_with_bayes_factors_fixed():
    # Two certain matches among a million possible pairs, one certain non-match.
    assert estimate_prior(np.array([40.0, 40.0, -20.0]), 1e-6, 1_000_000) == pytest.approx(2e-6, rel=1e-3)
    # No pairs at all: the model's prior stands.
    assert estimate_prior(np.array([]), 1e-5, 10) == 1e-5


def test_reweighting_moves_weight_by_the_prior_odds_and_keeps_probability_consistent():
    pairs = pl.DataFrame({"match_weight": [0.0, 10.0]})
    out = reweight(pairs, model_prior=1e-4, prior=1e-5)
    shift = math.log2(1e-5 / (1 - 1e-5)) - math.log2(1e-4 / (1 - 1e-4))
    assert out.get_column("match_weight").to_list() == pytest.approx([shift, 10.0 + shift])
    for w, p in out.select("match_weight", "match_probability").iter_rows():
        assert p == pytest.approx(1 / (1 + 2 ** (-w)))


def test_trained_m_is_floored_so_no_single_disagreement_vetoes_a_link():
    from pipeline.link.model import floor_m

    model = {"comparisons": [{"comparison_levels": [
        {"sql_condition": "null", "is_null_level": True},
        {"m_probability": 0.99999, "u_probability": 0.5},
        {"m_probability": 1e-12, "u_probability": 0.5},
        {"m_probability": None, "u_probability": None},  # a level training never saw stays untrained
    ]}]}  # fmt: skip
    levels = floor_m(model, 1e-3)["comparisons"][0]["comparison_levels"]
    ms = [lvl.get("m_probability") for lvl in levels]
    assert ms[2] == pytest.approx(1e-3, rel=1e-2) and ms[1] + ms[2] == pytest.approx(1.0) and ms[3] is None
    assert model["comparisons"][0]["comparison_levels"][2]["m_probability"] == 1e-12  # the input is left alone


def test_the_model_reads_only_token_columns_of_the_contract():
    tokens = set(yaml.safe_load((SCHEMAS_DIR / "_tokens.yaml").read_text())["columns"])
    assert set(COMPARISON_COLUMNS.values()) <= tokens, "update pipeline.link.model.COMPARISON_COLUMNS"


@pytest.mark.parametrize("bad", [{"threshold_match_probability": 0.3}, {"threshold_match_probability": 1.0}, {"u_max_pairs": 10}, {"addresses": "all"}])
def test_options_are_checked(bad):
    with pytest.raises(ValueError):
        ProbabilisticOptions(**bad)


# ---------------------------------------------------------------------------------------------------
# The whole stage on a small hard world. Tokens are made here with SHA-256 of the field and the
# canonical value (the pipeline's canonical forms; no key is needed to test linkage, which only
# compares tokens for equality).

PERSONS_N = 1500


def _tokenised(lf: pl.LazyFrame, keep: list[str]) -> pl.DataFrame:
    from pipeline.pseudonymise.identifiers import TOKEN_COLUMNS, canonical_forms

    df = canonical_forms(lf).collect()
    out = df.select(keep)
    for c in TOKEN_COLUMNS:
        values = df.get_column(c.name)
        if c.is_set:  # a near-miss column: the list of its fragments' tokens, sorted
            sets = [None if v is None else sorted({hashlib.sha256(f"{c.field}|{f}".encode()).hexdigest() for f in v}) for v in values.to_list()]
            out = out.with_columns(pl.Series(c.name, sets, dtype=pl.List(pl.String)))
            continue
        distinct = values.drop_nulls().unique()
        lookup = dict(zip(distinct.to_list(), [hashlib.sha256(f"{c.field}|{v}".encode()).hexdigest() for v in distinct.to_list()], strict=True))
        out = out.with_columns(values.replace_strict(lookup, default=None, return_dtype=pl.String).alias(c.name))
    return out


def record_tokens(source: str, ids: pl.Series) -> pl.Series:
    """This module's stand-in for the key holder's record tokens: 64 hex characters per (source, ID),
    as the link map's contract asks (the real ones are keyed: pipeline.crypto.tokens)."""
    return ids.map_elements(lambda i: hashlib.sha256(f"{source}|{i}".encode()).hexdigest(), return_dtype=pl.String)


@pytest.fixture(scope="module")
def hard_run(tmp_path_factory):
    from pipeline.pseudonymise.records import write_token_files
    from pipeline.link.stage import run_link
    from pipeline.settings import SOURCES, RunConfig
    from pipeline.synth import generate
    from pipeline.zones import persons_file, study_persons_file

    base = tmp_path_factory.mktemp("hard")
    generate(base / "input", persons=PERSONS_N, seed=41, profile="hard")
    cfg = RunConfig.from_conf({"raw_dir": str(base / "input" / "raw"), "work_dir": str(base / "work"), "release_label": "p-test"})
    truth_persons = pl.read_parquet(base / "input" / "truth" / "persons.parquet")
    register = pl.scan_parquet(base / "input" / "raw" / "consent_register.parquet").filter(
        # The consent gate's outcome here: anyone with a withdrawal in the register is excluded.
        (pl.col("consent_status") == "consented") & pl.col("withdrawal_date").is_null()
    )
    persons = _tokenised(register, ["participant_id"])
    persons.write_parquet(persons_file(cfg), metadata=token_file_metadata("test"), mkdir=True)
    # The covariates the quality report groups by, on the study side (pipeline.zones.study_persons_file).
    persons.select("participant_id").join(
        truth_persons.select("participant_id", "age_at_index", "sex", ((pl.col("imd_decile") + 1) // 2).cast(pl.Int8).alias("imd_quintile"), "site"),
        on="participant_id",
    ).write_parquet(study_persons_file(cfg))
    for s in SOURCES:
        tokens = _tokenised(pl.scan_parquet(base / "input" / "raw" / f"{s}.parquet"), ["record_id"])
        tokens = tokens.with_columns(record_id=record_tokens(s, tokens.get_column("record_id"))).sort("record_id")
        write_token_files(tokens, cfg.pseudonymised_dir, s, token_file_metadata("test"))
    options = ProbabilisticOptions(u_max_pairs=2e5, em_max_pairs=2e5)
    out = run_link(cfg, options)
    return {"cfg": cfg, "link_map": out, "truth": base / "input" / "truth"}


def test_stage_on_the_hard_profile_is_precise_and_finds_what_ranks_1_to_5_miss(hard_run):
    from pipeline.link.quality import evaluate_against_truth, headline
    from pipeline.zones import study_persons_file

    cfg = hard_run["cfg"]
    ev = headline(evaluate_against_truth(hard_run["link_map"], hard_run["truth"], study_persons_file(cfg), record_tokens))
    rows = {(r["scope"], r["source"]): r for r in ev.iter_rows(named=True)}
    for (scope, source), r in rows.items():
        if scope == "all":
            assert r["precision"] >= 0.995, (source, r)
            assert r["recall"] >= 0.98, (source, r)
    p = rows[("probabilistic", "all")]
    assert p["tp"] > 50 and p["f1"] >= 0.9, p


def test_stage_writes_contracted_files_and_a_model_per_source(hard_run):
    from splink import DuckDBAPI, Linker

    cfg = hard_run["cfg"]
    check_file(hard_run["link_map"], "link_map")
    check_file(cfg.linked_dir / "linkage_quality.parquet", "linkage_quality")
    summary = json.loads((cfg.linked_dir / "linkage_summary.json").read_text())
    assert set(summary["sources"]["social_care"]) >= {"records", "linked_by_rank", "unlinked", "conflicts", "participants_found", "share_of_participants_found"}
    assert summary["sources"]["social_care"]["linked_by_rank"]["P"] > 0
    models = summary["probabilistic"]["sources"]
    for source, info in models.items():
        assert info["trained"], (source, info)
        model = json.loads((cfg.linked_dir / info["model_file"]).read_text())
        assert model["probability_two_random_records_match"] == pytest.approx(info["prior_unlinked"])
        # Not Splink's random name for the linker that trained it, which would make the file differ
        # on every run of the same inputs.
        assert "linker_uid" not in model
        # The saved model loads into Splink as it is.
        import pyarrow as pa

        db = DuckDBAPI()
        empty = pa.table({"uid": pa.array([], pa.uint64())})
        Linker([db.register(empty, table_name="a"), db.register(empty, table_name="b")], model, validate_settings=False)
    assert not (cfg.linked_dir / ".work").exists()


def test_records_of_people_outside_the_study_stay_unlinked(hard_run):
    from pipeline.link.quality import truth_frame

    cfg = hard_run["cfg"]
    truth = truth_frame(hard_run["truth"], pl.scan_parquet(cfg.pseudonymised_dir / "persons.parquet"), record_tokens).collect()
    lm = pl.read_parquet(hard_run["link_map"]).join(truth, on=["source", "record_id"])
    outsiders = lm.filter(pl.col("expected").is_null())
    assert outsiders.height > 1000
    assert outsiders.filter(pl.col("participant_id").is_not_null()).height <= outsiders.height * 0.001
