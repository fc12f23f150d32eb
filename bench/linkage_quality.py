"""Linkage quality benchmark: our token linkage beside plaintext Splink, in one run, on the synthetic
`hard` profile and on public benchmark data (FEBRL, bench/public_linkage.py).

    .venv/bin/python bench/linkage_quality.py [--persons 50000] [--seed 2026] [--sweep]
    .venv/bin/python bench/linkage_quality.py --public-only        # FEBRL only, about two minutes

Public data (bench/public_linkage.py): FEBRL3 is the development set, FEBRL1 and 2 are held out,
FEBRL4 was seen while choosing token spec v3's salts.
Each is tokenised by the pipeline under a benchmark key made for the run (never written) and linked by
the pipeline's own probabilistic step, and the same canonical values in clear by Splink 5's standard
comparisons, with the same blocking, training, prior and threshold; the table shows both at the
threshold and at equal precision, and the recall ceiling the blocking rules set.

On the synthetic profile:

Methods, each scored against the generator's ground truth (pipeline.link.quality.evaluate_against_truth;
precision counts any link of a record whose person did not pass the consent gate as a false positive):

1. `nhs_only`: a record links to the participant with the same valid NHS number (tokens), nothing else.
2. `tokens` (ours): the link stage as the pipeline runs it, ranks 1-5 then rank P on tokens.
3. `plaintext`: the same ranks 1-5, then rank P by Splink on the *plaintext* identifiers with the
   fuzzy comparisons Splink offers out of the box: Jaro-Winkler on forename and surname
   (NameComparison), date differences on the date of birth (DateOfBirthComparison). Everything else
   is held equal so the comparison isolates tokens against plaintext: the same canonical forms,
   blocking rules, training sessions, address lists, prior re-estimation, threshold and conflict rule.

Prints precision, recall and F1 per source, overall and on the records the probabilistic step
considered, with wall times, and writes bench/results/linkage_quality.json. `--sweep` also reruns
our linkage at several thresholds. The machine is shared: read the times as indications only.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import polars as pl  # noqa: E402

from linkage_inputs import prepare, record_tokens  # noqa: E402
from pipeline.link.model import BLOCKING_RULES, COMPARISON_COLUMNS, TRAINING_RULES, ProbabilisticOptions, comparisons, with_nhs_rule  # noqa: E402
from pipeline.link.probabilistic import link_probabilistic, resolve_probabilistic, with_known_addresses  # noqa: E402
from pipeline.link.quality import evaluate_against_truth, headline, in_probabilistic_scope  # noqa: E402
from pipeline.settings import SOURCES, RunConfig  # noqa: E402
from pipeline.zones import linkage_summary_file, persons_file, scan_record_tokens, study_persons_file  # noqa: E402

RESULTS = HERE / "results" / "linkage_quality.json"
# The model's columns in clear (the near-miss ones as their lists of fragments, which plaintext
# Splink's comparisons never read; they are carried only because the model's tables have them).
PLAIN_COLUMNS = ["uid", *COMPARISON_COLUMNS]


# ---------------------------------------------------------------------------------------------------
# 1. NHS number only


def nhs_only(cfg: RunConfig, out: Path) -> Path:
    persons = pl.scan_parquet(persons_file(cfg)).select("participant_id", "tok_nhs").drop_nulls("tok_nhs")
    unique = persons.group_by("tok_nhs").agg(pl.col("participant_id").first(), pl.len().alias("_n")).filter(pl.col("_n") == 1)
    parts = []
    for s in SOURCES:
        tokens = scan_record_tokens(cfg.pseudonymised_dir, s).select("record_id", "tok_nhs")
        parts.append(
            tokens.join(unique, on="tok_nhs", how="left").select(
                pl.lit(s).alias("source"), "record_id", "participant_id",
                pl.when(pl.col("participant_id").is_not_null()).then(pl.lit("2")).alias("rank"),
                pl.lit(None, dtype=pl.Float64).alias("match_weight"), pl.lit(False).alias("conflict"),
            )  # fmt: skip
        )
    pl.concat(parts).sink_parquet(out)
    return out


# ---------------------------------------------------------------------------------------------------
# 3. Plaintext Splink with fuzzy comparisons


def plaintext_settings(prior: float) -> dict[str, Any]:
    import splink.comparison_library as cl

    # Token spec v2 has no sex comparison (sex counts only in ours' dob|sex level), so neither has this.
    # The postcode: the unit against every known address, as ours.
    postcode = comparisons()[3]
    return {
        "link_type": "link_only",
        "unique_id_column_name": "uid",
        "probability_two_random_records_match": prior,
        "comparisons": [
            cl.NameComparison("forename_first"),
            cl.NameComparison("surname"),
            cl.DateOfBirthComparison("dob", input_is_string=False),
            postcode,
        ],
        "blocking_rules_to_generate_predictions": [{"blocking_rule": with_nhs_rule(r)} for r in BLOCKING_RULES],
        "retain_matching_columns": False,
        "retain_intermediate_calculation_columns": False,
    }


def _plain(lf: pl.LazyFrame, keep: str) -> pl.LazyFrame:
    """The canonical (plaintext) values behind each token column, in the model's names."""
    from pipeline.link.model import COMPARISON_COLUMNS
    from pipeline.pseudonymise.identifiers import canonical_forms

    return canonical_forms(lf).select(
        keep, *[pl.col(t).alias(m) for m, t in COMPARISON_COLUMNS.items()]
    ).with_columns(pl.col("dob").str.to_date())


