"""Stage 3a: the analysis cohort of the run's study. Eligibility, baseline covariates, survey outcomes,
service use and costs (by the study's pre/post period and by month), propensity matching per sample, balance and the love plot.
Reads `pseudonymised/` payloads and `linked/`; never the key, never `raw/`.

Output goes to `linked/<label>/cohort/`, one Parquet file per release table (keyed by
participant_id; the publish step swaps in the release's study IDs), `artefacts/` (love plot and the
reference tables used) and `cohort.json` (flow counts, matching per sample, references).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline import io
from pipeline.cohort.balance import BALANCE_SCHEMA
from pipeline.cohort.covariates import BASELINE_USE, baseline_use, covariate_names
from pipeline.cohort.eligibility import age_band, baseline_answers, eligible_persons
from pipeline.cohort.estimates import did_counts, estimate_effects, person_outcomes
from pipeline.cohort.events import distinct_events, linked_events
from pipeline.cohort.love_plot import draw_love_plot
from pipeline.cohort.outcomes import survey_outcomes
from pipeline.cohort.outputs import ARTEFACTS_DIR, LOVE_PLOT, UNIT_COSTS_ARTEFACT, VALUE_SET_ARTEFACT
from pipeline.cohort.panel import person_month_panel
from pipeline.cohort.samples import MATCHES_SCHEMA, SampleMatch, match_sample, samples
from pipeline.cohort.service_use import service_use
from pipeline.costs import read_value_set, scan_unit_costs
from pipeline.progress import Progress
from pipeline.publish.disclosure import MIN_GROUP_SIZE, control_count
from pipeline.settings import RunConfig
from pipeline.zones import COHORT_SCRATCH, cohort_dir, cohort_summary_file, study_persons_file, survey_file

log = logging.getLogger(__name__)
MAIN_SAMPLE = "all"


def value_set_path(cfg: RunConfig) -> Path:
    """The run's EQ-5D value set file (RunConfig.eq5d_value_set: a shipped name or a file)."""
    return cfg.value_set_file


def with_main_sample(cohort: pl.DataFrame, main: SampleMatch | None) -> pl.DataFrame:
    """Propensity score, matched, matched set and weight of the whole-study sample, per cohort row.

    With replacement a comparator can be in several sets; it keeps the first here (its weight counts
    them all), and the `matches` table lists every set.
    """
    if main is None:
        return cohort.with_columns(
            propensity_score=pl.lit(None, pl.Float64), matched=pl.lit(False), matched_set=pl.lit(None, pl.Int32), match_weight=pl.lit(0.0)
        )
    r = main.result
    matched_set = r.treated_set.copy()
    first_set = np.full(len(matched_set), np.iinfo(np.int64).max)
    np.minimum.at(first_set, r.pair_control, r.pair_set)
    matched_set = np.where(first_set < np.iinfo(np.int64).max, first_set, matched_set)
    per_row = pl.DataFrame(
        {
            "participant_id": main.participant_id,
            "propensity_score": main.propensity_score,
            "matched": r.weight > 0,
            "matched_set": pl.Series(np.where(matched_set > 0, matched_set, 0)).cast(pl.Int32),
            "match_weight": r.weight,
        }
    ).with_columns(matched_set=pl.when(pl.col("matched_set") > 0).then(pl.col("matched_set")))
    return cohort.join(per_row, on="participant_id", how="left").sort("participant_id")


# What build_cohort's progress reports say it is doing (pipeline.progress).
COHORT_STEPS: tuple[str, ...] = ("eligibility and service use", "propensity matching of every sample", "panel and outcomes", "love plot and summary")


