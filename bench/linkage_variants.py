"""Variants of the token model on public data (FEBRL), to see whether a different use of the tokens
that exist (token spec v2) closes the gap to plaintext Splink (issue 20).

Each variant is a Splink settings dictionary built from the pipeline's own
(pipeline.link.model.splink_settings) plus its EM training rules, run through the same steps as the
model itself (pipeline.link.probabilistic.link_probabilistic, its `settings` and `training_rules`
arguments) on the tokens bench/public_linkage.py makes. Only tokens are run: plaintext Splink does not
change between variants, and bench/public_linkage.py reports it.

FEBRL3 is the development set; run the others only to report a variant already chosen on it:

    .venv/bin/python bench/linkage_variants.py                         # FEBRL3, every variant
    .venv/bin/python bench/linkage_variants.py --data-sets febrl4 --variants model
"""

from __future__ import annotations

import copy
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

import polars as pl  # noqa: E402

import public_linkage  # noqa: E402
from pipeline.link.model import TRAINING_RULES, ProbabilisticOptions, _either_null, _eq, _level, _swapped, splink_settings  # noqa: E402
from pipeline.link.probabilistic import link_probabilistic  # noqa: E402

Settings = dict[str, Any]


def _with_tf(settings: Settings, where: dict[tuple[str, str], str]) -> Settings:
    """`settings` with a term-frequency adjustment on the levels named (comparison, SQL condition) -> column."""
    out = copy.deepcopy(settings)
    for comparison in out["comparisons"]:
        for level in comparison["comparison_levels"]:
            column = where.get((comparison["output_column_name"], level["sql_condition"]))
            if column:
                level |= {"tf_adjustment_column": column, "tf_adjustment_weight": 1.0}
    return out


def no_tf(options: ProbabilisticOptions, prior: float) -> tuple[Settings, tuple[str, ...]]:
    return splink_settings(replace(options, term_frequency_adjustments=False), prior), TRAINING_RULES


def tf_phonetic_and_dob(options: ProbabilisticOptions, prior: float) -> tuple[Settings, tuple[str, ...]]:
    """Also adjust the Soundex levels and the date of birth for their tokens' frequencies."""
    where = {
        ("forename", _eq("forename_phonetic")): "forename_phonetic",
        ("surname", _eq("surname_phonetic")): "surname_phonetic",
        ("dob", _eq("dob")): "dob",
    }
    return _with_tf(splink_settings(options, prior), where), TRAINING_RULES


def tf_dob(options: ProbabilisticOptions, prior: float) -> tuple[Settings, tuple[str, ...]]:
    return _with_tf(splink_settings(options, prior), {("dob", _eq("dob")): "dob"}), TRAINING_RULES


def tf_postcode(options: ProbabilisticOptions, prior: float) -> tuple[Settings, tuple[str, ...]]:
    """The record's own postcode agreeing, adjusted for its frequency, above the known-addresses level."""
    settings = splink_settings(options, prior)
    for comparison in settings["comparisons"]:
        if comparison["output_column_name"] == "postcode":
            comparison["comparison_levels"].insert(1, _level(_eq("postcode"), "postcode unit agrees (own)", tf="postcode"))
    return settings, TRAINING_RULES


def em_on_postcode(options: ProbabilisticOptions, prior: float) -> tuple[Settings, tuple[str, ...]]:
    """A third EM session, blocking on the postcode (trains names and date of birth again)."""
    return splink_settings(options, prior), (*TRAINING_RULES, "l.postcode = r.postcode")