def _lists(lf: pl.LazyFrame) -> pl.LazyFrame:
    from pipeline.link.model import ADDRESS_LISTS

    return lf.with_columns([pl.when(pl.col(o).is_not_null()).then(pl.concat_list(o)).alias(m) for m, o in ADDRESS_LISTS.items()])


def plaintext_yardstick(cfg: RunConfig, ours: Path, out: Path, options: ProbabilisticOptions, log) -> tuple[Path, float]:
    """Ranks 1-5 from our run, then rank P on plaintext; returns (link map, seconds of the P step)."""
    from pipeline.link.model import ADDRESS_LISTS

    t0 = time.perf_counter()
    raw = cfg.raw
    persons = pl.read_parquet(persons_file(cfg), columns=["participant_id"]).sort("participant_id").with_row_index("uid")
    register = pl.scan_parquet(raw / "consent_register.parquet").join(persons.lazy().select("participant_id"), on="participant_id")
    participants = _lists(_plain(register, "participant_id")).join(persons.lazy(), on="participant_id").collect()
    participants = participants.with_columns(pl.col("uid").cast(pl.UInt64))
    lm = pl.read_parquet(ours).with_columns(scope=in_probabilistic_scope())

    plain: dict[str, pl.DataFrame] = {}
    seen = []
    # The link map names records by their record tokens (pipeline.crypto.tokens), not the raw IDs.
    record_token = record_tokens(cfg)
    for s in SOURCES:
        records = _plain(pl.scan_parquet(raw / f"{s}.parquet"), "record_id").collect()
        records = records.with_columns(record_token(s, records.get_column("record_id")).alias("record_id"))
        plain[s] = records
        nhs_linked = lm.filter((pl.col("source") == s) & pl.col("rank").is_in(["1", "2", "3", "4"])).select("record_id", "participant_id")
        seen.append(records.join(nhs_linked, on="record_id").select("participant_id", *ADDRESS_LISTS.values()).unique())
    addresses = pl.concat(seen).unique().join(persons, on="participant_id").select(pl.col("uid").cast(pl.UInt64), *ADDRESS_LISTS.values())
    model_cols = [c for c in PLAIN_COLUMNS] + list(ADDRESS_LISTS)
    part_model = participants.select(model_cols)
    known = with_known_addresses(part_model.lazy(), addresses.lazy()).collect().select(model_cols)

    results = [lm.filter(~pl.col("scope")).select("source", "record_id", "participant_id", "rank", "match_weight", "conflict")]
    null_nhs = participants.get_column("nhs").null_count() > 0
    for s in SOURCES:
        records = plain[s]
        profile_cols = [c for c in PLAIN_COLUMNS if c != "uid"]
        records = records.with_columns(pl.struct(profile_cols).hash().alias("uid"))
        profiles = _lists(records.select(["uid", *profile_cols]).unique("uid").lazy()).collect().select(model_cols)
        scope = lm.filter((pl.col("source") == s) & pl.col("scope")).select("record_id")
        unlinked = profiles.join(records.join(scope, on="record_id").select("uid").unique(), on="uid")
        if not null_nhs:
            unlinked = unlinked.filter(pl.col("nhs").is_null() | pl.col("nhs").is_in(participants.get_column("nhs").implode()))
        training = profiles.sample(min(profiles.height, options.max_training_profiles), seed=options.seed)
        pairs, info = link_probabilistic(
            s, training, unlinked, part_model, known, options, out.parent / f"plaintext_model_{s}.json", out.parent / "duckdb",
            settings=plaintext_settings(1.0 / participants.height), training_rules=TRAINING_RULES,
        )  # fmt: skip
        log(f"  plaintext {s}: {info.records_scored:,} profiles scored, {info.pairs_scored:,} pairs, {info.seconds}")
        pairs = pairs.join(participants.select(pl.col("uid").alias("participant_uid"), "participant_id"), on="participant_uid")
        resolved = resolve_probabilistic(
            unlinked.lazy().select(pl.col("uid").alias("record_id")),
            pairs.lazy().rename({"profile_key": "record_id"}),
            options.threshold_match_probability,
        ).collect()
        per_record = records.join(scope, on="record_id").select("record_id", "uid").join(
            resolved.rename({"record_id": "uid"}), on="uid", how="left"
        )
        results.append(
            per_record.select(
                pl.lit(s).alias("source"), "record_id", "participant_id", "rank", "match_weight",
                pl.col("conflict").fill_null(False),
            )  # fmt: skip
        )
    pl.concat(results, how="vertical_relaxed").write_parquet(out)
    return out, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------