def build_cohort(cfg: RunConfig) -> Path:
    """Build the cohort zone's tables; says every minute how far it is (pipeline.progress).

    The models (propensity, effect estimates) run on one BLAS thread. A threaded BLAS splits its sums
    by the number of cores, so their last bits, and with them the bytes of the matches, cohort and
    estimates tables, would depend on the machine; and on a busy machine its threads mostly wait for
    each other (at 100 thousand people the stage took a quarter of the CPU time on one thread).
    """
    with one_blas_thread(), Progress("cohort", total=len(COHORT_STEPS), unit="steps") as progress:
        return _build_cohort(cfg, progress)


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Every BLAS the models use on one thread for the duration (see `build_cohort`)."""
    # A BLAS must be loaded before it is limited, or it keeps its threads: numpy's, and scipy's own
    # copy, which statsmodels brings in.
    import statsmodels.api  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _build_cohort(cfg: RunConfig, progress: Progress) -> Path:
    progress.step(COHORT_STEPS[0])
    out = cohort_dir(cfg)
    persons = pl.read_parquet(study_persons_file(cfg))
    value_set = read_value_set(value_set_path(cfg))
    costs = scan_unit_costs(Path(cfg.unit_costs))
    outcomes = survey_outcomes(pl.scan_parquet(survey_file(cfg)), value_set).collect()
    study = cfg.study
    eligible, counts = eligible_persons(persons, baseline_answers(outcomes, study), cfg.start, cfg.end, cfg.extract, study)

    work = out / COHORT_SCRATCH
    shutil.rmtree(work, ignore_errors=True)
    # The eligible participants' linked events, joined once, then each distinct event once, read by
    # service use and the panel alike.
    events, duplicates = distinct_events(linked_events(cfg, work, eligible.lazy()), work)
    use = service_use(events, eligible.lazy(), costs, cfg.extract, study, distinct=True).collect()
    cohort = (
        eligible.join(baseline_use(use.lazy(), study).collect(), on="participant_id", how="left")
        .with_columns([pl.col(c).fill_null(0.0) for c in (*BASELINE_USE, "baseline_cost_gbp")])
        .with_columns(age_band=age_band(pl.col("age_at_index"), study))
        .sort("participant_id")
    )

    progress.advance()
    progress.step(COHORT_STEPS[1])
    matched = {s.name: match_sample(cohort, s, cfg.matching, study) for s in samples(study)}
    progress.advance()
    progress.step(COHORT_STEPS[2])
    found = [m for m in matched.values() if m is not None]
    cohort = with_main_sample(cohort, matched[MAIN_SAMPLE])
    # A sample with an empty arm (a run with no MDT participants yet) has no rows, never a missing file.
    matches = pl.concat([pl.DataFrame(schema=MATCHES_SCHEMA), *(m.matches() for m in found)])
    balance = pl.concat([pl.DataFrame(schema=BALANCE_SCHEMA), *(m.balance for m in found)])

    for name, table in (("cohort", cohort), ("service_use", use), ("matches", matches), ("balance", balance)):
        io.write_table(table.to_arrow(), out / f"{name}.parquet")
    _sink_panel(events, eligible, cohort, costs, cfg, work, out / "panel.parquet")
    eligible_outcomes = outcomes.join(cohort.select("participant_id"), on="participant_id", how="semi").sort("participant_id", "wave")
    io.write_table(eligible_outcomes.to_arrow(), out / "outcomes.parquet")
    estimates = estimate_effects(
        found, cohort, person_outcomes(use, eligible_outcomes, study.periods[1]), did_counts(pl.scan_parquet(out / "panel.parquet")),
        MIN_GROUP_SIZE, study,
    )
    io.write_table(estimates.to_arrow(), out / "estimates.parquet")

    progress.advance()
    progress.step(COHORT_STEPS[3])
    artefacts = out / ARTEFACTS_DIR
    if artefacts.exists():
        shutil.rmtree(artefacts)  # a rerun must not keep a previous run's love plot
    artefacts.mkdir(parents=True)
    if balance.height:
        with io.atomic_path(artefacts / LOVE_PLOT) as tmp:
            draw_love_plot(balance, covariate_names(study), tmp, _plot_facts(matched, cfg.matching.balance_threshold), cfg.matching.balance_threshold)
    io.copy_file(Path(cfg.unit_costs), artefacts / UNIT_COSTS_ARTEFACT)
    io.copy_file(value_set_path(cfg), artefacts / VALUE_SET_ARTEFACT)

    main = matched[MAIN_SAMPLE]
    main_counts = main.counts() if main else {"matched_mdt": 0, "matched_comparators": 0, "unmatched_mdt": counts["eligible_mdt"]}
    counts.update({k: main_counts[k] for k in ("matched_mdt", "matched_comparators", "unmatched_mdt")})
    counts["max_abs_smd_after"] = _max_abs_smd(balance, MAIN_SAMPLE)
    counts["duplicate_records_removed"] = duplicates
    threshold = cfg.matching.balance_threshold
    counts["samples"] = {name: m.diagnostics(threshold) for name, m in matched.items() if m}
    # The balance gate: every sample's largest |SMD| after matching must be below the threshold.
    counts["balance"] = {
        "threshold": threshold,
        "samples_above_threshold": [name for name, m in matched.items() if m and not m.balanced],
    }
    shutil.rmtree(work, ignore_errors=True)
    io.write_json(_summary(cfg, counts, value_set.name), cohort_summary_file(cfg))
    log.info("cohort: %d eligible, %d MDT matched", counts["eligible"], counts["matched_mdt"])
    return out


# Participants whose monthly panel is built at once (`_sink_panel`): 24 months each for Pioneer.
PANEL_PIECE_PEOPLE = 8_192
# Rows of an event file read at once when it is split into ranges of participants.
SPLIT_WINDOW_ROWS = 262_144


def _sink_panel(
    events: dict[str, pl.LazyFrame], eligible: pl.DataFrame, cohort: pl.DataFrame, costs: pl.LazyFrame, cfg: RunConfig, work: Path, path: Path
) -> None:
    """Write the person-month panel (pipeline.cohort.panel) with each row's arm, matched set and weight,
    sorted by participant and month.

    With more than PANEL_PIECE_PEOPLE eligible participants it is built in ranges of participant
    IDs (cut at the participants' own IDs, so each holds about as many people): every source's
    events are split once, window by window, into the ranges, each range's panel is built and
    sorted on its own, and the ranges are streamed to `path` in order. A participant's panel
    depends on their own events only, so the rows, their order and the bytes are those of the
    panel built whole; memory is a range's (its events, groups and sort), not the study's.
    """
    extra = cohort.lazy().select("participant_id", "arm", "matched_set", "match_weight")

    def panel(ev: dict[str, pl.LazyFrame], people: pl.DataFrame) -> pl.LazyFrame:
        return (
            person_month_panel(ev, people.lazy(), costs, cfg.extract, cfg.study, distinct=True)
            .join(extra, on="participant_id", how="left")
            .sort("participant_id", "month")
        )

    ids = eligible.get_column("participant_id").sort()
    parts = -(-len(ids) // PANEL_PIECE_PEOPLE)
    if parts <= 1:
        io.sink_lazy(panel(events, eligible), path)
        return
    cuts = pl.Series([ids[i * len(ids) // parts] for i in range(1, parts)], dtype=pl.String)
    in_range = pl.lit(cuts).search_sorted(pl.col("participant_id"), side="right").alias("_range")
    split = work / "panel_ranges"
    shutil.rmtree(split, ignore_errors=True)
    split.mkdir(parents=True)
    ranged = {source: _split_by_range(lf, in_range, split / source) for source, lf in events.items()}
    people = eligible.with_columns(in_range)
    pieces = []
    for k in range(parts):
        ev = {source: ranged[source](k) for source in events}
        mine = people.filter(pl.col("_range") == k).drop("_range")
        pieces.append(io.write_scratch(panel(ev, mine), split / f"panel-{k:06d}.parquet"))
    io.sink_lazy(pl.scan_parquet(pieces), path)
    shutil.rmtree(split, ignore_errors=True)


def _split_by_range(lf: pl.LazyFrame, in_range: pl.Expr, folder: Path) -> Any:
    """Write the rows of `lf` into one file per range (`in_range`), a window of rows at a time
    (pipeline.io.split_scratch); return a function giving range k's rows as a lazy frame (no rows,
    same schema, if it has none)."""
    schema = lf.collect_schema()
    files = io.split_scratch(lf, in_range, folder, SPLIT_WINDOW_ROWS)

    def of(k: int) -> pl.LazyFrame:
        return pl.scan_parquet(files[k]) if k in files else pl.LazyFrame(schema=schema)

    return of


def _plot_facts(matched: dict[str, SampleMatch | None], threshold: float) -> dict[str, dict[str, Any]]:
    """What the love plot says beside each sample's panel: matched numbers (disclosure-controlled, as
    the plot is released) and whether the sample balanced, with how many specifications were tried."""
    return {
        name: {
            "matched_mdt": control_count(m.counts()["matched_mdt"]),
            "matched_comparators": control_count(m.counts()["matched_comparators"]),
            "balanced": m.balanced,
            "attempts": len(m.attempts),
            "specification": m.options.describe() if m.options else "",
        }
        for name, m in matched.items()
        if m
    }


def _max_abs_smd(balance: pl.DataFrame, sample: str) -> float | None:
    smd = balance.filter(pl.col("sample") == sample).get_column("smd_after").abs()
    return float(smd.max()) if smd.drop_nulls().len() else None


def _summary(cfg: RunConfig, counts: dict[str, Any], value_set_name: str) -> dict[str, Any]:
    return {
        "counts": counts,
        "matching": cfg.to_conf()["matching"],
        "covariates": list(covariate_names(cfg.study)),
        "reference": {
            "unit_costs": {
                "file": UNIT_COSTS_ARTEFACT,
                "sha256": io.sha256_file(Path(cfg.unit_costs)),
                "versions": sorted(scan_unit_costs(Path(cfg.unit_costs)).select("version").unique().collect().get_column("version").to_list()),
            },
            "eq5d_value_set": {"file": VALUE_SET_ARTEFACT, "sha256": io.sha256_file(value_set_path(cfg)), "name": value_set_name},
        },
    }