def joint_names(options: ProbabilisticOptions, prior: float) -> tuple[Settings, tuple[str, ...]]:
    """One ordered ladder over forename and surname together instead of two comparisons, so their
    correlated evidence (Soundex tokens carry the other name's initial; a swap shows in both) is
    never multiplied as if independent."""
    settings = splink_settings(options, prior)
    tf = options.term_frequency_adjustments
    both_null = '("forename_first_l" IS NULL OR "forename_first_r" IS NULL) AND ("surname_l" IS NULL OR "surname_r" IS NULL)'
    names = {
        "output_column_name": "names",
        "comparison_description": "forename and surname together",
        "comparison_levels": [
            _level(both_null, "both names missing", null=True),
            _level(f"{_eq('forename_first')} AND {_eq('surname')}", "both agree", tf="surname" if tf else None),
            _level(f"{_eq('forename_first')} AND {_eq('surname_phonetic')}", "forename agrees, surnames sound alike"),
            _level(f"{_eq('surname')} AND {_eq('forename_phonetic')}", "surname agrees, forenames sound alike"),
            _level('"forename_first_l" = "surname_r" AND "surname_l" = "forename_first_r"', "names swapped"),
            _level(f"{_eq('forename_phonetic')} AND {_eq('surname_phonetic')}", "both sound alike"),
            _level(_eq("forename_first"), "forename agrees", tf="forename_first" if tf else None),
            _level(_eq("surname"), "surname agrees", tf="surname" if tf else None),
            _level(f"{_eq('forename_phonetic')} OR {_eq('surname_phonetic')}", "one sounds alike"),
            _level(_swapped("forename_first", "surname"), "one name is the other's"),
            {"sql_condition": "ELSE", "label_for_charts": "all other"},
        ],
    }
    settings["comparisons"] = [names, *[c for c in settings["comparisons"] if c["output_column_name"] not in ("forename", "surname")]]
    return settings, TRAINING_RULES


def directional_swap(options: ProbabilisticOptions, prior: float) -> tuple[Settings, tuple[str, ...]]:
    """Each name comparison's swap level one way only (left forename = right surname; left surname =
    right forename), so one name found in the other's place is credited once, a full swap twice."""
    settings = splink_settings(options, prior)
    one_way = {
        ("forename", _swapped("forename_first", "surname")): '"forename_first_l" = "surname_r"',
        ("surname", _swapped("surname", "forename_first")): '"surname_l" = "forename_first_r"',
    }
    for comparison in settings["comparisons"]:
        for level in comparison["comparison_levels"]:
            level["sql_condition"] = one_way.get((comparison["output_column_name"], level["sql_condition"]), level["sql_condition"])
    return settings, TRAINING_RULES


def directional_swap_phonetic(options: ProbabilisticOptions, prior: float) -> tuple[Settings, tuple[str, ...]]:
    """directional_swap, plus below each swap level the same swap on the Soundex tokens (the forename's
    Soundex with the surname's initial equals the other side's surname Soundex with the forename's
    initial exactly when the names, swapped, sound alike: token spec v2 makes the two comparable)."""
    settings, rules = directional_swap(options, prior)
    below = {
        ("forename", '"forename_first_l" = "surname_r"'): _level(
            '"forename_phonetic_l" = "surname_phonetic_r"', "first forename sounds like the other's surname"
        ),
        ("surname", '"surname_l" = "forename_first_r"'): _level(
            '"surname_phonetic_l" = "forename_phonetic_r"', "surname sounds like the other's first forename"
        ),
    }
    for comparison in settings["comparisons"]:
        levels = comparison["comparison_levels"]
        for i, level in enumerate(list(levels)):
            extra = below.get((comparison["output_column_name"], level["sql_condition"]))
            if extra:
                levels.insert(i + 1, extra)
    return settings, rules