def _scores(ev: pl.DataFrame) -> dict[str, Any]:
    h = headline(ev)
    out: dict[str, Any] = {}
    for r in h.iter_rows(named=True):
        out.setdefault(r["scope"], {})[r["source"]] = {
            k: (round(r[k], 5) if isinstance(r[k], float) else r[k]) for k in ("records", "tp", "fp", "fn", "precision", "recall", "f1")
        }
    return out


def _table(results: dict[str, Any]) -> str:
    lines = [
        f"{'method':10} {'source':13} {'precision':>9} {'recall':>8} {'F1':>8} {'P-scope P':>9} {'P-scope R':>9} {'P-scope F1':>10}",
    ]
    for method, res in results["methods"].items():
        for source in [*SOURCES, "all"]:
            a = res["scores"]["all"].get(source, {})
            p = res["scores"].get("probabilistic", {}).get(source, {})

            def f(x):
                return f"{x:.4f}" if isinstance(x, float) else "   -  "

            lines.append(
                f"{method:10} {source:13} {f(a.get('precision')):>9} {f(a.get('recall')):>8} {f(a.get('f1')):>8} "
                f"{f(p.get('precision')):>9} {f(p.get('recall')):>9} {f(p.get('f1')):>10}"
            )
        lines.append(f"{method:10} seconds: {res['seconds']}")
    return "\n".join(lines)