def swap_comparison(options: ProbabilisticOptions, prior: float) -> tuple[Settings, tuple[str, ...]]:
    """Names given the other way round as a comparison of its own (a swap is one event of the
    record, seen in both names), in place of a swap level in each name comparison: the full swap,
    a swap with the other name only sounding alike, one name found in the other's place."""
    settings = splink_settings(options, prior)
    swap_levels = {_swapped("forename_first", "surname"), _swapped("surname", "forename_first")}
    for comparison in settings["comparisons"]:
        comparison["comparison_levels"] = [lvl for lvl in comparison["comparison_levels"] if lvl["sql_condition"] not in swap_levels]
    f_s, s_f = '"forename_first_l" = "surname_r"', '"surname_l" = "forename_first_r"'
    fp_sp, sp_fp = '"forename_phonetic_l" = "surname_phonetic_r"', '"surname_phonetic_l" = "forename_phonetic_r"'
    swap = {
        "output_column_name": "swap",
        "comparison_description": "forename and surname given the other way round",
        "comparison_levels": [
            _level(f"{_either_null('forename_first')} OR {_either_null('surname')}", "a name missing", null=True),
            _level(f"{f_s} AND {s_f}", "names swapped"),
            _level(f"({f_s} AND {sp_fp}) OR ({s_f} AND {fp_sp})", "names swapped, one only sounds alike"),
            _level(f"{fp_sp} AND {sp_fp}", "names swapped, both only sound alike"),
            _level(f"{f_s} OR {s_f}", "one name is in the other's place"),
            {"sql_condition": "ELSE", "label_for_charts": "all other"},
        ],
    }
    settings["comparisons"].insert(2, swap)
    return settings, TRAINING_RULES


VARIANTS: dict[str, Callable[[ProbabilisticOptions, float], tuple[Settings, tuple[str, ...]]]] = {
    "model": lambda options, prior: (splink_settings(options, prior), TRAINING_RULES),
    "no_tf": no_tf,
    "tf_phonetic_and_dob": tf_phonetic_and_dob,
    "tf_dob": tf_dob,
    "tf_postcode": tf_postcode,
    "em_on_postcode": em_on_postcode,
    "joint_names": joint_names,
    "directional_swap": directional_swap,
    "directional_swap_phonetic": directional_swap_phonetic,
    "swap_comparison": swap_comparison,
}


def run_variant(name: str, variant: str, frames: tuple[pl.DataFrame, pl.DataFrame], truth: pl.DataFrame, options: ProbabilisticOptions, work: Path) -> dict[str, Any]:
    participants, records = frames
    settings, rules = VARIANTS[variant](options, 1.0 / participants.height)
    pairs, info = link_probabilistic(
        "tokens", records, records, participants, participants, options, work / f"{variant}.json", work / "duckdb",
        settings=settings, training_rules=rules,
    )  # fmt: skip
    pairs = pairs.rename({"profile_key": "record_id", "participant_uid": "participant_id"})
    curve = [public_linkage.scores(records, truth, pairs, th) for th in public_linkage.THRESHOLDS]
    return {
        "data_set": name, "variant": variant, "prior_unlinked": info.prior_unlinked,
        "at_threshold": public_linkage.scores(records, truth, pairs, options.threshold_match_probability),
        # Tokens' best point at precision 1 (plaintext's precision at 0.9 on every FEBRL set).
        "at_precision_1": public_linkage.recall_at_precision(curve, 1.0),
    }  # fmt: skip


def main() -> None:
    import argparse
    import logging

    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("splink").setLevel(logging.ERROR)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-sets", nargs="+", default=list(public_linkage.DEVELOPMENT), choices=list(public_linkage.DATA_SETS))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = ap.parse_args()
    options = replace(ProbabilisticOptions(), em_max_pairs=None, min_records_to_train=50)
    print(f"{'data set':8} {'variant':26} {'P@0.9':>7} {'R@0.9':>7} {'F1@0.9':>7} | {'thr@P=1':>7} {'R':>7} {'F1':>7}")
    for name in args.data_sets:
        participants_raw, records_raw = public_linkage.load(name)
        truth = records_raw.join(participants_raw.select("person", pl.col("uid").alias("true_participant")), on="person", how="left").select(
            pl.col("uid").alias("record_id"), "true_participant"
        )
        frames = public_linkage.token_frames(participants_raw, records_raw)
        for variant in args.variants:
            with tempfile.TemporaryDirectory() as tmp:
                r = run_variant(name, variant, frames, truth, options, Path(tmp))
            a, e = r["at_threshold"], r["at_precision_1"]
            eq = f"{e['threshold']:>7} {e['recall']:7.4f} {e['f1']:7.4f}" if e else f"{'-':>7}"
            print(f"{name:8} {variant:26} {a['precision']:7.4f} {a['recall']:7.4f} {a['f1']:7.4f} | {eq}", flush=True)


if __name__ == "__main__":
    main()