def run(persons: int, seed: int, profile: str, sweep: bool) -> dict[str, Any]:
    """The synthetic part of the benchmark (methods 1-3 above) on `profile`."""
    from pipeline.link.stage import run_link

    log = print
    cfg, truth = prepare(persons, profile, seed, log=log)
    persons_path = study_persons_file(cfg)  # participant IDs with the covariates the scores break down by
    options = ProbabilisticOptions()
    bench_dir = cfg.work / "bench-linkage-quality"
    bench_dir.mkdir(parents=True, exist_ok=True)
    methods: dict[str, Any] = {}

    t = time.perf_counter()
    nhs = nhs_only(cfg, bench_dir / "nhs_only.parquet")
    methods["nhs_only"] = {"seconds": {"total": round(time.perf_counter() - t, 1)}, "scores": _scores(evaluate_against_truth(nhs, truth, persons_path, record_tokens(cfg)))}

    t = time.perf_counter()
    ours = run_link(cfg, options)
    total = time.perf_counter() - t
    summary = json.loads(linkage_summary_file(cfg).read_text())
    methods["tokens"] = {
        "seconds": {"total": round(total, 1), **summary["seconds"]},
        "scores": _scores(evaluate_against_truth(ours, truth, persons_path, record_tokens(cfg))),
        "models": summary["probabilistic"]["sources"],
    }
    log(f"tokens: {total:.0f}s")

    plain, p_seconds = plaintext_yardstick(cfg, ours, bench_dir / "plaintext.parquet", options, log)
    det_seconds = summary["seconds"]["profiles_and_ranks_1_5"]
    methods["plaintext"] = {
        "seconds": {"ranks_1_5_from_tokens_run": det_seconds, "probabilistic_on_plaintext": round(p_seconds, 1), "total": round(det_seconds + p_seconds, 1)},
        "scores": _scores(evaluate_against_truth(plain, truth, persons_path, record_tokens(cfg))),
    }

    results: dict[str, Any] = {
        "persons": persons, "profile": profile, "seed": seed,
        "threshold_match_probability": options.threshold_match_probability,
        "methods": methods,
        "note": "wall times on a shared 2-core machine: indications only",
    }  # fmt: skip
    for scope in ("all", "probabilistic"):
        ours_f1 = methods["tokens"]["scores"][scope]["all"]["f1"]
        plain_f1 = methods["plaintext"]["scores"][scope]["all"]["f1"]
        results[f"f1_points_behind_plaintext_{scope}"] = round(100 * (plain_f1 - ours_f1), 2)

    if sweep:
        results["threshold_sweep"] = threshold_sweep(cfg, truth, persons_path, options)
    return results


def threshold_sweep(cfg: RunConfig, truth: Path, persons_path: Path, base: ProbabilisticOptions) -> list[dict[str, Any]]:
    """Our linkage at several thresholds (a fresh run each, into linked/<label>-t<threshold>)."""
    import dataclasses
    import os

    from pipeline.link.stage import run_link

    rows = []
    for threshold in (0.5, 0.8, 0.9, 0.95, 0.99, 0.999):
        label = f"{cfg.release_label}-t{threshold}"
        link = cfg.work / "pseudonymised" / label
        if not link.exists():
            os.symlink(cfg.pseudonymised_dir, link)
        c = RunConfig.from_conf({**cfg.to_conf(), "release_label": label})
        out = run_link(c, dataclasses.replace(base, threshold_match_probability=threshold))
        s = _scores(evaluate_against_truth(out, truth, persons_path, record_tokens(cfg)))
        rows.append({"threshold": threshold, "all": s["all"]["all"], "probabilistic": s["probabilistic"]["all"]})
        print(f"threshold {threshold}: all {s['all']['all']}, probabilistic {s['probabilistic']['all']}")
    return rows


def main() -> None:
    import tempfile

    import public_linkage

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persons", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--profile", default="hard")
    ap.add_argument("--sweep", action="store_true", help="also rerun our linkage at several thresholds")
    ap.add_argument("--public-only", action="store_true", help="only the public data sets (FEBRL), not the synthetic profile")
    ap.add_argument(
        "--public", nargs="*", default=[*public_linkage.DEVELOPMENT, *public_linkage.HELD_OUT], choices=list(public_linkage.DATA_SETS),
        help="public data sets to run (none: skip them)",
    )  # fmt: skip
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("splink").setLevel(logging.ERROR)
    results: dict[str, Any] = {}
    if not args.public_only:
        results = run(args.persons, args.seed, args.profile, args.sweep)
    if args.public:
        with tempfile.TemporaryDirectory() as tmp:
            results["public"] = public_linkage.run(tuple(args.public), Path(tmp))
    if not args.public_only:
        print(_table(results))
        for scope in ("all", "probabilistic"):
            print(f"F1 points behind plaintext ({scope}): {results[f'f1_points_behind_plaintext_{scope}']}")
    if args.public:
        print(public_linkage.table(results["public"]))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if args.public_only:
        name = RESULTS.with_name("linkage_quality-public.json")
    elif (args.persons, args.seed, args.profile) == (50_000, 2026, "hard"):
        name = RESULTS
    else:
        name = RESULTS.with_name(f"linkage_quality-{args.profile}-{args.persons}-s{args.seed}.json")
    name.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {name}")


if __name__ == "__main__":
    main()
